"""The engine reaper (dspark_data/engine/reaper.py) without an engine: a client that is SIGKILLed takes
what it started after `start_reaper()` with it, and nothing else.

The client starts (1) a process before the reaper (must survive), then after `start_reaper()` (2) a
child with an emptied environment (found only through the recorded process tree, as vLLM's EngineCore
is once setproctitle has overwritten its environment block) that has a child of its own, and (3) a
daemonized process (re-parented to init at once, never in the tree: found only by its token).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]

CLIENT = r"""
import json, os, subprocess, sys, time
from dspark_data.engine.reaper import start_reaper
sleep = [sys.executable, "-c", "import time; time.sleep(300)"]
before = subprocess.Popen(sleep)
reaper = start_reaper()
tree = subprocess.Popen([sys.executable, "-c",
                         "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(300)", *sleep],
                        env={"PATH": os.environ.get("PATH", "")})
daemon = subprocess.Popen([sys.executable, "-c",
                           "import subprocess, sys; print(subprocess.Popen(sys.argv[1:], start_new_session=True).pid)",
                           *sleep], stdout=subprocess.PIPE, text=True)
daemon_pid = int(daemon.stdout.readline())
daemon.wait()
time.sleep(1.5)  # the reaper looks at the tree every 0.5 s
print(json.dumps({"before": before.pid, "tree": tree.pid, "daemon": daemon_pid}), flush=True)
time.sleep(300)
"""


def _gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_a_killed_client_takes_its_engine_processes_and_nothing_else() -> None:
    client = subprocess.Popen([sys.executable, "-c", CLIENT], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    pids = json.loads(client.stdout.readline())
    grandchild = psutil.Process(pids["tree"]).children()[0].pid
    everything = [pids["before"], pids["tree"], grandchild, pids["daemon"]]
    try:
        os.kill(client.pid, signal.SIGKILL)
        client.wait()
        assert _gone(pids["tree"]) and _gone(grandchild), "the recorded tree outlived the client"
        assert _gone(pids["daemon"]), "the token-carrying daemon outlived the client"
        assert not _gone(pids["before"], timeout=1.0), "a process started before start_reaper() was killed"
    finally:
        for pid in everything:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
