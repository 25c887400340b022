"""Named draft sizes that need no target: a tiny `debug` one for tests, and the seed card's shape
for benchmarks.

Real runs size the draft from the target (`DraftConfig.from_recipe`); presets exist so tests, benchmarks
and notebooks can build a model in one line. `preset_config("debug", markov_rank=0)` overrides any field.
"""

from __future__ import annotations

from typing import Any

from dspark_train.model.config import DraftConfig

PRESETS: dict[str, dict[str, Any]] = {
    # Seconds-fast on CPU; GQA (4 heads on 2 kv heads), a reduced vocab, every head enabled.
    "debug": dict(
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        target_hidden_size=32,
        num_aux_layers=3,
        target_vocab_size=96,
        draft_vocab_size=64,
        mask_token_id=1,
        rope_theta=10_000.0,
        block_size=4,
        markov_rank=8,
    ),
    # The seed card's shape (GLM-5.2 target: hidden 6144, vocab 154880, 5 draft layers, block 8, vocab 32000)
    # for memory / speed benchmarks. Ids are placeholders: real runs use DraftConfig.from_recipe.
    "seed-shape": dict(
        hidden_size=6144,
        intermediate_size=12288,
        num_layers=5,
        num_attention_heads=64,
        num_key_value_heads=64,
        head_dim=64,
        target_hidden_size=6144,
        num_aux_layers=5,
        target_vocab_size=154880,
        draft_vocab_size=32000,
        mask_token_id=0,
        block_size=8,
        markov_rank=256,
    ),
}


def preset_config(name: str, **overrides: Any) -> DraftConfig:
    """DraftConfig of a named preset with field overrides."""
    if name not in PRESETS:
        raise KeyError(f"unknown draft preset {name!r}; choose one of {sorted(PRESETS)}")
    return DraftConfig(**{**PRESETS[name], **overrides})
