"""`dspark serve-target`: start `vllm serve` for the recipe's target with the capture settings, plus the gateway.

    dspark serve-target --recipe glm52-dspark --port 8200            # loopback only (same-node trainers)
    DSPARK_STREAM_TOKEN=... dspark serve-target -r glm52-dspark --host 0.0.0.0 --port 8200   # other nodes

One process supervises two servers on the same machine:
- vLLM's OpenAI server (started by `dspark_data.engine.server`) on 127.0.0.1 at an internal port, with an
  internal API key. Its flags are derived from `capture.vllm_backend.engine_kwargs`, the in-process
  capture engine's settings, so the served and the dumped captures cannot drift apart:
  `extract_hidden_states`, dspark's connector writing into a tmpfs spool, prefix caching off,
  `max_model_len` = seq_len + 2.
- the gateway (`gateway.py`) on `--host:--port`, the only address trainers see. It binds first (so a
  taken port fails in a second, not after the model loads), answers 503 until vLLM's /health is OK,
  and is marked unready again whenever vLLM stops answering.

If vLLM exits, serve-target exits with its status (let systemd/slurm/k8s restart it: trainers retry
through the restart). SIGTERM/SIGINT stop both; vLLM also gets SIGTERM if this process dies
(PR_SET_PDEATHSIG on Linux), and the engine reaper kills its processes if this one is SIGKILLed. The spool
directory is removed at exit.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from dspark_data.capture.backend import EngineOptions
from dspark_data.capture.layers import LayerPlan
from dspark_data.capture.settings import STREAM_BACKEND, CaptureSettings
from dspark_data.capture.spool import default_spool_root
from dspark_data.engine.server import StartedServer, die_with_parent, free_port, server_argv, spawn_server
from dspark_data.stream.auth import check_bind
from dspark_data.stream.gateway import Gateway, GatewayConfig
from schemas.recipe import Recipe
from schemas.stream import StreamInfo

SERVED_MODEL = "dspark-target"
SPOOL_PREFIX = "dspark-stream-spool-"


@dataclass(frozen=True)
class ServeOptions:
    """How to serve (not what: that is the recipe)."""

    host: str = "127.0.0.1"
    port: int = 8200
    token: str | None = None
    vllm_port: int | None = None  # internal vLLM port (default: a free one)
    tensor_parallel_size: int | None = None  # overrides recipe target.tensor_parallel_size
    max_inflight: int = 32  # captures the gateway runs at once (vLLM batches them)
    max_queue: int = 512  # requests allowed to wait for a slot before 429
    spool_root: Path | None = None  # default /dev/shm
    vllm_args: tuple[str, ...] = field(default_factory=tuple)  # passed through to vLLM unchanged
    fake_upstream: bool = False  # tests / dry runs: `fake_upstream.FakeUpstream` instead of vLLM
    fake_delay_s: float = 0.0


@dataclass(frozen=True)
class TargetSetup:
    """The recipe's target resolved and checked: what the server will load and capture."""

    model_path: str
    settings: CaptureSettings
    vocab_size: int
    options: EngineOptions

    @property
    def plan(self) -> LayerPlan:
        return self.settings.plan


def target_setup(recipe: Recipe, tensor_parallel_size: int | None = None) -> TargetSetup:
    """Resolve the target and plan the layers (errors name the bad recipe field before vLLM starts)."""
    from dspark_data.targets import load_target_info, resolve_target

    model_path = resolve_target(recipe.target.model)
    info = load_target_info(model_path, recipe.target.revision)
    settings = CaptureSettings.for_target(recipe, info.num_hidden_layers, info.hidden_size, STREAM_BACKEND)
    # the same engine settings as dump-hidden (revision, max_model_len, dtype); --tp may override the recipe's
    tp = {"tensor_parallel_size": tensor_parallel_size} if tensor_parallel_size else {}
    return TargetSetup(model_path, settings, info.vocab_size, settings.engine_options(**tp))


def stream_info(setup: TargetSetup, opts: ServeOptions, server_id: str) -> StreamInfo:
    """What the gateway announces on /v1/info."""
    return setup.settings.stream_info(server_id=server_id, max_tokens=setup.options.max_model_len,
                                      vocab_size=setup.vocab_size, max_inflight=opts.max_inflight,
                                      max_queue=opts.max_queue)


def vllm_command(setup: TargetSetup, spool_dir: Path, port: int, extra: tuple[str, ...] = ()) -> list[str]:
    """The full vLLM server command line (its flags come from the in-process capture engine's kwargs)."""
    from dspark_data.capture.vllm_backend import engine_kwargs

    kwargs = engine_kwargs(setup.model_path, setup.plan, setup.options, spool_dir)
    return server_argv(kwargs, port=port, extra=("--served-model-name", SERVED_MODEL, *extra))


def _log(message: str) -> None:
    print(f"[dspark serve-target] {message}", file=sys.stderr, flush=True)


async def _vllm_healthy(session: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with session.get(f"{base}/health", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


async def _supervise(recipe: Recipe, setup: TargetSetup, opts: ServeOptions, spool_dir: Path) -> int:
    vllm_port = opts.vllm_port or free_port()
    upstream = f"http://127.0.0.1:{vllm_port}"
    api_key = secrets.token_hex(16)
    info = stream_info(setup, opts, server_id=secrets.token_hex(6))
    gateway = Gateway(
        GatewayConfig(info, setup.plan, upstream, SERVED_MODEL, api_key, opts.token, spool_dir=spool_dir)
    )
    runner = web.AppRunner(gateway.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, opts.host, opts.port).start()  # bind first: a taken port fails now
    server, fake = await _start_upstream(setup, opts, spool_dir, vllm_port, api_key)
    proc = server.proc if server is not None else None
    _log(
        f"gateway http://{opts.host}:{opts.port} ({'token required' if opts.token else 'no token: loopback only'}), "
        f"server {info.server_id}; {'fake upstream' if fake else f'vLLM pid {proc.pid}'} on 127.0.0.1:{vllm_port}, "
        f"target {setup.model_path}, layers {info.layer_ids}, codec {info.codec}, spool {spool_dir}"
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started, code = time.monotonic(), 0
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {api_key}"}) as session:
            while not stop.is_set():
                rc = proc.poll() if proc is not None else None
                if rc is not None:
                    _log(f"vLLM exited with status {rc}; stopping (trainers retry until a restart answers)")
                    code = rc or 1
                    break
                healthy = await _vllm_healthy(session, upstream)
                if healthy and not gateway.ready:
                    _log(f"ready after {time.monotonic() - started:.0f}s")
                gateway.ready = healthy
                try:
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    pass
    finally:
        gateway.ready = False
        await runner.cleanup()
        if fake is not None:
            await fake.cleanup()
        if server is not None:
            await asyncio.to_thread(server.stop, 30.0)
    return code


async def _start_upstream(
    setup: TargetSetup, opts: ServeOptions, spool_dir: Path, port: int, api_key: str
) -> tuple[StartedServer | None, web.AppRunner | None]:
    """vLLM as a child process (the CPU defaults, a reaper, SIGTERM if this process dies), or (fake_upstream)
    the stand-in app on the same event loop."""
    if opts.fake_upstream:
        from dspark_data.stream.fake_upstream import FakeUpstream

        app = FakeUpstream(setup.plan, setup.vocab_size, spool_dir, delay_s=opts.fake_delay_s).app()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return None, runner
    ranks = setup.options.tensor_parallel_size * setup.options.data_parallel_size
    argv = vllm_command(setup, spool_dir, port, opts.vllm_args)
    return spawn_server(argv, ranks=ranks, env={"VLLM_API_KEY": api_key}, preexec_fn=die_with_parent), None


def _remove_stale_spools(root: Path) -> None:
    """Spool directories of serve-target processes that died without cleaning up (SIGKILL, OOM) fill tmpfs."""
    for path in root.glob(f"{SPOOL_PREFIX}*-*"):
        pid = path.name[len(SPOOL_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


def serve_target(recipe: Recipe, opts: ServeOptions) -> int:
    """Run until SIGTERM/SIGINT or until vLLM exits; returns the exit status."""
    check_bind(opts.host, opts.token)
    setup = target_setup(recipe, opts.tensor_parallel_size)
    if not opts.fake_upstream:
        from dspark_data.capture.vllm_limits import check_vllm_support
        from dspark_data.engine.cpu import vllm_platform
        from dspark_data.targets import load_target_info

        archs = load_target_info(setup.model_path, setup.options.revision).architectures
        check_vllm_support(archs, setup.plan, setup.options.tensor_parallel_size, vllm_platform())
    root = opts.spool_root or default_spool_root()
    _remove_stale_spools(root)
    spool_dir = Path(tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", dir=root))
    try:
        return asyncio.run(_supervise(recipe, setup, opts, spool_dir))
    finally:
        shutil.rmtree(spool_dir, ignore_errors=True)
