"""`dspark inspect` and `dspark verify`: describe and check a dataset directory (issue #4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.common import fail

DirArg = Annotated[Path, typer.Argument(help="A regen or hidden-state dataset directory.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _merge_check(directory: Path, json_: bool) -> None:
    """A parent of `part-*-of-*` folders (regen or dump-hidden --num-shards N): check the parts form one dataset."""
    from dspark_data.regen.merge import find_parts, merge_check

    report = merge_check(find_parts(directory))
    if json_:
        typer.echo(json.dumps(report.to_dict(), indent=1))
    else:
        status = "[green]OK[/green]" if report.ok else "[red]FAILED[/red]"
        Console().print(
            f"{status}: {report.parts} parts, {report.samples:,} samples, {report.errors:,} errors in {directory}"
        )
        for problem in report.problems:
            Console().print(f"  [red]-[/red] {problem}")
    if not report.ok:
        raise typer.Exit(1)


def inspect(directory: DirArg, json_: JsonOpt = False) -> None:
    """Samples, tokens, bytes/token, compression ratio, codec, layers, fingerprint, shards.

    On a directory of regen parts (`part-00000-of-00004/`, ...) it merge-checks them instead: same
    settings, indices 0..N-1, disjoint ids, each part holding exactly the ids it was assigned.
    """
    from dspark_data.regen.merge import find_parts
    from dspark_data.store import StoreError
    from dspark_data.store import inspect as inspect_dataset

    if find_parts(directory):
        _merge_check(directory, json_)
        return
    try:
        s = inspect_dataset(directory)
    except StoreError as exc:
        fail(str(exc))
    if json_:
        typer.echo(json.dumps(s, indent=1))
        return
    out = Console()
    table = Table(title=f"{s['kind']} dataset {directory}", show_header=False)
    rows = [
        ("complete", str(s["complete"])),
        ("samples", f"{s['samples']:,}"),
        ("tokens", f"{s['tokens']:,}"),
        ("shards", str(s["shards"])),
        ("stored", _size(s["stored_bytes"])),
        ("raw", _size(s["raw_bytes"])),
        ("bytes/token", str(s["bytes_per_token"])),
        ("compression ratio", str(s["compression_ratio"])),
        ("codec", str(s["codec"])),
        ("layer ids", str(s["layer_ids"])),
        ("hidden size", str(s["hidden_size"])),
        ("top-K log-probs", _topk_row(s.get("topk_logprobs") or 0)),
        ("errors", f"{s['errors']} {s['error_counts'] or ''}"),
        ("fingerprint", s["fingerprint_hash"]),
    ]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)
    fp = Table("fingerprint field", "value")
    for k, v in s["fingerprint"].items():
        fp.add_row(str(k), json.dumps(v)[:100])
    out.print(fp)
    shards = Table(title="shards")
    for col in ("file", "samples", "tokens", "bytes", "first id"):
        shards.add_column(col)
    listed = s["shard_list"]
    for e in listed[:10] + (listed[-3:] if len(listed) > 13 else listed[10:]):
        shards.add_row(e["file"], str(e["samples"]), str(e["tokens"]), _size(e["bytes"]), str(e["first_id"]))
    out.print(shards)


def _topk_row(k: int) -> str:
    if not k:
        return "none"
    return f"K={k}: column `topk` (uint32 ids [T, K], fp16 log-probs [T, K], fp32 tail mass [T])"


def verify(directory: DirArg, json_: JsonOpt = False) -> None:
    """Recompute every checksum; report the shard and sample of any mismatch; exit non-zero on failure.

    On a parent of `part-*-of-*` folders: every part is verified, then the parts are merge-checked."""
    from dspark_data.regen.merge import find_parts

    parts = find_parts(directory)
    if not parts:
        if not _verify_one(directory, json_):
            raise typer.Exit(1)
        return
    ok = all([_verify_one(part, json_) for part in parts])  # every part reported, even after a failure
    try:
        _merge_check(directory, json_)
    except typer.Exit:
        ok = False
    if not ok:
        raise typer.Exit(1)


def _verify_one(directory: Path, json_: bool) -> bool:
    """Verify one dataset directory and print its report; True when it passed."""
    from dspark_data.store import verify as verify_dataset

    report = verify_dataset(directory)
    if json_:
        typer.echo(json.dumps(report.to_dict(), indent=1))
    else:
        out = Console()
        for w in report.warnings:
            out.print(f"[yellow]warning:[/yellow] {w}")
        if report.issues:
            table = Table(title=f"{len(report.issues)} integrity problem(s) in {directory}")
            for col in ("file", "shard", "samples", "problem"):
                table.add_column(col)
            for i in report.issues:
                ids = ", ".join(i.sample_ids[:4]) + (f" (+{len(i.sample_ids) - 4})" if len(i.sample_ids) > 4 else "")
                table.add_row(i.file, "-" if i.shard is None else str(i.shard), ids, i.message)
            out.print(table)
        status = "[green]OK[/green]" if report.ok else "[red]FAILED[/red]"
        out.print(
            f"{status}: {report.shards_checked} shards, {report.samples_checked:,} samples, "
            f"{_size(report.bytes_checked)} checked"
        )
    return report.ok
