"""Prompt sources: read raw rows from a hub dataset, a local file, or the embedded prompt set.

Why a row table and not a plain iterator: selection ("first N" or "N sampled with the seed") needs the
row count and random access, and a bad row must stay a *row* (counted and reported), never abort the
run. So a source is a table of `len(table)` rows whose `rows(indices)` yields each row as a dict, or as
a `RowError` when the raw bytes cannot even be parsed (invalid UTF-8, invalid JSON).

Source kinds (the recipe's `prompts.source`):
- `embedded`: `dspark_data.prompts.embedded.load_embedded_prompts()` (UltraChat-shaped dicts);
- a local `.jsonl` / `.json` / `.parquet` file in UltraChat (`messages`) or ShareGPT (`conversations`)
  shape;
- anything else: a Hugging Face dataset id (or a local dataset directory) loaded with
  `datasets.load_dataset(source, split=prompts.split)`, e.g. `HuggingFaceH4/ultrachat_200k`.

`identity()` describes the source's content for the regen fingerprint (a content hash for files and
the embedded set, the `datasets` fingerprint for hub datasets), so a changed input invalidates reuse.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from schemas.recipe import PromptsConfig

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class RowError:
    """A row whose raw bytes could not be turned into a dict; `raw_hash` gives it a stable id."""

    reason: str
    detail: str
    raw_hash: str


class RowTable(Protocol):
    """What every source provides: a name for records, a row count, rows by index, a content identity."""

    name: str

    def __len__(self) -> int: ...

    def rows(self, indices: Iterable[int]) -> Iterator[tuple[int, dict[str, Any] | RowError]]: ...

    def identity(self) -> dict[str, Any]: ...


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ListTable:
    """Rows already in memory (the embedded set, a JSON array)."""

    def __init__(self, name: str, rows: list[Any], identity: dict[str, Any]):
        self.name, self._rows, self._identity = name, rows, identity

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, indices: Iterable[int]) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
        for i in indices:
            row = self._rows[i]
            if isinstance(row, dict):
                yield i, row
            else:
                raw = json.dumps(row, sort_keys=True, default=str).encode("utf-8", "replace")
                yield i, RowError("bad_shape", f"row is a {type(row).__name__}, not an object", _sha256(raw)[:16])

    def identity(self) -> dict[str, Any]:
        return self._identity


class JsonlTable:
    """A JSON-lines file, kept as raw lines so each line is decoded (and possibly rejected) on its own."""

    def __init__(self, path: Path):
        data = path.read_bytes()
        self.name = path.name
        self._lines = [line for line in data.split(b"\n") if line.strip()]
        self._identity = {"kind": "file", "name": path.name, "sha256": _sha256(data)}

    def __len__(self) -> int:
        return len(self._lines)

    def rows(self, indices: Iterable[int]) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
        for i in indices:
            raw = self._lines[i]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield i, RowError("invalid_utf8", f"line {i + 1}: {exc}", _sha256(raw)[:16])
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                yield i, RowError("invalid_json", f"line {i + 1}: {exc}", _sha256(raw)[:16])
                continue
            if not isinstance(row, dict):
                yield i, RowError("bad_shape", f"line {i + 1} is a {type(row).__name__}", _sha256(raw)[:16])
                continue
            yield i, row

    def identity(self) -> dict[str, Any]:
        return self._identity


class ParquetTable:
    """A Parquet file read with pyarrow; binary columns stay bytes so invalid UTF-8 is caught per row."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.name = path.name
        self._table = pq.read_table(path)
        self._identity = {"kind": "file", "name": path.name, "sha256": _file_sha256(path)}

    def __len__(self) -> int:
        return self._table.num_rows

    def rows(self, indices: Iterable[int]) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
        for i in indices:
            piece = self._table.slice(i, 1)
            try:
                yield i, piece.to_pylist()[0]
            except UnicodeDecodeError as exc:  # a string column holding bytes that are not UTF-8
                raw = f"{self._identity['sha256']}:{i}".encode()  # no decodable content to hash: file + row
                yield i, RowError("invalid_utf8", f"row {i}: {exc}", _sha256(raw)[:16])

    def identity(self) -> dict[str, Any]:
        return self._identity


class HubTable:
    """A `datasets` dataset (hub id or local dataset directory), read in selected order."""

    def __init__(self, source: str, split: str):
        import datasets

        try:
            self._ds = datasets.load_dataset(source, split=split)
        except Exception as exc:  # noqa: BLE001 - datasets raises many types; the message says what to do
            raise ValueError(
                f"cannot load prompts {source!r} (split {split!r}) with datasets.load_dataset: {exc}. "
                "Use a dataset id available offline (HF_HOME cache), a local .jsonl/.json/.parquet file, "
                "or 'embedded'."
            ) from exc
        self.name = source
        self._identity = {"kind": "hub", "name": source, "split": split, "fingerprint": self._ds._fingerprint}

    def __len__(self) -> int:
        return len(self._ds)

    def rows(self, indices: Iterable[int]) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
        chunk: list[int] = []
        for i in indices:
            chunk.append(i)
            if len(chunk) == 1024:
                yield from zip(chunk, self._ds.select(chunk), strict=True)
                chunk = []
        if chunk:
            yield from zip(chunk, self._ds.select(chunk), strict=True)

    def identity(self) -> dict[str, Any]:
        return self._identity


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _embedded_table() -> ListTable:
    from dspark_data.prompts.embedded import load_embedded_prompts

    rows = list(load_embedded_prompts())
    text = json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return ListTable("embedded", rows, {"kind": "embedded", "sha256": _sha256(text.encode("utf-8"))})


def _json_table(path: Path) -> ListTable:
    data = path.read_bytes()
    try:
        rows = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a UTF-8 JSON file ({exc}); use JSON lines to skip bad rows one by one") from None
    if isinstance(rows, dict) and isinstance(rows.get("data"), list):
        rows = rows["data"]
    if not isinstance(rows, list):
        raise ValueError(f"{path}: a .json prompt file must hold an array of rows (or {{'data': [...]}})")
    return ListTable(path.name, rows, {"kind": "file", "name": path.name, "sha256": _sha256(data)})


def open_source(source: str, split: str = PromptsConfig.model_fields["split"].default) -> RowTable:
    """Open the recipe's `prompts.source` as a row table (see the module docstring for the kinds)."""
    if source == "embedded":
        return _embedded_table()
    path = Path(source).expanduser()
    if path.suffix.lower() in FILE_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"prompt file {source!r} does not exist")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return JsonlTable(path)
        if suffix == ".json":
            return _json_table(path)
        return ParquetTable(path)
    return HubTable(source, split)
