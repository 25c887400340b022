"""The JSON Schema files in schemas/json agree with the pydantic models (regenerate: python -m schemas.export)."""

from __future__ import annotations

import pytest

from schemas.export import ARROW_PUBLISHED, JSON_DIR, PUBLISHED, UNVERSIONED, render, render_arrow


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_json_schema_file_matches_model(name: str) -> None:
    path = JSON_DIR / f"{name}.schema.json"
    assert path.is_file(), f"{path} missing: run python -m schemas.export"
    assert path.read_text() == render(PUBLISHED[name]), f"{path} is stale: run python -m schemas.export"


@pytest.mark.parametrize("name", sorted(ARROW_PUBLISHED))
def test_arrow_schema_file_matches(name: str) -> None:
    path = JSON_DIR / f"{name}.arrow.txt"
    assert path.is_file(), f"{path} missing: run python -m schemas.export"
    assert path.read_text() == render_arrow(ARROW_PUBLISHED[name]), f"{path} is stale: run python -m schemas.export"


def test_every_model_is_versioned() -> None:
    from schemas.export import load_model

    assert set(UNVERSIONED) <= set(PUBLISHED)
    for name, ref in PUBLISHED.items():
        if name not in UNVERSIONED:
            assert "schema_version" in load_model(ref).model_fields, ref
