"""Promises (issues #4, #8): damage to a dataset on disk is never silently accepted.

- `verify` (and `dspark verify`, exit 1) reports each kind of damage precisely: a flipped byte in a sample
  (shard and sample id), in a shard footer, a truncated shard, a deleted shard (with the samples it held),
  a damaged or missing index, a hand-edited manifest (totals, fingerprint, checksums), an edited errors file.
- The trainer refuses to start on a corrupt dataset (before any model is built), naming the damaged samples
  and the `--skip-samples` that would train around them; with exactly those samples skipped it trains and
  never reads them; damage no sample owns (the manifest) cannot be skipped.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from cli.main import app
from dspark_data.store import load_manifest, open_dataset, verify
from reliability.data import train_sets, with_sets, write_hidden


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 samples in 14 shards (2-4 samples each), zstd-split, and an errors file with one record."""
    directory = write_hidden(tmp_path_factory.mktemp("corrupt") / "base", 40)
    from dspark_data.store import HiddenStateWriter

    with HiddenStateWriter(directory, layer_ids=[1, 3, 5, 6], hidden_size=128, codec="zstd-split",
                           target="tiny:random", seq_len=64, shard_bytes=1 << 16) as w:
        w.record_error("dropped-1", "nonfinite", "NaN in layer 3")
    assert verify(directory).ok
    return directory


def _copy(base: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(base, out, ignore=shutil.ignore_patterns(".writer.lock"))
    return out


def _index(directory: Path, shard: int) -> pa.Table:
    entry = load_manifest(directory).shards[shard]
    return pa.ipc.open_file(pa.memory_map(str(directory / entry.index_file))).read_all()


def _flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x5A
    path.write_bytes(bytes(data))


def _edit_manifest(directory: Path, edit: Callable[[dict], None]) -> None:
    path = directory / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m, indent=1))


# Each damage returns (file, shard, damaged sample ids, words the message must contain).
def flip_sample_byte(d: Path):
    idx = _index(d, 1)
    off, length, sid = idx["offset"][1].as_py(), idx["length"][1].as_py(), idx["id"][1].as_py()
    _flip(d / "shard-00001.arrow", off + length // 2)
    return "shard-00001.arrow", 1, [sid], "sha256 mismatch in sample data"


def flip_footer_byte(d: Path):
    path = d / "shard-00002.arrow"
    _flip(path, path.stat().st_size - 12)
    return "shard-00002.arrow", 2, [], "outside sample data"


def truncate_shard(d: Path):
    path = d / "shard-00003.arrow"
    idx = _index(d, 3)
    path.write_bytes(path.read_bytes()[: idx["offset"][1].as_py() + 10])  # cuts into the second sample
    return "shard-00003.arrow", 3, idx["id"].to_pylist()[1:], "truncated"


def delete_shard(d: Path):
    ids = _index(d, 4)["id"].to_pylist()
    (d / "shard-00004.arrow").unlink()
    return "shard-00004.arrow", 4, ids, "missing"


def flip_index_byte(d: Path):
    _flip(d / "shard-00005.index.arrow", 100)
    return "shard-00005.index.arrow", 5, [], "index file does not match"


def delete_index(d: Path):
    (d / "shard-00006.index.arrow").unlink()
    return "shard-00006.index.arrow", 6, [], "index file is missing"


def manifest_totals_edited(d: Path):
    _edit_manifest(d, lambda m: m["totals"].update(samples=m["totals"]["samples"] + 1))
    return "manifest.json", None, [], "totals.samples"


def manifest_fingerprint_edited(d: Path):
    _edit_manifest(d, lambda m: m["fingerprint"].update(seq_len=4096))
    return "manifest.json", None, [], "fingerprint_hash does not match"


def manifest_checksum_edited(d: Path):
    _edit_manifest(d, lambda m: m["shards"][7].update(sha256="0" * 64))
    return "shard-00007.arrow", 7, [], "sha256 mismatch"


def manifest_not_json(d: Path):
    (d / "manifest.json").write_text('{"schema_version": 1, "kind": "hidden", ')
    return "manifest.json", None, [], "unreadable manifest"


def errors_file_edited(d: Path):
    path = d / "errors.jsonl"
    path.write_text(path.read_text().replace("nonfinite", "nan_value"))
    return "errors.jsonl", None, [], "differ from the manifest"


DAMAGES = [
    flip_sample_byte,
    flip_footer_byte,
    truncate_shard,
    delete_shard,
    flip_index_byte,
    delete_index,
    manifest_totals_edited,
    manifest_fingerprint_edited,
    manifest_checksum_edited,
    manifest_not_json,
    errors_file_edited,
]


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.__name__ for d in DAMAGES])
def test_verify_reports_damage_precisely(base: Path, tmp_path: Path, damage) -> None:
    d = _copy(base, tmp_path)
    file, shard, ids, words = damage(d)
    report = verify(d)
    assert not report.ok
    hits = [i for i in report.issues if i.file == file and words in i.message]
    assert hits, f"expected an issue on {file} saying {words!r}, got {[str(i) for i in report.issues]}"
    assert any(i.shard == shard for i in hits), [str(i) for i in hits]
    if ids:
        assert any(set(ids) <= set(i.sample_ids) for i in report.issues), [str(i) for i in report.issues]
    result = CliRunner().invoke(app, ["verify", str(d), "--json"])
    assert result.exit_code == 1
    assert all(sid in result.output for sid in ids) and file in result.output


def _train(data: Path, out: Path, target: str, *extra: str) -> tuple[int, str]:
    argv = with_sets("train", train_sets(target), "--data", str(data), "--out", str(out), "--max-steps", "2", *extra)
    result = CliRunner().invoke(app, argv, terminal_width=400)
    return result.exit_code, result.output + (str(result.exception) if result.exit_code not in (0, 1) else "")


@pytest.mark.parametrize("damage", [flip_sample_byte, truncate_shard, delete_shard],
                         ids=["flipped-byte", "truncated-shard", "deleted-shard"])
def test_trainer_refuses_corrupt_data_unless_the_damaged_samples_are_skipped(
    base: Path, tmp_path: Path, tiny_random_target: str, damage
) -> None:
    d = _copy(base, tmp_path)
    _, _, _, _ = damage(d)
    damaged = sorted({sid for i in verify(d).issues for sid in i.sample_ids})
    shard_ids = sorted({sid for i in verify(d).issues if not i.sample_ids and i.shard is not None
                        for sid in _index(base, i.shard)["id"].to_pylist()})
    named = sorted(set(damaged) | set(shard_ids))
    code, out = _train(d, tmp_path / "run", tiny_random_target)
    assert code == 1 and "corrupt" in out and "--skip-samples" in out, out
    assert all(sid in out for sid in named), out
    assert not (tmp_path / "run" / "checkpoints").exists(), "refused only after it started writing"
    if len(named) > 1:  # naming only some of them is not enough
        code, out = _train(d, tmp_path / "run", tiny_random_target, "--skip-samples", named[0])
        assert code == 1 and named[-1] in out, out
    code, out = _train(d, tmp_path / "run", tiny_random_target, "--skip-samples", ",".join(named))
    assert code == 0, out
    from dspark_train.data import open_source

    kept = open_source(d, skip=named)
    assert not set(named) & set(kept.ids) and len(kept) == 40 - len(named)
    for i in range(len(kept)):  # every kept sample still reads; the damaged ones are never touched
        kept.get(i)


def test_trainer_refuses_manifest_damage_even_with_skips(base: Path, tmp_path: Path, tiny_random_target: str) -> None:
    d = _copy(base, tmp_path)
    manifest_checksum_edited(d)
    ids = ",".join(_index(d, 7)["id"].to_pylist())
    _edit_manifest(d, lambda m: m["totals"].update(tokens=m["totals"]["tokens"] + 5))
    code, out = _train(d, tmp_path / "run", tiny_random_target, "--skip-samples", ids)
    assert code == 1 and "totals.tokens" in out and "re-create" in out, out


def test_skip_of_an_unknown_id_is_refused(base: Path, tmp_path: Path, tiny_random_target: str) -> None:
    code, out = _train(base, tmp_path / "run", tiny_random_target, "--skip-samples", "no-such-sample")
    assert code == 1 and "no-such-sample" in out, out


def test_skipped_samples_change_the_data_fingerprint(base: Path) -> None:
    from dspark_train.data import open_source

    full, skipped = open_source(base), open_source(base, skip=[open_dataset(base).ids[0]])
    assert full.info.fingerprint != skipped.info.fingerprint  # a checkpoint of one is not resumed as the other
    assert len(skipped) == len(full) - 1


def test_a_passed_check_is_remembered_until_a_file_changes(base: Path, tmp_path: Path) -> None:
    """A resume over unchanged files does not re-read the dataset; damage written after the check (a new
    mtime) is re-checked and refused; a changed skip list re-checks; nothing is recorded until the caller
    accepts the run (`remember()`), so a refused run writes nothing."""
    from dspark_train.data.integrity import CorruptData, check_integrity
    from schemas.training import VERIFIED_NAME

    def check(**kwargs: object) -> str:
        done = check_integrity(d, record_dir=run, **kwargs)
        done.remember()
        return done.message

    d, run = _copy(base, tmp_path), tmp_path / "run"
    first = check_integrity(d, record_dir=run)
    assert "re-hashed" in first.message and "no damage" in first.message
    assert not run.exists(), "the check wrote before the run was accepted"
    first.remember()
    assert (run / VERIFIED_NAME).is_file()
    assert "not re-hashed" in check()
    assert "not re-hashed" not in check(skip=["s0001"])  # another skip list
    assert "not re-hashed" not in check_integrity(d).message  # no record dir: always checked
    assert "not re-hashed" not in check()  # the record now holds the skip list above
    assert "not re-hashed" in check()
    entry = load_manifest(d).shards[3]
    _flip(d / entry.file, _index(d, 3)["offset"][0].as_py() + 100)
    with pytest.raises(CorruptData, match="--skip-samples"):
        check()
