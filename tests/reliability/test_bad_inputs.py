"""Promise (issues #3, #4, #5, #8): bad input never crashes with a traceback and never loses data.

Table-driven: every case runs a real command (`dspark ...`, or `python -m dspark_train` for flags only it
has) against an output directory that already holds finished work, and checks that
- it exits with the documented code (2: recipe/flag errors, 1: data/target errors), no traceback;
- the message names the culprit: the file (and line or row), the flag or recipe key, the layer ids, the
  hidden size, the sample, the target directory;
- the existing output is byte-for-byte untouched (the writer's advisory lock file aside) and still verifies.

Malformed and hostile prompt rows (corpus/prompts_*.jsonl) are not errors for regen: each is counted and
recorded with its reason and row, the good rows are stored, hostile ids stay data and never become paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from regen_schema import REGEN_SCHEMA
from safetensors.torch import save_file
from typer.testing import CliRunner

from cli.main import app
from dspark_data.store import ShardWriter, open_dataset, verify
from reliability.data import (
    dump_sets,
    regen_sets,
    train_sets,
    with_sets,
    write_hidden,
    write_vocab_manifest,
)

CORPUS = Path(__file__).resolve().parent / "corpus"
DEAD = "http://127.0.0.1:9"  # regen cases that must fail before contacting any server


@dataclass
class Ctx:
    """Inputs of the table, built once per module."""

    target: str
    regen: Path
    hidden: Path
    train: Path
    no_config: Path
    no_weights: Path
    no_tokenizer: Path
    hidden_h64: Path
    hidden_no_last: Path
    hidden_other_vocab: Path
    regen_other_vocab: Path
    vocab_other_target: Path


@pytest.fixture(scope="module")
def ctx(tiny_random_target: str, regen_data: Path, hidden_data: Path, tmp_path_factory) -> Ctx:
    root = tmp_path_factory.mktemp("bad-inputs")
    bad = {}
    for name, drop in (("no_config", ["config.json"]), ("no_weights", ["*.safetensors*"]),
                       ("no_tokenizer", ["tokenizer*"])):
        shutil.copytree(tiny_random_target, root / name)
        for pattern in drop:
            for p in (root / name).glob(pattern):
                p.unlink()
        bad[name] = root / name
    train = root / "train"  # a finished 2-step run: its checkpoint must survive every failing train case
    code = CliRunner().invoke(app, with_sets("train", train_sets(tiny_random_target), "--data", str(hidden_data),
                                             "--out", str(train), "--max-steps", "2")).exit_code
    assert code == 0
    regen_other = root / "regen_other_vocab"  # tokenized for a bigger vocab than tiny:random's 2048
    with ShardWriter(regen_other, "regen", REGEN_SCHEMA, {"test": "other-target"}) as w:
        w.write({"id": "fits", "input_ids": [20, 30, 40], "loss_mask": [False, True, True]})
        w.write({"id": "from-a-bigger-vocab", "input_ids": [20, 3000, 40], "loss_mask": [False, True, True]})
    t2d = torch.zeros(4096, dtype=torch.bool)
    t2d[:2048] = True
    vocab = root / "vocab_other" / "vocab.safetensors"
    vocab.parent.mkdir()
    save_file({"t2d": t2d, "d2t": torch.zeros(2048, dtype=torch.long)}, str(vocab))
    write_vocab_manifest(vocab)
    from dspark_train.data import SyntheticHiddenSource

    other = root / "hidden_other_vocab"
    src = SyntheticHiddenSource(4, layer_ids=[1, 3, 5, 6], hidden_size=128, vocab_size=50000, seed=3)
    from dspark_data.store import HiddenStateWriter

    with HiddenStateWriter(other, layer_ids=[1, 3, 5, 6], hidden_size=128, codec="raw", target="other:model",
                           seq_len=64) as w:
        for i in range(len(src)):
            s = src.get(i)
            w.write(s.id, s.input_ids, s.loss_mask, s.hidden)
    return Ctx(
        target=tiny_random_target, regen=regen_data, hidden=hidden_data, train=train, **bad,
        hidden_h64=write_hidden(root / "h64", 6, hidden_size=64),
        hidden_no_last=write_hidden(root / "no_last", 6, layer_ids=[1, 3, 5]),
        hidden_other_vocab=other, regen_other_vocab=regen_other, vocab_other_target=vocab,
    )


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[Ctx, Path], list[str]]  # (inputs, output dir) -> argv
    code: int
    culprit: Callable[[Ctx, Path], list[str]]  # words the message must contain
    out: str  # the finished output the command is pointed at: "regen", "hidden" or "train"
    runner: str = "dspark"  # or "dspark_train" (`python -m dspark_train`)
    fresh: bool = False  # write to a new directory instead: cases whose error comes after the writer opens


def _dump(ctx: Ctx, out: Path, *sets: str, data: Path | None = None, target: str | None = None) -> list[str]:
    return with_sets("dump-hidden", [*dump_sets(target or ctx.target), *sets], "--data", str(data or ctx.regen),
                     "--out", str(out))


def _train(ctx: Ctx, out: Path, *sets: str, data: Path | None = None, target: str | None = None) -> list[str]:
    return with_sets("train", [*train_sets(target or ctx.target), *sets], "--data", str(data or ctx.hidden),
                     "--out", str(out), "--max-steps", "2")


def _regen(ctx: Ctx, out: Path, *sets: str, target: str | None = None, recipe: str = "tiny") -> list[str]:
    argv = with_sets("regen", [*regen_sets(target or ctx.target, CORPUS / "prompts_malformed.jsonl", DEAD), *sets],
                     "--out", str(out), "--no-progress")
    argv[2] = recipe
    return argv


def _recipe_file(name: str) -> Callable[[Ctx, Path], list[str]]:
    return lambda c, o: _dump(c, o)[:2] + [str(CORPUS / name)] + _dump(c, o)[3:]


CASES = [
    # --- recipes and flags: exit 2, the file / key / value named
    Case("recipe-yaml-syntax", _recipe_file("recipe_syntax_error.yaml"), 2,
         lambda c, o: ["recipe_syntax_error.yaml", "not valid YAML", "line 5"], "hidden"),
    Case("recipe-unknown-key", _recipe_file("recipe_unknown_key.yaml"), 2,
         lambda c, o: ["recipe_unknown_key.yaml", "trian", "unknown key"], "hidden"),
    Case("recipe-wrong-type", _recipe_file("recipe_wrong_type.yaml"), 2,
         lambda c, o: ["train.lr", "fast", "train.batch_size"], "hidden"),
    Case("recipe-not-utf8", _recipe_file("recipe_not_utf8.yaml"), 2,
         lambda c, o: ["recipe_not_utf8.yaml", "utf-8"], "hidden"),
    Case("recipe-not-a-mapping", _recipe_file("recipe_not_mapping.yaml"), 2,
         lambda c, o: ["recipe_not_mapping.yaml", "mapping"], "hidden"),
    Case("set-wrong-type", lambda c, o: _train(c, o, "train.lr=fast"), 2, lambda c, o: ["train.lr", "fast"], "train"),
    Case("set-unknown-key", lambda c, o: _train(c, o, "train.lrr=1"), 2, lambda c, o: ["train.lrr"], "train"),
    Case("set-out-of-range", lambda c, o: _dump(c, o, "seq_len=-5"), 2, lambda c, o: ["seq_len", "-5"], "hidden"),
    Case("set-unknown-codec", lambda c, o: _dump(c, o, "capture.codec=gzip"), 2,
         lambda c, o: ["capture.codec", "gzip"], "hidden"),
    Case("set-negative-temperature", lambda c, o: _regen(c, o, "regen.sampling.temperature=-1"), 2,
         lambda c, o: ["regen.sampling.temperature"], "regen"),
    Case("set-without-value", lambda c, o: _dump(c, o, "novalue"), 2, lambda c, o: ["novalue", "key.path=value"],
         "hidden"),
    Case("set-negative-layer", lambda c, o: _dump(c, o, "capture.aux_layers=[-1,3]"), 2,
         lambda c, o: ["capture.aux_layers", "-1"], "hidden"),
    # --- layer ids and hidden sizes: exit 1, the ids / sizes named, before any work
    Case("dump-layer-outside-target", lambda c, o: _dump(c, o, "capture.aux_layers=[1,99]"), 1,
         lambda c, o: ["capture.aux_layers", "99", "6 layers"], "hidden"),
    Case("train-layer-not-in-data", lambda c, o: _train(c, o, "capture.aux_layers=[1,3,4]"), 1,
         lambda c, o: ["[1, 3, 5, 6]", "capture.aux_layers", "[4]"], "train"),
    Case("train-data-without-last-layer", lambda c, o: _train(c, o, data=c.hidden_no_last), 1,
         lambda c, o: [str(c.hidden_no_last), "last layer 6"], "train"),
    Case("train-hidden-size-mismatch", lambda c, o: _train(c, o, data=c.hidden_h64), 1,
         lambda c, o: [str(c.hidden_h64), "hidden size 64", "hidden_size=128"], "train"),
    # --- missing target files: exit 1, the target directory / file named
    Case("dump-target-missing", lambda c, o: _dump(c, o, target="/nonexistent/target"), 1,
         lambda c, o: ["/nonexistent/target"], "hidden"),
    Case("train-target-without-config", lambda c, o: _train(c, o, target=str(c.no_config)), 1,
         lambda c, o: [str(c.no_config), "config.json"], "train"),
    Case("train-target-without-weights", lambda c, o: _train(c, o, target=str(c.no_weights)), 1,
         lambda c, o: [str(c.no_weights), "model.safetensors"], "train", fresh=True),
    Case("dump-target-without-weights", lambda c, o: _dump(c, o, target=str(c.no_weights)), 1,
         lambda c, o: [str(c.no_weights), "model.safetensors"], "hidden", fresh=True),
    Case("regen-target-without-tokenizer", lambda c, o: _regen(c, o, target=str(c.no_tokenizer)), 1,
         lambda c, o: [str(c.no_tokenizer), "tokenizer"], "regen", fresh=True),
    Case("regen-prompts-file-missing",
         lambda c, o: _regen(c, o, f"prompts.source={CORPUS / 'no-such-prompts.jsonl'}"), 1,
         lambda c, o: ["no-such-prompts.jsonl"], "regen"),
    # --- data from another target or stage: exit 1, the dataset / sample named
    Case("dump-regen-data-from-another-target", lambda c, o: _dump(c, o, data=c.regen_other_vocab), 1,
         lambda c, o: ["from-a-bigger-vocab", "3000", "vocab_size=2048"], "hidden", fresh=True),
    Case("dump-data-is-a-hidden-dataset", lambda c, o: _dump(c, o, data=c.hidden), 1,
         lambda c, o: [str(c.hidden), "not a regen dataset"], "hidden"),
    Case("dump-data-not-a-dataset", lambda c, o: _dump(c, o, data=CORPUS), 1,
         lambda c, o: [str(CORPUS), "no manifest"], "hidden"),
    Case("train-data-from-another-target", lambda c, o: _train(c, o, data=c.hidden_other_vocab), 1,
         lambda c, o: [str(c.hidden_other_vocab), "vocab_size=2048", "another target"], "train"),
    Case("train-data-missing", lambda c, o: _train(c, o, data=Path("/nonexistent/hidden")), 1,
         lambda c, o: ["/nonexistent/hidden", "not found"], "train"),
    Case("train-vocab-from-another-target",
         lambda c, o: ["--recipe", "tiny", *[x for s in train_sets(c.target) for x in ("--set", s)],
                       "--set", "vocab.draft_vocab_size=2048", "--data", str(c.hidden), "--out", str(o),
                       "--vocab", str(c.vocab_other_target), "--max-steps", "2", "--no-progress"], 1,
         lambda c, o: [str(c.vocab_other_target), "4096", "vocab_size=2048"], "train", runner="dspark_train"),
    # --- an existing output made with other settings: refused, fields named, nothing overwritten
    Case("dump-into-other-settings", lambda c, o: _dump(c, o), 1,
         lambda c, o: [str(o), "different settings", "seq_len", "--overwrite"], "hidden"),
    Case("regen-into-other-settings", lambda c, o: _regen(c, o), 1,
         lambda c, o: [str(o), "different settings", "--overwrite"], "regen"),
    Case("train-into-another-run", lambda c, o: _train(c, o, "seed=7"), 1,
         lambda c, o: [str(o), "seed: 0 -> 7", "--resume"], "train"),
]


def _snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".writer.lock"
    }


def _run(case: Case, argv: list[str]) -> tuple[int, str]:
    if case.runner == "dspark_train":
        from dspark_train.entrypoint import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        return code, err.getvalue()
    result = CliRunner().invoke(app, argv, terminal_width=1000)
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += f"\nUNCAUGHT {type(result.exception).__name__}: {result.exception}"
    return result.exit_code, text


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_named_and_loses_nothing(ctx: Ctx, case: Case, tmp_path: Path) -> None:
    out = tmp_path / "existing"
    shutil.copytree(getattr(ctx, case.out), out, ignore=shutil.ignore_patterns(".writer.lock"))
    before = _snapshot(out)
    target = tmp_path / "fresh" if case.fresh else out
    code, text = _run(case, case.argv(ctx, target))
    assert "UNCAUGHT" not in text and "Traceback" not in text, text
    assert code == case.code, text
    flat = "".join(text.split())  # the console wraps long lines, inside paths too
    missing = [w for w in case.culprit(ctx, target) if "".join(w.split()) not in flat]
    assert not missing, f"the message does not name {missing}:\n{text}"
    assert _snapshot(out) == before, "existing output was modified"
    if case.out != "train":
        assert verify(out).ok
    if case.fresh and (target / "manifest.json").exists():  # what the failed run committed is valid
        assert verify(target).ok


@pytest.mark.vllm
@pytest.mark.parametrize(
    ("name", "stored", "rejected"),
    [
        ("prompts_malformed.jsonl", ["good-0", "good-1"], {
            1: "no_user_turn", 2: "non_string_content", 3: "non_string_content", 4: "non_string_content",
            5: "unknown_role", 6: "unknown_role", 7: "invalid_utf8", 8: "invalid_utf8", 9: "invalid_json",
            10: "bad_shape", 11: "bad_shape", 12: "bad_shape", 13: "bad_shape", 14: "empty_user_turn",
        }),
        ("prompts_hostile.jsonl", [
            "../../etc/passwd", "/etc/shadow", "shard-00000.arrow", "x" * 20000, "日本語-🚀-\u202egnp.exe",
            "new\nline\ttab", "123456789", "ctrl-content", "special-tokens", "dup",
        ], {10: "duplicate_id", 11: "prompt_too_long"}),
    ],
    ids=["malformed-rows", "hostile-strings"],
)
def test_prompt_corpus_rows_are_counted_never_fatal(ctx, vllm_server, tmp_path, name, stored, rejected) -> None:
    out = tmp_path / "regen"
    argv = with_sets("regen", regen_sets(ctx.target, CORPUS / name, vllm_server), "--out", str(out), "--no-progress")
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    ds = open_dataset(out)
    assert ds.ids == stored  # hostile ids are data, stored verbatim, in row order
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    got = {int(e["detail"].split(" row ")[1].split(":")[0]): e["reason"] for e in errors}
    assert got == rejected
    assert all(e["detail"].startswith(f"{name} row ") for e in errors)
    names = {p.name for p in out.iterdir()}  # only the store's own files: no id became a path
    assert names <= {"manifest.json", "errors.jsonl", "summary.json", ".writer.lock"} | {
        n for n in names if n.startswith("shard-") and n.endswith(".arrow")
    }
    assert not list(tmp_path.rglob("passwd")) and not list(tmp_path.rglob("shadow"))
    assert verify(out).ok


def test_regen_with_every_request_failing_exits_nonzero(tiny_random_target, tmp_path: Path) -> None:
    """A dead endpoint: every prompt fails, and `dspark regen` says so with exit 1 (not a silent 0), naming
    the reason and errors.jsonl; the errors are recorded, so nothing is lost and a rerun says the same."""
    from dspark_data.engine.server import free_port
    from reliability.data import write_prompts

    dead = f"http://127.0.0.1:{free_port()}"  # a port nothing listens on
    sets = [*regen_sets(tiny_random_target, write_prompts(tmp_path / "prompts.jsonl", 4), dead),
            "regen.max_retries=0", "regen.timeout_s=5"]
    out = tmp_path / "regen"
    for _ in range(2):
        result = CliRunner().invoke(app, with_sets("regen", sets, "--out", str(out), "--no-progress"))
        assert result.exit_code == 1, result.output
        assert "every prompt failed" in result.output and "errors.jsonl" in result.output, result.output
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["reason"] for e in errors).count("connection_error") == 4, errors
