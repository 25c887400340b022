"""`dspark codecs`: every codec on the first N samples of the user's own capture, before the big one.
Thin: flags -> `dspark_data.store.trial` (sizes, speeds) and `dspark_train.codec_trial` (short training)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import RecipeOpt, SetOpt, console, fail, resolve_recipe
from dspark_data.atomic import atomic_write_bytes
from schemas.loading import DEFAULT_RECIPE


def codecs_(
    data: Annotated[Path, typer.Option("--data", "-d", help="A hidden-state capture (any codec; raw is exact).")],
    recipe: RecipeOpt = DEFAULT_RECIPE,
    set_: SetOpt = None,
    codecs: Annotated[str | None, typer.Option(help="Comma-separated codecs (default: all).")] = None,
    samples: Annotated[int, typer.Option(help="First N samples of the capture.")] = 32,
    train_steps: Annotated[int | None, typer.Option(help="Also train S steps per codec; report val accepted "
                                                           "length relative to raw.")] = None,
    vocab: Annotated[Path | None, typer.Option(help="Draft vocab dir for --train-steps (default: full vocab).")] = None,
    dataset_samples: Annotated[int | None, typer.Option(help="Samples of the full dataset (default: recipe "
                                                               "prompts.num_prompts).")] = None,
    work: Annotated[Path | None, typer.Option(help="Keep the per-codec datasets here (default: temporary).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures as JSON.")] = None,
) -> None:
    """Bytes/token, projected dataset size and per-core speed of each codec on your data (+ short training)."""
    from dspark_data.capture.projection import format_bytes
    from dspark_data.store import CODECS, StoreError, open_hidden
    from dspark_data.store.trial import trial_codecs

    r = resolve_recipe(recipe, set_)
    names = [c.strip() for c in codecs.split(",") if c.strip()] if codecs else list(CODECS)
    unknown = [n for n in names if n not in CODECS]
    if unknown:
        fail(f"--codecs: unknown codec(s) {unknown}; choose from {', '.join(CODECS)}")
    if samples < 1:
        fail("--samples must be at least 1")
    root = work or Path(tempfile.mkdtemp(prefix="dspark-codecs-"))
    try:
        try:
            source = open_hidden(data)
        except (StoreError, OSError) as exc:
            fail(f"--data {data}: {exc}")
        if source.codec != "raw" and not CODECS[source.codec].lossless:
            console.print(f"[yellow]note:[/yellow] {data} is stored with the lossy {source.codec!r}: errors are "
                          "measured against its decoded states, not the target's")
        figs = trial_codecs(source, names, root / "codecs", samples=samples)
        full = dataset_samples or r.prompts.num_prompts or 0
        mean_tokens = figs[0].tokens / max(figs[0].samples, 1)
        rows: dict[str, dict[str, float]] = {}
        if train_steps:
            from dspark_data.mismatch import DataMismatch
            from dspark_train.codec_trial import paired, recipe_with_seed, train_codecs

            trained = {f.codec: Path(f.directory) for f in figs if f.codec == "raw" or not f.exact}
            try:
                runs = train_codecs(recipe_with_seed(recipe, set_ or []), trained, vocab, root / "runs",
                                    seeds=[r.seed], steps=train_steps)
            except (DataMismatch, FileNotFoundError) as exc:
                fail(f"--train-steps: {exc}")
            for f in figs:
                runs.setdefault(f.codec, runs["raw"])
            rows = paired(runs, "val_mean_accepted_length")
        table = Table(title=f"codecs on the first {figs[0].samples} samples of {data} ({figs[0].tokens:,} tokens); "
                            f"projected for {full:,} samples of ~{mean_tokens:.0f} tokens")
        for col in ("codec", "exact", "bytes/token", "vs raw", "rel. error", "projected size", "encode MB/s/core",
                    "decode MB/s/core", "CPU share MB/s/core", *(("val acc. length vs raw",) if train_steps else ())):
            table.add_column(col, justify="right")
        out = []
        for f in figs:
            projected = f.bytes_per_token * mean_tokens * full
            row = {**f.to_dict(), "projected_bytes": projected}
            cells = [f.codec, "yes" if f.exact else "no", f"{f.bytes_per_token:,.0f}", f"{f.ratio:.2f}x",
                     f"{f.rel_error:.4f}", format_bytes(projected) if full else "-", f"{f.encode_mb_per_cpu_s:.0f}",
                     f"{f.decode_mb_per_cpu_s:.0f}", f"{f.unpack_mb_per_cpu_s:.0f}"]
            if train_steps:
                p = rows[f.codec]
                row["val_mean_accepted_length"], row["val_relative_to_raw"] = p["mean"], 1 + p["diff"]
                cells.append(f"{p['mean']:.3f} ({1 + p['diff']:.3f}x)")
            table.add_row(*cells)
            out.append(row)
        console.print(table)
        if json_out:
            atomic_write_bytes(json_out, json.dumps(out, indent=1).encode())
    finally:
        if work is None:
            shutil.rmtree(root, ignore_errors=True)
