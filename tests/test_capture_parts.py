"""Capture split across machines and training on the parts (issue 15, "Capture across nodes").

The same regen data is captured as one dataset and as 3 parts (`dump-hidden --num-shards 3
--shard-index i`, hf backend: one forward per sequence, so a sample's states do not depend on which
machine captured it). The parent of the parts is then one dataset for `vocab`, `train`, `inspect` and
`verify`, merge-checked and in an order independent of the split, and training on it gives the same
loss curve, bit for bit, as training on the single dataset. SLURM's variables map to the right part
(capture) and rank (training), unit-tested and in real runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_capture_support import random_sequences, tiny_recipe
from typer.testing import CliRunner

from dspark_data.capture import dump_hidden
from dspark_data.prompts.select import part_of, shard_from_env
from dspark_data.regen.merge import merge_check
from dspark_data.store import ShardWriter, StoreError, open_hidden
from dspark_data.store.parts import PartsDataset, open_hidden_any
from dspark_data.targets import load_target_info
from dspark_data.vocab import build_vocab
from dspark_train.entrypoint import run
from dspark_train.launch_env import first_host, slurm_dist_env
from dspark_train.trainer import TrainOptions
from schemas.loading import load_recipe
from schemas.regen import REGEN_KIND

REPO = Path(__file__).resolve().parent.parent
HF = "capture.backend=hf"
TRAIN = ["seq_len=128", "model.num_layers=1", "vocab.draft_vocab_size=256", "train.batch_size=2",
         "train.max_anchors=8", "train.val_fraction=0.15", "train.val_every=3", "train.save_every=3",
         "train.log_every=1", "train.num_workers=0"]


def _regen_parts(parent: Path, seqs: list[list[int]], ids: list[str], num_shards: int) -> None:
    """Regen-kind parts as `dspark regen --num-shards N` lays them out (fingerprint + assigned ids)."""
    from regen_schema import REGEN_SCHEMA

    for i in range(num_shards):
        mine = [(sid, seq) for sid, seq in zip(ids, seqs, strict=True) if part_of(sid, num_shards) == i]
        fp = {"test": "capture", "num_shards": num_shards, "shard_index": i}
        d = parent / f"part-{i:05d}-of-{num_shards:05d}"
        with ShardWriter(d, REGEN_KIND, REGEN_SCHEMA, fp, shard_rows=16) as writer:
            for sid, seq in mine:
                writer.write({"id": sid, "input_ids": seq, "loss_mask": [k >= 8 for k in range(len(seq))]})


@pytest.fixture(scope="module")
def captured(tmp_path_factory, tiny_random_target) -> dict:
    """One regen dataset (as 2 regen parts too), captured whole and as 3 hidden-state parts."""
    from test_capture_support import make_regen

    root = tmp_path_factory.mktemp("parts")
    info = load_target_info(tiny_random_target)
    seqs = random_sequences(20, info.vocab_size, lo=40, hi=128, seed=3)
    ids = make_regen(root / "regen", seqs)
    _regen_parts(root / "regen-parts", seqs, ids, 2)
    recipe = tiny_recipe(tiny_random_target, HF, "seq_len=128")
    dump_hidden(recipe, root / "regen", root / "single")
    for i in range(3):
        dump_hidden(recipe, root / "regen-parts", root / "parts", num_shards=3, shard_index=i)
    return {"root": root, "target": tiny_random_target, "ids": ids, "recipe": recipe}


def test_shard_and_rank_from_slurm_environment():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_NODEID": "2",
           "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_NODELIST": "gpu[03-06,9]"}
    got = slurm_dist_env(env)
    assert got == {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "NODE_RANK": "2",
                   "MASTER_ADDR": "gpu03", "MASTER_PORT": "29500"}
    assert slurm_dist_env({**env, "RANK": "0"}) == {}  # torchrun already set it up
    assert slurm_dist_env({**env, "SLURM_NTASKS": "1"}) == {}  # one task: a world of one
    squeezed = {**env, "SLURM_TASKS_PER_NODE": "8(x2)", "SLURM_NTASKS_PER_NODE": ""}
    assert slurm_dist_env(squeezed)["LOCAL_WORLD_SIZE"] == "8"
    assert first_host("node7") == "node7" and first_host("a[1-2],b3") == "a1"
    with pytest.MonkeyPatch.context() as mp:
        for k in ("WORLD_SIZE", "RANK"):
            mp.delenv(k, raising=False)
        mp.setenv("SLURM_NTASKS", "3")
        mp.setenv("SLURM_PROCID", "2")
        assert shard_from_env(None, None) == (3, 2)  # capture: part 2 of 3
        assert shard_from_env(4, 1) == (4, 1)  # flags win


def test_parts_are_one_dataset_with_the_single_capture_bytes(captured):
    root = captured["root"]
    single = open_hidden(root / "single")
    parts = open_hidden_any(root / "parts")
    assert isinstance(parts, PartsDataset) and len(parts.parts) == 3
    assert sorted(parts.ids) == sorted(single.ids) == sorted(captured["ids"])
    for sid in captured["ids"]:
        a, b = single[single.index_of(sid)], parts[parts.index_of(sid)]
        assert torch.equal(a.hidden, b.hidden) and torch.equal(a.input_ids, b.input_ids)
        assert part_of(sid, 3) == int(parts.part_of(parts.index_of(sid))[0].manifest.fingerprint["shard_index"])
    # the order does not depend on the split: captured as 2 parts, the parent reads in the same order
    for i in range(2):
        dump_hidden(captured["recipe"], root / "regen", root / "two-parts", num_shards=2, shard_index=i)
    assert open_hidden_any(root / "two-parts").ids == parts.ids
    report = merge_check([root / "parts"])
    assert report.ok and report.parts == 3 and report.samples == len(captured["ids"]), report.problems


def test_merge_problems_are_named(captured, tmp_path):
    broken = tmp_path / "parts"
    shutil.copytree(captured["root"] / "parts", broken)
    shutil.rmtree(broken / "part-00001-of-00003")
    with pytest.raises(StoreError, match="missing.*part-00001-of-00003"):
        open_hidden_any(broken)
    # a part captured with other settings
    other = tmp_path / "other"
    shutil.copytree(captured["root"] / "parts", other)
    shutil.rmtree(other / "part-00002-of-00003")
    recipe = tiny_recipe(captured["target"], HF, "seq_len=96")
    dump_hidden(recipe, captured["root"] / "regen-parts", other, num_shards=3, shard_index=2)
    with pytest.raises(StoreError, match=r"different settings.*seq_len"):
        open_hidden_any(other)
    # an id in two parts
    dup = tmp_path / "dup"
    shutil.copytree(captured["root"] / "parts", dup)
    shutil.copytree(dup / "part-00000-of-00003", dup / "part-00003-of-00003")
    with pytest.raises(StoreError):
        open_hidden_any(dup)


def test_inspect_verify_and_vocab_on_the_parent(captured, tmp_path):
    from cli.main import app

    root = captured["root"]
    r = CliRunner().invoke(app, ["inspect", str(root / "parts")])
    assert r.exit_code == 0 and "3 parts" in r.output, r.output
    r = CliRunner().invoke(app, ["verify", str(root / "parts")])
    assert r.exit_code == 0 and r.output.count("OK") == 4, r.output  # 3 parts + the merge check
    a = build_vocab(root / "single", tmp_path / "va", size=256, target_vocab_size=2048)
    b = build_vocab(root / "parts", tmp_path / "vb", size=256, target_vocab_size=2048)
    assert (a.tokens, a.samples, a.coverage) == (b.tokens, b.samples, b.coverage)
    ta = (tmp_path / "va" / "vocab.safetensors").read_bytes()
    assert ta == (tmp_path / "vb" / "vocab.safetensors").read_bytes()


TIMING = ("tokens_per_s", "data_wait_frac", "time", "elapsed_s")


def _losses(out: Path) -> list[dict]:
    """metrics.jsonl rows (train: loss, tv, ce, grad_norm...; val: acceptance figures) without timings."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_training_on_parts_equals_training_on_the_single_dataset(captured, tmp_path):
    root = captured["root"]
    recipe = load_recipe("tiny", [f"target.model={captured['target']}", *TRAIN])
    curves = []
    for name in ("single", "parts"):
        build_vocab(root / name, tmp_path / f"vocab-{name}", size=256, target_vocab_size=2048)
        run(recipe, TrainOptions(out_dir=tmp_path / f"train-{name}", data_dir=root / name, device="cpu",
                                 vocab_path=tmp_path / f"vocab-{name}" / "vocab.safetensors", max_steps=6,
                                 progress=False))
        curves.append(_losses(tmp_path / f"train-{name}"))
    assert [r["step"] for r in curves[0] if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in curves[0] if r["kind"] == "val"] == [0, 3, 6]
    assert all("loss" in r for r in curves[0] if r["kind"] == "train")
    assert curves[0] == curves[1]  # bit-identical train losses and validation figures


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def test_capture_under_slurm_writes_its_part(captured, tmp_path):
    """`srun dspark dump-hidden` as task 1 of 3: no flags, the part comes from SLURM_PROCID/SLURM_NTASKS."""
    root = captured["root"]
    args = [sys.executable, "-m", "cli", "dump-hidden", "--recipe", "tiny", "--set",
            f"target.model={captured['target']}", "--set", HF, "--set", "seq_len=128",
            "--data", str(root / "regen-parts"), "--out", str(tmp_path / "hid")]
    env = _env(SLURM_PROCID="1", SLURM_NTASKS="3", SLURM_LOCALID="0", SLURM_NODEID="1",
               SLURM_JOB_NODELIST="n[1-3]")
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in (tmp_path / "hid").iterdir()] == ["part-00001-of-00003"]
    mine = open_hidden(tmp_path / "hid" / "part-00001-of-00003")
    ref = open_hidden(root / "parts" / "part-00001-of-00003")
    assert mine.ids == ref.ids and mine.ids and all(part_of(s, 3) == 1 for s in mine.ids)
    assert mine.manifest.fingerprint_hash == ref.manifest.fingerprint_hash


def test_training_under_slurm_forms_the_world_from_its_variables(captured, tmp_path):
    """Two tasks as `srun --ntasks 2 python -m dspark_train` starts them (no torchrun): ranks 0 and 1 of 2,
    training on the parent of the hidden-state parts."""
    from dspark_data.engine.server import free_port

    port = str(free_port())
    root = captured["root"]
    build_vocab(root / "parts", tmp_path / "vocab", size=256, target_vocab_size=2048)
    args = [sys.executable, "-m", "dspark_train", "--recipe", "tiny", "--set", f"target.model={captured['target']}"]
    args += [a for s in TRAIN for a in ("--set", s)]
    args += ["--data", str(root / "parts"), "--vocab", str(tmp_path / "vocab"), "--out", str(tmp_path / "train"),
             "--max-steps", "2", "--device", "cpu", "--no-progress"]
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_env(SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r), SLURM_NODEID="0",
                                       SLURM_NTASKS_PER_NODE="2", SLURM_JOB_NODELIST="localhost",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1"))
             for r in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "world size 2" in outs[0]
    state = json.loads((tmp_path / "train" / "summary.json").read_text())
    assert state["steps"] == 2


def test_dry_run_reads_a_regen_parent(captured):
    """`dump-hidden --dry-run --data PARENT` projects from the exact token counts of all regen parts."""
    root = captured["root"]
    one = dump_hidden(captured["recipe"], root / "regen", root / "unused", dry_run=True)
    parts = dump_hidden(captured["recipe"], root / "regen-parts", root / "unused", dry_run=True)
    assert parts["tokens_exact"] and (parts["samples"], parts["tokens"]) == (one["samples"], one["tokens"])
    assert not (root / "unused").exists()


def test_vllm_capture_in_parts(captured, tmp_path):
    """The default backend (the real vLLM engine) captures the regen parent as 2 parts: together they hold
    every sample once, each matching the hf capture within bf16 noise, and they merge-check as one dataset."""
    from test_capture_support import rel_err

    root = captured["root"]
    recipe = tiny_recipe(captured["target"], "seq_len=128", "capture.batch_size=8")
    for i in range(2):
        summary = dump_hidden(recipe, root / "regen-parts", tmp_path / "vllm", num_shards=2, shard_index=i)
        assert summary["backend"] == "vllm" and summary["out_dir"].endswith(f"part-{i:05d}-of-00002")
    assert merge_check([tmp_path / "vllm"]).ok
    parts, single = open_hidden_any(tmp_path / "vllm"), open_hidden(root / "single")
    assert sorted(parts.ids) == sorted(single.ids)
    worst = max(rel_err(parts[parts.index_of(s)].hidden, single[single.index_of(s)].hidden) for s in parts.ids)
    print(f"vllm parts vs hf single capture: worst relative error {worst:.1e}")
    assert worst < 2e-2
