"""The hidden-state gateway: an HTTP front for one vLLM server carrying dspark's capture connector.

Per request (`POST /v1/hidden`, a `StreamRequest`): submit the conversation to vLLM as a token-id prompt
that generates one token (`/v1/completions`, `max_tokens=1`: the prefill computes all T positions and
the sampled token is never fed back), take the connector's spool file named in the reply's
`kv_transfer_params`, check it (token ids equal, shape, no NaN/Inf: `capture.validate.check_capture`),
permute the layers to stored order, encode with the recipe's codec and answer the store's record
(`record.py`). Exactly what the in-process capture backend does, over HTTP.

Why a gateway next to `vllm serve` and not inside it: the connector already writes a file per request
into a tmpfs spool on the server machine; the gateway turns that into a reply over the network without
patching vLLM, keeps the trainer free of vLLM (it only speaks HTTP + Arrow), and is the one place that
bounds the server's memory: at most `max_inflight` captures are decoded/encoded at once and at most
`max_queue` wait; beyond that it answers 429 and the trainer backs off.

Statuses: 200 sample; 400 bad request (never retried); 401 bad token; 422 capture rejected (reason in
`error`, e.g. `nonfinite`); 429 queue full, 502/503/504 vLLM failing, starting or restarting (retried by
the client). `GET /v1/info` (StreamInfo), `GET /health`, `GET /v1/stats` complete the API; every route
checks the token when one is configured.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import torch
from aiohttp import web
from pydantic import ValidationError

from dspark_data.capture.backend import Captured
from dspark_data.capture.layers import LayerMismatch, LayerPlan
from dspark_data.capture.logprobs import LogprobsError, from_position_dicts
from dspark_data.capture.spool import SpoolError, take_record
from dspark_data.capture.validate import check_capture
from dspark_data.http.urls import api_url
from dspark_data.stream.auth import authorized
from dspark_data.stream.record import encode_sample
from schemas.stream import ARROW_STREAM_MEDIA_TYPE, StreamErrorBody, StreamInfo, StreamRequest


class GatewayError(Exception):
    """A request that ends in an error reply: HTTP status, machine reason, detail, retryable or not."""

    def __init__(self, status: int, error: str, detail: str = "", retry: bool = False):
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail, self.retry = status, error, detail, retry


@dataclass(frozen=True)
class GatewayConfig:
    """What one gateway serves and where its vLLM is."""

    info: StreamInfo
    plan: LayerPlan
    upstream: str  # base URL of the vLLM OpenAI server, e.g. http://127.0.0.1:8100
    served_model: str = "dspark-target"
    upstream_key: str | None = None  # vLLM's --api-key (loopback only, but other local users exist)
    token: str | None = None
    spool_dir: Path | None = None  # when set, spool paths outside it are refused
    spool_timeout_s: float = 300.0
    upstream_timeout_s: float = 1800.0
    encode_threads: int = 2


def error_response(err: GatewayError) -> web.Response:
    body = StreamErrorBody(error=err.error, detail=err.detail, retry=err.retry)
    return web.json_response(body.model_dump(), status=err.status)


class Gateway:
    """The aiohttp application and its counters; `ready` is set by the supervisor once vLLM answers."""

    def __init__(self, cfg: GatewayConfig):
        self.cfg = cfg
        self.ready = False
        self._closing = False  # set at shutdown: spool waits stop at once instead of running to their timeout
        self._slots = asyncio.Semaphore(cfg.info.max_inflight)
        self._waiting = 0
        self._inflight = 0
        # Spool waits poll the file system: one thread per in-flight capture, none busy-spinning.
        self._wait_pool = ThreadPoolExecutor(cfg.info.max_inflight, thread_name_prefix="dspark-spool-wait")
        self._work_pool = ThreadPoolExecutor(cfg.encode_threads, thread_name_prefix="dspark-encode")
        self._session: aiohttp.ClientSession | None = None
        self.served: Counter[str] = Counter()  # sample id -> replies sent (tests check exactly-once)
        self.errors: Counter[str] = Counter()
        self.bytes_out = 0
        self.busy_s = 0.0
        self.started = time.time()

    # ------------------------------------------------------------------ app

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=64 << 20)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/info", self.info)
        app.router.add_get("/v1/stats", self.stats)
        app.router.add_post("/v1/hidden", self.hidden)
        app.on_shutdown.append(self._shutdown)  # before aiohttp waits for the handlers still running
        app.on_cleanup.append(self._close)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not authorized(request.headers.get("Authorization"), self.cfg.token):
            return error_response(GatewayError(401, "unauthorized", "missing or wrong Authorization: Bearer token"))
        return await handler(request)

    async def _shutdown(self, _app: web.Application) -> None:
        self._closing = True
        self.ready = False

    async def _close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()
        self._wait_pool.shutdown(wait=False, cancel_futures=True)
        self._work_pool.shutdown(wait=False, cancel_futures=True)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"Authorization": f"Bearer {self.cfg.upstream_key}"} if self.cfg.upstream_key else {}
            timeout = aiohttp.ClientTimeout(total=self.cfg.upstream_timeout_s)
            self._session = aiohttp.ClientSession(headers=headers, timeout=timeout)
        return self._session

    # ------------------------------------------------------------------ routes

    async def health(self, request: web.Request) -> web.Response:
        status = 200 if self.ready else 503
        return web.json_response({"ready": self.ready, "server_id": self.cfg.info.server_id}, status=status)

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(self.cfg.info.model_dump(mode="json"))

    async def stats(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {
            "server_id": self.cfg.info.server_id,
            "ready": self.ready,
            "uptime_s": round(time.time() - self.started, 1),
            "served": sum(self.served.values()),
            "errors": dict(self.errors),
            "inflight": self._inflight,
            "waiting": self._waiting,
            "bytes_out": self.bytes_out,
            "busy_s": round(self.busy_s, 3),
        }
        if request.query.get("ids"):
            body["served_ids"] = dict(self.served)
        return web.json_response(body)

    async def hidden(self, request: web.Request) -> web.Response:
        try:
            req = await self._parse(request)
            if not self.ready:
                raise GatewayError(503, "starting", "vLLM is not ready yet", retry=True)
            if self._waiting >= self.cfg.info.max_queue and self._slots.locked():
                raise GatewayError(429, "busy", f"{self._waiting} requests already queued", retry=True)
            self._waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
            self._inflight += 1
            start = time.perf_counter()
            try:
                data = await self._capture(req)
            finally:
                self._inflight -= 1
                self._slots.release()
                self.busy_s += time.perf_counter() - start
        except GatewayError as err:
            self.errors[err.error] += 1
            return error_response(err)
        self.served[req.id] += 1
        self.bytes_out += len(data)
        return web.Response(body=data, content_type=ARROW_STREAM_MEDIA_TYPE)

    # ------------------------------------------------------------------ one capture

    async def _parse(self, request: web.Request) -> StreamRequest:
        try:
            req = StreamRequest.model_validate(await request.json())
        except (ValueError, ValidationError) as exc:
            raise GatewayError(400, "bad_request", str(exc)[:500]) from None
        info = self.cfg.info
        if len(req.input_ids) > info.max_tokens:
            raise GatewayError(400, "too_long", f"{len(req.input_ids)} tokens > the server's {info.max_tokens}")
        bad = [t for t in req.input_ids if not 0 <= t < info.vocab_size]
        if bad:
            raise GatewayError(400, "bad_token_id", f"token ids {bad[:5]} outside [0, {info.vocab_size})")
        return req

    async def _capture(self, req: StreamRequest) -> bytes:
        path, prompt_logprobs = await self._submit(req)
        loop = asyncio.get_running_loop()
        try:
            record = await loop.run_in_executor(
                self._wait_pool, take_record, path, self.cfg.spool_timeout_s, lambda: not self._closing
            )
        except SpoolError as exc:
            timed_out = "timed out" in str(exc)
            raise GatewayError(504 if timed_out else 502, "spool", str(exc), retry=True) from None
        return await loop.run_in_executor(self._work_pool, self._encode, req, record, prompt_logprobs)

    async def _submit(self, req: StreamRequest) -> tuple[Path, Any]:
        """Run the prefill in vLLM; return the spool file its connector will write (and the prompt log-probs
        of the reply when the server stores the target's top-K)."""
        body = {
            "model": self.cfg.served_model,
            "prompt": req.input_ids,
            "max_tokens": 1,
            "temperature": 0.0,
            **({"prompt_logprobs": self.cfg.info.topk_logprobs} if self.cfg.info.topk_logprobs else {}),
        }
        try:
            async with self.session().post(api_url(self.cfg.upstream, "/v1/completions"), json=body) as resp:
                text = await resp.text()
                if resp.status >= 500 or resp.status == 429:
                    raise GatewayError(503, "upstream", f"vLLM answered {resp.status}: {text[:300]}", retry=True)
                if resp.status != 200:
                    raise GatewayError(400, "upstream_refused", f"vLLM answered {resp.status}: {text[:300]}")
                reply = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.ready = False  # the supervisor's health probe sets it again once vLLM answers
            raise GatewayError(503, "upstream_down", f"{type(exc).__name__}: {exc}", retry=True) from None
        params = reply.get("kv_transfer_params") or {}
        if "hidden_states_path" not in params:
            raise GatewayError(502, "no_capture", "vLLM's reply names no spool file; is dspark's connector loaded?")
        path = Path(params["hidden_states_path"])
        if self.cfg.spool_dir is not None and path.parent.resolve() != self.cfg.spool_dir.resolve():
            raise GatewayError(502, "spool", f"vLLM names spool file {path} outside {self.cfg.spool_dir}")
        choices = reply.get("choices") or [{}]
        return path, choices[0].get("prompt_logprobs")

    def _encode(self, req: StreamRequest, record: Any, prompt_logprobs: Any = None) -> bytes:
        """Stored order, stored dtype, the same checks as dump-hidden, then the store's record bytes."""
        plan, info = self.cfg.plan, self.cfg.info
        try:
            hidden = plan.to_stored(record.hidden, record.layer_ids).to(torch.bfloat16)
        except LayerMismatch as exc:
            raise GatewayError(500, "layer_mismatch", str(exc)) from None
        input_ids = torch.tensor(req.input_ids, dtype=torch.int64)
        topk = None
        if info.topk_logprobs:
            if not prompt_logprobs or len(prompt_logprobs) != input_ids.numel():
                got = len(prompt_logprobs) if prompt_logprobs else 0
                raise GatewayError(502, "no_logprobs", f"vLLM's reply holds prompt log-probs for {got} positions, "
                                   f"expected {input_ids.numel()}; was it started with --max-logprobs?")
            try:
                topk = from_position_dicts(prompt_logprobs[1:], info.topk_logprobs)
            except LogprobsError as exc:
                raise GatewayError(502, "no_logprobs", f"sample {req.id!r}: {exc}") from None
        captured = Captured(token_ids=record.token_ids, hidden=hidden, topk=topk)
        rejection = check_capture(input_ids, captured, plan)
        if rejection is not None:
            raise GatewayError(422, rejection.reason, f"sample {req.id!r}: {rejection.detail}")
        return encode_sample(
            req.id,
            input_ids.numpy(),
            torch.tensor(req.loss_mask, dtype=torch.bool).numpy(),
            hidden,
            codec=info.codec,
            layer_ids=info.layer_ids,
            zstd_level=info.zstd_level,
            topk=topk,
        )
