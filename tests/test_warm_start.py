"""`dspark train --init-from DIR`: our export, a DFlash export (backbone only) and a checkpoint saved by
speculators 0.9.0 itself start a run; every mismatch with the recipe/target/vocab is named; the starting
point is part of the run's fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from speculators_fixture import speculators_checkpoint
from test_train import SMALL, _write_hidden

from dspark_data.vocab import build_vocab
from dspark_train.entrypoint import run
from dspark_train.export.exporter import export_draft
from dspark_train.export.weights import BACKBONE, DSPARK_HEADS
from dspark_train.resume import RunConflict
from dspark_train.trainer import Trainer, TrainOptions
from dspark_train.warm_start import InitFromError
from schemas.loading import load_recipe


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_random_target) -> dict:
    """Data, a 256-token vocab, a 4-step source run and its float32 dspark and dflash exports."""
    root = tmp_path_factory.mktemp("warm")
    hidden = _write_hidden(root / "hidden", 32, layer_ids=[1, 3, 5, 6], hidden_size=128)
    build_vocab(hidden, root / "vocab", size=256, target_vocab_size=2048)
    e = {"target": tiny_random_target, "hidden": hidden, "vocab": root / "vocab" / "vocab.safetensors"}
    run(_recipe(e), _opts(e, root / "source", max_steps=4))
    for fmt in ("dspark", "dflash"):
        export_draft(root / "source", root / f"export-{fmt}", fmt=fmt, dtype="float32")
    return {**e, "root": root}


def _recipe(e: dict, *extra: str):
    return load_recipe("tiny", [f"target.model={e['target']}", *SMALL, *extra])


def _opts(e: dict, out: Path, vocab: bool = True, **kw) -> TrainOptions:
    return TrainOptions(out_dir=out, data_dir=e["hidden"], vocab_path=e["vocab"] if vocab else None, progress=False,
                        **kw)


def _val(out: Path, step: int) -> dict:
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "val" and record["step"] == step:
            return record
    raise AssertionError(f"no validation at step {step} in {out}")


def _trainer(recipe, opts) -> Trainer:
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return Trainer(recipe, opts)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def test_step0_validation_of_a_run_from_an_export_equals_the_exported_drafts(env, tmp_path) -> None:
    out = tmp_path / "warm"
    summary = run(_recipe(env), _opts(env, out, max_steps=2, init_from=env["root"] / "export-dspark"))
    exported = {k: v for k, v in _val(env["root"] / "source", 4).items() if k != "step"}
    started = {k: v for k, v in _val(out, 0).items() if k != "step"}
    assert started == exported  # the same draft scored on the same held-out split
    fresh = {k: v for k, v in _val(env["root"] / "source", 0).items() if k != "step"}
    assert started != fresh  # and not the untrained draft's figures
    init = summary["init_from"]
    assert init["path"] == str(env["root"] / "export-dspark") and init["format"] == "dspark"
    assert len(init["weights_sha256"]) == 64
    state = json.loads((Path(summary["checkpoint"]) / "state.json").read_text())
    assert state["plan"]["init_from"]["weights_sha256"] == init["weights_sha256"]
    assert state["init_from"] == init
    with pytest.raises(RunConflict, match="init_from"):  # another starting point is another run
        run(_recipe(env), _opts(env, out, max_steps=2))


def test_dflash_export_loads_the_backbone_and_heads_start_fresh(env, tmp_path) -> None:
    exported = load_file(str(env["root"] / "export-dflash" / "model.safetensors"))
    warm = _trainer(_recipe(env), _opts(env, tmp_path / "a", init_from=env["root"] / "export-dflash"))
    fresh = _trainer(_recipe(env), _opts(env, tmp_path / "b"))
    warm_sd, fresh_sd = warm.model.state_dict(), fresh.model.state_dict()
    backbone = [n for n in warm_sd if BACKBONE.match(n)]
    heads = [n for n in warm_sd if DSPARK_HEADS.match(n)]
    assert backbone and heads and not any(DSPARK_HEADS.match(n) for n in exported)
    assert all(torch.equal(warm_sd[n], exported[n]) for n in backbone)
    assert not all(torch.equal(warm_sd[n], fresh_sd[n]) for n in backbone)
    assert all(torch.equal(warm_sd[n], fresh_sd[n]) for n in heads)  # the seeded fresh init
    assert any("Markov and confidence heads start fresh" in note for note in warm.notes)


def test_every_mismatch_is_named(env, tmp_path) -> None:
    export = env["root"] / "export-dspark"
    cases = [
        (("model.num_layers=2", "model.markov_rank=32"), True,
         ["model.num_layers: run 2", "model.markov_rank: run 32"]),
        (("capture.aux_layers=[1,5]",), True, ["capture.aux_layers: run [1, 5], draft [1, 3, 5]"]),
        (("vocab.draft_vocab_size=2048",), False, ["vocab.draft_vocab_size / --vocab: run 2048, dspark draft 256"]),
    ]
    for sets, vocab, needles in cases:
        with pytest.raises(InitFromError) as err:
            _trainer(_recipe(env, *sets), _opts(env, tmp_path / "x", vocab=vocab, init_from=export))
        for needle in needles:
            assert needle in str(err.value), str(err.value)
    other = env["root"] / "vocab-other"  # the same size from other data: other token ids
    _write_hidden(env["root"] / "hidden-other", 8, layer_ids=[1, 3, 5, 6], hidden_size=128, vocab=1024)
    build_vocab(env["root"] / "hidden-other", other, size=256, target_vocab_size=2048)
    with pytest.raises(InitFromError, match="the draft vocab differs"):
        _trainer(_recipe(env), TrainOptions(out_dir=tmp_path / "y", data_dir=env["hidden"], progress=False,
                                            vocab_path=other / "vocab.safetensors", init_from=export))
    with pytest.raises(InitFromError, match="no config.json"):
        _trainer(_recipe(env), _opts(env, tmp_path / "z", init_from=tmp_path))


def test_a_checkpoint_saved_by_speculators_loads(env, tmp_path) -> None:
    ckpt = speculators_checkpoint(env["target"], tmp_path / "speculators", num_layers=1, aux=[1, 3, 5],
                                  markov_rank=64, vocab_file=env["vocab"])  # the tiny recipe's draft
    if ckpt is None:
        pytest.skip("speculators 0.9.0 could not be downloaded from PyPI (no network)")
    assert json.loads((ckpt / "config.json").read_text())["speculators_version"] == "0.9.0"
    saved = load_file(str(ckpt / "model.safetensors"))
    warm = _trainer(_recipe(env), _opts(env, tmp_path / "w", init_from=ckpt))
    own = warm.model.state_dict()
    loaded = [n for n in saved if BACKBONE.match(n) or DSPARK_HEADS.match(n)]
    assert len(loaded) == len([n for n in own if BACKBONE.match(n) or DSPARK_HEADS.match(n)])
    assert all(torch.equal(own[n], saved[n].float()) for n in loaded)
    summary = run(_recipe(env), _opts(env, tmp_path / "w", max_steps=2, init_from=ckpt))
    assert summary["steps"] == 2 and summary["init_from"]["format"] == "dspark"


def test_cli_names_a_bad_init_from(env, tmp_path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    base = [f"target.model={env['target']}", *SMALL, "vocab.draft_vocab_size=256"]
    sets = [x for item in base for x in ("--set", item)]
    result = CliRunner().invoke(app, ["train", *sets, "--data", str(env["hidden"]), "--vocab", str(env["vocab"]),
                                      "--out", str(tmp_path / "o"), "--init-from", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "no config.json" in " ".join(result.output.split()), result.output


def test_a_sharded_checkpoint_loads_like_the_single_file(env, tmp_path) -> None:
    """Large drafts are saved as `model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`."""
    import shutil

    from safetensors.torch import save_file

    src = env["root"] / "export-dspark"
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(src / "config.json", sharded / "config.json")
    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    parts = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in parts.items():
        save_file({k: tensors[k] for k in keys}, str(sharded / file))
    index = {"metadata": {}, "weight_map": {k: f for f, keys in parts.items() for k in keys}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    one = _trainer(_recipe(env), _opts(env, tmp_path / "a", init_from=src)).model.state_dict()
    two = _trainer(_recipe(env), _opts(env, tmp_path / "b", init_from=sharded)).model.state_dict()
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
