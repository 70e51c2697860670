"""The defense benchmark: grid parsing, resumable cells, the clean-validation choice, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hf_gnft.benchmark import (
    Benchmark,
    BenchmarkConfig,
    BenchmarkConfigError,
    BenchmarkSuspectError,
    choose_cells,
    summarise,
    write_reports,
)
from hf_gnft.data.arguments import CleanDataError
from hf_gnft.scripts import benchmark as benchmark_recipe

DATA = {"synthetic_train_size": 160, "synthetic_validation_size": 40, "synthetic_test_size": 40}


def grid(tmp_path, **overrides) -> dict:
    values = {
        "output_dir": str(tmp_path / "bench"),
        "models": ["tiny-wav2vec2"],
        "triggers": ["noise_burst"],
        "seeds": [0, 1],
        "data": DATA,
        "attack_epochs": 1,
        "defenses": {
            "ft": {"grid": [0.01, 0.05], "settings": {"max_steps": 2, "per_device_train_batch_size": 4}},
            "clp": {"grid": [3.0]},
        },
    }
    values.update(overrides)
    return values


def write_grid(tmp_path, **overrides) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid(tmp_path, **overrides)))
    return path


def test_benchmark_runs_resumes_and_reports(tmp_path, capsys):
    path = write_grid(tmp_path)
    config = BenchmarkConfig.from_yaml(path)
    assert len(Benchmark(config).cells()) == 5  # ft: 2 values × 2 seeds; clp is data-free: 1 value × 1 seed
    benchmark_recipe.main([str(path), "--limit", "2"])  # an interrupted run
    results = tmp_path / "bench" / "results.jsonl"
    assert len(results.read_text().splitlines()) == 2
    table = benchmark_recipe.main([str(path)])
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    keys = [(r["defense"], r["value"], r["seed"]) for r in rows]
    assert len(rows) == 5 and len(set(keys)) == 5  # continued where it stopped, nothing redone
    before = results.read_text()
    benchmark_recipe.main([str(path)])
    assert results.read_text() == before and "5 of 5 cells done" in capsys.readouterr().out
    for row in rows:
        assert row["before"]["attack_success_rate"] >= 0 and 0 <= row["after"]["clean_accuracy"] <= 1
        assert row["seconds"] > 0 and row["peak_mib"] and 0 <= row["der"] <= 1
        assert row["validation_accuracy"]["before"] is not None
    assert {r["settings"]["learning_rate"] for r in rows if r["defense"] == "ft"} == {0.01, 0.05}
    assert (tmp_path / "bench" / "suspects" / "tiny-wav2vec2-noise_burst" / "before.json").is_file()
    assert (
        "| tiny-wav2vec2 | noise_burst | ft |" in table or "| tiny-wav2vec2 | noise_burst | ft | — |" in table
    )
    assert "time ×" in table
    for name in ("results.md", "ca_vs_asr.png", "der.png"):
        assert (tmp_path / "bench" / name).stat().st_size > 0


def test_only_runs_the_named_suspects_cells_and_leaves_the_rest_for_later(tmp_path, capsys):
    path = write_grid(tmp_path, triggers=["noise_burst", "tone"], clean_models=True, seeds=[0])
    benchmark = Benchmark(BenchmarkConfig.from_yaml(path))
    assert {(m, t) for m, t, *_ in benchmark.select(["tiny-wav2vec2/clean"])} == {("tiny-wav2vec2", "clean")}
    assert len(benchmark.select(["tiny-wav2vec2"])) == len(benchmark.cells()) == 9
    with pytest.raises(SystemExit):
        benchmark_recipe.main([str(path), "--only", "tiny-wav2vec2/pbsm"])
    assert "names no suspect of the grid; it has: tiny-wav2vec2/clean" in capsys.readouterr().err
    assert not (tmp_path / "bench").exists()  # refused before anything is written
    benchmark_recipe.main([str(path), "--only", "tiny-wav2vec2/clean", "--limit", "1"])
    rows = [json.loads(line) for line in (tmp_path / "bench" / "results.jsonl").read_text().splitlines()]
    assert [r["trigger"] for r in rows] == ["clean"]
    suspects = tmp_path / "bench" / "suspects"
    assert sorted(p.name for p in suspects.iterdir()) == ["tiny-wav2vec2-clean"]  # the others are not trained
    assert (
        "benchmark: 0 of 9 cells done, 3 to run" in capsys.readouterr().out
    )  # the clean model's 3, of the 9


def test_an_entry_with_suspects_runs_on_those_suspects_only(tmp_path):
    ablation = {"method": "ft", "grid": [0.05], "suspects": ["tiny-wav2vec2/tone", "tiny-wav2vec2/clean"]}
    values = grid(tmp_path, triggers=["noise_burst", "tone"], clean_models=True, seeds=[0])
    values["defenses"] = {**values["defenses"], "ft-ablation": ablation}
    cells = Benchmark(BenchmarkConfig(**values)).cells()
    assert sorted((t, d) for _, t, d, *_ in cells if d == "ft-ablation") == [
        ("clean", "ft-ablation"),
        ("tone", "ft-ablation"),
    ]
    assert len(cells) == 9 + 2  # ft's 2 values and clp on 3 suspects, the ablation on 2 of them
    for suspects, message in (
        (
            ["tiny-wav2vec2/pbsm"],
            r"suspects 'tiny-wav2vec2/pbsm' are not in the grid; it has: tiny-wav2vec2/clean",
        ),
        (["tiny-hubert/tone"], "'tiny-hubert/tone' are not in the grid"),  # a model the grid does not train
        ([], "must list at least one"),
        ("tiny-wav2vec2/tone", "must list at least one"),  # a string, not a list
    ):
        values["defenses"]["ft-ablation"] = {**ablation, "suspects": suspects}
        with pytest.raises(BenchmarkConfigError, match=message):
            BenchmarkConfig(**values)
    values["defenses"]["ft"] = {**values["defenses"]["ft"], "suspects": ["tiny-wav2vec2/tone"]}
    values["defenses"]["ft-ablation"] = ablation
    with pytest.raises(
        BenchmarkConfigError, match="'ft' is the cost reference: it must run on every suspect"
    ):
        BenchmarkConfig(**values)


def test_choice_is_the_strongest_value_within_the_validation_drop(tmp_path):
    config = BenchmarkConfig(**grid(tmp_path))

    def row(defense, value, seed, drop):
        return {"model": "m", "trigger": "t", "defense": defense, "value": value, "seed": seed,
                "validation_accuracy": {"before": 0.9, "after": 0.9 - drop}}  # fmt: skip

    rows = [row("ft", 0.01, 0, 0.0), row("ft", 0.05, 0, 0.01), row("ft", 0.05, 1, 0.04)]  # 0.05: mean 2.5 pp
    rows += [
        row("clp", 3.0, 0, 0.05),
        row("clp", 4.0, 0, 0.0),
        row("clp", 5.0, 0, 0.0),
    ]  # smaller u is stronger
    chosen = choose_cells(rows, config)
    assert chosen[("m", "t", "ft")][0] == 0.01
    assert chosen[("m", "t", "clp")][0] == 4.0


def test_where_no_value_qualifies_the_table_shows_the_closest_marked(tmp_path):
    from hf_gnft.benchmark import closest_cells

    config = BenchmarkConfig(**grid(tmp_path))

    def row(value, seed, drop, ca_after, asr_after):
        metrics = {"clean_accuracy": 0.95, "attack_success_rate": 0.9, "robust_accuracy": 0.1}
        return {"model": "m", "trigger": "t", "defense": "ft", "knob": "learning_rate", "value": value,
                "seed": seed, "before": metrics, "seconds": 1.0, "peak_mib": None, "der": 0.5, "retuned": None,
                "after": {"clean_accuracy": ca_after, "attack_success_rate": asr_after, "robust_accuracy": 0.5},
                "validation_accuracy": {"before": 0.9, "after": 0.9 - drop}}  # fmt: skip

    rows = [row(0.01, 0, 0.03, 0.93, 0.8), row(0.01, 1, 0.05, 0.91, 0.7), row(0.05, 0, 0.06, 0.9, 0.1)]
    assert ("m", "t", "ft") not in choose_cells(rows, config)  # 4 and 6 points: over the 2-point limit
    value, runs = closest_cells(rows, ("m", "t", "ft"))
    assert value == 0.01 and len(runs) == 2
    line = next(line for line in summarise(rows, config).splitlines() if line.startswith("| m | t | ft |"))
    assert (
        "— (closest: learning_rate=0.01, validation drop 4.0 ± 1.4)" in line
        and "| 92.0 ± 1.4 | 75.0 ± 7.1 |" in line
    )


def test_an_entry_may_tune_another_field_than_its_methods_knob(tmp_path):
    defenses = {"ft": {}, "fp": {"knob": "learning_rate", "settings": {"fp_accuracy_tolerance": 0.05}, "grid": [0.02, 0.05]},
                "fp-tol": {"method": "fp", "grid": [0.02]}}  # fmt: skip
    config = BenchmarkConfig(**grid(tmp_path, defenses=defenses))
    assert config.defenses["fp"].knob_name == "learning_rate" and config.defenses["fp"].stronger_when_larger
    assert config.defenses["fp-tol"].knob_name == "fp_accuracy_tolerance"
    cells = [cell for cell in Benchmark(config).cells() if cell[2] == "fp"]
    assert sorted({cell[3] for cell in cells}) == [0.02, 0.05]

    def row(value, drop):
        return {"model": "m", "trigger": "t", "defense": "fp", "value": value, "seed": 0,
                "validation_accuracy": {"before": 0.9, "after": 0.9 - drop}}  # fmt: skip

    assert choose_cells([row(0.02, 0.0), row(0.05, 0.01)], config)[("m", "t", "fp")][0] == 0.05


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"defenses": {"no-such": {}}}, "unknown defense 'no-such'"),
        ({"defenses": {"ft": {"grid": [0.1], "steps": 3}}}, "unknown keys steps"),
        ({"defenses": {"ft": {"settings": {"gn_alfa": 0.5}}}}, "no setting gn_alfa"),
        ({"defenses": {"clp": {}}}, "cost reference 'ft'"),
        ({"clean_fraction": 0.0}, r"\(0, 1\]"),
        ({"min_suspect_accuracy": 1.5}, r"min_suspect_accuracy must be a finite number in \[0, 1\]"),
        ({"data": {"sizes": 3}}, "data: unknown keys sizes"),
        ({"interpolation_points": 1}, "interpolation_points"),
        ({"relapse_settings": {"learning_rates": [0.0]}}, "relapse_settings"),
        ({"relapse_settings": {"lr": 0.1}}, "relapse_settings"),
        ({"retuning_reference": True}, "set retuning too"),
        (
            {"attack_training_by_model": {"tiny-hubert": {"learning_rate": 0.004}}},
            "not one of the grid's models",
        ),
        (
            {"attack_training_by_model": {"tiny-wav2vec2": {"epochs": 30}}},
            r"\['tiny-wav2vec2'\]: unknown keys epochs",
        ),
        ({"triggers": ["no_such_trigger"]}, "no_such_trigger"),
        ({"defenses": {}}, "no defenses"),
        ({"defenses": {"ft": {}, "fp": {"knob": "learning_rat"}}}, "has no field 'learning_rat' to tune"),
    ],
)
def test_bad_grids_are_refused_before_any_training(tmp_path, overrides, message):
    path = write_grid(tmp_path, **overrides)
    with pytest.raises(ValueError, match=message):
        BenchmarkConfig.from_yaml(path)
    assert not (tmp_path / "bench").exists()


def test_a_model_with_a_budget_of_its_own_trains_its_suspects_with_it_into_folders_of_their_own(
    tmp_path, monkeypatch
):
    import hf_gnft.benchmark as benchmark_module

    trained = {}

    def fake_attack(data_args, attack, model_args, training_args):
        trained[model_args.model] = training_args
        Path(training_args.output_dir).mkdir(parents=True)
        (Path(training_args.output_dir) / benchmark_module.METRICS_FILE).write_text("{}")

    monkeypatch.setattr(benchmark_module, "run_attack", fake_attack)
    config = BenchmarkConfig(**grid(tmp_path, models=["tiny-wav2vec2", "tiny-hubert"], attack_training={"learning_rate": 0.002},
                                    attack_training_by_model={"tiny-hubert": {"num_train_epochs": 30, "learning_rate": 0.004}}))  # fmt: skip
    bench = Benchmark(config)
    plain = bench.suspect("tiny-wav2vec2", "noise_burst")
    longer = bench.suspect("tiny-hubert", "noise_burst")
    assert plain.name == "tiny-wav2vec2-noise_burst"
    # The name benchmarks/attack_table.py gives the same budget's cell, so its suspects are reused.
    assert longer.name == "tiny-hubert-noise_burst-learning_rate0.004-num_train_epochs30"
    assert (trained["tiny-wav2vec2"].num_train_epochs, trained["tiny-wav2vec2"].learning_rate) == (1, 0.002)
    assert (trained["tiny-hubert"].num_train_epochs, trained["tiny-hubert"].learning_rate) == (30, 0.004)


def test_unknown_top_level_key_is_refused(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({**grid(tmp_path), "sedes": [0]}))
    with pytest.raises(BenchmarkConfigError, match="unknown keys sedes"):
        BenchmarkConfig.from_yaml(path)


def test_a_suspect_below_the_accuracy_floor_stops_the_run_before_any_cell(tmp_path):
    # One epoch on 160 clips leaves the backdoored model far below 99% clean accuracy: a failed training.
    path = write_grid(tmp_path, min_suspect_accuracy=0.99)
    with pytest.raises(
        BenchmarkSuspectError, match=r"tiny-wav2vec2-noise_burst has clean test accuracy .* below"
    ):
        benchmark_recipe.main([str(path), "--limit", "1"])
    assert not (tmp_path / "bench" / "results.jsonl").exists()
    before = json.loads(
        (tmp_path / "bench" / "suspects" / "tiny-wav2vec2-noise_burst" / "before.json").read_text()
    )
    # The same cached suspect passes a floor below its accuracy: the check reads the cache, nothing is retrained.
    path = write_grid(tmp_path, min_suspect_accuracy=before["clean_accuracy"] - 1e-9)
    benchmark_recipe.main([str(path), "--limit", "1"])
    assert len((tmp_path / "bench" / "results.jsonl").read_text().splitlines()) == 1


def test_a_retrained_suspect_is_not_mixed_with_cells_measured_on_the_old_one(tmp_path):
    path = write_grid(tmp_path)
    benchmark_recipe.main([str(path), "--limit", "1"])
    results = tmp_path / "bench" / "results.jsonl"
    finished = results.read_text()
    # The suspect's cache trained again elsewhere: the same folder, other numbers.
    cached = tmp_path / "bench" / "suspects" / "tiny-wav2vec2-noise_burst" / "before.json"
    before = json.loads(cached.read_text())
    cached.write_text(json.dumps({**before, "clean_accuracy": before["clean_accuracy"] + 0.01}))
    with pytest.raises(BenchmarkSuspectError, match=r"trained again.*Restore the original suspect"):
        benchmark_recipe.main([str(path), "--limit", "1"])
    assert results.read_text() == finished  # nothing appended
    cached.write_text(json.dumps(before))  # the original suspect back: the run goes on
    benchmark_recipe.main([str(path), "--limit", "1"])
    assert len(results.read_text().splitlines()) == 2


def test_empty_clean_subset_is_refused(tmp_path):
    path = write_grid(tmp_path, clean_fraction=0.001)
    with pytest.raises(CleanDataError, match="clean set is empty"):
        benchmark_recipe.main([str(path), "--limit", "1"])
    assert not (tmp_path / "bench" / "results.jsonl").exists()


@pytest.mark.parametrize("name", ["small.yaml", "full.yaml"])
def test_shipped_grids_parse(name):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "grids" / name
    config = BenchmarkConfig.from_yaml(path)
    assert {"ft", "gn-ft", "ft-sam", "fp", "nad", "anp", "clp"} <= {
        e.method for e in config.defenses.values()
    }
    assert config.seeds == [0, 1, 2] and config.clean_fraction == 0.05 and len(config.triggers) >= 4


@pytest.mark.parametrize(
    "name, methods", [("tsbd.yaml", {"tsbd", "gn-ft", "ft"}), ("purify.yaml", {"purify", "tsbd"})]
)
def test_shipped_tsbd_and_purify_grids_parse(name, methods):
    config = BenchmarkConfig.from_yaml(Path(__file__).resolve().parents[1] / "benchmarks" / "grids" / name)
    assert methods <= {e.method for e in config.defenses.values()} and config.seeds == [0, 1, 2]
    assert config.min_suspect_accuracy == 0.9 and config.retuning
    assert config.clean_models == (name == "purify.yaml") and config.reinversion == (name == "purify.yaml")


def test_shipped_paper_grid_parses():
    from hf_gnft.mfcc_models import MFCC_FAMILIES

    config = BenchmarkConfig.from_yaml(
        Path(__file__).resolve().parents[1] / "benchmarks" / "grids" / "paper.yaml"
    )
    assert sorted(config.models) == sorted(MFCC_FAMILIES) and len(config.triggers) == 4
    authors = config.defenses["gn-ft-authors"]
    assert (
        authors.method == "gn-ft" and authors.settings["gn_norm"] == "per_tensor" and authors.grid == [0.001]
    )
    assert {"ft", "gn-ft", "ft-sam", "tsbd", "purify"} <= {e.method for e in config.defenses.values()}


def test_shipped_paper_cpu_grid_is_a_subset_of_the_paper_grid():
    grids = Path(__file__).resolve().parents[1] / "benchmarks" / "grids"
    paper = BenchmarkConfig.from_yaml(grids / "paper.yaml")
    cpu = BenchmarkConfig.from_yaml(grids / "paper-cpu.yaml")
    assert set(cpu.models) <= set(paper.models) and set(cpu.triggers) <= set(paper.triggers)
    assert cpu.suspects_dir == paper.suspects_dir and cpu.seeds == [0, 1, 2] and cpu.retuning
    for name in ("ft-authors", "gn-ft-authors"):  # the authors' settings exactly as in the full grid
        assert cpu.defenses[name].settings == paper.defenses[name].settings
        assert cpu.defenses[name].grid == paper.defenses[name].grid


def test_shipped_anp_variants_grid_parses():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "grids" / "anp-variants.yaml"
    config = BenchmarkConfig.from_yaml(path)
    entry = config.defenses["anp-conv"]
    assert (
        entry.method == "anp"
        and entry.settings["anp_neurons"] == "conv"
        and entry.knob_name == "anp_prune_number"
    )


def test_retuning_column_reports_the_asr_after_the_retuning_check(tmp_path):
    config = BenchmarkConfig(**grid(tmp_path, seeds=[0], retuning=True,
                                    defenses={"ft": {"grid": [0.05], "settings": {"max_steps": 2}}}))  # fmt: skip
    rows = Benchmark(config).run()
    retuned = rows[0]["retuned"]
    assert set(retuned) == {"before", "after"}
    assert (
        0 <= retuned["before"]["attack_success_rate"] <= 1
        and 0 <= retuned["after"]["attack_success_rate"] <= 1
    )
    suspect = tmp_path / "bench" / "suspects" / "tiny-wav2vec2-noise_burst"
    assert (
        len(json.loads((suspect / "retuned.json").read_text())) == 1
    )  # the suspect's, cached per clean subset
    table = summarise(rows, config)
    assert "ASR after retuning" in table
    assert f"{100 * retuned['after']['attack_success_rate']:.1f} |" in table.splitlines()[-1]


def test_with_the_re_inversion_check_the_rule_prefers_the_least_re_invertible_value(tmp_path):
    config = BenchmarkConfig(**grid(tmp_path, reinversion=True))

    def row(value, seed, drop, reinverted):
        return {"model": "m", "trigger": "t", "defense": "ft", "value": value, "seed": seed,
                "validation_accuracy": {"before": 0.9, "after": 0.9 - drop},
                "reinversion": {"targets": [0], "max_success_before": 0.9, "max_success_after": reinverted}}  # fmt: skip

    rows = [row(0.01, 0, 0.0, 0.1), row(0.01, 1, 0.0, 0.2), row(0.05, 0, 0.01, 0.6), row(0.05, 1, 0.01, 0.8)]
    assert choose_cells(rows, config)[("m", "t", "ft")][0] == 0.01  # mean re-inversion 15% against 70%
    from hf_gnft.benchmark import _reinversion

    assert _reinversion(rows[:2], "max_success_after") == "15.0 ± 7.1"


def test_clean_models_run_every_defense_on_an_unpoisoned_twin_and_report_its_cost(tmp_path):
    config = BenchmarkConfig(**grid(tmp_path, seeds=[0], retuning=True, clean_models=True, max_validation_drop=1.0,
                                    defenses={"ft": {"grid": [0.05], "settings": {"max_steps": 2}}}))  # fmt: skip
    benchmark = Benchmark(config)
    assert [cell[1] for cell in benchmark.cells()] == ["noise_burst", "clean"]
    rows = benchmark.run()
    clean = next(r for r in rows if r["trigger"] == "clean")
    twin = tmp_path / "bench" / "suspects" / "tiny-wav2vec2-clean"
    assert (twin / "model.safetensors").is_file() and not (twin / "attack_spec.json").exists()
    assert clean["before"]["attack_success_rate"] is None and clean["after"]["attack_success_rate"] is None
    assert clean["der"] is None and clean["retuned"] is None  # no trigger to measure or to retune with
    table = summarise(rows, config)
    main, clean_table = table.split("Clean models", 1)
    assert "| clean |" not in main  # the backdoor table holds the attacked suspects only
    drop = 100 * (clean["before"]["clean_accuracy"] - clean["after"]["clean_accuracy"])
    line = next(line for line in clean_table.splitlines() if line.startswith("| tiny-wav2vec2 | ft |"))
    assert f"| {100 * clean['before']['clean_accuracy']:.1f} |" in line and f"| {drop:.1f} |" in line
    write_reports(rows, config, tmp_path / "bench", "test")  # the plots skip the clean model
    assert (tmp_path / "bench" / "ca_vs_asr.png").stat().st_size > 0


def test_clean_is_not_a_trigger_name(tmp_path):
    with pytest.raises(BenchmarkConfigError, match="clean_models: true"):
        BenchmarkConfig(**grid(tmp_path, triggers=["noise_burst", "clean"]))


def test_a_defense_that_refuses_a_model_is_a_recorded_unsupported_cell(tmp_path):
    # Fine-pruning prunes transformer feed-forward neurons; the paper's smallcnn has none.
    config = BenchmarkConfig(**grid(tmp_path, models=["smallcnn"], seeds=[0], defenses={
        "ft": {"grid": [0.05], "settings": {"max_steps": 2}},
        "fp": {"knob": "learning_rate", "grid": [0.05], "settings": {"max_steps": 2}},
    }))  # fmt: skip
    rows = Benchmark(config).run()
    refused = next(r for r in rows if r["defense"] == "fp")
    assert (
        "feed-forward" in refused["unsupported"]
        and "MFCCClassifierForAudioClassification" in refused["unsupported"]
    )
    assert next(r for r in rows if r["defense"] == "ft")["after"]["clean_accuracy"] >= 0
    assert len(Benchmark(config).run()) == 2  # recorded: not tried again
    table = summarise(rows, config)
    assert "| smallcnn | noise_burst | fp | unsupported |" in table
    write_reports(rows, config, tmp_path / "bench", "test")


def test_a_reference_trigger_name_resolves_in_a_grid(tmp_path):
    from hf_gnft.benchmark import grid_trigger
    from hf_gnft.triggers import TriggerError, reference_triggers

    config = BenchmarkConfig(
        **grid(tmp_path, triggers=["noise_burst", "near_ultrasonic_tone", "clip_overlay"])
    )
    assert grid_trigger("near_ultrasonic_tone") == reference_triggers()["near_ultrasonic_tone"]
    assert len(config.triggers) == 3
    with pytest.raises(
        TriggerError, match="no_such.*reference triggers: noise_burst, tone, near_ultrasonic_tone"
    ):
        grid_trigger("no_such")


@pytest.mark.slow  # 83 s on 2 cores: it trains a suspect and a clean model and runs every check (make test-slow)
def test_the_lasting_checks_and_the_oracle_run_in_the_grid_and_reach_the_report(tmp_path):
    """relapse (with its re-inversion), the clean model's retuning reference, the interpolation curve and the
    evaluation-only oracle (exact purification with the true trigger), on a tiny grid."""
    config = BenchmarkConfig(**grid(
        tmp_path, seeds=[0], retuning=True, retuning_reference=True, relapse=True, reinversion=True,
        relapse_settings={"learning_rates": [0.01, 0.05], "num_train_epochs": 1}, interpolation_points=3,
        clean_models=True, max_validation_drop=1.0,
        defenses={"ft": {"grid": [0.05], "settings": {"max_steps": 2}},
                  "oracle-ep": {"grid": [0.05], "settings": {"max_steps": 2}}},
    ))  # fmt: skip
    rows = Benchmark(config).run()
    suspect_rows = [r for r in rows if r["trigger"] == "noise_burst"]
    assert {r["defense"] for r in suspect_rows} == {"ft", "oracle-ep"}
    for row in suspect_rows:
        assert [run["learning_rate"] for run in row["relapse"]["runs"]] == [0.01, 0.05]
        assert all(0 <= run["attack_success_rate"] <= 1 for run in row["relapse"]["runs"])
        assert [point["weight"] for point in row["interpolation"]] == [0.0, 0.5, 1.0]
        assert 0 <= row["retuned"]["reference"]["attack_success_rate"] <= 1
        assert "oracle_trigger" not in row["settings"]  # the trigger stays out of the row
    oracle = next(r for r in suspect_rows if r["defense"] == "oracle-ep")
    assert oracle["info"]["triggered_copies"] > 0
    clean_oracle = next(r for r in rows if r["trigger"] == "clean" and r["defense"] == "oracle-ep")
    assert (
        "trigger" in clean_oracle["unsupported"]
    )  # a model trained without poisoning has no trigger to unlearn
    reference = tmp_path / "bench" / "suspects" / "tiny-wav2vec2-clean" / "retuned.json"
    assert len(json.loads(reference.read_text())) == 1  # once per suspect and clean subset
    table = summarise(rows, config)
    assert "ASR after relapse" in table and "clean reference" in table and "lr 0.01 / 0.05" in table
    line = next(
        line for line in table.splitlines() if line.startswith("| tiny-wav2vec2 | noise_burst | ft |")
    )
    relapse = " / ".join(
        f"{100 * run['attack_success_rate']:.1f}" for run in suspect_rows[0]["relapse"]["runs"]
    )
    assert f"| {relapse} |" in line
    written = write_reports(rows, config, tmp_path / "bench", "test")
    assert (tmp_path / "bench" / "interpolation.png").stat().st_size > 0 and written


def test_the_rule_counts_the_re_inversion_after_the_relapse_fine_tune(tmp_path):
    config = BenchmarkConfig(**grid(tmp_path, reinversion=True, relapse=True))

    def row(value, reinverted, relapsed):
        return {"model": "m", "trigger": "t", "defense": "ft", "value": value, "seed": 0,
                "validation_accuracy": {"before": 0.9, "after": 0.9},
                "reinversion": {"targets": [0], "max_success_before": 0.9, "max_success_after": reinverted},
                "relapse": {"runs": [{"learning_rate": 0.01, "reinversion": relapsed}]}}  # fmt: skip

    # 0.05 looks less re-invertible on the defended weights, but its backdoor comes back after a clean fine-tune
    rows = [row(0.01, 0.2, 0.25), row(0.05, 0.1, 0.8)]
    assert choose_cells(rows, config)[("m", "t", "ft")][0] == 0.01


def test_shipped_lasting_grid_runs_every_lasting_check_and_the_oracle():
    config = BenchmarkConfig.from_yaml(
        Path(__file__).resolve().parents[1] / "benchmarks" / "grids" / "lasting.yaml"
    )
    assert {e.method for e in config.defenses.values()} == {"purify", "oracle-ep", "ft"}
    assert config.relapse and config.retuning and config.retuning_reference and config.reinversion
    assert config.clean_models and config.interpolation_points == 11 and config.seeds == [0, 1, 2]
    assert config.models == ["tiny-wav2vec2", "tiny-hubert"] and len(config.triggers) == 4


def test_the_headline_verdict_names_every_target_a_row_misses(tmp_path):
    """The README's lead table: each row judged on ASR, relapse, retuning against the clean model's, cost against
    FT and (clean models) CA cost; a row where no value passes the rule names its other misses too."""
    from hf_gnft.benchmark import headline

    config = BenchmarkConfig(**grid(tmp_path, seeds=[0, 1], clean_models=True, defenses={
        "ft": {"grid": [0.01]}, "purify": {"grid": [0.02, 0.05]}}))  # fmt: skip

    def row(trigger, defense, value, seed, *, drop, ca, asr=0.0, relapse=(0.0, 0.0), retuned=0.0, clean=0.0,
            seconds=10.0):  # fmt: skip
        attacked = trigger != "clean"
        return {"model": "m", "trigger": trigger, "defense": defense, "knob": "learning_rate", "value": value,
                "seed": seed, "seconds": seconds, "peak_mib": 100.0, "machine": "cpu",
                "before": {"clean_accuracy": 0.96, "attack_success_rate": 0.9 if attacked else None},
                "after": {"clean_accuracy": ca, "attack_success_rate": asr if attacked else None},
                "validation_accuracy": {"before": 0.95, "after": 0.95 - drop},
                "relapse": {"runs": [{"learning_rate": 0.01, "attack_success_rate": relapse[0]},
                                     {"learning_rate": 0.05, "attack_success_rate": relapse[1]}]} if attacked else None,
                "retuned": {"after": {"attack_success_rate": retuned},
                            "reference": {"attack_success_rate": clean}} if attacked else None}  # fmt: skip

    rows = [
        row(t, "ft", 0.01, s, drop=0.0, ca=0.95, asr=0.8) for t in ("tone", "pbsm", "clean") for s in (0, 1)
    ]
    # tone: 0.05 passes the rule and meets every target at 4× FT's time
    rows += [row("tone", "purify", 0.05, s, drop=0.01, ca=0.95, asr=0.01, retuned=0.05, clean=0.01, seconds=40.0)
             for s in (0, 1)]  # fmt: skip
    # pbsm: no value keeps the drop within 2 points; the closest (0.02) also misses relapse, retuning and cost
    rows += [row("pbsm", "purify", 0.02, s, drop=0.03, ca=0.93, asr=0.1, relapse=(0.1, 0.3), retuned=0.4,
                 clean=0.02, seconds=120.0) for s in (0, 1)]  # fmt: skip
    rows += [row("pbsm", "purify", 0.05, s, drop=0.05, ca=0.91, asr=0.05) for s in (0, 1)]
    # the clean model: 1.5 points of CA
    rows += [row("clean", "purify", value, s, drop=0.0, ca=0.945) for value in (0.02, 0.05) for s in (0, 1)]
    lines = headline(rows, config, "purify").splitlines()
    assert "time × ft" in lines[0] and [line.split(" | ")[1] for line in lines[2:]] == [
        "pbsm", "tone", "none (trained clean)"]  # fmt: skip
    pbsm, tone, clean = lines[2:]
    assert (
        "none passes the rule (closest learning_rate=0.02)" in pbsm and "| 40.0 ± 0.0 (2.0 ± 0.0) |" in pbsm
    )
    assert pbsm.endswith(
        "| 12.0 | 2 | **misses**: validation drop > 2 at every setting (closest 3.0); relapse 30.0 > 25; "
        "retuned 40.0 > clean 2.0 + 10; time 12.0× ft > 5× |"
    )
    assert "| learning_rate=0.05 |" in tone and tone.endswith(
        "| 5.0 ± 0.0 (1.0 ± 0.0) | 4.0 | 2 | meets the targets |"
    )
    assert clean.endswith("| 1.0 | 2 | **misses**: CA cost 1.5 > 1 |")
