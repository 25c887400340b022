"""Fault-injection harness shared by the reliability tests (no tests here).

How a trial works: the stage's real `dspark` command runs in a child process, a seeded RNG picks a
delay in [0, D) where D is the measured duration of an uninterrupted run of the same command, and the
child gets SIGKILL at that wall-clock instant (if it is still running). The directory it left is
checked right away (what was committed must be valid and equal to the reference), then the same
command is started again on it. A run that finishes before its kill closes an episode: the final
artefact is compared with the uninterrupted run's and the next episode starts in a fresh directory.

Why children are forked from a pre-warmed server: importing torch + transformers + the CLI takes
5-20 s on the shared 2-core machines, which would make 20 trials per stage cost minutes. The children
come from multiprocessing's forkserver with those modules preloaded (nothing has run a torch op in it,
so no OpenMP pool is forked), so a child starts in well under a second and runs exactly
`dspark <argv>` (the Typer app, as the console script would).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PRELOAD = [
    "torch",
    "pyarrow",
    "httpx",
    "transformers",
    "transformers.models.llama.modeling_llama",
    "tokenizers",
    "safetensors.torch",
    "cli.main",
    "dspark_data.regen",
    "dspark_data.regen.backends.openai",
    "dspark_data.capture",
    "dspark_data.capture.hf_backend",
    "dspark_train.entrypoint",
    "dspark_train.trainer",
]

# Results of every campaign of this session, printed in the terminal summary (see conftest.py).
RESULTS: list[Campaign] = []

_CTX: multiprocessing.context.BaseContext | None = None


def context() -> multiprocessing.context.BaseContext:
    """The forkserver context, with the heavy imports preloaded once per session."""
    global _CTX
    if _CTX is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _CTX = ctx
    return _CTX


def _child(argv: list[str], log: str, env: dict[str, str] | None = None) -> None:
    """Body of a child: stdout/stderr to `log`, then the `dspark` CLI (its SystemExit is the exit code)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ["COLUMNS"] = "200"
    os.environ.update(env or {})
    print(f"\n$ dspark {' '.join(argv)}", flush=True)
    from cli.main import app

    app(argv, prog_name="dspark")


def _noop() -> None:
    pass


_WARM = False


def warm() -> None:
    """Start the forkserver (it imports PRELOAD once) so that no measured or killed run pays for it."""
    global _WARM
    if not _WARM:
        proc = context().Process(target=_noop, daemon=True)
        proc.start()
        proc.join(600)
        _WARM = True


def shutdown() -> None:
    """Stop the forkserver (it holds torch + transformers in memory) once the suite is done with it."""
    global _WARM
    if _WARM:
        import multiprocessing.forkserver as forkserver

        stop = getattr(forkserver._forkserver, "_stop", None)  # private, but stable since Python 3.8
        if stop is not None:
            stop()
        _WARM = False


def start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> multiprocessing.process.BaseProcess:
    """`dspark argv` in a pre-warmed child (`env`: extra environment variables for it)."""
    proc = context().Process(target=_child, args=(list(argv), str(log), env), daemon=True)
    proc.start()
    return proc


def log_tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


def run(argv: list[str], log: Path, timeout: float = 600.0) -> tuple[int, float]:
    """Run `dspark argv` to the end in a child; (exit code, seconds from start to exit)."""
    warm()
    t0 = time.monotonic()
    proc = start(argv, log)
    proc.join(timeout)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        raise AssertionError(f"dspark {' '.join(argv)} did not finish in {timeout}s:\n{log_tail(log)}")
    return int(proc.exitcode or 0), time.monotonic() - t0


def run_ok(argv: list[str], log: Path, timeout: float = 600.0) -> float:
    code, seconds = run(argv, log, timeout)
    assert code == 0, f"dspark {' '.join(argv)} exited {code}:\n{log_tail(log)}"
    return seconds


@dataclass
class Campaign:
    """What one stage's kill campaign did."""

    stage: str
    seed: int
    reference_s: float = 0.0
    kills: int = 0  # SIGKILLs delivered while the command was running (the trials)
    episodes: int = 0  # runs to completion, each compared with the uninterrupted run
    finished_before_kill: int = 0
    partial_checks: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    delays: list[float] = field(default_factory=list)

    def line(self) -> str:
        spread = f"{min(self.delays):.2f}-{max(self.delays):.2f}s" if self.delays else "-"
        return (
            f"{self.stage}: {self.kills} SIGKILL trials (seed {self.seed}, delays {spread} of a "
            f"{self.reference_s:.1f}s run), {self.episodes} resumed runs compared with the uninterrupted one, "
            f"{self.partial_checks} post-kill states checked, outcomes {dict(self.outcomes)}, "
            f"{self.seconds:.0f}s"
        )


def kill_campaign(
    stage: str,
    argv_for: Callable[[Path], list[str]],
    workdir: Path,
    reference_s: float,
    check_partial: Callable[[Path], str],
    check_final: Callable[[Path], None],
    *,
    trials: int = 20,
    seed: int = 20260,
    min_episodes: int = 3,
    timeout: float = 600.0,
) -> Campaign:
    """SIGKILL `dspark argv_for(out)` at `trials` seeded random instants, rerunning until each episode ends.

    `check_partial(out)` runs after every kill and returns a short outcome label (e.g. "3/16 committed");
    it raises on any invariant violation. `check_final(out)` runs after each completed rerun. Returns once
    `trials` kills were checked and at least `min_episodes` reruns ended like the uninterrupted run.
    """
    warm()
    rng = random.Random(seed)
    camp = Campaign(stage, seed, reference_s=reference_s)
    t0 = time.monotonic()
    episode = 0
    out = workdir / f"episode-{episode:02d}"
    log = workdir / "child.log"
    while camp.kills < trials or camp.episodes < min_episodes:
        if camp.kills >= trials:  # enough kills: finish the open episode without killing
            run_ok(argv_for(out), log, timeout)
            finished = True
        else:
            delay = rng.uniform(0.0, reference_s)
            proc = start(argv_for(out), log)
            proc.join(delay)
            finished = not proc.is_alive()
            if not finished:
                os.kill(proc.pid, signal.SIGKILL)
                proc.join()
                camp.kills += 1
                camp.delays.append(delay)
                label = check_partial(out)
                camp.partial_checks += 1
                camp.outcomes[label] += 1
                continue
            assert proc.exitcode == 0, f"{stage}: rerun exited {proc.exitcode}:\n{log_tail(log)}"
            camp.finished_before_kill += 1
        check_final(out)
        camp.episodes += 1
        camp.outcomes["resumed run == uninterrupted run"] += 1
        episode += 1
        out = workdir / f"episode-{episode:02d}"
    camp.seconds = time.monotonic() - t0
    RESULTS.append(camp)
    print(camp.line(), file=sys.stderr)
    return camp


def verify_state(directory: Path) -> tuple[bool, list[str]]:
    """`dspark verify` semantics on a possibly interrupted dataset: (has a manifest, warnings); raises on issues.

    Allowed after a kill: no manifest yet (nothing committed), "not complete", "uncommitted files"
    (the next resume removes them). Anything in `issues` is a failure.
    """
    from dspark_data.store import verify

    if not (directory / "manifest.json").exists():
        return False, []
    report = verify(directory)
    assert report.ok, f"verify {directory}: " + "; ".join(str(i) for i in report.issues)
    for w in report.warnings:
        assert w.startswith(("dataset is not complete", "uncommitted files")), w
    return True, report.warnings


def verify_clean(directory: Path) -> None:
    """The final state: `verify` clean, complete, no warnings, no temp files."""
    from dspark_data.store import verify

    report = verify(directory)
    assert report.ok and report.complete, [str(i) for i in report.issues]
    assert not report.warnings, report.warnings
    assert not list(directory.glob(".tmp-*")), sorted(p.name for p in directory.glob(".tmp-*"))


def cli_verify(directory: Path) -> int:
    """Exit code of the real `dspark verify DIR` command (in-process through Typer's test runner)."""
    from typer.testing import CliRunner

    from cli.main import app

    return CliRunner().invoke(app, ["verify", str(directory)]).exit_code
