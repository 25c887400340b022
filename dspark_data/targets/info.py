"""What the rest of dspark needs to know about a target, read from its config.json alone.

Capture, vocab, training and export need the target's sizes and ids (layer count for layer ids, hidden
size for the store, vocab for the draft vocab, rope and norm settings for the draft) without loading
weights or importing vLLM. Config keys differ by family: Llama and Qwen3 are flat; DeepSeek-V3 and GLM-5
(`glm_moe_dsa`) add MLA sizes; transformers 5 writes `rope_parameters` where older files have
`rope_theta` + `rope_scaling`; multimodal wrappers nest the text model under `text_config`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dspark_data.targets.resolve import target_config_path

MLA_MODEL_TYPES = frozenset({"deepseek_v2", "deepseek_v3", "deepseek_v32", "glm_moe_dsa", "glm4_moe_lite", "kimi_k2"})


@dataclass(frozen=True)
class TargetInfo:
    """A target's architecture facts. Ids are None when config.json does not say."""

    model_type: str
    architectures: list[str]
    num_hidden_layers: int
    hidden_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int  # attention head size; for MLA the rope head size (see qk_*_head_dim)
    intermediate_size: int | None
    rms_norm_eps: float
    rope_theta: float | None
    rope_scaling: dict[str, Any] | None  # rope_parameters / rope_scaling as written, None if absent
    max_position_embeddings: int | None
    tie_word_embeddings: bool
    eos_token_ids: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    mask_token_id: int | None = None
    dtype: str | None = None
    # MLA (DeepSeek-V3, GLM-5); None elsewhere.
    kv_lora_rank: int | None = None
    q_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    qk_nope_head_dim: int | None = None
    v_head_dim: int | None = None

    @property
    def eos_token_id(self) -> int | None:
        return self.eos_token_ids[0] if self.eos_token_ids else None

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _mask_from_tokenizer_config(directory: Path) -> int | None:
    """The id of tokenizer_config.json's `mask_token`, for targets whose config.json does not record it."""
    tok_cfg = directory / "tokenizer_config.json"
    tok_json = directory / "tokenizer.json"
    if not tok_cfg.is_file():
        return None
    mask = json.loads(tok_cfg.read_text()).get("mask_token")
    if isinstance(mask, dict):
        mask = mask.get("content")
    if not mask:
        return None
    for tid, entry in json.loads(tok_cfg.read_text()).get("added_tokens_decoder", {}).items():
        if entry.get("content") == mask:
            return int(tid)
    if tok_json.is_file():
        for entry in json.loads(tok_json.read_text()).get("added_tokens", []):
            if entry.get("content") == mask:
                return int(entry["id"])
    return None


def target_info_from_config(cfg: dict[str, Any], directory: Path | None = None) -> TargetInfo:
    """Build a TargetInfo from a parsed config.json (nested `text_config` is used when present)."""
    outer = cfg
    if "text_config" in cfg and "num_hidden_layers" not in cfg:
        cfg = {**cfg["text_config"], "architectures": outer.get("architectures")}
    missing = [k for k in ("model_type", "num_hidden_layers", "hidden_size", "vocab_size") if k not in cfg]
    if missing:
        raise ValueError(f"target config.json lacks {missing}; is it a causal LM config?")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    rope_theta = cfg.get("rope_theta")
    if rope_theta is None and isinstance(rope, dict):
        rope_theta = rope.get("rope_theta")
    heads = int(cfg["num_attention_heads"])
    mla = cfg.get("kv_lora_rank") is not None or cfg["model_type"] in MLA_MODEL_TYPES
    head_dim = cfg.get("qk_rope_head_dim") if mla else None
    head_dim = head_dim or cfg.get("head_dim") or int(cfg["hidden_size"]) // heads
    mask = cfg.get("mask_token_id")
    if mask is None and directory is not None:
        mask = _mask_from_tokenizer_config(directory)
    pad = cfg.get("pad_token_id")
    bos = cfg.get("bos_token_id")
    return TargetInfo(
        model_type=str(cfg["model_type"]),
        architectures=list(cfg.get("architectures") or []),
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        hidden_size=int(cfg["hidden_size"]),
        vocab_size=int(cfg["vocab_size"]),
        num_attention_heads=heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        intermediate_size=cfg.get("intermediate_size"),
        rms_norm_eps=float(cfg.get("rms_norm_eps", cfg.get("layer_norm_epsilon", 1e-6))),
        rope_theta=float(rope_theta) if rope_theta is not None else None,
        rope_scaling=dict(rope) if isinstance(rope, dict) else None,
        max_position_embeddings=cfg.get("max_position_embeddings"),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", outer.get("tie_word_embeddings", False))),
        eos_token_ids=_as_id_list(cfg.get("eos_token_id", outer.get("eos_token_id"))),
        pad_token_id=int(pad) if pad is not None else None,
        bos_token_id=int(bos) if isinstance(bos, int) else None,
        mask_token_id=int(mask) if mask is not None else None,
        dtype=cfg.get("dtype") or cfg.get("torch_dtype") or outer.get("dtype") or outer.get("torch_dtype"),
        kv_lora_rank=cfg.get("kv_lora_rank") if mla else None,
        q_lora_rank=cfg.get("q_lora_rank") if mla else None,
        qk_rope_head_dim=cfg.get("qk_rope_head_dim") if mla else None,
        qk_nope_head_dim=cfg.get("qk_nope_head_dim") if mla else None,
        v_head_dim=cfg.get("v_head_dim") if mla else None,
    )


def load_target_info(path_or_id: str | Path, revision: str | None = None) -> TargetInfo:
    """TargetInfo of a local target dir, a `tiny:` spec (built if needed) or a hub id in the offline HF cache
    (at `revision`, the recipe's `target.revision`, when given)."""
    cfg_path = target_config_path(path_or_id, revision)
    cfg = json.loads(cfg_path.read_text())
    return target_info_from_config(cfg, cfg_path.parent)
