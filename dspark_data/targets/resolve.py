"""Turn a target spec from a recipe into something vLLM and transformers can load.

`tiny:<flavour>` builds the embedded target (cached) and returns its directory; a local directory is
returned as given; anything else is taken as a hub id and returned unchanged (vLLM resolves it through
the HF cache). `target_config_path` finds a target's config.json, locally or in the offline HF cache,
with an error that names the id when it is not there.
"""

from __future__ import annotations

from pathlib import Path

TINY_PREFIX = "tiny:"


def resolve_target(spec: str) -> str:
    """`tiny:random` / `tiny:trained` / `tiny:mla` / `tiny:glm5` -> built local dir; dir or hub id unchanged."""
    spec = str(spec)
    if spec.startswith(TINY_PREFIX):
        from dspark_data.targets.tiny.build import build_tiny

        return str(build_tiny(spec[len(TINY_PREFIX) :]))
    path = Path(spec).expanduser()
    if path.is_dir():
        return spec
    if spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1:
        raise FileNotFoundError(f"target directory {spec!r} does not exist (nor is it a hub id 'org/name')")
    return spec


def target_config_path(path_or_id: str | Path, revision: str | None = None) -> Path:
    """config.json of a local target directory, a `tiny:` spec (built if needed) or a hub id in the HF cache.

    `revision` (recipe `target.revision`: a commit sha, branch or tag) picks the hub snapshot; a local
    directory or tiny spec has exactly one version, so it is ignored there.
    """
    spec = str(path_or_id)
    if spec.startswith(TINY_PREFIX):
        spec = resolve_target(spec)
    local = Path(spec).expanduser()
    if local.is_dir():
        cfg = local / "config.json"
        if not cfg.is_file():
            raise FileNotFoundError(f"target directory {spec!r} has no config.json")
        return cfg
    if local.is_file() and local.name == "config.json":
        return local
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        try_to_load_from_cache = None
    cached = try_to_load_from_cache(spec, "config.json", revision=revision) if try_to_load_from_cache else None
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    raise FileNotFoundError(
        f"target {spec!r}{f' at revision {revision!r}' if revision else ''} is neither a local directory nor in "
        "the Hugging Face cache (offline). Download it on a machine with hub access (`huggingface-cli download "
        f"{spec}{f' --revision {revision}' if revision else ''}`) and point HF_HOME "
        "at that cache, or give the local directory instead; for the embedded targets use 'tiny:trained'."
    )
