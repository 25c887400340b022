"""The embedded tiny targets: deterministic cached builds, tokenizer and chat template, config reading,
and loading in vLLM (CPU) with greedy parity against transformers."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dspark_data.targets import load_target_info, resolve_target
from dspark_data.targets.info import target_info_from_config
from dspark_data.targets.tiny.build import tiny_spec
from dspark_data.targets.tiny.chat_template import SPECIAL_TOKENS


def _file_digests(directory: str | Path) -> dict[str, str]:
    """sha256 of every file except the build records (they hold wall-clock timings)."""
    skip = {"build.json", "tokenizer_build.json"}
    files = sorted(p for p in Path(directory).iterdir() if p.name not in skip)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_random_build_is_deterministic_and_cached(tmp_path, monkeypatch, tiny_random_target):
    monkeypatch.setenv("DSPARK_CACHE", str(tmp_path / "cache"))
    fresh = resolve_target("tiny:random")
    # same spec -> same directory name (content hash) and bit-identical files, from an empty cache
    assert Path(fresh).name == Path(tiny_random_target).name
    assert _file_digests(fresh) == _file_digests(tiny_random_target)
    # second resolve reuses the entry; no temp dirs or locks left behind except the lock files
    assert resolve_target("tiny:random") == fresh
    leftovers = [p.name for p in Path(fresh).parent.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []
    record = json.loads((Path(fresh) / "build.json").read_text())
    assert record["spec"] == tiny_spec("random")


def test_spec_change_changes_cache_key():
    assert tiny_spec("random") != tiny_spec("trained")
    assert tiny_spec("random")["model"]["num_hidden_layers"] == 6


def test_tokenizer_round_trip_and_specials(tiny_random_target):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_random_target)
    assert len(tok) == 2048
    assert tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(len(SPECIAL_TOKENS)))
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert tok.mask_token == "<|mask|>"
    for text in ["def f(x):\n    return x ** 2  # square\n", "Ünïcødé ✓ 🙂 tabs\tand  spaces", ""]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    # special tokens in text are single tokens
    ids = tok.encode("<think>a</think>", add_special_tokens=False)
    assert ids[0] == tok.convert_tokens_to_ids("<think>") and ids[-1] == tok.convert_tokens_to_ids("</think>")


def test_chat_template_glm_layout(tiny_random_target):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_random_target)
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "Add them."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "<think>Add again.</think>\n6"},
    ]
    text = tok.apply_chat_template(conv, tokenize=False)
    assert text == (
        "[gMASK]<sop><|system|>\nBe brief.<|user|>\nWhat is 2+2?<|assistant|>\n<think>Add them.</think>\n4"
        "<|endoftext|><|user|>\nAnd 3+3?<|assistant|>\n<think>Add again.</think>\n6<|endoftext|>"
    )
    prompt = tok.apply_chat_template(conv[:4], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nAnd 3+3?<|assistant|>\n") and text.startswith(prompt)
    no_reasoning = tok.apply_chat_template([conv[1], {"role": "assistant", "content": "4"}], tokenize=False)
    assert no_reasoning.endswith("<|assistant|>\n<think></think>\n4<|endoftext|>")
    # the {% generation %} block marks exactly the assistant's generated tokens
    out = tok.apply_chat_template(conv[:3], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    marked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(marked) == "<think>Add them.</think>\n4<|endoftext|>"
    with pytest.raises(Exception, match="unknown role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_load_target_info_tiny(tiny_random_target):
    info = load_target_info(tiny_random_target)
    assert (info.model_type, info.num_hidden_layers, info.hidden_size, info.vocab_size) == ("llama", 6, 128, 2048)
    assert (info.num_attention_heads, info.num_key_value_heads, info.head_dim) == (2, 1, 64)
    assert info.intermediate_size == 384
    assert info.rope_theta == 10000.0 and info.rms_norm_eps == 1e-5 and not info.tie_word_embeddings
    assert (info.eos_token_id, info.pad_token_id, info.mask_token_id) == (0, 0, 8)
    assert info.dtype == "bfloat16" and not info.is_mla


def test_load_target_info_other_families():
    qwen3 = {
        "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "num_hidden_layers": 36, "hidden_size": 2560,
        "vocab_size": 151936, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "intermediate_size": 9728, "rms_norm_eps": 1e-6, "rope_theta": 1000000, "rope_scaling": None,
        "eos_token_id": 151645, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    }  # fmt: skip
    info = target_info_from_config(qwen3)
    assert (info.head_dim, info.rope_theta, info.rope_scaling, info.eos_token_ids) == (128, 1e6, None, [151645])
    assert info.tie_word_embeddings and info.dtype == "bfloat16"
    glm5 = {
        "model_type": "glm_moe_dsa", "architectures": ["GlmMoeDsaForCausalLM"], "num_hidden_layers": 78,
        "hidden_size": 6144, "vocab_size": 154880, "num_attention_heads": 64, "num_key_value_heads": 64,
        "kv_lora_rank": 512, "q_lora_rank": 2048, "qk_rope_head_dim": 64, "qk_nope_head_dim": 192,
        "v_head_dim": 256, "rms_norm_eps": 1e-5, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
        "eos_token_id": [154820, 154827, 154829], "pad_token_id": 154820, "intermediate_size": 12288,
    }  # fmt: skip
    info = target_info_from_config(glm5)
    assert info.is_mla and (info.kv_lora_rank, info.qk_rope_head_dim, info.head_dim) == (512, 64, 64)
    assert info.rope_theta == 1e6 and info.eos_token_ids == [154820, 154827, 154829] and info.eos_token_id == 154820


def test_resolve_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="tiny:random"):
        resolve_target("tiny:nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_target(str(tmp_path / "missing"))
    assert resolve_target(str(tmp_path)) == str(tmp_path)
    assert resolve_target("some-org/some-model") == "some-org/some-model"  # hub ids pass through
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="some-org/some-model"):
        load_target_info("some-org/some-model")


def test_mla_and_glm5_targets_load_in_transformers():
    import torch
    from transformers import AutoModelForCausalLM

    for name, model_type in [("tiny:mla", "deepseek_v3"), ("tiny:glm5", "glm_moe_dsa")]:
        path = resolve_target(name)
        info = load_target_info(path)
        assert info.model_type == model_type and info.is_mla and info.kv_lora_rank == 512
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        ids = torch.arange(10, 90).unsqueeze(0)  # longer than glm5's index_topk: the sparse path runs
        out = model(ids, output_hidden_states=True)
        assert out.logits.shape == (1, 80, info.vocab_size) and torch.isfinite(out.logits).all()
        assert len(out.hidden_states) == info.num_hidden_layers + 1


def _parity(target: str, dtypes: list[str], tmp_path: Path, num_prompts: int = 32) -> dict:
    """Run the parity tool in a subprocess (one vLLM engine per dtype, isolated from pytest's process)."""
    out = tmp_path / "parity.json"
    cmd = [sys.executable, "-m", "dspark_data.targets.parity", target, "--num-prompts", str(num_prompts)]
    proc = subprocess.run([*cmd, "--dtypes", *dtypes, "--out", str(out)], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    print(json.dumps({k: v for k, v in report.items() if k in dtypes}))
    return report


@pytest.mark.vllm
def test_tiny_random_loads_and_generates_in_vllm(tiny_random_target, tmp_path):
    report = _parity(tiny_random_target, ["float32"], tmp_path, num_prompts=8)
    r = report["float32"]
    assert r["chat_template_ids_match"] == 8  # LLM.chat renders exactly what transformers renders
    assert len(r["sample_vllm"]) > 0
    assert r["identical"] >= 7  # float32: random-model near ties rarely flip


@pytest.mark.vllm
def test_tiny_mla_loads_and_generates_in_vllm(tmp_path):
    report = _parity(resolve_target("tiny:mla"), ["bfloat16"], tmp_path, num_prompts=4)
    r = report["bfloat16"]
    assert r["chat_template_ids_match"] == 4 and len(r["sample_vllm"]) > 0


@pytest.mark.vllm
@pytest.mark.slow
def test_trained_greedy_parity_transformers_vs_vllm(tiny_trained_target, tmp_path):
    """Acceptance check: greedy first 16 tokens agree on >= 29 of 32 prompts (float32; bf16 reported)."""
    report = _parity(tiny_trained_target, ["bfloat16", "float32"], tmp_path)
    assert report["float32"]["identical"] >= 29
    assert report["bfloat16"]["identical"] >= 26
    assert all(report[d]["chat_template_ids_match"] == 32 for d in ("bfloat16", "float32"))


def test_trained_target_answers_with_think_structure(tiny_trained_target):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dspark_data.prompts.embedded import load_embedded_prompts

    tok = AutoTokenizer.from_pretrained(tiny_trained_target)
    model = AutoModelForCausalLM.from_pretrained(tiny_trained_target, dtype=torch.float32).eval()
    record = json.loads((Path(tiny_trained_target) / "build.json").read_text())["train"]
    assert record["loss_start"] > 7.0 and record["loss_end"] < 3.5
    think, end_think, eos = tok.convert_tokens_to_ids(["<think>", "</think>", "<|endoftext|>"])
    structured = 0
    rows = load_embedded_prompts()[:8]
    for row in rows:
        ids = tok.apply_chat_template(row["messages"], add_generation_prompt=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=160, temperature=None,
                                 top_p=None, top_k=None)[0, len(ids):].tolist()  # fmt: skip
        # <think>REASONING</think>\nANSWER<|endoftext|>
        structured += out[0] == think and end_think in out and eos in out and out.index(end_think) < out.index(eos)
    assert structured >= 6, f"only {structured}/8 greedy answers have the <think>...</think> answer<eos> layout"
