"""Fast capture tests (no engine): layer plans, vLLM limits, sample checks, the spool, dry-run sizes."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
import torch

from dspark_data.capture.backend import Captured
from dspark_data.capture.layers import (
    GLM5_HIDDEN_SIZE,
    GLM5_NUM_HIDDEN_LAYERS,
    CaptureConfigError,
    LayerMismatch,
    check_hidden_size,
    plan_layers,
)
from dspark_data.capture.projection import dry_run_plan, estimate_tokens, project
from dspark_data.capture.settings import CaptureSettings
from dspark_data.capture.spool import SpoolError, spool_path, take_record, write_error, write_record
from dspark_data.capture.validate import check_capture
from dspark_data.store import CODECS, HiddenStateWriter
from dspark_data.store.hidden import hidden_fingerprint
from schemas.loading import load_recipe

# ---------------------------------------------------------------- layer plans


def test_plan_orders_aux_then_last_and_maps_engine_order():
    plan = plan_layers([5, 1, 3], True, num_hidden_layers=6, hidden_size=128)
    assert plan.stored_ids == (5, 1, 3, 6)
    assert plan.engine_ids == (1, 3, 5, 6)  # what vLLM returns: ascending
    engine_rows = torch.tensor(plan.engine_ids)
    assert engine_rows[plan.engine_permutation()].tolist() == [5, 1, 3, 6]
    assert plan.bytes_per_token() == 4 * 128 * 2


def test_to_stored_takes_engine_rows_in_stored_order_and_refuses_other_layers():
    plan = plan_layers([5, 1, 3], True, num_hidden_layers=6, hidden_size=2)
    engine = torch.tensor(plan.engine_ids, dtype=torch.float32)[None, :, None].expand(3, 4, 2)  # row = its id
    assert plan.to_stored(engine, plan.engine_ids)[0, :, 0].tolist() == [5, 1, 3, 6]
    with pytest.raises(LayerMismatch, match=r"engine captured layers \(1, 3, 6\), expected \(1, 3, 5, 6\)"):
        plan.to_stored(engine[:, :3], (1, 3, 6))


def test_settings_give_the_writer_its_own_fingerprint_and_the_server_its_info(tmp_path):
    """One CaptureSettings: the fingerprint computed without a writer is the one the writer records, and the
    stream fields a trainer expects are exactly what the gateway's /v1/info announces."""
    recipe = load_recipe("tiny", ["capture.topk_logprobs=4"])
    settings = CaptureSettings.for_target(recipe, 6, 128, "hf")
    kwargs = settings.writer_kwargs("regen-fp", extra_fingerprint={"num_shards": 2, "shard_index": 1},
                                    producer={"assigned": 3})
    with HiddenStateWriter(tmp_path / "out", **kwargs) as w:
        recorded = w.store.manifest
    assert recorded.fingerprint == hidden_fingerprint(**kwargs)
    assert recorded.fingerprint["backend"] == "hf" and recorded.fingerprint["topk_logprobs"] == 4
    assert recorded.producer_config["assigned"] == 3 and recorded.producer_config["target"]["model"] == "tiny:trained"
    assert recorded.layer_ids == [1, 3, 5, 6] == settings.layer_ids
    info = settings.stream_info(server_id="s", max_tokens=256, vocab_size=1000, max_inflight=2, max_queue=4)
    assert info.capture_fields() == settings.stream_fields() and info.recipe == recipe.name


@pytest.mark.parametrize(
    ("aux", "include_last", "message"),
    [
        ([1, 7], True, "ids [7] are outside the target, which has 6 layers"),
        ([-1, 2], True, "ids [-1] are outside"),
        ([2, 2], False, "repeats a layer id"),
        ([2, 6], True, "lists 6 (the last layer)"),
        ([], True, "empty"),
    ],
)
def test_bad_layer_ids_are_clear_errors(aux, include_last, message):
    with pytest.raises(CaptureConfigError, match=re.escape(message)):
        plan_layers(aux, include_last, num_hidden_layers=6, hidden_size=128)


def test_last_layer_as_aux_without_include_last_is_allowed():
    assert plan_layers([2, 6], False, 6, 128).stored_ids == (2, 6)


def test_hidden_size_mismatch_names_both_sizes():
    plan = plan_layers([1], True, 6, 128)
    with pytest.raises(CaptureConfigError, match="config says 128, vLLM says 256"):
        check_hidden_size(plan, 256, "vLLM")


def test_seed_recipe_layers_fit_glm5_shape():
    """The seed recipe's ids against GLM-5's 78 layers x 6144: aux then id 78, 73,728 bytes per token."""
    recipe = load_recipe("glm52-dspark")
    plan = plan_layers(recipe.capture.aux_layers, True, GLM5_NUM_HIDDEN_LAYERS, GLM5_HIDDEN_SIZE)
    assert plan.stored_ids == (8, 23, 39, 55, 70, 78)
    assert plan.bytes_per_token() == 73_728
    with pytest.raises(CaptureConfigError, match="outside the target"):
        plan_layers([8, 23, 39, 55, 79], True, GLM5_NUM_HIDDEN_LAYERS, GLM5_HIDDEN_SIZE)


def test_seed_recipe_dry_run_projection(tmp_path):
    """Offline, the seed recipe's dry run uses GLM-5's published shape and an upper bound of tokens: five aux
    layers (no id 78 on CUDA) plus the top-64 column (uint32 ids + fp16 log-probs + fp32 tail)."""
    recipe = load_recipe("glm52-dspark")
    plan, source = dry_run_plan(recipe)
    assert (plan.num_hidden_layers, plan.hidden_size) == (78, 6144)
    assert "config.json" in source
    estimate = estimate_tokens(recipe, tmp_path / "no-regen-yet", limit=None)
    assert (estimate.samples, estimate.tokens, estimate.exact) == (50_000, 50_000 * 4096, False)
    by_codec = {p.codec: p for p in project(recipe, plan, estimate)}
    assert set(by_codec) == set(CODECS)
    assert plan.stored_ids == (8, 23, 39, 55, 70) and recipe.capture.topk_logprobs == 64
    assert by_codec["raw"].raw_bytes == 50_000 * 4096 * (61_440 + 6 * 64 + 4)
    assert by_codec["int4-g32"].bytes < by_codec["fp8"].bytes < by_codec["zstd-split"].bytes < by_codec["raw"].bytes


# ---------------------------------------------------------------- sample checks


def _captured(ids: list[int], layers: int = 2, hidden: int = 8) -> Captured:
    return Captured(torch.tensor(ids), torch.randn(len(ids), layers, hidden).to(torch.bfloat16))


def test_check_capture_accepts_a_good_sample():
    plan = plan_layers([1], True, 4, 8)
    assert check_capture(torch.tensor([5, 6, 7]), _captured([5, 6, 7]), plan) is None


def test_check_capture_rejects_token_mismatch_shape_and_nonfinite():
    plan = plan_layers([1], True, 4, 8)
    bad_ids = check_capture(torch.tensor([5, 6, 7]), _captured([5, 9, 7]), plan)
    assert bad_ids is not None and bad_ids.reason == "token_mismatch" and "position 1" in bad_ids.detail
    short = check_capture(torch.tensor([5, 6, 7]), _captured([5, 6]), plan)
    assert short is not None and short.reason == "token_mismatch"
    shape = check_capture(torch.tensor([5, 6, 7]), _captured([5, 6, 7], layers=3), plan)
    assert shape is not None and shape.reason == "shape_mismatch"
    captured = _captured([5, 6, 7])
    captured.hidden[1, 1, 3] = float("nan")
    captured.hidden[2, 1, 0] = float("inf")
    nonfinite = check_capture(torch.tensor([5, 6, 7]), captured, plan)
    assert nonfinite is not None and nonfinite.reason == "nonfinite" and "id 4: 2" in nonfinite.detail


# ---------------------------------------------------------------- spool


def test_spool_roundtrip_deletes_the_file(tmp_path):
    path = spool_path(tmp_path, "req/1:a")
    assert path.parent == tmp_path and "/" not in path.name[:-12]
    hidden = torch.randn(5, 3, 16, dtype=torch.bfloat16)
    write_record(path, hidden, torch.arange(5), (1, 3, 4))
    record = take_record(path, timeout_s=1)
    assert torch.equal(record.hidden, hidden) and record.token_ids.tolist() == [0, 1, 2, 3, 4]
    assert record.layer_ids == (1, 3, 4)
    assert list(tmp_path.iterdir()) == []


def test_spool_waits_for_a_late_writer(tmp_path):
    path = spool_path(tmp_path, "late")
    timer = threading.Timer(0.2, write_record, (path, torch.zeros(2, 1, 4), torch.arange(2), (2,)))
    timer.start()
    start = time.monotonic()
    assert take_record(path, timeout_s=10).hidden.shape == (2, 1, 4)
    assert time.monotonic() - start >= 0.15


def test_spool_reports_worker_errors_and_timeouts(tmp_path):
    path = spool_path(tmp_path, "broken")
    write_error(path, "disk full")
    with pytest.raises(SpoolError, match="disk full"):
        take_record(path, timeout_s=5)
    with pytest.raises(SpoolError, match="timed out"):
        take_record(spool_path(tmp_path, "never"), timeout_s=0.05)
    with pytest.raises(SpoolError, match="engine stopped"):
        take_record(spool_path(tmp_path, "dead"), timeout_s=5, alive=lambda: False)


def test_spool_refuses_foreign_files(tmp_path: Path):
    from safetensors.torch import save_file

    path = spool_path(tmp_path, "foreign")
    save_file({"hidden_states": torch.zeros(1, 1, 1), "token_ids": torch.zeros(1)}, str(path))
    with pytest.raises(SpoolError, match="not a dspark spool file"):
        take_record(path, timeout_s=1)


def test_spool_dirs_of_dead_drivers_are_reaped(tmp_path):
    import os

    from dspark_data.capture.spool import make_spool_dir

    dead = tmp_path / "dspark-spool-999999999-abc"
    live = tmp_path / f"dspark-spool-{os.getpid()}-def"
    other = tmp_path / "someone-else"
    for d in (dead, live, other):
        d.mkdir()
    fresh = make_spool_dir(tmp_path)
    assert fresh.name.startswith(f"dspark-spool-{os.getpid()}-")
    assert not dead.exists() and live.exists() and other.exists()
