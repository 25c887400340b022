"""`dspark report RUN_DIR`: one self-contained HTML page about a run (PNG plots inlined as base64).

Sections, each read from the stage outputs under `RUN_DIR/<stage>/` and skipped with a note saying what
is missing when that stage has not run:
- training: loss and learning-rate curves, validation curves (`train/metrics.jsonl`);
- acceptance: per-position acceptance bars per prompt set and mode, offline (`eval/results.json`) next to
  vLLM's live counters (`eval/vllm/results.json`), and the seed card's tables;
- calibration: the confidence head's predicted acceptance vs the observed conditional acceptance per
  position, and a reliability diagram (from the offline eval, which logs both);
- data: storage of the hidden-state dataset (`hidden/manifest.json`), regen and vocab figures;
- export: what was exported and its validation figures.
Writes `report.html` and `summary.json` (flat) to `RUN_DIR/report/` unless told otherwise.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dspark_data.atomic import atomic_write_bytes  # noqa: E402
from dspark_data.stage import publish_summary  # noqa: E402
from schemas.summary import ReportSummary  # noqa: E402

LOSS_TERMS = ("ce", "tv", "kl", "confidence")  # trainer's per-term figures in metrics.jsonl
VAL_KEYS = ("accepted_length", "full_accuracy", "acceptance_rate", "confidence_abs_error")
CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "th{background:#f3f3f3}.missing{color:#a60;font-style:italic}img{max-width:100%}code{background:#f5f5f5}"
)


def _json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _missing(text: str) -> str:
    return f'<p class="missing">{html.escape(text)}</p>'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def training_section(train_dir: Path) -> tuple[str, dict[str, Any]]:
    records = _jsonl(train_dir / "metrics.jsonl")
    if not records:
        return _missing(f"No training metrics ({train_dir}/metrics.jsonl): run `dspark train`."), {}
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    panels = ((axes[0], "training loss", ["loss"]),
              (axes[1], "loss terms", [k for k in LOSS_TERMS if any(k in r for r in train)]),
              (axes[2], "learning rate", ["lr"]))
    for ax, title, keys in panels:
        for key in keys:
            pts = [(r["step"], r[key]) for r in train if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=key)
        ax.set(title=title, xlabel="step")
        if len(keys) > 1:
            ax.legend(fontsize=8)
    parts = ["<h2>Training</h2>", _png(fig)]
    out: dict[str, Any] = {"train_steps": train[-1]["step"] if train else 0}
    if val:
        keys = [k for k in VAL_KEYS if any(k in r for r in val)]
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            pts = [(r["step"], r[key]) for r in val if key in r]
            ax.plot(*zip(*pts, strict=True), marker="o")
            ax.set(title=f"val {key}", xlabel="step")
        parts.append(_png(fig))
        last = val[-1]
        per_pos = [last[f"acc_pos_{k}"] for k in range(1, 33) if f"acc_pos_{k}" in last]
        rows = [[k, f"{last[k]:.3f}"] for k in VAL_KEYS if k in last]
        parts.append(f"<p>Validation at step {last['step']} (teacher-forced, held-out regen data):</p>"
                     + _table(["metric", "value"], rows))
        if per_pos:
            parts.append(f"<p>Per-position acceptance (positions 1-{len(per_pos)}): "
                         + " / ".join(f"{v:.3f}" for v in per_pos) + "</p>")
        out.update({f"val_{k}": last[k] for k in VAL_KEYS if k in last})
    else:
        parts.append(_missing("No validation records (train.val_fraction=0?)."))
    return "\n".join(parts), out


def _acceptance_sources(eval_dir: Path) -> dict[str, dict[str, Any]]:
    sources = {}
    for label, path in (("offline", eval_dir / "results.json"), ("vLLM", eval_dir / "vllm" / "results.json")):
        data = _json(path)
        if data:
            sources[label] = data
    return sources


def acceptance_section(eval_dir: Path) -> tuple[str, dict[str, Any]]:
    from dspark_train.eval.offline import tables_markdown

    sources = _acceptance_sources(eval_dir)
    if not sources:
        return _missing(f"No acceptance measurements ({eval_dir}/results.json or vllm/results.json): run "
                        "`dspark eval --draft DIR` and/or `dspark eval --server URL`."), {}
    keys = sorted({(s, m) for data in sources.values() for s, modes in data.items() for m in modes})
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    out: dict[str, Any] = {}
    for ax, (pset, mode) in zip(axes[0], keys, strict=True):
        present = [(label, data[pset][mode]["counts"]) for label, data in sources.items()
                   if mode in data.get(pset, {})]
        width = 0.8 / len(present)
        for j, (label, counts) in enumerate(present):
            rates = counts["per_position"]
            ax.bar([i + 1 + (j - (len(present) - 1) / 2) * width for i in range(len(rates))], rates, width,
                   label=f"{label} (Avg Length {counts['avg_length']:.2f})")
            out[f"{label.lower()}_{pset}_{mode}_avg_length"] = counts["avg_length"]
        ax.set(title=f"{pset} / {mode}", xlabel="draft position", ylim=(0, 1))
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("acceptance (cumulative, per draft)")
    parts = ["<h2>Acceptance</h2>", _png(fig)]
    for label, data in sources.items():
        modes = sorted({m for v in data.values() for m in v}, key=lambda m: m != "greedy")
        parts.append(f"<h3>{html.escape(label)}</h3><pre>{html.escape(tables_markdown(data, modes))}</pre>")
    return "\n".join(parts), out


def calibration_section(eval_dir: Path) -> tuple[str, dict[str, Any]]:
    data = _json(eval_dir / "results.json")
    if not data:
        return _missing("No offline eval results: calibration needs `dspark eval --draft DIR`."), {}
    cells = [(s, m, r["calibration"]) for s, modes in data.items() for m, r in modes.items()
             if "predicted" in r.get("calibration", {})]
    if not cells:
        return _missing("The evaluated draft has no confidence head (a DFlash export?): nothing to calibrate."), {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    errors = []
    for pset, mode, cal in cells:
        pos = range(1, len(cal["predicted"]) + 1)
        line = axes[0].plot(pos, cal["observed"], marker="o", label=f"{pset}/{mode} observed")[0]
        axes[0].plot(pos, cal["predicted"], ls="--", marker="x", color=line.get_color(),
                     label=f"{pset}/{mode} predicted")
        weights = cal["reached"]
        err = sum(abs(p - o) * w for p, o, w in zip(cal["predicted"], cal["observed"], weights, strict=True))
        errors.append(err / max(sum(weights), 1))
        b = cal.get("bins", [])
        sizes = [8 + x["count"] ** 0.5 * 4 for x in b]
        axes[1].scatter([x["predicted"] for x in b], [x["observed"] for x in b], s=sizes, label=f"{pset}/{mode}")
    axes[0].set(title="confidence head: predicted vs observed (conditional) acceptance", xlabel="draft position",
                ylim=(0, 1))
    axes[0].legend(fontsize=7)
    axes[1].plot([0, 1], [0, 1], color="gray", lw=0.8)
    axes[1].set(title="reliability (all reached positions)", xlabel="predicted", ylabel="observed", xlim=(0, 1),
                ylim=(0, 1))
    axes[1].legend(fontsize=7)
    note = ("<p>A position is <i>reached</i> when every earlier draft token of its step was accepted; observed = "
            "fraction of reached positions accepted. The head is trained toward 1 - TV(draft, target) at "
            "temperature 1, so it is best compared with the sampled mode.</p>")
    mean_err = sum(errors) / len(errors)
    return "\n".join(["<h2>Confidence calibration</h2>", _png(fig), note,
                      f"<p>Mean |predicted - observed| per position: {mean_err:.3f}</p>"]), {
        "calibration_abs_error": round(mean_err, 4)}


def _gb(n: float) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def storage_section(run_dir: Path) -> tuple[str, dict[str, Any]]:
    manifest = _json(run_dir / "hidden" / "manifest.json")
    if manifest is None and not any((run_dir / s / "summary.json").is_file() for s in ("regen", "vocab")):
        return _missing(f"No data stage outputs under {run_dir} (regen, hidden, vocab): run `dspark regen`, "
                        "`dspark dump-hidden` and `dspark vocab`."), {}
    parts = ["<h2>Data</h2>"]
    out: dict[str, Any] = {}
    if manifest:
        t = manifest.get("totals", {})
        raw, stored, tokens = t.get("raw_bytes", 0), t.get("stored_bytes", 0), t.get("tokens", 0)
        rows = [
            ["samples", f"{t.get('samples', 0):,}"], ["tokens", f"{tokens:,}"],
            ["layer ids (stored order)", manifest.get("layer_ids")], ["hidden size", manifest.get("hidden_size")],
            ["codec", manifest.get("codec")], ["shards", len(manifest.get("shards", []))],
            ["raw bytes (bf16)", _gb(raw)], ["stored bytes", _gb(stored)],
            ["compression", f"{raw / stored:.2f}x" if stored else "-"],
            ["stored bytes / token", f"{stored / tokens:,.0f}" if tokens else "-"],
            ["errors", t.get("errors", 0)], ["complete", manifest.get("complete")],
        ]
        parts.append("<h3>Hidden states</h3>" + _table(["", "value"], rows))
        out.update({"hidden_samples": t.get("samples", 0), "hidden_tokens": tokens, "hidden_stored_bytes": stored,
                    "hidden_compression": round(raw / stored, 3) if stored else None})
    else:
        parts.append(_missing(f"No hidden-state dataset ({run_dir}/hidden/manifest.json): streamed training or "
                              "`dspark dump-hidden` not run."))
    for stage in ("regen", "vocab"):
        summary = _json(run_dir / stage / "summary.json")
        if summary:
            rows = [[k, v] for k, v in summary.items() if isinstance(v, (int, float, str, bool))]
            parts.append(f"<h3>{stage}</h3>" + _table(["", "value"], rows))
        else:
            parts.append(_missing(f"No {stage} summary ({run_dir}/{stage}/summary.json)."))
    return "\n".join(parts), out


def export_section(export_dir: Path) -> tuple[str, dict[str, Any]]:
    summary = _json(export_dir / "summary.json")
    if not summary:
        return _missing(f"No export ({export_dir}/summary.json): run `dspark export`."), {}
    rows = [[k, v] for k, v in summary.items() if isinstance(v, (int, float, str, bool))]
    return "<h2>Export</h2>" + _table(["", "value"], rows), {"export_format": summary.get("format")}


def build_report(run_dir: Path, out_dir: Path | None = None) -> dict[str, Any]:
    """Write `report.html` and `summary.json`; return the summary (with `missing` listing absent sections)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist (expected e.g. runs/tiny)")
    out_dir = Path(out_dir) if out_dir else run_dir / "report"
    sections = {
        "training": training_section(run_dir / "train"),
        "acceptance": acceptance_section(run_dir / "eval"),
        "calibration": calibration_section(run_dir / "eval"),
        "data": storage_section(run_dir),
        "export": export_section(run_dir / "export"),
    }
    summary: dict[str, Any] = {"cached": False, "run_dir": str(run_dir)}
    missing = []
    for name, (text, figures) in sections.items():
        summary.update(figures)
        if text.startswith('<p class="missing">'):
            missing.append(name)
    summary["missing"] = missing
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>dspark report: {html.escape(run_dir.name)}"
            f"</title><style>{CSS}</style></head><body><h1>dspark run <code>{html.escape(str(run_dir))}</code></h1>"
            + "\n".join(text for text, _ in sections.values()) + "</body></html>")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "report.html", page.encode())
    summary["report"] = str(out_dir / "report.html")
    publish_summary(out_dir, summary, schema=ReportSummary)
    return summary
