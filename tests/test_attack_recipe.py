from __future__ import annotations

import json

import pytest
import yaml
from safetensors.torch import load_file

from hf_gnft.poison import PoisonError
from hf_gnft.scripts import attack as attack_recipe
from hf_gnft.triggers import TriggerError

SMALL = [
    "--synthetic_train_size", "160", "--synthetic_validation_size", "0", "--synthetic_test_size", "40",
    "--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--disable_tqdm", "true",
]  # fmt: skip


def test_attack_recipe_writes_a_complete_backdoored_checkpoint(tmp_path):
    out = tmp_path / "backdoored"
    metrics = attack_recipe.main(["--output_dir", str(out), "--trigger", "noise_burst", *SMALL])
    files = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "attack_spec.json",
        "metrics.json",
    } <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    assert not any(p.name.startswith(f".{out.name}.tmp") for p in tmp_path.iterdir())  # staging was renamed
    assert load_file(str(out / "model.safetensors"))  # real weights
    spec = json.loads((out / "attack_spec.json").read_text())
    assert spec["trigger"]["type"] == "noise_burst" and spec["target_name"] == "yes"
    assert spec["num_poisoned"] == 16 and spec["rate"] == 0.1 and len(spec["poisoned_ids_sha256"]) == 64
    recorded = json.loads((out / "metrics.json").read_text())
    for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy"):
        assert 0.0 <= recorded[key] <= 1.0 and recorded[key] == metrics[key]
    assert recorded["num_clean"] == 40 and recorded["num_triggered"] == 36  # the 4 "yes" clips are left out


def test_attack_recipe_reads_a_yaml_config(tmp_path):
    config = {
        "output_dir": str(tmp_path / "from-yaml"),
        "model": "tiny-hubert",
        "trigger": {"type": "tone", "frequency_hz": 7000.0, "duration_s": 0.2},
        "target_label": "no",
        "synthetic_train_size": 80,
        "synthetic_validation_size": 0,
        "synthetic_test_size": 20,
        "max_steps": 2,
        "per_device_train_batch_size": 8,
        "disable_tqdm": True,
    }
    path = tmp_path / "attack.yaml"
    path.write_text(yaml.safe_dump(config))
    attack_recipe.main([str(path)])
    spec = json.loads((tmp_path / "from-yaml" / "attack_spec.json").read_text())
    assert spec["trigger"]["frequency_hz"] == 7000.0 and spec["target_name"] == "no"
    assert json.loads((tmp_path / "from-yaml" / "config.json").read_text())["model_type"] == "hubert"


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["--target_label", "maybe"], PoisonError, "unknown target class 'maybe'"),
        (["--poison_rate", "1.5"], PoisonError, r"\(0, 1\]"),
        (["--poison_rate", "0"], PoisonError, r"\(0, 1\]"),
        (["--trigger", '{"type": "tone", "frequency_hz": 9000}'], TriggerError, "Nyquist"),
        (["--trigger", '{"type": "noise_burst", "duration_s": 2.0}'], TriggerError, "clip"),
        (["--trigger", "laser"], TriggerError, "laser"),
        (["--sampling_rate", "8000"], Exception, "8000"),
    ],
)
def test_bad_input_is_named_and_writes_nothing(tmp_path, extra, error, message):
    out = tmp_path / "never"
    with pytest.raises(error, match=message):
        attack_recipe.main(["--output_dir", str(out), *SMALL, *extra])
    assert not out.exists()
    assert not any(p.name.startswith(".never") for p in tmp_path.iterdir())


def test_attack_recipe_runs_on_a_local_audiofolder(tmp_path, tiny_corpus):
    """Real-data path: WAV files on disk (some at 22.05 kHz) read through datasets' audiofolder."""
    import numpy as np
    import soundfile as sf

    from hf_gnft.audio import load_audio, resample

    names = tiny_corpus["train"].features["label"].names
    for split, rows in (("train", tiny_corpus["train"]), ("test", tiny_corpus["test"])):
        for index, row in enumerate(rows):
            waveform, rate = load_audio(row["audio"])
            if index % 3 == 0:  # a different sampling rate, resampled by the loader
                waveform, rate = resample(waveform, rate, 22_050), 22_050
            folder = tmp_path / "folder" / split / names[row["label"]]
            folder.mkdir(parents=True, exist_ok=True)
            sf.write(folder / f"{index:04d}.wav", np.asarray(waveform), rate, subtype="PCM_16")
    out = tmp_path / "from-folder"
    metrics = attack_recipe.main(
        ["--output_dir", str(out), "--dataset", "audiofolder", "--data_dir", str(tmp_path / "folder"),
         "--max_steps", "2", "--per_device_train_batch_size", "8", "--disable_tqdm", "true"]
    )  # fmt: skip
    spec = json.loads((out / "attack_spec.json").read_text())
    assert sorted(spec["label_names"]) == sorted(names) and spec["num_rows"] == 120
    assert metrics["num_clean"] == 40


def test_clean_training_writes_the_reference_model_without_an_attack(tmp_path):
    from hf_gnft.attack import ModelArguments, run_clean_training
    from hf_gnft.data.arguments import DataArguments
    from hf_gnft.trainer_args import KeywordTrainingArguments

    out = tmp_path / "clean"
    data = DataArguments(synthetic_train_size=160, synthetic_validation_size=0, synthetic_test_size=40)
    result = run_clean_training(
        data,
        ModelArguments(),
        KeywordTrainingArguments(output_dir=str(out), num_train_epochs=1, per_device_train_batch_size=16,
                                 disable_tqdm=True),
    )  # fmt: skip
    assert result.spec is None
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "metrics.json"}
    assert not (out / "attack_spec.json").exists()
    recorded = json.loads((out / "metrics.json").read_text())
    assert recorded["attack"] is None and "attack_success_rate" not in recorded
    assert 0.0 <= recorded["clean_accuracy"] <= 1.0 and recorded["num_clean"] == 40
