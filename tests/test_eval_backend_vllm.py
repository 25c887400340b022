"""`eval.backend: vllm`: the target runs in an in-process vLLM engine, the draft in torch, and the tables equal
those of `eval.backend: hf` in float32 (one engine start).

Greedy: both backends check the draft against the target's argmax at every position (its greedy
continuation), so the counters are equal. Sampled: both run the same rejection sampling on the target's full
distribution with the same seeded draws, so the counters are equal too unless a draw lands within float32
noise of an acceptance threshold (it did not here; the greedy equality is the guarantee).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_export import make_checkpoint
from typer.testing import CliRunner

from cli.main import app
from dspark_train.export import export_draft


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, tiny_random_target) -> Path:
    root = tmp_path_factory.mktemp("eval-vllm")
    export_draft(make_checkpoint(root / "train", tiny_random_target), root / "export", dtype="float32")
    return root / "export"


def _eval(export_dir: Path, out: Path, backend: str) -> dict:
    args = ["eval", "--draft", str(export_dir), "--set", f"eval.backend={backend}", "--prompts", "code",
            "--prompts", "math", "--num-prompts", "2", "--max-new-tokens", "24", "--dtype", "float32",
            "--threads", "1", "--out", str(out)]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    return json.loads((out / "results.json").read_text())


def test_vllm_backend_tables_equal_hf_in_float32(export_dir: Path, tmp_path: Path) -> None:
    hf = _eval(export_dir, tmp_path / "hf", "hf")
    vllm = _eval(export_dir, tmp_path / "vllm", "vllm")
    summaries = [json.loads((tmp_path / b / "summary.json").read_text()) for b in ("hf", "vllm")]
    assert [s["backend"] for s in summaries] == ["hf", "vllm"]
    for name in ("code", "math"):
        for mode in ("greedy", "sampled"):
            assert vllm[name][mode]["counts"] == hf[name][mode]["counts"], (name, mode)
            assert vllm[name][mode]["generated_tokens"] == hf[name][mode]["generated_tokens"], (name, mode)
    assert (tmp_path / "vllm" / "acceptance.md").read_text() == (tmp_path / "hf" / "acceptance.md").read_text()
    drafted = sum(hf[n]["greedy"]["counts"]["num_drafts"] for n in ("code", "math"))
    assert drafted > 4  # the tables compare real multi-step decodes, not one-step ones


def test_vllm_backend_without_an_injected_target_is_refused(export_dir: Path, tmp_path: Path) -> None:
    from dspark_train.eval.offline import EvalOptions, run_offline_eval

    with pytest.raises(ValueError, match="eval.backend=vllm needs the vLLM target"):
        run_offline_eval(EvalOptions(draft_dir=export_dir, out_dir=tmp_path / "e", backend="vllm"))
