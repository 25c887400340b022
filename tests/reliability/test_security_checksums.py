"""Promise (issue #8, docs/reliability.md): a checksum mismatch is never silently accepted."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from cli.main import app
from dspark_data.store import StoreError, load_manifest, open_dataset, open_hidden, verify
from reliability.data import write_hidden


def _flip_payload(d: Path) -> str:
    entry = load_manifest(d).shards[0]
    idx = pa.ipc.open_file(pa.memory_map(str(d / entry.index_file))).read_all()
    off, length = idx["offset"][0].as_py(), idx["length"][0].as_py()
    data = bytearray((d / entry.file).read_bytes())
    data[off + length - 100] ^= 0x01  # inside the hidden-state payload
    (d / entry.file).write_bytes(bytes(data))
    return idx["id"][0].as_py()


def test_checksum_mismatch_is_refused_by_verify_and_trainer(tmp_path) -> None:
    from dspark_train.data import open_source
    from dspark_train.data.integrity import CorruptData

    d = write_hidden(tmp_path / "raw", 6, codec="raw")  # raw: nothing but the checksum can notice
    sid = _flip_payload(d)
    report = verify(d)
    assert not report.ok and any(sid in i.sample_ids for i in report.issues)
    assert CliRunner().invoke(app, ["verify", str(d)]).exit_code == 1
    with pytest.raises(CorruptData, match=sid):
        open_source(d)
    # an index whose checksum does not match the manifest is refused when a reader opens the dataset
    d2 = write_hidden(tmp_path / "idx", 6)
    entry = load_manifest(d2).shards[0]
    data = bytearray((d2 / entry.index_file).read_bytes())
    data[-20] ^= 0x01
    (d2 / entry.index_file).write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum"):
        open_dataset(d2)


@pytest.mark.xfail(strict=True, reason="known gap: the store's reader does not re-hash a sample when it reads it "
                   "(sha256 costs more than decoding); `dspark verify` and the trainer's start-up check do")
def test_reader_refuses_a_damaged_sample_on_read(tmp_path) -> None:
    d = write_hidden(tmp_path / "raw", 6, codec="raw")
    _flip_payload(d)
    with pytest.raises(StoreError):
        open_hidden(d)[0]
