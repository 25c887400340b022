"""`dspark train --init-from DIR`: start from a released draft in the speculators format instead of random.

Accepted: one of our exports (`dspark export`, dspark or dflash format), a DFlash export (the backbone
only: the Markov and confidence heads start fresh from the seeded init), or a checkpoint that speculators
itself saved (`DSparkDraftModel.save_pretrained`, e.g. the seed's published preview). All of them are a
`config.json` with `speculators_model_type` + `model.safetensors` (or a sharded `model-*.safetensors` set
with its `model.safetensors.index.json`); the tensor names are the ones vLLM loads (export/weights.py).

Checked before anything is loaded, each mismatch named with the recipe field it comes from: the draft
architecture the recipe and target give (layers, widths, heads, block size, heads' ranks), the aux layer
ids, the target vocab size and the draft vocab (the same token ids, not only the same count). Only the
draft's trained tensors are taken: embedding and lm_head rows stay the target's (frozen), the optimizer
and the lr schedule start fresh. The run's plan fingerprint records the weights' hash, state.json and
summary.json the path, so a run from another starting point never resumes this one by accident.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from dspark_train.export.load import draft_config_from_export
from dspark_train.export.weights import BACKBONE, DSPARK_HEADS, expected_shapes
from dspark_train.model.config import DraftConfig

# DraftConfig field -> the recipe field (or target property) that sets it, for the error messages.
CHECKED_FIELDS = {
    "num_layers": "model.num_layers",
    "hidden_size": "model.hidden_size",
    "intermediate_size": "model.intermediate_size",
    "num_attention_heads": "model.num_attention_heads",
    "num_key_value_heads": "model.num_key_value_heads",
    "head_dim": "model.head_dim",
    "block_size": "model.block_size",
    "sample_from_anchor": "model.sample_from_anchor",
    "target_hidden_size": "the target's hidden_size",
    "num_aux_layers": "capture.aux_layers (count)",
    "target_vocab_size": "the target's vocab_size",
    "draft_vocab_size": "vocab.draft_vocab_size / --vocab",
}
HEAD_FIELDS = {  # only compared when the source has the DSpark heads
    "markov_rank": "model.markov_rank",
    "enable_confidence_head": "model.enable_confidence_head",
    "confidence_head_with_markov": "model.confidence_head_with_markov",
}
NOTED_FIELDS = ("rope_theta", "rms_norm_eps", "mask_token_id", "activation")  # differ: a note, not an error


class InitFromError(ValueError):
    """--init-from DIR does not fit this run; the message names every mismatch."""


@dataclass(frozen=True)
class InitSource:
    path: Path
    fmt: str  # "dspark" or "dflash"
    sha256: str  # of the weight files' bytes, in name order
    config: DraftConfig
    aux_layer_ids: list[int]
    weight_files: list[Path]

    def record(self) -> dict[str, Any]:
        """What state.json / summary.json say the run started from."""
        return {"path": str(self.path), "format": self.fmt, "weights_sha256": self.sha256}


def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / n for n in names]
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    raise InitFromError(f"--init-from {directory}: no model.safetensors (nor model.safetensors.index.json)")


def _sha256(files: list[Path]) -> str:
    h = hashlib.sha256()
    for path in files:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def read_source(directory: Path) -> InitSource:
    """Parse and hash an --init-from directory (cheap next to training; no tensors are kept)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise InitFromError(f"--init-from {directory}: no config.json (expected a speculators-format draft)")
    try:
        cj = json.loads(config_path.read_text())
        cfg = draft_config_from_export(cj)
    except (ValueError, KeyError, TypeError) as exc:
        raise InitFromError(f"--init-from {config_path}: not a dspark/dflash speculators config ({exc!r})") from exc
    files = _weight_files(directory)
    return InitSource(
        path=directory, fmt=cj["speculators_model_type"], sha256=_sha256(files), config=cfg,
        aux_layer_ids=[int(i) for i in cj["aux_hidden_state_layer_ids"]], weight_files=files,
    )


def mismatches(source: InitSource, want: DraftConfig, aux_layers: list[int]) -> tuple[list[str], list[str]]:
    """(errors, notes): every architecture field that differs, named by the recipe field behind it."""
    fields = dict(CHECKED_FIELDS, **(HEAD_FIELDS if source.fmt == "dspark" else {}))
    errors = [
        f"{where}: run {getattr(want, name)!r}, {source.fmt} draft {getattr(source.config, name)!r}"
        for name, where in fields.items()
        if getattr(want, name) != getattr(source.config, name)
    ]
    if list(aux_layers) != source.aux_layer_ids:
        errors.append(f"capture.aux_layers: run {list(aux_layers)}, draft {source.aux_layer_ids}")
    notes = [
        f"--init-from: {name} differs (run {getattr(want, name)!r}, draft {getattr(source.config, name)!r}): "
        "the run's value is used"
        for name in NOTED_FIELDS
        if getattr(want, name) != getattr(source.config, name)
    ]
    return errors, notes


def _draft_t2d(tensors: dict[str, torch.Tensor], cfg: DraftConfig) -> torch.Tensor | None:
    if "t2d" in tensors:
        return tensors["t2d"].bool()
    if "d2t" in tensors:
        t2d = torch.zeros(cfg.target_vocab_size, dtype=torch.bool)
        t2d[torch.arange(cfg.draft_vocab_size) + tensors["d2t"].long()] = True
        return t2d
    return None


def load_into(model: torch.nn.Module, source: InitSource, want: DraftConfig, aux_layers: list[int],
              run_t2d: torch.Tensor) -> list[str]:
    """Check `source` against the run and copy its trained tensors into `model`; returns notes to print.

    Raises InitFromError naming every mismatch (architecture, aux layers, vocab, tensor shapes).
    """
    errors, notes = mismatches(source, want, aux_layers)
    if errors:
        raise InitFromError(f"--init-from {source.path} does not fit this run: " + "; ".join(errors))
    tensors: dict[str, torch.Tensor] = {}
    for path in source.weight_files:
        tensors.update(load_file(str(path)))
    if want.draft_vocab_size < want.target_vocab_size:
        draft_t2d = _draft_t2d(tensors, source.config)
        if draft_t2d is None:
            raise InitFromError(f"--init-from {source.path}: a reduced draft vocab but neither d2t nor t2d shipped")
        if not torch.equal(draft_t2d.cpu(), run_t2d.cpu().bool()):
            differ = int((draft_t2d.cpu() != run_t2d.cpu().bool()).sum()) // 2
            raise InitFromError(
                f"--init-from {source.path}: the draft vocab differs from this run's (--vocab): {differ} of "
                f"{want.draft_vocab_size} token ids differ; train with the draft's vocab (its d2t)"
            )
    wanted = {n: s for n, s in expected_shapes(want, source.fmt).items() if BACKBONE.match(n) or DSPARK_HEADS.match(n)}
    missing = sorted(set(wanted) - set(tensors))
    wrong = sorted(
        f"{n} {tuple(tensors[n].shape)} (run needs {wanted[n]})"
        for n in set(wanted) & set(tensors) if tuple(tensors[n].shape) != wanted[n]
    )
    if missing or wrong:
        raise InitFromError(f"--init-from {source.path}: missing tensors {missing[:6]}, wrong shapes {wrong[:6]}")
    own = model.state_dict()
    with torch.no_grad():
        for name in wanted:
            own[name].copy_(tensors[name].to(own[name].dtype))
    if source.fmt == "dflash" and (want.markov_rank > 0 or want.enable_confidence_head):
        notes.append("--init-from a DFlash draft: backbone loaded, Markov and confidence heads start fresh")
    ignored = sorted(n for n in tensors if n not in wanted and n not in ("lm_head.weight", "d2t", "t2d"))
    if ignored:
        notes.append(f"--init-from: tensors not used by this draft: {ignored[:6]}")
    return notes
