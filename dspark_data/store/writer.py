"""ShardWriter: a resumable, atomic, sharded Arrow writer shared by the regen and hidden-state datasets.

Why this shape: peers write one file per sample and resume by "file exists", which counts truncated
files as done and costs an inode and an open() per sample. Here samples stream into the current shard,
an Arrow IPC *file* (one record batch per `batch_rows` rows, so a reader memory-maps it and slices one
sample without touching the rest). A shard becomes visible only through the commit protocol:

1. batches are written to `.tmp-shard-NNNNN.arrow` while hashing each batch's byte range;
2. at rollover (`shard_rows` / `shard_bytes`), `commit()` or `close()`: the temp shard is fsynced and
   renamed to `shard-NNNNN.arrow`; its per-sample index goes the same way to `shard-NNNNN.index.arrow`;
3. pending error records are appended to `errors.jsonl` and fsynced;
4. `manifest.json` is rewritten atomically. **This rename is the commit point.**

A writer killed at any instant leaves at most a temp file, a renamed but unlisted shard, or an
errors.jsonl tail past the committed length; reopening with the same fingerprint removes all three and
exposes `committed_ids` / `error_ids` so the producer skips what is done. A different fingerprint is
refused with the differing fields named.

Usage:
    with ShardWriter(out, "regen", schema, fingerprint={...}, shard_rows=1000) as w:
        for sample in todo:
            if sample["id"] in w.committed_ids: continue
            w.write(sample)          # or w.record_error(id, "too_long", "4100 > 4096 tokens")
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from dspark_data.atomic import TMP_PREFIX, fsync_dir, fsync_file
from dspark_data.store.files import SHARD_RE, WriterLock
from dspark_data.store.manifest import (
    FingerprintMismatch,
    StoreError,
    fingerprint_differences,
    load_manifest,
    manifest_path,
    schema_columns,
    utc_now,
    write_manifest,
)
from dspark_data.store.shard_file import ShardFileWriter
from schemas.base import fingerprint as fingerprint_of
from schemas.store import ERRORS_NAME, ErrorRecord, Manifest

_DEFAULT = "input_ids"


_W = TypeVar("_W", bound="CloseOnSuccess")


class CloseOnSuccess:
    """Writer context: `close()` (commit, mark complete) when the block succeeds, `abort()` (keep only what
    was committed) when it raises, so an exception never publishes a half-written tail as complete."""

    def close(self) -> object:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self: _W) -> _W:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ShardWriter(CloseOnSuccess):
    """Append samples (dicts matching `arrow_schema`, with a string `id`) to a sharded dataset."""

    def __init__(
        self,
        directory: str | Path,
        kind: str,
        arrow_schema: pa.Schema,
        fingerprint: dict[str, Any],
        *,
        producer_config: dict[str, Any] | None = None,
        shard_bytes: int | None = None,
        shard_rows: int | None = None,
        batch_rows: int = 1,
        length_column: str | None = _DEFAULT,
        ipc_compression: str | None = None,
        codec: str | None = None,
        layer_ids: list[int] | None = None,
        hidden_size: int | None = None,
        topk_logprobs: int | None = None,
        overwrite: bool = False,
    ):
        if "id" not in arrow_schema.names or arrow_schema.field("id").type not in (pa.string(), pa.large_string()):
            raise StoreError(f"{kind} schema must have a string 'id' column, got {arrow_schema}")
        if length_column == _DEFAULT and _DEFAULT not in arrow_schema.names:
            length_column = None
        if length_column is not None and length_column not in arrow_schema.names:
            raise StoreError(f"length_column {length_column!r} is not a column of {arrow_schema.names}")
        if length_column is not None and not _is_list(arrow_schema.field(length_column).type):
            raise StoreError(f"length_column {length_column!r} must be a list column to count tokens")
        if batch_rows < 1:
            raise StoreError(f"batch_rows must be >= 1, got {batch_rows}")
        self.directory = Path(directory)
        self.schema = arrow_schema
        self.shard_bytes, self.shard_rows, self.batch_rows = shard_bytes, shard_rows, batch_rows
        self.length_column = length_column
        self._ipc_options = pa.ipc.IpcWriteOptions(compression=ipc_compression)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = WriterLock(self.directory)
        try:
            self._lock.acquire()
        except OSError as exc:  # e.g. the lock file is a symlink (refused: it could point outside the directory)
            raise StoreError(f"{self._lock.path}: cannot take the writer lock: {exc}") from None
        try:
            if overwrite:
                self._remove_dataset_files()
            wanted = Manifest(
                kind=kind,
                fingerprint=fingerprint,
                fingerprint_hash=fingerprint_of(fingerprint),
                producer_config=producer_config or {},
                columns=schema_columns(arrow_schema),
                length_column=length_column,
                batch_rows=batch_rows,
                codec=codec,
                layer_ids=layer_ids,
                hidden_size=hidden_size,
                topk_logprobs=topk_logprobs,
                created_at=utc_now(),
                updated_at=utc_now(),
            )
            if manifest_path(self.directory).exists():
                self.manifest = load_manifest(self.directory)
                self._check_compatible(wanted)
            else:
                self.manifest = wanted
                write_manifest(self.directory, self.manifest)
            self._cleanup_uncommitted()
            self.committed_ids: set[str] = self._load_committed_ids()
            self.error_ids: set[str] = self._load_error_ids()
        except BaseException:
            self._lock.release()
            raise
        self._seen: set[str] = set()
        self._pending: list[dict[str, Any]] = []
        self._pending_raw: list[int | None] = []
        self._pending_errors: list[ErrorRecord] = []
        self._shard: ShardFileWriter | None = None
        self._closed = False

    # ------------------------------------------------------------------ public API

    @property
    def complete(self) -> bool:
        """True if the dataset on disk was closed normally and nothing was written since."""
        return self.manifest.complete

    def write(self, row: dict[str, Any], *, raw_bytes: int | None = None) -> None:
        """Buffer one sample; `raw_bytes` is its uncompressed payload size (default: its Arrow size)."""
        self._check_open()
        sid = row.get("id")
        if not isinstance(sid, str) or not sid:
            raise StoreError(f"{self.directory}: every row needs a non-empty string 'id', got {sid!r}")
        if sid in self.committed_ids or sid in self._seen:
            raise StoreError(f"{self.directory}: sample id {sid!r} written twice (skip ids in writer.committed_ids)")
        if set(row) != set(self.schema.names):
            missing, extra = set(self.schema.names) - set(row), set(row) - set(self.schema.names)
            raise StoreError(f"row {sid!r}: missing columns {sorted(missing)}, unexpected {sorted(extra)}")
        self._seen.add(sid)
        self.manifest.complete = False  # appending to a closed dataset reopens it until the next close()
        self._pending.append(row)
        self._pending_raw.append(raw_bytes)
        if len(self._pending) >= self.batch_rows:
            self._flush_batch()

    def record_error(self, sample_id: str, reason: str, detail: str = "") -> None:
        """Record a sample the producer could not store; committed with the next commit, counted by reason."""
        self._check_open()
        self.manifest.complete = False
        self._pending_errors.append(ErrorRecord(id=sample_id, reason=reason, detail=detail))

    def commit(self) -> None:
        """Make everything written so far durable and visible (a possibly short shard, plus errors)."""
        self._check_open()
        self._flush_batch()
        self._commit()

    def close(self) -> Manifest:
        """Commit the tail and mark the dataset complete. Idempotent."""
        if not self._closed:
            try:
                self._flush_batch()
                self.manifest.complete = True
                self._commit()
            finally:
                self._closed = True
                self._lock.release()
        return self.manifest

    def abort(self) -> None:
        """Drop uncommitted rows and the temp shard; committed shards stay. Used on exceptions."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._shard is not None:
                self._shard.discard()
                self._shard = None
        finally:
            self._lock.release()

    # ------------------------------------------------------------------ writing

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.directory}: writer is closed")

    def _flush_batch(self) -> None:
        if not self._pending:
            return
        rows, raws = self._pending, self._pending_raw
        self._pending, self._pending_raw = [], []
        try:
            batch = pa.RecordBatch.from_pylist(rows, schema=self.schema)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            ids = [r["id"] for r in rows]
            self._seen.difference_update(ids)  # dropped: the producer may retry or record_error them
            raise StoreError(f"{self.directory}: rows {ids} do not match the dataset schema: {exc}") from None
        self._append(batch, raws)

    def write_batch(self, batch: pa.RecordBatch, *, raw_bytes: list[int] | None = None) -> None:
        """Append ready-made rows as one record batch (no Python conversion per value; used for hidden states).

        Pending rows from `write()` are flushed first so the order is kept. `raw_bytes`: per-row payload size.
        """
        self._check_open()
        if batch.schema != self.schema:
            raise StoreError(f"{self.directory}: batch schema {batch.schema} differs from the dataset's {self.schema}")
        ids = batch.column("id").to_pylist()
        for sid in ids:
            if not isinstance(sid, str) or not sid:
                raise StoreError(f"{self.directory}: every row needs a non-empty string 'id', got {sid!r}")
            if sid in self.committed_ids or sid in self._seen:
                raise StoreError(f"{self.directory}: sample id {sid!r} written twice (skip writer.committed_ids)")
        self._flush_batch()
        self._seen.update(ids)
        self.manifest.complete = False
        self._append(batch, raw_bytes or [None] * batch.num_rows)

    def _io_error(self, exc: OSError) -> StoreError:
        """An OS error while writing (ENOSPC, EDQUOT, EIO...) as a StoreError naming the directory and what is
        safe: the last commit stays valid and a rerun of the same command resumes from it."""
        return StoreError(
            f"{self.directory}: write failed ({exc.strerror or exc}"
            f"{f': {exc.filename}' if exc.filename else ''}); the dataset keeps its last commit "
            f"({self.manifest.totals.samples} samples): free space or fix the disk, then rerun the same command "
            "to resume"
        )

    def _append(self, batch: pa.RecordBatch, raws: list[int | None]) -> None:
        try:
            self._append_unchecked(batch, raws)
        except OSError as exc:
            raise self._io_error(exc) from exc

    def _append_unchecked(self, batch: pa.RecordBatch, raws: list[int | None]) -> None:
        if self._shard is None:
            n = len(self.manifest.shards)
            first_row = self.manifest.totals.samples
            self._shard = ShardFileWriter(self.directory, n, self.schema, self._ipc_options, first_row)
        per_row = batch.nbytes // max(1, batch.num_rows)
        if self.length_column:
            tokens = batch.column(self.length_column).value_lengths().fill_null(0).to_pylist()
        else:
            tokens = [0] * batch.num_rows
        ids = batch.column("id").to_pylist()
        self._shard.write(batch, ids, tokens, [per_row if b is None else b for b in raws])
        full_rows = self.shard_rows is not None and self._shard.samples >= self.shard_rows
        full_bytes = self.shard_bytes is not None and self._shard.sink.position >= self.shard_bytes
        if full_rows or full_bytes:
            self._commit()

    def _commit(self) -> None:
        try:
            self._commit_unchecked()
        except OSError as exc:
            raise self._io_error(exc) from exc

    def _commit_unchecked(self) -> None:
        m = self.manifest
        if self._shard is not None:
            entry = self._shard.finish()
            self._shard = None
            m.shards.append(entry)
            m.totals.samples += entry.samples
            m.totals.tokens += entry.tokens
            m.totals.raw_bytes += entry.raw_bytes
            m.totals.stored_bytes += entry.bytes + entry.index_bytes
            self.committed_ids.update(self._seen - self.committed_ids)
        if self._pending_errors:
            path = self.directory / m.errors_file
            with open(path, "ab") as f:
                for rec in self._pending_errors:
                    f.write((json.dumps(rec.model_dump(), ensure_ascii=False) + "\n").encode("utf-8"))
                    m.error_counts[rec.reason] = m.error_counts.get(rec.reason, 0) + 1
                    self.error_ids.add(rec.id)
                fsync_file(f)
                m.errors_bytes = f.tell()
            m.totals.errors += len(self._pending_errors)
            self._pending_errors = []
        write_manifest(self.directory, m)

    # ------------------------------------------------------------------ resume

    def _check_compatible(self, wanted: Manifest) -> None:
        have = self.manifest
        diffs: list[str] = []
        if have.kind != wanted.kind:
            diffs.append(f"kind: {have.kind} -> {wanted.kind}")
        if have.fingerprint_hash != wanted.fingerprint_hash:
            diffs += fingerprint_differences(have.fingerprint, wanted.fingerprint) or ["fingerprint_hash"]
        for name in ("columns", "length_column", "codec", "layer_ids", "hidden_size", "topk_logprobs"):
            if getattr(have, name) != getattr(wanted, name):
                diffs.append(f"{name}: {getattr(have, name)} -> {getattr(wanted, name)}")
        if diffs:
            raise FingerprintMismatch(self.directory, diffs)

    def _cleanup_uncommitted(self) -> None:
        """Remove temp files and shards the manifest does not list; cut errors.jsonl to its committed length."""
        listed = {e.file for e in self.manifest.shards} | {e.index_file for e in self.manifest.shards}
        for p in self.directory.iterdir():
            if p.name.startswith(TMP_PREFIX) or (SHARD_RE.match(p.name) and p.name not in listed):
                p.unlink()
        for e in self.manifest.shards:
            for name, size in ((e.file, e.bytes), (e.index_file, e.index_bytes)):
                path = self.directory / name
                if not path.is_file() or path.stat().st_size != size:
                    raise StoreError(
                        f"{path}: committed file is missing or has the wrong size; run `dspark verify "
                        f"{self.directory}`, then rewrite with --overwrite or a new --out"
                    )
        errors = self.directory / self.manifest.errors_file
        if errors.is_symlink():  # truncating or appending through a link would write outside the dataset
            raise StoreError(f"{errors}: is a symbolic link; the store never writes through links: replace it with "
                             "the file itself")
        size = errors.stat().st_size if errors.exists() else 0
        if size < self.manifest.errors_bytes:
            raise StoreError(f"{errors}: shorter ({size} B) than committed ({self.manifest.errors_bytes} B)")
        if size > self.manifest.errors_bytes:
            os.truncate(errors, self.manifest.errors_bytes)
        fsync_dir(self.directory)

    def _load_committed_ids(self) -> set[str]:
        ids: set[str] = set()
        for e in self.manifest.shards:
            table = pa.ipc.open_file(pa.memory_map(str(self.directory / e.index_file))).read_all()
            ids.update(table.column("id").to_pylist())
        return ids

    def _load_error_ids(self) -> set[str]:
        path = self.directory / self.manifest.errors_file
        if not self.manifest.errors_bytes:
            return set()
        with open(path, "rb") as f:
            data = f.read(self.manifest.errors_bytes)
        return {json.loads(line)["id"] for line in data.decode("utf-8").splitlines() if line.strip()}

    def _remove_dataset_files(self) -> None:
        for p in self.directory.iterdir():
            if p.name in {"manifest.json", ERRORS_NAME} or p.name.startswith(TMP_PREFIX) or SHARD_RE.match(p.name):
                p.unlink()
        fsync_dir(self.directory)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)
