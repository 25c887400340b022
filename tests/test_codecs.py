"""Hidden-state codecs: exact round trips for the lossless ones, a bounded error for fp8, refusals."""

from __future__ import annotations

import pytest
import torch

from dspark_data.store.codecs import CODECS, decode, encode


def _heavy_tailed(t: int, layers: int, h: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, layers, h, generator=g) / torch.rand(t, layers, 1, generator=g).add(0.2).sqrt()
    x[:, :, :3] *= 40  # outlier channels
    return x.to(torch.bfloat16)


@pytest.mark.parametrize("name", ["raw", "zstd-split"])
@pytest.mark.parametrize("threads", [1, 2])
def test_lossless_exact(name: str, threads: int) -> None:
    x = _heavy_tailed(37, 3, 256)
    x[0, 0, :4] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0])
    payload = encode(name, x, threads=threads)
    y = decode(name, payload, x.shape, threads=threads)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    assert torch.equal(y.view(torch.int16), x.view(torch.int16))  # bit-exact, NaN and -0.0 included


def test_zstd_split_compresses() -> None:
    x = _heavy_tailed(256, 2, 1024)
    assert x.numel() * 2 / len(encode("zstd-split", x)) > 1.3


def test_fp8_error_bound_and_ratio() -> None:
    x = _heavy_tailed(256, 2, 1024)
    payload = encode("fp8", x)
    y = decode("fp8", payload, x.shape, threads=2)
    rel = ((y.float() - x.float()).norm() / x.float().norm()).item()
    assert rel < 0.04
    assert x.numel() * 2 / len(payload) > 2.0
    zero = torch.zeros(4, 1, 8, dtype=torch.bfloat16)
    assert torch.equal(decode("fp8", encode("fp8", zero), zero.shape), zero)


@pytest.mark.parametrize("shape", [(3, 2, 5), (300, 3, 257), (70, 2, 1024)])
def test_fp8_decode_matches_torch_conversion(shape: tuple[int, int, int]) -> None:
    """The bit-manipulation decoder equals torch's own float8_e4m3fn -> bf16 conversion times the scale,
    bit for bit: subnormals, odd sizes, several token blocks, and a layer whose huge activations take
    the lookup path."""
    import numpy as np

    from dspark_data.store.payload import unpack, unzstd

    t, n_layers, h = shape
    x = _heavy_tailed(t, n_layers, h)
    x[:, 0, 1] = x[:, 0, :].float().abs().amax(dim=1) * 2e-5  # e4m3 subnormals after scaling
    x[1, -1, 0] = 3e5  # scale >= 2**7: the exact lookup path for that layer
    payload = encode("fp8", x)
    chunks = unpack(2, payload, shape)
    scales = torch.from_numpy(np.frombuffer(chunks[0][0], dtype=np.int16).reshape(t, n_layers).copy())
    expected = torch.empty(shape, dtype=torch.bfloat16)
    subnormals = 0
    for layer in range(n_layers):
        data = np.frombuffer(unzstd(*chunks[layer + 1], size=t * h), dtype=np.uint8).copy()
        subnormals += int((((data & 0x78) == 0) & ((data & 0x07) != 0)).sum())
        vals = torch.from_numpy(data).view(torch.float8_e4m3fn).to(torch.bfloat16).reshape(t, h)
        expected[:, layer, :] = vals * scales.view(torch.bfloat16)[:, layer, None]
    assert subnormals >= t
    got = decode("fp8", payload, shape, threads=2)
    assert torch.equal(got.view(torch.int16), expected.view(torch.int16))


def test_empty_and_noncontiguous() -> None:
    for name in CODECS:
        e = torch.zeros(0, 2, 16, dtype=torch.bfloat16)
        assert decode(name, encode(name, e), e.shape).shape == e.shape
    x = _heavy_tailed(8, 4, 32).transpose(0, 1).contiguous().transpose(0, 1)  # strided view
    assert torch.equal(decode("zstd-split", encode("zstd-split", x), x.shape), x)


def test_refusals() -> None:
    x = _heavy_tailed(4, 2, 8)
    with pytest.raises(ValueError, match="unknown hidden-state codec"):
        encode("gzip", x)
    with pytest.raises(ValueError, match="bfloat16"):
        encode("raw", x.float())
    payload = encode("zstd-split", x)
    with pytest.raises(ValueError, match="shape"):
        decode("zstd-split", payload, (4, 2, 9))
    with pytest.raises(ValueError, match="codec 'zstd-split'"):
        decode("fp8", payload, x.shape)
    with pytest.raises(ValueError):
        decode("zstd-split", payload[:-3], x.shape)
