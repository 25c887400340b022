"""`verify` (recompute every checksum, name the shard and sample of any mismatch) and `inspect` (summary).

Why both live beside the format: a dataset that took days of GPU time must be checkable in place, and
a flipped byte must be traced to the samples it damages, not just to "shard 17 is bad". Each record
batch's byte range has its own sha256 in the shard's index, so a whole-file mismatch is narrowed to
the batch (sample) it hits, or to the file header/footer.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from dspark_data.atomic import TMP_PREFIX
from dspark_data.store.files import SHARD_RE, sha256_file
from dspark_data.store.manifest import StoreError, load_manifest, schema_columns
from schemas.base import fingerprint as fingerprint_of
from schemas.store import Manifest, ShardEntry


@dataclass
class Issue:
    """One integrity problem: the file, and where known the shard number and the damaged samples."""

    file: str
    message: str
    shard: int | None = None
    sample_ids: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        where = self.file + (f" (shard {self.shard})" if self.shard is not None else "")
        samples = ""
        if self.sample_ids:
            shown = ", ".join(self.sample_ids[:5]) + (" ..." if len(self.sample_ids) > 5 else "")
            samples = f" samples [{shown}] rows {self.rows[:5]}"
        return f"{where}: {self.message}{samples}"


@dataclass
class VerifyReport:
    directory: str
    ok: bool = True
    complete: bool = False
    shards_checked: int = 0
    samples_checked: int = 0
    bytes_checked: int = 0
    issues: list[Issue] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, issue: Issue) -> None:
        self.ok = False
        self.issues.append(issue)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify(directory: str | Path) -> VerifyReport:
    """Recompute all checksums and cross-check the manifest, index files, shards and errors file."""
    directory = Path(directory)
    report = VerifyReport(str(directory))
    try:
        m = load_manifest(directory)
    except StoreError as exc:
        report.add(Issue("manifest.json", str(exc)))
        return report
    report.complete = m.complete
    if not m.complete:
        report.warnings.append("dataset is not complete (producer still running, killed, or not closed)")
    if fingerprint_of(m.fingerprint) != m.fingerprint_hash:
        report.add(Issue("manifest.json", "fingerprint_hash does not match the fingerprint (hand-edited manifest?)"))
    _check_totals(m, report)
    seen: dict[str, int] = {}
    digests = _hash_shards(directory, m)
    for n, entry in enumerate(m.shards):
        _verify_shard(directory, m, n, entry, report, seen, digests[n])
    _check_errors_file(directory, m, report)
    listed = {e.file for e in m.shards} | {e.index_file for e in m.shards}
    stray = sorted(
        p.name for p in directory.iterdir() if p.name.startswith(TMP_PREFIX) or
        (SHARD_RE.match(p.name) and p.name not in listed)
    )
    if stray:
        report.warnings.append(f"uncommitted files (removed on the next resume): {', '.join(stray[:8])}")
    return report


def _check_totals(m: Manifest, report: VerifyReport) -> None:
    sums = {
        "samples": sum(e.samples for e in m.shards),
        "tokens": sum(e.tokens for e in m.shards),
        "raw_bytes": sum(e.raw_bytes for e in m.shards),
        "stored_bytes": sum(e.bytes + e.index_bytes for e in m.shards),
        "errors": sum(m.error_counts.values()),
    }
    for key, value in sums.items():
        if getattr(m.totals, key) != value:
            report.add(Issue("manifest.json", f"totals.{key}={getattr(m.totals, key)} but the entries sum to {value}"))
    row = 0
    for n, e in enumerate(m.shards):
        if e.first_row != row or e.last_row != row + e.samples - 1:
            report.add(Issue("manifest.json", f"rows {e.first_row}..{e.last_row} do not follow on from {row}", n))
        row += e.samples


def _outside(directory: Path, name: str) -> bool:
    """True when `name` resolves outside the dataset directory (a symbolic link pointing out)."""
    return (directory / name).resolve().parent != directory.resolve()


def _hash_shards(directory: Path, m: Manifest) -> list[str | None]:
    """sha256 of every shard file, several at once (hashlib releases the GIL): one core hashes ~1-2 GB/s,
    a multi-terabyte dataset needs all of them. None for a file that is missing or resolves outside."""

    def one(e: ShardEntry) -> str | None:
        path = directory / e.file
        if _outside(directory, e.file) or not path.is_file():
            return None
        return sha256_file(path)

    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="dspark-verify") as pool:
        return list(pool.map(one, m.shards))


def _verify_shard(
    directory: Path, m: Manifest, n: int, e: ShardEntry, report: VerifyReport, seen: dict, digest: str | None
) -> None:
    report.shards_checked += 1
    escaping = [name for name in (e.file, e.index_file) if _outside(directory, name)]
    for name in escaping:  # the reader refuses these; never read through them
        report.add(Issue(name, "resolves outside the dataset directory (symbolic link?); the reader refuses it", n))
    if escaping:
        return
    index = _load_index(directory, n, e, report)
    if index is not None:
        ids = index.column("id").to_pylist()
        for r, sid in enumerate(ids):
            if sid in seen:
                report.add(Issue(e.index_file, f"sample id also in shard {seen[sid]}", n, [sid], [e.first_row + r]))
            seen[sid] = n
        if sum(index.column("tokens").to_pylist()) != e.tokens:
            report.add(Issue(e.index_file, f"index tokens do not sum to the manifest's {e.tokens}", n))
        report.samples_checked += len(ids)
    path = directory / e.file
    if not path.is_file():
        report.add(Issue(e.file, "shard file is missing", n, _ids(index), _rows(index, e)))
        return
    size = path.stat().st_size
    report.bytes_checked += size
    if size != e.bytes:
        report.add(Issue(e.file, f"size {size} B, manifest says {e.bytes} B (truncated or replaced)", n))
    if digest != e.sha256:
        if index is None:
            report.add(Issue(e.file, "sha256 mismatch (index unusable, cannot locate the samples)", n))
        else:
            _locate_damage(path, n, e, index, report)
        return
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        if reader.num_record_batches != e.batches:
            report.add(Issue(e.file, f"{reader.num_record_batches} batches, manifest says {e.batches}", n))
        if schema_columns(reader.schema) != m.columns:
            report.add(Issue(e.file, "Arrow schema differs from the manifest's columns", n))
    except (OSError, pa.ArrowException) as exc:
        report.add(Issue(e.file, f"not a readable Arrow IPC file: {exc}", n))


def _load_index(directory: Path, n: int, e: ShardEntry, report: VerifyReport) -> pa.Table | None:
    path = directory / e.index_file
    if not path.is_file():
        report.add(Issue(e.index_file, "index file is missing", n))
        return None
    data = path.read_bytes()
    if len(data) != e.index_bytes or hashlib.sha256(data).hexdigest() != e.index_sha256:
        report.add(Issue(e.index_file, "index file does not match its manifest size/sha256", n))
        return None
    try:
        table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
    except pa.ArrowException as exc:
        report.add(Issue(e.index_file, f"unreadable index: {exc}", n))
        return None
    if table.num_rows != e.samples:
        report.add(Issue(e.index_file, f"{table.num_rows} rows, manifest says {e.samples} samples", n))
    return table


def _ids(index: pa.Table | None) -> list[str]:
    return index.column("id").to_pylist() if index is not None else []


def _rows(index: pa.Table | None, e: ShardEntry) -> list[int]:
    return list(range(e.first_row, e.first_row + (index.num_rows if index is not None else 0)))


def _locate_damage(path: Path, n: int, e: ShardEntry, index: pa.Table, report: VerifyReport) -> None:
    """Re-hash each batch's byte range to name the damaged samples."""
    offsets = index.column("offset").to_pylist()
    lengths = index.column("length").to_pylist()
    digests = index.column("sha256").to_pylist()
    ids = index.column("id").to_pylist()
    bad_ids, bad_rows = [], []
    with open(path, "rb") as f:
        size = path.stat().st_size
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        cache: dict[tuple[int, int], bool] = {}
        for r, (off, length, digest) in enumerate(zip(offsets, lengths, digests, strict=True)):
            if (off, length) not in cache:
                good = mm is not None and off + length <= size
                if good:
                    good = hashlib.sha256(memoryview(mm)[off : off + length]).digest() == digest
                cache[(off, length)] = good
            if not cache[(off, length)]:
                bad_ids.append(ids[r])
                bad_rows.append(e.first_row + r)
        if mm is not None:
            mm.close()
    if bad_ids:
        report.add(Issue(e.file, "sha256 mismatch in sample data", n, bad_ids, bad_rows))
    else:
        report.add(Issue(e.file, "sha256 mismatch outside sample data (Arrow footer or trailing bytes)", n))


def _check_errors_file(directory: Path, m: Manifest, report: VerifyReport) -> None:
    path = directory / m.errors_file
    if path.is_symlink():
        report.add(Issue(m.errors_file, "is a symbolic link (writers refuse to write through it)"))
        return
    if not m.errors_bytes:
        return
    if not path.is_file() or path.stat().st_size < m.errors_bytes:
        report.add(Issue(m.errors_file, f"missing or shorter than the committed {m.errors_bytes} B"))
        return
    with open(path, "rb") as f:
        lines = [ln for ln in f.read(m.errors_bytes).decode("utf-8", "replace").splitlines() if ln.strip()]
    counts: dict[str, int] = {}
    for k, line in enumerate(lines):
        try:
            reason = json.loads(line)["reason"]
        except (json.JSONDecodeError, KeyError, TypeError):
            report.add(Issue(m.errors_file, f"line {k + 1} is not an error record"))
            return
        counts[reason] = counts.get(reason, 0) + 1
    if counts != m.error_counts:
        report.add(Issue(m.errors_file, f"counts {counts} differ from the manifest's {m.error_counts}"))


def inspect(directory: str | Path) -> dict[str, Any]:
    """Summary of a dataset directory from its manifest: sizes, ratios, codec, layers, fingerprint, shards."""
    m = load_manifest(Path(directory))
    t = m.totals
    summary: dict[str, Any] = {
        "directory": str(directory),
        "kind": m.kind,
        "complete": m.complete,
        "samples": t.samples,
        "tokens": t.tokens,
        "shards": len(m.shards),
        "stored_bytes": t.stored_bytes,
        "raw_bytes": t.raw_bytes,
        "bytes_per_token": round(t.stored_bytes / t.tokens, 2) if t.tokens else None,
        "raw_bytes_per_token": round(t.raw_bytes / t.tokens, 2) if t.tokens else None,
        "compression_ratio": round(t.raw_bytes / t.stored_bytes, 3) if t.stored_bytes else None,
        "codec": m.codec,
        "layer_ids": m.layer_ids,
        "hidden_size": m.hidden_size,
        "topk_logprobs": m.topk_logprobs or 0,
        "errors": t.errors,
        "error_counts": dict(m.error_counts),
        "fingerprint_hash": m.fingerprint_hash,
        "fingerprint": m.fingerprint,
        "columns": dict(m.columns),
        "schema_version": m.schema_version,
        "updated_at": m.updated_at,
        "shard_list": [
            {"file": e.file, "samples": e.samples, "tokens": e.tokens, "bytes": e.bytes, "first_id": e.first_id}
            for e in m.shards
        ],
    }
    return summary
