"""Write the JSON Schema of every published model into `schemas/json/` (`python -m schemas.export`).

The JSON files are what non-Python consumers read; `tests/test_schemas.py` fails when a model changes
without the files being regenerated, so the two can never drift apart. The Arrow layouts (pyarrow
schemas, which JSON Schema cannot express) are pinned the same way, as pyarrow's own text rendering.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

JSON_DIR = Path(__file__).resolve().parent / "json"

# name -> "module:Class"; each entry is a published, versioned on-disk format or config.
PUBLISHED: dict[str, str] = {
    "recipe": "schemas.recipe:Recipe",
    "store-manifest": "schemas.store:Manifest",
    "vocab-manifest": "schemas.store:VocabManifest",
    "regen-record": "schemas.regen:RegenRecord",
    "regen-summary": "schemas.regen:RegenSummary",
    "vocab-summary": "schemas.summary:VocabSummary",
    "hidden-summary": "schemas.summary:HiddenSummary",
    "train-summary": "schemas.summary:TrainSummary",
    "export-summary": "schemas.summary:ExportSummary",
    "eval-summary": "schemas.summary:EvalSummary",
    "live-eval-summary": "schemas.summary:LiveEvalSummary",
    "report-summary": "schemas.summary:ReportSummary",
    "checkpoint-state": "schemas.training:CheckpointState",
    "data-verified": "schemas.training:DataVerified",
    "draft-export": "schemas.draft:ExportProvenance",
}
# Published but unversioned, and why (tests/test_schemas.py checks every other model has schema_version).
UNVERSIONED: dict[str, str] = {
    "data-verified": "a cache keyed by dataset path: a record this code cannot read is dropped and re-checked",
}

# name -> "module:CONSTANT": the Arrow schemas of our files, pinned as `<name>.arrow.txt`.
ARROW_PUBLISHED: dict[str, str] = {
    "regen-record": "schemas.regen:REGEN_ARROW_SCHEMA",
    "hidden-record": "schemas.store:HIDDEN_ARROW_SCHEMA",
    "hidden-record-topk": "schemas.store:HIDDEN_TOPK_ARROW_SCHEMA",
    "shard-index": "schemas.store:INDEX_ARROW_SCHEMA",
}


def load_model(ref: str) -> type:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def render(ref: str) -> str:
    """The JSON Schema text of one model, stable across runs."""
    return json.dumps(load_model(ref).model_json_schema(), indent=2, sort_keys=True) + "\n"


def render_arrow(ref: str) -> str:
    """The text of one Arrow schema: a line per field (name, full type, nullability), then the metadata."""
    schema = load_model(ref)
    lines = [f"{f.name}: {f.type}{'' if f.nullable else ' not null'}" for f in schema]
    lines += [f"metadata {k.decode()}: {v.decode()}" for k, v in sorted((schema.metadata or {}).items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    JSON_DIR.mkdir(exist_ok=True)
    outputs = {f"{name}.schema.json": render(ref) for name, ref in PUBLISHED.items()}
    outputs |= {f"{name}.arrow.txt": render_arrow(ref) for name, ref in ARROW_PUBLISHED.items()}
    for file, text in outputs.items():
        (JSON_DIR / file).write_text(text)
        print(f"wrote {JSON_DIR / file}")


if __name__ == "__main__":
    main()
