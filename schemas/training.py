"""On-disk files of a train directory besides its summary: checkpoint `state.json` and `data-verified.json`.

Why here: `state.json` is what a resumed run, `dspark export` and the eval read back from a checkpoint
written by another process (maybe another version), so its fields are a contract like a manifest's. The
trainer builds the dict; `dspark_train/checkpoint.py` validates it against `CheckpointState` before
writing it (the file holds the dict itself, sorted keys), so a field added in one place and not the other
fails at the first save instead of at someone's resume. Files written so far carry no `schema_version`:
they are version 1.

`data-verified.json` (`dspark_train/data/integrity.py`) remembers which datasets passed a full checksum
pass and in what state, so a resume does not re-hash them; it is a cache (an unreadable or torn record
only means a re-check), keyed by the dataset's absolute path.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, RootModel

from schemas.base import StrictModel

CHECKPOINT_SCHEMA_VERSION = 1
STATE_NAME = "state.json"
VERIFIED_NAME = "data-verified.json"


class CheckpointState(StrictModel):
    """`checkpoints/step-NNNNNN/state.json`: where a run stands, enough to resume it and to export its draft."""

    schema_version: int = Field(
        CHECKPOINT_SCHEMA_VERSION, description="Version of this format (absent: 1, every file written so far)."
    )
    step: int = Field(ge=0, description="Optimizer steps done.")
    world_size: int = Field(ge=1, description="Ranks that wrote the checkpoint; a resume must have as many.")
    final: bool = Field(False, description="True for the save at the end of training (not a periodic one).")
    total_steps: int | None = Field(None, ge=0, description="Steps the run plans in all.")
    tokens_seen: int | None = Field(None, ge=0, description="Loss tokens trained on so far (all ranks).")
    loader: dict[str, int] | None = Field(None, description="Data loader position: epoch and batches consumed.")
    schedule: dict[str, int] | None = Field(None, description="Learning-rate schedule position (step_index).")
    plan: dict[str, Any] | None = Field(None, description="The run's batch and schedule plan (dspark_train/resume.py).")
    plan_fingerprint: str | None = Field(None, description="schemas.fingerprint(plan): compared on resume.")
    draft_config: dict[str, Any] | None = Field(None, description="The draft architecture (DraftConfig.to_dict()).")
    data_fingerprint: str | None = Field(None, description="Fingerprint of the training data (store manifest).")
    vocab_fingerprint: str | None = Field(None, description="Fingerprint of the draft vocab ('full': the target's).")
    target_dir: str | None = Field(None, description="Target the run trained against (local directory or hub id).")
    untrained_val: dict[str, float | None] | None = Field(None, description="Validation of the untrained draft.")
    last_val: dict[str, float | None] | None = Field(None, description="The latest validation figures.")
    window: list[dict[str, Any]] | None = Field(
        None, description="Each rank's open log window (steps, running sums) at a preemption (preempt.py)."
    )
    init_from: dict[str, Any] | None = Field(None, description="Warm start source: path, format, weights sha256.")


class VerifiedDataset(StrictModel):
    """What a passed check vouches for: the dataset is unchanged while these agree."""

    manifest_sha256: str = Field(description="sha256 hex of manifest.json's bytes.")
    files: dict[str, list[int]] = Field(description="Each listed shard and index file: [size in bytes, mtime_ns].")
    skip: list[str] = Field(description="Sample ids the run was told to skip (--skip-samples), sorted.")


class DataVerified(RootModel[dict[str, VerifiedDataset]]):
    """`<train dir>/data-verified.json`: absolute dataset directory -> the state its full check passed in.

    Unversioned on purpose: it is a cache, and a record this code cannot read is dropped and re-checked.
    """
