"""Where training figures go: the console (progress bar, log lines, a validation table), `metrics.jsonl`,
and the experiment trackers of `train.report_to` (trackers.py). Only rank 0 writes; other ranks get a no-op logger.

`metrics.jsonl` holds one JSON object per line: `{"kind": "train"|"val", "step": N, ...figures}`. On
resume the lines past the checkpoint's step (written by the interrupted run) are dropped, so the file
reads as if the run had never stopped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dspark_data.atomic import atomic_write_bytes
from dspark_data.progress import Progress


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe values: floats rounded to 6 significant digits, NaN/inf as null."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, float):
            out[k] = None if not math.isfinite(v) else float(f"{v:.6g}")
        else:
            out[k] = v
    return out


def format_val_table(step: int, metrics: dict[str, float], block_drafts: int) -> Table:
    """The seed card's figures at one validation; per-position acceptance on one row (fits 80 columns)."""

    def fmt(v: float | None) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.3f}"

    table = Table(title=f"validation @ step {step}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("mean accepted length", fmt(metrics.get("accepted_length")))
    table.add_row("full accuracy", fmt(metrics.get("full_accuracy")))
    table.add_row("mean acceptance rate", fmt(metrics.get("acceptance_rate")))
    table.add_row("confidence abs error", fmt(metrics.get("confidence_abs_error")))
    pos = " ".join(fmt(metrics.get(f"acc_pos_{k}")) for k in range(1, block_drafts + 1))
    table.add_row(f"acceptance @ 1..{block_drafts}", pos)
    return table


def summary_key(prefix: str, metric: str) -> str:
    """The flat summary.json name of a validation metric (metrics.py's name): `accepted_length` ->
    `<prefix>mean_accepted_length`, `acc_pos_3` -> `<prefix>acc_pos3`, anything else `<prefix><metric>`.
    The one place the two spellings meet (train summary, export summary, the Markov ablation)."""
    if metric == "accepted_length":
        return f"{prefix}mean_accepted_length"
    if metric.startswith("acc_pos_"):
        return f"{prefix}acc_pos{metric[len('acc_pos_'):]}"
    return f"{prefix}{metric}"


def summary_figures(prefix: str, figures: dict[str, float] | None, per_position: bool) -> dict[str, float]:
    """Validation figures under summary.json's flat names (`summary_key`): mean accepted length, the
    scalar figures present, and with `per_position` acceptance at positions 1..P."""
    if not figures:
        return {}
    keys = ["accepted_length"]
    keys += [k for k in ("full_accuracy", "acceptance_rate", "confidence_abs_error", "tv_tail_bound",
                         "target_tail_mass") if k in figures]
    k = 1
    while per_position and f"acc_pos_{k}" in figures:
        keys.append(f"acc_pos_{k}")
        k += 1
    return {summary_key(prefix, key): figures[key] for key in keys}


class TrainLogger:
    """Console + JSONL + optional TensorBoard for one run (rank 0 only: pass enabled=False elsewhere)."""

    def __init__(
        self,
        out_dir: Path,
        *,
        enabled: bool,
        total_steps: int,
        start_step: int = 0,
        trackers: list[Any] | None = None,
        console: Console | None = None,
        progress: bool = True,
    ) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.path = out_dir / "metrics.jsonl"
        self._trackers: list[Any] = list(trackers or []) if enabled else []
        self._progress: Progress | None = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        # a bar on a terminal; elsewhere a plain line every few seconds (dspark_data.progress)
        self._progress = Progress("train", total_steps, done=start_step, enabled=progress, console=self.console)

    def _truncate_after(self, step: int) -> None:
        """Drop records with step > `step` (left by an interrupted run) and a torn last line, atomically."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # killed mid-write
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                keep.append(line)
        atomic_write_bytes(self.path, "".join(line + "\n" for line in keep).encode())

    def _write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(_clean(record)) + "\n")

    def _mirror(self, kind: str, step: int, metrics: dict[str, Any]) -> None:
        """The same record to every tracker, rounded as metrics.jsonl holds it."""
        for tracker in self._trackers:
            tracker.log(kind, step, _clean(metrics))

    def train(self, step: int, metrics: dict[str, float]) -> None:
        """A training log line: loss, lr, tokens/s, data-wait fraction..."""
        if not self.enabled:
            return
        self._write({"kind": "train", "step": step, **metrics})
        self._mirror("train", step, metrics)
        info = (
            f"loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}  "
            f"{metrics['tokens_per_s']:.0f} tok/s  data wait {100 * metrics['data_wait_frac']:.1f}%"
        )
        if self._progress is not None:
            self._progress.update(info=info)
        if self._progress is None or not self._progress.is_bar:
            self.console.print(f"step {step:>6}  {info}")

    def val(self, step: int, metrics: dict[str, float], block_drafts: int) -> None:
        """A validation record and its table."""
        if not self.enabled:
            return
        self._write({"kind": "val", "step": step, **metrics})
        self._mirror("val", step, metrics)
        self.console.print(format_val_table(step, metrics, block_drafts))

    def advance(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(completed=step)

    def message(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        for tracker in self._trackers:
            tracker.close()
        self._trackers = []
