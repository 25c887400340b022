"""Codec bench (issue 13): bytes/token against the acceptance of the draft trained on it, paired by seed.

One table, side by side, every codec on the same tiny-pipeline samples: bytes/token stored (all fields) and
its ratio to raw bf16, relative error, the validation mean accepted length and the greedy offline eval Avg
Length of a draft trained on that codec's data (mean over seeds, and the paired per-seed difference to
`raw`: mean, std over seeds and std/sqrt(n), the smallest difference the run resolves), and encode /
decode MB of bf16 per CPU second (one thread). "CPU share" is what the CPU does when the device
dequantises (entropy decoding only).

Paired: every codec is trained with the same seeds; validation anchors do not move with the seed and the
validation split is by id hash. A second table times decoding of one GLM-5.2-sized sample (synthetic
heavy-tailed, 2,500 tokens x 6 layers x 6144).

    python bench/codec_quality.py --data runs/tiny/hidden --vocab runs/tiny/vocab      # an existing raw capture
    python bench/codec_quality.py --seeds 3 --steps 120 --codecs raw,fp8,int4-g32      # builds the data if no --data
    python bench/codec_quality.py --data D --vocab V --topk-data T --topk-codecs raw,int4-g32-delta
        # + rows "topk+<codec>": aux layers with <codec> and the target's top-K instead of the last layer
        # (T: the same regen data captured with capture.include_last_layer=false, capture.topk_logprobs=K)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dspark_data.atomic import atomic_write_bytes  # noqa: E402
from dspark_data.store import codecs, open_hidden  # noqa: E402
from dspark_data.store.codecs import decode_deferred  # noqa: E402
from dspark_data.store.trial import one_torch_thread, trial_codecs  # noqa: E402
from dspark_train.codec_trial import paired, recipe_with_seed, train_codecs  # noqa: E402
from schemas.loading import DEFAULT_RECIPE  # noqa: E402

DEFAULT_CODECS = "raw,zstd-split,fp8,int6-g32,int6-g32-delta,int5-g32-delta,int4-g32,int4-g32-delta,int3-g32"
console = Console(width=200)


def build_data(root: Path, recipe: str) -> tuple[Path, Path]:
    """regen (vLLM) -> dump-hidden (transformers, raw) -> vocab with the CLI, into `root`."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    steps = [["regen", "--out", str(root / "regen")],
             ["dump-hidden", "--set", "capture.codec=raw", "--backend", "hf", "--data", str(root / "regen"),
              "--out", str(root / "hidden-raw")],
             ["vocab", "--data", str(root / "hidden-raw"), "--out", str(root / "vocab")]]
    for words in steps:
        subprocess.run([sys.executable, "-m", "cli", words[0], "--recipe", recipe, *words[1:]], check=True, env=env)
    return root / "hidden-raw", root / "vocab"


def glm_sample(t: int = 2500, layers: int = 6, hidden: int = 6144, seed: int = 0) -> torch.Tensor:
    """Heavy-tailed activations at GLM-5.2's size: student-t rows, log-normal channel scales, outlier
    channels, and a shared residual stream (each layer = previous + a fresh part), as real aux layers."""
    g = torch.Generator().manual_seed(seed)
    chi2 = torch.distributions.Chi2(torch.tensor(4.0))
    scale = torch.exp(torch.randn(hidden, generator=g) * 0.5)
    scale[torch.randperm(hidden, generator=g)[:8]] *= 40.0
    x = torch.empty(t, layers, hidden, dtype=torch.bfloat16)
    acc = torch.zeros(t, hidden)
    for layer in range(layers):
        fresh = torch.randn(t, hidden, generator=g) / torch.sqrt(chi2.sample((t, 1)) / 4.0)
        acc = acc + fresh * scale
        x[:, layer] = acc.to(torch.bfloat16)
    return x


def _best_cpu(fn: object, n: int = 2) -> float:
    """Best of `n` CPU times of `fn()` (the first call also pays page faults of fresh large outputs)."""
    best = float("inf")
    for _ in range(n):
        start = time.process_time()
        fn()  # type: ignore[operator]
        best = min(best, time.process_time() - start)
    return max(best, 1e-9)


def bench_glm(names: list[str]) -> dict[str, dict[str, float]]:
    x = glm_sample()
    raw = x.numel() * 2
    t = Table(title=f"GLM-5.2-sized sample: {tuple(x.shape)} bf16, {raw / 1e6:.0f} MB, one thread")
    for col in ("codec", "ratio", "rel. error", "encode MB/CPU-s", "decode MB/CPU-s (CPU dequantises)",
                "CPU share MB/CPU-s (device dequantises)", "samples/CPU-s (CPU share)"):
        t.add_column(col, justify="right")
    out = {}
    with one_torch_thread():
        for name in names:
            p = codecs.encode(name, x, threads=1)
            y = codecs.decode(name, p, x.shape)
            enc = _best_cpu(lambda n=name: codecs.encode(n, x, threads=1))
            dec = _best_cpu(lambda n=name, q=p: codecs.decode(n, q, x.shape))
            share = _best_cpu(lambda n=name, q=p: decode_deferred(n, q, x.shape))
            err = float((y.float() - x.float()).norm() / x.float().norm())
            out[name] = {"ratio": raw / len(p), "rel_error": err, "encode": raw / enc / 1e6,
                         "decode": raw / dec / 1e6, "cpu_share": raw / share / 1e6, "samples_per_s": 1 / share}
            r = out[name]
            t.add_row(name, f"{r['ratio']:.2f}x", f"{err:.4f}", f"{r['encode']:.0f}", f"{r['decode']:.0f}",
                      f"{r['cpu_share']:.0f}", f"{r['samples_per_s']:.2f}")
            del p, y
    console.print(t)
    return out


def _fmt(p: dict[str, float], digits: int = 3) -> str:
    if p["n"] == 0 or p["diff"] != p["diff"]:
        return "-"
    sem = "" if p["sem"] != p["sem"] else f" ±{100 * p['sem']:.1f}% (sd {100 * p['std']:.1f}%)"
    return f"{100 * p['diff']:+.1f}%{sem}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="a raw (exact) hidden-state capture; default: build one")
    ap.add_argument("--vocab", type=Path, help="its draft vocab directory")
    ap.add_argument("--recipe", default=DEFAULT_RECIPE)
    ap.add_argument("--set", action="append", default=[], dest="sets", help="recipe override for training")
    ap.add_argument("--codecs", default=DEFAULT_CODECS)
    ap.add_argument("--samples", type=int, default=10_000, help="first N samples of the capture")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1, the same for every codec")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    ap.add_argument("--eval-prompts", type=int, default=8, help="offline eval prompts per set (0: no eval)")
    ap.add_argument("--eval-tokens", type=int, default=64)
    ap.add_argument("--topk-data", type=Path, help="the same samples captured with top-K instead of the last layer")
    ap.add_argument("--topk-codecs", default="raw,int4-g32-delta", help="codecs of the aux layers with --topk-data")
    ap.add_argument("--no-glm", action="store_true", help="skip the GLM-5.2-sized decode timing")
    ap.add_argument("--work", type=Path, help="work directory (kept); default: a temporary one")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    names = [n.strip() for n in args.codecs.split(",") if n.strip()]
    work = args.work or Path(tempfile.mkdtemp(prefix="dspark-codecs-"))
    data, vocab = (args.data, args.vocab) if args.data else build_data(work / "data", args.recipe)
    console.print(f"work {work}; data {data}; load {os.getloadavg()[0]:.1f}; torch threads {torch.get_num_threads()}")
    figs = trial_codecs(open_hidden(data), names, work / "codecs", samples=args.samples)
    if args.topk_data:  # same samples: the ratio is against the raw dataset with the last layer
        topk = trial_codecs(open_hidden(args.topk_data), [n.strip() for n in args.topk_codecs.split(",")],
                            work / "codecs-topk", samples=args.samples)
        raw_bpt = figs[0].bytes_per_token
        figs += [dataclasses.replace(f, codec=f"topk+{f.codec}", exact=False, ratio=raw_bpt / f.bytes_per_token)
                 for f in topk]
    by = {f.codec: f for f in figs}
    recipe = recipe_with_seed(args.recipe, args.sets)
    eval_kw = None
    if args.eval_prompts:
        r0 = recipe(0)
        eval_kw = {"prompt_sets": list(r0.eval.prompt_sets), "num_prompts": args.eval_prompts,
                   "max_new_tokens": args.eval_tokens}
    start = time.perf_counter()
    # exact codecs decode to raw's bits: their runs would be raw's, bit for bit (deterministic CPU training)
    trained = {f.codec: Path(f.directory) for f in figs if f.codec == "raw" or not f.exact}
    rows = train_codecs(recipe, trained, vocab, work / "runs", seeds=list(range(args.seeds)), steps=args.steps,
                        eval_kw=eval_kw)
    for f in figs:
        rows.setdefault(f.codec, rows["raw"])
    console.print(f"[dim]trained {len(figs)} codecs x {args.seeds} seeds in {time.perf_counter() - start:.0f} s[/dim]")
    val = paired(rows, "val_mean_accepted_length")
    ev = paired(rows, "eval_avg_length") if eval_kw else {}
    table = Table(title=f"codecs on {data} ({figs[0].samples} samples, {figs[0].tokens:,} tokens), "
                        f"{args.seeds} paired seeds, steps {args.steps or 'recipe'}; diff = codec/raw - 1 per seed: "
                        "mean ±std/sqrt(n) (sd)")
    for col in ("codec", "exact", "bytes/token", "vs raw", "rel. error", "val acc. length", "val diff vs raw",
                "eval Avg Length", "eval diff vs raw", "encode MB/CPU-s", "decode MB/CPU-s", "CPU share MB/CPU-s"):
        table.add_column(col, justify="right")
    for name, f in by.items():
        table.add_row(name, "yes" if f.exact else "no", f"{f.bytes_per_token:.0f}", f"{f.ratio:.2f}x",
                      f"{f.rel_error:.4f}", f"{val[name]['mean']:.3f}", _fmt(val[name]),
                      f"{ev[name]['mean']:.3f}" if ev else "-", _fmt(ev[name]) if ev else "-",
                      f"{f.encode_mb_per_cpu_s:.0f}", f"{f.decode_mb_per_cpu_s:.0f}", f"{f.unpack_mb_per_cpu_s:.0f}")
    console.print(table)
    report = {"codecs": [f.to_dict() for f in figs], "runs": rows, "val": val, "eval": ev}
    if not args.no_glm:
        report["glm"] = bench_glm(names)
    if args.json:
        atomic_write_bytes(args.json, json.dumps(report, indent=1, default=str).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
