"""Which capture backend runs a capture: `open_backend` picks and loads one by name.

Why a module of its own: the backends import what they return (`Captured`, `EngineOptions`) from
`backend.py`; the factory imports the backends. Kept apart, imports point one way
(backend_factory -> hf_backend / vllm_backend -> backend), and vLLM is imported only when asked for.
"""

from __future__ import annotations

from dspark_data.capture.backend import CaptureBackend, EngineOptions
from dspark_data.capture.layers import LayerPlan


def open_backend(name: str, model_path: str, plan: LayerPlan, options: EngineOptions) -> CaptureBackend:
    """Load the target under `name` ('vllm' or 'hf'); vLLM is imported only when asked for."""
    if name == "vllm":
        from dspark_data.capture.vllm_backend import VllmCapture

        return VllmCapture(model_path, plan, options)
    if name == "hf":
        from dspark_data.capture.hf_backend import HfCapture

        return HfCapture(model_path, plan, options)
    raise ValueError(f"unknown capture backend {name!r}; use 'vllm' or 'hf'")
