"""One shard being written: a temp Arrow IPC file, hashed as it is written, plus its per-sample index.

`ShardWriter` (writer.py) owns the commit protocol; this class owns one shard's bytes: each record batch
is appended while a background hasher computes the file's sha256 and the batch's own (the per-sample
checksum in the index), and `finish()` fsyncs and publishes the shard and then its index under their
final names, returning the manifest entry that the next manifest write will make visible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from dspark_data.atomic import TMP_PREFIX, fsync_file, publish_file
from dspark_data.store.files import HashingSink, index_name, shard_name
from schemas.store import INDEX_ARROW_SCHEMA, ShardEntry


class ShardFileWriter:
    """The shard being written: a temp Arrow IPC file plus its per-sample index rows."""

    def __init__(self, directory: Path, n: int, schema: pa.Schema, options: pa.ipc.IpcWriteOptions, first_row: int):
        self.directory, self.n, self.first_row = directory, n, first_row
        self.tmp = directory / f"{TMP_PREFIX}{shard_name(n)}"
        self.file = open(self.tmp, "wb")
        self.sink = HashingSink(self.file)
        self.ipc = pa.ipc.new_file(pa.PythonFile(self.sink, mode="w"), schema, options=options)
        self.index: dict[str, list[Any]] = {name: [] for name in INDEX_ARROW_SCHEMA.names}
        self.samples = self.batches = self.tokens = self.raw_bytes = 0

    def write(self, batch: pa.RecordBatch, ids: list[str], tokens: list[int], raws: list[int]) -> None:
        start = self.sink.position
        self.ipc.write_batch(batch)
        digest = self.sink.take_range_digest()  # a future: resolved in finish(), hashing overlaps writing
        length = self.sink.position - start
        for r, (sid, tok) in enumerate(zip(ids, tokens, strict=True)):
            row = (sid, self.batches, r, start, length, tok, digest)
            for key, value in zip(INDEX_ARROW_SCHEMA.names, row, strict=True):
                self.index[key].append(value)
        self.batches += 1
        self.samples += len(ids)
        self.tokens += sum(tokens)
        self.raw_bytes += sum(raws)

    def finish(self) -> ShardEntry:
        """Close, fsync and publish the shard and its index; return the manifest entry (not yet committed)."""
        self.ipc.close()
        fsync_file(self.file)
        self.file.close()
        shard_sha256 = self.sink.file_hexdigest()
        self.index["sha256"] = [digest.result() for digest in self.index["sha256"]]
        final = self.directory / shard_name(self.n)
        publish_file(self.tmp, final)
        index_tmp = self.directory / f"{TMP_PREFIX}{index_name(self.n)}"
        with open(index_tmp, "wb") as f:
            sink = HashingSink(f)
            with pa.ipc.new_file(pa.PythonFile(sink, mode="w"), INDEX_ARROW_SCHEMA) as w:
                w.write_batch(pa.record_batch(self.index, schema=INDEX_ARROW_SCHEMA))
            fsync_file(f)
        index_sha256 = sink.file_hexdigest()
        publish_file(index_tmp, self.directory / index_name(self.n))
        ids = self.index["id"]
        return ShardEntry(  # one line per thing described: shard file, index file, counts, rows, ids
            file=final.name, sha256=shard_sha256, bytes=self.sink.position,
            index_file=index_name(self.n), index_sha256=index_sha256, index_bytes=sink.position,
            samples=self.samples, batches=self.batches, tokens=self.tokens, raw_bytes=self.raw_bytes,
            first_row=self.first_row, last_row=self.first_row + self.samples - 1,
            first_id=ids[0] if ids else None, last_id=ids[-1] if ids else None,
        )

    def discard(self) -> None:
        try:
            self.ipc.close()
        except Exception:  # noqa: BLE001 - the temp file is being thrown away
            pass
        self.sink.discard()
        try:
            self.file.close()
        except OSError:  # e.g. ENOSPC flushing the buffer: the file is thrown away anyway
            pass
        self.tmp.unlink(missing_ok=True)
