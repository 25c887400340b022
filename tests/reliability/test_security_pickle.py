"""Promise (issue #8, docs/reliability.md): a pickle is never loaded where data is expected.

Pickle bombs (a `__reduce__` that creates a marker file) placed where a shard, an index, a checkpoint,
a draft vocab, target weights or a streamed record is expected: refused, and the marker never appears.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from dspark_data.store import StoreError, open_hidden, verify
from reliability.data import write_vocab_manifest


class _Bomb:
    """Unpickling this creates the marker file (a stand-in for arbitrary code execution)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bombs(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    """(marker, a raw pickle, a torch.save zip) that would create the marker if ever unpickled."""
    marker = tmp_path / "PWNED"
    raw = pickle.dumps(_Bomb(marker))
    zipped = tmp_path / "bomb.pt"
    torch.save({"weight": _Bomb(marker)}, zipped)
    return marker, raw, zipped.read_bytes()


def _replace_committed(directory: Path, name: str, data: bytes) -> None:
    """Swap a committed file for `data` AND fix its checksums in the manifest (the worst case: no mismatch)."""
    import hashlib

    (directory / name).write_bytes(data)
    m = json.loads((directory / "manifest.json").read_text())
    for e in m["shards"]:
        if e["file"] == name:
            e.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        if e["index_file"] == name:
            e.update(index_sha256=hashlib.sha256(data).hexdigest(), index_bytes=len(data))
    (directory / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("which", ["shard", "index"])
@pytest.mark.parametrize("kind", ["raw-pickle", "torch-save"])
def test_pickle_bomb_as_a_shard_or_index_is_refused(small_dataset, tmp_path, which, kind) -> None:
    marker, raw, zipped = _bombs(tmp_path)
    d = tmp_path / "ds"
    shutil.copytree(small_dataset, d)
    _replace_committed(d, "shard-00000.arrow" if which == "shard" else "shard-00000.index.arrow",
                       raw if kind == "raw-pickle" else zipped)
    with pytest.raises((StoreError, pa.ArrowException)):
        ds = open_hidden(d)
        ds[0]
    report = verify(d)
    assert not report.ok and any("shard 0" in str(i) or i.shard == 0 for i in report.issues)
    from dspark_train.data import open_source

    with pytest.raises((StoreError, pa.ArrowException, ValueError)):
        open_source(d)
    assert not marker.exists()


def test_pickle_bomb_as_checkpoint_vocab_or_record_is_refused(tmp_path, tiny_random_target) -> None:
    from safetensors import SafetensorError

    from dspark_data.stream.record import RecordError, decode_record
    from dspark_data.vocab import load_draft_vocab
    from dspark_train.checkpoint import Checkpointer
    from dspark_train.model.draft import DSparkDraft  # noqa: F401  (the checkpoint's model class exists)

    marker, raw, zipped = _bombs(tmp_path)
    for payload in (raw, zipped):
        step = tmp_path / "train" / "checkpoints" / "step-000002"
        step.mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", "optimizer.safetensors", "rng-rank00000.safetensors"):
            (step / name).write_bytes(payload)
        (step / "state.json").write_text(json.dumps({"world_size": 1, "step": 2}))
        (step / "optimizer.json").write_text(json.dumps({"param_groups": []}))
        (step.parent / "latest").write_text("step-000002\n")
        ckpt = Checkpointer(tmp_path / "train")
        model = torch.nn.Linear(2, 2)
        with pytest.raises((SafetensorError, ValueError, OSError)):
            ckpt.load(ckpt.latest(), model=model, optimizer=torch.optim.AdamW(model.parameters()))
        vocab = tmp_path / "vocab.safetensors"
        vocab.write_bytes(payload)
        write_vocab_manifest(vocab)  # past the checksum check: the loader itself must refuse the pickle
        with pytest.raises((SafetensorError, ValueError, OSError)):
            load_draft_vocab(vocab, target_vocab_size=2048, draft_vocab_size=1024)
        with pytest.raises(RecordError):
            decode_record(payload)
    assert not marker.exists()


def test_pickle_bomb_as_target_weights_is_refused(tmp_path, tiny_random_target) -> None:
    """A target directory whose only weights are a pickled `pytorch_model.bin`: the target-head loader reads
    safetensors only, and the transformers capture backend must not unpickle it either."""
    from dspark_data.capture import EngineOptions, plan_layers
    from dspark_data.capture.hf_backend import HfCapture
    from dspark_data.targets.weights import load_target_head

    marker, _, zipped = _bombs(tmp_path)
    target = tmp_path / "target"
    shutil.copytree(tiny_random_target, target)
    for p in target.glob("*.safetensors*"):
        p.unlink()
    (target / "pytorch_model.bin").write_bytes(zipped)
    with pytest.raises((FileNotFoundError, OSError, ValueError)):
        load_target_head(str(target))
    plan = plan_layers([1, 3, 5], True, 6, 128)
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do; what matters is the marker below
        HfCapture(str(target), plan, EngineOptions(dtype="float32", batch_size=1))
    assert not marker.exists(), "transformers unpickled pytorch_model.bin"
