"""Promise (issue #8, docs/reliability.md): paths from manifests and pointer files cannot escape their
directory (`../x`, absolute paths, symbolic links pointing out)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from dspark_data.store import HiddenStateWriter, StoreError, open_dataset, open_hidden, verify

BAD_NAMES = ["../outside.arrow", "/etc/passwd", "sub/shard-00000.arrow", "..", "~root", "C:evil.arrow",
             "shard\\..\\x.arrow", "a\x00b"]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=[repr(b) for b in BAD_NAMES])
@pytest.mark.parametrize("field", ["file", "index_file", "errors_file"])
def test_manifest_names_cannot_leave_the_directory(small_dataset, tmp_path, bad, field) -> None:
    d = tmp_path / "ds"
    shutil.copytree(small_dataset, d)
    decoy = tmp_path / "outside.arrow"
    decoy.write_bytes(b"precious")
    m = json.loads((d / "manifest.json").read_text())
    if field == "errors_file":
        m["errors_file"] = bad
    else:
        m["shards"][0][field] = bad
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="plain names"):
        open_dataset(d)
    assert not verify(d).ok
    with pytest.raises(StoreError):
        HiddenStateWriter(d, layer_ids=[1, 3, 5, 6], hidden_size=128, codec="zstd-split", target="tiny:random",
                          seq_len=64, shard_bytes=1 << 16)
    assert decoy.read_bytes() == b"precious"


def _writer(d: Path) -> HiddenStateWriter:
    return HiddenStateWriter(d, layer_ids=[1, 3, 5, 6], hidden_size=128, codec="zstd-split", target="tiny:random",
                             seq_len=64, shard_bytes=1 << 16)


def test_symlinks_pointing_out_are_refused(small_dataset, tmp_path) -> None:
    # a committed shard replaced by a link to an identical copy outside: checksums match, still refused
    d = tmp_path / "shard-link"
    shutil.copytree(small_dataset, d)
    outside = tmp_path / "outside.arrow"
    shutil.copy(d / "shard-00000.arrow", outside)
    (d / "shard-00000.arrow").unlink()
    os.symlink(outside, d / "shard-00000.arrow")
    with pytest.raises(StoreError, match="outside the dataset directory"):
        open_hidden(d)[0]
    report = verify(d)
    assert not report.ok and any("outside the dataset directory" in i.message for i in report.issues)
    # an index file linked out
    d2 = tmp_path / "index-link"
    shutil.copytree(small_dataset, d2)
    shutil.copy(d2 / "shard-00001.index.arrow", tmp_path / "outside.index.arrow")
    (d2 / "shard-00001.index.arrow").unlink()
    os.symlink(tmp_path / "outside.index.arrow", d2 / "shard-00001.index.arrow")
    with pytest.raises(StoreError, match="outside the dataset directory"):
        open_dataset(d2)
    assert not verify(d2).ok
    # writer-owned files linked to a victim: a writer opening the directory must not truncate the victim
    for name in ("errors.jsonl", ".writer.lock"):
        d3 = tmp_path / f"victim-{name}"
        shutil.copytree(small_dataset, d3)
        victim = tmp_path / f"victim-of-{name}"
        victim.write_bytes(b"precious data\n" * 8)
        (d3 / name).unlink(missing_ok=True)
        os.symlink(victim, d3 / name)
        with pytest.raises(StoreError, match="symbolic link|symbolic links"):
            w = _writer(d3)
            w.record_error("x", "test", "")
            w.close()
        assert victim.read_bytes() == b"precious data\n" * 8, f"the writer wrote through {name}"


def test_checkpoint_pointer_cannot_leave_the_checkpoints(tmp_path) -> None:
    from dspark_train.checkpoint import Checkpointer, CheckpointMismatch

    elsewhere = tmp_path / "elsewhere" / "step-000009"
    elsewhere.mkdir(parents=True)
    (elsewhere / "state.json").write_text("{}")
    ckpts = tmp_path / "train" / "checkpoints"
    ckpts.mkdir(parents=True)
    for bad in ("../../elsewhere/step-000009", str(elsewhere), "step-000009/../../../elsewhere/step-000009"):
        (ckpts / "latest").write_text(bad + "\n")
        with pytest.raises(CheckpointMismatch, match="not a step-NNNNNN directory"):
            Checkpointer(tmp_path / "train").latest()
