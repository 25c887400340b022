"""The trainer's side of the wire: fetch one sample's hidden states from one of several gateways.

Why these rules:
- Bounded in flight: at most `max_inflight` requests per client (one client per trainer rank). A slow
  trainer stops asking (its loader only fetches `prefetch` batches ahead), so the server never holds more
  than ranks x max_inflight captures for it; a slow server makes `fetch` block, which the trainer's
  loader reports as data-wait time.
- Retries, never skips: connection errors, timeouts, 429 and 5xx are retried on the least-loaded
  endpoint that is up, with exponential backoff and jitter, until `deadline_s` passes for that sample; a
  server restart therefore costs time, never a sample. A 4xx (bad request, bad token, capture rejected)
  is final: retrying cannot change it.
- Checked servers: before an endpoint serves its first sample, and again after it was unreachable (it
  may have restarted with other settings), its `/v1/info` must agree with the trainer's expectations
  (target, layers, hidden size, codec...), so samples from a mis-configured server never reach training.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from dspark_data.stream.auth import auth_headers
from dspark_data.stream.record import RecordError, StreamedRecord, check_matches, decode_record
from schemas.stream import STREAM_SCHEMA_VERSION, StreamErrorBody, StreamInfo


class StreamError(RuntimeError):
    """Streaming cannot continue; the message says which server or sample and what to do."""


class SampleRejected(StreamError):
    """The server refused this sample for good (bad request, or its capture failed validation)."""

    def __init__(self, sample_id: str, reason: str, detail: str):
        super().__init__(f"sample {sample_id!r} rejected by the server ({reason}): {detail}")
        self.sample_id, self.reason, self.detail = sample_id, reason, detail


class ServerMismatch(StreamError):
    """A server captures something other than what the trainer expects."""


@dataclass(frozen=True)
class RetryPolicy:
    initial_s: float = 0.5
    max_backoff_s: float = 20.0
    deadline_s: float = 3600.0  # per sample: long enough for a large target to reload after a crash


@dataclass
class _Endpoint:
    url: str
    inflight: int = 0
    down_until: float = 0.0
    failures: int = 0
    checked_id: str | None = None  # server_id whose info was checked; None: check before next use


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    bytes: int = 0
    fetch_s: float = 0.0
    slot_wait_s: float = 0.0  # time blocked because max_inflight requests were already out
    server_ids: set[str] = field(default_factory=set)


Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class StreamClient:
    """Thread-safe: the trainer's loader threads call `fetch` concurrently."""

    def __init__(
        self,
        endpoints: list[str],
        token: str | None,
        *,
        expect: dict[str, Any] | None = None,
        max_inflight: int = 4,
        timeout_s: float = 900.0,
        retry: RetryPolicy | None = None,
        log: Log = _stderr,
    ):
        if not endpoints:
            raise StreamError("no stream endpoint given: pass --endpoint http://HOST:PORT (repeatable)")
        self.endpoints = [_Endpoint(u.rstrip("/")) for u in endpoints]
        self.expect = expect  # StreamInfo.capture_fields() the servers must match (None: first server's)
        self.retry = retry or RetryPolicy()
        self.stats = ClientStats()
        self._log = log
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._http = httpx.Client(
            headers={**auth_headers(token), "Content-Type": "application/json"},
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=max_inflight + len(endpoints) + 2),
        )
        self.info: StreamInfo | None = None

    # ------------------------------------------------------------------ public

    def connect(self) -> StreamInfo:
        """Wait (with backoff, up to the deadline) for a server to answer /v1/info and check it."""
        deadline = time.monotonic() + self.retry.deadline_s
        attempt = 0
        while True:
            for ep in self.endpoints:
                try:
                    return self._check(ep)
                except httpx.HTTPError as exc:
                    self._mark_down(ep, f"{type(exc).__name__}: {exc}")
            attempt += 1
            if time.monotonic() > deadline:
                raise StreamError(f"no stream server answered within {self.retry.deadline_s:.0f}s: "
                                  f"{[e.url for e in self.endpoints]}; start them with `dspark serve-target`")
            time.sleep(self._backoff(attempt))

    def fetch(self, sample_id: str, input_ids: np.ndarray, loss_mask: np.ndarray) -> StreamedRecord:
        """The sample's record from some server; retried until it arrives or the deadline passes."""
        body = json.dumps(
            {
                "schema_version": STREAM_SCHEMA_VERSION,
                "id": sample_id,
                "input_ids": input_ids.tolist(),
                "loss_mask": loss_mask.astype(bool).tolist(),
            }
        ).encode()
        t0 = time.perf_counter()
        self._slots.acquire()
        t1 = time.perf_counter()
        try:
            record = self._fetch_with_retries(sample_id, body)
        finally:
            self._slots.release()
        check_matches(record, sample_id, input_ids, loss_mask)
        with self._lock:
            self.stats.slot_wait_s += t1 - t0
            self.stats.fetch_s += time.perf_counter() - t1
        return record

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ internals

    def _fetch_with_retries(self, sample_id: str, body: bytes) -> StreamedRecord:
        deadline = time.monotonic() + self.retry.deadline_s
        attempt = 0
        while True:
            ep = self._pick()
            if ep is None:  # every endpoint is backing off
                attempt += 1
                wait = min(e.down_until for e in self.endpoints) - time.monotonic()
                self._deadline_check(deadline, sample_id)
                time.sleep(max(0.05, wait))
                continue
            try:
                if ep.checked_id is None:
                    self._check(ep)
                resp = self._http.post(f"{ep.url}/v1/hidden", content=body)
            except httpx.HTTPError as exc:
                self._mark_down(ep, f"{type(exc).__name__}: {exc}")
                resp = None
            finally:
                with self._lock:
                    ep.inflight -= 1
            if resp is not None:
                with self._lock:
                    self.stats.requests += 1
                if resp.status_code == 200:
                    self._mark_up(ep)
                    try:
                        record = decode_record(resp.content)
                    except RecordError as exc:
                        raise StreamError(f"{ep.url}: malformed reply for {sample_id!r}: {exc}") from None
                    with self._lock:
                        self.stats.bytes += len(resp.content)
                    return record
                err = _error_body(resp)
                if resp.status_code == 401:
                    raise StreamError(f"{ep.url} refused the token (401): set the same DSPARK_STREAM_TOKEN "
                                      "on the server and every trainer")
                if not err.retry and resp.status_code < 500 and resp.status_code != 429:
                    raise SampleRejected(sample_id, err.error, err.detail)
                self._mark_down(ep, f"{resp.status_code} {err.error}: {err.detail}", quiet=err.error == "busy")
            attempt += 1
            with self._lock:
                self.stats.retries += 1
            self._deadline_check(deadline, sample_id)

    def _pick(self) -> _Endpoint | None:
        """The up endpoint with the fewest requests out (ties: random), reserving a request on it."""
        now = time.monotonic()
        with self._lock:
            up = [e for e in self.endpoints if e.down_until <= now]
            if not up:
                return None
            low = min(e.inflight for e in up)
            ep = random.choice([e for e in up if e.inflight == low])
            ep.inflight += 1
            return ep

    def _check(self, ep: _Endpoint) -> StreamInfo:
        resp = self._http.get(f"{ep.url}/v1/info")
        if resp.status_code == 401:
            raise StreamError(f"{ep.url} refused the token (401): set the same DSPARK_STREAM_TOKEN on both sides")
        resp.raise_for_status()
        info = StreamInfo.model_validate(resp.json())
        with self._lock:
            if self.expect is None:
                self.expect = info.capture_fields()
            got = info.capture_fields()
            if got != self.expect:
                diffs = [f"{k}: expected {self.expect.get(k)!r}, server has {got.get(k)!r}"
                         for k in sorted(got) if got.get(k) != self.expect.get(k)]
                raise ServerMismatch(f"{ep.url} (recipe {info.recipe!r}) captures differently: {'; '.join(diffs)}; "
                                     "start it with the trainer's recipe")
            if info.server_id not in self.stats.server_ids and self.stats.server_ids:
                self._log(f"[stream] {ep.url}: new server {info.server_id} (restarted); resuming requests")
            self.stats.server_ids.add(info.server_id)
            ep.checked_id = info.server_id
            self.info = self.info or info
        return info

    def _mark_down(self, ep: _Endpoint, why: str, quiet: bool = False) -> None:
        with self._lock:
            ep.failures += 1
            ep.checked_id = None if not quiet else ep.checked_id
            backoff = self._backoff(ep.failures)
            ep.down_until = time.monotonic() + backoff
            first = ep.failures == 1
        if first and not quiet:
            self._log(f"[stream] {ep.url} unavailable ({why[:200]}); retrying with backoff")

    def _mark_up(self, ep: _Endpoint) -> None:
        with self._lock:
            was_down = ep.failures > 0
            ep.failures, ep.down_until = 0, 0.0
        if was_down:
            self._log(f"[stream] {ep.url} answering again")

    def _backoff(self, attempt: int) -> float:
        base = min(self.retry.max_backoff_s, self.retry.initial_s * 2 ** min(attempt - 1, 16))
        return base * random.uniform(0.5, 1.0)

    def _deadline_check(self, deadline: float, sample_id: str) -> None:
        if time.monotonic() > deadline:
            raise StreamError(f"sample {sample_id!r}: no server delivered it within {self.retry.deadline_s:.0f}s "
                              f"({[e.url for e in self.endpoints]})")


def _error_body(resp: httpx.Response) -> StreamErrorBody:
    try:
        return StreamErrorBody.model_validate(resp.json())
    except Exception:  # noqa: BLE001 - a proxy or a crashed server may answer anything
        return StreamErrorBody(error=f"http_{resp.status_code}", detail=resp.text[:300], retry=resp.status_code >= 500)
