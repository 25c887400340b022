"""Group-quantised hidden-state codecs (`int4-g32`, `int6-g32`, `int4-g32-delta`, ...): below 8 bits a value.

Why: fp8 stops at ~2.3x against bf16, and a GLM-5.2 capture at the seed recipe is still 6-9 TiB. These
codecs quantise each group of `G` consecutive channels of one (token, layer) to a signed integer code
with one bf16 scale per group, `s = amax(group) / qmax` (rounded up, `qmax = 2**(bits-1) - 1`), and
store one code per byte; zstd's Huffman stage then spends about the codes' entropy on them (~3.3 bits
for 4-bit codes of activations), so no nibble packing is needed and 5- or 6-bit codes cost what they
carry. `-delta` variants code each stored layer as the residual from the previous stored layer's
*reconstruction* of the same token (closed loop: errors do not accumulate), with the step still taken
from the layer's own group amax, so the error is the same as without prediction and only the code
entropy changes (the aux layers share one residual stream).

Error model (docs/formats/store.md): every value is reconstructed within half a step, `|x - x'| <= s/2`
(plus bf16 rounding of the result, 2**-9 relative), i.e. an RMS error of `s / sqrt(12)` with
`s = amax(group) / qmax`; with prediction, `s = max(amax(group) / qmax, amax(residual) / 127)`, so a
residual never passes the int8 codes' +-127 (a group much smaller than the previous layer's, rare in a
residual stream, takes a coarser step instead of clamping).

Decoding is split so a trainer on a GPU dequantises on the device: `unpack_planes` (CPU: zstd, bytes to
int8 codes and bf16 scales) then `dequantize` (torch ops on whatever device the planes are on). The CPU
decode path calls the same two functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dspark_data.store.payload import pack, run_parallel, unpack, unzstd, zstd_chunk

_CLAMP = 127  # int8 range of the stored codes (delta residuals may exceed qmax)
_ENCODE_ROWS_VALUES = 1 << 20


@dataclass(frozen=True)
class GroupSpec:
    """One registered group-quantised codec."""

    name: str
    codec_id: int
    bits: int
    group: int
    delta: bool

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1


@dataclass
class QuantPlanes:
    """A group-quantised sample after entropy decoding: codes int8 [T, L, H], scales bf16 [T, L, ceil(H/G)].
    `.to(device)` then `dequantize()` runs the last step where the batch lives."""

    spec: GroupSpec
    codes: torch.Tensor
    scales: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> QuantPlanes:
        return QuantPlanes(self.spec, self.codes.to(device, non_blocking=non_blocking),
                           self.scales.to(device, non_blocking=non_blocking))

    def dequantize(self) -> torch.Tensor:
        return dequantize(self)


def _group_view(x: torch.Tensor, group: int) -> torch.Tensor:
    """[..., H] -> [..., ceil(H/G), G], zero-padding the last group."""
    h = x.shape[-1]
    pad = (-h) % group
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], (h + pad) // group, group)


def _scales_of(xb: torch.Tensor, group: int, qmax: int) -> torch.Tensor:
    """bf16 scales [.., NG] with amax / s <= qmax after rounding to bf16 (the factor covers its 2**-9 error)."""
    amax = _group_view(xb, group).abs().amax(dim=-1)
    return (amax.clamp_min(1e-30) * ((1 + 2**-7) / qmax)).to(torch.bfloat16)


def _codes(value: torch.Tensor, scale: torch.Tensor, spec: GroupSpec) -> torch.Tensor:
    """round(value / scale) clamped to int8, value float32 [.., H], scale bf16 [.., NG]."""
    h = value.shape[-1]
    g = _group_view(value, spec.group) * scale.float().reciprocal()[..., None]
    q = g.round_().clamp_(-_CLAMP, _CLAMP).to(torch.int8)
    return q.flatten(-2)[..., :h]


def _times_scale(codes: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """codes [.., H] (int8) times their group's bf16 scale, as bf16 [.., H]. Computed in bf16: a code (<= 127)
    and a scale have 8-bit significands, so their product is exact in float32 and every device rounds it
    to the same bf16 (CPU via float32, CUDA natively) -- and it is 2.4x faster on CPU than float32."""
    h = codes.shape[-1]
    v = _group_view(codes.to(torch.bfloat16), group) * scales[..., None]
    return v.flatten(-2)[..., :h]


def dequantize(planes: QuantPlanes) -> torch.Tensor:
    """bf16 [T, L, H] from codes and scales, on their device. With prediction, layer l adds its residual
    to layer l-1's bf16 reconstruction exactly as the encoder did (a float32 add, then bf16: the same two
    IEEE operations on every device)."""
    spec = planes.spec
    if not spec.delta:
        return _times_scale(planes.codes, planes.scales, spec.group).contiguous()
    out = torch.empty(planes.codes.shape, dtype=torch.bfloat16, device=planes.codes.device)
    prev: torch.Tensor | None = None
    for layer in range(planes.codes.shape[1]):
        v = _times_scale(planes.codes[:, layer], planes.scales[:, layer], spec.group)
        if prev is not None:
            v = (v.float() + prev.float()).to(torch.bfloat16)
        out[:, layer] = v
        prev = out[:, layer]
    return out


def _encode(spec: GroupSpec, x: torch.Tensor, level: int, threads: int | None) -> bytes:
    t, n_layers, h = x.shape
    ng = -(-h // spec.group)
    scales = torch.empty(t, n_layers, ng, dtype=torch.bfloat16)
    codes = np.empty((n_layers, t, h), dtype=np.int8)  # layer-major: one zstd chunk per layer
    rows = max(1, _ENCODE_ROWS_VALUES // max(1, n_layers * h))
    for r in range(0, t, rows):  # token blocks keep float32 temporaries small at any sample size
        xb = x[r : r + rows].float()
        sb = _scales_of(xb, spec.group, spec.qmax)
        scales[r : r + rows] = sb
        if not spec.delta:
            codes[:, r : r + rows] = _codes(xb, sb, spec).numpy().transpose(1, 0, 2)
            continue
        prev: torch.Tensor | None = None
        for layer in range(n_layers):
            target = xb[:, layer] if prev is None else xb[:, layer] - prev.float()
            if prev is not None:  # a group whose residual would pass +-127 steps takes a coarser step: no clamping
                sb[:, layer] = torch.maximum(sb[:, layer], _scales_of(target, spec.group, _CLAMP))
                scales[r : r + rows, layer] = sb[:, layer]
            q = _codes(target, sb[:, layer], spec)
            codes[layer, r : r + rows] = q.numpy()
            v = _times_scale(q, sb[:, layer], spec.group)
            prev = v if prev is None else (v.float() + prev.float()).to(torch.bfloat16)  # what the decoder rebuilds
    scale_words = scales.view(torch.int16).numpy().view(np.uint16)
    scale_chunks = [zstd_chunk((scale_words >> 8).astype(np.uint8), level),
                    zstd_chunk(scale_words.astype(np.uint8), level)]
    chunks = run_parallel(lambda layer: zstd_chunk(codes[layer], level), n_layers, threads)
    return pack(spec.codec_id, (t, n_layers, h), [*scale_chunks, *chunks])


def unpack_planes(spec: GroupSpec, payload: bytes | memoryview, shape: Sequence[int],
                  threads: int | None = 1) -> QuantPlanes:
    """The CPU half of decoding: entropy-decode the payload into int8 codes and bf16 scales."""
    t, n_layers, h = shape
    ng = -(-h // spec.group)
    chunks = unpack(spec.codec_id, payload, shape)
    if len(chunks) != n_layers + 2:
        raise ValueError(f"{spec.name} payload has {len(chunks)} chunks, expected {n_layers + 2}")
    hi = np.frombuffer(unzstd(*chunks[0], size=t * n_layers * ng), dtype=np.uint8)
    lo = np.frombuffer(unzstd(*chunks[1], size=t * n_layers * ng), dtype=np.uint8)
    if hi.size != t * n_layers * ng or lo.size != hi.size:
        raise ValueError(f"{spec.name} payload: scale planes of {hi.size}/{lo.size} B, expected {t * n_layers * ng}")
    words = (hi.astype(np.uint16) << 8) | lo
    scales = torch.from_numpy(words.view(np.int16).reshape(t, n_layers, ng)).view(torch.bfloat16)
    codes = np.empty((t, n_layers, h), dtype=np.int8)

    def one(layer: int) -> None:
        data = np.frombuffer(unzstd(*chunks[layer + 2], size=t * h), dtype=np.int8)
        if data.size != t * h:
            raise ValueError(f"{spec.name} payload: layer {layer} has {data.size} codes, expected {t * h}")
        codes[:, layer, :] = data.reshape(t, h)

    run_parallel(one, n_layers, threads)
    return QuantPlanes(spec, torch.from_numpy(codes), scales)


def _decode(spec: GroupSpec, payload: bytes | memoryview, shape: Sequence[int], threads: int | None) -> torch.Tensor:
    return dequantize(unpack_planes(spec, payload, shape, threads))


# (name, payload codec id, bits, group, delta): ids 16+ are this module's
SPECS: tuple[GroupSpec, ...] = tuple(
    GroupSpec(name, cid, bits, group, delta)
    for name, cid, bits, group, delta in (
        ("int4-g32", 16, 4, 32, False),
        ("int4-g64", 17, 4, 64, False),
        ("int5-g32", 18, 5, 32, False),
        ("int6-g32", 19, 6, 32, False),
        ("int4-g32-delta", 20, 4, 32, True),
        ("int6-g32-delta", 21, 6, 32, True),
        ("int3-g32", 22, 3, 32, False),
        ("int5-g32-delta", 23, 5, 32, True),
    )
)


def codec_entries() -> list[tuple[GroupSpec, object, object]]:
    """(spec, encode, decode) per codec, in the registry's calling convention (codecs.Codec)."""
    out = []
    for spec in SPECS:
        def enc(x: torch.Tensor, level: int, threads: int | None, s: GroupSpec = spec) -> bytes:
            return _encode(s, x, level, threads)

        def dec(p: bytes | memoryview, shape: Sequence[int], threads: int | None, s: GroupSpec = spec) -> torch.Tensor:
            return _decode(s, p, shape, threads)

        out.append((spec, enc, dec))
    return out


BY_NAME: dict[str, GroupSpec] = {s.name: s for s in SPECS}


def materialize(hidden: torch.Tensor | QuantPlanes, device: torch.device | str,
                non_blocking: bool = False) -> torch.Tensor:
    """bf16 [T, L, H] on `device` from what `codecs.decode_deferred` returned: planes travel as int8 codes + bf16
    scales (~half the bytes of bf16 over PCIe for 4-6 bit codecs: one byte a value) and dequantise there."""
    if isinstance(hidden, QuantPlanes):
        return hidden.to(device, non_blocking=non_blocking).dequantize()
    return hidden.to(device, non_blocking=non_blocking)
