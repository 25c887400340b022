"""The regen stage over HTTP against a fake vLLM server (no model): retries and faults, load spreading,
kill-and-resume with SIGKILL at random points, caching, fingerprints and the multi-machine split."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
from test_regen_fake_server import FakeVllmServer
from typer.testing import CliRunner

from cli.main import app
from dspark_data.engine.server import free_port
from dspark_data.regen import merge_check, run_regen
from dspark_data.store import open_dataset, verify
from dspark_data.store.manifest import FingerprintMismatch
from schemas.loading import load_recipe
from schemas.recipe import Recipe

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}
N_GOOD = 40


@pytest.fixture(scope="module")
def tok(tiny_random_target: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_random_target)


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 good prompts (every 4th multi-turn) and 3 bad rows."""
    rows = []
    for i in range(N_GOOD):
        msgs = [{"role": "user", "content": f"Question {i}: explain item {i * 7}."}]
        if i % 4 == 0:
            msgs += [{"role": "assistant", "content": "old answer"}, {"role": "user", "content": f"Follow-up {i}?"}]
        rows.append({"prompt_id": f"q{i:03d}", "messages": msgs})
    rows.insert(5, {"prompt_id": "bad-role", "messages": [{"role": "robot", "content": "x"}]})
    rows.insert(9, {"prompt_id": "no-user", "messages": [{"role": "system", "content": "x"}]})
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + b"\xff\xfe not utf8\n")
    return path


def _recipe(target: str, source: Path, endpoints: list[str], *extra: str) -> Recipe:
    sets = [
        f"target.model={target}",
        f"prompts.source={source}",
        "prompts.num_prompts=null",
        "prompts.turns=all",
        "regen.shard_samples=4",
        "regen.sampling.max_new_tokens=16",
        "regen.backend=openai",
        f"regen.endpoints={json.dumps(endpoints)}",
        "regen.concurrency=3",
        "regen.max_retries=3",
        "regen.timeout_s=5",
    ]
    return load_recipe("tiny", sets + list(extra))


def _rows_by_id(directory: Path) -> dict[str, dict]:
    ds = open_dataset(directory)
    return {ds.ids[i]: ds.row(i) for i in range(len(ds))}


@pytest.fixture(scope="module")
def clean_run(tok, tiny_random_target: str, prompt_file: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("clean")
    with FakeVllmServer(tok) as srv:
        summary = run_regen(
            _recipe(tiny_random_target, prompt_file, [srv.url]), out, progress=False, openai_options=FAST
        )
    return out, summary


def test_clean_run_counts_bad_rows(clean_run) -> None:
    out, s = clean_run
    assert s.complete and not s.cached and s.samples == N_GOOD and s.assigned == N_GOOD + 3
    assert s.errors_by_reason == {"invalid_utf8": 1, "no_user_turn": 1, "unknown_role": 1}
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert {e["id"] for e in errors} >= {"bad-role", "no-user"} and all(e["detail"] for e in errors)
    rows = _rows_by_id(out)
    multi = rows["q000"]
    assert [m["role"] for m in multi["messages"]] == ["user", "assistant", "user", "assistant"]
    assert len(multi["turns"]) == 2 and sum(multi["loss_mask"]) == multi["num_generated_tokens"]
    assert json.loads((out / "summary.json").read_text())["generated_tokens"] == s.generated_tokens
    assert verify(out).ok


def _fault(seed: int, attempt: int) -> str:
    kind = seed % 6
    if kind == 0:
        return "500"  # never recovers: the sample must land in errors.jsonl
    if kind == 1:
        return ("500", "429", "drop")[attempt] if attempt < 3 else "ok"  # recovers on the 4th attempt
    if kind == 2:
        return "drop" if attempt == 0 else "ok"
    if kind == 3:
        return "400"  # not retried
    return "ok"


def test_faults_are_retried_and_failures_recorded(tok, tiny_random_target, prompt_file, clean_run, tmp_path) -> None:
    clean_dir, _ = clean_run
    clean = _rows_by_id(clean_dir)
    with FakeVllmServer(tok, policy=_fault) as srv:
        s = run_regen(
            _recipe(tiny_random_target, prompt_file, [srv.url]), tmp_path, progress=False, openai_options=FAST
        )
    assert srv.outcomes["500"] and srv.outcomes["429"] and srv.outcomes["drop"] and srv.outcomes["400"]
    expected: dict[str, str] = {}
    for sid, row in clean.items():  # the first turn whose seed the policy fails decides the reason
        for turn in row["turns"]:
            kind = turn["seed"] % 6
            if kind in (0, 3):
                expected[sid] = "http_500" if kind == 0 else "http_400"
                break
    got = _rows_by_id(tmp_path)
    assert set(got) == set(clean) - set(expected)
    assert all(got[sid] == clean[sid] for sid in got)  # retried requests give the same records
    errors = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    failed = {e["id"]: e for e in errors if e["reason"].startswith("http_")}
    assert {k: v["reason"] for k, v in failed.items()} == expected
    assert all("4 attempts" in e["detail"] for e in failed.values() if e["reason"] == "http_500")
    assert s.complete and s.samples + s.errors == s.assigned


def test_load_spreads_and_a_dead_endpoint_is_survived(tok, tiny_random_target, prompt_file, clean_run, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    with FakeVllmServer(tok, latency_s=0.01) as a, FakeVllmServer(tok, latency_s=0.01) as b:
        recipe = _recipe(tiny_random_target, prompt_file, [a.url, dead, b.url])
        s = run_regen(recipe, tmp_path, progress=False, openai_options=FAST)
    assert s.samples == N_GOOD and a.requests > 10 and b.requests > 10
    assert _rows_by_id(tmp_path) == _rows_by_id(clean_run[0])


def test_cached_rerun_and_fingerprint_mismatch(tok, tiny_random_target, prompt_file, clean_run) -> None:
    out, _ = clean_run
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    s = run_regen(_recipe(tiny_random_target, prompt_file, ["http://127.0.0.1:9"]), out, progress=False)
    assert s.cached and s.samples == N_GOOD and s.run_samples == 0  # no server needed: nothing was run
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    other = _recipe(tiny_random_target, prompt_file, ["http://127.0.0.1:9"], "regen.sampling.temperature=0.3")
    with pytest.raises(FingerprintMismatch, match="temperature"):
        run_regen(other, out, progress=False)


def test_parts_merge_check(tok, tiny_random_target, prompt_file, clean_run, tmp_path) -> None:
    with FakeVllmServer(tok) as srv:
        recipe = _recipe(tiny_random_target, prompt_file, [srv.url])
        summaries = [
            run_regen(recipe, tmp_path, num_shards=3, shard_index=i, progress=False, openai_options=FAST)
            for i in range(3)
        ]
    parts = sorted(tmp_path.glob("part-*"))
    assert [p.name for p in parts] == [f"part-{i:05d}-of-00003" for i in range(3)]
    assert sum(s.assigned for s in summaries) == N_GOOD + 3
    report = merge_check([tmp_path])
    assert report.ok, report.problems
    assert report.samples == N_GOOD and report.errors == 3
    cli_run = CliRunner().invoke(app, ["inspect", str(tmp_path)])  # `dspark inspect` merge-checks parts
    assert cli_run.exit_code == 0 and "3 parts" in cli_run.output, cli_run.output
    merged = {}
    for p in parts:
        merged.update(_rows_by_id(p))
    assert merged == _rows_by_id(clean_run[0])  # the parts are exactly the single-machine dataset
    assert not merge_check(parts[:2]).ok  # a missing part
    bad = merge_check([parts[0], parts[0], parts[1], parts[2]])
    assert not bad.ok and any("in both" in p for p in bad.problems)


def _regen_child(recipe_json: str, out: str) -> None:
    """Body of the process the kill test SIGKILLs (forked, so it starts without re-importing anything)."""
    run_regen(Recipe.model_validate_json(recipe_json), out, progress=False, openai_options=FAST)


def test_sigkill_at_random_points_then_resume(tok, tiny_random_target, prompt_file, clean_run, tmp_path) -> None:
    """Kill the regen process (SIGKILL) at seeded random points, rerun the same command until it finishes;
    the result must be the uninterrupted run's dataset: same shard bytes, every prompt exactly once."""
    rng = random.Random(1234)
    out = tmp_path / "out"
    fork = multiprocessing.get_context("fork")
    with FakeVllmServer(tok, latency_s=0.02) as srv:
        recipe = _recipe(tiny_random_target, prompt_file, [srv.url], "regen.concurrency=2").model_dump_json()
        kills = 0
        for attempt in range(10):
            proc = fork.Process(target=_regen_child, args=(recipe, str(out)))
            proc.start()
            target = srv.requests + rng.randint(1, 20)
            deadline = time.monotonic() + 120
            while proc.is_alive() and srv.requests < target and time.monotonic() < deadline:
                time.sleep(0.002)
            if proc.is_alive() and attempt < 9:
                time.sleep(rng.random() * 0.05)  # land anywhere, commits included
                os.kill(proc.pid, signal.SIGKILL)
                proc.join()
                kills += 1
                continue
            proc.join(timeout=300)
            assert proc.exitcode == 0
            break
    assert kills >= 3, "the seeded kill points should interrupt the run several times"
    clean_dir, clean_summary = clean_run
    assert verify(out).ok
    assert sorted(p.name for p in out.glob("shard-*")) == sorted(p.name for p in clean_dir.glob("shard-*"))
    for shard in clean_dir.glob("shard-*"):
        assert (out / shard.name).read_bytes() == shard.read_bytes(), shard.name
    assert (out / "errors.jsonl").read_bytes() == (clean_dir / "errors.jsonl").read_bytes()
    ds = open_dataset(out)
    assert len(ds.ids) == len(set(ds.ids)) == clean_summary.samples
    assert not list(out.glob(".tmp-*"))


def test_cli_regen_over_http_then_cached(tok, tiny_random_target, prompt_file, clean_run, tmp_path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    args = [
        "regen", "--set", f"target.model={tiny_random_target}", "--set", f"prompts.source={prompt_file}",
        "--set", "prompts.num_prompts=null", "--set", "regen.shard_samples=4",
        "--set", "regen.sampling.max_new_tokens=16", "--turns", "all", "--backend", "openai",
        "--out", str(tmp_path), "--no-progress",
    ]  # fmt: skip
    runner = CliRunner()
    with FakeVllmServer(tok) as srv:
        first = runner.invoke(app, [*args, "--endpoint", srv.url])
    assert first.exit_code == 0, first.output
    assert _rows_by_id(tmp_path) == _rows_by_id(clean_run[0])
    again = runner.invoke(app, [*args, "--endpoint", "http://127.0.0.1:9"])
    assert again.exit_code == 0 and "cached" in again.output
    assert json.loads((tmp_path / "summary.json").read_text())["cached"] is True
    bad = runner.invoke(app, [*args, "--endpoint", "http://127.0.0.1:9", "--set", "seed=5"])
    assert bad.exit_code == 1 and "seed" in bad.output  # another fingerprint: refused, naming the field
