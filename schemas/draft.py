"""On-disk provenance of an exported draft: `dspark_export.json` beside `config.json` and the weights.

Why here: the export directory is read by people and by `dspark eval` (the run's own validation figures,
compared with the measured acceptance), possibly long after the train directory is gone, so what the
provenance holds is a contract. `dspark_train/export/exporter.py` validates the dict against
`ExportProvenance` and writes the dict itself. Files written so far carry no `schema_version`: they are
version 1.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from schemas.base import StrictModel

EXPORT_SCHEMA_VERSION = 1
PROVENANCE_NAME = "dspark_export.json"


class ExportProvenance(StrictModel):
    """`<export dir>/dspark_export.json`: which checkpoint the draft came from and what it was trained on."""

    schema_version: int = Field(
        EXPORT_SCHEMA_VERSION, description="Version of this format (absent: 1, every file written so far)."
    )
    format: str = Field(description="Export format (the config.json layout vLLM reads).")
    checkpoint: str = Field(description="Absolute path of the checkpoint directory exported.")
    step: int = Field(ge=0, description="Optimizer step of that checkpoint.")
    plan_fingerprint: str | None = Field(description="The run's plan fingerprint (state.json).")
    data_fingerprint: str | None = Field(description="Fingerprint of the training data (state.json).")
    vocab_fingerprint: str | None = Field(description="Fingerprint of the draft vocab (state.json).")
    target_dir: str | None = Field(description="Target the draft was trained against.")
    draft_config: dict[str, Any] = Field(description="The full draft architecture (DraftConfig.to_dict()).")
    validation: dict[str, float | None] = Field(description="The run's last validation figures ({}: none).")
