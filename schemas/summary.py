"""`summary.json`, the completion marker and flat figures every stage writes last into its output directory.

Why one module: `dspark demo`, `dspark report`, the benchmarks and a rerun's cache check all read these
files, so their keys are a published format like the manifests. `dspark_data.stage.publish_summary`
validates a summary against its model here before writing it. The regen summary is `schemas.regen.RegenSummary`
(written from the model); the others are written from the stage's dict in the key order the stage built
it, so these models check the keys and types without changing the files' bytes. Figures keyed by a
prompt set, a mode or a position (`code_greedy_pos1`, `val_acc_pos3`) are the `extra` keys of the
flat summaries.

`schema_version` is not written into these files (they predate it): a file without it is version 1.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from schemas.base import StrictModel

SUMMARY_SCHEMA_VERSION = 1


def _version() -> Any:
    return Field(SUMMARY_SCHEMA_VERSION, description="Version of this format; absent from the files: 1.")


class StageSummary(StrictModel):
    """What every stage's summary says: its format version and whether the output was reused."""

    schema_version: int = _version()
    cached: bool = Field(description="True when the output was already complete for the fingerprint and reused.")


class FlatSummary(StageSummary):
    """A summary whose per-set / per-position figures are extra keys (numbers)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, protected_namespaces=())


class VocabSummary(StageSummary):
    """`<vocab dir>/summary.json` (`dspark vocab`)."""

    stage: Literal["vocab"] = "vocab"
    out_dir: str = Field(description="The vocab directory.")
    draft_vocab_size: int = Field(ge=0, description="Target ids kept (N).")
    target_vocab_size: int = Field(ge=0, description="The target vocab size V (`t2d` and `counts` length).")
    samples: int = Field(ge=0, description="Samples counted.")
    tokens: int = Field(ge=0, description="Loss-masked tokens counted.")
    coverage: float = Field(ge=0, le=1, description="Fraction of the counted tokens the kept ids cover.")
    seconds: float = Field(ge=0, description="Wall time of this invocation.")


class HiddenSummary(StageSummary):
    """`<hidden dir>/summary.json` (`dspark dump-hidden`): totals from the manifest plus this run's rate."""

    stage: Literal["hidden"] = "hidden"
    samples: int = Field(ge=0, description="Samples in the dataset.")
    tokens: int = Field(ge=0, description="Tokens in the dataset.")
    errors: int = Field(ge=0, description="Samples refused (errors.jsonl lines).")
    error_counts: dict[str, int] = Field(description="Errors counted by reason.")
    layer_ids: list[int] = Field(description="Target layer ids stored, in stored-axis order.")
    hidden_size: int = Field(ge=0, description="The target's hidden size.")
    codec: str = Field(description="Hidden-state codec.")
    topk_logprobs: int = Field(ge=0, description="K of the stored top-K log-probs (0: none).")
    backend: str = Field(description="Capture backend (vllm or hf).")
    raw_bytes: int = Field(ge=0, description="Uncompressed payload bytes.")
    stored_bytes: int = Field(ge=0, description="Bytes on disk.")
    bytes_per_token: float = Field(ge=0, description="stored_bytes / tokens.")
    compression_ratio: float = Field(ge=0, description="raw_bytes / stored_bytes.")
    run_samples: int = Field(ge=0, description="Samples captured by this invocation.")
    run_tokens: int = Field(ge=0, description="Tokens captured by this invocation.")
    run_errors: int = Field(ge=0, description="Samples refused by this invocation.")
    seconds: float = Field(ge=0, description="The whole stage, engine start-up included.")
    capture_seconds: float = Field(ge=0, description="From the first request to the last sample.")
    tokens_per_s: float = Field(ge=0, description="run_tokens / capture_seconds.")
    out_dir: str = Field(description="The dataset directory.")


class TrainSummary(FlatSummary):
    """`<train dir>/summary.json` (`dspark train`); extra keys: `val_*` and `untrained_val_*` figures."""

    steps: int = Field(ge=0, description="Optimizer steps done.")
    tokens: int = Field(ge=0, description="Training tokens seen.")
    fingerprint: str = Field(description="The plan fingerprint (resume.plan_fingerprint).")
    checkpoint: str = Field(description="The latest checkpoint directory ('' when none).")
    preempted: bool = Field(description="Stopped early on SIGTERM after saving.")
    init_from: dict[str, Any] | None = Field(None, description="The warm start (path, format, weights_sha256).")
    train_seconds: float | None = Field(None, ge=0, description="Wall time of the loop (absent when cached).")
    data_wait_frac: float | None = Field(None, ge=0, le=1, description="Fraction of the loop spent waiting for data.")


class ExportSummary(StageSummary):
    """`<export dir>/summary.json` (`dspark export`)."""

    format: Literal["dspark", "dflash"] = Field(description="Export format.")
    out: str = Field(description="The export directory.")
    step: int = Field(ge=0, description="The exported checkpoint's step.")
    num_speculative_tokens: int = Field(ge=0, description="K written into the speculators config.")
    num_tensors: int = Field(ge=0, description="Tensors in model.safetensors.")
    bytes: int = Field(ge=0, description="Tensor bytes.")
    verifier: str = Field(description="What vLLM loads as the verifier.")
    verifier_revision: str | None = Field(description="The verifier's revision.")
    fingerprint: str = Field(description="Fingerprint of the checkpoint and options (the cache key).")
    val_mean_accepted_length: float | None = Field(None, description="The run's last validation figure.")


class EvalSummary(FlatSummary):
    """`<eval dir>/summary.json` (`dspark eval --draft`); extra keys: `<set>_<mode>_avg_length`, `..._pos<i>`,
    `<set>_consistency_*`."""

    draft: str = Field(description="The export directory evaluated.")
    format: str = Field(description="The export's format.")
    backend: str = Field(description="Target backend (hf or vllm).")
    num_speculative_tokens: int = Field(ge=0, description="K.")
    max_new_tokens: int = Field(ge=0, description="Tokens generated per prompt.")
    seconds: float | None = Field(None, ge=0, description="Wall time of the measurement.")
    fingerprint: str | None = Field(None, description="Fingerprint of the export and options (the cache key).")


class LiveEvalSummary(FlatSummary):
    """`<eval dir>/vllm/summary.json` (`dspark eval --server`); extra keys as in `EvalSummary`, plus
    `<set>_<mode>_failed_requests`."""

    server: str = Field(description="The server URL.")
    model: str = Field(description="The served model name.")
    max_new_tokens: int = Field(ge=0, description="Tokens requested per prompt.")


class ReportSummary(FlatSummary):
    """`<report dir>/summary.json` (`dspark report`); extra keys: the sections' headline figures."""

    run_dir: str = Field(description="The run directory reported.")
    missing: list[str] = Field(description="Sections without inputs.")
    report: str = Field(description="The report.html path.")
