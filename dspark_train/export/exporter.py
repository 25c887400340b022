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
    draft = read_checkpoint(checkpoint)
    recipe = draft.recipe
    cfg = draft.config
    target_spec = recipe.get("target", {}).get("model") or draft.state.get("target_dir")
    target_dir = draft.state.get("target_dir") or resolve_target(target_spec)
    verifier = verifier or verifier_name_or_path(target_spec, target_dir)
    revision = verifier_revision or recipe.get("target", {}).get("revision")
    k = num_speculative_tokens or recipe.get("eval", {}).get("num_speculative_tokens") or cfg.num_draft_tokens
    aux = recipe.get("capture", {}).get("aux_layers")
    if not aux:
        raise ValueError(f"{draft.path}/recipe.json has no capture.aux_layers: cannot name the aux layers for vLLM")
    options = {"format": fmt, "k": k, "dtype": dtype, "verifier": verifier, "verifier_revision": revision}
    fp = fingerprint({"checkpoint": str(draft.path.resolve()), "plan": draft.state.get("plan_fingerprint"),
                      "step": draft.step, **options})
    out = Path(out)
    recover_dir(out)  # an export killed half-way through replacing `out`: the previous one comes back
    previous = out / "summary.json"
    if previous.is_file() and (out / "model.safetensors").is_file():
        old = json.loads(previous.read_text())
        if old.get("fingerprint") == fp:
            return {**old, "cached": True}

    config_json = build_config(
        cfg, fmt=fmt, aux_layer_ids=aux, num_speculative_tokens=k, verifier_name_or_path=verifier,
        verifier_architectures=_verifier_architectures(verifier, revision), dtype=dtype, verifier_revision=revision,
    )
    tensors = export_tensors(draft, fmt, TORCH_DTYPES[dtype], target_dir, revision)
    card = render_card(fmt=fmt, cfg=cfg, config_json=config_json, recipe=recipe, state=draft.state,
                       step=draft.step, out_name=str(out))
    provenance = {
        "format": fmt,
        "checkpoint": str(draft.path.resolve()),
        "step": draft.step,
        "plan_fingerprint": draft.state.get("plan_fingerprint"),
        "data_fingerprint": draft.state.get("data_fingerprint"),
        "vocab_fingerprint": draft.state.get("vocab_fingerprint"),
        "target_dir": target_dir,
        "draft_config": cfg.to_dict(),
        "validation": draft.validation,
    }
    ExportProvenance.model_validate(provenance)  # the format is schemas.draft's; the file holds the dict
    val = draft.validation
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
        "fingerprint": fp,
    }
    if "accepted_length" in val:
        summary[summary_key("val_", "accepted_length")] = val["accepted_length"]
    files = {
        "config.json": (json.dumps(config_json, indent=2) + "\n").encode(),
        "README.md": card.encode(),
        PROVENANCE_NAME: (json.dumps(provenance, indent=2) + "\n").encode(),
        "summary.json": (json.dumps(summary, indent=2) + "\n").encode(),
    }
    _write_dir(out, files, tensors)
    return summary
