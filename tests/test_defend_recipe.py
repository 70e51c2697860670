from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import attack as attack_recipe  # noqa: E402
import defend as defend_recipe  # noqa: E402

from hf_gnft.defense import CleanDataArguments, CleanDataError  # noqa: E402

DATA = ["--synthetic_train_size", "160", "--synthetic_validation_size", "0", "--synthetic_test_size", "40"]
FAST = ["--disable_tqdm", "true", "--per_device_train_batch_size", "8"]


@pytest.fixture(scope="module")
def suspect(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("suspect") / "backdoored"
    attack_recipe.main(["--output_dir", str(out), *DATA, *FAST, "--num_train_epochs", "1"])
    return out


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


def test_alpha_zero_is_plain_fine_tuning_with_the_same_budget(tmp_path, suspect):
    record = defend_recipe.main(
        ["--model", str(suspect), "--output_dir", str(tmp_path / "ft"), "--gn_alpha", "0", "--clean_count", "16",
         "--max_steps", "2", *DATA, *FAST]
    )  # fmt: skip
    assert record["defense"] == "ft"
    assert all("gn/grad_norm" not in row for row in record["log_history"])


def test_pickle_only_checkpoint_is_refused(tmp_path, suspect):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (pickled / name).write_text((suspect / name).read_text())
    from safetensors.torch import load_file

    torch.save(load_file(str(suspect / "model.safetensors")), pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match="no safetensors"):
        defend_recipe.main(["--model", str(pickled), "--output_dir", str(tmp_path / "never"), *DATA, *FAST])
    assert not (tmp_path / "never").exists()


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
