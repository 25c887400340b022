"""Refuse to start training on a corrupt hidden-state dataset, unless the damaged samples are named to skip.

Why before training: the store's reader checks the manifest and the index files when it opens a dataset,
but not each sample's bytes when it reads them, so a flipped bit in a hidden-state payload would be
trained on (raw codec) or stop the run hours in (a codec that fails to decode). `dspark_data.store.verify`
re-hashes every sample against its checksum and names the damaged ones; this runs it once, on rank 0,
before any model is built. Cost: one read of the dataset (sha256 runs at ~1-2 GB/s per core).

A damaged sample can be trained around with `--skip-samples ID[,ID...]`; a damaged shard footer, a
truncated or missing shard counts as damage to every sample of that shard. Damage that no sample owns (the
manifest, the errors file) cannot be skipped: repair or re-create the dataset.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from dspark_train.data.checks import DataMismatch


class CorruptData(DataMismatch):
    """The dataset fails `dspark verify` in samples that were not named to skip (or in unskippable files)."""


def check_integrity(directory: str | Path, skip: Collection[str] = ()) -> None:
    """Raise CorruptData naming the damage unless every damaged sample is in `skip`."""
    from dspark_data.store import verify

    directory = Path(directory)
    report = verify(directory)
    if report.ok:
        return
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
        return
    problems = "; ".join(str(i) for i in report.issues[:6]) + (" ..." if len(report.issues) > 6 else "")
    if unskippable:
        fix = "repair or re-create the dataset (re-run the producing stage into a new --out)"
    else:
        shown = ",".join(missing[:20]) + (",..." if len(missing) > 20 else "")
        fix = f"re-create it, or train without the damaged samples: --skip-samples {shown}"
    raise CorruptData(
        f"hidden-state data {directory} is corrupt ({len(report.issues)} problem(s) found by `dspark verify`: "
        f"{problems}); {fix}"
    )


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
