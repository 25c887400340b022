"""A stand-in for `vllm serve` + dspark's connector: deterministic hidden states, no model, no vLLM.

Why: the streaming path (gateway, client, retries, cache, the trainer's source) is worth testing and
debugging where loading a target is too slow or impossible (CI without vLLM, a laptop, a kill-and-restart
test that restarts the server several times). It speaks the two things the gateway uses: `GET /health`
and `POST /v1/completions` with a token-id prompt, answering `kv_transfer_params.hidden_states_path` after
writing a spool record exactly like the connector does (`capture.spool.write_record`).

The states are a pure function of (token id, position, layer): an embedding table seeded by the layer id
plus a small positional term, so two servers (or a restart) return identical bytes for the same request.
`dspark serve-target --fake-upstream` uses it instead of starting vLLM.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from pathlib import Path

import torch
from aiohttp import web

from dspark_data.capture.layers import LayerPlan
from dspark_data.capture.spool import spool_path, write_record


@functools.lru_cache(maxsize=16)
def _table(layer: int, vocab_size: int, hidden_size: int) -> torch.Tensor:
    return torch.randn(vocab_size, hidden_size, generator=torch.Generator().manual_seed(1000 + layer))


def fake_hidden(token_ids: torch.Tensor, layer_ids: tuple[int, ...], hidden_size: int, vocab_size: int) -> torch.Tensor:
    """[T, L, H] bf16 states for `token_ids`, layers in the given (engine) order; deterministic."""
    t = int(token_ids.shape[0])
    out = torch.empty(t, len(layer_ids), hidden_size, dtype=torch.float32)
    pos = torch.arange(t, dtype=torch.float32)[:, None] / max(t, 1)
    for j, layer in enumerate(layer_ids):
        out[:, j] = _table(int(layer), vocab_size, hidden_size)[token_ids] + 0.1 * pos
    return out.to(torch.bfloat16)


class FakeUpstream:
    """The aiohttp app; `delay_s` simulates prefill time (per request)."""

    def __init__(self, plan: LayerPlan, vocab_size: int, spool_dir: Path, delay_s: float = 0.0):
        self.plan, self.vocab_size, self.spool_dir, self.delay_s = plan, vocab_size, Path(spool_dir), delay_s
        self.requests = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_get("/health", self.health)
        app.router.add_post("/v1/completions", self.completions)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body.get("prompt")
        if not isinstance(prompt, list) or not all(isinstance(t, int) for t in prompt):
            return web.json_response({"error": "prompt must be a list of token ids"}, status=400)
        self.requests += 1
        req_id = f"cmpl-fake-{secrets.token_hex(8)}"
        path = spool_path(self.spool_dir, req_id)
        ids = torch.tensor(prompt, dtype=torch.int64)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        hidden = fake_hidden(ids, self.plan.engine_ids, self.plan.hidden_size, self.vocab_size)
        await asyncio.to_thread(write_record, path, hidden, ids, self.plan.engine_ids)
        params = {"hidden_states_path": str(path)}
        return web.json_response({"id": req_id, "choices": [{"text": "", "index": 0}], "kv_transfer_params": params})
