"""What a regen dataset's content depends on, as one dict (the store compares it on resume and reuse).

Included: the run seed, seq_len, the target (spec, revision, dtype and a hash of its files), the
prompts section, the source's content identity, the fully resolved sampling, the group size (it
fixes the shard layout) and this machine's part. Excluded on purpose: the backend, endpoints,
concurrency, timeouts and retries — the two backends produce the same records, so a dataset started
with one may be finished with the other.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from schemas.recipe import Recipe
from schemas.regen import REGEN_SCHEMA_VERSION, SamplingRecord

_SMALL = 1 << 20  # files below 1 MiB are hashed by content; weights by name and size


def target_identity(target_path: str, revision: str | None) -> dict[str, Any]:
    """A cheap identity of the target: a content hash of its small files and the sizes of its weights."""
    path = Path(target_path)
    if not path.is_dir():
        return {"hub": target_path, "revision": revision}
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        size = f.stat().st_size
        h.update(f"{f.name}\x1f{size}\x1f".encode())
        if size < _SMALL:
            h.update(f.read_bytes())
    return {"dir_hash": h.hexdigest()[:16]}


def regen_fingerprint(
    recipe: Recipe,
    *,
    target_path: str,
    source_identity: dict[str, Any],
    sampling: SamplingRecord,
    num_shards: int,
    shard_index: int,
) -> dict[str, Any]:
    """The fingerprint dict stored in the manifest (see the module docstring)."""
    return {
        "stage": "regen",
        "record_schema_version": REGEN_SCHEMA_VERSION,
        "seed": recipe.seed,
        "seq_len": recipe.seq_len,
        "target": {
            "model": recipe.target.model,
            "revision": recipe.target.revision,
            "dtype": recipe.target.dtype,
            "files": target_identity(target_path, recipe.target.revision),
        },
        "prompts": recipe.prompts.model_dump(mode="json"),
        "source": source_identity,
        "sampling": sampling.model_dump(mode="json"),
        "shard_samples": recipe.regen.shard_samples,
        "num_shards": num_shards,
        "shard_index": shard_index,
    }
