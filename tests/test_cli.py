"""The CLI contract: every command exists, config show resolves recipes, bad keys are named."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()

COMMANDS = [
    "regen", "dump-hidden", "vocab", "train", "export", "eval", "inspect", "verify", "report", "demo",
    "serve-target", "config", "codecs",
]


def test_help_lists_every_command() -> None:
    """Every registered command is in COMMANDS (so a new one cannot be left out) and in --help."""
    import typer.main

    group = typer.main.get_command(app)
    assert sorted(group.commands) == sorted(COMMANDS)
    result = runner.invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output, command


def test_importing_the_cli_loads_no_heavy_library() -> None:
    """`dspark --help` stays fast: cli modules import torch/transformers/vllm/pyarrow only inside commands."""
    heavy = ("torch", "transformers", "vllm", "pyarrow", "numpy", "safetensors", "aiohttp")
    code = f"import sys, cli.main; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout


def test_config_show_prints_the_resolved_recipe() -> None:
    """What `config show` prints parses back to exactly the resolved recipe, and the fingerprint is its hash.

    The seed card's values are pinned once, in tests/test_recipes.py; here only the printing is checked.
    """
    import yaml

    from schemas import fingerprint
    from schemas.loading import load_recipe

    expected = load_recipe("glm52-dspark", ["train.lr=3e-4"]).model_dump(mode="json")
    for extra in ([], ["--json"]):
        result = runner.invoke(app, ["config", "show", "--recipe", "glm52-dspark", "--set", "train.lr=3e-4", *extra])
        assert result.exit_code == 0, result.output
        body, _, last = result.output.rstrip().rpartition("\n")
        assert yaml.safe_load(body) == expected
        assert last == f"# fingerprint: {fingerprint(expected)}"


def test_config_show_override_and_errors() -> None:
    ok = runner.invoke(app, ["config", "show", "--set", "train.lr=3e-4", "--json"])
    assert ok.exit_code == 0 and '"lr": 0.0003' in ok.output
    bad = runner.invoke(app, ["config", "show", "--set", "train.nope=1"])
    assert bad.exit_code == 2 and "train.nope" in bad.output


def test_console_script_module_entry() -> None:
    proc = subprocess.run([sys.executable, "-m", "cli", "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "dump-hidden" in proc.stdout


def test_dspark_train_imports_without_vllm() -> None:
    code = (
        "import sys, importlib, pkgutil\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'vllm' or name.startswith('vllm.'):\n"
        "            raise ImportError('vllm blocked by test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import dspark_train\n"
        "for m in pkgutil.walk_packages(dspark_train.__path__, 'dspark_train.'):\n"
        "    if m.name.endswith('__main__'):\n"
        "        continue\n"
        "    importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_stage_inputs_are_never_looked_up_in_the_working_directory(tmp_path, monkeypatch) -> None:
    """With a full `runs/tiny/` in the working directory (what `make demo` leaves), a stage given no input
    refuses with exit 2 naming the flag instead of reading it; outputs alone keep their runs/ default."""
    monkeypatch.chdir(tmp_path)
    for stage in ("regen", "hidden", "vocab", "train", "export"):
        (tmp_path / "runs" / "tiny" / stage).mkdir(parents=True)
        (tmp_path / "runs" / "tiny" / stage / "manifest.json").write_text("{}")
    for argv, flag in ((["dump-hidden"], "--data"), (["vocab"], "--data"), (["export"], "--checkpoint"),
                       (["eval", "--mode", "greedy"], "--draft")):
        result = runner.invoke(app, argv, terminal_width=200)
        assert result.exit_code == 2 and f"pass {flag}" in result.output, (argv, result.output)
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == [
        "export", "hidden", "regen", "train", "vocab"]  # nothing was written next to the decoys


def test_demo_names_every_input_and_output() -> None:
    from pathlib import Path

    from cli.demo import PIPELINE, stage_argv

    root = Path("/r")
    argv = {label: stage_argv(root, words, d, inputs) for label, words, d, inputs in PIPELINE}
    assert argv["train"] == ["train", "--out", "/r/train", "--data", "/r/hidden", "--vocab", "/r/vocab"]
    assert argv["dump-hidden"] == ["dump-hidden", "--out", "/r/hidden", "--data", "/r/regen"]
    assert argv["export"][-2:] == ["--checkpoint", "/r/train"] and argv["eval"][-2:] == ["--draft", "/r/export"]
