"""The published, versioned contracts of dspark: every on-disk format and config.

Each module holds pydantic models (the single source of truth); `python -m schemas.export`
writes their JSON Schema into `schemas/json/`, and a test checks the two agree.
"""

from schemas.base import StrictModel, canonical_json, fingerprint

__all__ = ["StrictModel", "canonical_json", "fingerprint"]
