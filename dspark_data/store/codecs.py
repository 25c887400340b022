"""Hidden-state codecs: `raw`, `zstd-split` (lossless) and `fp8` (lossy), behind `encode` / `decode`.

Why: the cached hidden states are the field's biggest cost (one uncompressed bf16 file per sample,
10-40 TB per dataset). bf16 activations compress badly as a byte stream (plain zstd ~1.25x) because
each value's high byte (sign + 7 exponent bits, low entropy) alternates with its low byte (1 exponent
bit + 7 mantissa bits, nearly random). Splitting the two byte planes and compressing them separately
lets zstd's entropy coder see the high plane alone: ~1.45-1.5x lossless. FP8 e4m3 with one scale per
(token, layer) halves the bytes before zstd: ~2.3x at 2-3% relative error.

Tensors are `[T, L, H]` bfloat16 (tokens, layers, hidden). Chunks are per layer (and byte plane);
`threads` spreads one sample's chunks over a shared pool, but the writer encodes whole samples side by
side instead (`hidden.py`), which scales better. Speed notes (zstd preset, fp8 decoding by bit moves,
cache-sized blocks) are with the code below and in docs/formats/store.md, with measurements.

This module is the registry of every codec (these three and the group-quantised family of `groupq.py`).
The payload container they all write (`payload.py`) is self-describing, so a shape mismatch is an
error instead of garbage.

    payload = encode("zstd-split", hidden)            # hidden: torch.bfloat16 [T, L, H]
    hidden2 = decode("zstd-split", payload, (T, L, H))
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dspark_data.store import groupq
from dspark_data.store.payload import (
    CODEC_NAMES,
    bytes_view,
    default_threads,
    pack,
    run_parallel,
    unpack,
    unzstd,
    zstd_chunk,
)

__all__ = ["CODECS", "Codec", "decode", "decode_deferred", "default_threads", "encode", "get_codec"]

FP8_MAX = 448.0  # largest finite float8_e4m3fn
_local = threading.local()  # per-thread decode scratch buffers (`_scratch`)


def _as_bf16(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() != 3:
        raise ValueError(f"hidden states must be [T, L, H], got shape {tuple(tensor.shape)}")
    if tensor.dtype != torch.bfloat16:
        raise ValueError(f"hidden states must be bfloat16, got {tensor.dtype}")
    return tensor.detach().to("cpu").contiguous()


# ---------------------------------------------------------------------------------------------- raw


def _encode_raw(x: torch.Tensor, level: int, threads: int | None) -> bytes:
    return pack(0, tuple(x.shape), [(bytes_view(x.view(torch.uint8).numpy()), 0)])


def _decode_raw(payload: bytes | memoryview, shape: Sequence[int], threads: int | None) -> torch.Tensor:
    ((chunk, _),) = unpack(0, payload, shape)
    out = np.frombuffer(chunk, dtype=np.int16).copy()  # own the memory: payloads may be memory-mapped
    return torch.from_numpy(out).view(torch.bfloat16).reshape(*shape)


# --------------------------------------------------------------------------------------- zstd-split


def _encode_split(x: torch.Tensor, level: int, threads: int | None) -> bytes:
    words = x.view(torch.int16).numpy().view(np.uint16)
    n_layers = x.shape[1]

    def plane(i: int) -> tuple[bytes | memoryview, int]:
        # chunk 2l: high bytes of layer l (token-major [T, H]); chunk 2l+1: its low bytes. Shifting 16-bit
        # words is ~4x faster than gathering every other byte of a strided view.
        layer = words[:, i // 2, :]
        return zstd_chunk((layer >> 8 if i % 2 == 0 else layer).astype(np.uint8), level)

    return pack(1, tuple(x.shape), run_parallel(plane, 2 * n_layers, threads))


def _row_blocks(t: int, h: int) -> list[slice]:
    """Token blocks of ~32K values: each block's scratch stays in the core's L2 cache, which is what makes
    decoding a large sample (GLM-5.2: 2048 tokens x 6 layers x 6144) as fast as a small one."""
    rows = max(1, _BLOCK_VALUES // h)
    return [slice(r, min(r + rows, t)) for r in range(0, t, rows)]


def _scratch(name: str, n: int) -> np.ndarray:
    """A per-thread uint16 scratch buffer of at least `n` values (reused: fresh buffers cost page faults)."""
    buf = getattr(_local, name, None)
    if buf is None or buf.size < n:
        buf = np.empty(n, dtype=np.uint16)
        setattr(_local, name, buf)
    return buf[:n]


def _decode_split(payload: bytes | memoryview, shape: Sequence[int], threads: int | None) -> torch.Tensor:
    t, n_layers, h = shape
    chunks = unpack(1, payload, shape)
    if len(chunks) != 2 * n_layers:
        raise ValueError(f"zstd-split payload has {len(chunks)} chunks, expected {2 * n_layers}")
    out = np.empty((t, n_layers, h), dtype=np.uint16)  # numpy: large arrays get huge pages (fewer faults)

    def one(layer: int) -> None:
        hi = np.frombuffer(unzstd(*chunks[2 * layer], size=t * h), dtype=np.uint8).reshape(t, h)
        lo = np.frombuffer(unzstd(*chunks[2 * layer + 1], size=t * h), dtype=np.uint8).reshape(t, h)
        for rows in _row_blocks(t, h):
            tmp = _scratch("split", (rows.stop - rows.start) * h).reshape(-1, h)
            # rebuild each bf16 as (high << 8) | low in a contiguous cache-resident block, then place it
            np.left_shift(hi[rows], 8, out=tmp, dtype=np.uint16)
            np.bitwise_or(tmp, lo[rows], out=tmp)
            out[rows, layer, :] = tmp

    run_parallel(one, n_layers, threads)
    return torch.from_numpy(out.view(np.int16)).view(torch.bfloat16)


# ---------------------------------------------------------------------------------------------- fp8


# float8_e4m3fn byte -> the same value as a bf16 bit pattern (exact: e4m3 fits in bf16). The slow path
# for layers whose scales are too large for the fast one (see `_fp8_layer`).
_FP8_TO_BF16_NP = (
    torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.bfloat16).view(torch.int16).numpy()
)
# e4m3 (sign, 4-bit exponent with bias 7, 3-bit mantissa) moved bit for bit into bf16's fields (sign,
# 8-bit exponent with bias 127, 7-bit mantissa) is the fp8 value times 2**-120, subnormals included. So
# decoding is a few integer ops per value plus one bf16 multiply by (scale * 2**120): the product is the
# same real number as value * scale, so it rounds to the same bf16 as the lookup path, bit for bit.
_FP8_BIAS_SHIFT = 2.0**120
_FP8_FAST_MAX_SCALE = 2.0**7  # scale * 2**120 must stay finite in bf16 (max ~2**128)
_ENCODE_BLOCK_VALUES = 1 << 20
_BLOCK_VALUES = 1 << 15  # also below torch's intra-op grain size (32768): no thread hand-offs per block


def _encode_fp8(x: torch.Tensor, level: int, threads: int | None) -> bytes:
    t, n_layers, h = x.shape
    scales = torch.empty(t, n_layers, dtype=torch.bfloat16)  # one scale per (token, layer)
    planes = np.empty((n_layers, t, h), dtype=np.uint8)  # e4m3 bytes, layer-major: one chunk per layer
    rows = max(1, _ENCODE_BLOCK_VALUES // (n_layers * h))
    for r in range(0, t, rows):  # token blocks: float32 temporaries stay small for any sample size
        xb = x[r : r + rows].float()  # [B, L, H]
        # scale >= amax / 448 after rounding to bf16, so the largest value still fits e4m3's range
        scale = (xb.abs().amax(dim=2).clamp_min(1e-30) * (1.0 / FP8_MAX) * (1 + 2**-7)).to(torch.bfloat16)
        scales[r : r + rows] = scale
        xb.mul_(scale.float().reciprocal_()[:, :, None]).clamp_(-FP8_MAX, FP8_MAX)  # a multiply: faster than /
        planes[:, r : r + rows, :] = xb.to(torch.float8_e4m3fn).view(torch.uint8).numpy().transpose(1, 0, 2)
    chunks = run_parallel(lambda layer: zstd_chunk(planes[layer], level), n_layers, threads)
    return pack(2, (t, n_layers, h), [(bytes_view(scales.view(torch.int16).numpy()), 0), *chunks])


def _fp8_as_scaled_bf16(data: np.ndarray, tmp: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """e4m3 bytes -> bf16 bit patterns of value * 2**-120 (sign to bit 15, exponent+mantissa to bits 4-10)."""
    np.copyto(tmp, data, casting="unsafe")
    np.bitwise_and(tmp, 0x7F, out=bits)
    np.left_shift(bits, 4, out=bits)
    np.bitwise_and(tmp, 0x80, out=tmp)
    np.left_shift(tmp, 8, out=tmp)
    np.bitwise_or(bits, tmp, out=bits)
    return bits


def _fp8_layer(data: np.ndarray, scale: torch.Tensor, shifted: torch.Tensor | None, dst: torch.Tensor) -> None:
    """Decode one layer's e4m3 bytes [T, H] times its per-token scales [T, 1] into `dst` [T, H] (bf16).
    `shifted`: the scales times 2**120, or None when they are too large for that (the lookup path)."""
    t, h = data.shape
    if shifted is None:  # huge activations: exact lookup path
        torch.mul(torch.from_numpy(_FP8_TO_BF16_NP[data]).view(torch.bfloat16), scale, out=dst)
        return
    for rows in _row_blocks(t, h):
        n = (rows.stop - rows.start) * h
        tmp, bits = _scratch("fp8_tmp", n).reshape(-1, h), _scratch("fp8_bits", n).reshape(-1, h)
        bits = _fp8_as_scaled_bf16(data[rows], tmp, bits)
        torch.mul(torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16), shifted[rows], out=dst[rows])


def _decode_fp8(payload: bytes | memoryview, shape: Sequence[int], threads: int | None) -> torch.Tensor:
    t, n_layers, h = shape
    chunks = unpack(2, payload, shape)
    if len(chunks) != n_layers + 1:
        raise ValueError(f"fp8 payload has {len(chunks)} chunks, expected {n_layers + 1}")
    scales = torch.from_numpy(np.frombuffer(chunks[0][0], dtype=np.int16).reshape(t, n_layers).copy())
    scales = scales.view(torch.bfloat16)
    out = torch.from_numpy(np.empty((t, n_layers, h), dtype=np.int16)).view(torch.bfloat16)  # huge pages
    if t == 0 or h == 0:
        return out
    fast = (scales.float().abs().amax(dim=0) < _FP8_FAST_MAX_SCALE).tolist()
    shifted = (scales.float() * _FP8_BIAS_SHIFT).to(torch.bfloat16)  # exact (power-of-two) where `fast`

    def one(layer: int) -> None:
        data = np.frombuffer(unzstd(*chunks[layer + 1], size=t * h), dtype=np.uint8).reshape(t, h)
        fast_shifted = shifted[:, layer, None] if fast[layer] else None
        _fp8_layer(data, scales[:, layer, None], fast_shifted, out[:, layer, :])

    run_parallel(one, n_layers, threads)
    return out


# ----------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Codec:
    """A registered codec: its payload id, whether it is exact, and its encode/decode functions."""

    name: str
    codec_id: int
    lossless: bool
    encode: Callable[[torch.Tensor, int, int | None], bytes]
    decode: Callable[[bytes | memoryview, Sequence[int], int | None], torch.Tensor]


CODECS: dict[str, Codec] = {
    "raw": Codec("raw", 0, True, _encode_raw, _decode_raw),
    "zstd-split": Codec("zstd-split", 1, True, _encode_split, _decode_split),
    "fp8": Codec("fp8", 2, False, _encode_fp8, _decode_fp8),
}
for _spec, _enc, _dec in groupq.codec_entries():  # the sub-8-bit family (`groupq.py`) joins the registry
    CODECS[_spec.name] = Codec(_spec.name, _spec.codec_id, False, _enc, _dec)  # type: ignore[arg-type]
CODEC_NAMES.update({c.codec_id: c.name for c in CODECS.values()})


def get_codec(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown hidden-state codec {name!r}; choose one of {', '.join(CODECS)}") from None


def encode(name: str, tensor: torch.Tensor, *, level: int = 1, threads: int | None = None) -> bytes:
    """Encode bf16 hidden states `[T, L, H]` with codec `name`; chunks run on `threads` (default: all cores)."""
    if np.little_endian is False:  # pragma: no cover - byte planes assume a little-endian host
        raise RuntimeError("dspark hidden-state codecs require a little-endian host")
    return get_codec(name).encode(_as_bf16(tensor), level, threads)


def decode(name: str, payload: bytes | memoryview, shape: Sequence[int], *, threads: int | None = 1) -> torch.Tensor:
    """Decode a payload back to bf16 `[T, L, H]`. Single-threaded by default: callers decode many samples
    in parallel (the trainer's background threads); pass `threads=None` to split one sample across cores."""
    return get_codec(name).decode(payload, tuple(int(s) for s in shape), threads)


def decode_deferred(name: str, payload: bytes | memoryview, shape: Sequence[int], *,
                    threads: int | None = 1) -> torch.Tensor | groupq.QuantPlanes:
    """The CPU half of decoding any codec: a bf16 tensor for the byte-plane codecs, `QuantPlanes` for the
    group-quantised ones (move them with the batch, then `.dequantize()` on its device)."""
    spec = groupq.BY_NAME.get(name)
    if spec is None:
        return decode(name, payload, shape, threads=threads)
    return groupq.unpack_planes(spec, payload, tuple(int(s) for s in shape), threads)
