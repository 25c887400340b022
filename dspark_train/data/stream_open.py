"""Open a `StreamSource`: find the regen data, connect to the gateways, check them against the recipe.

What the servers must capture, and how the hybrid cache's parts are written, both come from the one
`CaptureSettings` of the recipe (`dspark_data.capture.settings`), as `dump-hidden` and `serve-target`
derive theirs: a cache part is then a dump's twin, and a `dump-hidden --backend vllm` output of the same
regen data has the stream's fingerprint (it can seed the cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dspark_data.capture.settings import STREAM_BACKEND, CaptureSettings
from dspark_data.stream.client import RetryPolicy, StreamClient
from dspark_train.data.stream_options import StreamOptions
from dspark_train.data.stream_source import StreamSource
from schemas.recipe import Recipe


def stream_settings(recipe: Recipe, num_hidden_layers: int, hidden_size: int) -> CaptureSettings:
    """The recipe's capture as `serve-target` runs it on a target of this shape (always vLLM)."""
    return CaptureSettings.for_target(recipe, num_hidden_layers, hidden_size, STREAM_BACKEND)


def stream_writer_kwargs(
    settings: CaptureSettings, regen_fingerprint: str, endpoints: Sequence[str]
) -> dict[str, Any]:
    """`HiddenStateWriter` arguments of a cache part: dump-hidden's, plus the endpoints (informational)."""
    return settings.writer_kwargs(regen_fingerprint, producer={"stream": {"endpoints": list(endpoints)}})


def open_stream_source(
    recipe: Recipe,
    opts: StreamOptions,
    *,
    data_dir: Path,
    num_hidden_layers: int,
    hidden_size: int,
    rank: int = 0,
    world_size: int = 1,
) -> StreamSource:
    """Connect to the gateways (waiting for one to answer), check them against the recipe, open the cache."""
    from dspark_data.store.parts import is_parts_parent, open_any

    if not (Path(data_dir) / "manifest.json").is_file() and not is_parts_parent(data_dir):
        raise FileNotFoundError(
            f"regen data {data_dir} not found: --stream sends the regen dataset's conversations to the server; "
            "run `dspark regen` first or pass --data DIR"
        )
    # One regen dataset, or a parent of `regen --num-shards N` parts read as one (merge-checked, id-hash order,
    # as the offline path reads them); the trainer's batches are keyed by id, so the order does not matter.
    regen = open_any(data_dir, require_complete=True)
    settings = stream_settings(recipe, num_hidden_layers, hidden_size)
    client = StreamClient(
        list(opts.endpoints),
        opts.token,
        expect=settings.stream_fields(),
        max_inflight=opts.max_inflight or max(1, recipe.train.num_workers),
        timeout_s=opts.timeout_s,
        retry=RetryPolicy(deadline_s=opts.deadline_s),
    )
    client.connect()
    return StreamSource(
        regen,
        client,
        settings=settings,
        opts=opts,
        rank=rank,
        world_size=world_size,
        writer_kwargs=stream_writer_kwargs(settings, regen.manifest.fingerprint_hash, opts.endpoints),
    )
