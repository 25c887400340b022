"""Named draft sizes that need no target: a tiny `debug` one for tests, and the seed card's shape
for benchmarks.

Real runs size the draft from the target (`DraftConfig.from_recipe`); presets exist so tests, benchmarks
and notebooks can build a model in one line. `preset_config("debug", markov_rank=0)` overrides any field.
"""

from __future__ import annotations

from typing import Any

from dspark_train.model.config import DraftConfig


def _sizes(
    *, hidden: int, mlp: int, layers: int, heads: tuple[int, int, int], aux: int, vocab: tuple[int, int],
    mask_token_id: int, **rest: Any,
) -> dict[str, Any]:
    """DraftConfig fields of a preset: `heads` = (attention heads, kv heads, head_dim), `vocab` = (target,
    draft); the aux layers are as wide as the draft (target_hidden_size = hidden)."""
    n_heads, n_kv, head_dim = heads
    return dict(
        hidden_size=hidden, intermediate_size=mlp, num_layers=layers, num_attention_heads=n_heads,
        num_key_value_heads=n_kv, head_dim=head_dim, target_hidden_size=hidden, num_aux_layers=aux,
        target_vocab_size=vocab[0], draft_vocab_size=vocab[1], mask_token_id=mask_token_id, **rest,
    )


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds-fast on CPU; GQA (4 heads on 2 kv heads), a reduced vocab, every head enabled.
    "debug": _sizes(hidden=32, mlp=64, layers=2, heads=(4, 2, 8), aux=3, vocab=(96, 64), mask_token_id=1,
                    rope_theta=10_000.0, block_size=4, markov_rank=8),
    # The seed card's shape (GLM-5.2 target: hidden 6144, vocab 154880, 5 draft layers, block 8, vocab 32000)
    # for memory / speed benchmarks. Ids are placeholders: real runs use DraftConfig.from_recipe.
    "seed-shape": _sizes(hidden=6144, mlp=12288, layers=5, heads=(64, 64, 64), aux=5, vocab=(154880, 32000),
                         mask_token_id=0, block_size=8, markov_rank=256),
}


def preset_config(name: str, **overrides: Any) -> DraftConfig:
    """DraftConfig of a named preset with field overrides."""
    if name not in PRESETS:
        raise KeyError(f"unknown draft preset {name!r}; choose one of {sorted(PRESETS)}")
    return DraftConfig(**{**PRESETS[name], **overrides})
