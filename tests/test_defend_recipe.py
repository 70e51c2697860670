from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from testing_utils import DEFEND_FAST as FAST
from testing_utils import RECIPE_DATA as DATA
from testing_utils import minimal_defense_record

from hf_gnft.data.arguments import CleanDataArguments, CleanDataError
from hf_gnft.pipeline import choose_learning_rate, validation_drop
from hf_gnft.scripts import defend as defend_recipe


@pytest.fixture
def suspect(recipe_suspect) -> Path:
    return recipe_suspect


def test_defend_writes_cleaned_model_and_before_after_metrics(tmp_path, suspect):
    out = tmp_path / "cleaned"
    record = defend_recipe.main(
        [
            "--model",
            str(suspect),
            "--output_dir",
            str(out),
            "--clean_count",
            "16",
            "--max_steps",
            "3",
            "--logging_steps",
            "1",
            *DATA,
            *FAST,
        ]
    )
    files = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "defense_metrics.json",
        "attack_spec.json",
    } <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    saved = json.loads((out / "defense_metrics.json").read_text())
    for when in ("before", "after"):
        assert 0 <= saved[when]["clean_accuracy"] <= 1 and 0 <= saved[when]["attack_success_rate"] <= 1
    assert saved["defense"] == "gn-ft" and saved["clean_rows"] == 16 and 0 <= saved["der"] <= 1
    assert any("gn/grad_norm" in row for row in saved["log_history"])
    table = (out / "defense_table.md").read_text()
    assert "| before |" in table and "| after |" in table and "DER =" in table
    assert record["gn"]["gn_alpha"] == 0.7 and record["optim"]["optim"] == "sgd"


def test_before_metrics_match_the_attack_recipe(tmp_path, suspect):
    record = defend_recipe.main(
        [
            "--model",
            str(suspect),
            "--output_dir",
            str(tmp_path / "c"),
            "--clean_count",
            "8",
            "--max_steps",
            "1",
            *DATA,
            *FAST,
        ]
    )
    attack = json.loads((suspect / "metrics.json").read_text())
    for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy"):
        assert record["before"][key] == pytest.approx(attack[key])


def test_defense_ft_is_plain_fine_tuning_with_the_same_budget(tmp_path, suspect):
    record = defend_recipe.main(
        ["--defense", "ft", "--model", str(suspect), "--output_dir", str(tmp_path / "ft"), "--clean_count", "16",
         "--max_steps", "2", *DATA, *FAST]
    )  # fmt: skip
    assert record["defense"] == "ft" and record["settings"]["gn_alpha"] == 0.0
    assert record["log_history"] and all("gn/grad_norm" not in row for row in record["log_history"])


def test_pickle_only_checkpoint_is_refused(tmp_path, suspect):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (pickled / name).write_text((suspect / name).read_text())
    from safetensors.torch import load_file

    torch.save(load_file(str(suspect / "model.safetensors")), pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match="(?s)only pickled weights.*--allow_pickle_weights") as refused:
        defend_recipe.main(["--model", str(pickled), "--output_dir", str(tmp_path / "never"), *DATA, *FAST])
    assert "save_pretrained" in str(refused.value)  # says how to convert it
    assert not (tmp_path / "never").exists()
    record = defend_recipe.main(["--model", str(pickled), "--output_dir", str(tmp_path / "opted-in"), "--clean_count",
                                 "8", "--max_steps", "1", "--allow_pickle_weights", "true", *DATA, *FAST])  # fmt: skip
    assert record["suspect"]["weights_format"] == "pickle"
    assert (tmp_path / "opted-in" / "model.safetensors").is_file()  # the cleaned model is safetensors


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--clean_fraction", "0.001"], "clean set is empty"),
        (["--clean_count", "0"], "clean set is empty"),
        (["--clean_fraction", "1.5"], r"\(0, 1\]"),
        (["--eval_split", "holdout"], "no split 'holdout'"),
        (["--gn_radius", "-1"], "gn_radius"),
    ],
)
def test_bad_defense_input_is_named_and_writes_nothing(tmp_path, suspect, extra, message):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=message):
        defend_recipe.main(["--model", str(suspect), "--output_dir", str(out), *DATA, *FAST, *extra])
    assert not out.exists() and not any(p.name.startswith(".never") for p in tmp_path.iterdir())


def test_clean_data_with_another_label_space_is_refused(tmp_path, suspect):
    with pytest.raises(CleanDataError, match="classes"):
        defend_recipe.main(
            [
                "--model",
                str(suspect),
                "--output_dir",
                str(tmp_path / "x"),
                "--include_silence",
                "true",
                *DATA,
                *FAST,
            ]
        )


def test_clean_subset_is_seeded_and_sized(tiny_corpus):
    first = CleanDataArguments(clean_fraction=0.1, clean_seed=1).select(tiny_corpus["train"])
    again = CleanDataArguments(clean_fraction=0.1, clean_seed=1).select(tiny_corpus["train"])
    other = CleanDataArguments(clean_fraction=0.1, clean_seed=2).select(tiny_corpus["train"])
    assert len(first) == 12 and first["clip_id"] == again["clip_id"] != other["clip_id"]


def test_choose_learning_rate_takes_the_largest_within_the_mean_validation_drop():
    drops = {0.01: [0.0, 0.005], 0.05: [0.01, 0.03], 0.1: [0.05, 0.0], 0.2: [0.2]}
    assert choose_learning_rate(drops) == 0.05  # 0.1 averages 2.5 points
    assert choose_learning_rate(drops, max_drop=0.025) == 0.1
    assert choose_learning_rate(drops, max_drop=0.001) is None
    assert choose_learning_rate({0.05: [0.0], 0.01: [0.0, 0.0, 0.0]}, min_runs=3) == 0.01


def test_validation_drop_needs_a_validation_split():
    assert validation_drop({"validation_accuracy": {"before": 0.95, "after": 0.9}}) == pytest.approx(0.05)
    with pytest.raises(CleanDataError, match="validation split"):
        validation_drop({"validation_accuracy": {"before": None, "after": None}})


DATA_WITH_VALIDATION = [
    "--synthetic_train_size", "160", "--synthetic_validation_size", "40", "--synthetic_test_size", "40",
]  # fmt: skip


def test_learning_rate_search_keeps_the_largest_lr_within_the_validation_drop(tmp_path, suspect):
    out = tmp_path / "searched"
    args = ["--model", str(suspect), "--output_dir", str(out), "--clean_count", "16", "--max_steps", "2",
            *DATA_WITH_VALIDATION, *FAST, "--learning_rate_grid", "1e-6", "50", "--max_validation_drop", "0.02"]  # fmt: skip
    try:
        record = defend_recipe.main(args)
    except CleanDataError as err:  # lr 50 wrecks the model, and lr 1e-6 may still move a tied prediction
        pytest.fail(f"lr 1e-6 should qualify: {err}")
    search = json.loads((out / "knob_search.json").read_text())
    assert search["knob"] == "learning_rate" and search["grid"] == [1e-6, 50.0]
    assert search["chosen"] == record["optim"]["learning_rate"]
    drops = search["validation_drop"]
    if drops["50"] <= 0.02:
        assert search["chosen"] == 50.0
    else:
        assert search["chosen"] == 1e-6
    saved = json.loads((out / "defense_metrics.json").read_text())
    assert saved["optim"]["learning_rate"] == search["chosen"]
    assert not (tmp_path / "searched.candidates").exists()  # removed once the choice is published


def _fake_checkpoint(folder: Path, weights: bytes) -> Path:
    """A folder `inspect_checkpoint` accepts (config + safetensors bytes): the suspect's identity is its hash."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    (folder / "model.safetensors").write_bytes(weights)
    return folder


@pytest.fixture
def fake_defense(monkeypatch, tmp_path):
    """`run_defense` replaced by one that writes a marker file and a record whose validation drop is set per lr;
    the suspect is a fake checkpoint folder (only its weights' hash matters to the search)."""
    import hf_gnft.pipeline as pipeline

    class Drops(dict):
        """lr -> validation drop; `runs` lists the learning rates that actually ran."""

        def __init__(self) -> None:
            super().__init__()
            self.runs: list[float] = []
            self.suspect = _fake_checkpoint(tmp_path / "suspect-a", b"weights of suspect a")

    drops = Drops()

    def run(data_args, clean_args, model_args, config, defense=None, output=None, **_):
        drops.runs.append(config.learning_rate)
        out = Path(output.output_dir)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        (out / "which.txt").write_text(str(config.learning_rate))
        dataset = data_args.load(data_args.sampling_rate)
        record = minimal_defense_record(
            validation_drop=drops[config.learning_rate],
            learning_rate=config.learning_rate,
            defense=defense,
            settings=pipeline.config_settings(config),
            suspect=pipeline.inspect_checkpoint(model_args.model).to_dict(),
            clean_data=dataclasses.asdict(clean_args),
            data_args=pipeline.shareable_data_args(data_args),
            data_fingerprint=pipeline.data_fingerprint(
                clean_args.select(dataset["train"]), dataset["test"], dataset["validation"]
            ),
        )
        (out / "defense_metrics.json").write_text(json.dumps(record))
        return pipeline.DefenseResult(str(out), None, None, record)

    monkeypatch.setattr(pipeline, "run_defense", run)
    return drops


def _search(tmp_path, grid, max_drop=0.02, keep=False, overwrite=False, suspect=None):
    from hf_gnft.data.arguments import DataArguments
    from hf_gnft.defenses.gnft_config import DefenseConfig
    from hf_gnft.pipeline import DefenseArguments, SuspectModelArguments, search_knob

    return search_knob(
        DataArguments(synthetic_train_size=160, synthetic_validation_size=40, synthetic_test_size=40),
        CleanDataArguments(),
        SuspectModelArguments(model=str(suspect or tmp_path / "suspect-a")),
        DefenseConfig(output_dir=str(tmp_path / "cleaned"), report_to="none", overwrite_output_dir=overwrite),
        DefenseArguments(
            learning_rate_grid=grid, max_validation_drop=max_drop, keep_candidates=keep, relapse_check=False
        ),
    )


def test_learning_rate_search_publishes_the_chosen_candidate(tmp_path, fake_defense):
    fake_defense.update({0.01: 0.0, 0.1: 0.015, 1.0: 0.3})
    result = _search(tmp_path, [1.0, 0.1, 0.01])
    out = tmp_path / "cleaned"
    assert result.output_dir == str(out) and (out / "which.txt").read_text() == "0.1"
    search = json.loads((out / "knob_search.json").read_text())
    assert search["chosen"] == 0.1 and search["grid"] == [0.01, 0.1, 1.0]
    assert search["validation_drop"] == {"0.01": 0.0, "0.1": pytest.approx(0.015), "1": pytest.approx(0.3)}
    assert not (tmp_path / "cleaned.candidates").exists()


def test_interrupted_search_reuses_only_candidates_that_finished_with_the_same_settings(
    tmp_path, fake_defense
):
    fake_defense.update({0.05: 0.0, 0.1: 0.01, 0.2: 0.0})
    _search(tmp_path, [0.05, 0.1, 0.2], keep=True)
    assert fake_defense.runs == [0.05, 0.1, 0.2]
    candidates = tmp_path / "cleaned.candidates"
    (candidates / "learning_rate-0.2" / "defense_metrics.json").unlink()  # interrupted before it finished
    stale = candidates / "learning_rate-0.05" / "defense_metrics.json"
    record = json.loads(stale.read_text())
    record["settings"]["gn_radius"] = 0.5  # finished, but with another setting
    stale.write_text(json.dumps(record))
    fake_defense.runs.clear()
    result = _search(tmp_path, [0.05, 0.1, 0.2], overwrite=True)
    assert fake_defense.runs == [0.05, 0.2]  # 0.1 reused
    assert result.record["optim"]["learning_rate"] == 0.2


def test_search_rerun_with_another_suspect_in_the_same_folder_reuses_nothing(tmp_path, fake_defense):
    fake_defense.update({0.05: 0.0, 0.1: 0.0})
    _search(tmp_path, [0.05, 0.1], keep=True)
    other = _fake_checkpoint(tmp_path / "suspect-b", b"weights of another suspect")
    fake_defense.runs.clear()
    _search(tmp_path, [0.05, 0.1], keep=True, overwrite=True, suspect=other)
    assert fake_defense.runs == [0.05, 0.1]
    record = json.loads((tmp_path / "cleaned" / "defense_metrics.json").read_text())
    assert record["suspect"]["weights_sha256"] == pipeline_sha(other)


def pipeline_sha(folder: Path) -> str:
    from hf_gnft.models import inspect_checkpoint

    return inspect_checkpoint(str(folder)).weights_sha256


def test_learning_rate_search_can_keep_the_candidates(tmp_path, fake_defense):
    fake_defense.update({0.01: 0.0, 0.1: 0.0})
    _search(tmp_path, [0.01, 0.1], keep=True)
    kept = tmp_path / "cleaned.candidates"
    assert {p.name for p in kept.iterdir()} == {"learning_rate-0.01", "learning_rate-0.1", "knob_search.json"}


def test_learning_rate_search_with_no_qualifying_lr_publishes_nothing_and_keeps_the_candidates(
    tmp_path, fake_defense
):
    fake_defense.update({0.05: 0.03, 0.1: 0.2})
    (tmp_path / "cleaned").mkdir()
    (tmp_path / "cleaned" / "earlier.txt").write_text("an earlier result")
    with pytest.raises(CleanDataError, match="no learning_rate in \\[0.05, 0.1\\] kept"):
        _search(tmp_path, [0.05, 0.1], overwrite=True)
    assert (tmp_path / "cleaned" / "earlier.txt").read_text() == "an earlier result"  # untouched
    candidates = tmp_path / "cleaned.candidates"
    assert {p.name for p in candidates.iterdir()} == {
        "learning_rate-0.05",
        "learning_rate-0.1",
        "knob_search.json",
    }
    assert json.loads((candidates / "knob_search.json").read_text())["chosen"] is None


def test_learning_rate_search_needs_a_validation_split(tmp_path, suspect):
    with pytest.raises(CleanDataError, match="validation split"):
        defend_recipe.main(["--model", str(suspect), "--output_dir", str(tmp_path / "x"), "--validation_split",
                            "", "--learning_rate_grid", "0.1", *DATA, *FAST])  # fmt: skip


def test_learning_rate_grid_must_be_positive():
    from hf_gnft.pipeline import DefenseArguments

    with pytest.raises(ValueError, match=r"learning_rate_grid must be a finite number > 0"):
        DefenseArguments(learning_rate_grid=[0.1, -1.0])


def test_shipped_defend_config_parses_with_and_without_overrides():
    config = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "defend-gnft.yaml"
    _, clean, model, search, args, _ = defend_recipe.parse_args([str(config)])
    assert (args.gn_alpha, args.gn_radius, args.gn_norm, args.optim) == (0.7, 0.05, "global", "sgd")
    assert (search.knob_name, search.knob_grid) == (
        "learning_rate",
        [0.05, 0.1],
    ) and clean.clean_fraction == 0.05
    _, _, model, search, args, _ = defend_recipe.parse_args(
        ["--config", str(config), "--gn_alpha", "0", "--model", "elsewhere", "--learning_rate_grid", "0.2"]
    )
    assert args.gn_alpha == 0.0 and model.model == "elsewhere" and search.knob_grid == [0.2]
    assert args.num_train_epochs == 20 and args.weight_decay == 5e-5  # the rest still from the file


def test_config_file_with_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("gn_alfa: 0.5\n")
    with pytest.raises(ValueError, match="unknown arguments: gn_alfa"):
        defend_recipe.parse_args(["--config", str(path)])
    with pytest.raises(ValueError, match="gn_alfa"):
        defend_recipe.parse_args([str(path)])


def test_defend_runs_from_a_config_file_with_overrides(tmp_path, suspect):
    path = tmp_path / "defend.yaml"
    path.write_text(
        f"model: {suspect}\noutput_dir: {tmp_path / 'from-yaml'}\nclean_count: 8\nmax_steps: 1\n"
        "synthetic_train_size: 160\nsynthetic_validation_size: 0\nsynthetic_test_size: 40\n"
        "per_device_train_batch_size: 8\ndisable_tqdm: true\ngn_radius: 0.1\n"
        "reinversion_check: false\nrelapse_check: false\n"
    )
    record = defend_recipe.main(["--config", str(path), "--gn_radius", "0.2"])
    assert record["gn"]["gn_radius"] == 0.2 and record["clean_rows"] == 8
    assert (tmp_path / "from-yaml" / "model.safetensors").is_file()


def test_choose_strongest_follows_the_direction_of_the_knob():
    from hf_gnft.pipeline import choose_strongest

    drops = {2.0: [0.05], 3.0: [0.01], 4.0: [0.0]}  # CLP: a smaller u prunes more
    assert choose_strongest(drops, larger_is_stronger=False) == 3.0
    assert choose_strongest(drops, larger_is_stronger=True) == 4.0


def test_a_mean_drop_of_exactly_the_limit_qualifies_despite_float_rounding():
    from hf_gnft.pipeline import choose_strongest

    drops = {
        0.02: [0.018000000000000016, 0.02400000000000002, 0.018000000000000016]
    }  # mean 0.020000000000000018
    assert choose_strongest(drops, max_drop=0.02) == 0.02
    assert choose_strongest({0.02: [0.0201]}, max_drop=0.02) is None


def test_the_relapse_check_is_recorded_and_stated_on_the_card(tmp_path, suspect, monkeypatch):
    """`--relapse_check` (on by default): the defended model fine-tuned again on the clean subset alone, at the FT
    defense's learning rate and 5x it, with CA / ASR and a re-inversion after each; the card states them, and that
    the retuning check's reference is unknown (no model trained without poisoning was given). The relapse fine-tunes
    run 2 epochs instead of the FT defense's 20, to keep the test in seconds (the epochs change no code path)."""
    import functools

    from hf_gnft import pipeline
    from hf_gnft.lasting import RelapseConfig

    monkeypatch.setattr(pipeline, "RelapseConfig", functools.partial(RelapseConfig, num_train_epochs=2.0))
    out = tmp_path / "cleaned"
    fast = [arg for arg in FAST if arg not in ("--relapse_check", "--reinversion_check", "false")]
    record = defend_recipe.main(["--defense", "ft", "--model", str(suspect), "--output_dir", str(out), "--clean_count",
                                 "16", "--max_steps", "2", *DATA, *fast])  # fmt: skip
    runs = record["relapse"]["runs"]
    assert [run["learning_rate"] for run in runs] == [0.01, 0.05]
    for run in runs:
        assert 0 <= run["clean_accuracy"] <= 1 and 0 <= run["attack_success_rate"] <= 1
        assert run["reinversion"] is None or 0 <= run["reinversion"] <= 1
    assert record["relapse"]["settings"]["seed"] == record["clean_data"]["clean_seed"]
    assert record["relapse"]["settings"]["num_train_epochs"] == 2.0
    card = (out / "README.md").read_text()
    assert "**Relapse check**" in card and "at learning rate 0.05" in card
    assert f"ASR {round(100 * runs[1]['attack_success_rate'], 2)}%" in card
    assert "reference (the same retuning of a model trained without poisoning) is unknown" in card
    saved = json.loads((out / "defense_metrics.json").read_text())
    assert saved["relapse"] == json.loads(json.dumps(record["relapse"]))
