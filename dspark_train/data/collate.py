"""Turn a list of samples (with their anchors) into one padded batch of tensors.

The batch is what the draft's forward and the loss take: the context is the aux layers concatenated
per token (`[B, T, n_aux*H]`, the input of `fc`), the loss targets, and the anchors padded to the batch's
largest count with a validity mask. The targets are either the target's last layer (`[B, T, H]`, turned
into target probabilities by the frozen final norm + lm_head) or, when the data has no last layer, the
stored top-K distribution (`topk_ids`/`topk_probs` `[B, T, K]`, `topk_tail` `[B, T]`; losses.py).
Hidden states stay bf16 here (half the bytes to move); the trainer
casts them on the device.

Device dequantisation: when every sample comes as group-quantised `QuantPlanes` (`StoreSource.get_deferred`,
the group codecs), the batch keeps them padded (`Batch.deferred`: int8 codes, bf16 scales, zero in the
padding) instead of the two hidden tensors, and `Batch.to(device)` dequantises them there: the CPU
threads only entropy-decode, the trainer's GPU runs the elementwise rest. Dequantisation is elementwise
per (token, layer), so padding first and dequantising the whole batch gives, bit for bit, the tensors
the eager path pads from per-sample decodes (zero codes times zero scales are the zero padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from dspark_data.store.groupq import QuantPlanes, materialize
from dspark_data.store.hidden import HiddenSample


@dataclass
class DeferredHidden:
    """A batch's hidden states before dequantisation: planes [B*T, L, .] (token-major, zero-padded rows)."""

    planes: QuantPlanes
    rows: tuple[int, int]  # B, T
    aux_slots: tuple[int, ...]
    last_slot: int | None

    def materialize(self, device: torch.device | str, non_blocking: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(context [B, T, n_aux*H], target [B, T, H] or None), bf16 on `device`."""
        b, t = self.rows
        hidden = materialize(self.planes, device, non_blocking=non_blocking)
        hidden = hidden.view(b, t, *hidden.shape[1:])
        aux = torch.as_tensor(self.aux_slots, dtype=torch.long, device=hidden.device)
        context = hidden.index_select(2, aux).reshape(b, t, -1)
        target = hidden[:, :, self.last_slot].contiguous() if self.last_slot is not None else None
        return context, target


@dataclass
class Batch:
    """One micro-batch. Padding: token 0, zero hidden states, `loss_mask` False, `anchor_valid` False."""

    ids: list[str]
    input_ids: torch.Tensor  # int64 [B, T]
    loss_mask: torch.Tensor  # bool [B, T]
    context_hidden: torch.Tensor | None  # bf16 [B, T, n_aux*H] (None until `to` while `deferred`)
    target_hidden: torch.Tensor | None  # bf16 [B, T, H]: last layer, pre final norm (None: top-K targets)
    anchors: torch.Tensor  # int64 [B, A], sorted per row, 0 where invalid
    anchor_valid: torch.Tensor  # bool [B, A]
    lengths: torch.Tensor  # int64 [B]: real tokens per row
    topk_ids: torch.Tensor | None = None  # int64 [B, T, K]: the target's top-K token ids (padding: 0)
    topk_probs: torch.Tensor | None = None  # float32 [B, T, K]: their probabilities (padding: 0)
    topk_tail: torch.Tensor | None = None  # float32 [B, T]: 1 - sum of the top-K probabilities (padding: 1)
    deferred: DeferredHidden | None = None  # context/target still quantised: `to` dequantises on its device

    @property
    def num_tokens(self) -> int:
        """Real (unpadded) tokens in the batch: the unit of tokens/s."""
        return int(self.lengths.sum())

    @property
    def num_anchors(self) -> int:
        return int(self.anchor_valid.sum())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on `device`, the deferred hidden states dequantised there."""
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            moved[f.name] = v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        if self.deferred is not None:
            moved["context_hidden"], moved["target_hidden"] = self.deferred.materialize(device, non_blocking)
            moved["deferred"] = None
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
    context, target, deferred = _pad_hidden(samples, t, tuple(aux_slots), last_slot)
    input_ids = torch.zeros(b, t, dtype=torch.long)
    loss_mask = torch.zeros(b, t, dtype=torch.bool)
    if last_slot is None:
        if topk <= 0:
            raise ValueError("collate: without a last-layer slot the targets need topk > 0")
        topk_ids = torch.zeros(b, t, topk, dtype=torch.long)
        topk_probs = torch.zeros(b, t, topk, dtype=torch.float32)
        topk_tail = torch.ones(b, t, dtype=torch.float32)
    anchor_t = torch.zeros(b, a, dtype=torch.long)
    valid = torch.zeros(b, a, dtype=torch.bool)
    lengths = torch.zeros(b, dtype=torch.long)
    for i, (s, anc) in enumerate(zip(samples, anchors, strict=True)):
        n = int(s.input_ids.shape[0])
        input_ids[i, :n] = s.input_ids
        loss_mask[i, :n] = s.loss_mask
        if last_slot is None:
            if s.topk is None:
                raise ValueError(f"sample {s.id} has no stored top-K distribution (needed for the loss targets)")
            cut = s.topk.truncate(topk)
            topk_ids[i, :n], topk_probs[i, :n], topk_tail[i, :n] = cut.ids, cut.probs(), cut.tail
        anchor_t[i, : anc.numel()] = anc
        valid[i, : anc.numel()] = not dummy
        lengths[i] = 0 if dummy else n
    batch = Batch([s.id for s in samples], input_ids, loss_mask, context, target, anchor_t, valid, lengths,
                  deferred=deferred)
    if last_slot is None:
        batch.topk_ids, batch.topk_probs, batch.topk_tail = topk_ids, topk_probs, topk_tail
    return batch


def _pad_hidden(samples: Sequence[HiddenSample], t: int, aux_slots: tuple[int, ...], last_slot: int | None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None, DeferredHidden | None]:
    """(context, target, None) padded to T tokens, or (None, None, planes) when they can be deferred."""
    deferred = _deferred(samples, t, aux_slots, last_slot)
    if deferred is not None:
        return None, None, deferred
    # eager: planes in a batch that cannot defer (mixed codecs) dequantise here, as the one-call decode does
    hidden = [s.hidden if isinstance(s.hidden, torch.Tensor) else s.hidden.dequantize() for s in samples]
    b, h, n_aux = len(hidden), int(hidden[0].shape[-1]), len(aux_slots)
    context = torch.zeros(b, t, n_aux * h, dtype=hidden[0].dtype)
    target = torch.zeros(b, t, h, dtype=hidden[0].dtype) if last_slot is not None else None
    aux_index = torch.as_tensor(list(aux_slots), dtype=torch.long)
    for i, x in enumerate(hidden):
        n = int(x.shape[0])
        context[i, :n] = x.index_select(1, aux_index).reshape(n, n_aux * h)  # (T, n_aux, H) -> (T, n_aux*H)
        if target is not None:
            target[i, :n] = x[:, last_slot]
    return context, target, None


def _deferred(samples: Sequence[HiddenSample], t: int, aux_slots: tuple[int, ...],
              last_slot: int | None) -> DeferredHidden | None:
    """The batch's planes padded to T tokens, when every sample is planes of one codec (else None)."""
    planes = [s.hidden for s in samples]
    if not all(isinstance(p, QuantPlanes) and p.spec == planes[0].spec for p in planes):
        return None
    _, n_layers, h = planes[0].codes.shape
    ng = int(planes[0].scales.shape[-1])
    codes = torch.zeros(len(planes), t, n_layers, h, dtype=torch.int8)
    scales = torch.zeros(len(planes), t, n_layers, ng, dtype=torch.bfloat16)
    for i, p in enumerate(planes):
        codes[i, : p.codes.shape[0]] = p.codes
        scales[i, : p.scales.shape[0]] = p.scales
    rows = (len(planes), t)
    flat = QuantPlanes(planes[0].spec, codes.view(-1, n_layers, h), scales.view(-1, n_layers, ng))
    return DeferredHidden(flat, rows, aux_slots, last_slot)
