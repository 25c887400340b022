"""Generation backends: answer `TurnRequest`s and hand back `TurnResult`s (or `TurnFailure`s) as they finish.

- `engine.VllmEngineBackend`: the in-process `vllm.LLM` (requests queued with `enqueue_chat`, the engine
  stepped until they finish: the same path `LLM.chat` takes, with results streamed out).
- `openai.OpenAIBackend`: one or many `vllm serve` endpoints over HTTP (`/v1/chat/completions` with
  `return_token_ids`), with bounded concurrency per endpoint, retries and backoff.

Both take the same requests (messages + every sampling field) and return the engine's own token ids,
which is why they produce the same records.
"""

from __future__ import annotations

from typing import Protocol

from dspark_data.regen.conversation import TurnFailure, TurnRequest, TurnResult


class Backend(Protocol):
    """What the regen driver needs from a backend."""

    def submit(self, requests: list[TurnRequest]) -> None:
        """Queue requests; never blocks on generation."""

    def poll(self) -> list[TurnResult | TurnFailure]:
        """Block until at least one queued request finishes and return all finished ones ([] if none queued)."""

    def close(self) -> None:
        """Release the engine or the HTTP clients."""
