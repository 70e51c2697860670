"""The `hf-gnft` command: the dispatcher, the recipes' help texts, the thin recipe scripts, and the command as
a wheel installs it into a fresh virtual environment."""

from __future__ import annotations

import dataclasses
import os
import runpy
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from transformers import HfArgumentParser

from hf_gnft import cli
from hf_gnft.attack import AttackArguments, ModelArguments
from hf_gnft.data.arguments import CleanDataArguments, DataArguments
from hf_gnft.scripts import push as push_script

REPO_ROOT = Path(__file__).resolve().parents[1]
# What setup.py reads to build the wheel; copied out so the build leaves no build/ or egg-info in the tree.
PACKAGING_INPUTS = ("setup.py", "pyproject.toml", "README.md", "hf_gnft", "model_cards")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int | str | None, str, str]:
    """`hf_gnft.cli.main(argv)` run to its exit: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_help_lists_every_subcommand(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for name in ("attack", "defend", "analyze (scan)", "benchmark", "push", "demo"):
        assert name in out


def test_unknown_subcommand_is_an_error_that_lists_the_known_ones(capsys):
    code, _, err = run_cli(["defned", "--model", "x"], capsys)
    assert code == 2
    assert "invalid choice: 'defned'" in err
    for name in ("attack", "defend", "analyze", "scan", "benchmark", "push"):
        assert repr(name) in err


def test_missing_subcommand_is_an_error(capsys):
    code, _, err = run_cli([], capsys)
    assert code == 2
    assert "COMMAND" in err


def test_attack_help_prints_the_recipe_flags_under_the_subcommand_name(capsys):
    code, out, _ = run_cli(["attack", "--help"], capsys)
    assert code == 0
    assert out.startswith("usage: hf-gnft attack")
    assert "--poison_rate" in out and "Fraction in (0, 1] of the training split" in out
    assert "--learning_rate" in out


def test_scan_is_an_alias_of_analyze(capsys):
    code, out, _ = run_cli(["scan", "--help"], capsys)
    assert code == 0
    assert out.startswith("usage: hf-gnft scan")
    assert "--cleaned_model" in out


def test_arguments_after_the_subcommand_reach_the_recipe(monkeypatch):
    calls = []
    monkeypatch.setattr(push_script, "main", lambda argv: calls.append((argv, sys.argv[0])))
    program = sys.argv[0]
    assert cli.main(["push", "--folder", "outputs/gnft", "--hub_dry_run", "true"]) == 0
    assert calls == [(["--folder", "outputs/gnft", "--hub_dry_run", "true"], "hf-gnft push")]
    assert sys.argv[0] == program


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["defend", "--defense", "purify", "--purify_rounds", "0"],
            "purify_rounds must be an integer >= 1, got 0",
        ),
        (["defend", "--defense", "gn-ft", "--anp_threshold", "0.3"], "--anp_threshold is a setting of anp"),
        (["defend", "--defense", "dask"], "unknown defense 'dask'"),
        (["attack", "--poison_rate", "1.5"], "poison_rate"),
        (
            ["demo", "--attack_epochs", "nan"],
            "--attack_epochs: num_train_epochs must be a finite number > 0, got nan",
        ),
        (
            ["demo", "--reference_epochs", "0"],
            "--reference_epochs: num_train_epochs must be a finite number > 0",
        ),
    ],
)
def test_a_settings_error_is_one_line_with_exit_status_2_and_no_output(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli([*argv, "--model", str(tmp_path / "suspect"), "--output_dir", str(out)], capsys)
    assert code == 2 and err.startswith(f"hf-gnft {argv[0]}: error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_debug_shows_the_traceback_and_an_unexpected_error_keeps_it(tmp_path, capsys, monkeypatch):
    argv = ["defend", "--defense", "purify", "--purify_rounds", "0", "--output_dir", str(tmp_path / "o")]
    code, _, err = run_cli(["--debug", *argv], capsys)
    assert (
        code == 2
        and "Traceback" in err
        and err.strip().endswith("purify_rounds must be an integer >= 1, got 0")
    )
    monkeypatch.setenv("HF_GNFT_DEBUG", "1")
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "Traceback" in err
    monkeypatch.delenv("HF_GNFT_DEBUG")

    def broken(argv):
        raise KeyError("a bug, not a setting")

    monkeypatch.setattr(push_script, "main", broken)
    with pytest.raises(KeyError, match="a bug"):  # not turned into a one-line error
        cli.main(["push", "--folder", str(tmp_path)])


def test_every_data_attack_and_model_flag_has_help():
    classes = (DataArguments, CleanDataArguments, AttackArguments, ModelArguments)
    missing = [
        f"{cls.__name__}.{field.name}"
        for cls in classes
        for field in dataclasses.fields(cls)
        if not field.metadata.get("help")
    ]
    assert not missing
    help_text = HfArgumentParser(classes).format_help()  # raises on a help string argparse cannot format
    assert "5%)" in help_text


@pytest.mark.parametrize(
    ("name", "flag"),
    [
        ("analyze", "--cleaned_model"),
        ("attack", "--poison_rate"),
        ("benchmark", "--report"),
        ("defend", "--clean_fraction"),
        ("demo", "--output_dir"),
        ("push", "--folder"),
    ],
)
def test_recipe_script_runs_the_packaged_recipe(name, flag, monkeypatch, capsys):
    script = REPO_ROOT / "recipes" / f"{name}.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 0
    assert flag in capsys.readouterr().out


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory) -> dict[str, Path]:
    """The wheel built from this tree, installed (without dependencies) into a new venv that sees the
    development venv's packages through a `.pth` path entry, which does not run its editable-install finder."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in PACKAGING_INPUTS:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO_ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(root / "dist"),
            str(source),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = (root / "dist").glob("hf_gnft-*.whl")
    env_dir = root / "fresh"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], check=True
    )
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dev_paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(site_packages) / "_hf_gnft_test_dependencies.pth").write_text("\n".join(dev_paths) + "\n")
    return {"wheel": wheel, "env_dir": env_dir, "python": python, "site_packages": Path(site_packages)}


def run_fresh(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_holds_the_package_data_and_the_command(fresh_install):
    with zipfile.ZipFile(fresh_install["wheel"]) as wheel:
        names = set(wheel.namelist())
        entry_points = next(wheel.read(name).decode() for name in names if name.endswith("entry_points.txt"))
    assert any(name.startswith("hf_gnft/model_cards/") and name.endswith(".md") for name in names)
    assert {"hf_gnft/model_configs/tiny-wav2vec2.json", "hf_gnft/model_configs/tiny-hubert.json"} <= names
    assert "hf_gnft/analysis/scan_calibration.json" in names
    assert {f"hf_gnft/scripts/{name}.py" for name in cli.RECIPES} <= names
    assert "hf-gnft = hf_gnft.cli:main" in entry_points


def test_installed_command_help_lists_subcommands_and_defend_flags(fresh_install, tmp_path):
    origin = run_fresh(
        [
            str(fresh_install["python"]),
            "-c",
            "import importlib.util; print(importlib.util.find_spec('hf_gnft').origin)",
        ],
        tmp_path,
    )
    assert Path(origin.stdout.strip()).is_relative_to(fresh_install["site_packages"]), origin
    command = str(fresh_install["env_dir"] / "bin" / "hf-gnft")
    top = run_fresh([command, "--help"], tmp_path)
    assert top.returncode == 0, top.stderr
    for name in ("attack", "defend", "analyze", "benchmark", "push"):
        assert name in top.stdout
    defend = run_fresh([command, "defend", "--help"], tmp_path)
    assert defend.returncode == 0, defend.stderr
    assert defend.stdout.startswith("usage: hf-gnft defend")
    assert "--clean_fraction" in defend.stdout and "--learning_rate" in defend.stdout
