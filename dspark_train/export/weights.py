"""The tensors of an exported draft, named as vLLM's loaders read them.

vLLM 0.32 (`qwen3_dspark.py` / `qwen3_dflash.py`, `load_weights`):
- every name except `lm_head.*`, `d2t` and `t2d` is prefixed `model.` and matched against
  `Qwen3DSparkModel` / `DFlashQwen3Model`: `fc.weight`, `hidden_norm.weight`, `norm.weight`,
  `layers.{i}.self_attn.{q,k,v,o}_proj.weight` (q/k/v stacked into `qkv_proj`),
  `layers.{i}.self_attn.{q,k}_norm.weight`, `layers.{i}.mlp.{gate,up,down}_proj.weight` (gate/up stacked),
  `layers.{i}.{input,post_attention}_layernorm.weight`; DSpark adds `markov_head.markov_w{1,2}.weight`
  and `confidence_head.proj.{weight,bias}`. An unknown name raises in `AutoWeightsLoader`.
- `d2t` (int64 offsets, target = draft id + d2t[id]) becomes `draft_id_to_target_id`; `t2d` is skipped.
- no `embed_tokens`: the draft shares the target's embedding. `lm_head.weight` is shared from the target
  only for a full-vocab draft; a reduced draft vocab must ship `lm_head.weight` [draft_vocab, H] and `d2t`
  (DSpark raises without them; DFlash would run on an uninitialised head).
The DFlash format is the same backbone without the Markov and confidence heads.
"""

from __future__ import annotations

import re

import torch

from dspark_train.model.config import DraftConfig

BACKBONE = re.compile(
    r"^(fc\.weight|hidden_norm\.weight|norm\.weight|"
    r"layers\.\d+\.(self_attn\.(q|k|v|o)_proj\.weight|self_attn\.(q|k)_norm\.weight|"
    r"mlp\.(gate|up|down)_proj\.weight|(input|post_attention)_layernorm\.weight))$"
)
DSPARK_HEADS = re.compile(r"^(markov_head\.markov_w[12]\.weight|confidence_head\.proj\.(weight|bias))$")
# Names a training checkpoint may carry that are not exported (frozen copies of target tensors).
TRAINING_ONLY = re.compile(r"^(embed_tokens\.weight|lm_head\.weight|d2t|t2d|verifier_.*|target_.*)$")


def expected_shapes(cfg: DraftConfig, fmt: str) -> dict[str, tuple[int, ...]]:
    """Every exported tensor name and its shape for this architecture (the contract the tests check)."""
    h, d = cfg.hidden_size, cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "fc.weight": (h, cfg.fc_in_features),
        "hidden_norm.weight": (h,),
        "norm.weight": (h,),
    }
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (cfg.num_attention_heads * d, h),
            p + "self_attn.k_proj.weight": (cfg.num_key_value_heads * d, h),
            p + "self_attn.v_proj.weight": (cfg.num_key_value_heads * d, h),
            p + "self_attn.o_proj.weight": (h, cfg.num_attention_heads * d),
            p + "self_attn.q_norm.weight": (d,),
            p + "self_attn.k_norm.weight": (d,),
            p + "mlp.gate_proj.weight": (cfg.intermediate_size, h),
            p + "mlp.up_proj.weight": (cfg.intermediate_size, h),
            p + "mlp.down_proj.weight": (h, cfg.intermediate_size),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        })
    if fmt == "dspark" and cfg.markov_rank > 0:
        shapes["markov_head.markov_w1.weight"] = (cfg.target_vocab_size, cfg.markov_rank)
        shapes["markov_head.markov_w2.weight"] = (cfg.draft_vocab_size, cfg.markov_rank)
    if fmt == "dspark" and cfg.enable_confidence_head:
        width = h + (cfg.markov_rank if cfg.confidence_head_with_markov else 0)
        shapes["confidence_head.proj.weight"] = (1, width)
        shapes["confidence_head.proj.bias"] = (1,)
    if cfg.draft_vocab_size < cfg.target_vocab_size:
        shapes["lm_head.weight"] = (cfg.draft_vocab_size, h)
        shapes["d2t"] = (cfg.draft_vocab_size,)
        shapes["t2d"] = (cfg.target_vocab_size,)
    return shapes


def select_draft_tensors(weights: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """The trained tensors to export, by name; an unknown name is an error (export must be exact)."""
    keep: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in weights.items():
        if BACKBONE.match(name) or (fmt == "dspark" and DSPARK_HEADS.match(name)):
            keep[name] = tensor
        elif DSPARK_HEADS.match(name) or TRAINING_ONLY.match(name):
            continue  # dflash drops the heads; frozen target copies are rebuilt below or shared by vLLM
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"checkpoint tensors with no vLLM counterpart: {sorted(unknown)[:8]} - the draft's parameter "
            "names must be vLLM's (docs/export.md)"
        )
    return keep


def cast_for_export(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors to the serving dtype (the confidence head stays float32, as vLLM keeps it)."""
    out = {}
    for name, t in tensors.items():
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.to(torch.float32 if name.startswith("confidence_head.") else dtype)
        out[name] = t.contiguous()
    return out


def check_shapes(tensors: dict[str, torch.Tensor], cfg: DraftConfig, fmt: str) -> None:
    """Refuse an export whose names or shapes differ from what vLLM will build for `cfg`."""
    want = expected_shapes(cfg, fmt)
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    wrong = sorted(n for n in set(want) & set(tensors) if tuple(tensors[n].shape) != want[n])
    if missing or extra or wrong:
        raise ValueError(
            f"export does not match the draft architecture: missing {missing[:6]}, unexpected {extra[:6]}, "
            f"wrong shape {[(n, tuple(tensors[n].shape), want[n]) for n in wrong[:4]]}"
        )
