"""Regen pieces without an engine: sampling resolution, reasoning split, the multi-turn token rule, records."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspark_data.prompts.normalize import Prompt, Rejection
from dspark_data.regen.conversation import Conversation, RegenContext, TurnResult
from dspark_data.regen.reasoning import ReasoningSplitter
from dspark_data.regen.sampling import NEUTRAL, resolve_sampling, target_generation_defaults
from dspark_data.seeding import derive_seed
from dspark_data.store import ShardWriter, open_dataset
from schemas.recipe import SamplingConfig
from schemas.regen import REGEN_ARROW_SCHEMA, RegenRecord, record_to_row, row_to_record


@pytest.fixture(scope="module")
def tok(tiny_random_target: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_random_target)


def _ctx(tok, **kw) -> RegenContext:
    args = dict(
        tokenizer=tok,
        splitter=ReasoningSplitter(tok, {tok.eos_token_id}),
        sampling=resolve_sampling(SamplingConfig(temperature=0.7, max_new_tokens=40), {}),
        run_seed=3,
        seq_len=256,
        max_prompt_tokens=128,
        turns="all",
        target_model="tiny:random",
        target_revision=None,
    )
    args.update(kw)
    return RegenContext(**args)


def _encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_sampling_precedence(tiny_random_target: str) -> None:
    defaults = target_generation_defaults(tiny_random_target)
    assert defaults["temperature"] == pytest.approx(0.8) and defaults["top_p"] == pytest.approx(0.95)
    s = resolve_sampling(SamplingConfig(temperature=None, top_p=0.5, top_k=None, max_new_tokens=9), defaults)
    assert (s.temperature, s.top_p, s.top_k, s.max_new_tokens) == (pytest.approx(0.8), 0.5, 0, 9)
    neutral = resolve_sampling(SamplingConfig(top_k=-1), {})
    assert neutral.temperature == NEUTRAL["temperature"] and neutral.top_k == 0
    assert target_generation_defaults("/nonexistent-dir-xyz") == {}


def test_reasoning_split_cases(tok) -> None:
    sp = ReasoningSplitter(tok, {0})
    assert sp.by_id
    assert sp.split(_encode(tok, "<think> plan it </think>\nThe answer.<|endoftext|>")) == ("plan it", "The answer.")
    assert sp.split(_encode(tok, "plan</think>\nok")) == ("plan", "ok")  # template opened the tag
    assert sp.split(_encode(tok, "<think>unfinished thought")) == ("unfinished thought", "")
    assert sp.split(_encode(tok, "just text<|endoftext|>")) == (None, "just text")

    class TextOnly:  # a tokenizer whose think tags are not single tokens: split on text
        def get_vocab(self):
            return {}

        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids)

    text = ReasoningSplitter(TextOnly(), set())
    assert text.split([ord(c) for c in "<think>r</think> c"]) == ("r", "c")


def _prompt(*messages: tuple[str, str]) -> Prompt:
    return Prompt("p1", "test", 0, tuple(messages))


def _answer(conv: Conversation, tok, text: str, finish: str = "stop") -> TurnResult:
    """Answer the next turn as an engine would: prompt ids = the chat template on the request's messages."""
    req = conv.next_request()
    rendered = tok.apply_chat_template(
        [dict(m, reasoning_content=m["reasoning"]) if "reasoning" in m else m for m in req.messages],
        add_generation_prompt=True,
        tokenize=True,
    )
    ids = list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
    result = TurnResult(req.sample_id, req.turn, ids, _encode(tok, text), finish)
    conv.add_result(result, req)
    return result


def test_multi_turn_prefix_kept_when_template_reproduces_it(tok) -> None:
    conv = Conversation(_prompt(("system", "Be brief."), ("user", "Hi?"), ("user", "And?")), _ctx(tok))
    req = conv.next_request()
    assert req.params["seed"] == derive_seed(3, "regen", "p1", 0) and req.params["temperature"] == 0.7
    assert req.params["max_tokens"] == 40 and [m["role"] for m in req.messages] == ["system", "user"]
    first = _answer(conv, tok, "<think>why</think>\nBecause.<|endoftext|>")
    second = _answer(conv, tok, "<think>more</think>\nYes.<|endoftext|>")
    assert conv.next_request() is None
    rec = conv.record()
    seq1 = first.prompt_ids + first.generated_ids
    assert rec.input_ids[: len(seq1)] == seq1  # the template reproduced turn 0 token for token
    assert rec.input_ids == second.prompt_ids + second.generated_ids
    assert rec.turns[1].kept_prefix_tokens == len(seq1) and not rec.turns[1].retokenized
    expected = [False] * len(first.prompt_ids) + [True] * len(first.generated_ids)
    expected += [False] * (len(second.prompt_ids) - len(seq1)) + [True] * len(second.generated_ids)
    assert rec.loss_mask == expected
    assert rec.num_generated_tokens == len(first.generated_ids) + len(second.generated_ids)
    assert [(m.role, m.content, m.reasoning_content) for m in rec.messages] == [
        ("system", "Be brief.", None),
        ("user", "Hi?", None),
        ("assistant", "Because.", "why"),
        ("user", "And?", None),
        ("assistant", "Yes.", "more"),
    ]
    assert [t.seed for t in rec.turns] == [derive_seed(3, "regen", "p1", t) for t in (0, 1)]
    # the assistant message sent back to the engine carries the reasoning in vLLM's field
    assert conv._history(1, for_template=False)[2] == {"role": "assistant", "content": "Because.", "reasoning": "why"}


def test_multi_turn_retokenized_keeps_only_common_prefix(tok) -> None:
    conv = Conversation(_prompt(("user", "Hi?"), ("user", "And?")), _ctx(tok))
    first = _answer(conv, tok, "no think tags here<|endoftext|>")  # template will add <think></think>
    second = _answer(conv, tok, "<think>x</think>\ny<|endoftext|>")
    rec = conv.record()
    keep = rec.turns[1].kept_prefix_tokens
    assert rec.turns[1].retokenized and len(first.prompt_ids) <= keep < len(first.prompt_ids) + len(first.generated_ids)
    assert rec.input_ids == second.prompt_ids + second.generated_ids
    assert rec.loss_mask[len(first.prompt_ids) : keep] == [True] * (keep - len(first.prompt_ids))
    assert not any(rec.loss_mask[keep : len(second.prompt_ids)])
    assert sum(rec.loss_mask) == keep - len(first.prompt_ids) + len(second.generated_ids)


def test_turns_first_and_length_limits(tok) -> None:
    conv = Conversation(_prompt(("user", "Hi?"), ("user", "And?")), _ctx(tok, turns="first"))
    _answer(conv, tok, "ok<|endoftext|>")
    assert conv.next_request() is None and len(conv.record().turns) == 1
    long = Conversation(
        _prompt(
            ("user", "word " * 300),
        ),
        _ctx(tok),
    )
    rej = long.next_request()
    assert isinstance(rej, Rejection) and rej.reason == "prompt_too_long"
    # seq_len caps the answer: max_tokens is what is left, and a cut answer is marked truncated
    short = Conversation(_prompt(("user", "Hi?"), ("user", "And?")), _ctx(tok, seq_len=24))
    req = short.next_request()
    room = 24 - short.ctx.prompt_length(req.messages)
    assert req.params["max_tokens"] == room
    text = tok.decode(list(range(100, 100 + room)))
    _answer(short, tok, text, finish="length")
    assert short.next_request() is None  # no room left for another turn
    rec = short.record()
    assert rec.truncated and rec.finish_reason == "length" and rec.num_tokens <= 24


def test_record_roundtrip_through_the_store(tok, tmp_path: Path) -> None:
    conv = Conversation(
        _prompt(
            ("user", "Hi?"),
        ),
        _ctx(tok),
    )
    _answer(conv, tok, "<think>a</think>\nb<|endoftext|>")
    conv.next_request()
    rec = conv.record()
    with ShardWriter(tmp_path, "regen", REGEN_ARROW_SCHEMA, {"t": 1}) as w:
        w.write(record_to_row(rec))
    ds = open_dataset(tmp_path)
    back = row_to_record(ds.row(0))
    assert back == rec
    with pytest.raises(ValueError):
        RegenRecord.model_validate({**rec.model_dump(), "loss_mask": rec.loss_mask[:-1]})
