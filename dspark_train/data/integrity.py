"""Refuse to start training on a corrupt hidden-state dataset, unless the damaged samples are named to skip.

Why before training: the store's reader checks the manifest and the index files when it opens a dataset,
but not each sample's bytes when it reads them, so a flipped bit in a hidden-state payload would be
trained on (raw codec) or stop the run hours in (a codec that fails to decode). `dspark_data.store.verify`
re-hashes every sample against its checksum and names the damaged ones; this runs it once, on rank 0,
before any model is built. Cost: one read of the dataset (sha256 at ~1-2 GB/s per core, shards hashed on
all cores). A passed check is remembered in the train directory (`data-verified.json`: the manifest's
hash and each shard's size and mtime), so a resumed run over unchanged files starts at once instead of
re-reading terabytes; a changed manifest, file size or mtime, or another `skip` list re-runs the check.

A damaged sample can be trained around with `--skip-samples ID[,ID...]`; a damaged shard footer, a
truncated or missing shard counts as damage to every sample of that shard. Damage that no sample owns (the
manifest, the errors file) cannot be skipped: repair or re-create the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspark_data.atomic import atomic_write_bytes
from dspark_data.mismatch import DataMismatch
from schemas.training import VERIFIED_NAME, VerifiedDataset


class CorruptData(DataMismatch):
    """The dataset fails `dspark verify` in samples that were not named to skip (or in unskippable files)."""


@dataclass
class IntegrityCheck:
    """What `check_integrity` did, and how to remember that the data passed.

    Remembering is left to the caller (`remember()`), so that a run refused by a later check writes
    nothing into its output directory."""

    message: str
    record: Path | None = None
    directory: Path | None = None
    state: dict[str, Any] | None = None

    def remember(self) -> None:
        if self.record is not None and self.directory is not None and self.state is not None:
            _remember(self.record, self.directory, self.state)


def check_integrity(
    directory: str | Path, skip: Collection[str] = (), *, record_dir: Path | None = None
) -> IntegrityCheck:
    """Raise CorruptData naming the damage unless every damaged sample is in `skip`.

    `record_dir`: where a passed check is remembered (the train directory) once the caller calls
    `remember()` on the result; a check recorded there for the same files is not repeated."""
    from dspark_data.store import verify

    directory = Path(directory)
    state = _file_state(directory, skip)
    record = record_dir / VERIFIED_NAME if record_dir is not None else None
    if record is not None and state is not None and _remembered(record, directory) == state:
        return IntegrityCheck(f"data {directory}: files unchanged since the check recorded in {record}, not "
                              "re-hashed (delete that file to force a full check)")
    start = time.perf_counter()
    report = verify(directory)
    error = None if report.ok else _damage_error(directory, report, skip)
    if error is not None:
        raise error
    outcome = "no damage" if report.ok else f"damage only in the {len(skip)} skipped sample(s)"
    message = (f"data {directory}: {report.shards_checked} shard(s), {report.bytes_checked / 1e9:.2f} GB "
               f"re-hashed in {time.perf_counter() - start:.1f} s, {outcome}")
    return IntegrityCheck(message, record, directory, state)


def _damage_error(directory: Path, report: Any, skip: Collection[str]) -> CorruptData | None:
    """The error to raise for `report`'s damage, or None when every damaged sample is in `skip`."""
    damaged: set[str] = set()
    unskippable: list[str] = []
    shard_ids: dict[int, list[str]] | None = None
    for issue in report.issues:
        if issue.sample_ids:
            damaged.update(issue.sample_ids)
        elif issue.shard is not None:  # the shard as a whole (size, footer): all of its samples
            if shard_ids is None:
                shard_ids = _ids_by_shard(directory)
            damaged.update(shard_ids.get(issue.shard, []))
            if issue.shard not in shard_ids:
                unskippable.append(str(issue))
        else:
            unskippable.append(str(issue))
    missing = sorted(damaged - set(skip))
    if not unskippable and not missing:
        return None
    problems = "; ".join(str(i) for i in report.issues[:6]) + (" ..." if len(report.issues) > 6 else "")
    if unskippable:
        fix = "repair or re-create the dataset (re-run the producing stage into a new --out)"
    else:
        shown = ",".join(missing[:20]) + (",..." if len(missing) > 20 else "")
        fix = f"re-create it, or train without the damaged samples: --skip-samples {shown}"
    return CorruptData(
        f"hidden-state data {directory} is corrupt ({len(report.issues)} problem(s) found by `dspark verify`: "
        f"{problems}); {fix}"
    )


def _file_state(directory: Path, skip: Collection[str]) -> dict[str, Any] | None:
    """What a remembered check vouches for: the manifest's bytes and each listed file's size and mtime
    (None when the manifest cannot be read: then there is nothing to remember)."""
    try:
        manifest_bytes = (directory / "manifest.json").read_bytes()
        files = sorted({name for shard in json.loads(manifest_bytes)["shards"]
                        for name in (shard["file"], shard["index_file"])})
        stats = {}
        for name in files:
            st = os.stat(directory / name)
            stats[name] = [st.st_size, st.st_mtime_ns]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {"manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(), "files": stats, "skip": sorted(skip)}


def _remembered(record: Path, directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads(record.read_text()).get(str(directory.resolve()))
    except (OSError, ValueError, AttributeError):
        return None


def _remember(record: Path, directory: Path, state: dict[str, Any]) -> None:
    """Add this dataset's state (schemas.training.VerifiedDataset) to the record, atomically."""
    VerifiedDataset.model_validate(state)
    try:
        known = json.loads(record.read_text())
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    known[str(directory.resolve())] = state
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(record, json.dumps(known, indent=1).encode())


def _ids_by_shard(directory: Path) -> dict[int, list[str]]:
    """Sample ids of each shard, from the index files ({} when an index is unreadable: nothing can be mapped)."""
    from dspark_data.store import open_dataset

    try:
        ds = open_dataset(directory)
    except Exception:  # noqa: BLE001 - an unreadable index: the shard cannot be mapped to samples
        return {}
    out: dict[int, list[str]] = {}
    for i, sid in enumerate(ds.ids):
        out.setdefault(ds.shard_of(i), []).append(sid)
    return out
