"""Load, validate and atomically rewrite a dataset manifest; explain fingerprint mismatches.

The manifest is the commit point (see `schemas.store.Manifest`). Loading it validates every field and
refuses file names that are not plain names, so a crafted or hand-edited manifest cannot make the
reader or the resume logic touch files outside the dataset directory.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import ValidationError

from dspark_data.atomic import atomic_write_bytes
from schemas.base import canonical_json
from schemas.store import MANIFEST_NAME, Manifest


class StoreError(RuntimeError):
    """A dataset directory that cannot be read or written as asked; the message names the file and the fix."""


class FingerprintMismatch(StoreError):
    """An existing dataset was produced with other settings than the ones given now."""

    def __init__(self, directory: Path, differences: list[str]):
        self.differences = differences
        listed = "; ".join(differences[:12]) + (" ..." if len(differences) > 12 else "")
        super().__init__(
            f"{directory} holds a dataset made with different settings ({listed}); "
            "choose a new --out directory, or pass --overwrite to replace it"
        )


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def manifest_path(directory: Path) -> Path:
    return Path(directory) / MANIFEST_NAME


def load_manifest(directory: Path) -> Manifest:
    """Read and validate `DIR/manifest.json`; raise StoreError naming the file and the bad field."""
    path = manifest_path(directory)
    if not path.is_file():
        raise StoreError(f"{path}: no manifest; this is not a dspark dataset directory (or nothing was committed)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: unreadable manifest ({exc})") from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise StoreError(f"{path}: invalid manifest at {where}: {first['msg']}") from None


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Atomically replace the manifest: this is the instant a commit becomes visible."""
    manifest.updated_at = utc_now()
    text = json.dumps(manifest.model_dump(mode="json"), indent=1, ensure_ascii=False) + "\n"
    atomic_write_bytes(manifest_path(directory), text.encode("utf-8"))


def schema_columns(schema: pa.Schema) -> dict[str, str]:
    """The manifest's description of an Arrow schema (name -> type string), compared on resume."""
    return {f.name: str(f.type) for f in schema}


def _flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(obj, dict) and obj:
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix or "<root>": canonical_json(obj)}


def fingerprint_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable list of the fields that differ, as 'key: old -> new' (dotted keys for nesting)."""
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {a.get(key, '<absent>')} -> {b.get(key, '<absent>')}")
    return diffs
