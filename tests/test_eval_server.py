"""`dspark eval --server`: counter deltas from /metrics around a prompt set, against a local fake server.

The fake serves a fixed metrics page before the requests and another after them (vLLM's real exposition
format, several engines and unrelated metrics included), and answers chat completions, so the test pins
the arithmetic: per-position = delta(per_pos) / delta(drafts), Avg Length = 1 + sum.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from dspark_train.eval.acceptance import AcceptanceCounts, markdown_table
from dspark_train.eval.server import ChatRequests, counts_delta, measure_server, parse_prometheus, spec_counts


def metrics_page(drafts: tuple[int, int], per_pos: tuple[list[int], list[int]], draft_tokens: tuple[int, int]) -> str:
    """vLLM-shaped /metrics text with two engines (the figures of both must be summed)."""
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0",model_name="tiny"} 0.0',
        "# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.",
        "# TYPE vllm:spec_decode_num_drafts_total counter",
    ]
    for e in (0, 1):
        lines.append(f'vllm:spec_decode_num_drafts_total{{engine="{e}",model_name="tiny"}} {float(drafts[e])}')
    lines += ["# TYPE vllm:spec_decode_num_draft_tokens_total counter"]
    for e in (0, 1):
        labels = f'engine="{e}",model_name="tiny"'
        lines.append(f"vllm:spec_decode_num_draft_tokens_total{{{labels}}} {float(draft_tokens[e])}")
    lines += ["# TYPE vllm:spec_decode_num_accepted_tokens_per_pos_total counter"]
    for e in (0, 1):
        for pos, v in enumerate(per_pos[e]):
            labels = f'engine="{e}",model_name="tiny",position="{pos}"'
            lines.append(f"vllm:spec_decode_num_accepted_tokens_per_pos_total{{{labels}}} {float(v)}")
    lines += [
        "# TYPE vllm:e2e_request_latency_seconds histogram",
        'vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 3.0',
        'vllm:e2e_request_latency_seconds_sum{engine="0",model_name="tiny"} 1.5e-01',
    ]
    return "\n".join(lines) + "\n"


BEFORE = metrics_page((100, 50), ([70, 40, 20], [30, 10, 5]), (300, 150))
# +100 drafts in engine 0, +100 in engine 1; accepted per position +80/+50/+30 and +60/+30/+10.
AFTER = metrics_page((200, 150), ([150, 90, 50], [90, 40, 15]), (600, 450))
EXPECTED = AcceptanceCounts(200, [140, 80, 40], 600)


class FakeVllm:
    """A threaded HTTP server: /v1/models, /metrics (BEFORE until `expected` chats arrived), chat completions."""

    def __init__(self, expected_requests: int) -> None:
        self.expected = expected_requests
        self.bodies: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _send(self, code: int, body: str, ctype: str = "application/json") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model"}]}))
                elif self.path == "/metrics":
                    done = len(fake.bodies) >= fake.expected
                    self._send(200, AFTER if done else BEFORE, "text/plain; version=0.0.4")
                else:
                    self._send(404, "{}")

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    self._send(404, "{}")
                    return
                fake.bodies.append(body)
                reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
                         "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}
                self._send(200, json.dumps(reply))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeVllm:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_parse_prometheus_labels_and_values():
    samples = parse_prometheus(BEFORE)
    names = {s[0] for s in samples}
    assert "vllm:spec_decode_num_drafts_total" in names and "vllm:e2e_request_latency_seconds_sum" in names
    per_pos = [s for s in samples if s[0].endswith("per_pos_total")]
    assert per_pos[0][1] == {"engine": "0", "model_name": "tiny", "position": "0"} and per_pos[0][2] == 70.0


def test_spec_counts_sums_engines_and_delta():
    before, after = spec_counts(BEFORE), spec_counts(AFTER)
    assert before == AcceptanceCounts(150, [100, 50, 25], 450)
    delta = counts_delta(after, before)
    assert delta == EXPECTED
    assert delta.per_position() == pytest.approx([0.70, 0.40, 0.20])
    assert delta.avg_length() == pytest.approx(2.30)
    with pytest.raises(ValueError, match="restarted"):
        counts_delta(before, after)
    with pytest.raises(ValueError, match="speculative-config"):
        spec_counts("# no spec decode here\nvllm:num_requests_running 0\n")


def test_markdown_table_has_seed_card_shape():
    table = markdown_table({"HumanEval": EXPECTED}).splitlines()
    assert table[0] == "| Dataset | Pos 1 | Pos 2 | Pos 3 | Avg Length |"
    assert table[2] == "| HumanEval | 70.0% | 40.0% | 20.0% | 2.30 |"


def test_measure_server_reads_deltas_and_sends_chat_turns():
    convs = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]
    with FakeVllm(expected_requests=len(convs)) as fake:
        req = ChatRequests(max_tokens=16, temperature=0.0, top_p=1.0, concurrency=2, timeout=60.0, seed=3)
        run = measure_server(fake.url, convs, req)
    assert run.counts == EXPECTED and run.num_failed == 0 and run.completion_tokens == 35
    assert sorted(b["messages"][0]["content"] for b in fake.bodies) == [f"question {i}" for i in range(5)]
    assert all(b["model"] == "tiny" and b["max_tokens"] == 16 and b["temperature"] == 0.0 for b in fake.bodies)
    assert sorted(b["seed"] for b in fake.bodies) == [3, 4, 5, 6, 7]


def test_cli_eval_server_prints_table_and_writes_results(tmp_path: Path):
    prompts = tmp_path / "HumanEval.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"def f{i}():"}) + "\n" for i in range(3)))
    with FakeVllm(expected_requests=3) as fake:
        result = CliRunner().invoke(app, ["eval", "--server", fake.url, "--prompts", str(prompts), "--mode", "greedy",
                                          "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "| HumanEval | 70.0% | 40.0% | 20.0% | 2.30 |" in result.output
    summary = json.loads((tmp_path / "eval" / "vllm" / "summary.json").read_text())
    assert summary["HumanEval_greedy_avg_length"] == pytest.approx(2.30)
    assert summary["HumanEval_greedy_pos1"] == pytest.approx(0.70)
    results = json.loads((tmp_path / "eval" / "vllm" / "results.json").read_text())
    assert results["HumanEval"]["greedy"]["counts"]["accepted_per_pos"] == [140, 80, 40]
