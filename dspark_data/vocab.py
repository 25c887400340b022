"""The draft vocabulary: the N target tokens the draft predicts, chosen by loss-masked frequency.

Why loss-masked: the draft only ever proposes tokens the target generates (assistant turns), so prompt
tokens must not steer the choice. Selection is deterministic: count every loss-masked token of a regen
or hidden-state dataset, keep the top N by count with ties broken by the lower id, and sort the kept ids
ascending. Outputs, in the vocab directory:

- `vocab.safetensors`: `d2t` int64 [N] with `d2t[i] = target_id(i) - i` (the offset form vLLM's
  EAGLE-3 style loaders read), `t2d` bool [V] marking kept target ids, `counts` int64 [V] (loss-masked
  count of every target id);
- `vocab.json` (`schemas.store.VocabManifest`, written last: the commit point) with the data fingerprint;
- `summary.json` (flat figures; `cached: true` when an existing vocab with the same fingerprint is reused).

    result = build_vocab("runs/tiny/hidden", "runs/tiny/vocab", size=32000, target_vocab_size=V)
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from dspark_data.atomic import atomic_write_bytes
from dspark_data.store.manifest import StoreError, utc_now
from dspark_data.store.parts import open_any
from schemas.base import fingerprint as fingerprint_of
from schemas.store import VocabManifest

VOCAB_FILE = "vocab.safetensors"
VOCAB_MANIFEST = "vocab.json"
SUMMARY = "summary.json"


@dataclass
class VocabResult:
    out_dir: str
    draft_vocab_size: int
    target_vocab_size: int
    samples: int
    tokens: int
    coverage: float
    cached: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_tokens(
    data_dir: str | Path, *, ids_column: str = "input_ids", mask_column: str = "loss_mask", minlength: int = 0
) -> tuple[np.ndarray, int]:
    """Loss-masked token counts (int64 [max(minlength, max id + 1)]) and the number of samples counted."""
    ds = open_any(data_dir, require_complete=True)
    counts = np.zeros(minlength, dtype=np.int64)
    for table in ds.iter_columns([ids_column, mask_column]):
        ids = _flat(table.column(ids_column)).astype(np.int64, copy=False)
        mask = _flat(table.column(mask_column)).astype(bool, copy=False)
        if ids.shape != mask.shape:
            raise StoreError(f"{data_dir}: {ids_column} and {mask_column} have different lengths in a shard")
        if ids.size and ids.min() < 0:
            raise StoreError(f"{data_dir}: negative token id {int(ids.min())} in {ids_column}")
        c = np.bincount(ids[mask], minlength=counts.size)
        if c.size > counts.size:
            counts = np.pad(counts, (0, c.size - counts.size))
        counts += c
    return counts, len(ds)


def _flat(column: pa.ChunkedArray) -> np.ndarray:
    parts = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks]
    return np.concatenate(parts) if parts else np.zeros(0)


def select_vocab(counts: np.ndarray, size: int) -> np.ndarray:
    """The kept target ids, ascending: the top `size` by count, ties broken by the lower id."""
    n = min(size, counts.size)
    order = np.lexsort((np.arange(counts.size), -counts))  # last key is primary: count desc, then id asc
    return np.sort(order[:n]).astype(np.int64)


def vocab_tensors(counts: np.ndarray, kept: np.ndarray) -> dict[str, torch.Tensor]:
    t2d = np.zeros(counts.size, dtype=bool)
    t2d[kept] = True
    return {
        "d2t": torch.from_numpy(kept - np.arange(kept.size, dtype=np.int64)),
        "t2d": torch.from_numpy(t2d),
        "counts": torch.from_numpy(counts.astype(np.int64)),
    }


def build_vocab(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    size: int,
    target_vocab_size: int | None = None,
    ids_column: str = "input_ids",
    mask_column: str = "loss_mask",
) -> VocabResult:
    """Count, select and write the draft vocab (see the module docstring); reuse it when nothing changed.

    `target_vocab_size` (V) sizes `t2d` and `counts`; None takes the largest id seen + 1. If V < size, all
    V ids are kept.
    """
    start = time.monotonic()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    ds = open_any(data_dir, require_complete=True)
    m = ds.manifest
    fp = {
        "data_kind": m.kind,
        "data_fingerprint": m.fingerprint_hash,
        "data_shards": [e.sha256 for e in m.shards],
        "size": size,
        "target_vocab_size": target_vocab_size,
        "columns": [ids_column, mask_column],
    }
    fp_hash = fingerprint_of(fp)
    cached = _load_cached(out_dir, fp_hash)
    if cached is not None:
        result = VocabResult(str(out_dir), cached.draft_vocab_size, cached.target_vocab_size, cached.samples,
                             cached.tokens, cached.coverage, True, round(time.monotonic() - start, 3))
        _write_summary(out_dir, result)
        return result
    counts, samples = count_tokens(data_dir, ids_column=ids_column, mask_column=mask_column,
                                   minlength=target_vocab_size or 0)
    if target_vocab_size is not None and counts.size > target_vocab_size:
        raise StoreError(
            f"{data_dir}: token id {counts.size - 1} >= target vocab size {target_vocab_size}; wrong target?"
        )
    kept = select_vocab(counts, size)
    total = int(counts.sum())
    coverage = round(float(counts[kept].sum() / total), 6) if total else 0.0
    blob = save_safetensors(vocab_tensors(counts, kept))
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / VOCAB_FILE, blob)
    manifest = VocabManifest(
        fingerprint=fp,
        fingerprint_hash=fp_hash,
        data_dir=str(data_dir),
        data_kind=m.kind,
        draft_vocab_size=int(kept.size),
        target_vocab_size=int(counts.size),
        samples=samples,
        tokens=total,
        coverage=coverage,
        sha256=hashlib.sha256(blob).hexdigest(),
        created_at=utc_now(),
    )
    atomic_write_bytes(out_dir / VOCAB_MANIFEST, (manifest.model_dump_json(indent=1) + "\n").encode())
    result = VocabResult(str(out_dir), int(kept.size), int(counts.size), samples, total, coverage, False,
                         round(time.monotonic() - start, 3))
    _write_summary(out_dir, result)
    return result


def _load_cached(out_dir: Path, fp_hash: str) -> VocabManifest | None:
    path, blob_path = out_dir / VOCAB_MANIFEST, out_dir / VOCAB_FILE
    if not path.is_file() or not blob_path.is_file():
        return None
    try:
        manifest = VocabManifest.model_validate_json(path.read_text())
    except ValueError:
        return None
    if manifest.fingerprint_hash != fp_hash:
        return None
    if hashlib.sha256(blob_path.read_bytes()).hexdigest() != manifest.sha256:
        return None
    return manifest


def _write_summary(out_dir: Path, result: VocabResult) -> None:
    summary = {"stage": "vocab", **result.to_dict(), "coverage": round(result.coverage, 6)}
    atomic_write_bytes(out_dir / SUMMARY, (json.dumps(summary, indent=1) + "\n").encode())


def load_vocab(out_dir: str | Path) -> dict[str, torch.Tensor]:
    """`d2t`, `t2d`, `counts` of a built vocab, checked against `vocab.json`'s sha256."""
    out_dir = Path(out_dir)
    manifest = VocabManifest.model_validate_json((out_dir / VOCAB_MANIFEST).read_text())
    blob = (out_dir / VOCAB_FILE).read_bytes()
    if hashlib.sha256(blob).hexdigest() != manifest.sha256:
        raise StoreError(f"{out_dir / VOCAB_FILE}: does not match the sha256 in {VOCAB_MANIFEST}; rebuild it")
    return load_safetensors(blob)
