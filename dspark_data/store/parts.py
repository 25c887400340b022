"""A parent of `part-IIIII-of-NNNNN/` datasets (written by N machines) read as one dataset.

`dspark regen` and `dspark dump-hidden` with `--num-shards N --shard-index i` (or $WORLD_SIZE/$RANK,
$SLURM_NTASKS/$SLURM_PROCID) each write one complete store dataset under `<out>/part-i-of-N/`. Every
later stage (`dump-hidden --data`, `vocab`, `train`, `inspect`, `verify`) takes the parent directory.

Opening checks, before anything is read, that the parts form one dataset: every part 0..N-1 present
once and complete, the same settings (fingerprint equal apart from `shard_index`), no sample id in two
parts. (`dspark inspect PARENT` runs the fuller `regen.merge.merge_check`, which also proves each part
holds exactly the ids it was assigned.)

Order: samples are presented sorted by a hash of their id, so the dataset reads the same whether it was
captured as 1 part or as 3 (the trainer's batches are keyed by id already, `dspark_train/data/sampler.py`;
this makes every index-keyed order, e.g. validation batches, independent of the split too). The combined
fingerprint is the parts' shared fingerprint without `shard_index`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dspark_data.store.manifest import StoreError
from dspark_data.store.reader import ShardDataset, open_dataset
from schemas.base import fingerprint as fingerprint_of
from schemas.store import MANIFEST_NAME, Manifest

PART_GLOB = "part-*-of-*"
SHARD_KEYS = ("shard_index",)  # fingerprint keys that differ between the parts of one dataset


def part_name(num_shards: int, shard_index: int) -> str:
    """`part-0000i-of-0000N`: the folder one machine writes (regen and dump-hidden alike)."""
    return f"part-{shard_index:05d}-of-{num_shards:05d}"


def find_part_dirs(directory: str | Path) -> list[Path]:
    """The `part-*-of-*` folders of a multi-machine output, sorted; [] for anything else."""
    return sorted(p for p in Path(directory).glob(PART_GLOB) if p.is_dir())


def is_parts_parent(directory: str | Path) -> bool:
    """True for a directory of parts (and no dataset of its own)."""
    d = Path(directory)
    return not (d / MANIFEST_NAME).is_file() and bool(find_part_dirs(d))


def order_key(sample_id: str) -> bytes:
    """Sort key of a sample in a multi-part dataset: a hash of its id alone."""
    return hashlib.sha256(b"dspark-order\x1f" + sample_id.encode("utf-8")).digest()


class PartsDataset:
    """All parts of a parent directory as one read-only dataset, in id-hash order.

    Duck-types the single-directory readers: `ShardDataset` (manifest, ids, lengths, len, record,
    iter_columns) and, when `open_part` opens hidden-state parts, `HiddenDataset` (layer_ids,
    hidden_size, codec, ds[i], tokens).
    """

    def __init__(self, parent: str | Path, open_part: Callable[[Path], Any] | None = None) -> None:
        self.directory = Path(parent)
        dirs = find_part_dirs(self.directory)
        if not dirs:
            raise StoreError(f"{parent}: no part-*-of-* folders")
        opener = open_part or (lambda p: open_dataset(p, require_complete=True))
        self.parts = [_open(opener, d) for d in dirs]
        self.manifest = _combined_manifest(self.directory, dirs, [p.manifest for p in self.parts])
        rows: list[tuple[bytes, int, int]] = []
        owner: dict[str, Path] = {}
        for n, (d, part) in enumerate(zip(dirs, self.parts, strict=True)):
            for r, sid in enumerate(part.ids):
                if sid in owner:
                    raise StoreError(f"{parent}: sample id {sid!r} is in both {owner[sid].name} and {d.name}")
                owner[sid] = d
                rows.append((order_key(sid), n, r))
        rows.sort()
        self._rows = [(n, r) for _, n, r in rows]
        self.ids: list[str] = [self.parts[n].ids[r] for n, r in self._rows]
        self.lengths = np.array([int(self.parts[n].lengths[r]) for n, r in self._rows], dtype=np.int64)
        self._pos = {sid: i for i, sid in enumerate(self.ids)}
        first = self.parts[0]
        self.layer_ids = list(getattr(first, "layer_ids", None) or [])
        self.hidden_size = getattr(first, "hidden_size", None)
        self.codec = getattr(first, "codec", None)

    def __len__(self) -> int:
        return len(self._rows)

    def index_of(self, sample_id: str) -> int:
        return self._pos[sample_id]

    def part_of(self, i: int) -> tuple[Any, int]:
        """(part dataset, its row) of sample i."""
        n, r = self._rows[i]
        return self.parts[n], r

    def __getitem__(self, i: int) -> Any:
        part, r = self.part_of(i)
        return part[r]

    def get(self, i: int) -> Any:
        return self[i]

    def get_deferred(self, i: int) -> Any:
        part, r = self.part_of(i)
        return part.get_deferred(r)

    def tokens(self, i: int) -> Any:
        part, r = self.part_of(i)
        return part.tokens(r)

    def record(self, i: int) -> tuple[pa.RecordBatch, int]:
        part, r = self.part_of(i)
        return _store(part).record(r)

    def row(self, i: int) -> dict[str, Any]:
        part, r = self.part_of(i)
        return _store(part).row(r)

    def iter_columns(self, columns: list[str]) -> Iterator[pa.Table]:
        """Every part's shards in turn (for whole-dataset scans whose result does not depend on order)."""
        for part in self.parts:
            yield from _store(part).iter_columns(columns)


def _store(part: Any) -> ShardDataset:
    return part.store if hasattr(part, "store") else part


def _open(opener: Callable[[Path], Any], directory: Path) -> Any:
    manifest = directory / MANIFEST_NAME
    if not manifest.is_file():
        raise StoreError(f"{directory}: this part has no {MANIFEST_NAME} (not started or not a dataset); "
                         "run its machine's command to write it")
    return opener(directory)


def _combined_manifest(parent: Path, dirs: list[Path], manifests: list[Manifest]) -> Manifest:
    """The parts' shared manifest: checked alike, all present and complete; totals summed."""
    first = manifests[0]
    shared = {k: v for k, v in first.fingerprint.items() if k not in SHARD_KEYS}
    num_shards = int(first.fingerprint.get("num_shards", len(dirs)))
    indices = []
    for d, m in zip(dirs, manifests, strict=True):
        if not m.complete:
            raise StoreError(f"{d}: this part is not complete; rerun the same command on its machine to finish it")
        if m.kind != first.kind:
            raise StoreError(f"{d}: a {m.kind!r} part among {first.kind!r} parts")
        own = {k: v for k, v in m.fingerprint.items() if k not in SHARD_KEYS}
        if own != shared:
            diff = sorted(k for k in set(own) | set(shared) if own.get(k) != shared.get(k))
            raise StoreError(f"{d}: made with different settings than {dirs[0].name} (differs in {diff})")
        indices.append(int(m.fingerprint.get("shard_index", -1)))
    if sorted(indices) != list(range(num_shards)):
        missing = sorted(set(range(num_shards)) - set(indices))
        raise StoreError(f"{parent}: part indices {sorted(indices)} are not exactly 0..{num_shards - 1}"
                         + (f" (missing {[part_name(num_shards, i) for i in missing]})" if missing else ""))
    combined = first.model_copy(deep=True)
    combined.fingerprint = shared
    combined.fingerprint_hash = fingerprint_of({"parts": shared})
    combined.shards = [e for m in manifests for e in m.shards]
    combined.totals.samples = sum(m.totals.samples for m in manifests)
    combined.totals.tokens = sum(m.totals.tokens for m in manifests)
    combined.totals.errors = sum(m.totals.errors for m in manifests)
    combined.totals.raw_bytes = sum(m.totals.raw_bytes for m in manifests)
    combined.totals.stored_bytes = sum(m.totals.stored_bytes for m in manifests)
    return combined


def open_any(directory: str | Path, *, require_complete: bool = False) -> ShardDataset | PartsDataset:
    """`open_dataset` for one dataset directory, `PartsDataset` for a parent of parts (always complete)."""
    if is_parts_parent(directory):
        return PartsDataset(directory)
    return open_dataset(directory, require_complete=require_complete)


def open_hidden_any(directory: str | Path, *, require_complete: bool = False, threads: int | None = 1) -> Any:
    """`open_hidden` for one dataset, or all hidden-state parts of a parent as one dataset."""
    from dspark_data.store.hidden import open_hidden

    if is_parts_parent(directory):
        return PartsDataset(directory, lambda p: open_hidden(p, require_complete=True, threads=threads))
    return open_hidden(directory, require_complete=require_complete, threads=threads)
