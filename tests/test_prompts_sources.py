"""Prompt sources, row normalisation (every bad-row reason), selection and the split across machines."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dspark_data.prompts.normalize import Prompt, Rejection, content_id, normalize_row
from dspark_data.prompts.select import part_of, select_indices, shard_from_env
from dspark_data.prompts.sources import open_source
from dspark_data.regen.plan import build_plan
from schemas.recipe import PromptsConfig


def _ultra(pid: str, *turns: tuple[str, str]) -> dict:
    return {"prompt_id": pid, "messages": [{"role": r, "content": c} for r, c in turns]}


GOOD = _ultra("u1", ("system", "Be brief."), ("user", "Hi?"), ("assistant", "Hello."), ("user", "More?"))
SHAREGPT = {
    "id": "s1",
    "conversations": [{"from": "human", "value": "Sort a list?"}, {"from": "gpt", "value": "Use sorted."}],
}


def _write_jsonl(path: Path, rows: list, raw_lines: list[bytes] = ()) -> Path:
    data = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows) + b"".join(raw_lines)
    path.write_bytes(data)
    return path


def _normalize(table) -> list[Prompt | Rejection]:
    return [normalize_row(row, source=table.name, index=i) for i, row in table.rows(range(len(table)))]


def test_jsonl_ultrachat_and_sharegpt_rows(tmp_path: Path) -> None:
    table = open_source(str(_write_jsonl(tmp_path / "p.jsonl", [GOOD, SHAREGPT])))
    a, b = _normalize(table)
    assert isinstance(a, Prompt) and a.id == "u1" and a.index == 0 and a.source == "p.jsonl"
    assert a.messages == (("system", "Be brief."), ("user", "Hi?"), ("user", "More?"))  # assistant dropped
    assert a.num_user_turns == 2
    assert isinstance(b, Prompt) and b.messages == (("user", "Sort a list?"),)
    assert b.id == content_id(b.messages)  # ShareGPT's "id" is not the configured id column


def test_every_bad_row_reason_is_counted_never_raised(tmp_path: Path) -> None:
    rows = [
        _ultra("a", ("assistant", "only me")),  # no user turn
        {"prompt_id": "b", "messages": [{"role": "user", "content": ["parts"]}]},  # non-string content
        _ultra("c", ("user", "hi"), ("tool", "x")),  # unknown role
        {"prompt_id": "d", "messages": [{"role": "user", "content": "bad \ud800 surrogate"}]},  # invalid UTF-8
        {"prompt_id": "e", "other": 1},  # no messages column
        {"prompt_id": "f", "messages": "not a list"},
        _ultra("g", ("user", "   ")),  # empty user turn
        [1, 2],  # not an object
    ]
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(r).encode() + b"\n" for r in rows]
    lines += [b'{"prompt_id": "h", "messages": [{"role": "user", "content": "caf\xe9"}]}\n', b"{not json\n"]
    path.write_bytes(b"".join(lines))
    out = _normalize(open_source(str(path)))
    reasons = [o.reason for o in out]
    assert all(isinstance(o, Rejection) for o in out)
    assert reasons == [
        "no_user_turn",
        "non_string_content",
        "unknown_role",
        "invalid_utf8",
        "bad_shape",
        "bad_shape",
        "empty_user_turn",
        "bad_shape",
        "invalid_utf8",
        "invalid_json",
    ]
    assert [o.id for o in out[:7]] == list("abcdefg")  # the id column survives a bad row
    assert all(o.id.startswith("h-") for o in out[7:])  # unparseable rows get a hash id
    assert len({o.id for o in out}) == len(out)


def test_json_and_parquet_sources(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps([GOOD, SHAREGPT]))
    assert [p.id for p in _normalize(open_source(str(tmp_path / "p.json")))] == [
        "u1",
        content_id((("user", "Sort a list?"),)),
    ]
    msgs = pa.array(
        [[{"role": b"user", "content": b"hello"}], [{"role": b"user", "content": b"\xff\xfe"}]],
        type=pa.list_(pa.struct([("role", pa.binary()), ("content", pa.binary())])),
    )
    pq.write_table(pa.table({"prompt_id": ["p0", "p1"], "messages": msgs}), tmp_path / "p.parquet")
    out = _normalize(open_source(str(tmp_path / "p.parquet")))
    assert isinstance(out[0], Prompt) and out[0].messages == (("user", "hello"),)
    assert isinstance(out[1], Rejection) and out[1].reason == "invalid_utf8"


def test_file_identity_changes_with_content(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [GOOD])
    first = open_source(str(path)).identity()
    _write_jsonl(path, [GOOD, SHAREGPT])
    assert open_source(str(path)).identity() != first
    with pytest.raises(FileNotFoundError):
        open_source(str(tmp_path / "missing.jsonl"))


def test_hub_dataset_source_offline(tmp_path: Path) -> None:
    """The `datasets.load_dataset(id, split=...)` path, on a local dataset repo laid out like UltraChat."""
    repo = tmp_path / "ultrachat_like"
    (repo / "data").mkdir(parents=True)
    rows = [_ultra(f"id{i}", ("user", f"question {i}"), ("assistant", "answer")) for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), repo / "data" / "train_sft-00000-of-00001.parquet")
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train_sft\n"
        "    path: data/train_sft-*.parquet\n---\n"
    )
    table = open_source(str(repo), split="train_sft")
    assert len(table) == 5 and table.identity()["kind"] == "hub"
    out = _normalize(table)
    assert [p.id for p in out] == [f"id{i}" for i in range(5)]
    with pytest.raises(ValueError, match="split"):
        open_source(str(repo), split="nope")


def test_embedded_source_is_ultrachat_shaped() -> None:
    pytest.importorskip("dspark_data.prompts.embedded")
    table = open_source("embedded")
    assert len(table) >= 500
    out = _normalize(table)
    assert sum(isinstance(o, Prompt) for o in out) == len(out)
    assert any(o.num_user_turns > 1 for o in out)
    assert table.identity() == open_source("embedded").identity()


def test_selection_is_deterministic() -> None:
    assert select_indices(10, 3, "first", 0) == [0, 1, 2]
    assert select_indices(10, None, "random", 0) == list(range(10))
    a = select_indices(1000, 50, "random", 7)
    assert a == select_indices(1000, 50, "random", 7) and a == sorted(a) and len(set(a)) == 50
    assert a != select_indices(1000, 50, "random", 8)
    assert set(select_indices(1000, 60, "random", 7)) >= set(a)  # growing N keeps the earlier picks


def test_parts_are_disjoint_and_cover(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [f"id{i}" for i in range(500)]
    parts = [part_of(i, 4) for i in ids]
    assert set(parts) == {0, 1, 2, 3} and min(parts.count(k) for k in range(4)) > 80
    assert parts == [part_of(i, 4) for i in ids]
    assert shard_from_env(4, 2) == (4, 2)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    assert shard_from_env(None, None) == (8, 5)
    with pytest.raises(ValueError):
        shard_from_env(2, 2)


def test_plan_dedupes_and_splits(tmp_path: Path) -> None:
    rows = [_ultra(f"id{i}", ("user", f"q{i}")) for i in range(20)] + [_ultra("id3", ("user", "dup"))]
    cfg = PromptsConfig(source=str(_write_jsonl(tmp_path / "p.jsonl", rows)), num_prompts=None)
    whole = build_plan(cfg, 0, num_shards=1, shard_index=0, group_size=6)
    assert len(whole.items) == 21 and [len(g) for g in whole.groups] == [6, 6, 6, 3]
    dup = whole.items[-1]
    assert isinstance(dup, Rejection) and dup.reason == "duplicate_id" and dup.id == "id3@row20"
    parts = [build_plan(cfg, 0, num_shards=3, shard_index=i, group_size=6) for i in range(3)]
    assert sorted(i for p in parts for i in p.ids) == sorted(whole.ids)
    assert sum(len(p.items) for p in parts) == 21
