"""Hidden-state datasets: writer/reader round trip, resume, per-sample corruption, size projection."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from dspark_data.store import (
    FingerprintMismatch,
    HiddenStateWriter,
    StoreError,
    inspect,
    open_hidden,
    project_size,
    verify,
)

LAYERS = [1, 3, 6]
H = 64


def _sample(i: int) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    t = 5 + (i * 7) % 23
    return (
        f"h{i:03d}",
        torch.randint(0, 500, (t,), generator=g),
        torch.rand(t, generator=g) > 0.3,
        torch.randn(t, len(LAYERS), H, generator=g).to(torch.bfloat16),
    )


def _writer(d: Path, codec: str = "zstd-split", **kw) -> HiddenStateWriter:
    kw.setdefault("shard_bytes", 20_000)
    return HiddenStateWriter(d, layer_ids=LAYERS, hidden_size=H, codec=codec, target="tiny:random", seq_len=64,
                             regen_fingerprint="abc", **kw)


@pytest.mark.parametrize("codec", ["raw", "zstd-split", "fp8"])
def test_round_trip(tmp_path: Path, codec: str) -> None:
    with _writer(tmp_path, codec) as w:
        for i in range(12):
            w.write(*_sample(i))
    ds = open_hidden(tmp_path)
    assert len(ds) == 12 and ds.layer_ids == LAYERS and ds.hidden_size == H and ds.codec == codec
    assert ds.manifest.fingerprint["regen_fingerprint"] == "abc" and len(ds.manifest.shards) > 1
    for i in (11, 0, 6):
        sid, ids, mask, hidden = _sample(i)
        s = ds[i]
        assert s.id == sid and torch.equal(s.input_ids, ids) and torch.equal(s.loss_mask, mask)
        assert s.input_ids.dtype == torch.int64 and s.loss_mask.dtype == torch.bool
        if codec == "fp8":
            assert ((s.hidden.float() - hidden.float()).norm() / hidden.float().norm()) < 0.05
        else:
            assert torch.equal(s.hidden, hidden)
    assert list(ds.lengths) == [len(_sample(i)[1]) for i in range(12)]
    info = inspect(tmp_path)
    assert info["layer_ids"] == LAYERS and info["codec"] == codec and info["tokens"] == sum(ds.lengths)


def test_concurrent_reads(tmp_path: Path) -> None:
    with _writer(tmp_path) as w:
        for i in range(8):
            w.write(*_sample(i))
    ds = open_hidden(tmp_path)
    bad: list[int] = []

    def work(k: int) -> None:
        for j in range(40):
            i = (j * 5 + k) % 8
            if not torch.equal(ds[i].hidden, _sample(i)[3]):
                bad.append(i)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


def test_resume_and_mismatch(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    for i in range(5):
        w.write(*_sample(i))
    w.commit()
    w.write(*_sample(5))
    w.abort()
    with _writer(tmp_path) as w:
        assert w.committed_ids == {f"h{i:03d}" for i in range(5)}
        for i in range(5, 7):
            w.write(*_sample(i))
    assert len(open_hidden(tmp_path, require_complete=True)) == 7
    with pytest.raises(FingerprintMismatch, match="codec: zstd-split -> fp8"):
        _writer(tmp_path, "fp8")


def test_shape_errors_name_the_sample(tmp_path: Path) -> None:
    with _writer(tmp_path) as w:
        sid, ids, mask, hidden = _sample(0)
        with pytest.raises(StoreError, match="h000"):
            w.write(sid, ids, mask, hidden[:, :2])
        with pytest.raises(StoreError, match="bfloat16"):
            w.write(sid, ids, mask, hidden.float())


def test_payload_corruption_names_sample(tmp_path: Path) -> None:
    with _writer(tmp_path, shard_bytes=1 << 20) as w:
        for i in range(4):
            w.write(*_sample(i))
    ds = open_hidden(tmp_path)
    batch, _ = ds.store.record(2)
    payload = batch.column("hidden")[0].as_py()
    shard = tmp_path / "shard-00000.arrow"
    data = bytearray(shard.read_bytes())
    data[data.index(payload) + len(payload) // 2] ^= 1
    shard.write_bytes(bytes(data))
    r = verify(tmp_path)
    assert not r.ok and r.issues[0].sample_ids == ["h002"] and r.issues[0].shard == 0


def test_project_size() -> None:
    p = project_size(6144, 6, 1_000_000, "zstd-split", samples=500, shard_bytes=1 << 30)
    assert p.raw_bytes == 1_000_000 * 6 * 6144 * 2
    assert 1.35 < p.ratio < 1.45 and p.shards == -(-p.bytes // (1 << 30)) and p.files == 2 * p.shards + 2
    assert project_size(6144, 6, 1_000_000, "fp8").bytes < p.bytes < project_size(6144, 6, 1_000_000, "raw").bytes
    with pytest.raises(ValueError, match="unknown"):
        project_size(8, 1, 10, "lz4")


def test_large_samples_use_exact_range_reads(tmp_path: Path) -> None:
    """Samples above 256 KiB are read with one pread of their byte range (first batch of a shard included)."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(300 + i, 2, 512, generator=g).to(torch.bfloat16) for i in range(5)]
    with HiddenStateWriter(tmp_path, layer_ids=[0, 4], hidden_size=512, codec="zstd-split", target="t", seq_len=512,
                           shard_bytes=1 << 20) as w:
        for i, x in enumerate(xs):
            w.write(f"b{i}", torch.arange(len(x)), torch.ones(len(x), dtype=torch.bool), x)
    ds = open_hidden(tmp_path)
    assert len(ds.manifest.shards) >= 2
    for i in (4, 0, 2, 3, 1):
        assert torch.equal(ds[i].hidden, xs[i])
