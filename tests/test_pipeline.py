"""One defense pipeline for every method: same outputs, same numbers as the benchmark, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest.mock import patch

import pytest
from testing_utils import DEFEND_FAST, RECIPE_DATA, RECIPE_FAST

from hf_gnft.defenses import DEFENSE_METHODS
from hf_gnft.models import SuspectNotFoundError
from hf_gnft.scripts import defend as defend_recipe
from hf_gnft.training import evaluate_backdoor

#: The fewest steps each method can take, so that every method runs in seconds.
FAST_SETTINGS = {
    "gn-ft": ["--max_steps", "1"],
    "ft": ["--max_steps", "1"],
    "ft-sam": ["--max_steps", "1"],
    "fp": ["--max_steps", "1"],
    "nad": ["--max_steps", "1", "--nad_teacher_epochs", "1"],
    "anp": ["--anp_steps", "2"],
    "clp": [],
    "tsbd": ["--max_steps", "1", "--tsbd_max_unlearning_steps", "2"],
    "purify": ["--max_steps", "2", "--purify_steps", "2", "--purify_detection_steps", "2",
               "--purify_relearn_encoder_steps", "2",
               "--purify_max_semitones", "1", "--purify_filter_steps", "1", "--purify_detection_threshold", "0"],
}  # fmt: skip


#: The defenses whose run in `defended` also runs the re-inversion and retuning checks. The checks are the same
#: code for every method (they only see the defended model); one method that trains and one that does not cover them.
CHECKED = ("gn-ft", "clp")


@pytest.fixture(scope="module")
def defended(recipe_suspect, tmp_path_factory) -> dict[str, Path]:
    """Every registered defense run once through `hf-gnft defend` on the same suspect and clean clips."""
    root = tmp_path_factory.mktemp("every-defense")
    outputs = {}
    for name in DEFENSE_METHODS:
        out = root / name
        checks = [] if name in CHECKED else ["--reinversion_check", "false", "--retuning_check", "false"]
        defend_recipe.main(
            ["--defense", name, "--model", str(recipe_suspect), "--output_dir", str(out), "--clean_count", "8",
             "--relapse_check", "false", *checks, *RECIPE_DATA,
             *(RECIPE_FAST if DEFENSE_METHODS[name].trains else []), *FAST_SETTINGS[name]]
        )  # fmt: skip
        outputs[name] = out
    return outputs


def test_every_registered_defense_has_fast_test_settings():
    assert set(FAST_SETTINGS) == set(DEFENSE_METHODS)


@pytest.mark.parametrize("name", list(DEFENSE_METHODS))
def test_a_broken_defended_model_is_never_written(name, recipe_suspect, tmp_path, monkeypatch):
    """Every method, through `hf-gnft defend`: a defense that diverged (a non-finite weight) writes nothing."""
    import copy

    from hf_gnft import pipeline
    from hf_gnft.defenses import DefenseOutcome
    from hf_gnft.outputs import partial_dir
    from hf_gnft.pipeline import BrokenModelError

    def diverged(method, model, extractor, clean, config, validation=None):
        assert method.name == name
        broken = copy.deepcopy(model)
        next(broken.parameters()).data[0] = float("nan")
        return DefenseOutcome(broken, {"defense": name}), 0.0

    monkeypatch.setattr(pipeline, "apply_method", diverged)
    out = tmp_path / "out"
    with pytest.raises(BrokenModelError, match="non-finite weights"):
        defend_recipe.main(["--defense", name, "--model", str(recipe_suspect), "--output_dir", str(out),
                            "--clean_count", "8", *RECIPE_DATA, "--reinversion_check", "false", "--relapse_check",
                            "false", "--retuning_check", "false", *(RECIPE_FAST if DEFENSE_METHODS[name].trains else []),
                            *FAST_SETTINGS[name]])  # fmt: skip
    assert not out.exists() and not partial_dir(out).exists()


def test_a_model_at_chance_or_far_below_the_suspect_is_not_published():
    from torch import nn

    from hf_gnft.pipeline import BrokenModelError, check_publishable

    model = nn.Linear(2, 2)
    check_publishable(model, 0.9, 0.75, 10)  # 15 points: within the default 20
    check_publishable(model, 0.1, 0.1, 10)  # a suspect at chance stays at chance: nothing to tell
    with pytest.raises(BrokenModelError, match=r"fell to chance level \(10.0% for 10 classes, from 30.0%\)"):
        check_publishable(model, 0.3, 0.1, 10)
    with pytest.raises(BrokenModelError, match="fell by 25.0 points .* more than max_accuracy_drop"):
        check_publishable(model, 0.9, 0.65, 10)
    check_publishable(model, 0.9, 0.65, 10, max_accuracy_drop=0.3)
    model.bias.data[1] = float("inf")
    with pytest.raises(BrokenModelError, match="non-finite weights .*'bias'"):
        check_publishable(model, None, None, 10)


def test_every_defense_writes_the_same_files_and_record_keys(defended):
    files = {name: sorted(p.name for p in out.iterdir()) for name, out in defended.items()}
    reference = files["gn-ft"]
    assert {"model.safetensors", "config.json", "README.md", "defense_metrics.json", "defense_table.md",
            "attack_spec.json"} <= set(reference)  # fmt: skip
    assert all(listing == reference for listing in files.values()), files
    records = {name: json.loads((out / "defense_metrics.json").read_text()) for name, out in defended.items()}
    keys = {name: sorted(record) for name, record in records.items()}
    assert all(k == keys["gn-ft"] for k in keys.values()), keys
    for name, record in records.items():
        assert record["defense"] == name and record["paper"] == DEFENSE_METHODS[name].paper
        assert record["after"]["attack_success_rate"] is not None and record["der"] is not None
        assert record["knob"]["name"] == DEFENSE_METHODS[name].knob
        assert record["knob"]["value"] == record["settings"][DEFENSE_METHODS[name].knob]
        assert "output_dir" not in record["settings"] and "hub_token" not in record["settings"]
        if name not in CHECKED:
            assert record["retuning"] is None and record["reinversion"] is None
            continue
        retuning = record["retuning"]  # on by default when the attack is known
        assert retuning["settings"]["num_triggered"] == 5
        reinversion = record["reinversion"]  # on by default: clean data only
        assert reinversion["clips_from"] == "clean subset" and reinversion["clips"] == 8
        assert set(reinversion["suspect"]["gap"]) == {"additive", "spectral"}
        if reinversion["targets"]:
            assert 0 <= reinversion["max_success_after"] <= 1
        assert (
            0 <= retuning["before"]["attack_success_rate"] <= 1
            and 0 <= retuning["after"]["attack_success_rate"] <= 1
        )


def test_training_settings_reach_the_record(defended):
    record = json.loads((defended["ft-sam"] / "defense_metrics.json").read_text())
    settings = record["settings"]
    assert settings["gn_adaptive"] is True and settings["label_smoothing_factor"] == 0.1
    assert settings["max_steps"] == 1 and settings["gradient_accumulation_steps"] == 1
    assert record["optim"]["label_smoothing_factor"] == 0.1 and record["gn"]["gn_alpha"] == 1.0


def test_every_card_names_its_method_with_the_same_sections(defended):
    sections = {}
    for name, out in defended.items():
        card = (out / "README.md").read_text()
        method = DEFENSE_METHODS[name]
        assert f"--defense {name}" in card and method.title in card
        if method.paper_url:
            assert f"({method.paper_url})" in card
        assert "github.com" not in card  # only links that exist
        checked = name in CHECKED
        assert ("Retuning check" in card) is checked and ("Re-inversion check" in card) is checked
        sections[name] = [line for line in card.splitlines() if line.startswith("## ")]
    assert all(s == sections["gn-ft"] for s in sections.values()), sections


def test_unknown_defense_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown defense 'magic'; known: .*gn-ft.*tsbd"):
        defend_recipe.main(["--defense", "magic", "--output_dir", str(tmp_path / "x")])


@pytest.mark.parametrize(
    "argv, owner",
    [
        (["--anp_threshold", "0.2"], "anp"),
        (["--defense", "ft", "--tsbd_neuron_ratio", "0.1"], "tsbd"),
        (["--defense", "clp", "--learning_rate", "0.1"], "learning_rate' is not a setting|is a setting of"),
    ],
)
def test_a_setting_of_another_defense_names_the_defense_it_belongs_to(tmp_path, argv, owner):
    with pytest.raises(ValueError, match=owner):
        defend_recipe.parse_args(["--output_dir", str(tmp_path / "x"), *argv])


def test_a_knob_of_another_defense_is_refused(tmp_path):
    with pytest.raises(ValueError, match="belongs to anp"):
        defend_recipe.parse_args(["--output_dir", str(tmp_path / "x"), "--knob", "anp_threshold",
                                  "--knob_grid", "0.1", "0.2"])  # fmt: skip


def test_a_config_file_key_of_another_defense_is_refused(tmp_path):
    path = tmp_path / "defend.yaml"
    path.write_text("defense: gn-ft\nclp_u: 3\n")
    with pytest.raises(ValueError, match="clp_u is a setting of clp"):
        defend_recipe.parse_args([str(path)])


def test_each_defense_takes_its_own_flags():
    *_, config, output = defend_recipe.parse_args(["--defense", "clp", "--clp_u", "2.5", "--output_dir", "x"])
    assert config.clp_u == 2.5 and output.output_dir == "x"
    *_, config, output = defend_recipe.parse_args(
        ["--defense", "nad", "--nad_teacher_epochs", "3", "--output_dir", "y"]
    )
    assert (
        config.nad_teacher_epochs == 3 and output is None
    )  # a training config carries its own output fields


@pytest.mark.parametrize("model", ["outputs/atack", "./no/such/folder", "/definitely/not/here"])
def test_a_suspect_that_does_not_exist_says_so(tmp_path, model):
    with pytest.raises(SuspectNotFoundError, match="does not exist|neither a local folder"):
        defend_recipe.main(["--model", model, "--output_dir", str(tmp_path / "x"), *RECIPE_DATA])
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # 31 s: make test-slow (kept under 10 min for make test)
def test_benchmark_cell_and_defend_give_the_same_numbers(recipe_suspect, tmp_path):
    from hf_gnft.benchmark import Benchmark, BenchmarkConfig

    data = {"synthetic_train_size": 160, "synthetic_validation_size": 40, "synthetic_test_size": 40}
    suspects = tmp_path / "suspects"
    shutil.copytree(recipe_suspect, suspects / "tiny-wav2vec2-noise_burst")
    config = BenchmarkConfig(
        output_dir=str(tmp_path / "bench"), suspects_dir=str(suspects), models=["tiny-wav2vec2"],
        triggers=["noise_burst"], seeds=[1], data=data, clean_fraction=0.05,
        defenses={"gn-ft": {"grid": [0.05], "settings": {"max_steps": 2, "per_device_train_batch_size": 4}}},
        reference="gn-ft",
    )  # fmt: skip
    row = Benchmark(config).run_cell("tiny-wav2vec2", "noise_burst", "gn-ft", 0.05, 1)
    record = defend_recipe.main(
        ["--model", str(recipe_suspect), "--output_dir", str(tmp_path / "defended"), "--clean_fraction", "0.05",
         "--clean_seed", "1", "--seed", "1", "--learning_rate", "0.05", "--max_steps", "2",
         "--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--relapse_check", "false",
         *[f"--{key}={value}" for key, value in data.items()]]
    )  # fmt: skip
    assert record["clean_rows"] == row["clean_rows"]
    for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy"):
        assert record["after"][key] == row["after"][key], key
    assert record["validation_accuracy"]["after"] == row["validation_accuracy"]["after"]
    assert record["der"] == pytest.approx(row["der"])


def test_retuning_check_can_be_switched_off(recipe_suspect, tmp_path):
    record = defend_recipe.main(
        ["--model", str(recipe_suspect), "--output_dir", str(tmp_path / "x"), "--clean_count", "8", "--max_steps",
         "1", "--retuning_check", "false", *RECIPE_DATA, *DEFEND_FAST]
    )  # fmt: skip
    assert record["retuning"] is None
    assert "Retuning check" not in (tmp_path / "x" / "README.md").read_text()


def test_output_dir_is_required():
    with pytest.raises(ValueError, match="--output_dir"):
        defend_recipe.parse_args(["--defense", "ft"])


def test_a_config_runs_the_defense_it_configures_not_a_parent():
    from hf_gnft import DefenseArguments, DefenseConfig, FTConfig, TSBDConfig
    from hf_gnft.pipeline import check_config

    tsbd = TSBDConfig(output_dir="x", report_to="none")
    assert DefenseArguments(knob_grid=[0.05]).for_config(tsbd).defense == "tsbd"
    assert DefenseArguments(knob_grid=[0.05]).for_config(tsbd).knob_name == "tsbd_neuron_ratio"
    with pytest.raises(ValueError, match="configures the 'tsbd' defense, not 'gn-ft'"):
        check_config(DEFENSE_METHODS["gn-ft"], tsbd)
    with pytest.raises(ValueError, match="plain fine-tuning: run the 'ft' defense"):
        check_config(DEFENSE_METHODS["gn-ft"], DefenseConfig(output_dir="x", report_to="none", gn_alpha=0.0))
    with pytest.raises(ValueError, match="FT is plain fine-tuning"):
        FTConfig(output_dir="x", report_to="none", gn_alpha=0.7)


def test_a_real_search_run_again_reuses_every_finished_candidate(recipe_suspect, tmp_path, monkeypatch):
    import hf_gnft.pipeline as pipeline

    runs = []
    real = pipeline.run_defense

    def counted(*args, **kwargs):
        runs.append(args[3].learning_rate)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "run_defense", counted)
    argv = ["--defense", "ft", "--model", str(recipe_suspect), "--output_dir", str(tmp_path / "searched"),
            "--clean_count", "8", "--max_steps", "1", "--synthetic_train_size", "160", "--synthetic_validation_size",
            "40", "--synthetic_test_size", "40", "--learning_rate_grid", "1e-6", "1e-5", "--keep_candidates", "true",
            "--max_validation_drop", "1", *DEFEND_FAST]  # fmt: skip
    first = defend_recipe.main(argv)
    assert runs == [1e-6, 1e-5]
    again = defend_recipe.main([*argv, "--overwrite_output_dir", "true"])
    assert runs == [1e-6, 1e-5]  # the real records match what the search expects: nothing ran again
    assert again["after"] == first["after"] and again["knob_search"]["chosen"] == 1e-5
    monkeypatch.undo()


@pytest.mark.parametrize("reinversion", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_the_suspects_measurements_are_shared_between_defenses_of_the_same_suspect(
    recipe_suspect, tmp_path, reinversion
):
    """`make demo` measures the suspect once for three defenses: the second run reuses the first's measurements
    (its metrics, its retuning and, with the re-inversion check, its inversion of every class); measurements of
    other data are refused before anything is written."""
    from hf_gnft.data.arguments import CleanDataArguments, DataArguments
    from hf_gnft.defenses import FTConfig
    from hf_gnft.pipeline import SuspectModelArguments, run_defense
    from hf_gnft.retuning import retuning_attack

    data = DataArguments(synthetic_train_size=160, synthetic_validation_size=40, synthetic_test_size=40)
    clean = CleanDataArguments(clean_count=16)

    def run(name, measured=None, **settings):
        config = FTConfig(output_dir=str(tmp_path / name), max_steps=1, per_device_train_batch_size=8,
                          disable_tqdm=True, **settings)  # fmt: skip
        return run_defense(data, clean, SuspectModelArguments(model=str(recipe_suspect)), config, relapse=None,
                           reinversion=reinversion, suspect_measurements=measured)  # fmt: skip

    first = run("first")
    measured = first.suspect_measurements
    assert measured.retuned_before is not None and (measured.detection is not None) == reinversion
    with (
        patch("hf_gnft.pipeline.invert_classes", side_effect=AssertionError("measured again")),
        patch("hf_gnft.pipeline.evaluate_backdoor", wraps=evaluate_backdoor) as evaluated,
        patch("hf_gnft.pipeline.retuning_attack", wraps=retuning_attack) as retuned,
    ):
        second = run("second", measured, learning_rate=0.05)
    assert retuned.call_count == 1  # the defended model's; the suspect's is reused
    assert evaluated.call_count == 2  # the defended model on the test and validation splits, not the suspect
    assert second.record["before"] == first.record["before"]
    assert second.record["retuning"]["before"] == first.record["retuning"]["before"]
    if reinversion:
        assert second.record["reinversion"]["suspect"] == first.record["reinversion"]["suspect"]
    other = CleanDataArguments(clean_count=16, clean_seed=7)
    with pytest.raises(ValueError, match="another suspect, data or retuning setting"):
        run_defense(data, other, SuspectModelArguments(model=str(recipe_suspect)),
                    FTConfig(output_dir=str(tmp_path / "other"), max_steps=1, disable_tqdm=True), relapse=None,
                    suspect_measurements=measured)  # fmt: skip
    assert not (tmp_path / "other").exists()
