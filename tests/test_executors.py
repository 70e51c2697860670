"""The benchmark's executors: serial and Ray give the same cells; Ray resumes, records failures, refuses bad input."""

from __future__ import annotations

import json
import re
import socket

import pytest
import yaml

from hf_gnft.benchmark import Benchmark, BenchmarkConfig, BenchmarkConfigError, summarise
from hf_gnft.executors import (
    ExecutorError,
    ExecutorSettings,
    TaskResources,
    check_address_listens,
    check_cluster_resources,
    describe_task_error,
)
from hf_gnft.scripts import benchmark as benchmark_recipe

DATA = {"synthetic_train_size": 160, "synthetic_validation_size": 40, "synthetic_test_size": 40}
FT = {"max_steps": 2, "per_device_train_batch_size": 4}


def grid(tmp_path, name: str = "bench", **overrides) -> dict:
    values = {
        "output_dir": str(tmp_path / name),
        "suspects_dir": str(tmp_path / "suspects"),  # shared by the runs of a test: the same suspects
        "models": ["tiny-wav2vec2"],
        "triggers": ["noise_burst"],
        "seeds": [0],
        "data": DATA,
        "attack_epochs": 1,
        "defenses": {"ft": {"grid": [0.01, 0.05], "settings": FT}, "clp": {"grid": [3.0, 2.0]}},
    }
    values.update(overrides)
    return values


def write_grid(tmp_path, name: str = "bench", **overrides):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid(tmp_path, name, **overrides)))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cells_of(path) -> dict[tuple, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {(r["model"], r["trigger"], r["defense"], r["value"], r["seed"]): r for r in rows}


def without_cost(table: str) -> str:
    """The report without its time and memory ratios (wall times differ between any two runs)."""
    return re.sub(r"\| [0-9.]+ \| [0-9.]* \|$", "| | |", table, flags=re.MULTILINE)


# ------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"executor": "dask"}, "known executors are serial, ray"),
        ({"resources": {"cells": {"cpus": 1}}}, "unknown keys cells"),
        (
            {"resources": {"cell": {"cpus": float("nan")}}},
            "resources: cpus must be a finite number >= 0, got nan",
        ),
        ({"resources": {"cell": {"gpus": -1}}}, "resources: gpus must be a finite number >= 0"),
        ({"resources": {"cell": {"cpus": 0}}}, "at least some CPU or GPU"),
        ({"resources": {"cell": {"memory": 4}}}, "mapping of cpus and gpus"),
        ({"resources": {"threads": 0}}, "threads must be an integer >= 1"),
    ],
)
def test_bad_executor_settings_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ExecutorError, match=message):
        ExecutorSettings.from_grid(kwargs.get("executor"), kwargs.get("resources"))
    with pytest.raises(BenchmarkConfigError, match=message):  # in a grid file too, before anything trains
        BenchmarkConfig(**grid(tmp_path, **kwargs))


def test_flags_override_the_grid_and_ray_address_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    settings = ExecutorSettings.from_grid("serial", {"cell": {"cpus": 2}, "threads": 3}, flag_executor="ray")
    assert settings.executor == "ray" and settings.ray_address == "10.0.0.1:6379"
    assert settings.cell == TaskResources(cpus=2) and settings.task_threads(settings.cell) == 3
    assert ExecutorSettings.from_grid("ray", flag_threads=1).task_threads(TaskResources(cpus=4)) == 1
    assert (
        ExecutorSettings.from_grid("ray", {"suspect": {"cpus": 4}}).task_threads(TaskResources(cpus=4)) == 4
    )
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(ExecutorError, match="--executor ray"):
        ExecutorSettings.from_grid("serial", flag_address="10.0.0.1:6379")


def test_an_address_nothing_listens_on_is_named_before_anything_trains(tmp_path, capsys):
    port = free_port()
    with pytest.raises(ExecutorError, match=f"nothing listens at the Ray address '127.0.0.1:{port}'"):
        check_address_listens(f"127.0.0.1:{port}")
    with pytest.raises(ExecutorError, match="host:port"):
        check_address_listens("not an address")
    path = write_grid(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        benchmark_recipe.main([str(path), "--executor", "ray", "--ray_address", f"ray://127.0.0.1:{port}"])
    assert stopped.value.code == 2
    assert f"nothing listens at the Ray address 'ray://127.0.0.1:{port}'" in capsys.readouterr().err
    assert not (tmp_path / "suspects").exists()  # nothing trained


def test_a_gpu_request_a_cluster_cannot_meet_is_refused():
    settings = ExecutorSettings.from_grid("ray", {"cell": {"cpus": 1, "gpus": 1}})
    with pytest.raises(
        ExecutorError, match=r"resources.cell asks for 1 GPU per task, but the Ray cluster has 0"
    ):
        check_cluster_resources({"CPU": 16.0}, settings)
    check_cluster_resources({"CPU": 16.0, "GPU": 2.0}, settings)  # a GPU node: fine


def test_a_task_error_is_described_by_its_cause():
    class Wrapped(Exception):
        cause = ValueError("no model config 'no-such-model'")

    assert describe_task_error(Wrapped("traceback ...")) == "ValueError: no model config 'no-such-model'"
    assert describe_task_error(RuntimeError("one\ntwo")) == "RuntimeError: two"


def test_failed_cells_are_reported_until_they_finish(tmp_path):
    config = BenchmarkConfig(**grid(tmp_path))
    ok = {"model": "m", "trigger": "t", "defense": "ft", "value": 0.01, "seed": 0, "knob": "learning_rate",
          "before": {"clean_accuracy": 0.9, "attack_success_rate": 0.9, "robust_accuracy": 0.1},
          "after": {"clean_accuracy": 0.9, "attack_success_rate": 0.5, "robust_accuracy": 0.4}, "der": 0.7,
          "validation_accuracy": {"before": 0.9, "after": 0.9}, "seconds": 1.0, "peak_mib": 10.0}  # fmt: skip
    failed = {
        "model": "m",
        "trigger": "t",
        "defense": "ft",
        "value": 0.05,
        "seed": 0,
        "failed": "ValueError: boom",
    }
    table = summarise([ok, failed], config)
    assert (
        "Failed cells (1; a re-run retries them)" in table
        and "| m | t | ft | 0.05 | 0 | ValueError: boom |" in table
    )
    retried = {**ok, "value": 0.05}
    assert "Failed cells" not in summarise([ok, failed, retried], config)


# ------------------------------------------------------------------------------------------- on a local Ray


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for every test of this module that needs it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def suspects(tmp_path_factory):
    """The grids' backdoored model, trained once for the module's tests (in this process)."""
    folder = tmp_path_factory.mktemp("shared")
    Benchmark(BenchmarkConfig(**grid(folder))).suspect("tiny-wav2vec2", "noise_burst")
    return folder / "suspects"


def compare_runs(serial_results, ray_results) -> None:
    """The same cells, none twice, with the same numbers."""
    serial, on_ray = cells_of(serial_results), cells_of(ray_results)
    assert len(ray_results.read_text().splitlines()) == len(on_ray) and set(on_ray) == set(serial)
    for key, row in serial.items():
        assert on_ray[key]["after"] == row["after"], key  # CA / ASR / RA, cell for cell
        assert on_ray[key]["validation_accuracy"] == row["validation_accuracy"], key
        assert (
            on_ray[key]["retuned"] == row["retuned"] and on_ray[key]["reinversion"] == row["reinversion"]
        ), key
        assert on_ray[key]["settings"] == row["settings"] and on_ray[key]["info"] == row["info"], key
        assert on_ray[key]["machine"].endswith(" 1 threads")  # the worker pinned torch to its task's threads


def test_ray_gives_the_serial_runs_cells_and_resumes_without_redoing_any(tmp_path, local_ray, suspects):
    # no retuning check here (the slow grid test below runs it and the re-inversion on Ray): cells in seconds
    checks = {"suspects_dir": str(suspects), "defenses": {"ft": {"grid": [0.01, 0.2],
              "settings": {**FT, "max_steps": 4}}}}  # fmt: skip
    serial_table = benchmark_recipe.main([str(write_grid(tmp_path, "serial", **checks)), "--threads", "1"])
    # Ray, 1 thread per task; stopped after 1 cell (as a killed driver leaves the file), then run again
    ray_grid = write_grid(tmp_path, "ray", **checks)
    benchmark_recipe.main([str(ray_grid), "--executor", "ray", "--threads", "1", "--limit", "1"])
    results = tmp_path / "ray" / "results.jsonl"
    assert len(results.read_text().splitlines()) == 1 and json.loads(results.read_text())["seed"] == 0
    ray_table = benchmark_recipe.main([str(ray_grid), "--executor", "ray", "--threads", "1"])
    compare_runs(tmp_path / "serial" / "results.jsonl", results)
    assert without_cost(ray_table) == without_cost(serial_table)  # the same results.md
    assert str(tmp_path) not in results.read_text()  # no local path in a row


def test_a_cell_that_raises_on_a_worker_is_recorded_failed_and_the_others_finish(
    tmp_path, local_ray, suspects
):
    failing = write_grid(tmp_path, "failing", suspects_dir=str(suspects), models=["tiny-wav2vec2", "no-such-model"],
                         defenses={"ft": {"grid": [0.01], "settings": FT}})  # fmt: skip
    table = benchmark_recipe.main([str(failing), "--executor", "ray", "--threads", "1"])
    results = tmp_path / "failing" / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["model"] for r in rows if r.get("failed")] == ["no-such-model"]
    assert "ValueError: unknown model 'no-such-model'" in next(r["failed"] for r in rows if r.get("failed"))
    assert any(r["model"] == "tiny-wav2vec2" and "after" in r for r in rows)
    assert "Failed cells (1; a re-run retries them)" in table
    assert str(tmp_path) not in results.read_text()
    benchmark_recipe.main(
        [str(failing), "--executor", "ray", "--threads", "1"]
    )  # a re-run retries only the failure
    again = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(again) == 3 and again[2]["model"] == "no-such-model" and again[2].get("failed")


@pytest.mark.slow
def test_the_issues_grid_gives_the_same_cells_serially_and_on_ray(tmp_path, local_ray):
    """2 models × 1 trigger × 2 defenses × 2 values × 1 seed; Ray trains the suspects (1 thread per task), the serial
    run (1 thread) reuses them."""
    shared = {"models": ["tiny-wav2vec2", "tiny-hubert"], "attack_epochs": 2, "retuning": True, "reinversion": True,
              "defenses": {"ft": {"grid": [0.01, 0.2], "settings": {**FT, "max_steps": 4}},
                           "gn-ft": {"grid": [0.01, 0.2], "settings": {**FT, "max_steps": 4}}}}  # fmt: skip
    ray_table = benchmark_recipe.main([str(write_grid(tmp_path, "ray", **shared)), "--executor", "ray",
                                       "--threads", "1"])  # fmt: skip
    serial_table = benchmark_recipe.main([str(write_grid(tmp_path, "serial", **shared)), "--threads", "1"])
    compare_runs(tmp_path / "serial" / "results.jsonl", tmp_path / "ray" / "results.jsonl")
    assert len(cells_of(tmp_path / "ray" / "results.jsonl")) == 8
    assert without_cost(ray_table) == without_cost(serial_table)


def test_ray_refuses_a_gpu_request_before_anything_trains(tmp_path, local_ray, capsys):
    path = write_grid(tmp_path, resources={"cell": {"cpus": 1, "gpus": 1}})
    with pytest.raises(SystemExit) as stopped:
        benchmark_recipe.main([str(path), "--executor", "ray"])
    assert (
        stopped.value.code == 2
        and "asks for 1 GPU per task, but the Ray cluster has 0" in capsys.readouterr().err
    )
    assert not (tmp_path / "suspects").exists()


def test_benchmark_run_takes_the_grids_executor(tmp_path, local_ray, suspects, capsys):
    config = BenchmarkConfig(**grid(tmp_path, executor="ray", suspects_dir=str(suspects), reference="clp",
                                    defenses={"clp": {"grid": [3.0]}}))  # fmt: skip
    rows = Benchmark(config).run()
    assert len(rows) == 1 and rows[0]["defense"] == "clp" and "after" in rows[0]
    assert "1 to run on Ray" in capsys.readouterr().out
