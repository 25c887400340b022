"""Markov and confidence heads against hand computations; RoPE against its closed form."""

from __future__ import annotations

import math

import torch

from dspark_train.model import ConfidenceHead, MarkovHead, preset_config
from dspark_train.model.rope import apply_rope, rope_cos_sin, rope_inv_freq


def test_markov_bias_is_w2_of_w1_row() -> None:
    head = MarkovHead(target_vocab_size=5, draft_vocab_size=3, rank=2)
    with torch.no_grad():
        head.markov_w1.weight.copy_(torch.arange(10.0).view(5, 2))
        head.markov_w2.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
    bias = head.bias(head.embed(torch.tensor([3])))  # W1[3] = [6, 7]
    assert bias.tolist() == [[6.0, 7.0, -1.0]]


def test_markov_head_starts_as_a_no_op() -> None:
    head = MarkovHead(7, 4, 3)
    head.reset_parameters()
    assert torch.count_nonzero(head.bias(head.embed(torch.arange(7)))) == 0


def test_confidence_head_with_and_without_markov() -> None:
    h = torch.tensor([[1.0, 2.0]])
    e = torch.tensor([[0.5]])
    with_m = ConfidenceHead(hidden_size=2, markov_rank=1, with_markov=True)
    with torch.no_grad():
        with_m.proj.weight.copy_(torch.tensor([[0.1, -0.2, 2.0]]))
        with_m.proj.bias.fill_(0.3)
    expected = 0.1 * 1 - 0.2 * 2 + 2.0 * 0.5 + 0.3
    assert math.isclose(float(with_m(h, e).detach()), expected, rel_tol=1e-6)
    without = ConfidenceHead(hidden_size=2, markov_rank=1, with_markov=False)
    assert without.proj.weight.shape == (1, 2)
    with torch.no_grad():
        without.proj.weight.copy_(torch.tensor([[1.0, 1.0]]))
        without.proj.bias.zero_()
    assert float(without(h, None).detach()) == 3.0
    assert with_m(h.bfloat16(), e.bfloat16()).dtype == torch.float32  # computed in fp32, as in vLLM


def test_rope_neox_rotation_closed_form() -> None:
    c = preset_config("debug", head_dim=4, rope_theta=100.0)
    inv = rope_inv_freq(c)
    torch.testing.assert_close(inv, torch.tensor([1.0, 0.1]))
    cos, sin = rope_cos_sin(torch.tensor([[3]]), inv, c)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)  # pairs (x0, x2) and (x1, x3)
    y = apply_rope(x, cos, sin).flatten()
    a0, a1 = 3 * 1.0, 3 * 0.1
    exp = [
        1 * math.cos(a0) - 3 * math.sin(a0),
        2 * math.cos(a1) - 4 * math.sin(a1),
        3 * math.cos(a0) + 1 * math.sin(a0),
        4 * math.cos(a1) + 2 * math.sin(a1),
    ]
    torch.testing.assert_close(y, torch.tensor(exp))


def test_rope_scaled_variants() -> None:
    lin = preset_config("debug", rope_scaling={"rope_type": "linear", "factor": 2.0})
    inv = rope_inv_freq(lin)
    plain = preset_config("debug")
    torch.testing.assert_close(
        rope_cos_sin(torch.tensor([4]), inv, lin)[0], rope_cos_sin(torch.tensor([2]), inv, plain)[0]
    )
    l3 = preset_config(
        "debug",
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )
    base = rope_inv_freq(preset_config("debug"))
    scaled = rope_inv_freq(l3)
    assert scaled[0] == base[0]  # highest frequency untouched
    assert torch.isclose(scaled[-1], base[-1] / 8.0)  # lowest frequency divided by the factor
