"""The HTTP backend (`--backend openai --endpoint URL ...`): one or many running `vllm serve` servers.

Design:
- An asyncio loop in a background thread, so the regen driver stays a plain synchronous loop shared
  with the in-process engine backend (`submit` / `poll`).
- One shared request queue and `concurrency` workers per endpoint: a faster endpoint pulls more work,
  which spreads load by capacity rather than round-robin.
- Failures: connection errors, timeouts, 5xx and 429 are retried with exponential backoff (429 honours
  `Retry-After`), re-queued so any endpoint may take the retry. An endpoint that refuses connections is
  paused (doubling cool-down, then probed again: the shared `dspark_data.http` pool) so its workers
  stop draining the queue into failures, and a request that never reached a server is handed to a live
  endpoint without spending a retry (retries are spent only when every endpoint is down). Other 4xx and
  malformed answers are not retried. A request that exhausts its retries becomes a `TurnFailure` (the
  sample goes to the errors file).
- Token ids come from the server (`return_token_ids: true`): prompt ids at top level
  (`prompt_token_ids`), generated ids in `choices[0].token_ids` (vLLM's ChatCompletionResponse).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Any

import httpx

from dspark_data.http.endpoints import Endpoint, EndpointPool
from dspark_data.http.retry import Backoff, retry_after_s
from dspark_data.http.urls import api_url
from dspark_data.regen.conversation import TurnFailure, TurnRequest, TurnResult

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
# An endpoint refusing connections: paused 1 s, doubling per further refusal up to a minute; an answer clears it.
# No jitter: the pause only decides when this endpoint's own workers try again.
REFUSED_PAUSE = Backoff(1.0, 60.0, jitter=False)


class _Retryable(Exception):
    def __init__(self, reason: str, detail: str, delay: float | None = None, endpoint_down: bool = False):
        super().__init__(detail)
        self.reason, self.detail, self.delay, self.endpoint_down = reason, detail, delay, endpoint_down


class _Permanent(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def parse_response(data: Any, req: TurnRequest) -> TurnResult:
    """Read vLLM's chat response; a missing field is a permanent error naming it."""
    try:
        choice = data["choices"][0]
        prompt_ids, gen_ids = data["prompt_token_ids"], choice["token_ids"]
        finish = choice["finish_reason"]
    except (KeyError, IndexError, TypeError) as exc:
        raise _Permanent(
            "bad_response", f"response lacks {exc} (is this a vLLM server with return_token_ids?)"
        ) from None
    if not isinstance(prompt_ids, list) or not isinstance(gen_ids, list):
        raise _Permanent("bad_response", "prompt_token_ids / token_ids missing: the server ignored return_token_ids")
    return TurnResult(req.sample_id, req.turn, [int(t) for t in prompt_ids], [int(t) for t in gen_ids], str(finish))


class OpenAIBackend:
    """Async HTTP client pool over vLLM servers, driven synchronously through submit/poll."""

    def __init__(
        self,
        endpoints: list[str],
        *,
        concurrency: int,  # these three come from the recipe's regen section, which holds their defaults
        timeout_s: float,
        max_retries: int,
        model: str | None = None,  # None: the first model each server lists
        backoff_base_s: float = 0.5,  # between the tries of one request, doubling up to backoff_max_s
        backoff_max_s: float = 30.0,
        cooldown: Backoff = REFUSED_PAUSE,
    ):
        if not endpoints:
            raise ValueError("the openai backend needs at least one --endpoint URL (a running `vllm serve`)")
        self.concurrency, self.timeout_s, self.max_retries = concurrency, timeout_s, max_retries
        self.backoff = Backoff(backoff_base_s, backoff_max_s)
        self.pool = EndpointPool(endpoints, cooldown)
        self.model = model
        self.stats = {"requests": 0, "retries": 0, "failures": 0}
        self._results: queue.Queue[TurnResult | TurnFailure] = queue.Queue()
        self._in_flight = 0
        self._models: dict[str, str] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="regen-openai", daemon=True)
        self._thread.start()
        self._ready = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self._ready.result()

    # ------------------------------------------------------------------ synchronous side

    def submit(self, requests: list[TurnRequest]) -> None:
        if not requests:
            return
        self._in_flight += len(requests)
        self._loop.call_soon_threadsafe(self._enqueue_all, list(requests))

    def poll(self) -> list[TurnResult | TurnFailure]:
        if self._in_flight == 0:
            return []
        out = [self._results.get()]
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                break
        self._in_flight -= len(out)
        return out

    def close(self) -> None:
        if self._loop.is_closed():
            return
        log.info("openai backend: %s", self.stats)
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    # ------------------------------------------------------------------ event-loop side

    async def _start(self) -> None:
        self._queue: asyncio.Queue[tuple[TurnRequest, int]] = asyncio.Queue()
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        self._clients = {
            url: httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s, connect=min(30.0, self.timeout_s)), limits=limits
            )
            for url in self.pool.urls
        }
        self._workers = [
            asyncio.create_task(self._worker(ep)) for ep in self.pool.endpoints for _ in range(self.concurrency)
        ]

    async def _stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for client in self._clients.values():
            await client.aclose()

    def _enqueue_all(self, requests: list[TurnRequest]) -> None:
        for req in requests:
            self._queue.put_nowait((req, 0))

    async def _worker(self, endpoint: Endpoint) -> None:
        while True:
            wait = endpoint.down_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            req, attempt = await self._queue.get()
            try:
                result: TurnResult | TurnFailure = await self._post(endpoint.url, req)
                self.pool.mark_up(endpoint)
            except _Retryable as err:
                if err.endpoint_down:
                    self.pool.mark_down(endpoint)
                    if self.pool.any_up():  # never reached a server: give it to a live endpoint, free of charge
                        self._queue.put_nowait((req, attempt))
                        continue
                if attempt >= self.max_retries:
                    self.stats["failures"] += 1
                    result = TurnFailure(req.sample_id, req.turn, err.reason, f"{err.detail} ({attempt + 1} attempts)")
                else:
                    self.stats["retries"] += 1
                    delay = err.delay if err.delay is not None else self.backoff.delay(attempt + 1)
                    self._loop.call_later(delay, self._queue.put_nowait, (req, attempt + 1))
                    continue
            except _Permanent as err:
                self.stats["failures"] += 1
                result = TurnFailure(req.sample_id, req.turn, err.reason, err.detail)
            except Exception as exc:  # noqa: BLE001 - a worker must always answer, or poll() would wait forever
                self.stats["failures"] += 1
                result = TurnFailure(req.sample_id, req.turn, "client_error", f"{type(exc).__name__}: {exc}")
            self._results.put(result)

    async def _model_name(self, endpoint: str) -> str:
        if self.model is not None:
            return self.model
        if endpoint not in self._models:
            url = api_url(endpoint, "/v1/models")
            resp = await self._send(endpoint, "GET", url)
            try:
                self._models[endpoint] = resp.json()["data"][0]["id"]
            except (ValueError, KeyError, IndexError, TypeError):
                raise _Permanent("bad_response", f"{url} did not list a model") from None
        return self._models[endpoint]

    async def _send(self, endpoint: str, method: str, url: str, body: dict[str, Any] | None = None) -> httpx.Response:
        client = self._clients[endpoint]
        try:
            resp = await client.request(method, url, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Retryable("connection_error", f"{url}: {type(exc).__name__}: {exc}", endpoint_down=True) from None
        except httpx.TimeoutException as exc:
            raise _Retryable("timeout", f"{url}: {type(exc).__name__} after {self.timeout_s}s") from None
        except httpx.TransportError as exc:  # connection dropped mid-request, protocol errors
            raise _Retryable("connection_error", f"{url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code in RETRY_STATUS:
            delay = None
            if resp.status_code == 429:
                delay = retry_after_s(resp.headers.get("retry-after"), self.backoff.max_s)
            raise _Retryable(f"http_{resp.status_code}", f"{url}: HTTP {resp.status_code}: {resp.text[:200]}", delay)
        if resp.status_code >= 400:
            raise _Permanent(f"http_{resp.status_code}", f"{url}: HTTP {resp.status_code}: {resp.text[:500]}")
        return resp

    async def _post(self, endpoint: str, req: TurnRequest) -> TurnResult:
        self.stats["requests"] += 1
        body = {
            "model": await self._model_name(endpoint),
            "messages": req.messages,
            **req.params,
            "n": 1,
            "stream": False,
            "return_token_ids": True,
        }
        url = api_url(endpoint, "/v1/chat/completions")
        resp = await self._send(endpoint, "POST", url, body)
        try:
            data = resp.json()
        except ValueError:
            raise _Retryable("bad_response", f"{url}: body is not JSON: {resp.text[:200]}") from None
        return parse_response(data, req)
