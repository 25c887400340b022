"""The stage contract: fingerprint -> already complete? -> run -> publish `summary.json`.

Why one contract: regen, dump-hidden, vocab, train, export and eval each decide from a fingerprint of
their inputs and settings whether their output directory already holds their result, and each ends by
writing `summary.json`. Written six ways, the cache checks drifted (which files must exist, what
`cached` reports). Like datatrove's executors, the control flow lives here once and a stage supplies
only its three steps:

- `fingerprint()`: the hash of everything the output depends on (never of how fast it is made);
- `cached(fingerprint)`: the summary to report when the output is complete for that fingerprint, else None
  (stages whose summary carries this invocation's figures, regen and vocab, publish it again, as `cached`);
- `run(fingerprint)`: produce the output, publish its summary last (the completion marker) and return it.

`execute(stage)` runs one: `RegenStage`, `VocabStage`, `ExportStage`, `OfflineEvalStage`. Training decides
start/resume/reuse in `dspark_train.resume` and dump-hidden resumes through its shard writer (both need
more than "complete or not"); they, the live eval and the report publish their summaries here too.
The summary formats are `schemas.summary` (and `schemas.regen.RegenSummary`);
`publish_summary` validates a summary against its model and writes it atomically in the stage's own key
order, so the files' bytes are what they were before the contract existed.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from dspark_data.atomic import atomic_write_bytes

SUMMARY = "summary.json"

S = TypeVar("S")


class Stage(ABC, Generic[S]):
    """One pipeline stage writing into one output directory; `execute` drives it."""

    @abstractmethod
    def fingerprint(self) -> str:
        """The hash of the inputs and settings the output depends on."""

    @abstractmethod
    def cached(self, fingerprint: str) -> S | None:
        """The summary of a complete output made with `fingerprint` (reported as cached), else None."""

    @abstractmethod
    def run(self, fingerprint: str) -> S:
        """Produce the output for `fingerprint`; publish and return its summary."""


def execute(stage: Stage[S]) -> S:
    """Run `stage` unless its output is already complete for its fingerprint."""
    fp = stage.fingerprint()
    done = stage.cached(fp)
    return done if done is not None else stage.run(fp)


def read_summary(out_dir: str | Path) -> dict[str, Any] | None:
    """`<out_dir>/summary.json` as a dict, None when there is none."""
    path = Path(out_dir) / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def cached_summary(out_dir: str | Path, fingerprint: str, outputs: Iterable[str]) -> dict[str, Any] | None:
    """The published summary, marked `cached`, when it records `fingerprint` and every file in `outputs`
    (names inside `out_dir`) exists; else None (nothing there, another fingerprint, or a partial output)."""
    out_dir = Path(out_dir)
    if not all((out_dir / name).is_file() for name in outputs):
        return None
    old = read_summary(out_dir)
    if old is None or old.get("fingerprint") != fingerprint:
        return None
    return {**old, "cached": True}


def summary_bytes(
    summary: BaseModel | dict[str, Any], *, schema: type[BaseModel] | None = None, indent: int = 2
) -> bytes:
    """The file's bytes: a model as pydantic writes it, a dict (validated against `schema`) as `json.dumps`
    does, its key order kept. For a stage that publishes its whole directory at once (export)."""
    if isinstance(summary, BaseModel):
        return (summary.model_dump_json(indent=indent) + "\n").encode("utf-8")
    if schema is not None:
        schema.model_validate(summary)
    return (json.dumps(summary, indent=indent) + "\n").encode()


def publish_summary(
    out_dir: str | Path,
    summary: BaseModel | dict[str, Any],
    *,
    schema: type[BaseModel] | None = None,
    indent: int = 2,
) -> None:
    """Validate `summary` (a dict against `schema`) and write `<out_dir>/summary.json` atomically."""
    atomic_write_bytes(Path(out_dir) / SUMMARY, summary_bytes(summary, schema=schema, indent=indent))
