"""Configs and random initialisation of the tiny targets: Llama, dense-MLA DeepSeek-V3, GLM-5 (glm_moe_dsa).

Sizes are the smallest that still exercise what the pipeline touches in a real target: several layers
(aux-layer choice), GQA (2 query heads, 1 KV head), head_dim 64 (a size vLLM's CPU attention supports),
untied embeddings (the draft reads the target's embedding and lm_head separately). The MLA variants use
kv_lora_rank 512 and qk_rope_head_dim 64 because vLLM's CPU MLA backend only supports that latent size.
Weights are saved in float32 (so a float32 load is exact) while config.json says bfloat16, the dtype a
real target is served in.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from dspark_data.targets.tiny.chat_template import EOS, GMASK, MASK, USER

# Architecture presets; values are the build spec, so changing one changes the cache key.
LLAMA_TINY: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,  # GQA, like most served targets
    "head_dim": 64,  # CPU attention supports 32/64/80/...; 16 fails
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "initializer_range": 0.02,
}

# DeepSeek-V3 MLA, every layer dense (first_k_dense_replace >= layers) so vLLM CPU can run it.
MLA_TINY: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "kv_lora_rank": 512,  # vLLM CPU MLA: latent 512 + rope 64 only
    "q_lora_rank": 96,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 64,
    "v_head_dim": 64,
    "first_k_dense_replace": 4,
    "moe_intermediate_size": 64,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_group": 1,
    "topk_group": 1,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "initializer_range": 0.02,
}

# GLM-5 (MLA + DSA indexer + MoE): two dense then two MoE layers; transformers only (vLLM CPU has no DSA).
GLM5_TINY: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "kv_lora_rank": 512,
    "q_lora_rank": 96,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 64,
    "v_head_dim": 64,
    "first_k_dense_replace": 2,
    "moe_intermediate_size": 64,
    "n_routed_experts": 4,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "n_group": 1,
    "topk_group": 1,
    "index_topk": 64,  # smaller than a test prompt so the sparse path is really sparse
    "index_head_dim": 64,
    "index_n_heads": 2,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "initializer_range": 0.02,
}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

ARCH_PRESETS: dict[str, dict[str, Any]] = {"llama": LLAMA_TINY, "mla": MLA_TINY, "glm5": GLM5_TINY}


def make_config(arch: str, params: dict[str, Any], tokenizer):
    """A transformers config for `arch` ("llama" | "mla" | "glm5") sized by `params`, ids from `tokenizer`."""
    p = dict(params)
    rope = {"rope_type": "default", "rope_theta": p.pop("rope_theta")}
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.convert_tokens_to_ids(GMASK),
        "eos_token_id": tokenizer.convert_tokens_to_ids(EOS),
        "pad_token_id": tokenizer.convert_tokens_to_ids(EOS),
        "tie_word_embeddings": False,
        "rope_parameters": rope,
    }
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**p, **ids, hidden_act="silu", attention_bias=False, mlp_bias=False)
    if arch == "mla":
        from transformers import DeepseekV3Config

        return DeepseekV3Config(**p, **ids)
    if arch == "glm5":
        from transformers import GlmMoeDsaConfig

        return GlmMoeDsaConfig(**p, **ids)
    raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {sorted(ARCH_PRESETS)}")


def init_model(config, seed: int):
    """Random init, deterministic: the same seed and config give bit-identical float32 weights."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def save_target(model, tokenizer, tokenizer_dir: Path, out_dir: Path, sampling: dict[str, float]) -> None:
    """Write the HF directory: safetensors weights, config.json, tokenizer, generation_config.json.

    The tokenizer files are copied byte for byte from `tokenizer_dir` (the shared tokenizer build).
    config.json gets `dtype: bfloat16` (the serving dtype) and `mask_token_id` (the draft's mask token);
    generation_config.json carries the target's default sampling, and stops on EOS or a new user turn as
    GLM does.
    """
    from transformers import GenerationConfig

    eos = tokenizer.convert_tokens_to_ids(EOS)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, out_dir / name)
    GenerationConfig(
        do_sample=True,
        temperature=sampling["temperature"],
        top_p=sampling["top_p"],
        top_k=sampling.get("top_k", 0),
        bos_token_id=model.config.bos_token_id,
        eos_token_id=[eos, tokenizer.convert_tokens_to_ids(USER)],
        pad_token_id=eos,
    ).save_pretrained(str(out_dir))
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dtype"] = "bfloat16"
    cfg["mask_token_id"] = tokenizer.convert_tokens_to_ids(MASK)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
