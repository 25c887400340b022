"""`dspark dump-hidden`: run the target over the regen dataset and store aux + last-layer hidden states.

    from dspark_data.capture import dump_hidden
    summary = dump_hidden(recipe, Path("runs/tiny/regen"), Path("runs/tiny/hidden"))

Order of work, and why:
1. Plan the layers against the target's config.json (bad ids, size mismatches: errors before any work).
2. Open the output through `HiddenStateWriter`: a different fingerprint (target, layers, codec, seq_len,
   regen data, backend, engine dtype) is refused; committed and rejected ids are skipped (resume).
3. Nothing left and the dataset closed: report `cached` without starting an engine.
4. Otherwise start the backend, stream the remaining samples through it, check each capture
   (`validate.py`), write it or record why not, and commit every `batch_size` samples, so a killed run
   loses at most one batch and a rerun continues where it stopped.
5. Close the dataset (the manifest marks it complete) and write `summary.json`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from dspark_data.capture.backend_factory import open_backend
from dspark_data.capture.layers import CaptureConfigError, LayerPlan
from dspark_data.capture.parts import assigned_record, capture_part_dir, owned_indices, part_fingerprint
from dspark_data.capture.projection import print_dry_run
from dspark_data.capture.regen_rows import capture_row
from dspark_data.capture.settings import CaptureSettings
from dspark_data.capture.validate import check_capture
from dspark_data.capture.vllm_limits import check_in_process_layout
from dspark_data.progress import Progress
from dspark_data.shutdown import GracefulStop, check_stop, stop_requested
from dspark_data.stage import publish_summary
from dspark_data.store import HiddenStateWriter
from dspark_data.store.parts import open_any
from schemas.recipe import Recipe
from schemas.summary import HiddenSummary


@dataclass(frozen=True)
class Sample:
    """One regen conversation, truncated to seq_len."""

    id: str
    input_ids: torch.Tensor  # int64 [T]
    loss_mask: torch.Tensor  # bool [T]


def dump_hidden(
    recipe: Recipe,
    data_dir: Path,
    out_dir: Path,
    limit: int | None = None,
    backend: str | None = None,
    dry_run: bool = False,
    *,
    console: Console | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    sample_from: Path | None = None,
) -> dict[str, Any]:
    """Capture hidden states for the regen dataset at `data_dir` into `out_dir`; returns the summary.

    `num_shards > 1`: capture only the samples of part `shard_index` into `out_dir/part-i-of-N/`
    (capture/parts.py). `data_dir` may be a parent of regen parts (read as one dataset)."""
    console = console or Console(stderr=True)
    backend_name = backend or recipe.capture.backend
    if dry_run:
        return print_dry_run(recipe, data_dir, limit, console, [out_dir, *([sample_from] if sample_from else [])])

    from dspark_data.targets import load_target_info, resolve_target

    if backend_name == "vllm":  # before resolving (downloading) the target
        check_in_process_layout(recipe.target.data_parallel_size)
    regen = open_any(data_dir, require_complete=True)  # cheap checks first: building a tiny target is not
    if regen.manifest.kind != "regen":
        raise CaptureConfigError(
            f"--data {data_dir} is a {regen.manifest.kind!r} dataset, not a regen dataset: pass the output of "
            "`dspark regen`"
        )
    model_path = resolve_target(recipe.target.model)
    info = load_target_info(model_path, recipe.target.revision)
    settings = CaptureSettings.for_target(recipe, info.num_hidden_layers, info.hidden_size, backend_name)
    options = settings.engine_options()  # refuses a target.max_model_len below seq_len before any engine starts
    capture, plan = recipe.capture, settings.plan
    selected = list(range(len(regen)))[:limit] if limit is not None else list(range(len(regen)))
    selected = owned_indices(regen.ids, selected, num_shards, shard_index)
    out_dir = capture_part_dir(out_dir, num_shards, shard_index)

    started = time.monotonic()
    writer = HiddenStateWriter(
        out_dir,
        **settings.writer_kwargs(
            regen.manifest.fingerprint_hash,
            extra_fingerprint=part_fingerprint(num_shards, shard_index),
            producer=assigned_record([regen.ids[i] for i in selected]),
        ),
    )
    # SIGTERM: commit what the engine returned, close the engine, exit (dspark_data/shutdown.py).
    with GracefulStop("dump-hidden"), writer:
        done = writer.committed_ids | writer.error_ids
        todo = [i for i in selected if regen.ids[i] not in done]
        cached = not todo and writer.complete
        stats: dict[str, float] = {"samples": 0, "tokens": 0, "errors": 0, "capture_seconds": 0.0}
        if todo:
            console.print(
                f"dump-hidden: {len(todo)} of {len(selected)} samples to capture ({len(selected) - len(todo)} done), "
                f"layers {list(plan.stored_ids)}, backend {backend_name}, codec {capture.codec}"
                + (f", top-{capture.topk_logprobs} log-probs" if capture.topk_logprobs else "")
            )
            engine = open_backend(backend_name, model_path, plan, options)
            try:
                check_stop("dump-hidden", "before the first sample; nothing new was written")
                samples = _samples(regen, todo, recipe.seq_len, info.vocab_size)
                stats = _capture_into(engine, writer, plan, samples, len(todo), capture.batch_size, console)
            finally:
                engine.close()
        manifest = writer.close()

    summary = _summary(manifest, plan, backend_name, cached, time.monotonic() - started, stats)
    summary["out_dir"] = str(out_dir)
    publish_summary(out_dir, summary, schema=HiddenSummary)
    if cached:
        console.print(f"dump-hidden: {out_dir} is complete with the same settings; cached")
    return summary


def _samples(regen: Any, indices: list[int], seq_len: int, vocab_size: int | None = None) -> Iterator[Sample]:
    """Regen rows in order, truncated to seq_len (read lazily: the dataset may be large). A token id outside
    the target's vocab means data tokenized for another target: an error naming the sample, not a crash."""
    for i in indices:
        sid = regen.ids[i]
        ids_np, mask = capture_row(regen, i, seq_len)
        ids = torch.from_numpy(ids_np)
        if vocab_size is not None and ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < vocab_size:
            raise CaptureConfigError(
                f"regen sample {sid!r} (row {i}) has token ids in [{int(ids.min())}, {int(ids.max())}], outside "
                f"the target's vocab_size={vocab_size}: the regen data was made with another target"
            )
        yield Sample(sid, ids, torch.from_numpy(mask))


def _capture_into(
    engine: Any,
    writer: HiddenStateWriter,
    plan: LayerPlan,
    samples: Iterator[Sample],
    total: int,
    commit_every: int,
    console: Console,
) -> dict[str, float]:
    """Stream samples through the engine into the writer, committing every `commit_every` samples."""
    by_id: dict[str, Sample] = {}

    def feed() -> Iterator[tuple[str, list[int]]]:
        for sample in samples:
            if sample.input_ids.numel() == 0:
                writer.record_error(sample.id, "empty", "no tokens to capture")
                progress.update(advance=1)  # done too: the bar reaches its total
                continue
            by_id[sample.id] = sample
            yield sample.id, sample.input_ids.tolist()

    stats = {"samples": 0, "tokens": 0, "errors": 0, "capture_seconds": 0.0}
    since_commit = 0
    with Progress("capture", total, console=console) as progress:
        started = time.monotonic()
        for key, captured in engine.capture_iter(feed()):
            sample = by_id.pop(key)
            captured = type(captured)(captured.token_ids, captured.hidden.to(torch.bfloat16), captured.topk)
            rejection = check_capture(sample.input_ids, captured, plan)
            if rejection is None:
                writer.write(sample.id, sample.input_ids, sample.loss_mask, captured.hidden, captured.topk)
                stats["samples"] += 1
                stats["tokens"] += sample.input_ids.numel()
            else:
                writer.record_error(sample.id, rejection.reason, rejection.detail)
                stats["errors"] += 1
            since_commit += 1
            if since_commit >= commit_every or stop_requested():
                writer.commit()
                since_commit = 0
            check_stop("dump-hidden", f"{stats['samples']} samples captured this run, all committed")
            stats["capture_seconds"] = time.monotonic() - started
            progress.update(advance=1, info=f"{stats['tokens'] / max(stats['capture_seconds'], 1e-9):,.0f} tok/s")
    return stats


def _summary(
    manifest: Any, plan: LayerPlan, backend: str, cached: bool, seconds: float, stats: dict[str, float]
) -> dict[str, Any]:
    """Flat figures for `dspark demo`'s table, from the committed manifest (the truth) plus this run's rate."""
    totals = manifest.totals
    return {
        "stage": "hidden",
        "cached": cached,
        "samples": totals.samples,
        "tokens": totals.tokens,
        "errors": totals.errors,
        "error_counts": dict(manifest.error_counts),
        "layer_ids": list(plan.stored_ids),
        "hidden_size": plan.hidden_size,
        "codec": manifest.codec,
        "topk_logprobs": manifest.topk_logprobs or 0,
        "backend": backend,
        "raw_bytes": totals.raw_bytes,
        "stored_bytes": totals.stored_bytes,
        "bytes_per_token": round(totals.stored_bytes / totals.tokens, 1) if totals.tokens else 0.0,
        "compression_ratio": round(totals.raw_bytes / totals.stored_bytes, 3) if totals.stored_bytes else 0.0,
        "run_samples": int(stats["samples"]),
        "run_tokens": int(stats["tokens"]),
        "run_errors": int(stats["errors"]),
        "seconds": round(seconds, 2),  # the whole stage, engine start-up included
        "capture_seconds": round(stats["capture_seconds"], 2),  # from the first request to the last sample
        "tokens_per_s": round(stats["tokens"] / stats["capture_seconds"], 1) if stats["capture_seconds"] else 0.0,
    }
