"""The JSON Schema files in schemas/json agree with the pydantic models (regenerate: python -m schemas.export)."""

from __future__ import annotations

import pytest

from schemas.export import JSON_DIR, PUBLISHED, render


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_json_schema_file_matches_model(name: str) -> None:
    path = JSON_DIR / f"{name}.schema.json"
    assert path.is_file(), f"{path} missing: run python -m schemas.export"
    assert path.read_text() == render(PUBLISHED[name]), f"{path} is stale: run python -m schemas.export"


def test_every_model_is_versioned() -> None:
    for ref in PUBLISHED.values():
        from schemas.export import load_model

        assert "schema_version" in load_model(ref).model_fields, ref
