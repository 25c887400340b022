"""One conversation being regenerated: which turn to ask next, and how its token ids accumulate.

The backends only answer single requests; this state machine turns a `Prompt` into requests (one per
answered user turn) and the engine's results into one `RegenRecord`.

Token ids (the part a draft model is trained on) follow one rule: **the record holds the exact ids of
the last request** — its prompt ids (the chat template applied to the conversation so far, as the
engine rendered it) followed by the ids it generated. Earlier turns are inside that prompt.

Multi-turn and re-tokenisation: turn k's prompt re-renders the target's earlier answers through the
chat template. When that reproduces the earlier sequence token for token (the previous prompt +
generated ids is a prefix of the new prompt), every earlier generated token keeps loss_mask 1. When it
does not (the template drops or rewrites reasoning, normalises whitespace, or BPE merges the re-encoded
text differently), only the longest common prefix keeps its mask: tokens from the first differing
position on are template text, not tokens the target sampled in that context, so they get 0. The turn
is flagged `retokenized` with `kept_prefix_tokens`, and the summary counts such turns. The stored ids
are therefore always a sequence the target really processed, and loss_mask is 1 exactly on tokens it
sampled at that position with that prefix.

Lengths: the first turn's templated prompt must fit `max_prompt_tokens` (else `prompt_too_long`);
each turn may generate `min(max_new_tokens, seq_len - prompt length)` tokens; a turn whose prompt
leaves no room ends the conversation at the previous turn. The prompt length used for these caps is
measured with the local tokenizer and the same template, so both backends compute the same caps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dspark_data.prompts.normalize import Prompt, Rejection
from dspark_data.regen.reasoning import ReasoningSplitter
from dspark_data.regen.sampling import request_fields
from dspark_data.seeding import derive_seed
from schemas.regen import RegenMessage, RegenRecord, RegenTurn, SamplingRecord


@dataclass(frozen=True)
class TurnRequest:
    """One chat request: OpenAI-style messages and every sampling field (see sampling.request_fields)."""

    sample_id: str
    turn: int
    messages: list[dict[str, Any]]
    params: dict[str, Any]


@dataclass(frozen=True)
class TurnResult:
    """What a backend returns for a request: the engine's prompt ids and generated ids."""

    sample_id: str
    turn: int
    prompt_ids: list[int]
    generated_ids: list[int]
    finish_reason: str


@dataclass(frozen=True)
class TurnFailure:
    """A request that could not be answered (after retries); the sample goes to the errors file."""

    sample_id: str
    turn: int
    reason: str
    detail: str


@dataclass
class RegenContext:
    """Everything a conversation needs that is the same for the whole run."""

    tokenizer: Any
    splitter: ReasoningSplitter
    sampling: SamplingRecord
    run_seed: int
    seq_len: int
    max_prompt_tokens: int
    turns: Literal["first", "all"]
    target_model: str
    target_revision: str | None

    def prompt_length(self, messages: list[dict[str, Any]]) -> int:
        """Tokens of the templated conversation with the generation prompt (as vLLM renders it)."""
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return len(out)


@dataclass
class Conversation:
    """The regeneration state of one prompt."""

    prompt: Prompt
    ctx: RegenContext
    answers: list[tuple[str | None, str]] = field(default_factory=list)  # (reasoning, content) per turn
    turns: list[RegenTurn] = field(default_factory=list)
    input_ids: list[int] = field(default_factory=list)
    loss_mask: list[bool] = field(default_factory=list)
    truncated: bool = False
    finished: bool = False
    _user_positions: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._user_positions = [i for i, (role, _) in enumerate(self.prompt.messages) if role == "user"]
        if self.ctx.turns == "first":
            self._user_positions = self._user_positions[:1]

    @property
    def id(self) -> str:
        return self.prompt.id

    def _history(self, turn: int, for_template: bool) -> list[dict[str, Any]]:
        """Messages up to user turn `turn`, with the target's answers after each earlier user turn."""
        end = self._user_positions[turn]
        out: list[dict[str, Any]] = []
        answered = 0
        for pos, (role, content) in enumerate(self.prompt.messages[: end + 1]):
            out.append({"role": role, "content": content})
            if role == "user" and pos != end and answered < len(self.answers):
                reasoning, text = self.answers[answered]
                msg: dict[str, Any] = {"role": "assistant", "content": text}
                if reasoning is not None:
                    msg["reasoning"] = reasoning  # vLLM's field; it hands both spellings to the template
                    if for_template:
                        msg["reasoning_content"] = reasoning
                out.append(msg)
                answered += 1
        return out

    def next_request(self) -> TurnRequest | Rejection | None:
        """The next request, a Rejection (first turn does not fit), or None when the conversation is done."""
        turn = len(self.turns)
        if self.finished or turn >= len(self._user_positions) or self.truncated:
            self.finished = True
            return None
        length = self.ctx.prompt_length(self._history(turn, for_template=True))
        room = self.ctx.seq_len - length
        if turn == 0 and (length > self.ctx.max_prompt_tokens or room < 1):
            limit = min(self.ctx.max_prompt_tokens, self.ctx.seq_len - 1)
            return Rejection(
                self.id, self.prompt.source, self.prompt.index, "prompt_too_long", f"{length} > {limit} tokens"
            )
        if room < 1:
            self.finished = True
            return None
        seed = derive_seed(self.ctx.run_seed, "regen", self.id, turn)
        max_tokens = min(self.ctx.sampling.max_new_tokens, room)
        return TurnRequest(
            self.id, turn, self._history(turn, for_template=False), request_fields(self.ctx.sampling, seed, max_tokens)
        )

    def add_result(self, result: TurnResult, request: TurnRequest) -> None:
        """Fold one answered turn into the sequence (see the module docstring for the prefix rule)."""
        prompt_ids, gen = list(result.prompt_ids), list(result.generated_ids)
        prev = self.input_ids
        keep = 0
        for a, b in zip(prev, prompt_ids, strict=False):
            if a != b:
                break
            keep += 1
        mask = self.loss_mask[:keep] + [False] * (len(prompt_ids) - keep) + [True] * len(gen)
        ids = prompt_ids + gen
        finish = result.finish_reason
        capped = request.params["max_tokens"] < self.ctx.sampling.max_new_tokens
        if len(ids) > self.ctx.seq_len:  # the engine's prompt was longer than our local count
            ids, mask, finish = ids[: self.ctx.seq_len], mask[: self.ctx.seq_len], "length"
            capped = True
        if finish == "length" and capped:
            self.truncated = True
        self.input_ids, self.loss_mask = ids, mask
        self.answers.append(self.ctx.splitter.split(gen))
        self.turns.append(
            RegenTurn(
                turn=result.turn,
                seed=request.params["seed"],
                prompt_tokens=len(prompt_ids),
                generated_tokens=len(gen),
                finish_reason=finish,
                kept_prefix_tokens=keep,
                retokenized=keep < len(prev),
            )
        )

    def record(self) -> RegenRecord:
        """The finished conversation as a record (call once next_request() has returned None)."""
        messages: list[RegenMessage] = []
        answered = 0
        last_user = self._user_positions[len(self.turns) - 1]
        for pos, (role, content) in enumerate(self.prompt.messages[: last_user + 1]):
            messages.append(RegenMessage(role=role, content=content))  # type: ignore[arg-type]
            if role == "user" and answered < len(self.answers) and pos == self._user_positions[answered]:
                reasoning, text = self.answers[answered]
                messages.append(RegenMessage(role="assistant", content=text, reasoning_content=reasoning))
                answered += 1
        generated = sum(self.loss_mask)
        last = self.turns[-1]
        return RegenRecord(
            id=self.id,
            source=self.prompt.source,
            source_index=self.prompt.index,
            messages=messages,
            input_ids=self.input_ids,
            loss_mask=self.loss_mask,
            finish_reason="length" if self.truncated else last.finish_reason,
            truncated=self.truncated,
            seed=self.turns[0].seed,
            sampling=self.ctx.sampling,
            turns=self.turns,
            target_model=self.ctx.target_model,
            target_revision=self.ctx.target_revision,
            num_tokens=len(self.input_ids),
            num_prompt_tokens=len(self.input_ids) - generated,
            num_generated_tokens=generated,
        )
