"""Long work shows progress when the output is not a terminal (CI, `make demo | tee`, a log file)."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console

from dspark_data.progress import Progress

LINE = re.compile(r"^work: (\d+)/40 \((\d+)%\)( step \d+)?, (elapsed|took) \d+s(, ETA \d+s)?$")


def _plain() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False), out


def test_a_non_terminal_gets_a_line_every_interval() -> None:
    console, out = _plain()
    start = time.monotonic()
    with Progress("work", 40, console=console, interval_s=0.05) as bar:
        for i in range(40):
            time.sleep(0.01)
            bar.update(advance=1, info=f"step {i}")
    seconds = time.monotonic() - start
    lines = out.getvalue().splitlines()
    assert all(LINE.match(line) for line in lines), lines
    ticks = [line for line in lines if "elapsed" in line]
    # one line per 50 ms of a >= 400 ms job (scheduling on a busy machine may drop a few, never add)
    assert 3 <= len(ticks) <= seconds / 0.05 + 1, (len(ticks), seconds)
    counts = [int(LINE.match(line).group(1)) for line in lines]
    assert counts == sorted(counts) and counts[0] < 40
    assert lines[-1].startswith("work: 40/40 (100%) step 39, took")


def test_silence_is_broken_even_when_nothing_advances() -> None:
    console, out = _plain()
    with Progress("work", 40, console=console, interval_s=0.05):
        time.sleep(0.3)  # e.g. a model loading
    ticks = [line for line in out.getvalue().splitlines() if line.startswith("work: 0/40 (0%), elapsed")]
    assert len(ticks) >= 2, out.getvalue()


def test_a_terminal_gets_the_bar_and_disabled_prints_nothing() -> None:
    out = io.StringIO()
    with Progress("work", 40, console=Console(file=out, force_terminal=True), interval_s=0.01) as bar:
        bar.update(advance=5)
        time.sleep(0.1)
    assert bar.done == 5 and "elapsed" not in out.getvalue() and "work" in out.getvalue()
    console, quiet = _plain()
    with Progress("work", 40, console=console, interval_s=0.01, enabled=False):
        time.sleep(0.1)
    assert quiet.getvalue() == ""


def test_regen_and_train_report_through_it(tmp_path, monkeypatch) -> None:
    """regen's and the trainer's progress use it: plain lines with their own fields, at the interval."""
    monkeypatch.setenv("DSPARK_PROGRESS_INTERVAL_S", "0.05")
    from dspark_data.regen import progress as regen_progress
    from dspark_data.regen.progress import RegenProgress, RunStats
    from dspark_train.logging_utils import TrainLogger

    console, out = _plain()
    monkeypatch.setattr(regen_progress.Progress, "__init__", _with_console(regen_progress.Progress.__init__, console))
    stats = RunStats(generated_tokens=100)
    with RegenProgress(10, 2, stats, description="regen tiny") as bar:
        bar.advance(3)
        time.sleep(0.2)
    assert re.search(r"^regen tiny: 5/10 \(50%\) [\d.]+ tok/s, errors 0, elapsed", out.getvalue(), re.M), out.getvalue()
    console, out = _plain()
    logger = TrainLogger(tmp_path, enabled=True, total_steps=8, console=console)
    logger.advance(3)
    time.sleep(0.2)
    logger.close()
    assert re.search(r"^train: 3/8 \(38%\), elapsed", out.getvalue(), re.M), out.getvalue()


def _with_console(init, console):
    def wrapped(self, *args, **kwargs):
        kwargs.setdefault("console", console)
        init(self, *args, **kwargs)
    return wrapped
