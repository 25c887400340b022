"""Draft vocab: loss-masked counting, top-N with ties by lower id, determinism, caching, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from regen_schema import REGEN_SCHEMA

from dspark_data.store import HiddenStateWriter, ShardWriter
from dspark_data.vocab import build_vocab, read_vocab_tensors, select_vocab


def _regen(d: Path, rows: list[tuple[list[int], list[bool]]]) -> None:
    with ShardWriter(d, "regen", REGEN_SCHEMA, {"t": 1}, shard_rows=2) as w:
        for i, (ids, mask) in enumerate(rows):
            w.write({"id": f"r{i}", "input_ids": ids, "loss_mask": mask})


def test_select_ties_by_lower_id() -> None:
    counts = np.array([0, 5, 3, 5, 3, 9, 0, 3])
    assert select_vocab(counts, 3).tolist() == [1, 3, 5]
    assert select_vocab(counts, 4).tolist() == [1, 2, 3, 5]  # 2 beats 4 and 7 at count 3
    assert select_vocab(counts, 100).tolist() == list(range(8))  # target vocab smaller than N: keep all


def test_build_counts_only_masked_tokens(tmp_path: Path) -> None:
    rows = [([7, 7, 2, 9], [False, True, True, True]), ([9, 9, 4], [True, True, False]), ([4, 4, 4], [False] * 3)]
    _regen(tmp_path / "regen", rows)
    res = build_vocab(tmp_path / "regen", tmp_path / "vocab", size=2, target_vocab_size=12)
    # masked tokens: 7, 2, 9, 9, 9 -> 9 leads, then 2 and 7 tie at 1: the lower id (2) wins
    assert not res.cached and res.tokens == 5 and res.samples == 3
    v = read_vocab_tensors(tmp_path / "vocab")
    assert v["d2t"].tolist() == [2 - 0, 9 - 1] and v["d2t"].dtype == torch.int64
    assert v["t2d"].shape == (12,) and v["t2d"].nonzero().flatten().tolist() == [2, 9]
    assert v["counts"].tolist()[:10] == [0, 0, 1, 0, 0, 0, 0, 1, 0, 3]
    assert abs(res.coverage - 4 / 5) < 1e-6
    summary = json.loads((tmp_path / "vocab" / "summary.json").read_text())
    assert summary["cached"] is False and summary["draft_vocab_size"] == 2


def test_deterministic_and_cached(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [(rng.zipf(1.3, 50).clip(max=300).tolist(), (rng.random(50) > 0.4).tolist()) for _ in range(9)]
    _regen(tmp_path / "regen", rows)
    a = build_vocab(tmp_path / "regen", tmp_path / "a", size=20, target_vocab_size=301)
    b = build_vocab(tmp_path / "regen", tmp_path / "b", size=20, target_vocab_size=301)
    assert (tmp_path / "a/vocab.safetensors").read_bytes() == (tmp_path / "b/vocab.safetensors").read_bytes()
    again = build_vocab(tmp_path / "regen", tmp_path / "a", size=20, target_vocab_size=301)
    assert again.cached and again.coverage == a.coverage == b.coverage
    assert json.loads((tmp_path / "a/summary.json").read_text())["cached"] is True
    assert not build_vocab(tmp_path / "regen", tmp_path / "a", size=21, target_vocab_size=301).cached


def test_from_hidden_dataset(tmp_path: Path) -> None:
    with HiddenStateWriter(tmp_path / "h", layer_ids=[1, 2], hidden_size=8, codec="raw", target="t", seq_len=8) as w:
        w.write("a", torch.tensor([3, 3, 5]), torch.tensor([True, True, True]), torch.zeros(3, 2, 8).bfloat16())
        w.write("b", torch.tensor([5, 1]), torch.tensor([False, True]), torch.zeros(2, 2, 8).bfloat16())
    res = build_vocab(tmp_path / "h", tmp_path / "v", size=2, target_vocab_size=6)
    assert read_vocab_tensors(tmp_path / "v")["t2d"].nonzero().flatten().tolist() == [1, 3]  # 1 and 5 tie: 1 wins
    assert res.tokens == 4


def test_cli_vocab_inspect_verify(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    target = tmp_path / "target"
    target.mkdir()
    cfg = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 8, "vocab_size": 16,
           "num_attention_heads": 2, "intermediate_size": 16, "rms_norm_eps": 1e-6}
    (target / "config.json").write_text(json.dumps(cfg))
    _regen(tmp_path / "regen", [([1, 2, 2, 3], [True] * 4), ([3, 3], [True, False])])
    runner = CliRunner()
    args = ["vocab", "--data", str(tmp_path / "regen"), "--out", str(tmp_path / "v"), "--size", "2",
            "--set", f"target.model={target}"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "built" in first.output and "coverage" in first.output
    assert read_vocab_tensors(tmp_path / "v")["t2d"].shape == (16,)
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "cached" in again.output
    shown = runner.invoke(app, ["inspect", str(tmp_path / "regen"), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["samples"] == 2
    assert runner.invoke(app, ["verify", str(tmp_path / "regen")]).exit_code == 0
    shard = tmp_path / "regen" / "shard-00000.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    bad = runner.invoke(app, ["verify", str(tmp_path / "regen")], terminal_width=200)
    assert bad.exit_code == 1 and "FAILED" in bad.output
    missing = runner.invoke(app, ["inspect", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "no manifest" in missing.output
