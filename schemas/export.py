"""Write the JSON Schema of every published model into `schemas/json/` (`python -m schemas.export`).

The JSON files are what non-Python consumers read; `tests/test_schemas.py` fails when a model changes
without the files being regenerated, so the two can never drift apart.
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
}


def load_model(ref: str) -> type:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def render(ref: str) -> str:
    """The JSON Schema text of one model, stable across runs."""
    return json.dumps(load_model(ref).model_json_schema(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    JSON_DIR.mkdir(exist_ok=True)
    for name, ref in PUBLISHED.items():
        (JSON_DIR / f"{name}.schema.json").write_text(render(ref))
        print(f"wrote {JSON_DIR / f'{name}.schema.json'}")


if __name__ == "__main__":
    main()
