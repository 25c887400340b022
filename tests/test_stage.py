"""The stage contract (dspark_data/stage.py): cache decisions, summary validation and bytes, the run layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from dspark_data.run_layout import stage_dir
from dspark_data.stage import Stage, cached_summary, execute, publish_summary, read_summary
from schemas.summary import ExportSummary, VocabSummary


class Counting(Stage[dict]):
    """A stage whose output is one file; counts how often it really ran."""

    def __init__(self, out: Path, setting: int) -> None:
        self.out, self.setting, self.runs = out, setting, 0

    def fingerprint(self) -> str:
        return f"fp-{self.setting}"

    def cached(self, fingerprint: str) -> dict | None:
        return cached_summary(self.out, fingerprint, ("data.txt",))

    def run(self, fingerprint: str) -> dict:
        self.runs += 1
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "data.txt").write_text(str(self.setting))
        summary = {"cached": False, "fingerprint": fingerprint, "setting": self.setting}
        publish_summary(self.out, summary)
        return summary


def test_execute_reuses_only_a_complete_output_with_the_same_fingerprint(tmp_path: Path) -> None:
    first = Counting(tmp_path / "s", 1)
    assert execute(first) == {"cached": False, "fingerprint": "fp-1", "setting": 1} and first.runs == 1
    again = Counting(tmp_path / "s", 1)
    assert execute(again)["cached"] is True and again.runs == 0
    assert read_summary(tmp_path / "s")["cached"] is False  # reporting a reuse does not rewrite the file
    other = Counting(tmp_path / "s", 2)
    assert execute(other)["cached"] is False and other.runs == 1  # another fingerprint: run again
    (tmp_path / "s" / "data.txt").unlink()
    partial = Counting(tmp_path / "s", 2)
    assert execute(partial)["cached"] is False and partial.runs == 1  # an output file missing: not complete


def test_read_summary_of_an_empty_directory_is_none(tmp_path: Path) -> None:
    assert read_summary(tmp_path) is None and cached_summary(tmp_path, "fp", ()) is None


def test_publish_keeps_the_stage_key_order_and_refuses_a_bad_summary(tmp_path: Path) -> None:
    summary = {"stage": "vocab", "out_dir": "v", "draft_vocab_size": 2, "target_vocab_size": 8, "samples": 1,
               "tokens": 3, "coverage": 0.5, "cached": False, "seconds": 0.1}
    publish_summary(tmp_path, summary, schema=VocabSummary, indent=1)
    written = (tmp_path / "summary.json").read_bytes()
    assert written == (json.dumps(summary, indent=1) + "\n").encode()
    with pytest.raises(ValidationError, match="coverage"):
        publish_summary(tmp_path, {**summary, "coverage": 1.5}, schema=VocabSummary)
    with pytest.raises(ValidationError, match="typo"):
        publish_summary(tmp_path, {**summary, "typo": 1}, schema=VocabSummary)
    with pytest.raises(ValidationError, match="format"):
        publish_summary(tmp_path, {"cached": False, "format": "eagle"}, schema=ExportSummary)
    assert (tmp_path / "summary.json").read_bytes() == written  # refused before anything was written


def test_default_output_layout() -> None:
    assert stage_dir("tiny", "vocab") == Path("runs/tiny/vocab")
    with pytest.raises(AssertionError):
        stage_dir("tiny", "vocabulary")
