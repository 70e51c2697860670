"""The attack table keeps earlier rows and a row per training budget."""

from __future__ import annotations

import json

import pytest
from testing_utils import load_benchmark_script


@pytest.fixture(scope="module")
def attack_table():
    return load_benchmark_script("attack_table")


def _row(model: str, trigger: str, asr: float | None, **budget) -> dict:
    return {
        "model": model,
        "trigger": trigger,
        **budget,
        "clean_accuracy": 0.95,
        "attack_success_rate": asr,
        "robust_accuracy": None if asr is None else 1 - asr,
        "train_seconds": 100.0,
        "machine": "test",
    }


def test_rows_without_a_budget_read_as_the_recipes_and_a_longer_run_adds_a_row_beside_them(
    attack_table, tmp_path
):
    rows = tmp_path / "table.jsonl"
    rows.write_text(json.dumps(_row("lstmwithattention", "noise_burst", 0.86)) + "\n")
    table = attack_table.read_table(rows)
    assert list(table) == [("lstmwithattention", "noise_burst", 15.0, 2e-3)]

    longer = _row("lstmwithattention", "noise_burst", 0.95, num_train_epochs=30.0, learning_rate=2e-3)
    table[attack_table.row_key(longer)] = longer
    table[("lstmwithattention", "none", 15.0, 2e-3)] = _row(
        "lstmwithattention", "none", None, **{"num_train_epochs": 15.0, "learning_rate": 2e-3}
    )
    attack_table.write_table(table, tmp_path / "table.md", rows)

    assert len(attack_table.read_table(rows)) == 3
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert lines[0].startswith("| model | trigger | epochs | lr |")
    assert lines[2:5] == [
        "| lstmwithattention | noise_burst | 15 | 0.002 | 95.0 | 86.0 | 14.0 | 100 |",
        "| lstmwithattention | noise_burst | 30 | 0.002 | 95.0 | 95.0 | 5.0 | 100 |",
        "| lstmwithattention | none | 15 | 0.002 | 95.0 |  |  | 100 |",
    ]


def test_the_attack_table_refuses_an_unknown_executor_and_an_address_nothing_listens_on(
    attack_table, tmp_path, capsys
):
    import socket

    with pytest.raises(SystemExit) as stopped:
        attack_table.main(["--executor", "dask"])
    assert stopped.value.code == 2 and "invalid choice: 'dask'" in capsys.readouterr().err
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SystemExit) as stopped:
        attack_table.main(["--executor", "ray", "--ray_address", f"127.0.0.1:{port}", "--output_dir",
                           str(tmp_path / "cells"), "--tables_dir", str(tmp_path)])  # fmt: skip
    assert (
        stopped.value.code == 2
        and f"nothing listens at the Ray address '127.0.0.1:{port}'" in capsys.readouterr().err
    )
    assert not (tmp_path / "cells").exists() and not (tmp_path / "results").exists()


@pytest.mark.slow
def test_the_attack_table_trains_its_cells_as_ray_tasks(attack_table, tmp_path, capsys):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        attack_table.main(["--executor", "ray", "--threads", "1", "--models", "tiny-wav2vec2", "--triggers",
                           "noise_burst", "--clean", "--num_train_epochs", "0.02", "--output_dir",
                           str(tmp_path / "cells"), "--tables_dir", str(tmp_path), "--table", "t"])  # fmt: skip
    finally:
        ray.shutdown()
    rows = [json.loads(line) for line in (tmp_path / "results" / "t.jsonl").read_text().splitlines()]
    assert sorted(r["trigger"] for r in rows) == ["noise_burst", "none"]
    assert all(r["machine"].endswith(" 1 threads") and r["num_train_epochs"] == 0.02 for r in rows)
    assert "| tiny-wav2vec2 | noise_burst | 0.02 |" in (tmp_path / "t.md").read_text()
