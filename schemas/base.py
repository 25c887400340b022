"""Shared base for every schema: strict models and content fingerprints.

Fingerprints are the sha256 of canonical JSON so that a stage can tell, from a manifest
alone, whether its inputs and settings are the ones a previous run used.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A model that refuses unknown keys, so a typo in a recipe or manifest is an error naming the key."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def default_of(cls, name: str) -> Any:
        """The default of field `name`: code outside `schemas/` that needs one (a library call made without a
        recipe) takes it from here instead of restating it, so the two cannot disagree."""
        return cls.model_fields[name].get_default(call_default_factory=True)


def canonical_json(obj: Any) -> str:
    """Serialise to JSON with sorted keys and no whitespace: the input of every fingerprint."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(obj: Any, length: int = 16) -> str:
    """Short sha256 hex digest of the canonical JSON of `obj`."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:length]
