"""Shard store: round trip, resume, fingerprint refusal, errors file, corruption detection, path escapes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from dspark_data.store import FingerprintMismatch, ShardWriter, StoreError, inspect, open_dataset, verify

SCHEMA = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.int64())), ("messages", pa.string())])


def _row(i: int) -> dict:
    return {"id": f"s{i:04d}", "input_ids": list(range(i % 13 + 1)), "messages": json.dumps([{"i": i}])}


def _write(d: Path, n: int, **kw) -> None:
    kw.setdefault("shard_rows", 4)
    with ShardWriter(d, "regen", SCHEMA, {"seed": 1}, **kw) as w:
        for i in range(n):
            w.write(_row(i))


@pytest.mark.parametrize("batch_rows", [1, 3])
def test_round_trip(tmp_path: Path, batch_rows: int) -> None:
    _write(tmp_path, 10, batch_rows=batch_rows, ipc_compression="zstd" if batch_rows > 1 else None)
    ds = open_dataset(tmp_path, require_complete=True)
    assert len(ds) == 10 and ds.ids == [f"s{i:04d}" for i in range(10)]
    assert list(ds.lengths) == [i % 13 + 1 for i in range(10)]
    for i in (7, 0, 9, 3):
        assert ds.row(i) == _row(i)
    assert ds.row(ds.index_of("s0005")) == _row(5)
    assert ds.manifest.totals.samples == 10 and ds.manifest.totals.tokens == sum(ds.lengths)
    # rollover happens at batch boundaries: 4+4+2 rows, or 6+4 with batches of 3
    assert len(ds.manifest.shards) == (3 if batch_rows == 1 else 2)
    assert ds.manifest.shards[0].file == "shard-00000.arrow"
    with pytest.raises(KeyError, match="nope"):
        ds.index_of("nope")
    assert verify(tmp_path).ok
    s = inspect(tmp_path)
    assert s["samples"] == 10 and s["shards"] == len(ds.manifest.shards) and s["kind"] == "regen"


def test_resume_skips_committed_and_counts_errors(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path, "regen", SCHEMA, {"seed": 1}, shard_rows=4)
    for i in range(6):
        w.write(_row(i))
    w.record_error("bad-1", "too_long", "5000 > 4096")
    w.commit()  # shard 0 (4 rows) by rollover, shard 1 (2 rows) and the error by commit()
    w.write(_row(6))
    w.record_error("bad-2", "too_long", "")
    w.abort()  # simulated crash: row 6 and bad-2 were never committed
    w = ShardWriter(tmp_path, "regen", SCHEMA, {"seed": 1}, shard_rows=4)
    assert w.committed_ids == {f"s{i:04d}" for i in range(6)} and w.error_ids == {"bad-1"}
    assert not w.complete
    for i in range(6, 9):
        w.write(_row(i))
    with pytest.raises(StoreError, match="written twice"):
        w.write(_row(2))
    m = w.close()
    assert m.complete and m.totals.samples == 9 and m.error_counts == {"too_long": 1}
    assert [r["id"] for r in open_dataset(tmp_path)] == [f"s{i:04d}" for i in range(9)]
    assert verify(tmp_path).ok


def test_orphans_removed_on_resume(tmp_path: Path) -> None:
    _write(tmp_path, 5)
    (tmp_path / ".tmp-shard-00002.arrow").write_bytes(b"partial")
    (tmp_path / "shard-00009.arrow").write_bytes(b"renamed but never committed")
    (tmp_path / "errors.jsonl").write_bytes(b'{"id": "x", "reason": "r", "detail": ""}\n')  # uncommitted tail
    assert any("uncommitted" in w for w in verify(tmp_path).warnings)
    with ShardWriter(tmp_path, "regen", SCHEMA, {"seed": 1}) as w:
        assert len(w.committed_ids) == 5
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".writer"))
    assert ".tmp-shard-00002.arrow" not in names and "shard-00009.arrow" not in names
    assert (tmp_path / "errors.jsonl").stat().st_size == 0


def test_fingerprint_mismatch_names_fields(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, "regen", SCHEMA, {"seed": 1, "sampling": {"t": 0.7}}) as w:
        w.write(_row(0))
    with pytest.raises(FingerprintMismatch, match=r"sampling\.t: 0\.7 -> 1\.0.*--overwrite"):
        ShardWriter(tmp_path, "regen", SCHEMA, {"seed": 1, "sampling": {"t": 1.0}})
    with ShardWriter(tmp_path, "regen", SCHEMA, {"seed": 1, "sampling": {"t": 1.0}}, overwrite=True) as w:
        assert not w.committed_ids


def test_second_writer_refused(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path, "regen", SCHEMA, {"seed": 1})
    with pytest.raises(RuntimeError, match="another process"):
        ShardWriter(tmp_path, "regen", SCHEMA, {"seed": 1})
    w.close()


def test_bad_rows_name_the_sample(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, "regen", SCHEMA, {"seed": 1}) as w:
        with pytest.raises(StoreError, match="s0000"):
            w.write({"id": "s0000", "input_ids": [1]})
        with pytest.raises(StoreError, match="s0001"):
            w.write({"id": "s0001", "input_ids": ["x"], "messages": ""})


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_flipped_byte_names_shard_and_sample(tmp_path: Path) -> None:
    _write(tmp_path, 10)
    ds = open_dataset(tmp_path)
    batch, _ = ds.record(5)  # shard 1, its second sample
    shard = tmp_path / "shard-00001.arrow"
    body = batch.column("messages").buffers()[2].to_pybytes()
    _flip(shard, shard.read_bytes().index(body) + 2)
    r = verify(tmp_path)
    assert not r.ok and len(r.issues) == 1
    assert r.issues[0].shard == 1 and r.issues[0].sample_ids == ["s0005"] and r.issues[0].rows == [5]


def test_truncated_deleted_and_edited(tmp_path: Path) -> None:
    _write(tmp_path, 10)
    shard = tmp_path / "shard-00000.arrow"
    shard.write_bytes(shard.read_bytes()[:-100])
    os.remove(tmp_path / "shard-00002.arrow")
    r = verify(tmp_path)
    msgs = " | ".join(str(i) for i in r.issues)
    assert not r.ok and "truncated" in msgs and "shard-00002.arrow (shard 2): shard file is missing" in msgs
    with pytest.raises(StoreError, match="shard-00000.arrow"):
        ShardWriter(tmp_path, "regen", SCHEMA, {"seed": 1})  # resume refuses a damaged committed shard


def test_hand_edited_manifest(tmp_path: Path) -> None:
    _write(tmp_path, 6)
    path = tmp_path / "manifest.json"
    m = json.loads(path.read_text())
    m["shards"][0]["samples"] = 3
    path.write_text(json.dumps(m))
    assert not verify(tmp_path).ok
    m["shards"][0]["samples"] = 4
    m["fingerprint"]["seed"] = 2
    path.write_text(json.dumps(m))
    assert "fingerprint_hash" in str(verify(tmp_path).issues[0])


@pytest.mark.parametrize("name", ["../x.arrow", "/etc/passwd", "a/b.arrow", "..", ""])
def test_path_escape_refused(tmp_path: Path, name: str) -> None:
    _write(tmp_path, 2)
    path = tmp_path / "manifest.json"
    m = json.loads(path.read_text())
    m["shards"][0]["file"] = name
    path.write_text(json.dumps(m))
    with pytest.raises(StoreError, match="plain names"):
        open_dataset(tmp_path)
    r = verify(tmp_path)
    assert not r.ok and "plain names" in str(r.issues[0])


def test_unknown_manifest_key_refused(tmp_path: Path) -> None:
    _write(tmp_path, 1)
    path = tmp_path / "manifest.json"
    m = json.loads(path.read_text())
    m["surprise"] = 1
    path.write_text(json.dumps(m))
    with pytest.raises(StoreError, match="surprise"):
        open_dataset(tmp_path)
