"""On-disk hand-off of hidden-state capture: the spool file one engine worker writes per request.

Why here: the spool is written by our KV connector inside vLLM's worker process and read by the capture
driver in ours (`dspark_data/capture/spool.py`); both sides must agree on the tensor names and metadata,
and a version bump must be one edit. A spool file is a safetensors file `<spool>/<request id>.safetensors`
with tensors `hidden_states` [T, L, H] (engine layer order) and `token_ids` int64 [T], and string metadata
`format` = SPOOL_FORMAT and `layer_ids` (JSON list of ints). A worker that fails leaves `<name>.err`, a
JSON object `{"error": message}`. See docs/formats/hidden-states.md.
"""

from __future__ import annotations

SPOOL_FORMAT = "dspark-spool-1"
SPOOL_HIDDEN = "hidden_states"  # tensor: bf16 [T, L, H], layers in engine order
SPOOL_TOKEN_IDS = "token_ids"  # tensor: int64 [T], the token ids the engine saw
SPOOL_META_FORMAT = "format"  # metadata key: SPOOL_FORMAT
SPOOL_META_LAYER_IDS = "layer_ids"  # metadata key: JSON list of the layer ids of `hidden_states`
SPOOL_ERROR_SUFFIX = ".err"  # beside the record: {"error": message}, the record will not come
