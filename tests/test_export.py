"""`dspark export`: the speculators directory from a training checkpoint (names, shapes, config, card, cache).

The checkpoint here is written with the real `Checkpointer` from a `DSparkDraft` on the random tiny target
(with non-zero heads, so a dropped or mis-named head would show). The vLLM side is in test_export_vllm.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dspark_data.targets import load_target_info
from dspark_data.targets.weights import load_target_head
from dspark_train.checkpoint import Checkpointer
from dspark_train.export import export_draft, load_export, read_checkpoint
from dspark_train.export.weights import expected_shapes
from dspark_train.model import DraftConfig, DSparkDraft
from schemas.loading import load_recipe

VAL = {"accepted_length": 1.9, "full_accuracy": 0.41, "acceptance_rate": 0.37, "confidence_abs_error": 0.05,
       **{f"acc_pos_{k}": round(0.7 - 0.08 * k, 3) for k in range(1, 8)}}


def make_checkpoint(train_dir: Path, target: str, *sets: str, step: int = 5) -> Path:
    """A real checkpoint of a randomly initialised draft (heads perturbed away from their zero init)."""
    recipe = load_recipe("tiny", [f"target.model={target}", *sets])
    info = load_target_info(target)
    cfg = DraftConfig.from_recipe(recipe, info)
    head = load_target_head(target)
    gen = torch.Generator().manual_seed(0)
    t2d = torch.zeros(info.vocab_size, dtype=torch.bool)
    t2d[torch.randperm(info.vocab_size, generator=gen)[: cfg.draft_vocab_size]] = True
    model = DSparkDraft(cfg, head.embed.float(), head.lm_head.float(), t2d)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    state = {"draft_config": cfg.to_dict(), "data_fingerprint": "data-fp", "vocab_fingerprint": "vocab-fp",
             "target_dir": target, "plan_fingerprint": "plan-fp", "last_val": VAL}
    return Checkpointer(train_dir).save(step, model=model, optimizer=torch.optim.AdamW(model.parameters()),
                                        state=state, recipe=recipe.model_dump(mode="json"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_random_target) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("export") / "train", tiny_random_target)


def test_dspark_export_config_and_tensors(checkpoint: Path, tmp_path: Path, tiny_random_target: str):
    out = tmp_path / "export"
    summary = export_draft(checkpoint.parent.parent, out)  # the train dir: latest is found
    assert summary["cached"] is False and summary["format"] == "dspark" and summary["step"] == 5
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["speculators_model_type"] == "dspark" and cfg["architectures"] == ["Qwen3DSparkModel"]
    assert cfg["aux_hidden_state_layer_ids"] == [1, 3, 5] and cfg["block_size"] == 8
    assert cfg["draft_vocab_size"] == 1024 and cfg["target_hidden_size"] == 128 and cfg["mask_token_id"] == 8
    assert cfg["markov_rank"] == 64 and cfg["markov_head_type"] == "vanilla" and cfg["sample_from_anchor"] is False
    assert cfg["enable_confidence_head"] is True and cfg["confidence_head_with_markov"] is True
    tl = cfg["transformer_layer_config"]
    assert tl["model_type"] == "qwen3" and tl["num_hidden_layers"] == 2 and tl["vocab_size"] == 2048
    spec = cfg["speculators_config"]
    assert spec["algorithm"] == "dspark" and spec["default_proposal_method"] == "greedy"
    assert spec["proposal_methods"] == [{"proposal_type": "greedy", "speculative_tokens": 7, "verifier_accept_k": 1,
                                         "accept_tolerance": 0.0}]
    assert spec["verifier"] == {"name_or_path": str(Path(tiny_random_target).resolve()),
                                "architectures": ["LlamaForCausalLM"]}

    tensors = load_file(str(out / "model.safetensors"))
    draft = read_checkpoint(checkpoint)
    want = expected_shapes(draft.config, "dspark")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == want
    assert not any("embed_tokens" in k for k in tensors)
    assert tensors["fc.weight"].dtype == torch.bfloat16
    assert tensors["confidence_head.proj.weight"].dtype == torch.float32  # vLLM keeps this head in fp32
    assert tensors["d2t"].dtype == torch.int64 and tensors["t2d"].dtype == torch.bool
    t2d = draft.weights["t2d"]
    target_ids = t2d.nonzero().squeeze(-1)
    assert torch.equal(torch.arange(1024) + tensors["d2t"], target_ids)
    lm_head = load_target_head(tiny_random_target).lm_head
    assert torch.equal(tensors["lm_head.weight"], lm_head[target_ids].to(torch.bfloat16))
    w2 = "markov_head.markov_w2.weight"
    assert torch.equal(tensors[w2], draft.weights[w2].bfloat16())


def test_card_provenance_and_cache(checkpoint: Path, tmp_path: Path):
    out = tmp_path / "export"
    first = export_draft(checkpoint, out)
    card = (out / "README.md").read_text()
    assert "| mean accepted length | 1.900 |" in card and "data fingerprint `data-fp`" in card
    assert "0.620 / 0.540 / 0.460" in card and '"method": "dspark"' in card
    prov = json.loads((out / "dspark_export.json").read_text())
    assert prov["step"] == 5 and prov["draft_config"]["markov_rank"] == 64
    again = export_draft(checkpoint, out)
    assert again["cached"] is True and again["fingerprint"] == first["fingerprint"]
    other = export_draft(checkpoint, out, num_speculative_tokens=4)
    assert other["cached"] is False
    assert json.loads((out / "config.json").read_text())["speculators_config"]["proposal_methods"][0][
        "speculative_tokens"] == 4
    assert not list(tmp_path.glob(".tmp-*"))


def test_dflash_export_is_the_backbone(checkpoint: Path, tmp_path: Path):
    out = tmp_path / "dflash"
    export_draft(checkpoint, out, fmt="dflash", dtype="float32")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["speculators_model_type"] == "dflash" and cfg["architectures"] == ["DFlashDraftModel"]
    assert cfg["sliding_window_non_causal"] is True and "markov_rank" not in cfg
    tensors = load_file(str(out / "model.safetensors"))
    assert not any(k.startswith(("markov_head", "confidence_head")) for k in tensors)
    draft = read_checkpoint(checkpoint)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected_shapes(draft.config, "dflash")
    assert torch.equal(tensors["layers.1.mlp.down_proj.weight"], draft.weights["layers.1.mlp.down_proj.weight"])


def test_export_round_trips_through_load_export(checkpoint: Path, tmp_path: Path, tiny_random_target: str):
    """The exported directory, read back from config.json alone, drafts exactly what the checkpoint drafts."""
    out = tmp_path / "fp32"
    export_draft(checkpoint, out, dtype="float32")
    loaded = load_export(out)
    assert loaded.fmt == "dspark" and loaded.aux_layer_ids == [1, 3, 5] and loaded.num_speculative_tokens == 7
    head = load_target_head(tiny_random_target)
    original = read_checkpoint(checkpoint).build_model(head.embed, head.lm_head)
    ctx = torch.randn(2, 11, 3 * 128, generator=torch.Generator().manual_seed(1))
    anchors = torch.tensor([17, 250])
    a = original.propose(ctx, anchors, context_lens=torch.tensor([11, 9]))
    b = loaded.model.propose(ctx, anchors, context_lens=torch.tensor([11, 9]))
    assert torch.equal(a.token_ids, b.token_ids)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.confidence, b.confidence)


def test_dflash_refuses_sample_from_anchor(tmp_path: Path, tiny_random_target: str):
    ckpt = make_checkpoint(tmp_path / "train", tiny_random_target, "model.sample_from_anchor=true", step=1)
    with pytest.raises(ValueError, match="sample_from_anchor"):
        export_draft(ckpt, tmp_path / "out", fmt="dflash")
    assert export_draft(ckpt, tmp_path / "out", fmt="dspark")["num_speculative_tokens"] == 7


def test_unknown_tensor_names_are_refused(checkpoint: Path, tmp_path: Path):
    from dspark_train.export.weights import select_draft_tensors

    with pytest.raises(ValueError, match="no vLLM counterpart"):
        select_draft_tensors({"fc.weight": torch.zeros(1), "encoder.fc.weight": torch.zeros(1)}, "dspark")
    with pytest.raises(FileNotFoundError, match="dspark train"):
        export_draft(tmp_path / "nothing", tmp_path / "out")


def test_cli_export_reads_only_the_checkpoint_it_is_given(checkpoint: Path, tmp_path: Path, monkeypatch):
    """A runs/tiny/train in the working directory is never picked up: --checkpoint is required; the output
    default (runs/<recipe>/export) is the documented one."""
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "tiny" / "train").mkdir(parents=True)  # a decoy: empty, would fail if read
    missing = CliRunner().invoke(app, ["export", "--format", "dflash"])
    assert missing.exit_code == 2 and "--checkpoint" in missing.output
    train = tmp_path / "elsewhere" / "train"
    shutil.copytree(checkpoint.parent.parent, train)
    result = CliRunner().invoke(app, ["export", "--format", "dflash", "--checkpoint", str(train)])
    assert result.exit_code == 0, result.output
    assert "export exported: dflash draft, step 5" in result.output
    assert json.loads((tmp_path / "runs/tiny/export/summary.json").read_text())["format"] == "dflash"
