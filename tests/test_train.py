"""The trainer: determinism, exact resume, caching, refusals, the CLI, and a 2-process gloo run.

Every run is tiny (1 draft layer, 64-token documents, a few steps) on the random tiny target and a small
hidden-state dataset written with the real store, so the whole file takes well under two minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dspark_data.mismatch import DataMismatch
from dspark_data.store import HiddenStateWriter
from dspark_data.vocab import build_vocab
from dspark_train.checkpoint import Checkpointer, CheckpointMismatch
from dspark_train.data import SyntheticHiddenSource
from dspark_train.entrypoint import run
from dspark_train.resume import RunConflict
from dspark_train.schedule import ScheduleConfig, lr_at
from dspark_train.trainer import TrainOptions
from schemas.loading import load_recipe

ROOT = Path(__file__).resolve().parent.parent
AUX = [1, 3, 5]
SMALL = [
    "seq_len=64",
    "model.num_layers=1",
    "vocab.draft_vocab_size=256",
    "train.batch_size=2",
    "train.grad_accum=2",
    "train.max_anchors=8",
    "train.val_fraction=0.1",
    "train.val_every=4",
    "train.save_every=3",
    "train.log_every=2",
    "train.num_workers=2",
]


def _write_hidden(directory: Path, n: int, *, layer_ids: list[int], hidden_size: int, vocab: int = 2048) -> Path:
    src = SyntheticHiddenSource(n, layer_ids=layer_ids, hidden_size=hidden_size, vocab_size=vocab, min_len=24,
                                max_len=64, seed=1)
    with HiddenStateWriter(directory, layer_ids=layer_ids, hidden_size=hidden_size, codec="zstd-split",
                           target="tiny:random", seq_len=64, shard_bytes=1 << 16) as w:
        for i in range(len(src)):
            s = src.get(i)
            w.write(s.id, s.input_ids, s.loss_mask, s.hidden)
    return directory


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_random_target) -> dict:
    """A 48-sample hidden dataset (layers 1, 3, 5 + last layer 6, H=128) and its 256-entry draft vocab."""
    root = tmp_path_factory.mktemp("train-data")
    hidden = _write_hidden(root / "hidden", 48, layer_ids=[*AUX, 6], hidden_size=128)
    build_vocab(hidden, root / "vocab", size=256, target_vocab_size=2048)
    return {"target": tiny_random_target, "hidden": hidden, "vocab": root / "vocab" / "vocab.safetensors"}


def _recipe(data: dict, *extra: str):
    return load_recipe("tiny", [f"target.model={data['target']}", *SMALL, *extra])


def _opts(data: dict, out: Path, **kw) -> TrainOptions:
    kw.setdefault("max_steps", 8)
    return TrainOptions(out_dir=out, data_dir=data["hidden"], vocab_path=data["vocab"], progress=False, **kw)


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    ckpts = out / "checkpoints"
    return load_file(str(ckpts / (ckpts / "latest").read_text().strip() / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lr_schedule_warmup_cosine() -> None:
    cfg = ScheduleConfig(lr=1.0, total_steps=100, warmup_steps=10, kind="cosine", min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


def test_same_seed_bit_identical_and_exact_resume(data, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = _recipe(data)
    a = run(recipe, _opts(data, tmp_path / "a"))
    run(recipe, _opts(data, tmp_path / "b"))
    # Killed after step 5 (last checkpoint: step 3), then resumed: steps 4-5 are redone from the checkpoint.
    stopped = run(recipe, _opts(data, tmp_path / "c", stop_after=5))
    assert stopped == {"stopped_at": 5}
    assert (tmp_path / "c" / "checkpoints" / "latest").read_text().strip() == "step-000003"
    assert (tmp_path / "c" / "data-verified.json").is_file()  # so the resume below does not re-hash the data

    def no_rehash(directory: object) -> None:
        raise AssertionError(f"the resume re-hashed {directory} although its files did not change")

    monkeypatch.setattr("dspark_data.store.verify", no_rehash)
    c = run(recipe, _opts(data, tmp_path / "c"))
    monkeypatch.undo()
    wa = _final_weights(tmp_path / "a")
    assert _same(wa, _final_weights(tmp_path / "b"))
    assert _same(wa, _final_weights(tmp_path / "c"))
    assert a["steps"] == c["steps"] == 8 and a["tokens"] == c["tokens"]
    assert a["val_mean_accepted_length"] == c["val_mean_accepted_length"]
    for key in ("val_full_accuracy", "val_acceptance_rate", "val_confidence_abs_error", "val_acc_pos7"):
        assert key in a
    # metrics.jsonl of the resumed run holds each validation step once.
    steps = [json.loads(x)["step"] for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "val"]
    assert steps == [0, 4, 8]
    # Another seed: other weights.
    run(_recipe(data, "seed=1"), _opts(data, tmp_path / "d"))
    assert not _same(wa, _final_weights(tmp_path / "d"))


def test_cached_conflict_and_more_steps(data, tmp_path) -> None:
    recipe = _recipe(data)
    out = tmp_path / "run"
    first = run(recipe, _opts(data, out, max_steps=3))
    assert first["cached"] is False
    again = run(recipe, _opts(data, out, max_steps=3))
    assert again["cached"] is True and again["steps"] == 3
    assert json.loads((out / "summary.json").read_text())["cached"] is True
    # Logging knobs do not change the plan.
    assert run(_recipe(data, "train.log_every=1", "train.num_workers=0"), _opts(data, out, max_steps=3))["cached"]
    with pytest.raises(RunConflict, match=r"train\.lr"):
        run(_recipe(data, "train.lr=1e-3"), _opts(data, out, max_steps=3))
    more = run(recipe, _opts(data, out, max_steps=5))
    assert more["cached"] is False and more["steps"] == 5
    with pytest.raises(RunConflict, match="no checkpoint"):
        run(recipe, _opts(data, tmp_path / "empty", resume=True))


def test_resume_takes_architecture_from_checkpoint(data, tmp_path) -> None:
    out = tmp_path / "run"
    run(_recipe(data), _opts(data, out, max_steps=2))
    summary = run(_recipe(data, "model.num_layers=2"), _opts(data, out, max_steps=3, resume=True))
    assert summary["steps"] == 3
    assert not any(k.startswith("layers.1.") for k in _final_weights(out))  # still one layer


def test_refuses_mismatched_data(data, tmp_path) -> None:
    with pytest.raises(DataMismatch, match=r"capture\.aux_layers.*\[2\]"):
        run(_recipe(data, "capture.aux_layers=[1, 2, 5]"), _opts(data, tmp_path / "x"))
    wide = _write_hidden(tmp_path / "wide", 4, layer_ids=[*AUX, 6], hidden_size=64)
    with pytest.raises(DataMismatch, match="hidden size 64.*hidden_size=128"):
        run(_recipe(data), TrainOptions(out_dir=tmp_path / "y", data_dir=wide, vocab_path=data["vocab"]))
    no_last = _write_hidden(tmp_path / "nolast", 4, layer_ids=AUX, hidden_size=128)
    with pytest.raises(DataMismatch, match="last layer 6"):
        run(_recipe(data), TrainOptions(out_dir=tmp_path / "z", data_dir=no_last, vocab_path=data["vocab"]))
    with pytest.raises(DataMismatch, match="draft_vocab_size=512"):
        run(_recipe(data, "vocab.draft_vocab_size=512"), _opts(data, tmp_path / "v"))


def test_refuses_a_vocab_changed_after_dspark_vocab(data, tmp_path) -> None:
    """The vocab file is checked against the sha256 in its vocab.json: one flipped byte, or a file without
    its vocab.json, is refused naming the file; the untouched copy trains."""
    import shutil

    vocab_dir = shutil.copytree(data["vocab"].parent, tmp_path / "vocab")
    blob = bytearray((vocab_dir / "vocab.safetensors").read_bytes())
    blob[-1] ^= 0x01  # the last byte of the counts tensor: still a valid safetensors file
    (vocab_dir / "vocab.safetensors").write_bytes(bytes(blob))
    tampered = TrainOptions(out_dir=tmp_path / "t", data_dir=data["hidden"], vocab_path=vocab_dir / "vocab.safetensors")
    with pytest.raises(DataMismatch, match=r"vocab\.safetensors: sha256 .* does not match .*vocab\.json"):
        run(_recipe(data), tampered)
    assert not (tmp_path / "t" / "checkpoints").exists()
    (vocab_dir / "vocab.json").unlink()
    with pytest.raises(DataMismatch, match=r"vocab\.safetensors: no vocab\.json beside it"):
        run(_recipe(data), tampered)
    from dspark_data.vocab import load_draft_vocab

    assert load_draft_vocab(data["vocab"], target_vocab_size=2048, draft_vocab_size=256).t2d.sum() == 256


def test_checkpoint_layout_and_world_size_check(data, tmp_path) -> None:
    out = tmp_path / "run"
    run(_recipe(data), _opts(data, out, max_steps=3))
    step = out / "checkpoints" / "step-000003"
    names = sorted(p.name for p in step.iterdir())
    assert names == ["model.safetensors", "optimizer.json", "optimizer.safetensors", "recipe.json",
                     "rng-rank00000.safetensors", "state.json"]
    state = json.loads((step / "state.json").read_text())
    assert state["final"] and state["world_size"] == 1 and state["loader"]["epoch"] == 0
    assert json.loads((step / "recipe.json").read_text())["train"]["max_anchors"] == 8
    opt = load_file(str(step / "optimizer.safetensors"))
    assert any(k.endswith("/exp_avg_sq") for k in opt) and any(k.endswith("/step") for k in opt)
    # A checkpoint from 2 ranks cannot be resumed by 1.
    state["world_size"] = 2
    (step / "state.json").write_text(json.dumps(state))
    ckpt = Checkpointer(out)
    with pytest.raises(CheckpointMismatch, match="2 ranks"):
        ckpt.load(step, model=torch.nn.Linear(1, 1), optimizer=torch.optim.SGD(torch.nn.Linear(1, 1).parameters()))


def _torchrun(data: dict, out: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            "-m", "dspark_train", "--recipe", "tiny", "--set", f"target.model={data['target']}",
            "--data", str(data["hidden"]), "--vocab", str(data["vocab"]), "--out", str(out), "--no-progress"]
    for item in SMALL:
        argv += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*argv, *extra], capture_output=True, text=True, env=env, timeout=300)


def test_two_process_gloo_ddp_exact_resume(data, tmp_path) -> None:
    full = _torchrun(data, tmp_path / "full", "--max-steps", "6")
    assert full.returncode == 0, full.stderr[-3000:]
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["val_mean_accepted_length"] >= 1.0
    assert (tmp_path / "full" / "checkpoints" / "step-000006" / "rng-rank00001.safetensors").is_file()
    cut = _torchrun(data, tmp_path / "cut", "--max-steps", "6", "--stop-after", "4")
    assert cut.returncode == 0, cut.stderr[-3000:]
    resumed = _torchrun(data, tmp_path / "cut", "--max-steps", "6")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _same(_final_weights(tmp_path / "full"), _final_weights(tmp_path / "cut"))
    # One process cannot resume a 2-rank run.
    with pytest.raises(CheckpointMismatch, match="2 ranks"):
        run(_recipe(data), _opts(data, tmp_path / "cut", max_steps=7, resume=True))


def test_two_process_fsdp2_save_and_resume(data, tmp_path) -> None:
    """FSDP2 on CPU/gloo: sharded training, full-state checkpoints, and resuming them."""
    fsdp = ["--max-steps", "4", "--set", "train.fsdp=true"]
    cut = _torchrun(data, tmp_path / "fsdp", *fsdp, "--stop-after", "3")
    assert cut.returncode == 0, cut.stderr[-3000:]
    weights = _final_weights(tmp_path / "fsdp")  # step 3, gathered from both shards
    assert weights["fc.weight"].shape == (128, 3 * 128)
    resumed = _torchrun(data, tmp_path / "fsdp", *fsdp)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step-000003" in resumed.stderr + resumed.stdout
    assert json.loads((tmp_path / "fsdp" / "summary.json").read_text())["steps"] == 4


def _vocab_used(train_dir: Path) -> str:
    ckpt = Checkpointer(train_dir)
    return ckpt.read_state(ckpt.latest())["vocab_fingerprint"]


def test_cli_train_reads_only_what_it_is_given(data, tmp_path, monkeypatch) -> None:
    """A `runs/` folder in the working directory (as `make demo` leaves one) holding a garbage vocab for the
    recipe's name is never read: the vocab is --vocab, or the one built from --data beside it."""
    import hashlib
    import shutil

    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    base = [f"target.model={data['target']}", *SMALL, "name=tiny"]
    sets = [x for item in base for x in ("--set", item)]
    monkeypatch.chdir(tmp_path)
    for name in ("tiny", "test"):  # decoys where the old code looked: runs/<recipe>/{hidden,vocab}
        (tmp_path / "runs" / name / "vocab").mkdir(parents=True)
        (tmp_path / "runs" / name / "vocab" / "vocab.safetensors").write_bytes(b"garbage, not a vocab")
        (tmp_path / "runs" / name / "hidden").mkdir()
    no_data = runner.invoke(app, ["train", *sets, "--out", str(tmp_path / "o0"), "--max-steps", "2"])
    assert no_data.exit_code == 1 and "pass --data" in no_data.output
    missing = runner.invoke(app, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 1 and "dump-hidden" in missing.output
    args = ["train", *sets, "--data", str(data["hidden"]), "--max-steps", "2"]
    beside = runner.invoke(app, [*args, "--out", str(tmp_path / "o1")])  # DATA/../vocab was built from DATA
    assert beside.exit_code == 0, beside.output
    digest = hashlib.sha256(data["vocab"].read_bytes()).hexdigest()[:16]
    assert _vocab_used(tmp_path / "o1") == digest
    assert json.loads((tmp_path / "o1" / "summary.json").read_text())["steps"] == 2
    # The same data elsewhere, with no vocab beside it: the 256-entry vocab must be named, as a dir or a file.
    lone = tmp_path / "lone" / "hidden"
    shutil.copytree(data["hidden"], lone)
    lone_args = ["train", *sets, "--data", str(lone), "--max-steps", "2"]
    no_vocab = runner.invoke(app, [*lone_args, "--out", str(tmp_path / "o2")])
    assert no_vocab.exit_code == 1 and "--vocab" in no_vocab.output
    for i, vocab in enumerate((data["vocab"].parent, data["vocab"])):
        ok = runner.invoke(app, [*lone_args, "--vocab", str(vocab), "--out", str(tmp_path / f"o{3 + i}")])
        assert ok.exit_code == 0, ok.output
        assert _vocab_used(tmp_path / f"o{3 + i}") == digest
    # A vocab beside the data but counted from other data is not taken either.
    other = tmp_path / "other"
    shutil.copytree(lone, other / "hidden")
    build_vocab(_write_hidden(tmp_path / "x" / "hidden", 8, layer_ids=[*AUX, 6], hidden_size=128),
                other / "vocab", size=256, target_vocab_size=2048)
    foreign = runner.invoke(app, ["train", *sets, "--data", str(other / "hidden"), "--max-steps", "2",
                                  "--out", str(tmp_path / "o5")])
    assert foreign.exit_code == 1 and "--vocab" in foreign.output
    assert not (tmp_path / "runs" / "tiny" / "train").exists()  # every output went where --out said


def test_dspark_train_and_module_share_one_parser() -> None:
    """`dspark train --help` and `python -m dspark_train --help` list the same flags (one definition)."""
    import re

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    helps = [subprocess.run([sys.executable, "-m", *cmd, "--help"], capture_output=True, text=True, env=env,
                            timeout=120, check=True).stdout for cmd in (["cli", "train"], ["dspark_train"])]
    flags = [set(re.findall(r"--[a-z][a-z-]+", h)) for h in helps]
    assert flags[0] == flags[1] and {"--vocab", "--data", "--nproc-per-node", "--stream", "--token"} <= flags[0]
    assert "usage: dspark train" in helps[0] and "usage: python -m dspark_train" in helps[1]


def test_torchrun_relaunch_keeps_flags_and_hides_the_token() -> None:
    from dspark_train.entrypoint import torchrun_argv

    argv = torchrun_argv(["--data", "D", "--nproc-per-node", "2", "--token", "s3cret", "--vocab=V"], 2)
    assert argv[argv.index("-m", 2) + 1] == "dspark_train" and "--nproc-per-node=2" in argv
    assert "s3cret" not in argv and argv[-2:] == ["--nproc-per-node", "1"] and "--vocab=V" in argv


def test_markov_ablation_table(tmp_path) -> None:
    from dspark_train.ablation import compare

    figures = {"val_mean_accepted_length": 2.5, "val_full_accuracy": 0.4, "val_acceptance_rate": 0.35,
               "val_confidence_abs_error": 0.1, "val_acc_pos1": 0.5, "val_acc_pos2": 0.3}
    for name, scale in (("on", 1.0), ("off", 0.5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({k: v * scale for k, v in figures.items()}))
    step0 = {"kind": "val", "step": 0, "accepted_length": 1.0, "acc_pos_1": 0.0, "acc_pos_2": 0.0}
    (tmp_path / "on" / "metrics.jsonl").write_text(json.dumps(step0) + "\n")
    rows = compare(tmp_path / "on", tmp_path / "off", tmp_path / "cmp")
    assert rows["Markov off (rank 0)"]["val_acc_pos2"] == pytest.approx(0.15)
    table = (tmp_path / "cmp" / "markov.md").read_text()
    assert "| DSpark (Markov on) | 2.500 |" in table and "acc@2" in table and "| untrained | 1.000 |" in table


def test_skip_samples_without_stored_data_is_refused() -> None:
    """`--skip-samples` names samples of a stored dataset; with --stream or --synthetic it used to be
    silently ignored."""
    from dspark_train.inputs import load_inputs

    recipe = load_recipe("tiny", SMALL)
    for kwargs in ({"stream": object()}, {"synthetic": 8}):
        with pytest.raises(DataMismatch, match="drop --skip-samples"):
            load_inputs(recipe, data_dir=None, vocab_path=None, skip_samples=("s1",), **kwargs)
