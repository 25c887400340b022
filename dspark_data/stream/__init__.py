"""Live streaming: train on hidden states a running vLLM server captures on the fly (issue #7).

Server side (`dspark serve-target`): `launch.py` starts `vllm serve` with the capture connector and the
gateway (`gateway.py`) that turns each request into the store's hidden-state record (`record.py`).
Trainer side: `client.py` fetches records with bounded in-flight requests and retries across server
restarts; `replay_cache.py` tees them into per-rank store datasets (hybrid mode) and reads them back as one.
`auth.py` holds the bind/token rule. The trainer's `HiddenSource` over all this is
`dspark_train.data.stream_source` (opened by `stream_open.py`). Runbook: docs/streaming.md.

Importing this package imports neither vLLM nor aiohttp (the server modules do, when imported).
"""

from dspark_data.stream.auth import TOKEN_ENV, AuthConfigError, authorized, check_bind, is_loopback, resolve_token
from dspark_data.stream.client import RetryPolicy, SampleRejected, ServerMismatch, StreamClient, StreamError
from dspark_data.stream.record import RecordError, StreamedRecord, decode_record, encode_sample
from dspark_data.stream.replay_cache import CacheDataset, CacheWriter, PartsView, is_cache, open_cache, part_dir

__all__ = [
    "TOKEN_ENV",
    "AuthConfigError",
    "CacheDataset",
    "CacheWriter",
    "PartsView",
    "RecordError",
    "RetryPolicy",
    "SampleRejected",
    "ServerMismatch",
    "StreamClient",
    "StreamError",
    "StreamedRecord",
    "authorized",
    "check_bind",
    "encode_sample",
    "is_cache",
    "is_loopback",
    "open_cache",
    "part_dir",
    "decode_record",
    "resolve_token",
]
