"""Anchor positions: where draft blocks start, per document, per epoch.

Slot semantics (docs/model.md): a block anchored at position `a` is
`[x_a, MASK x (block_size-1)]` at positions `a .. a+block_size-1`; it sees the target's context hidden
states at positions `< a` only. With `sample_from_anchor=False` (vLLM's default), slot k = 1..B-1
predicts token `x_{a+k}`, whose target distribution is the target's output at position `a+k-1`. With
`sample_from_anchor=True`, slot k = 0..B-1 predicts `x_{a+k+1}`.

"Room for a block" therefore means, for a document of T tokens:
- `a >= 1`: at least one context position exists (a block with no context predicts from nothing);
- `a + span <= T - 1`, where `span` is the furthest predicted offset (`block_size-1`, or `block_size`
  with `sample_from_anchor`): every slot has a real next token and target distribution;
- `loss_mask[a]`: the anchor is a token the target generated (an assistant token), so the block drafts
  a continuation the target itself would write. Slots whose label is not loss-masked (a block running
  past the end of an assistant turn) are masked per slot by the loss, not here.

Anchors are drawn uniformly without replacement (up to `max_anchors`) from a generator seeded by
`derive_seed(run seed, "anchors", sample id, epoch)`, then sorted, so they are resampled every epoch,
independent of rank, batch and thread timing. Validation uses the fixed epoch label "val" and a fixed
seed (`loader.VAL_ANCHOR_SEED`), so its anchors are the same for every run seed.
"""

from __future__ import annotations

import torch

from dspark_data.seeding import derive_seed


def anchor_span(block_size: int, sample_from_anchor: bool) -> int:
    """Offset from the anchor of the furthest token a block predicts."""
    return block_size if sample_from_anchor else block_size - 1


def candidate_anchors(loss_mask: torch.Tensor, span: int) -> torch.Tensor:
    """Positions (int64, ascending) that may anchor a block in a document with this loss mask."""
    t = int(loss_mask.shape[0])
    last = t - 1 - span  # largest anchor whose furthest label exists
    if last < 1:
        return torch.empty(0, dtype=torch.long)
    pos = torch.arange(1, last + 1)
    return pos[loss_mask[1 : last + 1].bool()]


def sample_anchors(
    loss_mask: torch.Tensor,
    *,
    span: int,
    max_anchors: int,
    seed: int,
    sample_id: str,
    epoch: int | str,
) -> torch.Tensor:
    """Up to `max_anchors` sorted anchor positions, a pure function of the arguments."""
    cand = candidate_anchors(loss_mask, span)
    if cand.numel() <= max_anchors:
        return cand
    g = torch.Generator().manual_seed(derive_seed(seed, "anchors", sample_id, epoch))
    pick = torch.randperm(cand.numel(), generator=g)[:max_anchors]
    return cand[pick].sort().values
