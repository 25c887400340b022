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
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from dspark_data.http.endpoints import Endpoint, EndpointPool
from dspark_data.http.retry import Backoff
from dspark_data.http.urls import api_url
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
    """The stream's retry tuning: the backoff between tries (also an endpoint's pause) and the per-sample deadline."""

    initial_s: float = 0.5
    max_backoff_s: float = 20.0
    deadline_s: float = 3600.0  # per sample: long enough for a large target to reload after a crash

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.initial_s, self.max_backoff_s)


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
        self.retry = retry or RetryPolicy()
        self.pool = EndpointPool(endpoints, self.retry.backoff)
        # server_id whose /v1/info was checked on each endpoint; None: check before its next request
        self._checked: dict[Endpoint, str | None] = dict.fromkeys(self.pool.endpoints)
        self.expect = expect  # StreamInfo.capture_fields() the servers must match (None: first server's)
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
            for ep in self.pool.endpoints:
                try:
                    return self._check(ep)
                except httpx.HTTPError as exc:
                    self._mark_down(ep, f"{type(exc).__name__}: {exc}")
            attempt += 1
            if time.monotonic() > deadline:
                raise StreamError(f"no stream server answered within {self.retry.deadline_s:.0f}s: "
                                  f"{self.pool.urls}; start them with `dspark serve-target`")
            time.sleep(self.retry.backoff.delay(attempt))

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
            ep = self.pool.acquire()  # the least-loaded endpoint that is up
            if ep is None:  # every endpoint is backing off
                attempt += 1
                wait = self.pool.next_up_in()
                self._deadline_check(deadline, sample_id)
                time.sleep(max(0.05, wait))
                continue
            try:
                if self._checked[ep] is None:
                    self._check(ep)
                resp = self._http.post(api_url(ep.url, "/v1/hidden"), content=body)
            except httpx.HTTPError as exc:
                self._mark_down(ep, f"{type(exc).__name__}: {exc}")
                resp = None
            finally:
                self.pool.release(ep)
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

    def _check(self, ep: Endpoint) -> StreamInfo:
        resp = self._http.get(api_url(ep.url, "/v1/info"))
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
            self._checked[ep] = info.server_id
            self.info = self.info or info
        return info

    def _mark_down(self, ep: Endpoint, why: str, quiet: bool = False) -> None:
        """Pause `ep`; unless `quiet` (it is up but busy) it may have restarted, so check its info again."""
        if not quiet:
            with self._lock:
                self._checked[ep] = None
        if self.pool.mark_down(ep) == 1 and not quiet:
            self._log(f"[stream] {ep.url} unavailable ({why[:200]}); retrying with backoff")

    def _mark_up(self, ep: Endpoint) -> None:
        if self.pool.mark_up(ep):
            self._log(f"[stream] {ep.url} answering again")

    def _deadline_check(self, deadline: float, sample_id: str) -> None:
        if time.monotonic() > deadline:
            raise StreamError(f"sample {sample_id!r}: no server delivered it within {self.retry.deadline_s:.0f}s "
                              f"({self.pool.urls})")


def _error_body(resp: httpx.Response) -> StreamErrorBody:
    try:
        return StreamErrorBody.model_validate(resp.json())
    except Exception:  # noqa: BLE001 - a proxy or a crashed server may answer anything
        return StreamErrorBody(error=f"http_{resp.status_code}", detail=resp.text[:300], retry=resp.status_code >= 500)
