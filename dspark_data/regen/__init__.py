"""Regen: re-answer prompts with the target itself, keeping the exact token ids (issue #3).

Modules, one job each:
- `plan.py`: prompts -> this machine's ordered items, in commit groups;
- `sampling.py`: the resolved sampling every request carries;
- `conversation.py`: one conversation's turns, token ids and loss mask (the re-tokenisation rule);
- `reasoning.py`: split `<think>` reasoning from the answer;
- `backends/`: the in-process vLLM engine and the HTTP client for `vllm serve` endpoints;
- `driver.py`: the loop that keeps the backend busy and commits groups in order;
- `run.py`: `run_regen`, the stage end to end (fingerprint, cache, resume, summary);
- `merge.py`: `merge_check` over the parts of a multi-machine run.

Public API: `run_regen(recipe, out, num_shards=1, shard_index=0, ...) -> RegenSummary`,
`merge_check(dirs) -> MergeReport`, `part_dir(out, num_shards, shard_index)`.
Format: `docs/formats/regen.md`, `schemas/regen.py`.
"""

from dspark_data.regen.merge import MergeReport, find_parts, merge_check
from dspark_data.regen.run import part_dir, run_regen

__all__ = ["MergeReport", "find_parts", "merge_check", "part_dir", "run_regen"]
