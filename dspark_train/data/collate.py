"""Turn a list of samples (with their anchors) into one padded batch of tensors.

The batch is what the draft's forward and the loss take: the context is the aux layers concatenated
per token (`[B, T, n_aux*H]`, the input of `fc`), the loss targets, and the anchors padded to the batch's
largest count with a validity mask. The targets are either the target's last layer (`[B, T, H]`, turned
into target probabilities by the frozen final norm + lm_head) or, when the data has no last layer, the
stored top-K distribution (`topk_ids`/`topk_probs` `[B, T, K]`, `topk_tail` `[B, T]`; losses.py).
Hidden states stay bf16 here (half the bytes to move); the trainer
casts them on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from dspark_train.data.source import HiddenSample


@dataclass
class Batch:
    """One micro-batch. Padding: token 0, zero hidden states, `loss_mask` False, `anchor_valid` False."""

    ids: list[str]
    input_ids: torch.Tensor  # int64 [B, T]
    loss_mask: torch.Tensor  # bool [B, T]
    context_hidden: torch.Tensor  # bf16 [B, T, n_aux*H]
    target_hidden: torch.Tensor | None  # bf16 [B, T, H]: last layer, pre final norm (None: top-K targets)
    anchors: torch.Tensor  # int64 [B, A], sorted per row, 0 where invalid
    anchor_valid: torch.Tensor  # bool [B, A]
    lengths: torch.Tensor  # int64 [B]: real tokens per row
    topk_ids: torch.Tensor | None = None  # int64 [B, T, K]: the target's top-K token ids (padding: 0)
    topk_probs: torch.Tensor | None = None  # float32 [B, T, K]: their probabilities (padding: 0)
    topk_tail: torch.Tensor | None = None  # float32 [B, T]: 1 - sum of the top-K probabilities (padding: 1)

    @property
    def num_tokens(self) -> int:
        """Real (unpadded) tokens in the batch: the unit of tokens/s."""
        return int(self.lengths.sum())

    @property
    def num_anchors(self) -> int:
        return int(self.anchor_valid.sum())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on `device`."""
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            moved[f.name] = v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        return Batch(**moved)


def collate(
    samples: Sequence[HiddenSample],
    anchors: Sequence[torch.Tensor],
    *,
    aux_slots: Sequence[int],
    last_slot: int | None,
    topk: int = 0,
    dummy: bool = False,
) -> Batch:
    """Pad `samples` to the longest one. `aux_slots`/`last_slot` index the stored layer axis L; with
    `last_slot` None the targets are each sample's stored top-K cut to `topk` entries.

    `dummy=True` keeps the tensors (so a forward can run and stay in step with other ranks) but marks
    every anchor invalid, so the batch contributes nothing to losses or metrics.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    b = len(samples)
    t = max(int(s.input_ids.shape[0]) for s in samples)
    a = max(1, max(int(x.numel()) for x in anchors))
    h = int(samples[0].hidden.shape[-1])
    n_aux = len(aux_slots)
    input_ids = torch.zeros(b, t, dtype=torch.long)
    loss_mask = torch.zeros(b, t, dtype=torch.bool)
    context = torch.zeros(b, t, n_aux * h, dtype=samples[0].hidden.dtype)
    target = torch.zeros(b, t, h, dtype=samples[0].hidden.dtype) if last_slot is not None else None
    if last_slot is None:
        if topk <= 0:
            raise ValueError("collate: without a last-layer slot the targets need topk > 0")
        topk_ids = torch.zeros(b, t, topk, dtype=torch.long)
        topk_probs = torch.zeros(b, t, topk, dtype=torch.float32)
        topk_tail = torch.ones(b, t, dtype=torch.float32)
    anchor_t = torch.zeros(b, a, dtype=torch.long)
    valid = torch.zeros(b, a, dtype=torch.bool)
    lengths = torch.zeros(b, dtype=torch.long)
    aux_index = torch.as_tensor(list(aux_slots), dtype=torch.long)
    for i, (s, anc) in enumerate(zip(samples, anchors, strict=True)):
        n = int(s.input_ids.shape[0])
        input_ids[i, :n] = s.input_ids
        loss_mask[i, :n] = s.loss_mask
        context[i, :n] = s.hidden.index_select(1, aux_index).reshape(n, n_aux * h)  # (T, n_aux, H) -> (T, n_aux*H)
        if target is not None:
            target[i, :n] = s.hidden[:, last_slot]
        else:
            if s.topk is None:
                raise ValueError(f"sample {s.id} has no stored top-K distribution (needed for the loss targets)")
            cut = s.topk.truncate(topk)
            topk_ids[i, :n], topk_probs[i, :n], topk_tail[i, :n] = cut.ids, cut.probs(), cut.tail
        anchor_t[i, : anc.numel()] = anc
        valid[i, : anc.numel()] = not dummy
        lengths[i] = 0 if dummy else n
    batch = Batch([s.id for s in samples], input_ids, loss_mask, context, target, anchor_t, valid, lengths)
    if target is None:
        batch.topk_ids, batch.topk_probs, batch.topk_tail = topk_ids, topk_probs, topk_tail
    return batch
