"""Prompt-set specs for evaluation, resolved through `dspark_data.prompts.eval_sets`.

A set is a name and a list of conversations, each sent (or simulated) as one chat request ending with the
user turn, as the seed card did ("one chat turn each"). Specs:
- `code`, `math`: the built-in sets (HumanEval-style stubs, math word problems).
- `speculator_benchmarks:NAME`: RedHatAI/speculator_benchmarks from the offline Hugging Face cache.
- `FILE.jsonl`, or `DIR:NAME` for `DIR/NAME.jsonl`: the same layout from disk (e.g. HumanEval,
  math_reasoning); each line has a `prompt` string or a `messages` list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspark_data.prompts.eval_sets import load_eval_set, load_speculator_benchmarks

Conversation = list[dict[str, Any]]


@dataclass
class PromptSet:
    name: str
    conversations: list[Conversation]


def load_prompt_set(spec: str, limit: int | None = None) -> PromptSet:
    """Resolve a spec (see module doc) to its conversations, the first `limit` of them."""
    path = Path(spec)
    if path.suffix == ".jsonl":
        name, rows = path.stem, load_speculator_benchmarks(path)
    elif ":" in spec and not spec.startswith("speculator_benchmarks:"):
        base, name = spec.rsplit(":", 1)
        rows = load_speculator_benchmarks(base, name.removesuffix(".jsonl"))
    else:
        name, rows = spec.split(":", 1)[-1], load_eval_set(spec)
    if not rows:
        raise ValueError(f"prompt set {spec!r} is empty")
    rows = rows[:limit] if limit else rows
    return PromptSet(name, [list(r["messages"]) for r in rows])
