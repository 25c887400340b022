"""Export: a training checkpoint -> a speculators-format directory vLLM serves. See docs/export.md.

`export_draft(checkpoint, out, fmt="dspark"|"dflash")` writes it; `load_export(dir)` reads it back as a
runnable draft (what `dspark eval --draft` scores).
"""

from dspark_train.export.checkpoint_reader import TrainedDraft, find_checkpoint, read_checkpoint
from dspark_train.export.exporter import export_draft, verifier_name_or_path
from dspark_train.export.load import LoadedDraft, draft_config_from_export, load_export
from dspark_train.export.speculators_config import build_config

__all__ = [
    "LoadedDraft",
    "TrainedDraft",
    "build_config",
    "draft_config_from_export",
    "export_draft",
    "find_checkpoint",
    "load_export",
    "read_checkpoint",
    "verifier_name_or_path",
]
