"""Offline evaluation: the speculative loop is lossless and counts what vLLM counts; rejection sampling is exact.

Uses the random tiny target (float32, so greedy decoding is deterministic) and a randomly initialised
draft exported through the real exporter; a scripted "oracle" draft that always proposes the target's own
greedy continuation pins the per-position accounting.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_export import make_checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer

from dspark_data.targets.stop_ids import stop_token_ids
from dspark_train.eval.offline import chat_ids
from dspark_train.eval.speculative import Calibration, SamplingParams, _accept, sampling_probs, speculate
from dspark_train.eval.target import HfTarget
from dspark_train.export import export_draft, load_export
from dspark_train.model import Proposal


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest, and a busy machine does not thrash (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, tiny_random_target) -> Path:
    root = tmp_path_factory.mktemp("eval")
    export_draft(make_checkpoint(root / "train", tiny_random_target), root / "export", dtype="float32")
    return root / "export"


def test_target_probs_temperature_then_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    torch.testing.assert_close(sampling_probs(logits, 1.0, 1.0), torch.tensor([0.5, 0.3, 0.15, 0.05]))
    torch.testing.assert_close(sampling_probs(logits, 1.0, 0.7), torch.tensor([0.5, 0.3, 0.0, 0.0]) / 0.8)
    torch.testing.assert_close(sampling_probs(logits, 1.0, 0.45), torch.tensor([1.0, 0.0, 0.0, 0.0]))
    hot = sampling_probs(logits, 2.0, 1.0)
    assert hot[0] < 0.5 and hot[3] > 0.05


@pytest.mark.parametrize("draft_kind", ["probabilistic", "greedy"])
def test_rejection_sampling_reproduces_the_target_distribution(draft_kind: str):
    """The first emitted token of a step is distributed as p, whatever q is (the lossless guarantee)."""
    p_logits = torch.log(torch.tensor([[0.45, 0.25, 0.15, 0.1, 0.05], [0.2] * 5]))
    q = torch.tensor([[0.05, 0.1, 0.6, 0.05, 0.2]])
    params = SamplingParams(temperature=1.0, top_p=1.0)
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(5)
    n = 20000
    for _ in range(n):
        if draft_kind == "greedy":
            d, qd = 2, torch.nn.functional.one_hot(torch.tensor([2]), 5).float()
        else:
            d, qd = int(torch.multinomial(q[0], 1, generator=gen)), q
        accepted, nxt = _accept(p_logits, [d], qd, params, gen)
        counts[d if accepted else nxt] += 1
    torch.testing.assert_close(counts / n, torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05]), atol=0.012, rtol=0)


def test_greedy_speculation_is_lossless(export_dir: Path, tiny_random_target: str):
    """Speculative greedy decoding emits exactly the target's own greedy continuation."""
    loaded = load_export(export_dir)
    target = HfTarget(tiny_random_target, loaded.aux_layer_ids, dtype="float32")
    tok = AutoTokenizer.from_pretrained(tiny_random_target)
    ids = chat_ids(tok, [{"role": "user", "content": "Write a function that adds two numbers."}])
    gen = speculate(target, loaded.model, ids, k=7, max_new_tokens=40, params=SamplingParams(),
                    eos_ids=set(), generator=torch.Generator().manual_seed(0))
    ref = AutoModelForCausalLM.from_pretrained(tiny_random_target, dtype=torch.float32).eval()
    out = ref.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False, eos_token_id=None,
                       pad_token_id=0)[0, len(ids):].tolist()
    assert gen.tokens == out
    c = gen.counts
    assert c.num_draft_tokens == 7 * c.num_drafts
    # each step emits accepted + 1 tokens; the last one may be cut at max_new_tokens
    assert 1 + c.num_drafts + c.num_accepted_tokens >= len(gen.tokens) > c.num_drafts + c.num_accepted_tokens - 7


class OracleDraft:
    """Proposes the target's true greedy continuation: every draft token is right."""

    def __init__(self, continuation: list[int], prompt_len: int, vocab: int, correct: int = 99) -> None:
        """`correct`: only the first `correct` tokens of each draft are right; the rest are wrong on purpose."""
        self.continuation, self.prompt_len, self.correct = continuation, prompt_len, correct
        self.config = SimpleNamespace(target_vocab_size=vocab, draft_vocab_size=vocab)
        self.d2t = torch.zeros(vocab, dtype=torch.long)
        self._p = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self._p])

    def propose(self, context_hidden, anchor_ids, num_tokens, temperature, generator, context_lens=None):
        start = context_hidden.shape[1] - self.prompt_len + 1  # index of the token after the anchor
        toks = (self.continuation + [0] * 16)[start : start + num_tokens]
        toks = [t if i < self.correct else (t + 1) % self.config.draft_vocab_size for i, t in enumerate(toks)]
        ids = torch.tensor([toks])
        logits = torch.full((1, num_tokens, self.config.draft_vocab_size), -30.0).scatter(2, ids[..., None], 30.0)
        return Proposal(ids, ids, logits, torch.softmax(logits, -1), torch.full((1, num_tokens), 0.9))


def _greedy_continuation(target_dir: str, prompt: str) -> tuple[HfTarget, list[int], list[int]]:
    """The fp32 target, a one-turn prompt's ids and transformers' own greedy 60-token continuation of it."""
    target = HfTarget(target_dir, [1, 3, 5], dtype="float32")
    ids = chat_ids(AutoTokenizer.from_pretrained(target_dir), [{"role": "user", "content": prompt}])
    ref = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    cont = ref.generate(torch.tensor([ids]), max_new_tokens=60, do_sample=False, eos_token_id=None,
                        pad_token_id=0)[0, len(ids):].tolist()
    return target, ids, cont


def test_oracle_draft_counts_every_position(tiny_random_target: str):
    target, ids, cont = _greedy_continuation(tiny_random_target, "Sort a list.")
    draft = OracleDraft(cont, len(ids), 2048)
    gen = speculate(target, draft, ids, k=7, max_new_tokens=33, params=SamplingParams(), eos_ids=set(),
                    generator=torch.Generator().manual_seed(0))
    assert gen.tokens == cont[:33]
    # 1 token from prefill, then 4 steps of 8 tokens: every draft fully accepted, as vLLM would count it
    assert gen.counts.num_drafts == 4 and gen.counts.per_position() == [1.0] * 7
    assert gen.counts.avg_length() == 8.0
    cal = gen.calibration.to_json(has_confidence=True)
    assert cal["reached"] == [4] * 7 and cal["observed"] == [1.0] * 7
    assert cal["predicted"] == pytest.approx([0.9] * 7)


def test_a_draft_right_on_three_of_seven_positions(tiny_random_target: str):
    """A hand-built case with known acceptance: every draft's first 3 tokens are the target's greedy ones,
    the 4th is wrong. Each step then emits 3 accepted + 1 target token, so 32 tokens after the prefill's
    take 8 drafts, the per-position rates are exactly [1, 1, 1, 0, 0, 0, 0] and Avg Length is 4."""
    target, ids, cont = _greedy_continuation(tiny_random_target, "Reverse a string.")
    gen = speculate(target, OracleDraft(cont, len(ids), 2048, correct=3), ids, k=7, max_new_tokens=33,
                    params=SamplingParams(), eos_ids=set(), generator=torch.Generator().manual_seed(0))
    assert gen.tokens == cont[:33]  # still lossless
    assert gen.counts.num_drafts == 8 and gen.counts.accepted_per_pos == [8, 8, 8, 0, 0, 0, 0]
    assert gen.counts.per_position() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert gen.counts.avg_length() == 4.0


def test_calibration_counts_reached_positions():
    cal = Calibration.empty(3)
    cal.observe([0.8, 0.6, 0.4], num_accepted=1, analytic=[0.7, 0.5, 0.3])  # pos 1 accepted, pos 2 rejected
    cal.observe([0.9, 0.5, 0.2], num_accepted=3, analytic=[0.9, 0.6, 0.4])
    out = cal.to_json(has_confidence=True)
    assert out["reached"] == [2, 2, 1]
    assert out["observed"] == [1.0, 0.5, 1.0]
    assert out["predicted"] == pytest.approx([0.85, 0.55, 0.2])
    assert sum(b["count"] for b in out["bins"]) == 5


def test_eos_ids_include_generation_config(tiny_random_target: str):
    tok = AutoTokenizer.from_pretrained(tiny_random_target)
    assert stop_token_ids(tiny_random_target, tok) == {0, 4}


def test_cli_offline_eval_writes_tables(export_dir: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from cli.main import app

    prompts = tmp_path / "HumanEval.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"def add{i}(a, b):"}) + "\n" for i in range(2)))
    args = ["eval", "--draft", str(export_dir), "--prompts", str(prompts), "--prompts", "math", "--num-prompts", "2",
            "--max-new-tokens", "12", "--dtype", "float32", "--threads", "1", "--out", str(tmp_path / "eval")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| Dataset | Pos 1 | Pos 2 | Pos 3 | Pos 4 | Pos 5 | Pos 6 | Pos 7 | Avg Length |" in result.output
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    for name in ("HumanEval", "math"):  # the summary's figures are the raw counters' ratios, recomputed here
        for mode in ("greedy", "sampled"):
            c = results[name][mode]["counts"]
            drafts, accepted = c["num_drafts"], c["accepted_per_pos"]
            assert drafts > 0 and c["num_draft_tokens"] == 7 * drafts and len(accepted) == 7
            assert accepted == sorted(accepted, reverse=True)  # position i+1 accepted only after position i
            for j in range(1, 8):
                assert summary[f"{name}_{mode}_pos{j}"] == round(accepted[j - 1] / drafts, 4)
            assert summary[f"{name}_{mode}_avg_length"] == round(1 + sum(accepted) / drafts, 4)
    assert set(results["math"]["sampled"]["calibration"]) >= {"predicted", "observed", "analytic", "bins"}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "eval offline (cached)" in again.output, again.output
