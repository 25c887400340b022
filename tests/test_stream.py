"""Streaming without vLLM: wire format, bind/token rule, schedule, cache, and real trainer runs against
`dspark serve-target --fake-upstream` (deterministic states, no model), so every property of the
streaming path is checked in well under three minutes. The same path with a real vLLM server is in
test_stream_vllm.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from aiohttp import web
from test_stream_support import SMALL, Server, make_regen, offline_matches, run, same_weights, stream_stats, train_argv
from typer.testing import CliRunner

from cli.main import app
from dspark_data.engine.server import free_port, kwargs_to_flags
from dspark_data.store import HiddenStateWriter, open_hidden
from dspark_data.stream.auth import AuthConfigError, authorized, check_bind, is_loopback
from dspark_data.stream.launch import ServeOptions
from dspark_data.stream.record import RecordError, check_matches, decode_record, encode_sample
from dspark_data.stream.replay_cache import open_cache
from dspark_train.data.sampler import epoch_batches
from dspark_train.data.split import split_indices
from dspark_train.data.stream_owners import schedule_owners

N = 40  # conversations: 36 train + 4 val at val_fraction 0.1


# ---------------------------------------------------------------- units


def test_bind_and_token_rule() -> None:
    assert ServeOptions().host == "127.0.0.1"  # the default bind is loopback
    for host in ("127.0.0.1", "localhost", "::1"):
        assert is_loopback(host)
        check_bind(host, None)  # loopback needs no token
    for host in ("0.0.0.0", "::", "10.1.2.3"):
        assert not is_loopback(host)
        with pytest.raises(AuthConfigError, match="DSPARK_STREAM_TOKEN"):
            check_bind(host, None)
        check_bind(host, "x" * 32)
    with pytest.raises(AuthConfigError, match="at least 16"):
        check_bind("0.0.0.0", "short")
    token = "s3cret-" + "x" * 20
    assert authorized(f"Bearer {token}", token)
    assert not authorized(None, token) and not authorized(token, token) and not authorized("Bearer nope", token)
    assert authorized(None, None)


def test_cli_refuses_public_bind_without_token(monkeypatch) -> None:
    monkeypatch.delenv("DSPARK_STREAM_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["serve-target", "--host", "0.0.0.0"], terminal_width=200)
    assert result.exit_code == 2 and "DSPARK_STREAM_TOKEN" in result.output


def test_vllm_flags_from_engine_kwargs() -> None:
    flags = kwargs_to_flags({"model": "/m", "enable_prefix_caching": False, "enforce_eager": True,
                             "max_model_len": 66, "speculative_config": {"method": "extract_hidden_states"}})
    assert flags == ["--model", "/m", "--no-enable-prefix-caching", "--enforce-eager", "--max-model-len", "66",
                     "--speculative-config", '{"method":"extract_hidden_states"}']


def test_record_is_the_store_row(tmp_path) -> None:
    """A streamed record decodes like the store, and appended unchanged it reads back like writer.write."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(30, 4, 128, generator=g).to(torch.bfloat16)
    ids, mask = np.arange(30, dtype=np.int64) + 5, np.arange(30) > 9
    data = encode_sample("s-1", ids, mask, hidden, codec="zstd-split", layer_ids=[1, 3, 5, 6])
    rec = decode_record(data)
    check_matches(rec, "s-1", ids, mask)
    with pytest.raises(RecordError, match="differ"):
        check_matches(rec, "s-1", ids + 1, mask)
    assert torch.equal(rec.decode().hidden, hidden) and rec.raw_bytes == hidden.numel() * 2
    kw = dict(layer_ids=[1, 3, 5, 6], hidden_size=128, codec="zstd-split", target="t", seq_len=64)
    with HiddenStateWriter(tmp_path / "a", **kw) as w:
        w.store.write_batch(rec.batch, raw_bytes=[rec.raw_bytes])
    with HiddenStateWriter(tmp_path / "b", **kw) as w:
        w.write("s-1", torch.from_numpy(ids), torch.from_numpy(mask), hidden)
    a, b = open_hidden(tmp_path / "a"), open_hidden(tmp_path / "b")
    assert a.manifest.totals == b.manifest.totals
    assert (tmp_path / "a" / "shard-00000.arrow").read_bytes() == (tmp_path / "b" / "shard-00000.arrow").read_bytes()
    with pytest.raises(RecordError):
        decode_record(b"not arrow")


def test_schedule_owners_follow_the_sampler() -> None:
    ids = [f"c-{i:03d}" for i in range(50)]
    lengths = [(7 * i) % 23 + 10 for i in range(50)]
    owners = schedule_owners(ids, lengths, seed=3, batch_size=2, world_size=2, epochs=2, val_fraction=0.1)
    train, _ = split_indices(ids, 0.1)
    first: dict[int, int] = {}
    for epoch in range(2):
        for rank in range(2):
            for batch in epoch_batches(train, ids, lengths, seed=3, epoch=epoch, batch_size=2, world_size=2,
                                       rank=rank):
                for i in batch:
                    first.setdefault(i, (epoch, rank))
                    if first[i][0] == epoch:  # within one epoch a sample has one rank
                        assert first[i][1] == rank
    for i, (_, rank) in first.items():
        assert owners[i] == rank


# ---------------------------------------------------------------- against a fake-upstream server


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_random_target):
    root = tmp_path_factory.mktemp("stream")
    regen = make_regen(root / "regen", N)
    server = Server(fake=True, sets=SMALL, log=root / "server.log", extra=["--fake-delay-s", "0.02"])
    server.start().wait_ready(120)
    yield {"root": root, "regen": regen, "server": server}
    server.stop()


@pytest.fixture(scope="module")
def streamed(env) -> dict:
    """The reference run: 2 ranks (gloo) streaming with a cache; what the server served for it."""
    root, server = env["root"], env["server"]
    before = server.stats()["served_ids"]
    argv = train_argv(env["regen"], root / "streamed", [server.url], nproc=2, sets=SMALL, cache=root / "cache",
                      cli=True)
    proc = run(argv)  # `dspark train --stream --nproc-per-node 2`, as the runbook says
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = server.stats()["served_ids"]
    return {"out": root / "streamed", "served": {k: v - before.get(k, 0) for k, v in after.items()}}


def test_two_ranks_stream_once_and_cache_reproduces(env, streamed) -> None:
    """2-rank gloo run: each sample streamed exactly once; an offline run over the cache is bit-identical."""
    root = env["root"]
    served = {k: v for k, v in streamed["served"].items() if v}
    assert sorted(served) == [f"conv-{i:04d}" for i in range(N)] and set(served.values()) == {1}
    stats = stream_stats(root / "streamed")
    assert [s["rank"] for s in stats] == [0, 1] and sum(s["streamed"] for s in stats) == N
    assert all(s["cache_hits"] > 0 and s["self_streamed_peer"] == 0 for s in stats)
    summary = json.loads((root / "streamed" / "summary.json").read_text())
    assert summary["steps"] > 0 and 0.0 <= summary["data_wait_frac"] < 1.0
    cache = open_cache(root / "cache")
    assert len(cache) == N and cache.duplicates == 0 and cache.manifest.complete
    offline_matches(root / "streamed", root / "cache", nproc=2, sets=SMALL)


def test_server_killed_and_restarted_mid_epoch(env, streamed, tmp_path) -> None:
    """SIGKILL the server while a 2-rank run streams, restart it: the run completes, nothing skipped or doubled."""
    server: Server = env["server"]
    slow = Server(fake=True, sets=SMALL, log=tmp_path / "slow.log", extra=["--fake-delay-s", "0.3"])
    slow.start().wait_ready(120)
    argv = train_argv(env["regen"], tmp_path / "out", [slow.url], nproc=2, sets=SMALL, cache=tmp_path / "cache")
    trainer = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while slow.stats()["served"] < 8:
            assert trainer.poll() is None and time.monotonic() < deadline, "trainer ended before the kill"
            time.sleep(0.2)
        slow.kill()  # mid-epoch: 8 of 40 samples served, requests in flight
        time.sleep(3)
        slow.start().wait_ready(120)
        _, err = trainer.communicate(timeout=240)
    finally:
        if trainer.poll() is None:
            trainer.kill()
        slow.stop()
    assert trainer.returncode == 0, err[-3000:]
    stats = stream_stats(tmp_path / "out")
    assert sum(s["retries"] for s in stats) > 0 and len({sid for s in stats for sid in s["servers"]}) == 2
    cache = open_cache(tmp_path / "cache")
    assert len(cache) == N and cache.duplicates == 0
    # The fake states are deterministic: the interrupted run trained exactly like the uninterrupted one.
    assert same_weights(tmp_path / "out", streamed["out"])
    assert server.proc is not None and server.proc.poll() is None


def test_trainer_resume_keeps_the_cache(env, tmp_path) -> None:
    """A stopped streamed run resumes (--resume) from its checkpoint and ends like an uninterrupted one."""
    sets = [*SMALL, "train.save_every=5"]
    url = [env["server"].url]
    full = run(train_argv(env["regen"], tmp_path / "full", url, nproc=1, sets=sets, cache=tmp_path / "c1"))
    assert full.returncode == 0, full.stderr[-3000:]
    cut = run(train_argv(env["regen"], tmp_path / "cut", url, nproc=1, sets=sets, cache=tmp_path / "c2",
                         extra=["--stop-after", "12"]))
    assert cut.returncode == 0, cut.stderr[-3000:]
    resumed = run(train_argv(env["regen"], tmp_path / "cut", url, nproc=1, sets=sets, cache=tmp_path / "c2",
                             extra=["--resume"]))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert same_weights(tmp_path / "full", tmp_path / "cut")
    assert stream_stats(tmp_path / "cut")[0]["streamed"] < N  # the resumed run replayed the cache's samples


def test_token_checked_on_every_route(tmp_path) -> None:
    token = "t" * 32
    secured = Server(fake=True, sets=SMALL, log=tmp_path / "tok.log",
                     extra=["--host", "0.0.0.0"], env={"DSPARK_STREAM_TOKEN": token})
    secured.start().wait_ready(120, headers={"Authorization": f"Bearer {token}"})
    try:
        for route in ("/health", "/v1/info", "/v1/stats"):
            assert httpx.get(secured.url + route, timeout=10).status_code == 401
            assert httpx.get(secured.url + route, headers={"Authorization": "Bearer " + "x" * 32}).status_code == 401
        body = {"id": "a", "input_ids": [20, 21, 22], "loss_mask": [False, True, True]}
        assert httpx.post(secured.url + "/v1/hidden", json=body, timeout=10).status_code == 401
        ok = httpx.post(secured.url + "/v1/hidden", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert ok.status_code == 200 and decode_record(ok.content).sample_id == "a"
        # a trainer without the token (or with another) is told what to set
        from dspark_data.stream.client import StreamClient, StreamError

        for wrong in (None, "w" * 32):
            with pytest.raises(StreamError, match="DSPARK_STREAM_TOKEN"):
                StreamClient([secured.url], wrong).connect()
        assert StreamClient([secured.url], token).connect().server_id
    finally:
        secured.stop()


def test_bad_requests_are_final(env) -> None:
    url = env["server"].url + "/v1/hidden"
    too_long = httpx.post(url, json={"id": "x", "input_ids": [20] * 65, "loss_mask": [True] * 65}, timeout=10)
    assert too_long.status_code == 400 and too_long.json()["error"] == "too_long"
    bad_id = httpx.post(url, json={"id": "x", "input_ids": [5000], "loss_mask": [True]}, timeout=10)
    assert bad_id.status_code == 400 and bad_id.json()["error"] == "bad_token_id"
    mismatch = httpx.post(url, json={"id": "x", "input_ids": [20, 21], "loss_mask": [True]}, timeout=10)
    assert mismatch.status_code == 400 and not mismatch.json()["retry"]



# ---------------------------------------------------------------- in-process: refusals and rejections


class _InProcess:
    """Gateway + fake upstream on an event loop in a thread (fast, and lets a test poison the states)."""

    def __init__(self, tmp: Path, token: str | None = None) -> None:
        from dspark_data.capture.layers import plan_layers
        from dspark_data.stream.fake_upstream import FakeUpstream
        from dspark_data.stream.gateway import Gateway, GatewayConfig
        from schemas.stream import StreamInfo

        plan = plan_layers([1, 3, 5], True, 6, 128)
        info = StreamInfo(server_id="inproc", recipe="tiny", target="tiny:random", seq_len=64, max_tokens=64,
                          vocab_size=2048, layer_ids=list(plan.stored_ids), hidden_size=128, codec="zstd-split",
                          zstd_level=1, max_inflight=4, max_queue=8)
        spool = tmp / "spool"
        spool.mkdir()
        up_port, self.port = free_port(), free_port()
        self.upstream = FakeUpstream(plan, 2048, spool)
        self.gateway = Gateway(GatewayConfig(info, plan, f"http://127.0.0.1:{up_port}", token=token, spool_dir=spool))
        self.gateway.ready = True
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def main() -> None:
            for application, port in ((self.upstream.app(), up_port), (self.gateway.app(), self.port)):
                runner = web.AppRunner(application, access_log=None)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", port).start()
            started.set()

        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(main(), self.loop)
        assert started.wait(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_rejected_capture_is_final_recorded_and_left_out(tmp_path, monkeypatch, tiny_random_target) -> None:
    """A NaN capture: 422 (no retry), the trainer stops naming the sample, the cache records it, a rerun skips it."""
    import dspark_data.stream.fake_upstream as fake
    from dspark_data.stream.client import SampleRejected, ServerMismatch, StreamClient, StreamError
    from dspark_train.data.stream_open import open_stream_source
    from dspark_train.data.stream_options import StreamOptions
    from schemas.loading import load_recipe

    original = fake.fake_hidden

    def poisoned(ids, *args):
        out = original(ids, *args)
        if int(ids[0]) == 17:  # the poisoned conversation starts with token 17
            out[0, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(fake, "fake_hidden", poisoned)
    server = _InProcess(tmp_path)
    try:
        client = StreamClient([server.url], None)
        client.connect()
        with pytest.raises(SampleRejected, match="nonfinite"):
            client.fetch("p", np.array([17, 20, 21]), np.array([False, True, True]))
        assert client.stats.retries == 0
        with pytest.raises(ServerMismatch, match="codec: expected 'fp8'"):
            StreamClient([server.url], None, expect={**client.info.capture_fields(), "codec": "fp8"}).connect()

        poison = {"id": "poison", "input_ids": [17, 20, 21, 22], "loss_mask": [False, True, True, True]}
        regen = make_regen(tmp_path / "regen", 6, extra=[poison])
        recipe = load_recipe("tiny", SMALL)
        opts = StreamOptions((server.url,), cache_dir=tmp_path / "cache")
        source = open_stream_source(recipe, opts, data_dir=regen, num_hidden_layers=6, hidden_size=128)
        assert len(source) == 7
        with pytest.raises(StreamError, match="poison.*nonfinite"):
            source.get(source.ids.index("poison"))
        assert source.get(0).hidden.shape[1:] == (4, 128)
        source.close()
        again = open_stream_source(recipe, opts, data_dir=regen, num_hidden_layers=6, hidden_size=128)
        assert len(again) == 6 and "poison" not in again.ids  # left out, as dump-hidden leaves it out
        assert again.get(0).id == source.ids[0] and again.stats.cache_hits == 1
        again.close()
    finally:
        server.close()
