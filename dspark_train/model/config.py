"""DraftConfig: every size and switch of a DSpark draft, resolved once from the recipe and the target.

The draft is sized from the target (hidden size, heads, MLP width, RoPE, norm eps) unless the recipe's
`model.*` says otherwise, because the draft reads the target's frozen embedding and lm_head rows, which
fixes its hidden size to the target's. The resolved config is stored in every checkpoint (`to_dict`), so
on resume the architecture comes from the checkpoint, not from the command line, and export writes the
same numbers vLLM will build the draft from (`transformer_layer_config`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from schemas.recipe import ModelConfig

# RoPE variants whose frequencies our draft computes exactly as vLLM's `get_rope` does. Anything else in
# the target's config (yarn, dynamic, longrope...) falls back to plain RoPE with the target's theta: the
# draft is trained from scratch, so what matters is that training and serving use the same rotation,
# and export writes the variant we actually used.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_MODEL = ModelConfig()  # the recipe's model defaults: a DraftConfig built by hand gets the same ones


class TargetInfoLike(Protocol):
    """What `from_recipe` reads from `dspark_data.targets.TargetInfo` (any object with these works)."""

    hidden_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int | None
    rms_norm_eps: float
    rope_theta: float | None
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int | None
    mask_token_id: int | None
    pad_token_id: int | None


@dataclass
class DraftConfig:
    """Architecture of one DSpark draft. Field comments say where the value comes from and why."""

    # --- backbone (a Qwen3 decoder stack, the layout vLLM's Qwen3DSparkModel builds) ---
    hidden_size: int  # = target hidden size: the frozen target embedding / lm_head rows are H wide
    intermediate_size: int  # gated MLP width (target's dense MLP width unless the recipe says)
    num_layers: int  # draft decoder layers (seed recipe: 5)
    num_attention_heads: int
    num_key_value_heads: int  # GQA groups; must divide num_attention_heads
    head_dim: int  # per-head size; q/k/v widths are heads * head_dim (may differ from hidden_size)
    target_hidden_size: int  # width of one captured aux layer; fc reads num_aux_layers of them
    num_aux_layers: int  # aux layers concatenated per token before fc (recipe capture.aux_layers)
    target_vocab_size: int  # rows of the frozen embedding and of Markov W1 (indexed by target ids)
    draft_vocab_size: int  # rows of the draft lm_head and of Markov W2 (top-N loss-masked tokens)
    mask_token_id: int  # target-vocab id embedded at the block's mask slots (written into the export)
    rms_norm_eps: float = 1e-6  # target's eps: every RMSNorm of the draft uses it, as vLLM does
    rope_theta: float = 1_000_000.0  # target's base (vLLM's DFlash default 1e6 when the target has none)
    rope_scaling: dict[str, Any] | None = None  # supported variant params (rope_type + its keys) or None
    max_position_embeddings: int = 131072  # vLLM builds the RoPE cache this long; no effect on training
    activation: Literal["silu", "gelu"] = _MODEL.activation  # vLLM's Qwen3 draft MLP serves silu only
    # --- DSpark ---
    block_size: int = _MODEL.block_size  # tokens per block: the anchor plus block_size-1 mask slots
    markov_rank: int = _MODEL.markov_rank  # rank of the bigram logit bias W2(W1[x_{k-1}]); 0 disables the head
    enable_confidence_head: bool = _MODEL.enable_confidence_head  # per-slot acceptance predictor c_k
    confidence_head_with_markov: bool = _MODEL.confidence_head_with_markov  # c_k reads W1[x_{k-1}] (markov_rank>0)
    sample_from_anchor: bool = _MODEL.sample_from_anchor  # True: the anchor slot predicts too (block_size drafts)
    notes: list[str] = field(default_factory=list)  # resolution decisions worth showing (e.g. RoPE fallback)

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads} (set model.num_key_value_heads)"
            )
        if self.block_size < 2:
            raise ValueError(f"block_size must be >= 2, got {self.block_size}")
        if not 0 < self.draft_vocab_size <= self.target_vocab_size:
            raise ValueError(f"draft_vocab_size={self.draft_vocab_size} must be in [1, {self.target_vocab_size}]")
        if not 0 <= self.mask_token_id < self.target_vocab_size:
            raise ValueError(f"mask_token_id={self.mask_token_id} is outside the target vocab")
        if self.markov_rank < 0:
            raise ValueError(f"markov_rank must be >= 0, got {self.markov_rank}")
        if self.enable_confidence_head and self.confidence_head_with_markov and self.markov_rank == 0:
            raise ValueError(
                "confidence_head_with_markov needs the Markov embedding, but markov_rank=0; set "
                "model.confidence_head_with_markov=false or model.markov_rank>0"
            )
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"rope_type {rope_type!r} is not one of {SUPPORTED_ROPE_TYPES}")

    # --- derived sizes ---
    @property
    def num_draft_tokens(self) -> int:
        """Tokens one block proposes (P): block_size with sample_from_anchor, else block_size-1."""
        return self.block_size if self.sample_from_anchor else self.block_size - 1

    @property
    def first_predicting_slot(self) -> int:
        """Block slot that predicts x_{a+1}: 0 with sample_from_anchor (anchor predicts), else 1."""
        return 0 if self.sample_from_anchor else 1

    @property
    def fc_in_features(self) -> int:
        return self.num_aux_layers * self.target_hidden_size

    def rope_parameters(self) -> dict[str, Any]:
        """transformers-5 / vLLM `rope_parameters` for exactly the rotation the draft uses."""
        params = {"rope_type": "default", **(self.rope_scaling or {})}
        params["rope_theta"] = float(self.rope_theta)
        return params

    # --- (de)serialisation for checkpoints ---
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DraftConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DraftConfig keys {unknown}: checkpoint from a newer dspark?")
        return cls(**d)

    def transformer_layer_config(self) -> dict[str, Any]:
        """The draft decoder's config as vLLM reads it (speculators `transformer_layer_config`).

        A Qwen3 config: vLLM builds `Qwen3DSparkModel` layers from it (qwen3_dflash.py). `layer_types` all
        full attention and no `use_sliding_window` keep every layer non-causal, which is what the
        training mask assumes; `vocab_size` is the target's (embedding and Markov W1 are target-indexed).
        """
        if self.activation != "silu":
            raise ValueError(
                f"activation={self.activation!r}: vLLM's Qwen3 draft MLP supports only silu "
                "(vllm/model_executor/models/qwen2.py Qwen2MLP); retrain with model.activation=silu"
            )
        return {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": self.activation,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": self.rope_parameters(),
            "rope_theta": float(self.rope_theta),
            "max_position_embeddings": self.max_position_embeddings,
            "vocab_size": self.target_vocab_size,
            "attention_bias": False,
            "tie_word_embeddings": False,
            "use_sliding_window": False,
            "layer_types": ["full_attention"] * self.num_layers,
        }

    # --- construction from the recipe ---
    @classmethod
    def from_recipe(cls, recipe: Any, target_info: TargetInfoLike) -> DraftConfig:
        """Size the draft from `recipe.model`, falling back to the target for every unset size.

        `recipe` is a `schemas.recipe.Recipe`; `target_info` a `dspark_data.targets.TargetInfo` (or any
        object with its attributes). The hidden size must equal the target's, because the block is
        embedded with the target's frozen embedding and scored with its frozen lm_head rows.
        """
        m = recipe.model
        notes: list[str] = []
        hidden = int(m.hidden_size or target_info.hidden_size)
        if hidden != int(target_info.hidden_size):
            raise ValueError(
                f"model.hidden_size={hidden} differs from the target's {target_info.hidden_size}; the draft "
                "shares the target's frozen embedding and lm_head, so leave model.hidden_size unset"
            )
        heads = int(m.num_attention_heads or target_info.num_attention_heads)
        if m.num_key_value_heads:
            kv_heads = int(m.num_key_value_heads)
        elif m.num_attention_heads:  # heads overridden but not kv: keep the target's GQA ratio if it divides
            ratio = max(1, target_info.num_attention_heads // max(1, target_info.num_key_value_heads))
            kv_heads = heads // ratio if heads % ratio == 0 else heads
        else:
            kv_heads = int(target_info.num_key_value_heads)
        head_dim = int(m.head_dim or (target_info.head_dim if not m.num_attention_heads else hidden // heads))
        inter = m.intermediate_size or target_info.intermediate_size
        if inter is None:
            inter = 4 * hidden
            notes.append(f"target has no intermediate_size; using 4*hidden={inter}")
        theta, scaling, rope_note = _resolve_rope(target_info)
        if rope_note:
            notes.append(rope_note)
        mask_id = _resolve_mask_token(m.mask_token_id, target_info, notes)
        return cls(
            hidden_size=hidden,
            intermediate_size=int(inter),
            num_layers=int(m.num_layers),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            target_hidden_size=int(target_info.hidden_size),
            num_aux_layers=len(recipe.capture.aux_layers),
            target_vocab_size=int(target_info.vocab_size),
            draft_vocab_size=min(int(recipe.vocab.draft_vocab_size), int(target_info.vocab_size)),
            mask_token_id=mask_id,
            rms_norm_eps=float(target_info.rms_norm_eps),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(target_info.max_position_embeddings or max(recipe.seq_len, 131072)),
            activation=m.activation,
            block_size=int(m.block_size),
            markov_rank=int(m.markov_rank),
            enable_confidence_head=bool(m.enable_confidence_head),
            confidence_head_with_markov=bool(m.confidence_head_with_markov),
            sample_from_anchor=bool(m.sample_from_anchor),
            notes=notes,
        )


def _resolve_rope(target_info: Any) -> tuple[float, dict[str, Any] | None, str | None]:
    """(theta, scaling or None, note): the target's RoPE if we reproduce it exactly, else plain RoPE."""
    raw = dict(getattr(target_info, "rope_scaling", None) or {})
    theta = getattr(target_info, "rope_theta", None) or raw.get("rope_theta") or 1_000_000.0
    rope_type = raw.get("rope_type") or raw.get("type") or "default"
    if rope_type == "default":
        return float(theta), None, None
    if rope_type == "linear" and "factor" in raw:
        return float(theta), {"rope_type": "linear", "factor": float(raw["factor"])}, None
    if rope_type == "llama3" and all(
        k in raw for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    ):
        keep = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        return float(theta), {"rope_type": "llama3", **{k: raw[k] for k in keep}}, None
    return float(theta), None, f"target rope_type {rope_type!r} not reproduced; draft uses default RoPE, theta={theta}"


def _resolve_mask_token(explicit: int | None, target_info: Any, notes: list[str]) -> int:
    """Recipe value > the target's mask token > its pad token; the id is only an embedding row to read."""
    if explicit is not None:
        return int(explicit)
    mask = getattr(target_info, "mask_token_id", None)
    if mask is not None:
        return int(mask)
    pad = getattr(target_info, "pad_token_id", None)
    if pad is not None:
        notes.append(f"target has no mask token; mask slots use the pad token id {pad}")
        return int(pad)
    raise ValueError("the target defines no mask or pad token; set model.mask_token_id in the recipe")
