"""Promise (issue #8): when the disk fills up, a stage stops with a clear error naming the directory and
"No space left on device"; what it had committed stays valid (`verify` clean but for "not complete"), and
once space is freed the same command resumes and ends with the uninterrupted run's result.

Each stage writes into a small tmpfs (`mount -t tmpfs -o size=...`; skipped where mounting is refused)
that also holds a ballast file sized from the uninterrupted run's output, so the stage runs out of space
part-way; deleting the ballast is "freeing space".
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from cli.main import app
from dspark_data.store import open_dataset, open_hidden, verify
from reliability import harness
from reliability.data import dump_sets, regen_sets, train_sets, with_sets

NO_SPACE = "No space left on device"


@contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    path.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _ballast(path: Path, size: int) -> Path:
    with open(path, "wb") as f:  # real bytes: tmpfs does not count holes
        f.write(b"\0" * size)
    return path


def _cli(argv: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, argv, terminal_width=1000)
    text = " ".join(result.output.split())  # one line: rich wraps long messages
    if result.exit_code not in (0, 1) or (result.exception and not isinstance(result.exception, SystemExit)):
        text += f" [exception: {result.exception!r}]"
    return result.exit_code, text


def _assert_stopped_cleanly(code: int, out_text: str, directory: Path) -> None:
    assert code == 1, out_text
    flat = "".join(out_text.split())  # the console wraps long lines, paths included
    assert NO_SPACE.replace(" ", "") in flat and str(directory) in flat, out_text
    assert "Traceback" not in out_text and "exception:" not in out_text, out_text


@contextmanager
def _filled_then_resumed(argv, tmp_path: Path, name: str, slack: int) -> Iterator[tuple[Path, Path, int]]:
    """The store stages' campaign: a reference run; the same run on a tmpfs whose ballast leaves room for
    about half its output (it must stop cleanly, what it committed verifying); the ballast deleted and the
    run resumed to a clean, complete dataset. Yields (reference, resumed output, samples committed before
    the disk filled) while the tmpfs is still mounted."""
    ref = tmp_path / "reference"
    assert _cli(argv(ref))[0] == 0
    need = _size(ref)
    with tmpfs(tmp_path / "fs", need + slack) as fs:
        ballast = _ballast(fs / "ballast", slack + need // 2)
        out = fs / name
        code, text = _cli(argv(out))
        _assert_stopped_cleanly(code, text, out)
        report = verify(out)
        assert report.ok and not report.complete, [str(i) for i in report.issues]
        committed = len(open_dataset(out))
        ballast.unlink()
        assert _cli(argv(out))[0] == 0
        harness.verify_clean(out)
        yield ref, out, committed


def test_dump_hidden_disk_full_then_resume(tiny_random_target: str, regen_data: Path, tmp_path: Path) -> None:
    argv = lambda out: with_sets(  # noqa: E731
        "dump-hidden", dump_sets(tiny_random_target), "--data", str(regen_data), "--out", str(out)
    )
    with _filled_then_resumed(argv, tmp_path, "hidden", 1 << 20) as (ref, out, committed):
        assert 0 < committed < 16, committed
        a, b = open_hidden(ref), open_hidden(out)
        assert a.ids == b.ids
        for i in range(len(a)):
            assert torch.equal(a[i].hidden, b[i].hidden) and torch.equal(a[i].input_ids, b[i].input_ids)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["run_samples"] == 16 - committed  # resumed, not redone


@pytest.mark.vllm
def test_regen_disk_full_then_resume(tiny_random_target, prompts_file, vllm_server, tmp_path: Path) -> None:
    argv = lambda out: with_sets(  # noqa: E731
        "regen", regen_sets(tiny_random_target, prompts_file, vllm_server), "--out", str(out), "--no-progress"
    )
    with _filled_then_resumed(argv, tmp_path, "regen", 256 << 10) as (ref, out, _):
        a, b = open_dataset(ref), open_dataset(out)
        assert a.ids == b.ids and all(a.row(i) == b.row(i) for i in range(len(a)))


def test_train_disk_full_then_resume(tiny_random_target: str, hidden_data: Path, tmp_path: Path) -> None:
    argv = lambda out: with_sets(  # noqa: E731
        "train", train_sets(tiny_random_target), "--data", str(hidden_data), "--out", str(out), "--max-steps", "4"
    )
    ref = tmp_path / "reference"
    assert _cli(argv(ref))[0] == 0
    ckpt = _size(ref / "checkpoints" / "step-000002")
    with tmpfs(tmp_path / "fs", 3 * ckpt + (1 << 20)) as fs:
        ballast = _ballast(fs / "ballast", int(1.4 * ckpt))  # room for one checkpoint, not two
        out = fs / "train"
        code, text = _cli(argv(out))
        _assert_stopped_cleanly(code, text, out / "checkpoints")
        assert (out / "checkpoints" / "latest").read_text().strip() == "step-000002"
        ballast.unlink()
        code, text = _cli(argv(out))
        assert code == 0, text
        final = load_file(str(out / "checkpoints" / "step-000004" / "model.safetensors"))
        expected = load_file(str(ref / "checkpoints" / "step-000004" / "model.safetensors"))
        assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
