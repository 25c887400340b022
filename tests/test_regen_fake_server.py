"""A fake vLLM chat server (in-process, no model) for the regen HTTP tests, and checks of the fake itself.

It speaks the part of vLLM's `/v1/chat/completions` regen uses: prompt ids from the target tokenizer's
chat template (`prompt_token_ids`), generated ids drawn deterministically from the request's seed
(`choices[0].token_ids`), `finish_reason`. A fault policy decides per (seed, attempt) whether to answer
500, 429, drop the connection, or answer normally, so tests can check retries and the errors file.
Other regen test modules import it (`from test_regen_fake_server import FakeVllmServer`).
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

THINK, END_THINK, EOS = 6, 7, 0  # the tiny target's ids of <think>, </think>, <|endoftext|>

FaultPolicy = Callable[[int, int], str]  # (seed, attempt) -> "ok" | "500" | "429" | "drop" | "slow"


def no_faults(seed: int, attempt: int) -> str:
    return "ok"


def fake_generation(seed: int, max_tokens: int) -> tuple[list[int], str]:
    """`<think> r... </think> c... <|endoftext|>` with lengths from the seed; cut at max_tokens."""
    rng = random.Random(seed)
    ids = [THINK] + [rng.randrange(10, 2000) for _ in range(rng.randrange(0, 12))] + [END_THINK]
    ids += [rng.randrange(10, 2000) for _ in range(rng.randrange(1, 24))] + [EOS]
    if len(ids) > max_tokens:
        return ids[:max_tokens], "length"
    return ids, "stop"


class FakeVllmServer:
    """ThreadingHTTPServer on 127.0.0.1 answering like vLLM with return_token_ids."""

    def __init__(self, tokenizer: Any, policy: FaultPolicy = no_faults, latency_s: float = 0.0):
        self.tokenizer, self.policy, self.latency_s = tokenizer, policy, latency_s
        self.attempts: Counter[int] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.requests = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeVllmServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        msgs = [dict(m, reasoning_content=m["reasoning"]) if "reasoning" in m else m for m in messages]
        out = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = self.prompt_ids(body["messages"])
        ids, finish = fake_generation(int(body["seed"]), int(body["max_tokens"]))
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": body["model"],
            "prompt_token_ids": prompt,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "x"},
                    "finish_reason": finish,
                    "token_ids": ids,
                }
            ],
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": len(ids),
                "total_tokens": len(prompt) + len(ids),
            },
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": "fake-target", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seed = int(body["seed"])
                with server._lock:
                    attempt = server.attempts[seed]
                    server.attempts[seed] += 1
                    server.requests += 1
                action = server.policy(seed, attempt)
                with server._lock:
                    server.outcomes[action] += 1
                if server.latency_s:
                    time.sleep(server.latency_s)
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action == "500":
                    self._send(500, {"error": "injected"})
                elif action == "429":
                    self._send(429, {"error": "slow down"}, {"Retry-After": "0.05"})
                elif action == "400":
                    self._send(400, {"error": "bad request"})
                else:
                    self._send(200, server.answer(body))

        return Handler


def test_fake_server_answers_like_vllm(tiny_random_target: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_random_target)
    with FakeVllmServer(tok, policy=lambda s, a: "500" if a == 0 else "ok") as srv:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 3, "max_tokens": 5}
        assert httpx.post(srv.url + "/v1/chat/completions", json=body).status_code == 500
        data = httpx.post(srv.url + "/v1/chat/completions", json=body).json()
    assert data["prompt_token_ids"][:2] == [1, 2]  # [gMASK]<sop>
    assert data["choices"][0]["token_ids"] == fake_generation(3, 5)[0]
    assert data["choices"][0]["finish_reason"] == "length"
