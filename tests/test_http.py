"""The HTTP pieces every client shares (`dspark_data.http`): server URLs, the backoff schedule, the endpoint pool.

The clients' own failure semantics (what each retries, what it raises) are pinned by their tests against
real or fake servers (test_regen_openai, test_stream*, test_eval_server); these pin the shared rules.
"""

from __future__ import annotations

import random
import time

import pytest

from dspark_data.http.endpoints import EndpointPool
from dspark_data.http.retry import Backoff, retry_after_s
from dspark_data.http.urls import api_url, base_url


@pytest.mark.parametrize(
    "given", ["http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/", "http://h:8000/v1//"]
)
def test_every_spelling_of_a_server_reaches_the_same_routes(given: str) -> None:
    assert base_url(given) == "http://h:8000"
    assert api_url(given, "/v1/chat/completions") == "http://h:8000/v1/chat/completions"
    assert api_url(given, "/metrics") == "http://h:8000/metrics"


def test_base_url_keeps_a_path_prefix_and_strips_one_v1() -> None:
    assert base_url("https://proxy/vllm/a/v1") == "https://proxy/vllm/a"
    assert base_url("http://h/v1/v1") == "http://h/v1"  # only the API prefix, once
    assert base_url("http://h/v10") == "http://h/v10"


def test_backoff_without_jitter_doubles_to_its_cap() -> None:
    pause = Backoff(1.0, 60.0, jitter=False)
    assert [pause.delay(n) for n in range(1, 9)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert pause.delay(10_000) == 60.0  # a long outage neither overflows nor grows past the cap
    assert Backoff(0.0, 60.0, jitter=False).delay(5) == 0.0


def test_backoff_jitter_stays_within_half_to_full_and_is_seedable() -> None:
    retry = Backoff(0.5, 20.0)
    for n in range(1, 12):
        full = min(20.0, 0.5 * 2 ** (n - 1))
        d = retry.delay(n)
        assert 0.5 * full <= d < full
    first = [retry.delay(n, random.Random(7)) for n in range(1, 6)]
    again = [retry.delay(n, random.Random(7)) for n in range(1, 6)]
    assert first == again and len(set(first)) == len(first)


def test_retry_after_is_capped_and_ignored_when_not_seconds() -> None:
    assert retry_after_s("0.05", 30.0) == 0.05
    assert retry_after_s("120", 30.0) == 30.0
    assert retry_after_s(None, 30.0) is None
    assert retry_after_s("Wed, 21 Oct 2026 07:28:00 GMT", 30.0) is None


def test_pool_pauses_a_failing_endpoint_longer_each_time_until_it_answers() -> None:
    pool = EndpointPool(["http://a:1/v1", "http://b:1/"], Backoff(30.0, 120.0, jitter=False))
    a, b = pool.endpoints
    assert pool.urls == ["http://a:1", "http://b:1"]
    assert pool.mark_down(a) == 1
    first = a.down_until - time.monotonic()
    assert 29.0 < first <= 30.0 and not a.is_up(time.monotonic()) and pool.any_up()
    assert pool.mark_down(a) == 2
    assert 59.0 < a.down_until - time.monotonic() <= 60.0
    pool.mark_down(b)
    assert not pool.any_up() and 29.0 < pool.next_up_in() <= 30.0
    assert pool.acquire() is None
    assert pool.mark_up(a) is True and a.failures == 0 and a.is_up(time.monotonic())
    assert pool.mark_up(a) is False  # it was not failing any more
    assert pool.any_up() and pool.next_up_in() <= 0


def test_pool_hands_out_the_least_loaded_up_endpoint() -> None:
    pool = EndpointPool(["http://a:1", "http://b:1", "http://c:1"], Backoff(30.0, 30.0, jitter=False))
    a, b, c = pool.endpoints
    pool.mark_down(c)
    got = [pool.acquire() for _ in range(4)]
    assert sorted(ep.url for ep in got) == ["http://a:1", "http://a:1", "http://b:1", "http://b:1"]
    assert (a.inflight, b.inflight, c.inflight) == (2, 2, 0)
    pool.release(a)
    assert pool.acquire() is a
    for ep in got:
        pool.release(ep)
    assert (a.inflight, b.inflight, c.inflight) == (0, 0, 0)


def test_the_same_url_twice_is_two_members() -> None:
    pool = EndpointPool(["http://a:1", "http://a:1/"], Backoff(30.0, 30.0, jitter=False))
    one, two = pool.endpoints
    pool.mark_down(one)
    assert not one.is_up(time.monotonic()) and two.is_up(time.monotonic())


def test_stream_client_and_regen_backend_use_the_normalised_pool() -> None:
    from dspark_data.stream.client import RetryPolicy, StreamClient

    client = StreamClient(["http://h:1/v1/", "http://g:2"], None, retry=RetryPolicy(initial_s=0.1, max_backoff_s=3.0))
    try:
        assert client.pool.urls == ["http://h:1", "http://g:2"]
        assert client.pool.pause == Backoff(0.1, 3.0)
    finally:
        client.close()
    from dspark_data.regen.backends.openai import OpenAIBackend

    backend = OpenAIBackend(["http://h:1/v1"], concurrency=1, timeout_s=1.0, max_retries=0)
    try:
        assert backend.pool.urls == ["http://h:1"]
        assert backend.pool.pause == Backoff(1.0, 60.0, jitter=False)  # a refusing endpoint: no jitter
    finally:
        backend.close()
