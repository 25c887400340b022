"""Recipes resolve, validate, and encode the seed card exactly."""

from __future__ import annotations

import pytest

from schemas.loading import RecipeError, builtin_recipes, load_recipe


def test_builtin_recipes_validate() -> None:
    assert {"tiny", "glm52-dspark"} <= set(builtin_recipes())
    for name in builtin_recipes():
        assert load_recipe(name).name == name


def test_seed_recipe_matches_model_card() -> None:
    r = load_recipe("glm52-dspark")
    assert r.target.model == "zai-org/GLM-5.2-FP8"
    # the seed served TP4; dspark captures at TP 1 x DP 4 + EP on the same 4 GPUs (true residual states)
    t = r.target
    assert (t.tensor_parallel_size, t.data_parallel_size, t.enable_expert_parallel) == (1, 4, True)
    assert r.prompts.source == "HuggingFaceH4/ultrachat_200k" and r.prompts.num_prompts == 50000
    assert r.seq_len == 4096
    assert r.capture.aux_layers == [8, 23, 39, 55, 70]
    assert (r.model.num_layers, r.model.block_size, r.model.activation) == (5, 8, "silu")
    assert r.vocab.draft_vocab_size == 32000
    assert (r.train.epochs, r.train.lr, r.train.schedule, r.train.max_anchors) == (3, 6e-4, "cosine", 1024)
    assert r.loss.weights == {"ce": 0.1, "tv": 0.9} and r.loss.confidence_weight > 0
    assert r.eval.num_speculative_tokens == 7


def test_overrides_and_seed_flag() -> None:
    r = load_recipe("tiny", ["train.lr=3e-4", "model.markov_rank=0", "capture.aux_layers=[0, 2]"], seed=7)
    assert r.train.lr == pytest.approx(3e-4)
    assert r.model.markov_rank == 0 and r.capture.aux_layers == [0, 2] and r.seed == 7


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.lrr=1", "train.lrr"),
        ("nosuch=1", "nosuch"),
        ("model.block_size=abc", "model.block_size"),
        ("capture.aux_layers=[3, 1]", "capture.aux_layers"),
        ("capture.codec=gzip", "capture.codec"),
        ("eval.num_speculative_tokens=9", "num_speculative_tokens"),
        ("train.lr", "key.path=value"),
    ],
)
def test_bad_values_name_the_key(override: str, needle: str) -> None:
    with pytest.raises(RecipeError, match=needle.replace(".", r"\.")):
        load_recipe("tiny", [override])


def test_unknown_recipe_and_unknown_file_key(tmp_path) -> None:
    with pytest.raises(RecipeError, match="unknown recipe"):
        load_recipe("no-such-recipe")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncapture: {aux_layers: [1]}\ntrain: {epochz: 3}\n")
    with pytest.raises(RecipeError, match=r"train\.epochz: unknown key"):
        load_recipe(str(bad))
