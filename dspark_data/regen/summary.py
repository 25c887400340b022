"""`summary.json` of a regen directory: dataset totals read back from the shards, plus this run's figures.

Totals are recomputed from the committed shards (not accumulated in memory) so a resumed or cached run
reports the whole dataset, not just what the last invocation produced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from dspark_data.regen.progress import RunStats
from dspark_data.stage import publish_summary
from schemas.regen import RegenSummary
from schemas.store import Manifest


@dataclass
class Totals:
    samples: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    retokenized_turns: int = 0
    truncated: int = 0


def dataset_totals(directory: str | Path, manifest: Manifest) -> Totals:
    """Sum the per-record counters over every committed shard (memory-mapped; only these columns are read)."""
    t = Totals()
    for entry in manifest.shards:
        with pa.memory_map(str(Path(directory) / entry.file)) as source:
            table = (
                pa.ipc.open_file(source)
                .read_all()
                .select(["num_prompt_tokens", "num_generated_tokens", "truncated", "turns"])
            )
            t.samples += table.num_rows
            t.prompt_tokens += int(pc.sum(table["num_prompt_tokens"]).as_py() or 0)
            t.generated_tokens += int(pc.sum(table["num_generated_tokens"]).as_py() or 0)
            t.truncated += int(pc.sum(pc.cast(table["truncated"], pa.int64())).as_py() or 0)
            turns = pc.list_flatten(table["turns"])
            if len(turns):
                flags = pc.struct_field(turns, "retokenized")
                t.retokenized_turns += int(pc.sum(pc.cast(flags, pa.int64())).as_py() or 0)
    return t


def write_summary(
    directory: str | Path,
    manifest: Manifest,
    stats: RunStats,
    *,
    cached: bool,
    backend: str,
    assigned: int,
    num_shards: int,
    shard_index: int,
    totals: Totals,
) -> RegenSummary:
    """Build and atomically write `<directory>/summary.json`; return it."""
    elapsed = 0.0 if cached else stats.elapsed
    summary = RegenSummary(
        cached=cached,
        complete=manifest.complete and totals.samples + manifest.totals.errors == assigned,
        backend=backend,
        fingerprint=manifest.fingerprint_hash,
        num_shards=num_shards,
        shard_index=shard_index,
        assigned=assigned,
        samples=totals.samples,
        errors=manifest.totals.errors,
        errors_by_reason=dict(sorted(manifest.error_counts.items())),
        prompt_tokens=totals.prompt_tokens,
        generated_tokens=totals.generated_tokens,
        retokenized_turns=totals.retokenized_turns,
        truncated=totals.truncated,
        run_samples=0 if cached else stats.samples,
        run_generated_tokens=0 if cached else stats.generated_tokens,
        elapsed_s=round(elapsed, 3),
        tokens_per_s=round(stats.generated_tokens / elapsed, 1) if elapsed > 0 else 0.0,
    )
    publish_summary(directory, summary, indent=1)
    return summary
