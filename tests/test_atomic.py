"""Publishing a directory (export, checkpoint, tiny-target cache) never leaves nothing or half a directory.

The kill campaign runs `publish_dir` in a child process that dies (`os._exit`, no cleanup) just before
its N-th file-system mutation (rename, exchange, unlink, rmdir), for every N until a child finishes;
after each death `recover_dir` (what the next reader or rerun calls) must leave exactly the old or the
new complete directory under the final name. Both the renameat2 exchange path and the two-rename
fallback (no renameat2) are covered.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dspark_data import atomic
from dspark_data.atomic import backup_path, publish_dir, recover_dir

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import os, shutil, sys
from pathlib import Path
from dspark_data import atomic

kill_at, tmp, final, exchange = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1"
calls = [0]

def dying(fn):
    def wrapped(*a, **k):
        if calls[0] == kill_at:
            os._exit(17)  # a SIGKILL: no finally, no cleanup
        calls[0] += 1
        return fn(*a, **k)
    return wrapped

if not exchange:
    atomic._renameat2 = None
atomic._renameat2 = atomic._renameat2 and dying(atomic._renameat2)
os.rename, os.unlink, os.rmdir = dying(os.rename), dying(os.unlink), dying(os.rmdir)
atomic.publish_dir(tmp, final)
print("finished", calls[0])
"""


def _fill(directory: Path, tag: str, files: int = 4) -> dict[str, str]:
    """A directory of several files and a sub-directory, every byte naming its version."""
    (directory / "sub").mkdir(parents=True)
    content = {f"f{i}.bin": f"{tag}-{i}-" * 1000 for i in range(files)} | {"sub/nested.json": json.dumps(tag)}
    for name, text in content.items():
        (directory / name).write_text(text)
    return content


def _snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): p.read_text() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_a_publish_killed_at_every_step_leaves_old_or_new(tmp_path, exchange) -> None:
    if exchange and atomic._renameat2 is None:
        pytest.skip("no renameat2 in this libc")
    deaths, outcomes = 0, set()
    for kill_at in range(100):
        case = tmp_path / f"k{kill_at}"
        final, tmp = case / "export", case / ".tmp-export"
        old = _fill(final, "old")
        new = _fill(tmp, "new")
        proc = subprocess.run([sys.executable, "-c", CHILD, str(kill_at), str(tmp), str(final), str(int(exchange))],
                              capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)}, check=False)
        assert proc.returncode in (0, 17), proc.stderr
        recover_dir(final)
        got = _snapshot(final)
        assert got in (old, new), f"killed before mutation {kill_at}: {sorted(got)}"
        assert not backup_path(final).exists()
        outcomes.add("new" if got == new else "old")
        if proc.returncode == 0:
            break
        deaths += 1
    else:
        pytest.fail("publish_dir never finished")
    assert deaths >= 3 and outcomes == {"old", "new"}, (deaths, outcomes)  # it did die between steps
    publish_again = case / ".tmp-export"  # and a later publish over a recovered directory still works
    if publish_again.exists():
        import shutil

        shutil.rmtree(publish_again)
    newer = _fill(publish_again, "newer")
    publish_dir(publish_again, final)
    assert _snapshot(final) == newer and not publish_again.exists()


def test_recover_dir_restores_a_backup_and_drops_a_stale_one(tmp_path) -> None:
    final = tmp_path / "step-000004"
    old = _fill(backup_path(final), "old")
    recover_dir(final)  # killed between the renames: the old one comes back
    assert _snapshot(final) == old and not backup_path(final).exists()
    _fill(backup_path(final), "older")
    recover_dir(final)  # killed while deleting the backup: the complete final stays
    assert _snapshot(final) == old and not backup_path(final).exists()
    recover_dir(tmp_path / "absent")  # nothing to do
    assert not (tmp_path / "absent").exists()


def test_publish_refuses_a_temp_dir_elsewhere(tmp_path) -> None:
    (tmp_path / "a" / "t").mkdir(parents=True)
    with pytest.raises(ValueError, match="share a parent"):
        publish_dir(tmp_path / "a" / "t", tmp_path / "final")


def test_checkpoint_latest_survives_a_resave_killed_between_renames(tmp_path) -> None:
    """The trainer's `latest` names a step whose re-save died after the old copy was moved aside:
    the checkpoint is found (and renamed back on rank 0), and export's reader finds it too."""
    from dspark_train.checkpoint import Checkpointer
    from dspark_train.export.checkpoint_reader import find_checkpoint

    ckpts = tmp_path / "train" / "checkpoints"
    step = backup_path(ckpts / "step-000002")
    step.mkdir(parents=True)
    (step / "state.json").write_text(json.dumps({"step": 2, "world_size": 1}))
    (ckpts / "latest").write_text("step-000002\n")
    assert find_checkpoint(tmp_path / "train") == step  # read-only: the backup itself
    assert Checkpointer(tmp_path / "train", rank=1, world_size=2).latest() == step
    assert Checkpointer(tmp_path / "train").latest() == ckpts / "step-000002"
    assert not step.exists() and find_checkpoint(tmp_path / "train") == ckpts / "step-000002"


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_replaces_whole_and_cleans_up_a_failed_write(tmp_path, durable) -> None:
    """A file is replaced in one rename; a writer that fails leaves the old file and no temp file behind."""
    target = tmp_path / "record.json"
    atomic.atomic_write_bytes(target, b"old")
    atomic.atomic_write(target, lambda tmp: tmp.write_bytes(b"new"), durable=durable)
    assert target.read_bytes() == b"new"

    def failing(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic.atomic_write(target, failing, durable=durable)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_a_rewrite_removes_the_temp_a_killed_writer_left(tmp_path) -> None:
    """A writer SIGKILLed before its rename leaves `.tmp-<name>.<pid>@<host>`; the next write of the same name
    (a cached stage republishing its summary.json) removes it, and leaves alone a live writer's temp and any
    other machine's (a pid can only be checked on its own host)."""
    target = tmp_path / "summary.json"
    host = socket.gethostname()
    child = f"""
import os, signal
from pathlib import Path
tmp = Path({str(tmp_path)!r}) / f".tmp-summary.json.{{os.getpid()}}@{host}"
tmp.write_bytes(b"half")
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", child], check=False)
    assert proc.returncode == -9
    live = tmp_path / f".tmp-summary.json.{os.getppid()}@{host}"  # the test runner's parent: alive, not ours
    live.write_bytes(b"in progress")
    (killed,) = [p for p in tmp_path.glob(".tmp-summary.json.*") if p != live]
    dead_pid = killed.name.removeprefix(".tmp-summary.json.").split("@")[0]
    remote = tmp_path / f".tmp-summary.json.{dead_pid}@{host}-elsewhere"  # dead here, maybe alive there
    remote.write_bytes(b"in progress elsewhere")
    assert len(list(tmp_path.glob(".tmp-summary.json.*"))) == 3
    atomic.atomic_write_bytes(target, b"{}")
    assert target.read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, remote.name, "summary.json"])
