"""Refuse data that does not fit the recipe and target, with a message naming the mismatch.

Training on hidden states captured at other layers, from a target of another width, or with a draft
vocab built for another tokenizer would run without error and learn garbage; these checks run before
any model is built. They also map the recipe's layers onto the dataset's stored layer axis, so a
dataset that stores extra layers still works.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load

from dspark_train.data.source import HiddenSource


class DataMismatch(ValueError):
    """The data (hidden states or vocab) was produced for another recipe or target."""


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
    include_last_layer: bool = True,
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


@dataclass(frozen=True)
class DraftVocab:
    t2d: torch.Tensor  # bool (V,)
    d2t: torch.Tensor  # int64 (D,)
    fingerprint: str  # sha256 (16 hex) of the vocab file, "full" when the whole target vocab is used


def load_vocab(path: Path | None, *, target_vocab_size: int, draft_vocab_size: int) -> DraftVocab:
    """Read `vocab.safetensors` (from `dspark vocab`) and check it against the target and recipe.

    Without a file, a draft vocab as large as the target's is the identity (every id kept).
    """
    if path is None:
        if draft_vocab_size != target_vocab_size:
            raise DataMismatch(
                f"no draft vocab file, but vocab.draft_vocab_size={draft_vocab_size} is smaller than the target's "
                f"{target_vocab_size}: run `dspark vocab` first, then pass --vocab DIR (or keep it beside --data)"
            )
        return DraftVocab(
            torch.ones(target_vocab_size, dtype=torch.bool), torch.zeros(target_vocab_size, dtype=torch.long), "full"
        )
    blob = _checked_vocab_bytes(Path(path))
    tensors = load(blob)
    t2d, d2t = tensors["t2d"].bool(), tensors["d2t"].long()
    if t2d.numel() != target_vocab_size:
        raise DataMismatch(
            f"draft vocab {path} covers a target vocab of {t2d.numel()} ids, but the target has "
            f"vocab_size={target_vocab_size}: rebuild it with `dspark vocab` for this target"
        )
    if d2t.numel() != draft_vocab_size or int(t2d.sum()) != draft_vocab_size:
        raise DataMismatch(
            f"draft vocab {path} has {d2t.numel()} entries, but the recipe asks vocab.draft_vocab_size="
            f"{draft_vocab_size}: rebuild it with `dspark vocab --size {draft_vocab_size}` or change the recipe"
        )
    expected = t2d.nonzero().squeeze(-1) - torch.arange(draft_vocab_size)
    if not torch.equal(expected, d2t):
        raise DataMismatch(f"draft vocab {path}: d2t does not agree with t2d (corrupt or foreign file)")
    return DraftVocab(t2d, d2t, hashlib.sha256(blob).hexdigest()[:16])


def _checked_vocab_bytes(path: Path) -> bytes:
    """The vocab file's bytes, after checking them against the sha256 `dspark vocab` recorded in vocab.json.

    A vocab is part of the training input like the shards are: a file changed after it was built (a bad
    copy, an edit, bit rot) would train a draft over the wrong ids without any other check noticing.
    """
    from schemas.store import VocabManifest

    manifest_path = path.parent / "vocab.json"
    if not manifest_path.is_file():
        raise DataMismatch(f"draft vocab {path}: no vocab.json beside it (written by `dspark vocab` with its "
                           "checksum): pass a directory `dspark vocab` wrote, or rebuild it")
    try:
        manifest = VocabManifest.model_validate_json(manifest_path.read_text())
    except ValueError as exc:
        raise DataMismatch(f"draft vocab manifest {manifest_path} is not valid: {exc}") from None
    blob = path.read_bytes()
    actual = hashlib.sha256(blob).hexdigest()
    if actual != manifest.sha256:
        raise DataMismatch(f"draft vocab {path}: sha256 {actual[:16]}... does not match {manifest.sha256[:16]}... "
                           f"recorded in {manifest_path} (changed or damaged after `dspark vocab`): rebuild it")
    return blob
