"""Refuse data that does not fit the recipe and target, with a message naming the mismatch.

Training on hidden states captured at other layers, or from a target of another width, would run without
error and learn garbage; these checks run before any model is built (the draft vocab is checked by its
loader, `dspark_data.vocab.load_draft_vocab`). They also map the recipe's layers onto the dataset's
stored layer axis, so a dataset that stores extra layers still works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dspark_data.mismatch import DataMismatch
from dspark_train.data.hidden_source import HiddenSource
from schemas.recipe import CaptureConfig


@dataclass(frozen=True)
class LayerSlots:
    aux: tuple[int, ...]  # stored-axis positions of the recipe's aux layers, in recipe order
    last: int | None  # stored-axis position of the last layer id N; None: targets from the stored top-K
    topk: int = 0  # K of the top-K targets the trainer uses (0: exact targets from the last layer)


def layer_slots(
    stored: Sequence[int],
    aux_layers: Sequence[int],
    num_target_layers: int,
    where: str,
    *,
    include_last_layer: bool = CaptureConfig.default_of("include_last_layer"),
    topk: int = 0,
    stored_topk: int = 0,
) -> LayerSlots:
    """Where the recipe's aux layers and the last layer N sit on the dataset's layer axis, and which targets
    the loss uses: the last layer when the recipe's capture.include_last_layer is true (exact), else the
    stored top-K cut to the recipe's capture.topk_logprobs (so one capture at K serves runs at any K' <= K)."""
    stored = list(stored)
    missing = [layer for layer in aux_layers if layer not in stored]
    if missing:
        raise DataMismatch(
            f"hidden-state data {where} stores layer ids {stored}, but the recipe's capture.aux_layers="
            f"{list(aux_layers)} needs {missing}: re-run `dspark dump-hidden` with this recipe, or set "
            f"capture.aux_layers to layers the data has"
        )
    aux = tuple(stored.index(layer) for layer in aux_layers)
    if not include_last_layer:
        if topk <= 0:
            raise DataMismatch(
                "capture.include_last_layer=false and capture.topk_logprobs=0 leave the loss without targets: "
                "set capture.topk_logprobs=K (the stored top-K) or include_last_layer=true"
            )
        if topk > stored_topk:
            raise DataMismatch(
                f"hidden-state data {where} stores the target's top-{stored_topk} log-probs, but the recipe asks "
                f"capture.topk_logprobs={topk}: capture again with K >= {topk}, or set K <= {stored_topk}"
            )
        return LayerSlots(aux, None, topk)
    if num_target_layers not in stored:
        raise DataMismatch(
            f"hidden-state data {where} stores layer ids {stored} without the target's last layer "
            f"{num_target_layers} (needed for the loss targets): capture with capture.include_last_layer=true "
            f"from a target with {num_target_layers} layers"
        )
    return LayerSlots(aux, stored.index(num_target_layers))


def check_hidden(source: HiddenSource, *, hidden_size: int, vocab_size: int, where: str, probe: int = 4) -> None:
    """Hidden size and token ids (of the first `probe` samples) must fit the target."""
    if source.info.hidden_size != hidden_size:
        raise DataMismatch(
            f"hidden-state data {where} has hidden size {source.info.hidden_size}, but the target has "
            f"hidden_size={hidden_size}: the data was captured from another target"
        )
    for i in range(min(probe, len(source))):
        s = source.get(i)
        if s.hidden.shape[-1] != hidden_size or s.hidden.shape[1] != len(source.info.layer_ids):
            raise DataMismatch(f"sample {s.id} of {where} has hidden shape {tuple(s.hidden.shape)}, "
                               f"expected (T, {len(source.info.layer_ids)}, {hidden_size})")
        top = int(s.input_ids.max()) if s.input_ids.numel() else -1
        if top >= vocab_size:
            raise DataMismatch(
                f"sample {s.id} of {where} has token id {top} >= the target's vocab_size={vocab_size}: "
                "the data was tokenized for another target"
            )
