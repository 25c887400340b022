"""The regen loop: keep the backend busy, fold results into conversations, commit groups in order.

Why groups are committed strictly in plan order: shard n then always holds the same samples in the
same order, whether the run was interrupted or not, so an interrupted-and-resumed run writes the same
shard files as an uninterrupted one (byte for byte when generation is deterministic). Why a window:
groups are opened while fewer than `window` prompts sit in open groups, which bounds the records held
in memory while keeping far more requests queued than the engine batches at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dspark_data.prompts.normalize import Prompt, Rejection
from dspark_data.regen.backends import Backend
from dspark_data.regen.conversation import Conversation, RegenContext, TurnFailure, TurnRequest
from dspark_data.regen.progress import RegenProgress, RunStats
from dspark_data.shutdown import check_stop
from schemas.regen import RegenRecord, record_to_row


@dataclass
class _Group:
    """One commit unit: its items in plan order and what became of each."""

    items: list[Prompt | Rejection]
    outcome: dict[str, RegenRecord | Rejection] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return len(self.outcome) == len(self.items)


class RegenDriver:
    """Runs groups of prompts through a backend and commits each finished group to the shard writer."""

    def __init__(
        self,
        backend: Backend,
        ctx: RegenContext,
        writer: Any,
        stats: RunStats,
        progress: RegenProgress,
        window: int,
    ):
        self.backend, self.ctx, self.writer = backend, ctx, writer
        self.stats, self.progress, self.window = stats, progress, max(1, window)
        self._open: deque[_Group] = deque()
        self._convs: dict[str, tuple[Conversation, _Group]] = {}
        self._requests: dict[tuple[str, int], TurnRequest] = {}
        self._open_prompts = 0

    def run(self, groups: list[list[Prompt | Rejection]]) -> None:
        todo = deque(_Group(items) for items in groups if items)
        while todo or self._open:
            while todo and (self._open_prompts < self.window or not self._open):
                self._open_group(todo.popleft())
            self._commit_ready()
            check_stop("regen", "every finished group is committed; the turns in flight are discarded")
            if not self._open:
                continue
            results = self.backend.poll()
            if not results and not self._requests:
                self._commit_ready()
                if self._open and not self._open[0].done:
                    raise RuntimeError("regen driver stalled: a group is open but nothing is in flight")
            for result in results:
                self._on_result(result)
            self._commit_ready()

    # ------------------------------------------------------------------ internals

    def _open_group(self, group: _Group) -> None:
        self._open.append(group)
        self._open_prompts += len(group.items)
        batch: list[TurnRequest] = []
        for item in group.items:
            if isinstance(item, Rejection):
                self._finish(group, item)
                continue
            conv = Conversation(item, self.ctx)
            self._convs[conv.id] = (conv, group)
            self._advance(conv, group, batch)
        self._submit(batch)

    def _advance(self, conv: Conversation, group: _Group, batch: list[TurnRequest]) -> None:
        """Ask the conversation for its next turn: queue it, or finish the conversation."""
        nxt = conv.next_request()
        if isinstance(nxt, TurnRequest):
            self._requests[(nxt.sample_id, nxt.turn)] = nxt
            batch.append(nxt)
            return
        del self._convs[conv.id]
        self._finish(group, nxt if isinstance(nxt, Rejection) else conv.record())

    def _submit(self, batch: list[TurnRequest]) -> None:
        if batch:
            self.backend.submit(batch)

    def _on_result(self, result: Any) -> None:
        request = self._requests.pop((result.sample_id, result.turn))
        conv, group = self._convs[result.sample_id]
        if isinstance(result, TurnFailure):
            del self._convs[conv.id]
            item = conv.prompt
            detail = f"turn {result.turn}: {result.detail}"
            self._finish(group, Rejection(item.id, item.source, item.index, result.reason, detail))
            return
        conv.add_result(result, request)
        batch: list[TurnRequest] = []
        self._advance(conv, group, batch)
        self._submit(batch)

    def _finish(self, group: _Group, outcome: RegenRecord | Rejection) -> None:
        group.outcome[outcome.id] = outcome
        if isinstance(outcome, Rejection):
            self.stats.errors[outcome.reason] += 1
        else:
            self.stats.samples += 1
            self.stats.generated_tokens += outcome.num_generated_tokens
            self.stats.prompt_tokens += outcome.num_prompt_tokens
        self.progress.advance()

    def _commit_ready(self) -> None:
        while self._open and self._open[0].done:
            group = self._open.popleft()
            self._open_prompts -= len(group.items)
            for item in group.items:
                outcome = group.outcome[item.id]
                if isinstance(outcome, Rejection):
                    self.writer.record_error(
                        outcome.id, outcome.reason, f"{outcome.source} row {outcome.index}: {outcome.detail}"
                    )
                else:
                    self.writer.write(record_to_row(outcome))
            self.writer.commit()
