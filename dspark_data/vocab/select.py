"""Which target ids the draft keeps: loss-masked counts, then the top N (ties by the lower id).

One selection for every draft vocab: `dspark vocab` counts a dataset on disk (`count_tokens`), the
trainer's synthetic runs count their in-memory samples; both keep `select_vocab(counts, N)` and store
it as `vocab_tensors`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from dspark_data.store.manifest import StoreError
from dspark_data.store.parts import open_any


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
    """`d2t` int64 [N] (target id - draft id), `t2d` bool [V], `counts` int64 [V]: `vocab.safetensors`."""
    t2d = np.zeros(counts.size, dtype=bool)
    t2d[kept] = True
    return {
        "d2t": torch.from_numpy(kept - np.arange(kept.size, dtype=np.int64)),
        "t2d": torch.from_numpy(t2d),
        "counts": torch.from_numpy(counts.astype(np.int64)),
    }
