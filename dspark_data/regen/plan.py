"""The work plan of one regen part: which prompts, in which order, grouped into commit units.

Pipeline (each step a pure function of the recipe and the source content, so every rerun and every
machine computes the same plan):
    open_source -> select_indices (first / seeded N) -> normalize_row (Prompt | Rejection)
    -> drop duplicate ids (the first occurrence wins) -> keep this machine's part (hash of the id)
    -> groups of `shard_samples` items.
A group is the unit of commit: its records become one shard (in plan order) and its rejections go
to the errors file in the same commit, so an interrupted run resumes at a group boundary and
produces the same shards as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from dspark_data.prompts.normalize import Prompt, Rejection, normalize_row
from dspark_data.prompts.select import part_of, select_indices
from dspark_data.prompts.sources import open_source
from schemas.recipe import PromptsConfig


@dataclass
class Plan:
    """This part's prompts (and rejected rows) in plan order, split into commit groups."""

    source: str
    source_identity: dict[str, Any]
    selected: int  # rows selected across all parts
    items: list[Prompt | Rejection]
    group_size: int

    @property
    def groups(self) -> list[list[Prompt | Rejection]]:
        return [self.items[i : i + self.group_size] for i in range(0, len(self.items), self.group_size)]

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]

    def ids_digest(self) -> str:
        """sha256 of the sorted assigned ids: lets merge_check prove a part is complete without the source."""
        return hashlib.sha256("\n".join(sorted(self.ids)).encode("utf-8")).hexdigest()


def open_prompt_table(prompts: PromptsConfig) -> Any:
    """The source as a row table (separate so the fingerprint can use its identity before planning)."""
    return open_source(prompts.source, prompts.split)


def build_plan(
    prompts: PromptsConfig, seed: int, *, num_shards: int, shard_index: int, group_size: int, table: Any = None
) -> Plan:
    """Select, normalise, de-duplicate and split the prompts (see the module docstring)."""
    table = table if table is not None else open_prompt_table(prompts)
    indices = select_indices(len(table), prompts.num_prompts, prompts.selection, seed)
    seen: set[str] = set()
    items: list[Prompt | Rejection] = []
    for index, row in table.rows(indices):
        item = normalize_row(
            row, source=table.name, index=index, messages_column=prompts.messages_column, id_column=prompts.id_column
        )
        if item.id in seen:
            item = Rejection(f"{item.id}@row{index}", table.name, index, "duplicate_id", f"id {item.id!r} seen earlier")
        seen.add(item.id)
        if num_shards == 1 or part_of(item.id, num_shards) == shard_index:
            items.append(item)
    return Plan(table.name, table.identity(), len(indices), items, group_size)
