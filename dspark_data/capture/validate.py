"""Per-sample checks between a capture and what gets stored.

Why each check: a token-id mismatch means the engine computed states for a different sequence (a
re-tokenisation, a truncation, a prefix-cache hit), so the states would be paired with the wrong tokens;
a shape mismatch means the layer plan and the engine disagree; NaN/Inf (often a bf16 overflow) would
poison every training step that touches the sample. A rejected sample goes to the errors file with its
reason, counted in the manifest; it is never silently dropped or silently stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dspark_data.capture.backend import Captured
from dspark_data.capture.layers import LayerPlan


@dataclass(frozen=True)
class Rejection:
    """Why a sample is not stored: `reason` is counted in the manifest, `detail` is for people."""

    reason: str
    detail: str


def check_capture(input_ids: torch.Tensor, captured: Captured, plan: LayerPlan) -> Rejection | None:
    """None if `captured.hidden` (already in the stored dtype) may be stored for `input_ids`."""
    got = captured.token_ids.to(torch.int64).flatten()
    want = input_ids.to(torch.int64).flatten()
    if got.shape != want.shape or not torch.equal(got, want):
        first = _first_difference(got, want)
        detail = f"engine saw {got.numel()} ids, input has {want.numel()}; first difference at position {first}"
        return Rejection("token_mismatch", detail)
    expected = (want.numel(), len(plan.stored_ids), plan.hidden_size)
    if tuple(captured.hidden.shape) != expected:
        return Rejection("shape_mismatch", f"hidden {tuple(captured.hidden.shape)}, expected {expected}")
    finite = torch.isfinite(captured.hidden)
    if not bool(finite.all()):
        bad = (~finite).sum(dim=(0, 2))  # (L,) non-finite values per stored layer
        per_layer = ", ".join(f"id {layer}: {int(n)}" for layer, n in zip(plan.stored_ids, bad, strict=True) if n)
        return Rejection("nonfinite", f"NaN/Inf values per layer ({per_layer})")
    if captured.topk is not None:
        lp = captured.topk.logprobs[:-1].float()  # the last row is empty (-inf) by construction
        if tuple(captured.topk.ids.shape)[0] != want.numel():
            return Rejection("shape_mismatch", f"top-K rows {captured.topk.ids.shape[0]}, expected {want.numel()}")
        if not bool(torch.isfinite(lp).all()) or bool((lp > 0).any()):
            return Rejection("nonfinite", "top-K log-probs are NaN, infinite or positive")
    return None


def _first_difference(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(a.numel(), b.numel())
    diff = (a[:n] != b[:n]).nonzero()
    return int(diff[0]) if diff.numel() else n
