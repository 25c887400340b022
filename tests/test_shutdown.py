"""dspark_data/shutdown.py: SIGTERM becomes a flag at safe points, handlers are restored, the launcher passes
SIGTERM on to its child (what `dspark train --nproc-per-node N` relies on to reach torchrun)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dspark_data.shutdown import GracefulStop, StopRequested, check_stop, run_forwarding_signals, stop_requested


def test_sigterm_sets_the_flag_and_check_raises_at_the_safe_point() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop("unit") as stop:
        assert not stop.requested and not stop_requested()
        check_stop("unit")  # nothing requested: no-op
        os.kill(os.getpid(), signal.SIGTERM)  # would end the test process without the context
        deadline = time.monotonic() + 5
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.requested and stop_requested()
        with pytest.raises(StopRequested, match="unit: stopped on SIGTERM - all committed"):
            check_stop("unit", "all committed")
    assert signal.getsignal(signal.SIGTERM) is before and not stop_requested()


def test_the_launcher_forwards_sigterm_to_its_child(tmp_path) -> None:
    child = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
        f"open({str(tmp_path / 'ready')!r}, 'w').close()\n"
        "time.sleep(60)\n"
    )
    launcher = (
        "import sys\n"
        "from dspark_data.shutdown import run_forwarding_signals\n"
        f"sys.exit(run_forwarding_signals([sys.executable, '-c', {child!r}]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", launcher], env={**os.environ})
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 7  # the child's own SIGTERM handling decided the exit code
    assert run_forwarding_signals([sys.executable, "-c", "raise SystemExit(3)"]) == 3
