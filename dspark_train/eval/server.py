"""Live measurement against a running vLLM server: the seed card's method, from its own counters.

`dspark eval --server URL --prompts SET` sends each prompt as one chat turn (bounded concurrency),
reads `/metrics` before and after, and reports per-position acceptance from the counter deltas:
`delta(spec_decode_num_accepted_tokens_per_pos{position=i}) / delta(spec_decode_num_drafts)`, with
Avg Length = 1 + sum. Deltas make the figure independent of what the server served before; requests
from other clients during the run would be counted too, so measure on a server nobody else is using.

Plain HTTP (httpx) only: dspark_train never imports vLLM.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx

from dspark_data.http.urls import api_url
from dspark_train.eval.acceptance import AcceptanceCounts

DRAFTS = "vllm:spec_decode_num_drafts_total"
DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos_total"

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition: (name, labels, value); comments and blanks skipped."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(3) or ""))
        samples.append((m.group(1), labels, float(m.group(4))))
    return samples


def spec_counts(metrics_text: str) -> AcceptanceCounts:
    """vLLM's cumulative spec-decode counters from a /metrics page, summed over engines and models.

    Raises ValueError when the page has no spec-decode counters (the server runs without a speculator).
    """
    drafts = draft_tokens = 0.0
    per_pos: dict[int, float] = {}
    seen = False
    for name, labels, value in parse_prometheus(metrics_text):
        if name == DRAFTS:
            drafts += value
            seen = True
        elif name == DRAFT_TOKENS:
            draft_tokens += value
        elif name == PER_POS and "position" in labels:
            pos = int(labels["position"])
            per_pos[pos] = per_pos.get(pos, 0.0) + value
    if not seen:
        raise ValueError(
            f"no {DRAFTS} on the metrics page: is the server running with --speculative-config "
            "(and without --disable-log-stats)?"
        )
    k = max(per_pos) + 1 if per_pos else 0
    return AcceptanceCounts(int(drafts), [int(per_pos.get(i, 0)) for i in range(k)], int(draft_tokens))


def counts_delta(after: AcceptanceCounts, before: AcceptanceCounts) -> AcceptanceCounts:
    """Counters accumulated between two snapshots (a restart in between shows up as negative: refused)."""
    k = after.num_positions
    prev = before.accepted_per_pos + [0] * (k - before.num_positions)
    delta = AcceptanceCounts(
        after.num_drafts - before.num_drafts,
        [a - b for a, b in zip(after.accepted_per_pos, prev, strict=False)],
        after.num_draft_tokens - before.num_draft_tokens,
    )
    if delta.num_drafts < 0 or any(x < 0 for x in delta.accepted_per_pos):
        raise ValueError("spec-decode counters went backwards: the server restarted during the measurement")
    return delta


@dataclass
class ServerRun:
    """What one prompt set produced on the server."""

    counts: AcceptanceCounts
    num_requests: int
    num_failed: int
    completion_tokens: int
    seconds: float


def served_model(url: str, timeout: float = 30.0) -> str:
    """The first model id the server lists (what requests must name)."""
    resp = httpx.get(api_url(url, "/v1/models"), timeout=timeout)
    resp.raise_for_status()
    return resp.json()["data"][0]["id"]


def fetch_counts(url: str, timeout: float = 30.0) -> AcceptanceCounts:
    resp = httpx.get(api_url(url, "/metrics"), timeout=timeout)
    resp.raise_for_status()
    return spec_counts(resp.text)


def _settled_counts(url: str, tries: int = 10, pause_s: float = 0.2) -> AcceptanceCounts:
    """Read the counters until two consecutive reads agree (at most `tries` reads)."""
    last = fetch_counts(url)
    for _ in range(tries):
        time.sleep(pause_s)
        now = fetch_counts(url)
        if now == last:
            break
        last = now
    return last


@dataclass(frozen=True)
class ChatRequests:
    """How each prompt is sent: the generation knobs of every chat request and how many are in flight. No
    defaults: live eval fills them from the recipe (`schemas.recipe`), so no second default can disagree."""

    max_tokens: int
    temperature: float
    top_p: float
    concurrency: int
    timeout: float
    seed: int | None = None  # request i is seeded with seed + i


async def _send_all(
    url: str, model: str, conversations: list[list[dict[str, Any]]], req: ChatRequests
) -> tuple[int, int]:
    """Send every conversation as one chat request; returns (failed requests, completion tokens)."""
    sem = asyncio.Semaphore(req.concurrency)
    chat = api_url(url, "/v1/chat/completions")
    failed = tokens = 0

    async def one(client: httpx.AsyncClient, i: int, messages: list[dict[str, Any]]) -> None:
        nonlocal failed, tokens
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
        }
        if req.seed is not None:
            body["seed"] = req.seed + i
        async with sem:
            try:
                resp = await client.post(chat, json=body, timeout=req.timeout)
                resp.raise_for_status()
                tokens += int(resp.json().get("usage", {}).get("completion_tokens", 0))
            except (httpx.HTTPError, ValueError):
                failed += 1

    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(one(client, i, m) for i, m in enumerate(conversations)))
    return failed, tokens


def measure_server(
    url: str, conversations: list[list[dict[str, Any]]], req: ChatRequests, *, model: str | None = None
) -> ServerRun:
    """Run one prompt set against a live server and return its counter deltas.

    The metrics page is read after every response has arrived, until two reads agree: vLLM records
    an engine step's counters right after it queues that step's outputs, so the last step of the last
    request is in by then. The deltas cover exactly these requests (plus any from other clients).
    """
    model = model or served_model(url)
    before = fetch_counts(url)
    start = time.monotonic()
    failed, tokens = asyncio.run(_send_all(url, model, conversations, req))
    seconds = time.monotonic() - start
    after = _settled_counts(url)
    return ServerRun(counts_delta(after, before), len(conversations), failed, tokens, seconds)
