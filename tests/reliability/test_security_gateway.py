"""Promise (issue #8, docs/reliability.md): the streaming gateway binds 127.0.0.1 by default and, given a
token, checks it on every route; torchrun re-launches carry the token in the environment, not argv."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from cli.main import app
from dspark_data.engine.server import free_port
from reliability import harness


def _listeners(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on `port`."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            addr, hexport = parts[1].rsplit(":", 1)
            if parts[3] == "0A" and int(hexport, 16) == port:
                out.add(addr)
    return out


def _serve(tmp_path: Path, target: str, port: int, env: dict[str, str], *extra: str):
    argv = ["serve-target", "--recipe", "tiny", "--set", f"target.model={target}", "--set", "seq_len=64",
            "--port", str(port), "--fake-upstream", *extra]
    return harness.start(argv, tmp_path / "serve.log", env=env)


def _wait(url: str, headers: dict[str, str], proc, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.is_alive(), harness.log_tail(log)
        try:
            if httpx.get(url + "/v1/info", headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve-target did not come up:\n" + harness.log_tail(log))


def test_stream_gateway_binds_loopback_by_default_and_checks_a_token(tmp_path, tiny_random_target) -> None:
    import inspect
    import signal

    from cli.serve_target import serve_target
    from dspark_data.stream.launch import ServeOptions

    assert inspect.signature(serve_target).parameters["host"].default == "127.0.0.1" == ServeOptions().host
    port = free_port()  # started with no --host: must listen on 127.0.0.1 only
    proc = _serve(tmp_path, tiny_random_target, port, {"DSPARK_STREAM_TOKEN": ""})
    try:
        _wait(f"http://127.0.0.1:{port}", {}, proc, tmp_path / "serve.log")
        assert _listeners(port) == {"0100007F"}, _listeners(port)  # 127.0.0.1 only, no wildcard
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.join(30)
    token = "k" * 40
    port = free_port()
    proc = _serve(tmp_path, tiny_random_target, port, {"DSPARK_STREAM_TOKEN": token})
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(url, {"Authorization": f"Bearer {token}"}, proc, tmp_path / "serve.log")
        for route in ("/health", "/v1/info", "/v1/stats"):  # a token, once set, is checked even on loopback
            assert httpx.get(url + route, timeout=5).status_code == 401
            assert httpx.get(url + route, headers={"Authorization": f"Bearer {token[:-1]}x"}).status_code == 401
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.join(30)
    runner = CliRunner()
    public = runner.invoke(app, ["serve-target", "--host", "0.0.0.0"], env={"DSPARK_STREAM_TOKEN": ""})
    assert public.exit_code == 2 and "DSPARK_STREAM_TOKEN" in public.output
    weak = runner.invoke(app, ["serve-target", "--host", "0.0.0.0", "--token", "short"])
    assert weak.exit_code == 2 and "at least 16" in public.output + weak.output


def test_stream_token_never_travels_in_argv() -> None:
    """`dspark train --nproc-per-node N --stream --token T` re-launches torchrun: T goes in the environment."""
    from dspark_train.entrypoint import torchrun_argv

    secret = "s3cret-token-value-0123456789"
    for given in (["--token", secret], [f"--token={secret}"]):
        argv = torchrun_argv(["--stream", "--endpoint", "http://h:1", *given, "--nproc-per-node", "2"], 2)
        assert not any(secret in a or a.startswith("--token") for a in argv), argv
        assert argv[argv.index("--endpoint") + 1] == "http://h:1"  # the rest is passed on unchanged
