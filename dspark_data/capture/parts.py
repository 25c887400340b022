"""Which regen samples one capture machine owns, and what its part records (`dump-hidden --num-shards N`).

A sample belongs to part `part_of(id, N)` (sha256 of the id, the same rule regen uses), so the split
depends on the ids alone: not on how the regen data itself was split, nor on which machine reads it.
Each part records `num_shards`/`shard_index` in its fingerprint (the only keys in which the parts of
one capture differ) and the count and digest of the ids it was assigned, which is what
`dspark inspect PARENT` (regen.merge.merge_check) proves the finished part holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dspark_data.prompts.select import part_of
from dspark_data.store.parts import part_name


def capture_part_dir(out: Path, num_shards: int, shard_index: int) -> Path:
    """`out` itself for one machine, else `out/part-0000i-of-0000N/`."""
    return Path(out) if num_shards == 1 else Path(out) / part_name(num_shards, shard_index)


def owned_indices(ids: Sequence[str], indices: Sequence[int], num_shards: int, shard_index: int) -> list[int]:
    """The `indices` (dataset rows) whose sample id falls in this part."""
    if num_shards == 1:
        return list(indices)
    return [i for i in indices if part_of(ids[i], num_shards) == shard_index]


def part_fingerprint(num_shards: int, shard_index: int) -> dict[str, int]:
    """Fingerprint keys of a part ({} for one machine: its dataset is a plain one, as before)."""
    return {} if num_shards == 1 else {"num_shards": num_shards, "shard_index": shard_index}


def assigned_record(ids: Sequence[str]) -> dict[str, Any]:
    """producer_config entries merge_check verifies: how many ids the part was given, and their digest."""
    return {"assigned": len(ids), "assigned_digest": hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()}
