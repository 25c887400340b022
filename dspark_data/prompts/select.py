"""Deterministic choice of which source rows to use, and which machine handles which prompt.

Both are pure functions so that any rerun, resume or other machine computes the same answer:
- `select_indices`: the first N rows, or N rows ranked by a seeded hash of their row number (a
  sample without replacement that does not depend on numpy's algorithms or on the row order of
  other rows), returned in source order;
- `part_of`: the machine (0..num_shards-1) that owns a prompt id, from a hash of the id alone, so N
  machines produce disjoint outputs whose union is the single-machine selection.
"""

from __future__ import annotations

import hashlib
import os
from typing import Literal

from dspark_data.seeding import derive_seed


def select_indices(num_rows: int, num: int | None, selection: Literal["first", "random"], seed: int) -> list[int]:
    """Row numbers to use, in source order: all rows, the first `num`, or `num` drawn with `seed`."""
    if num is None or num >= num_rows:
        return list(range(num_rows))
    if selection == "first":
        return list(range(num))
    ranked = sorted(range(num_rows), key=lambda i: derive_seed(seed, "prompts", "select", i))
    return sorted(ranked[:num])


def part_of(sample_id: str, num_shards: int) -> int:
    """The part (machine) that owns `sample_id`: sha256 of the id modulo `num_shards`."""
    digest = hashlib.sha256(b"dspark-part\x1f" + sample_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def shard_from_env(num_shards: int | None, shard_index: int | None) -> tuple[int, int]:
    """`--num-shards/--shard-index` when given, else WORLD_SIZE/RANK (torchrun, SLURM), else (1, 0)."""
    env = os.environ
    if num_shards is None:
        num_shards = int(env.get("WORLD_SIZE") or env.get("SLURM_NTASKS") or 1)
    if shard_index is None:
        shard_index = int(env.get("RANK") or env.get("SLURM_PROCID") or 0)
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard-index {shard_index} must be in 0..{num_shards - 1} (--num-shards {num_shards})")
    return num_shards, shard_index
