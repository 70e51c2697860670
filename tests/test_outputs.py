"""Atomic, resumable outputs: nothing that looks finished before it is, no finished result replaced silently,
and a defense killed with SIGKILL resumes to the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from testing_utils import DEFEND_FAST, RECIPE_DATA, RECIPE_FAST, free_port, run_launcher

from hf_gnft.outputs import OutputExistsError, atomic_write_text, partial_dir, staged_output_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Runs recipes/defend.py, killing itself with SIGKILL right after the checkpoint of step KILL_AT_STEP is saved.
KILLING_DEFEND = """
import os, signal, sys
import transformers
import hf_gnft.defenses.base as base

class KillAfterSave(transformers.TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= int(os.environ["KILL_AT_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)

class KilledTrainer(base.GNFTTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(KillAfterSave())

base.GNFTTrainer = KilledTrainer
from hf_gnft.scripts import defend
defend.main(sys.argv[1:])
"""


# ------------------------------------------------------------------------------------ staged folders


def test_staged_output_appears_only_when_complete(tmp_path):
    target = tmp_path / "out"
    with staged_output_dir(target) as staged:
        assert staged.path == partial_dir(target) and not target.exists()
        (staged.path / "model.safetensors").write_text("w")
        (staged.path / "checkpoint-2").mkdir()
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]  # checkpoints are not published
    assert not partial_dir(target).exists()


def test_failed_run_keeps_the_previous_result_and_leaves_nothing_that_looks_finished(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "model.safetensors").write_text("previous")
    with pytest.raises(RuntimeError), staged_output_dir(target, overwrite=True) as staged:
        (staged.path / "model.safetensors").write_text("half")
        raise RuntimeError("crash")
    assert (target / "model.safetensors").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folder without checkpoints


def test_failed_run_with_checkpoints_keeps_them_for_resuming(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_output_dir(target) as staged:
        (staged.path / "checkpoint-4").mkdir()
        raise RuntimeError("crash")
    assert (partial_dir(target) / "checkpoint-4").is_dir() and not target.exists()
    with pytest.raises(OutputExistsError, match="--resume_from_checkpoint true"):
        with staged_output_dir(target):
            pass
    with staged_output_dir(target, resume=True) as staged:
        assert (staged.path / "checkpoint-4").is_dir()  # resumed in place
        (staged.path / "done").write_text("1")
    assert (target / "done").is_file()


def test_finished_output_is_not_replaced_without_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "model.safetensors").write_text("finished")
    with pytest.raises(OutputExistsError, match="--overwrite_output_dir true"):
        with staged_output_dir(target):
            pass
    with staged_output_dir(target, overwrite=True) as staged:
        (staged.path / "model.safetensors").write_text("new")
    assert (target / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_resume_with_nothing_to_resume_is_refused(tmp_path):
    with pytest.raises(OutputExistsError, match="nothing to resume"):
        with staged_output_dir(tmp_path / "out", resume=True):
            pass


def test_atomic_write_text_replaces_whole_files(tmp_path):
    path = tmp_path / "results.md"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["results.md"]


def test_benchmark_drops_a_last_line_cut_short_by_a_kill(tmp_path):
    from hf_gnft.benchmark import Benchmark, BenchmarkConfig

    benchmark = Benchmark(BenchmarkConfig(output_dir=str(tmp_path), defenses={"ft": {}}))
    benchmark.results_path.write_text('{"model": "a", "value": 1}\n{"model": "b", "val')
    assert benchmark.rows() == [{"model": "a", "value": 1}]
    assert benchmark.results_path.read_text() == '{"model": "a", "value": 1}\n'
    benchmark.results_path.write_text('{"model": "a"}\nnot json\n{"model": "c"}\n')
    with pytest.raises(json.JSONDecodeError):  # damage elsewhere is not silently dropped
        benchmark.rows()


# ------------------------------------------------------------------------------------ the recipes


def _defend_args(suspect: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(suspect), "--output_dir", str(out), "--clean_count", "16", "--num_train_epochs", "2",
            "--per_device_train_batch_size", "4", "--save_strategy", "steps", "--save_steps", "2", "--seed", "3",
            "--learning_rate", "0.05", "--disable_tqdm", "true", "--reinversion_check", "false", "--retuning_check", "false",
            "--relapse_check", "false", *RECIPE_DATA,
            *extra]  # fmt: skip


def _run_killed_defend(args: list[str], kill_at: int) -> subprocess.CompletedProcess:
    """The defend recipe (`hf_gnft.scripts.defend.main`, what recipes/defend.py runs) in its own process, killed
    with SIGKILL after the checkpoint of step `kill_at`, on as many torch threads as this process (so its steps are
    bitwise those of a run here)."""
    env = {**os.environ, "KILL_AT_STEP": str(kill_at), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.run([sys.executable, "-c", KILLING_DEFEND, *args], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_defense_killed_mid_run_resumes_to_the_weights_of_an_uninterrupted_run(recipe_suspect, tmp_path):
    """8 optimizer steps, a checkpoint every 2; SIGKILL right after the checkpoint of step 4 (in a process of its
    own); the refused re-run, the resumed run and the uninterrupted one run here (each import of torch and
    transformers in a new process costs seconds)."""
    from hf_gnft.scripts import defend as defend_recipe

    killed, uninterrupted = tmp_path / "killed", tmp_path / "uninterrupted"
    run = _run_killed_defend(_defend_args(recipe_suspect, killed), kill_at=4)
    assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
    assert not killed.exists()  # nothing that looks finished
    assert sorted(p.name for p in partial_dir(killed).glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]

    with pytest.raises(OutputExistsError, match="--resume_from_checkpoint true"):  # without it: refused
        defend_recipe.main(_defend_args(recipe_suspect, killed))
    assert (partial_dir(killed) / "checkpoint-4").is_dir()  # and nothing lost

    record = defend_recipe.main(_defend_args(recipe_suspect, killed, "--resume_from_checkpoint", "true"))
    defend_recipe.main(_defend_args(recipe_suspect, uninterrupted))
    assert record["resumed_from"] == "checkpoint-4"
    assert json.loads((killed / "defense_metrics.json").read_text())["resumed_from"] == "checkpoint-4"
    assert not partial_dir(killed).exists() and not list(killed.glob("checkpoint-*"))
    a, b = load_file(str(killed / "model.safetensors")), load_file(str(uninterrupted / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a), (
        "resumed weights differ from the uninterrupted run"
    )


def test_defend_and_attack_refuse_to_replace_a_finished_output(recipe_suspect, tmp_path):
    from hf_gnft.scripts import attack as attack_recipe
    from hf_gnft.scripts import defend as defend_recipe

    out = tmp_path / "finished"
    out.mkdir()
    (out / "model.safetensors").write_text("a finished result")
    with pytest.raises(OutputExistsError, match="already holds a finished result"):
        defend_recipe.main(
            ["--model", str(recipe_suspect), "--output_dir", str(out), *RECIPE_DATA, *DEFEND_FAST]
        )
    with pytest.raises(OutputExistsError, match="already holds a finished result"):
        attack_recipe.main(["--output_dir", str(out), *RECIPE_DATA, *RECIPE_FAST])
    assert (out / "model.safetensors").read_text() == "a finished result"
    defend_recipe.main(["--model", str(recipe_suspect), "--output_dir", str(out), "--clean_count", "8", "--max_steps",
                        "1", "--overwrite_output_dir", "true", *RECIPE_DATA, *DEFEND_FAST])  # fmt: skip
    assert (out / "defense_metrics.json").is_file() and (out / "README.md").is_file()


def test_two_process_defense_publishes_one_complete_output(recipe_suspect, tmp_path):
    """`torchrun --nproc_per_node 2 recipes/defend.py --use_cpu true` (gloo): one finished folder, written once.
    (Without `--use_cpu` transformers sets up no distributed run on CPU; `is_main_process` refuses that.)"""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(REPO_ROOT / "recipes" / "defend.py"), "--model",
               str(recipe_suspect), "--output_dir", str(out), "--clean_count", "16", "--max_steps", "2",
               "--hub_dry_run", "true", "--use_cpu", "true", *RECIPE_DATA, *DEFEND_FAST]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code, stdout, stderr = run_launcher(command, env, timeout=240)
    assert code == 0, stderr[-4000:]
    assert {"model.safetensors", "config.json", "README.md", "defense_metrics.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not partial_dir(out).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
    assert stdout.count("Dry run: would upload") == 1  # the main process alone lists (and would push)


def test_several_processes_without_a_distributed_run_are_refused(monkeypatch, tmp_path):
    from hf_gnft.defenses.gnft_config import DefenseConfig
    from hf_gnft.trainer_args import is_main_process

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--use_cpu true"):
        is_main_process(DefenseConfig(output_dir=str(tmp_path / "x")))
