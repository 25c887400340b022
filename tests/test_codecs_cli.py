"""`dspark codecs` end to end on a small tiny-target capture, and `dump-hidden --dry-run` using its ratios."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_capture_support import make_regen, random_sequences, tiny_recipe

from dspark_data.capture import dump_hidden
from dspark_data.store import open_hidden
from dspark_data.targets import load_target_info

REPO = Path(__file__).resolve().parent.parent
CODECS = "raw,zstd-split,fp8,int6-g32,int4-g32,int4-g32-delta"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900, check=False)


@pytest.fixture(scope="module")
def capture(tmp_path_factory, tiny_random_target) -> dict:
    """A raw (exact) capture of 16 regen samples of tiny:random, made by the dump-hidden stage (transformers)."""
    root = tmp_path_factory.mktemp("codecs")
    info = load_target_info(tiny_random_target)
    make_regen(root / "regen", random_sequences(16, info.vocab_size, lo=40, hi=120, seed=3))
    sets = ["capture.backend=hf", "capture.codec=raw", "capture.batch_size=4", "seq_len=128"]
    dump_hidden(tiny_recipe(tiny_random_target, *sets), root / "regen", root / "hidden")
    return {"root": root, "target": tiny_random_target, "sets": sets}


def test_codecs_command_table_is_consistent(capture) -> None:
    root = capture["root"]
    out = root / "codecs.json"
    res = _cli("codecs", "--data", str(root / "hidden"), "--recipe", "tiny",
               "--set", f"target.model={capture['target']}", "--set", "seq_len=128", "--set", "model.num_layers=1",
               "--set", "train.batch_size=2", "--set", "vocab.draft_vocab_size=2048",
               "--codecs", CODECS, "--samples", "10", "--train-steps", "2", "--dataset-samples", "1000",
               "--work", str(root / "work"), "--json", str(out), cwd=root)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    rows = {r["codec"]: r for r in json.loads(out.read_text())}
    assert list(rows) == CODECS.split(",")
    source = open_hidden(root / "hidden")
    tokens = int(source.lengths[:10].sum())
    for name, r in rows.items():
        assert r["samples"] == 10 and r["tokens"] == tokens, name
        assert r["exact"] == r["lossless"], name  # lossless codecs round-trip bit for bit, lossy ones do not
        assert (r["rel_error"] == 0) == r["exact"], name
        assert r["encode_mb_per_cpu_s"] > 0 and r["decode_mb_per_cpu_s"] > 0, name
        # the projection is the measured bytes/token times the full dataset's tokens
        assert r["projected_bytes"] == pytest.approx(r["bytes_per_token"] * tokens / 10 * 1000), name
        assert r["ratio"] == pytest.approx(rows["raw"]["bytes_per_token"] / r["bytes_per_token"]), name
        stored = open_hidden(Path(r["directory"])).manifest.totals.stored_bytes
        assert r["bytes_per_token"] == pytest.approx(stored / tokens), name
    assert rows["raw"]["ratio"] == 1.0 and rows["raw"]["val_relative_to_raw"] == 1.0
    assert rows["zstd-split"]["ratio"] > 1.2 and rows["zstd-split"]["val_relative_to_raw"] == 1.0
    assert rows["int4-g32"]["ratio"] > rows["int6-g32"]["ratio"] > rows["fp8"]["ratio"] > rows["zstd-split"]["ratio"]
    assert rows["int4-g32"]["rel_error"] > rows["int6-g32"]["rel_error"]
    assert all(r["val_mean_accepted_length"] >= 1.0 for r in rows.values())
    assert "int4-g32-delta" in res.stderr and "projected size" in res.stderr  # the console is stderr


def test_dry_run_uses_ratios_measured_on_the_data(capture) -> None:
    root = capture["root"]
    if not (root / "work").is_dir():
        pytest.skip("needs the codecs command's work dir (test above)")
    recipe = tiny_recipe(capture["target"], *capture["sets"])
    plain = dump_hidden(recipe, root / "regen", root / "empty-out", dry_run=True)
    assert plain["measured_ratios"] == {}
    got = dump_hidden(recipe, root / "regen", root / "empty-out", dry_run=True, sample_from=root / "work")
    measured = got["measured_ratios"]
    assert {"raw", "zstd-split", "int4-g32"} <= set(measured)
    by = {p["codec"]: p for p in got["projections"]}
    typical = {p["codec"]: p for p in plain["projections"]}
    for codec, m in measured.items():
        assert by[codec]["ratio"] == pytest.approx(m["ratio"], rel=1e-3), codec
    assert by["int6-g32"]["bytes"] != typical["int6-g32"]["bytes"]
    # the partial output dir is data at hand too: the raw capture itself, as --out
    again = dump_hidden(recipe, root / "regen", root / "hidden", dry_run=True)
    assert set(again["measured_ratios"]) == {"raw"}
    res = _cli("dump-hidden", "--recipe", "tiny", "--set", f"target.model={capture['target']}",
               *(x for s in capture["sets"] for x in ("--set", s)), "--data", str(root / "regen"),
               "--out", str(root / "o2"), "--dry-run", "--sample-from", str(root / "nope"), cwd=root)
    assert res.returncode != 0 and "--sample-from" in (res.stdout + res.stderr)
