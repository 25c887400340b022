"""Resume after SIGKILL at random instants: every sample exactly once, no orphan or truncated shard."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from dspark_data.store import open_dataset, verify

N = 120
CHILD = r"""
import sys, time
import pyarrow as pa
from dspark_data.store import ShardWriter
schema = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.int64())), ("messages", pa.string())])
with ShardWriter(sys.argv[1], "regen", schema, {"n": N_ROWS}, shard_rows=5) as w:
    print("ready", flush=True)
    for i in range(N_ROWS):
        sid = f"s{i:04d}"
        if sid in w.committed_ids or sid in w.error_ids:
            continue
        if i % 17 == 0:
            w.record_error(sid, "skipped", "every 17th")
        else:
            w.write({"id": sid, "input_ids": list(range(i % 50 + 1)), "messages": "x" * (i % 300)})
        time.sleep(0.002)
print("done", flush=True)
""".replace("N_ROWS", str(N))


def test_sigkill_at_random_points_then_resume(tmp_path: Path) -> None:
    rng = random.Random(1234)
    out = tmp_path / "ds"
    kills = 0
    for _attempt in range(10):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        if _attempt < 6:
            time.sleep(rng.uniform(0.0, 0.08))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            continue
        proc.wait(timeout=120)
        assert proc.returncode == 0
        break
    assert kills >= 3
    report = verify(out)
    assert report.ok, report.issues
    assert report.complete and not report.warnings
    ds = open_dataset(out, require_complete=True)
    expected = [f"s{i:04d}" for i in range(N) if i % 17]
    assert sorted(ds.ids) == expected  # each sample exactly once
    assert ds.manifest.error_counts == {"skipped": len([i for i in range(N) if i % 17 == 0])}
    for i in range(0, len(ds), 7):
        k = int(ds.ids[i][1:])
        assert ds.row(i)["input_ids"] == list(range(k % 50 + 1))
    names = {p.name for p in out.iterdir()}
    assert not any(n.startswith(".tmp-") for n in names)
    listed = {e.file for e in ds.manifest.shards} | {e.index_file for e in ds.manifest.shards}
    assert {n for n in names if n.startswith("shard-")} == listed
