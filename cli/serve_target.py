"""`dspark serve-target`: the recipe's target under vLLM with the capture connector, behind the stream gateway.

    dspark serve-target --recipe glm52-dspark --port 8200                    # trainers on this node (TP1 x DP4 + EP)
    DSPARK_STREAM_TOKEN=$(openssl rand -hex 32) dspark serve-target -r glm52-dspark --host 0.0.0.0

Trainers connect with `dspark train --stream --endpoint http://HOST:PORT` (docs/streaming.md).
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import RecipeOpt, SetOpt, fail, resolve_recipe
from schemas.loading import DEFAULT_RECIPE


def serve_target(
    recipe: RecipeOpt = DEFAULT_RECIPE,
    set_: SetOpt = None,
    host: Annotated[str, typer.Option(help="Gateway bind address; anything but loopback needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway port (the one trainers use).")] = 8200,
    token: Annotated[
        str | None, typer.Option(help="Shared token (prefer the DSPARK_STREAM_TOKEN environment variable).")
    ] = None,
    tp: Annotated[int | None, typer.Option("--tp", help="Tensor parallel size (default: the recipe's).")] = None,
    vllm_port: Annotated[int | None, typer.Option(help="Internal vLLM port on 127.0.0.1 (default: free).")] = None,
    max_inflight: Annotated[int, typer.Option(help="Captures the gateway runs at once (vLLM batches them).")] = 32,
    max_queue: Annotated[int, typer.Option(help="Requests allowed to wait for a slot before 429.")] = 512,
    vllm_arg: Annotated[
        list[str] | None,
        typer.Option(help="Extra vLLM flag, passed unchanged (repeatable), e.g. --vllm-arg=--max-num-seqs=64"),
    ] = None,
    fake_upstream: Annotated[bool, typer.Option(hidden=True, help="Tests: a stand-in for vLLM (no model).")] = False,
    fake_delay_s: Annotated[float, typer.Option(hidden=True, help="Tests: seconds per fake capture.")] = 0.0,
) -> None:
    """Serve the recipe's target for `dspark train --stream` (vLLM + hidden-state gateway)."""
    resolved = resolve_recipe(recipe, set_)
    from dspark_data.stream.auth import AuthConfigError, check_bind, resolve_token

    secret = resolve_token(token)
    try:
        check_bind(host, secret)
    except AuthConfigError as exc:
        fail(str(exc), code=2)
    from dspark_data.capture.layers import CaptureConfigError
    from dspark_data.stream.launch import ServeOptions
    from dspark_data.stream.launch import serve_target as run

    opts = ServeOptions(
        host=host,
        port=port,
        token=secret,
        vllm_port=vllm_port,
        tensor_parallel_size=tp,
        max_inflight=max_inflight,
        max_queue=max_queue,
        vllm_args=tuple(vllm_arg or ()),
        fake_upstream=fake_upstream,
        fake_delay_s=fake_delay_s,
    )
    try:
        code = run(resolved, opts)
    except (CaptureConfigError, FileNotFoundError, OSError) as exc:
        fail(str(exc))
    raise typer.Exit(code)
