"""`train.report_to`: W&B (offline, no network) and TensorBoard receive the same records as metrics.jsonl; a
tracker whose package is missing is a warning naming the extra, and the run trains on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_train import SMALL, _write_hidden

from dspark_train.entrypoint import run
from dspark_train.trainer import TrainOptions
from schemas.loading import load_recipe


@pytest.fixture(scope="module")
def hidden(tmp_path_factory) -> Path:
    return _write_hidden(tmp_path_factory.mktemp("trackers") / "hidden", 24, layer_ids=[1, 3, 5, 6], hidden_size=128)


def _recipe(target: str, *extra: str):
    return load_recipe("tiny", [f"target.model={target}", *SMALL, "vocab.draft_vocab_size=2048", *extra])


def wandb_history(path: Path) -> dict[int, dict[str, float]]:
    """The history rows of an offline `.wandb` file: {step: {key: value}} (W&B's record log: a 7-byte file
    header, then LevelDB-style chunks of 32 KiB blocks, each chunk a 7-byte header + a protobuf Record)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B", f"{path} is not a W&B record log"
    pos, block, pending, rows = 7, 32768, b"", {}
    while pos + 7 <= len(raw):
        left = block - pos % block
        length, kind = int.from_bytes(raw[pos + 4 : pos + 6], "little"), raw[pos + 6]
        if left < 7 or (length == 0 and kind == 0):  # block tail padding
            pos += left
            continue
        pending += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                row = rows.setdefault(int(record.history.step.num), {})
                for item in record.history.item:
                    key = "/".join(item.nested_key) or item.key
                    if not key.startswith("_"):
                        row[key] = json.loads(item.value_json)
    return rows


def tensorboard_scalars(directory: Path) -> dict[int, dict[str, float]]:
    """{step: {tag: value}} from the event files under `directory`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    rows: dict[int, dict[str, float]] = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            rows.setdefault(int(event.step), {})[tag] = float(event.value)
    return rows


def test_trackers_log_the_metrics_jsonl_records(tiny_random_target, hidden, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "train"
    run(_recipe(tiny_random_target, 'train.report_to=["wandb","tensorboard"]'),
        TrainOptions(out_dir=out, data_dir=hidden, max_steps=6, progress=False))
    expected: dict[int, dict[str, float]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        kind, step = record.pop("kind"), record.pop("step")
        expected.setdefault(step, {}).update({f"{kind}/{k}": v for k, v in record.items() if v is not None})
    files = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    got = wandb_history(files[0])
    assert sorted(got) == sorted(expected) and len(expected) >= 3  # steps 0 (val), 2, 4, 6
    assert any(k.startswith("val/") for k in expected[0]) and "train/loss" in expected[2]
    for step, row in expected.items():
        assert got[step].keys() == row.keys(), f"step {step}: W&B keys {sorted(got[step])} != {sorted(row)}"
        assert got[step] == pytest.approx(row, rel=0, abs=0), f"step {step}: values differ"
    board = tensorboard_scalars(out / "tensorboard")  # float32 scalars: equal to 1e-6 relative
    assert sorted(board) == sorted(expected)
    for step, row in expected.items():
        assert board[step].keys() == row.keys() and board[step] == pytest.approx(row, rel=1e-6)


def test_missing_tracker_is_named_and_the_run_trains_on(tiny_random_target, hidden, tmp_path, monkeypatch,
                                                       capsys) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError, as when not installed
    out = tmp_path / "train"
    summary = run(_recipe(tiny_random_target, 'train.report_to=["wandb"]'),
                  TrainOptions(out_dir=out, data_dir=hidden, max_steps=2, progress=False))
    assert summary["steps"] == 2 and (out / "metrics.jsonl").is_file()
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "train.report_to lists 'wandb' but it is not installed" in err and "dspark[wandb]" in err
