"""Storage benchmark: our shard store per codec vs the field's one-file-per-sample layouts.

Side by side, on the same samples: bytes/token and random-order read throughput of
- `ours:<codec>`: the store (`HiddenStateWriter` / `open_hidden`), codecs raw, zstd-split, fp8;
- `safetensors/sample`: one safetensors file per sample (speculators' layout);
- `torch.save/sample`: one `torch.save` file per sample (SpecForge's layout), read with
  `torch.load(weights_only=True)`;
plus each codec's encode/decode MB/s. Data: synthetic heavy-tailed bf16 activations (student-t rows,
per-channel scales, a few outlier channels) and, when it can be built, real activations of the tiny
target (`tiny:trained` if already built, else `tiny:random`) run with transformers.

Reads are timed twice: "warm" (files in the page cache: decode-bound) and "cold" (each layout's files
evicted from the page cache with posix_fadvise(DONTNEED) first, only our own files: I/O-bound, as when
a dataset is larger than RAM, the normal case at 10+ TB).

    python bench/storage.py                 # ~1-2 minutes on 2 cores
    python bench/storage.py --json out.json --hidden 2048 --samples 48
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dspark_data.atomic import atomic_write_bytes  # noqa: E402
from dspark_data.store import HiddenStateWriter, open_hidden  # noqa: E402
from dspark_data.store.codecs import decode, encode  # noqa: E402
from dspark_data.store.trial import one_torch_thread  # noqa: E402
from dspark_train.data.loader import Prefetcher  # noqa: E402

CODECS = ["raw", "zstd-split", "fp8"]
READ_WORKERS = 2  # the trainer loader's default num_workers
console = Console(width=180)
Sample = tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]


def synthetic(n: int, layers: int, hidden: int, seed: int = 0) -> list[Sample]:
    """Heavy-tailed activations: student-t (df 4) per row, log-normal channel scales, 6 outlier channels."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.randn(1, layers, hidden, generator=g) * 0.5)
    outliers = torch.randperm(hidden, generator=g)[:6]
    chi2 = torch.distributions.Chi2(torch.tensor(4.0))
    out = []
    for i in range(n):
        t = int(np.clip(np.random.default_rng(seed + i).lognormal(6.0, 0.6), 64, 2048))
        x = torch.randn(t, layers, hidden, generator=g) / torch.sqrt(chi2.sample((t, layers, 1)) / 4.0)
        x = x * scale
        x[:, :, outliers] *= 40.0
        ids = torch.randint(0, 32000, (t,), generator=g)
        out.append((f"syn-{i:04d}", ids, torch.rand(t, generator=g) > 0.4, x.to(torch.bfloat16)))
    return out


def real_tiny(n: int, tokens_per_sample: int = 512) -> tuple[list[Sample], str] | None:
    """Activations of the tiny target on the repository's own docs, or None (with a message) if unavailable."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from dspark_data.targets import resolve_target
        from dspark_data.targets.tiny.build import tiny_build_record

        spec = "tiny:trained" if tiny_build_record("trained") is not None else "tiny:random"
        path = resolve_target(spec)
    except Exception as exc:  # noqa: BLE001 - the bench runs without a target
        console.print(f"[yellow]real activations skipped: tiny target unavailable ({exc})[/yellow]")
        return None
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16).eval()
    root = Path(__file__).resolve().parent.parent
    texts = [p.read_text(errors="ignore") for p in sorted(root.rglob("*.md")) + sorted(root.rglob("*.py"))]
    ids = tok("\n".join(texts), return_tensors="pt").input_ids[0]
    n_layers = model.config.num_hidden_layers
    keep = sorted({1, n_layers // 2, n_layers - 1, n_layers})
    out = []
    with torch.no_grad():
        for i in range(min(n, len(ids) // tokens_per_sample)):
            chunk = ids[i * tokens_per_sample : (i + 1) * tokens_per_sample]
            hs = model(chunk[None], output_hidden_states=True).hidden_states
            h = torch.stack([hs[k][0] for k in keep], dim=1).to(torch.bfloat16).contiguous()
            out.append((f"tiny-{i:04d}", chunk.clone(), torch.ones(len(chunk), dtype=torch.bool), h))
    return out, f"{spec} (H={model.config.hidden_size}, layers {keep})"


def _files(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")]


def _evict(d: Path) -> None:
    """Drop our own files of `d` from the page cache (fsync first: dirty pages cannot be dropped)."""
    for p in _files(d):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def write_layouts(samples: list[Sample], root: Path) -> dict[str, Path]:
    dirs: dict[str, Path] = {}
    layers, hidden = samples[0][3].shape[1:]
    for codec in CODECS:
        d = dirs[f"ours:{codec}"] = root / f"ours-{codec}"
        with HiddenStateWriter(d, layer_ids=list(range(layers)), hidden_size=hidden, codec=codec,
                               target="bench", seq_len=4096, shard_bytes=256 << 20) as w:
            for s in samples:
                w.write(*s)
    d = dirs["safetensors/sample"] = root / "safetensors"
    d.mkdir()
    for sid, ids, mask, h in samples:
        save_file({"hidden_states": h, "token_ids": ids, "loss_mask": mask}, str(d / f"{sid}.safetensors"))
    d = dirs["torch.save/sample"] = root / "torchsave"
    d.mkdir()
    for sid, ids, mask, h in samples:
        torch.save({"hidden_states": h, "input_ids": ids, "loss_mask": mask}, d / f"{sid}.pt")
    return dirs


def reader(name: str, d: Path, ids: list[str]) -> Callable[[int], torch.Tensor]:
    if name.startswith("ours:"):
        ds = open_hidden(d, threads=None if "threads" in name else 1)
        return lambda i: ds[i].hidden
    if name.startswith("safetensors"):
        return lambda i: load_file(str(d / f"{ids[i]}.safetensors"))["hidden_states"]
    return lambda i: torch.load(d / f"{ids[i]}.pt", weights_only=True)["hidden_states"]


def time_reads(
    read: Callable[[int], torch.Tensor], order: list[int], raw_bytes: int, workers: int = 0
) -> dict[str, float]:
    """Read `order` and touch every page of each result. `workers` > 0 reads through the trainer's own
    `Prefetcher` (that many threads, 4 samples per thread in flight, results in order), the same for
    every layout: I/O of the next samples overlaps the current one's decode, as in training."""

    def touch(i: int) -> float:
        h = read(i)
        return float(h.reshape(-1)[::2048].float().sum())  # touch every 4 KiB page: nothing stays lazy

    start, cpu = time.perf_counter(), time.process_time()
    total = 0.0
    for value in Prefetcher(order, touch, num_workers=workers, prefetch=4 * workers):
        total += value
    dt, dcpu = time.perf_counter() - start, max(time.process_time() - cpu, 1e-9)
    return {"samples_per_s": len(order) / dt, "mb_per_s": raw_bytes / dt / 1e6, "samples_per_cpu_s": len(order) / dcpu}


def bench_dataset(title: str, samples: list[Sample], repeats: int) -> dict[str, dict[str, float]]:
    tokens = sum(len(s[1]) for s in samples)
    raw = sum(s[3].numel() * 2 for s in samples)
    order = list(np.random.default_rng(0).permutation(len(samples)))
    ids = [s[0] for s in samples]
    results: dict[str, dict[str, float]] = {}
    root = Path(tempfile.mkdtemp(prefix="dspark-bench-", dir=os.environ.get("DSPARK_BENCH_DIR")))
    try:
        t0 = time.perf_counter()
        dirs = write_layouts(samples, root)
        console.print(f"[dim]{title}: wrote {len(dirs)} layouts in {time.perf_counter() - t0:.1f} s[/dim]")
        dirs["ours:zstd-split, decode threads"] = dirs["ours:zstd-split"]
        for name, d in dirs.items():
            size = sum(p.stat().st_size for p in _files(d))
            read = reader(name, d, ids)
            warm = max((time_reads(read, order, raw) for _ in range(repeats)), key=lambda r: r["samples_per_s"])
            del read  # close our memory maps: mapped pages cannot be evicted
            gc.collect()
            _evict(d)
            cold = time_reads(reader(name, d, ids), order, raw)
            gc.collect()
            _evict(d)
            cold_par = time_reads(reader(name, d, ids), order, raw, workers=READ_WORKERS)
            results[name] = {
                "bytes": size, "files": len(_files(d)), "bytes_per_token": size / tokens, "ratio": raw / size,
                "warm_samples_per_s": warm["samples_per_s"], "warm_mb_per_s": warm["mb_per_s"],
                "warm_samples_per_cpu_s": warm["samples_per_cpu_s"],
                "cold_samples_per_s": cold["samples_per_s"], "cold_mb_per_s": cold["mb_per_s"],
                "cold_par_samples_per_s": cold_par["samples_per_s"],
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _print_layouts(title, samples, tokens, raw, results)
    return results


def _print_layouts(title: str, samples: list[Sample], tokens: int, raw: int, res: dict) -> None:
    t = Table(title=f"{title}: {len(samples)} samples, {tokens:,} tokens, {raw / 1e6:.0f} MB bf16, random-order reads")
    for col in ("layout", "files", "bytes/token", "vs bf16", "warm samples/s", "warm samples/CPU-s", "cold samples/s",
                f"cold samples/s, {READ_WORKERS} threads", "smaller than st / pt", "faster than st / pt (warm)",
                "faster than st / pt (cold)", f"faster than st / pt (cold, {READ_WORKERS} threads)"):
        t.add_column(col, justify="right")
    st, pt = res["safetensors/sample"], res["torch.save/sample"]

    def vs(r: dict, key: str, higher: bool) -> str:
        a, b = ((r[key] / st[key], r[key] / pt[key]) if higher else (st[key] / r[key], pt[key] / r[key]))
        return f"{a:.2f}x / {b:.2f}x"

    for name, r in res.items():
        ours = name.startswith("ours")
        t.add_row(name, str(r["files"]), f"{r['bytes_per_token']:.0f}", f"{r['ratio']:.3f}x",
                  f"{r['warm_samples_per_s']:.0f}", f"{r['warm_samples_per_cpu_s']:.0f}",
                  f"{r['cold_samples_per_s']:.0f}", f"{r['cold_par_samples_per_s']:.0f}",
                  *(vs(r, key, higher) if ours else "" for key, higher in (
                      ("bytes", False), ("warm_samples_per_s", True), ("cold_samples_per_s", True),
                      ("cold_par_samples_per_s", True))))
    console.print(t)


def bench_codecs(title: str, samples: list[Sample]) -> dict[str, dict[str, float]]:
    """Encode/decode speed sample by sample (the unit the store encodes and decodes), in MB of bf16 per
    wall second (one sample split across all cores) and per CPU second (one thread: the per-core figure,
    robust to other load on a shared machine)."""
    xs = [s[3] for s in samples]
    raw = sum(x.numel() * 2 for x in xs)
    threads = torch.get_num_threads()
    out: dict[str, dict[str, float]] = {}
    t = Table(title=f"{title}: codecs, sample by sample ({len(xs)} samples, {raw / 1e6:.0f} MB bf16)")
    for col in ("codec", "ratio", "rel. error", "encode MB/CPU-s", f"encode MB/s wall, {threads} samples side by side",
                "writer MB/s wall (to disk: hashing, fsync)", "decode MB/CPU-s",
                "decode MB/s wall, one sample on all cores"):
        t.add_column(col, justify="right")
    for codec in CODECS:
        payloads = [encode(codec, x) for x in xs]
        err = max(float((decode(codec, p, x.shape).float() - x.float()).norm() / x.float().norm())
                  for p, x in zip(payloads, xs, strict=True))

        def enc_serial(c: str = codec) -> None:
            for x in xs:
                encode(c, x, threads=1)

        def enc_pipeline(c: str = codec) -> None:  # the writer's encoder threads, without its I/O
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda sample: encode(c, sample, threads=1), xs))

        def dec(threads: int | None, c: str = codec, ps: list[bytes] = payloads) -> None:
            for p, x in zip(ps, xs, strict=True):
                decode(c, p, x.shape, threads=threads)

        with one_torch_thread():  # per-core figures: no intra-op helper threads spinning on the CPU clock
            encode_cpu = raw / _best(enc_serial, time.process_time) / 1e6
            decode_cpu = raw / _best(lambda: dec(1), time.process_time) / 1e6
        row = {
            "ratio": raw / sum(len(p) for p in payloads),
            "rel_error": err,
            "encode_mb_cpu_s": encode_cpu,
            "encode_mb_s_wall": raw / _best(enc_pipeline, time.perf_counter) / 1e6,
            "writer_mb_s_wall": _writer_mb_s(codec, samples),
            "decode_mb_cpu_s": decode_cpu,
            "decode_mb_s_wall": raw / _best(lambda: dec(None), time.perf_counter) / 1e6,
        }
        out[codec] = row
        t.add_row(codec, f"{row['ratio']:.3f}x", f"{row['rel_error']:.4f}",
                  *(f"{row[k]:.0f}" for k in ("encode_mb_cpu_s", "encode_mb_s_wall", "writer_mb_s_wall",
                                              "decode_mb_cpu_s", "decode_mb_s_wall")))
    console.print(t)
    return out


def _writer_mb_s(codec: str, samples: list[Sample], min_bytes: int = 256 << 20) -> float:
    """What dump-hidden's writer sustains (encoder threads, Arrow, hashing, fsync), in MB of bf16 per
    second; the samples are written repeatedly, under new ids, up to `min_bytes`, so the per-dataset
    fixed costs (lock, manifest, fsyncs of a commit) weigh as little as in a real dump."""
    layers, hidden = samples[0][3].shape[1:]
    one = sum(s[3].numel() * 2 for s in samples)
    rounds = max(1, -(-min_bytes // one))
    with tempfile.TemporaryDirectory(dir=os.environ.get("DSPARK_BENCH_DIR")) as d:
        start = time.perf_counter()
        with HiddenStateWriter(Path(d) / "w", layer_ids=list(range(layers)), hidden_size=hidden, codec=codec,
                               target="bench", seq_len=4096, shard_bytes=256 << 20) as w:
            for k in range(rounds):
                for sid, ids, mask, x in samples:
                    w.write(f"{sid}-{k}", ids, mask, x)
        return rounds * one / (time.perf_counter() - start) / 1e6


def _best(fn: Callable[[], object], clock: Callable[[], float], n: int = 3) -> float:
    best = float("inf")
    for _ in range(n):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return max(best, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=32, help="synthetic samples (lengths log-normal, ~400 tokens)")
    ap.add_argument("--layers", type=int, default=4, help="stored layers L (GLM-5.2 recipe: 6)")
    ap.add_argument("--hidden", type=int, default=1024, help="hidden size H (GLM-5.2: 6144)")
    ap.add_argument("--repeats", type=int, default=2, help="warm read passes (best kept)")
    ap.add_argument("--no-real", action="store_true", help="skip the tiny target's real activations")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args()
    console.print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
                  f"load {os.getloadavg()[0]:.1f} (shared machine: figures are indicative)")
    report: dict[str, object] = {}
    syn = synthetic(args.samples, args.layers, args.hidden)
    report["synthetic"] = {"codecs": bench_codecs("synthetic", syn), "layouts": bench_dataset("synthetic", syn,
                                                                                              args.repeats)}
    if not args.no_real:
        got = real_tiny(24)
        if got is not None:
            real, desc = got
            report["tiny"] = {"target": desc, "codecs": bench_codecs(f"tiny {desc}", real),
                              "layouts": bench_dataset(f"tiny {desc}", real, args.repeats)}
    if args.json:
        atomic_write_bytes(args.json, json.dumps(report, indent=1).encode())


if __name__ == "__main__":
    main()
