"""Check that the parts written by N machines (`--num-shards N --shard-index i`) form one dataset.

Regen parts and hidden-state parts (`dump-hidden --num-shards N`) alike: both record `num_shards`,
`shard_index` and the assigned ids' count and digest.

`merge_check(dirs)` proves, from the part directories alone (no access to the prompt source):
- every part is a complete regen dataset, all made with the same settings apart from the part index;
- the part indices are exactly 0..N-1, each once;
- no sample id appears in two parts (nor twice in one part, across shards and errors);
- each part holds exactly the ids it was assigned: its committed ids plus its error ids have the
  count and sha256 digest recorded when the part was planned (`producer_config.assigned*`).
`dspark inspect` can call it on a parent directory holding `part-*` folders (see `find_parts`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from dspark_data.store import load_manifest
from dspark_data.store.hidden import KIND_HIDDEN as HIDDEN_KIND
from dspark_data.store.manifest import StoreError
from dspark_data.store.parts import find_part_dirs
from schemas.regen import REGEN_KIND


@dataclass
class MergeReport:
    """Result of merge_check: ok, the totals, and one line per problem found."""

    ok: bool = True
    parts: int = 0
    samples: int = 0
    errors: int = 0
    problems: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.ok = False
        self.problems.append(message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "parts": self.parts,
            "samples": self.samples,
            "errors": self.errors,
            "problems": self.problems,
        }


def find_parts(directory: str | Path) -> list[Path]:
    """The `part-*` folders of a multi-machine regen or capture output, sorted."""
    return find_part_dirs(directory)


def committed_ids(directory: Path) -> tuple[list[str], list[str]]:
    """(ids in committed shards, ids in the committed part of errors.jsonl) of a dataset directory."""
    manifest = load_manifest(directory)
    ids: list[str] = []
    for entry in manifest.shards:
        with pa.memory_map(str(directory / entry.index_file)) as src:
            ids.extend(pa.ipc.open_file(src).read_all().column("id").to_pylist())
    errors: list[str] = []
    if manifest.errors_bytes:
        with open(directory / manifest.errors_file, "rb") as f:
            data = f.read(manifest.errors_bytes).decode("utf-8")
        errors = [json.loads(line)["id"] for line in data.splitlines() if line.strip()]
    return ids, errors


def merge_check(dirs: list[str | Path]) -> MergeReport:
    """Verify that `dirs` are the disjoint, complete parts of one regen run (see the module docstring)."""
    report = MergeReport()
    paths = [Path(d) for d in dirs]
    if len(paths) == 1 and find_parts(paths[0]):
        paths = find_parts(paths[0])
    report.parts = len(paths)
    owner: dict[str, str] = {}
    reference: dict[str, Any] | None = None
    kind: str | None = None
    indices: list[int] = []
    for path in paths:
        try:
            manifest = load_manifest(path)
        except StoreError as exc:
            report.fail(str(exc))
            continue
        if manifest.kind not in (REGEN_KIND, HIDDEN_KIND) or manifest.kind != (kind or manifest.kind):
            report.fail(f"{path}: kind {manifest.kind!r}, not a {kind or 'regen or hidden-state'} dataset")
            continue
        kind = manifest.kind
        if not manifest.complete:
            report.fail(f"{path}: not complete (rerun the same command on that machine to finish it)")
        fp = dict(manifest.fingerprint)
        indices.append(int(fp.pop("shard_index", 0)))
        if reference is None:
            reference = fp
        elif fp != reference:
            diff = sorted(k for k in set(fp) | set(reference) if fp.get(k) != reference.get(k))
            report.fail(f"{path}: made with different settings than {paths[0]} (differs in {diff})")
        ids, errors = committed_ids(path)
        report.samples += len(ids)
        report.errors += len(errors)
        for sid in ids + errors:
            if sid in owner:
                report.fail(f"id {sid!r} is in both {owner[sid]} and {path}")
            owner[sid] = str(path)
        producer = manifest.producer_config
        assigned = producer.get("assigned")
        digest = hashlib.sha256("\n".join(sorted(ids + errors)).encode("utf-8")).hexdigest()
        if assigned is not None and len(ids) + len(errors) != assigned:
            report.fail(f"{path}: {len(ids)} samples + {len(errors)} errors != {assigned} assigned prompts")
        elif producer.get("assigned_digest") not in (None, digest):
            report.fail(f"{path}: its ids differ from the ids it was assigned")
    expected = int((reference or {}).get("num_shards", len(paths)))
    if sorted(indices) != list(range(expected)):
        report.fail(f"part indices {sorted(indices)} are not exactly 0..{expected - 1}")
    return report
