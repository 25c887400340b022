"""`run_regen`: the regen stage end to end (the one library call behind `dspark regen`).

Order of work, each step cheap before the expensive one:
1. resolve the target and the sampling, fingerprint the inputs;
2. if the output directory already holds a complete dataset with that fingerprint, report it as
   cached and return without starting an engine;
3. plan the prompts (select, normalise, split, group) and open the shard writer, which resumes
   from whatever an interrupted run committed and refuses a directory made with other settings;
4. start the backend only if something is left, run the driver, close the dataset, write summary.json.

Multi-machine: with `num_shards > 1` each part writes `<out>/part-0000i-of-0000N/` (its own manifest,
errors and summary); `merge.merge_check` verifies the parts are disjoint and complete.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from dspark_data.regen.conversation import RegenContext
from dspark_data.regen.driver import RegenDriver
from dspark_data.regen.fingerprint import regen_fingerprint
from dspark_data.regen.merge import committed_ids
from dspark_data.regen.plan import build_plan, open_prompt_table
from dspark_data.regen.progress import RegenProgress, RunStats
from dspark_data.regen.reasoning import ReasoningSplitter
from dspark_data.regen.sampling import check_engine_defaults, resolve_sampling, target_generation_defaults
from dspark_data.regen.summary import dataset_totals, write_summary
from dspark_data.shutdown import GracefulStop, check_stop
from dspark_data.store import ShardWriter, load_manifest
from dspark_data.store.manifest import StoreError
from schemas.base import fingerprint as fingerprint_hash
from schemas.recipe import Recipe
from schemas.regen import REGEN_ARROW_SCHEMA, REGEN_KIND, RegenSummary, SamplingRecord

log = logging.getLogger(__name__)


def part_dir(out: str | Path, num_shards: int, shard_index: int) -> Path:
    """Where one part writes: `out` itself for a single machine, else `out/part-0000i-of-0000N`."""
    out = Path(out)
    return out if num_shards == 1 else out / f"part-{shard_index:05d}-of-{num_shards:05d}"


def _stop_ids(tokenizer: Any, target_path: str, revision: str | None) -> set[int]:
    ids: set[int] = set()
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(target_path, revision=revision).eos_token_id
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
    except OSError:
        pass
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _cached_summary(out: Path, fp_hash: str, backend: str, num_shards: int, shard_index: int) -> RegenSummary | None:
    try:
        manifest = load_manifest(out)
    except StoreError:
        return None
    if manifest.kind != REGEN_KIND or manifest.fingerprint_hash != fp_hash or not manifest.complete:
        return None
    assigned = int(manifest.producer_config.get("assigned", manifest.totals.samples + manifest.totals.errors))
    return write_summary(
        out,
        manifest,
        RunStats(),
        cached=True,
        backend=backend,
        assigned=assigned,
        num_shards=num_shards,
        shard_index=shard_index,
        totals=dataset_totals(out, manifest),
    )


def run_regen(
    recipe: Recipe,
    out: str | Path,
    *,
    num_shards: int = 1,
    shard_index: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    window: int | None = None,
    llm: Any = None,
    enforce_eager: bool | None = None,
    openai_options: dict[str, Any] | None = None,
) -> RegenSummary:
    """Regenerate the recipe's prompts with its target into `out` (see the module docstring).

    `llm`: an already started `vllm.LLM` to reuse (tests, benchmarks); otherwise the vllm backend
    starts one and the openai backend talks to `recipe.regen.endpoints`. `openai_options`: extra
    `OpenAIBackend` arguments (backoff_base_s, backoff_max_s, model). `window`: prompts kept in open
    groups (default max(4 x shard_samples, 2048)).
    """
    # SIGTERM from here on is a request (planning included, so no instant of the run dies on the default
    # handler): the driver stops after its next commit, the turns in flight are discarded, the engine closed.
    with GracefulStop("regen"):
        return _run_regen(recipe, out, num_shards=num_shards, shard_index=shard_index, overwrite=overwrite,
                          progress=progress, window=window, llm=llm, enforce_eager=enforce_eager,
                          openai_options=openai_options)


def _run_regen(
    recipe: Recipe,
    out: str | Path,
    *,
    num_shards: int,
    shard_index: int,
    overwrite: bool,
    progress: bool,
    window: int | None,
    llm: Any,
    enforce_eager: bool | None,
    openai_options: dict[str, Any] | None,
) -> RegenSummary:
    from dspark_data.targets import resolve_target

    out = part_dir(out, num_shards, shard_index)
    backend_name = recipe.regen.backend
    target_path = resolve_target(recipe.target.model)
    revision = recipe.target.revision
    sampling = resolve_sampling(recipe.regen.sampling, target_generation_defaults(target_path, revision))
    table = open_prompt_table(recipe.prompts)
    fp = regen_fingerprint(
        recipe,
        target_path=target_path,
        source_identity=table.identity(),
        sampling=sampling,
        num_shards=num_shards,
        shard_index=shard_index,
    )
    if not overwrite:
        cached = _cached_summary(out, fingerprint_hash(fp), backend_name, num_shards, shard_index)
        if cached is not None:
            log.info("regen: %s is complete with the same fingerprint; reusing it", out)
            return cached

    plan = build_plan(
        recipe.prompts,
        recipe.seed,
        num_shards=num_shards,
        shard_index=shard_index,
        group_size=recipe.regen.shard_samples,
        table=table,
    )
    producer = {
        "recipe": recipe.model_dump(mode="json"),
        "target_path": target_path,
        "assigned": len(plan.items),
        "assigned_digest": plan.ids_digest(),
        "selected": plan.selected,
    }
    stats = RunStats()
    backend: Any = None
    try:
        check_stop("regen", "before any request; nothing new was written")
        if _anything_left(out, plan, fingerprint_hash(fp), overwrite):
            # Start the engine before opening the writer: vLLM forks its engine processes, and a fork
            # made after the writer took its lock would keep the lock alive past a SIGKILL of this process.
            backend = _make_backend(recipe, target_path, llm, enforce_eager, openai_options or {})
        writer = ShardWriter(out, REGEN_KIND, REGEN_ARROW_SCHEMA, fp, producer_config=producer, overwrite=overwrite)
        try:
            done = writer.committed_ids | writer.error_ids
            groups = [[item for item in group if item.id not in done] for group in plan.groups]
            todo = sum(len(g) for g in groups)
            if todo:
                if backend is None:
                    backend = _make_backend(recipe, target_path, llm, enforce_eager, openai_options or {})
                _drive(
                    recipe,
                    target_path,
                    sampling,
                    backend,
                    writer,
                    groups,
                    stats,
                    progress,
                    window,
                    total=len(plan.items),
                    check_defaults=llm is None,
                )
            manifest = writer.close()
        except BaseException:
            writer.abort()
            raise
    finally:
        if backend is not None:
            backend.close()
    return write_summary(
        out,
        manifest,
        stats,
        cached=False,
        backend=backend_name,
        assigned=len(plan.items),
        num_shards=num_shards,
        shard_index=shard_index,
        totals=dataset_totals(out, manifest),
    )


def _anything_left(out: Path, plan: Any, fp_hash: str, overwrite: bool) -> bool:
    """Read-only look at what an earlier run committed (no lock taken): is any planned prompt left?

    False also when the directory holds another fingerprint: the writer then refuses it, and no
    engine should be started just to report that."""
    if overwrite or not (out / "manifest.json").exists():
        return bool(plan.items)
    try:
        manifest = load_manifest(out)
        if manifest.fingerprint_hash != fp_hash:
            return False
        ids, errors = committed_ids(out)
    except (StoreError, OSError, ValueError):
        return True
    done = set(ids) | set(errors)
    return any(item.id not in done for item in plan.items)


def _drive(
    recipe: Recipe,
    target_path: str,
    sampling: SamplingRecord,
    backend: Any,
    writer: ShardWriter,
    groups: list[list[Any]],
    stats: RunStats,
    progress: bool,
    window: int | None,
    *,
    total: int,
    check_defaults: bool,
) -> None:
    """Run the driver over the remaining groups with a progress bar."""
    ctx = make_context(recipe, target_path, sampling)
    if check_defaults and recipe.regen.backend == "vllm":
        check_engine_defaults(recipe.regen.sampling, sampling, backend.llm.get_default_sampling_params())
    window = window or max(4 * recipe.regen.shard_samples, 2048)
    remaining = sum(len(g) for g in groups)
    stats.started = time.monotonic()
    with RegenProgress(total, total - remaining, stats, enabled=progress, description=f"regen {recipe.name}") as bar:
        RegenDriver(backend, ctx, writer, stats, bar, window).run(groups)


def make_context(recipe: Recipe, target_path: str, sampling: SamplingRecord) -> RegenContext:
    """The run-wide state conversations share: tokenizer (prompt lengths, decoding), caps, seeds, target."""
    from transformers import AutoTokenizer

    revision = recipe.target.revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(target_path, revision=revision)
    except (OSError, ValueError) as exc:  # missing or broken tokenizer files: name the target
        raise ValueError(f"target {target_path}: cannot load its tokenizer: {exc}") from exc
    return RegenContext(
        tokenizer=tokenizer,
        splitter=ReasoningSplitter(tokenizer, _stop_ids(tokenizer, target_path, revision)),
        sampling=sampling,
        run_seed=recipe.seed,
        seq_len=recipe.seq_len,
        max_prompt_tokens=recipe.prompts.max_prompt_tokens,
        turns=recipe.prompts.turns,
        target_model=recipe.target.model,
        target_revision=revision,
    )


def _make_backend(
    recipe: Recipe, target_path: str, llm: Any, enforce_eager: bool | None, openai_options: dict[str, Any]
) -> Any:
    if recipe.regen.backend == "openai":
        from dspark_data.regen.backends.openai import OpenAIBackend

        r = recipe.regen
        return OpenAIBackend(
            r.endpoints, concurrency=r.concurrency, timeout_s=r.timeout_s, max_retries=r.max_retries, **openai_options
        )
    from dspark_data.regen.backends.engine import VllmEngineBackend, start_engine

    if llm is not None:
        return VllmEngineBackend(llm)
    t = recipe.target
    started = start_engine(
        target_path,
        revision=t.revision,
        dtype=t.dtype,
        tensor_parallel_size=t.tensor_parallel_size,
        data_parallel_size=t.data_parallel_size,
        enable_expert_parallel=t.enable_expert_parallel,
        max_model_len=t.max_model_len or recipe.seq_len,
        gpu_memory_utilization=t.gpu_memory_utilization,
        seed=recipe.seed,
        enforce_eager=enforce_eager,
    )
    return VllmEngineBackend(started.llm, started)


def load_summary(out: str | Path) -> dict[str, Any]:
    """Read `<out>/summary.json`."""
    return json.loads((Path(out) / "summary.json").read_text())
