"""The embedded prompt set and the built-in eval sets: size, schema, determinism; the benchmark reader."""

from __future__ import annotations

import json

import pytest

from dspark_data.prompts.embedded import load_embedded_prompts
from dspark_data.prompts.eval_sets import load_eval_set, load_speculator_benchmarks


def _check_schema(rows: list[dict]) -> None:
    ids = set()
    for row in rows:
        assert set(row) == {"prompt", "prompt_id", "messages"}
        assert isinstance(row["prompt"], str) and row["prompt"]
        assert len(row["prompt_id"]) == 64 and row["prompt_id"] not in ids
        ids.add(row["prompt_id"])
        roles = [m["role"] for m in row["messages"]]
        assert roles[0] == "user" and roles[-1] == "user" and row["messages"][0]["content"] == row["prompt"]
        assert all(r == ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles))
        assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"])


def test_embedded_prompts_schema_size_and_multi_turn():
    rows = load_embedded_prompts()
    assert len(rows) >= 500
    _check_schema(rows)
    assert sum(len(r["messages"]) == 3 for r in rows) >= 50
    # the first rows already mix kinds (seeded shuffle), so "first N" is representative
    assert any(len(r["messages"]) == 3 for r in rows[:40]) and any("```python" in r["prompt"] for r in rows[:40])


def test_embedded_prompts_deterministic_and_fresh():
    a, b = load_embedded_prompts(), load_embedded_prompts()
    assert a == b
    a[0]["prompt"] = "mutated"
    assert load_embedded_prompts()[0]["prompt"] != "mutated"


@pytest.mark.parametrize("name,marker", [("code", "def "), ("math", "step by step")])
def test_eval_sets(name, marker):
    rows = load_eval_set(name)
    assert len(rows) >= 40
    _check_schema(rows)
    assert all(marker in r["prompt"] for r in rows)
    assert rows == load_eval_set(name)


def test_unknown_eval_set():
    with pytest.raises(ValueError, match="code"):
        load_eval_set("nope")


def test_speculator_benchmarks_layout(tmp_path):
    lines = [
        {"prompt": 'def add(a, b):\n    """Add."""\n'},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]},
    ]
    (tmp_path / "HumanEval.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rows = load_speculator_benchmarks(tmp_path, "HumanEval")
    assert [r["prompt"] for r in rows] == [lines[0]["prompt"], "Hi", "Why?"]
    assert rows[1]["messages"] == [{"role": "user", "content": "Hi"}]  # trailing answer dropped
    assert rows[2]["messages"][0]["role"] == "system"
    assert load_speculator_benchmarks(tmp_path / "HumanEval.jsonl") == rows
    with pytest.raises(FileNotFoundError, match="HumanEval"):
        load_speculator_benchmarks(tmp_path, "qa")
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_speculator_benchmarks(tmp_path, "bad")
