"""DSparkDraft: vLLM parameter names and shapes, export contents, config resolution, and training forward ==
single-block inference on the same block."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from dspark_train.model import DraftConfig, DSparkDraft, preset_config
from schemas.loading import load_recipe

# The names vLLM's Qwen3DSparkForCausalLM.load_weights accepts (vLLM's qwen3_dspark.py).
VLLM_NAME = re.compile(
    r"^(fc\.weight|hidden_norm\.weight|norm\.weight"
    r"|layers\.\d+\.self_attn\.[qkvo]_proj\.weight|layers\.\d+\.self_attn\.[qk]_norm\.weight"
    r"|layers\.\d+\.mlp\.(gate|up|down)_proj\.weight|layers\.\d+\.(input|post_attention)_layernorm\.weight"
    r"|markov_head\.markov_w[12]\.weight|confidence_head\.proj\.(weight|bias)"
    r"|lm_head\.weight|d2t|t2d)$"
)


def _t2d(v: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t2d = torch.zeros(v, dtype=torch.bool)
    t2d[torch.randperm(v, generator=g)[:d]] = True
    return t2d


def _model(seed: int = 0, **overrides) -> DSparkDraft:
    torch.manual_seed(seed)
    c = preset_config("debug", **overrides)
    model = DSparkDraft(c, t2d=_t2d(c.target_vocab_size, c.draft_vocab_size))
    for p in model.parameters():  # non-zero heads so Markov / confidence matter in comparisons
        torch.nn.init.normal_(p, std=0.2)
    return model


def test_parameter_names_and_shapes_match_vllm() -> None:
    model = _model()
    c = model.config
    sd = model.exportable_state_dict()
    assert all(VLLM_NAME.match(k) for k in sd), [k for k in sd if not VLLM_NAME.match(k)]
    assert sd["fc.weight"].shape == (c.hidden_size, c.num_aux_layers * c.target_hidden_size)
    assert sd["layers.0.self_attn.q_proj.weight"].shape == (c.num_attention_heads * c.head_dim, c.hidden_size)
    assert sd["layers.0.self_attn.k_proj.weight"].shape == (c.num_key_value_heads * c.head_dim, c.hidden_size)
    assert sd["layers.0.self_attn.q_norm.weight"].shape == (c.head_dim,)
    assert sd["markov_head.markov_w1.weight"].shape == (c.target_vocab_size, c.markov_rank)
    assert sd["markov_head.markov_w2.weight"].shape == (c.draft_vocab_size, c.markov_rank)
    assert sd["confidence_head.proj.weight"].shape == (1, c.hidden_size + c.markov_rank)
    assert sd["confidence_head.proj.bias"].shape == (1,)
    assert sd["lm_head.weight"].shape == (c.draft_vocab_size, c.hidden_size)
    assert sd["d2t"].dtype == torch.long and sd["t2d"].dtype == torch.bool
    assert not any("embed" in k for k in sd)
    assert len([k for k in sd if k.startswith("layers.")]) == 11 * c.num_layers


def test_full_vocab_export_has_no_lm_head_or_mapping_and_rank0_has_no_markov() -> None:
    c = preset_config("debug", draft_vocab_size=96, markov_rank=0, confidence_head_with_markov=False)
    sd = DSparkDraft(c).exportable_state_dict()
    assert not {"lm_head.weight", "d2t", "t2d"} & set(sd)
    assert not any(k.startswith("markov_head") for k in sd)
    assert sd["confidence_head.proj.weight"].shape == (1, c.hidden_size)


def test_vocab_restriction_d2t_and_lm_head_rows() -> None:
    c = preset_config("debug")
    embed = torch.randn(c.target_vocab_size, c.hidden_size)
    head = torch.randn(c.target_vocab_size, c.hidden_size)
    t2d = _t2d(c.target_vocab_size, c.draft_vocab_size, seed=3)
    model = DSparkDraft(c, embed, head, t2d)
    target_ids = t2d.nonzero().squeeze(-1)
    assert torch.equal(torch.arange(c.draft_vocab_size) + model.d2t, target_ids)
    assert torch.equal(model.lm_head_weight, head[t2d])
    assert torch.equal(model.embed_tokens, embed)
    with pytest.raises(ValueError, match="t2d"):
        DSparkDraft(c)  # a reduced vocab without t2d
    frozen = {"embed_tokens", "lm_head_weight"}
    assert frozen.isdisjoint(dict(model.named_parameters())) and frozen.isdisjoint(model.state_dict())


def test_trainable_params_get_grads_and_frozen_do_not_exist_as_params() -> None:
    model = _model()
    c = model.config
    ctx = torch.randn(2, 12, c.fc_in_features)
    ids = torch.randint(0, c.target_vocab_size, (2, 12))
    out = model(ctx, ids, torch.tensor([[2, 5], [1, 7]]))
    (out.logits.logsumexp(-1).sum() + out.confidence_logits.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("sample_from_anchor", [False, True])
def test_training_forward_matches_single_block_inference(sample_from_anchor: bool) -> None:
    """The same block must give the same logits and confidences trained (teacher forced, many anchors
    packed with a mask) and proposed (one block, context truncated at the anchor, sampled left to right)."""
    model = _model(sample_from_anchor=sample_from_anchor)
    c = model.config
    p = c.num_draft_tokens
    t = 20
    torch.manual_seed(1)
    ctx = torch.randn(2, t, c.fc_in_features)
    ids = torch.randint(0, c.target_vocab_size, (2, t))
    a = torch.tensor([6, 9])  # the anchor whose block we compare, per row
    prop = model.propose(ctx[:, :9], ids[torch.arange(2), a], context_lens=a)  # row 0 padded past 6
    assert prop.logits.shape == (2, p, c.draft_vocab_size) and prop.token_ids.shape == (2, p)
    # Teacher-force the proposed tokens: the training prefix is then exactly what inference conditioned on.
    for row in range(2):
        ids[row, a[row] + 1 : a[row] + 1 + p] = prop.token_ids[row]
    anchors = torch.stack([torch.tensor([2, 6, 12]), torch.tensor([3, 9, 14])])  # other blocks in the batch
    out = model(ctx, ids, anchors)
    train_logits = torch.stack([out.logits[0, 1], out.logits[1, 1]])  # (2, P, D)
    train_conf = torch.stack([out.confidence_logits[0, 1], out.confidence_logits[1, 1]]).sigmoid()
    torch.testing.assert_close(train_logits, prop.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(train_conf, prop.confidence, atol=1e-6, rtol=1e-5)
    assert torch.equal(prop.draft_ids, prop.logits.argmax(-1))
    assert torch.equal(out.positions[1, 1], torch.arange(10, 10 + p))


def test_propose_sampling_is_seeded_and_probs_are_the_sampled_distribution() -> None:
    model = _model()
    c = model.config
    ctx = torch.randn(1, 8, c.fc_in_features)
    anchor = torch.tensor([5])
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    p1 = model.propose(ctx, anchor, temperature=0.7, generator=g1)
    p2 = model.propose(ctx, anchor, temperature=0.7, generator=g2)
    assert torch.equal(p1.token_ids, p2.token_ids)
    torch.testing.assert_close(p1.probs, torch.softmax(p1.logits / 0.7, -1))
    # Fewer speculative tokens = a shorter block, as in vLLM (num_query_per_req = 1 + N): not a prefix of
    # the full block's outputs, because the block attends bidirectionally.
    short = model.propose(ctx, anchor, num_tokens=2)
    full = model.propose(ctx, anchor)
    assert short.token_ids.shape == (1, 2)
    assert not torch.allclose(short.logits, full.logits[:, :2])


class _Target(SimpleNamespace):
    pass


def _target(**kw) -> _Target:
    base = dict(
        hidden_size=128,
        vocab_size=2048,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=384,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=None,
        max_position_embeddings=2048,
        mask_token_id=8,
        pad_token_id=None,
    )
    return _Target(**{**base, **kw})


def test_config_from_recipe_sizes_from_target() -> None:
    recipe = load_recipe("tiny")
    c = DraftConfig.from_recipe(recipe, _target())
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (
        128,
        384,
        4,
        2,
        32,
    )
    assert (c.num_layers, c.block_size, c.markov_rank, c.num_aux_layers) == (2, 8, 64, 3)
    assert (c.target_vocab_size, c.draft_vocab_size, c.mask_token_id, c.rope_theta) == (2048, 1024, 8, 500000.0)
    assert c.num_draft_tokens == 7 and c.first_predicting_slot == 1
    assert DraftConfig.from_dict(c.to_dict()) == c
    tl = c.transformer_layer_config()
    assert tl["rope_parameters"] == {"rope_type": "default", "rope_theta": 500000.0}
    assert tl["layer_types"] == ["full_attention"] * 2 and tl["vocab_size"] == 2048


def test_config_overrides_and_errors() -> None:
    recipe = load_recipe("tiny", ["model.num_attention_heads=8", "model.intermediate_size=256"])
    c = DraftConfig.from_recipe(recipe, _target())
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size) == (8, 4, 16, 256)
    with pytest.raises(ValueError, match="hidden_size"):
        DraftConfig.from_recipe(load_recipe("tiny", ["model.hidden_size=64"]), _target())
    with pytest.raises(ValueError, match="mask_token_id"):
        DraftConfig.from_recipe(recipe, _target(mask_token_id=None))
    llama3 = {
        "rope_type": "llama3",
        "rope_theta": 5e5,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    c = DraftConfig.from_recipe(recipe, _target(rope_theta=None, rope_scaling=llama3))
    assert c.rope_parameters() == llama3
    c = DraftConfig.from_recipe(recipe, _target(rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    assert c.rope_scaling is None and any("yarn" in n for n in c.notes)
    with pytest.raises(ValueError, match="silu"):
        preset_config("debug", activation="gelu").transformer_layer_config()
