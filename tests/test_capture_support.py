"""Helpers shared by the capture tests (no tests here): a small regen dataset and relative errors.

The regen dataset is written with the store's own `ShardWriter`, with the columns capture reads
(`id`, `input_ids`, `loss_mask`), so these tests do not depend on the regen stage.
"""

from __future__ import annotations

from pathlib import Path

import torch
from regen_schema import REGEN_SCHEMA

from dspark_data.store import ShardWriter
from schemas.loading import load_recipe
from schemas.recipe import Recipe


def random_sequences(n: int, vocab: int, lo: int = 12, hi: int = 200, seed: int = 0) -> list[list[int]]:
    """`n` token sequences of random lengths in [lo, hi) over ids [10, vocab) (clear of special tokens)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=g)
    return [torch.randint(10, vocab, (int(t),), generator=g).tolist() for t in lengths]


def make_regen(directory: Path, seqs: list[list[int]], prompt_len: int = 8) -> list[str]:
    """A complete regen-kind dataset: ids `s00000`..., loss mask on everything after `prompt_len` tokens."""
    ids = [f"s{i:05d}" for i in range(len(seqs))]
    with ShardWriter(directory, "regen", REGEN_SCHEMA, {"test": "capture"}, shard_rows=16) as writer:
        for sid, seq in zip(ids, seqs, strict=True):
            writer.write({"id": sid, "input_ids": seq, "loss_mask": [i >= prompt_len for i in range(len(seq))]})
    return ids


def tiny_recipe(model: str, *sets: str) -> Recipe:
    """The tiny recipe pointed at a local target, with overrides."""
    return load_recipe("tiny", [f"target.model={model}", *sets])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def per_layer_errors(plan, got, want) -> dict[int, float]:  # noqa: ANN001 - a LayerPlan and two Captured lists
    """Worst relative error per stored layer id over paired captures (token ids must match exactly)."""
    worst: dict[int, float] = {}
    for a, b in zip(got, want, strict=True):
        assert a.token_ids.tolist() == b.token_ids.tolist()
        for j, layer in enumerate(plan.stored_ids):
            worst[layer] = max(worst.get(layer, 0.0), rel_err(a.hidden[:, j], b.hidden[:, j]))
    return worst
