"""`dspark report`: a self-contained page from whatever stages a run has, saying what is missing."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from dspark_train.eval.acceptance import AcceptanceCounts
from dspark_train.eval.speculative import Calibration
from dspark_train.report import build_report


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _results(scale: float) -> dict:
    counts = AcceptanceCounts(100, [int(70 * scale), int(40 * scale), int(20 * scale)], 300)
    cal = Calibration.empty(3)
    for accepted in (0, 1, 2, 3, 3):
        cal.observe([0.7, 0.5, 0.3], accepted, [0.6, 0.5, 0.4])
    return {s: {m: {"counts": counts.to_json(), "calibration": cal.to_json(True)} for m in ("greedy", "sampled")}
            for s in ("code", "math")}


def make_run(root: Path) -> Path:
    run = root / "runs" / "tiny"
    lines = [{"kind": "train", "step": s, "loss": 3 / s, "tv": 2 / s, "ce": 4 / s, "lr": 1e-3} for s in range(1, 11)]
    lines += [{"kind": "val", "step": s, "accepted_length": 1 + s / 10, "full_accuracy": 0.3, "acceptance_rate": 0.2,
               "confidence_abs_error": 0.1, **{f"acc_pos_{k}": 0.5 / k for k in range(1, 8)}} for s in (5, 10)]
    (run / "train").mkdir(parents=True)
    (run / "train" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    _write(run / "eval" / "results.json", _results(1.0))
    _write(run / "eval" / "vllm" / "results.json", _results(0.9))
    _write(run / "hidden" / "manifest.json", {"totals": {"samples": 64, "tokens": 12000, "raw_bytes": 12000 * 1024,
                                                         "stored_bytes": 12000 * 700, "errors": 0},
                                              "layer_ids": [1, 3, 5, 6], "hidden_size": 128, "codec": "zstd-split",
                                              "shards": [{}], "complete": True})
    _write(run / "export" / "summary.json", {"format": "dspark", "step": 10, "num_tensors": 32})
    return run


def test_full_report(tmp_path: Path):
    run = make_run(tmp_path)
    summary = build_report(run)
    page = (run / "report" / "report.html").read_text()
    assert summary["missing"] == []  # regen/vocab summaries are absent: noted inline in the data section
    assert page.count("data:image/png;base64,") == 4  # loss+lr, val curves, acceptance bars, calibration
    for text in ("Training", "Acceptance", "Confidence calibration", "Hidden states", "1.46x", "Export",
                 "| code | 70.0% | 40.0% | 20.0% | 2.30 |"):
        assert text in page, text
    assert summary["offline_code_greedy_avg_length"] == 2.3
    assert summary["vllm_code_greedy_avg_length"] == 2.17
    assert summary["val_accepted_length"] == 2.0
    # by hand, from _results' five steps (accepted 0, 1, 2, 3, 3 of 3; predicted 0.7, 0.5, 0.3): positions
    # reached 5, 4, 3 times, observed 4/5, 3/4, 2/3; |predicted - observed| weighted by reached:
    # (0.1 * 5 + 0.25 * 4 + (2/3 - 0.3) * 3) / 12 = 2.6 / 12, the same in all four cells
    assert summary["calibration_abs_error"] == round(2.6 / 12, 4)
    assert json.loads((run / "report" / "summary.json").read_text())["report"].endswith("report.html")


def test_empty_run_degrades_gracefully(tmp_path: Path):
    run = tmp_path / "runs" / "empty"
    run.mkdir(parents=True)
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["missing"] == ["training", "acceptance", "calibration", "data", "export"]
    page = (run / "report" / "report.html").read_text()
    assert "run `dspark train`" in page and "dspark eval --server URL" in page
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "does not" in result.output and "exist" in result.output
