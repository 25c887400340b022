"""`run_regen`: the regen stage end to end (the one library call behind `dspark regen`), as a `RegenStage`
run by `dspark_data.stage.execute`.

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

import logging
import time
from dataclasses import dataclass
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
from dspark_data.stage import Stage, execute
from dspark_data.store import ShardWriter, load_manifest
from dspark_data.store.manifest import StoreError
from dspark_data.targets.stop_ids import stop_token_ids
from schemas.base import fingerprint as fingerprint_hash
from schemas.recipe import Recipe
from schemas.regen import REGEN_ARROW_SCHEMA, REGEN_KIND, RegenSummary, SamplingRecord
from schemas.store import Manifest

log = logging.getLogger(__name__)


def part_dir(out: str | Path, num_shards: int, shard_index: int) -> Path:
    """Where one part writes: `out` itself for a single machine, else `out/part-0000i-of-0000N`."""
    out = Path(out)
    return out if num_shards == 1 else out / f"part-{shard_index:05d}-of-{num_shards:05d}"


@dataclass
class RegenOptions:
    """How to run (not what to produce: nothing here is in the fingerprint); see `run_regen`."""

    overwrite: bool
    progress: bool
    window: int | None
    llm: Any
    enforce_eager: bool | None
    openai_options: dict[str, Any]


class RegenStage(Stage[RegenSummary]):
    """One part of a regen run: fingerprint (target, sampling, prompts), cached?, plan, generate, summary."""

    def __init__(self, recipe: Recipe, out: str | Path, num_shards: int, shard_index: int, opts: RegenOptions) -> None:
        from dspark_data.targets import resolve_target

        self.recipe, self.opts = recipe, opts
        self.num_shards, self.shard_index = num_shards, shard_index
        self.out = part_dir(out, num_shards, shard_index)
        self.target_path = resolve_target(recipe.target.model)
        defaults = target_generation_defaults(self.target_path, recipe.target.revision)
        self.sampling = resolve_sampling(recipe.regen.sampling, defaults)
        self.table = open_prompt_table(recipe.prompts)
        self.fp: dict[str, Any] = {}

    def fingerprint(self) -> str:
        self.fp = regen_fingerprint(
            self.recipe,
            target_path=self.target_path,
            source_identity=self.table.identity(),
            sampling=self.sampling,
            num_shards=self.num_shards,
            shard_index=self.shard_index,
        )
        return fingerprint_hash(self.fp)

    def cached(self, fingerprint: str) -> RegenSummary | None:
        if self.opts.overwrite:
            return None
        try:
            manifest = load_manifest(self.out)
        except StoreError:
            return None
        if manifest.kind != REGEN_KIND or manifest.fingerprint_hash != fingerprint or not manifest.complete:
            return None
        log.info("regen: %s is complete with the same fingerprint; reusing it", self.out)
        assigned = int(manifest.producer_config.get("assigned", manifest.totals.samples + manifest.totals.errors))
        return self._summary(manifest, RunStats(), cached=True, assigned=assigned)

    def run(self, fingerprint: str) -> RegenSummary:
        plan = build_plan(
            self.recipe.prompts,
            self.recipe.seed,
            num_shards=self.num_shards,
            shard_index=self.shard_index,
            group_size=self.recipe.regen.shard_samples,
            table=self.table,
        )
        stats = RunStats()
        manifest = self._generate(plan, fingerprint, stats)
        return self._summary(manifest, stats, cached=False, assigned=len(plan.items))

    def _generate(self, plan: Any, fingerprint: str, stats: RunStats) -> Manifest:
        """Start the backend (only if a planned prompt is left), write what is left, close the dataset."""
        backend: Any = None
        try:
            check_stop("regen", "before any request; nothing new was written")
            if _anything_left(self.out, plan, fingerprint, self.opts.overwrite):
                # Start the engine before opening the writer: vLLM forks its engine processes, and a fork
                # made after the writer took its lock would keep the lock alive past a SIGKILL of this process.
                backend = self._backend()
            writer = ShardWriter(self.out, REGEN_KIND, REGEN_ARROW_SCHEMA, self.fp,
                                 producer_config=self._producer(plan), overwrite=self.opts.overwrite)
            try:
                done = writer.committed_ids | writer.error_ids
                groups = [[item for item in group if item.id not in done] for group in plan.groups]
                if any(groups):
                    if backend is None:
                        backend = self._backend()
                    _drive(self.recipe, self.target_path, self.sampling, backend, writer, groups, stats,
                           self.opts.progress, self.opts.window, total=len(plan.items),
                           check_defaults=self.opts.llm is None)
                return writer.close()
            except BaseException:
                writer.abort()
                raise
        finally:
            if backend is not None:
                backend.close()

    def _producer(self, plan: Any) -> dict[str, Any]:
        """The manifest's producer_config: the full recipe and what this part was assigned."""
        return {
            "recipe": self.recipe.model_dump(mode="json"),
            "target_path": self.target_path,
            "assigned": len(plan.items),
            "assigned_digest": plan.ids_digest(),
            "selected": plan.selected,
        }

    def _backend(self) -> Any:
        return _make_backend(self.recipe, self.target_path, self.opts.llm, self.opts.enforce_eager,
                             self.opts.openai_options)

    def _summary(self, manifest: Manifest, stats: RunStats, *, cached: bool, assigned: int) -> RegenSummary:
        return write_summary(
            self.out,
            manifest,
            stats,
            cached=cached,
            backend=self.recipe.regen.backend,
            assigned=assigned,
            num_shards=self.num_shards,
            shard_index=self.shard_index,
            totals=dataset_totals(self.out, manifest),
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
    opts = RegenOptions(overwrite, progress, window, llm, enforce_eager, openai_options or {})
    # SIGTERM from here on is a request (planning included, so no instant of the run dies on the default
    # handler): the driver stops after its next commit, the turns in flight are discarded, the engine closed.
    with GracefulStop("regen"):
        return execute(RegenStage(recipe, out, num_shards, shard_index, opts))


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
        splitter=ReasoningSplitter(tokenizer, stop_token_ids(target_path, tokenizer, revision)),
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

