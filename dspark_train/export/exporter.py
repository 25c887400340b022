"""`export_draft`: a training checkpoint -> a speculators directory vLLM serves (DSpark or DFlash).

Output (written into a temp directory next to `out`, then renamed into place, so a killed export never
leaves a directory vLLM would half-load):
- `config.json`         speculators format (speculators_config.py)
- `model.safetensors`   vLLM's tensor names (weights.py), bf16 by default, confidence head fp32
- `README.md`           model card from the run (card.py)
- `dspark_export.json`  provenance: checkpoint, step, fingerprints, the full DraftConfig
- `summary.json`        flat figures for `dspark demo`

Reruns with the same checkpoint and options reuse the output (`"cached": true`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dspark_data.atomic import publish_dir, recover_dir, temp_sibling
from dspark_data.stage import SUMMARY, Stage, cached_summary, execute, summary_bytes
from dspark_data.targets import load_target_info, resolve_target
from dspark_data.targets.weights import load_target_head
from dspark_train.dtypes import TORCH_DTYPES
from dspark_train.export.card import render_card
from dspark_train.export.checkpoint_reader import TrainedDraft, read_checkpoint
from dspark_train.export.speculators_config import ExportFormat, build_config
from dspark_train.export.weights import cast_for_export, check_shapes, select_draft_tensors
from dspark_train.logging_utils import summary_key
from schemas import fingerprint
from schemas.draft import PROVENANCE_NAME, ExportProvenance
from schemas.summary import ExportSummary


def verifier_name_or_path(target_spec: str, trained_dir: str | None = None) -> str:
    """What vLLM must load as the verifier: a hub id as given, else an absolute local directory.

    `tiny:*` specs resolve to their cache directory (the exact weights the draft was trained against).
    """
    if target_spec.startswith("tiny:"):
        return str(Path(trained_dir or resolve_target(target_spec)).resolve())
    local = Path(target_spec).expanduser()
    if local.is_dir():
        return str(local.resolve())
    return target_spec


def _verifier_architectures(verifier: str, revision: str | None) -> list[str]:
    try:
        return load_target_info(verifier, revision).architectures
    except (FileNotFoundError, ValueError, OSError):
        return []  # a hub id not in the offline cache: vLLM reads them from the hub at serve time


def _write_dir(out: Path, files: dict[str, bytes], tensors: dict[str, torch.Tensor]) -> None:
    """Write everything into `.tmp-<name>` beside `out`, then publish it whole (old or new, never neither)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    publish_dir(tmp, out)


def export_tensors(
    draft: TrainedDraft, fmt: ExportFormat, dtype: torch.dtype, target_dir: str, revision: str | None = None
) -> dict[str, torch.Tensor]:
    """The checked, cast tensors of the export (the draft rebuilt with the target's frozen tensors)."""
    head = load_target_head(target_dir, revision=revision)
    model = draft.build_model(head.embed, head.lm_head)
    tensors = model.exportable_state_dict()
    vocab = {k: tensors.pop(k) for k in ("lm_head.weight", "d2t", "t2d") if k in tensors}
    tensors = {**select_draft_tensors(tensors, fmt), **vocab}
    tensors = cast_for_export(tensors, dtype)
    check_shapes(tensors, draft.config, fmt)
    return tensors


def export_draft(
    checkpoint: Path,
    out: Path,
    *,
    fmt: ExportFormat = "dspark",
    num_speculative_tokens: int | None = None,
    dtype: str = "bfloat16",
    verifier: str | None = None,
    verifier_revision: str | None = None,
) -> dict[str, Any]:
    """Export `checkpoint` (step dir or train dir) to `out`; returns the summary written to summary.json.

    `num_speculative_tokens` defaults to the recipe's `eval.num_speculative_tokens`; `verifier` overrides
    the target recorded in the run (e.g. the hub id of a target trained from a local copy);
    `verifier_revision` the run's `target.revision` (recorded as `verifier.revision`, the head is read there).
    """
    if fmt not in ("dspark", "dflash"):
        raise ValueError(f"--format must be dspark or dflash, got {fmt!r}")
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(TORCH_DTYPES)}, got {dtype!r}")
    return execute(ExportStage(read_checkpoint(checkpoint), Path(out), fmt, num_speculative_tokens, dtype,
                               verifier, verifier_revision))


class ExportStage(Stage[dict[str, Any]]):
    """Complete when `summary.json` records the fingerprint of the checkpoint and options, beside the weights."""

    def __init__(self, draft: TrainedDraft, out: Path, fmt: ExportFormat, k: int | None, dtype: str,
                 verifier: str | None, revision: str | None) -> None:
        recipe, cfg = draft.recipe, draft.config
        self.draft, self.out, self.fmt, self.dtype = draft, out, fmt, dtype
        target_spec = recipe.get("target", {}).get("model") or draft.state.get("target_dir")
        self.target_dir = draft.state.get("target_dir") or resolve_target(target_spec)
        self.verifier = verifier or verifier_name_or_path(target_spec, self.target_dir)
        self.revision = revision or recipe.get("target", {}).get("revision")
        self.k = k or recipe.get("eval", {}).get("num_speculative_tokens") or cfg.num_draft_tokens
        self.aux = recipe.get("capture", {}).get("aux_layers")
        if not self.aux:
            raise ValueError(f"{draft.path}/recipe.json has no capture.aux_layers: cannot name the aux layers for vLLM")

    def fingerprint(self) -> str:
        options = {"format": self.fmt, "k": self.k, "dtype": self.dtype, "verifier": self.verifier,
                   "verifier_revision": self.revision}
        draft = self.draft
        return fingerprint({"checkpoint": str(draft.path.resolve()), "plan": draft.state.get("plan_fingerprint"),
                            "step": draft.step, **options})

    def cached(self, fingerprint: str) -> dict[str, Any] | None:
        recover_dir(self.out)  # an export killed half-way through replacing `out`: the previous one comes back
        return cached_summary(self.out, fingerprint, ("model.safetensors",))

    def run(self, fingerprint: str) -> dict[str, Any]:
        draft, cfg, fmt, k, out = self.draft, self.draft.config, self.fmt, self.k, self.out
        verifier, revision = self.verifier, self.revision
        config_json = build_config(
            cfg, fmt=fmt, aux_layer_ids=self.aux, num_speculative_tokens=k, verifier_name_or_path=verifier,
            verifier_architectures=_verifier_architectures(verifier, revision), dtype=self.dtype,
            verifier_revision=revision,
        )
        tensors = export_tensors(draft, fmt, TORCH_DTYPES[self.dtype], self.target_dir, revision)
        card = render_card(fmt=fmt, cfg=cfg, config_json=config_json, recipe=draft.recipe, state=draft.state,
                           step=draft.step, out_name=str(out))
        summary: dict[str, Any] = {
            "cached": False,
            "format": fmt,
            "out": str(out),
            "step": draft.step,
            "num_speculative_tokens": k,
            "num_tensors": len(tensors),
            "bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
            "verifier": verifier,
            "verifier_revision": revision,
            "fingerprint": fingerprint,
        }
        if "accepted_length" in draft.validation:
            summary[summary_key("val_", "accepted_length")] = draft.validation["accepted_length"]
        files = {
            "config.json": (json.dumps(config_json, indent=2) + "\n").encode(),
            "README.md": card.encode(),
            PROVENANCE_NAME: (json.dumps(self._provenance(), indent=2) + "\n").encode(),
            SUMMARY: summary_bytes(summary, schema=ExportSummary),
        }
        _write_dir(out, files, tensors)
        return summary

    def _provenance(self) -> dict[str, Any]:
        """`dspark_export.json`: where the export came from (checkpoint, fingerprints, the full DraftConfig)."""
        draft = self.draft
        provenance = {
            "format": self.fmt,
            "checkpoint": str(draft.path.resolve()),
            "step": draft.step,
            "plan_fingerprint": draft.state.get("plan_fingerprint"),
            "data_fingerprint": draft.state.get("data_fingerprint"),
            "vocab_fingerprint": draft.state.get("vocab_fingerprint"),
            "target_dir": self.target_dir,
            "draft_config": draft.config.to_dict(),
            "validation": draft.validation,
        }
        ExportProvenance.model_validate(provenance)  # the format is schemas.draft's; the file holds the dict
        return provenance
