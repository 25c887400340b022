"""Random-access reader over a committed dataset directory (regen or hidden states).

Why: training draws samples in random order, so a reader must fetch one sample without reading or
decompressing the rest of its shard (the failure of readers that decompress whole files). Each shard
is an Arrow IPC file; one sample is one record batch (or one row of a small batch). Small batches are
sliced zero-copy from a memory map; large ones (hidden states) are read with one `pread` of their
exact byte range, taken from the index. The per-shard index files (id, batch, row,
tokens, checksum) are loaded once at open and checked against the manifest's sha256.

    ds = open_dataset("runs/tiny/regen")
    len(ds), ds.ids[:3], ds.lengths.sum()
    ds.row(ds.index_of("sample-17"))     # -> {"id": ..., "input_ids": [...], ...}

Thread-safe: shards are opened lazily under a lock, memory-map lookups are serialised per shard (a few
microseconds) and `pread`s need no lock, so background decode threads can share one dataset.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dspark_data.store.manifest import StoreError, load_manifest, schema_columns
from schemas.store import Manifest


class ShardDataset:
    """The committed samples of a dataset directory, in commit order."""

    def __init__(self, directory: str | Path, manifest: Manifest | None = None):
        self.directory = Path(directory)
        self.manifest = manifest if manifest is not None else load_manifest(self.directory)
        ids: list[str] = []
        shard, batch, row, tokens, offset, length = [], [], [], [], [], []
        for n, entry in enumerate(self.manifest.shards):
            path = self._path(entry.index_file)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise StoreError(f"{path}: cannot read index file ({exc}); run `dspark verify`") from None
            if len(data) != entry.index_bytes or hashlib.sha256(data).hexdigest() != entry.index_sha256:
                raise StoreError(f"{path}: index file does not match its manifest checksum; run `dspark verify`")
            table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
            if table.num_rows != entry.samples:
                raise StoreError(f"{path}: {table.num_rows} index rows, manifest says {entry.samples}")
            ids.extend(table.column("id").to_pylist())
            shard.append(np.full(table.num_rows, n, dtype=np.int32))
            batch.append(table.column("batch").to_numpy())
            row.append(table.column("row").to_numpy())
            tokens.append(table.column("tokens").to_numpy())
            offset.append(table.column("offset").to_numpy())
            length.append(table.column("length").to_numpy())
        self.ids: list[str] = ids
        self._shard = np.concatenate(shard) if shard else np.zeros(0, np.int32)
        self._batch = np.concatenate(batch) if batch else np.zeros(0, np.int32)
        self._row = np.concatenate(row) if row else np.zeros(0, np.int32)
        self.lengths: np.ndarray = np.concatenate(tokens) if tokens else np.zeros(0, np.int64)
        self._offset = np.concatenate(offset) if offset else np.zeros(0, np.int64)
        self._length = np.concatenate(length) if length else np.zeros(0, np.int64)
        self._pos = {sid: i for i, sid in enumerate(ids)}
        if len(self._pos) != len(ids):
            raise StoreError(f"{self.directory}: duplicate sample ids across shards; run `dspark verify`")
        self._readers: dict[int, _OpenShard] = {}
        self._open_lock = threading.Lock()
        self.schema: pa.Schema | None = None

    def _path(self, name: str) -> Path:
        path = (self.directory / name).resolve()
        if path.parent != self.directory.resolve():
            raise StoreError(f"{self.directory}: manifest names {name!r}, outside the dataset directory")
        return path

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, sample_id: str) -> int:
        """Row number of a sample id; KeyError naming the id and the directory if absent."""
        try:
            return self._pos[sample_id]
        except KeyError:
            raise KeyError(f"sample id {sample_id!r} is not in {self.directory}") from None

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._pos

    def shard_of(self, i: int) -> int:
        return int(self._shard[self._check(i)])

    def _check(self, i: int) -> int:
        n = len(self.ids)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for {self.directory} ({n} samples)")
        return i % n if n else i

    def _reader(self, n: int) -> _OpenShard:
        got = self._readers.get(n)
        if got is not None:
            return got
        with self._open_lock:
            if n not in self._readers:
                entry = self.manifest.shards[n]
                path = self._path(entry.file)
                try:
                    shard = _OpenShard(path)
                except (OSError, ValueError, pa.ArrowException) as exc:
                    raise StoreError(f"{path}: cannot open shard ({exc}); run `dspark verify`") from None
                got = shard.reader.num_record_batches
                if got != entry.batches:
                    raise StoreError(f"{path}: {got} batches, manifest says {entry.batches}")
                if schema_columns(shard.reader.schema) != self.manifest.columns:
                    raise StoreError(f"{path}: schema {shard.reader.schema} differs from the manifest's columns")
                self.schema = shard.reader.schema
                self._readers[n] = shard
            return self._readers[n]

    def record(self, i: int) -> tuple[pa.RecordBatch, int]:
        """Zero-copy access: the record batch holding row i, and i's row inside it."""
        i = self._check(i)
        shard = self._reader(int(self._shard[i]))
        batch = shard.get(int(self._batch[i]), int(self._offset[i]), int(self._length[i]))
        return batch, int(self._row[i])

    def row(self, i: int) -> dict[str, Any]:
        """Sample i as a dict of Python values (lists for list columns, bytes for binary ones)."""
        batch, r = self.record(i)
        return batch.slice(r, 1).to_pylist()[0]

    def iter_columns(self, columns: list[str]) -> Iterator[pa.Table]:
        """Yield, shard by shard, a table of only `columns` (other columns are not decoded): for whole-dataset
        passes such as vocab counting, where per-row access would be needlessly slow."""
        missing = [c for c in columns if c not in self.manifest.columns]
        if missing:
            raise StoreError(f"{self.directory}: no column(s) {missing}; columns are {list(self.manifest.columns)}")
        fields = [list(self.manifest.columns).index(c) for c in columns]
        options = pa.ipc.IpcReadOptions(included_fields=fields)
        for n in range(len(self.manifest.shards)):
            shard = self._reader(n)  # checks batch count and schema
            if shard.mm is None:
                continue
            yield pa.ipc.open_file(pa.py_buffer(shard.mm), options=options).read_all()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self.row(i)

    def close(self) -> None:
        """Drop the memory maps (they are also released when the dataset is garbage collected)."""
        with self._open_lock:
            self._readers.clear()


class _OpenShard:
    """One shard: memory-mapped for small batches; large batches are read with one `pread` of their exact
    byte range (from the index) and parsed as an IPC message. A cold read is then one large I/O, as
    fast as reading a whole per-sample file, instead of a page fault per 4 KiB of a memory map."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self.reader = pa.ipc.open_file(pa.py_buffer(self.mm) if self.mm is not None else pa.py_buffer(b""))
        self.schema = self.reader.schema
        self.lock = threading.Lock()

    def get(self, batch: int, offset: int, length: int) -> pa.RecordBatch:
        if length >= _PREAD_MIN:
            with open(self.path, "rb", buffering=0) as f:  # per read: no shared descriptor to race on
                data = os.pread(f.fileno(), length, offset)
            if len(data) != length:
                raise StoreError(f"{self.path}: batch {batch} is truncated; run `dspark verify`")
            stream = pa.BufferReader(pa.py_buffer(data))
            if offset == 0:  # the first batch's range also holds the file magic and the schema message
                stream.seek(8)
                pa.ipc.read_message(stream)
            return pa.ipc.read_record_batch(pa.ipc.read_message(stream), self.schema)
        with self.lock:  # the footer lookup is microseconds; serialise it rather than trust reader internals
            return self.reader.get_batch(batch)


_PREAD_MIN = 256 << 10


def open_dataset(directory: str | Path, *, require_complete: bool = False) -> ShardDataset:
    """Open a dataset directory for reading. Only committed shards are visible; an in-progress dataset
    reads as its committed prefix unless `require_complete` is set."""
    ds = ShardDataset(directory)
    if require_complete and not ds.manifest.complete:
        raise StoreError(
            f"{directory}: dataset is not complete ({ds.manifest.totals.samples} samples committed); "
            "finish or resume the producing command first"
        )
    return ds
