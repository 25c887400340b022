"""Group-quantised codecs: the stated error bound, the device split of decoding, prediction across layers."""

from __future__ import annotations

import pytest
import torch

from dspark_data.store.codecs import CODECS, decode, decode_deferred, encode
from dspark_data.store.groupq import BY_NAME, SPECS, QuantPlanes, dequantize, materialize

GROUP_CODECS = [s.name for s in SPECS]


def _residual_stream(t: int, layers: int, h: int, seed: int = 0) -> torch.Tensor:
    """Heavy-tailed rows and outlier channels; each layer adds a fresh part to the previous one."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.randn(h, generator=g) * 0.5)
    scale[:3] *= 40
    acc = torch.zeros(t, h)
    out = []
    for _ in range(layers):
        acc = acc + torch.randn(t, h, generator=g) / torch.rand(t, 1, generator=g).add(0.2).sqrt() * scale
        out.append(acc.clone())
    return torch.stack(out, dim=1).to(torch.bfloat16)


def _bound(x: torch.Tensor, group: int, qmax: int, delta: bool) -> torch.Tensor:
    """The documented error model, per value: half a step (step = group amax / qmax, bf16-rounded up) plus
    bf16 rounding of the output (and, with prediction, of the residual, |r| <= |x_l| + |x_l-1| + a step)."""
    t, n, h = x.shape
    pad = (-h) % group
    xf = torch.nn.functional.pad(x.float(), (0, pad)).reshape(t, n, -1, group)
    step = xf.abs().amax(-1, keepdim=True) * ((1 + 2**-7) / qmax)
    if delta:  # a group whose residual would pass 127 steps takes the step amax(residual) / 127
        prev = torch.cat([torch.zeros_like(xf[:, :1]), xf[:, :-1]], dim=1)
        resid_step = ((xf - prev).abs().amax(-1, keepdim=True) + step) * ((1 + 2**-6) / 127)
        resid_step[:, :1] = 0
        step = torch.maximum(step, resid_step)
    bound = 0.5 * step * (1 + 2**-8) + xf.abs() * 2**-8
    if delta:
        bound = bound + (xf.abs() + prev.abs() + step) * 2**-8
    return bound.reshape(t, n, -1)[..., :h]


@pytest.mark.parametrize("name", GROUP_CODECS)
def test_error_within_half_a_step(name: str) -> None:
    spec = BY_NAME[name]
    x = _residual_stream(45, 3, 100)  # H=100: a partial last group at G=32 and 64
    y = decode(name, encode(name, x), x.shape)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    err = (y.float() - x.float()).abs()
    bound = _bound(x, spec.group, spec.qmax, spec.delta)  # the residual's step is the layer's own: no accumulation
    assert float(err.max()) > 0
    assert bool((err <= bound).all()), float((err / bound).max())
    assert not CODECS[name].lossless


def test_fewer_bits_mean_smaller_payloads_and_larger_errors() -> None:
    x = _residual_stream(256, 4, 256)
    raw = x.numel() * 2
    rows = {}
    for name in ("int6-g32", "int5-g32", "int4-g32", "int3-g32"):
        p = encode(name, x)
        y = decode(name, p, x.shape)
        rows[name] = (raw / len(p), float((y.float() - x.float()).norm() / x.float().norm()))
    ratios = [r for r, _ in rows.values()]
    errors = [e for _, e in rows.values()]
    assert ratios == sorted(ratios) and errors == sorted(errors), rows
    assert rows["int4-g32"][0] > 3.4  # 4-bit codes + bf16 scales per 32 before entropy coding: 3.56x
    p64 = encode("int4-g64", x)
    assert len(p64) < len(encode("int4-g32", x))  # half the scales


def test_prediction_never_clamps_a_much_smaller_layer() -> None:
    """Layer 1 is 100x smaller than layer 0: its residual is ~100 x 31 of its own steps, past the int8
    codes' +-127. The group takes the coarser step amax(residual) / 127 instead of clamping (a clamped
    value would be off by ~the whole of layer 0)."""
    g = torch.Generator().manual_seed(5)
    a = torch.randn(16, 64, generator=g) * 10
    x = torch.stack([a, torch.randn(16, 64, generator=g) * 0.1], dim=1).to(torch.bfloat16)
    y = decode("int6-g32-delta", encode("int6-g32-delta", x), x.shape)
    err = (y.float() - x.float()).abs()[:, 1].reshape(16, 2, 32)
    resid = (x[:, 1].float() - x[:, 0].float()).abs().reshape(16, 2, 32).amax(-1, keepdim=True)
    resid = resid + a.abs().reshape(16, 2, 32).amax(-1, keepdim=True) / 31  # vs layer 0's reconstruction
    # half the coarser step, plus bf16 rounding of the residual's value and of the sum (the error model)
    bound = resid / 127 * 0.5 * (1 + 2**-6) + (resid + x[:, 1].float().abs().reshape(16, 2, 32)) * 2**-8
    assert bool((err <= bound).all()), float((err / bound).max())
    assert float(err.max()) < 1.0 < float(a.abs().max()) / 4


def test_prediction_across_layers_pays_on_a_residual_stream() -> None:
    """Same step, same error bound; the residual from the previous layer has fewer bits of entropy."""
    x = _residual_stream(256, 5, 256)
    for bits in (4, 6):
        plain, delta = f"int{bits}-g32", f"int{bits}-g32-delta"
        p_plain, p_delta = encode(plain, x), encode(delta, x)
        assert len(p_delta) < 0.95 * len(p_plain), (bits, len(p_delta), len(p_plain))
        e_plain = (decode(plain, p_plain, x.shape).float() - x.float()).norm()
        e_delta = (decode(delta, p_delta, x.shape).float() - x.float()).norm()
        assert float(e_delta) < 1.1 * float(e_plain)


@pytest.mark.parametrize("name", ["int4-g32", "int6-g32-delta"])
def test_deferred_decode_is_the_same_code_path(name: str) -> None:
    """The CPU unpacks, the batch's device dequantises: the same bits as the one-call decode (CPU here;
    the GPU check runs the same `dequantize` on CUDA)."""
    x = _residual_stream(33, 4, 96)
    payload = encode(name, x)
    planes = decode_deferred(name, payload, x.shape)
    assert isinstance(planes, QuantPlanes)
    assert planes.codes.dtype == torch.int8 and planes.scales.dtype == torch.bfloat16
    moved = planes.to("cpu")
    y = moved.dequantize()
    assert torch.equal(y.view(torch.int16), decode(name, payload, x.shape).view(torch.int16))
    assert torch.equal(dequantize(planes).view(torch.int16), y.view(torch.int16))
    assert torch.equal(materialize(planes, "cpu").view(torch.int16), y.view(torch.int16))
    if torch.cuda.is_available():  # pragma: no cover - only where a GPU is lent
        gpu = materialize(planes, "cuda").cpu()
        assert torch.equal(gpu.view(torch.int16), y.view(torch.int16))


def test_deferred_decode_of_exact_codecs_is_the_tensor() -> None:
    x = _residual_stream(9, 2, 16)
    got = decode_deferred("zstd-split", encode("zstd-split", x), x.shape)
    assert isinstance(got, torch.Tensor) and torch.equal(got.view(torch.int16), x.view(torch.int16))
    assert torch.equal(materialize(got, "cpu").view(torch.int16), x.view(torch.int16))


def test_zero_groups_and_refusals() -> None:
    x = torch.zeros(4, 2, 64, dtype=torch.bfloat16)
    x[1, 1, 5] = 3.0
    y = decode("int4-g32", encode("int4-g32", x), x.shape)
    assert int((y != 0).sum()) == 1  # zeros (and all-zero groups) stay zeros
    assert abs(float(y[1, 1, 5]) - 3.0) <= 3.0 / 7 / 2 * 1.02  # the group's amax, within half a step
    payload = encode("int4-g32", x)
    with pytest.raises(ValueError, match="codec 'int4-g32'"):
        decode("int6-g32", payload, x.shape)
    with pytest.raises(ValueError, match="shape"):
        decode("int4-g32", payload, (4, 2, 65))
    with pytest.raises(ValueError):
        decode("int4-g32", payload[:-2], x.shape)


def test_recipe_codec_names_are_the_registry() -> None:
    from typing import get_args

    from schemas.recipe import HiddenCodec

    assert set(get_args(HiddenCodec)) == set(CODECS)
