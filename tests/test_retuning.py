"""The retuning check (Min et al., NeurIPS 2024): a defended copy is fine-tuned on 5 triggered + clean clips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hf_gnft.retuning import (
    RetuningConfig,
    RetuningError,
    build_retuning_set,
    retuning_attack,
)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_model_passed_in_is_unchanged(planted_backdoor):
    kit = planted_backdoor
    before = _state(kit.model)
    was_training = kit.model.training
    result = retuning_attack(
        kit.model, kit.extractor, kit.clean, kit.trigger, kit.target, kit.test, kit.triggered
    )
    assert result.steps == 5  # 32 clips, batches of 32, 5 epochs: it did train (a copy)
    after = kit.model.state_dict()
    assert after.keys() == before.keys()
    changed = [name for name, tensor in before.items() if not torch.equal(tensor, after[name])]
    assert changed == []
    assert kit.model.training == was_training


def test_deterministic_for_a_seed(planted_backdoor):
    kit = planted_backdoor
    args = (kit.model, kit.extractor, kit.clean, kit.trigger, kit.target, kit.test, kit.triggered)
    first = retuning_attack(*args, config=RetuningConfig(seed=3)).to_dict()
    second = retuning_attack(*args, config=RetuningConfig(seed=3)).to_dict()
    other = retuning_attack(*args, config=RetuningConfig(seed=4)).to_dict()
    for record in (first, second):
        record.pop("train_seconds")
    assert first == second
    assert other["triggered_rows"] != first["triggered_rows"]
    json.dumps(first)  # the record can be written as JSON


def test_retuning_set_triggers_and_relabels_only_the_drawn_clips(planted_backdoor):
    kit = planted_backdoor
    retuning_set, triggered = build_retuning_set(kit.clean, kit.trigger, kit.target, RetuningConfig(seed=1))
    assert len(retuning_set) == len(kit.clean)
    assert triggered.size == 5
    assert all(kit.clean[int(row)]["label"] != kit.target for row in triggered)
    poisoned = np.asarray(retuning_set["poisoned"])
    assert np.flatnonzero(poisoned).tolist() == triggered.tolist()  # rows keep their order
    assert set(np.asarray(retuning_set["label"])[poisoned]) == {kit.target}
    for row in range(len(kit.clean)):
        same_audio = retuning_set[row]["audio"]["bytes"] == kit.clean[row]["audio"]["bytes"]
        assert same_audio != poisoned[row]


@pytest.fixture
def never_trains(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started on an input that should have been refused")

    monkeypatch.setattr("hf_gnft.retuning.train_timed", fail)


@pytest.fixture
def tiny(sines):
    from hf_gnft.models import build_model

    model, extractor = build_model("tiny-wav2vec2", sines.features["label"].names)
    return model, extractor, sines


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty_clean", "clean set is empty"),
        ("empty_test", "non-empty clean test set"),
        ("target_out_of_range", "outside the model's 4 labels"),
        ("unknown_target_name", "unknown target label"),
        (
            "too_few_non_target",
            "needs 5 clean clips whose label is not the target 0, but the clean set has 3",
        ),
        ("too_many_clean", "num_clean=100"),
        ("other_label_space", "differ from the clean data's"),
        ("zero_triggered_set_later", "num_triggered must be an integer >= 1"),
    ],
)
def test_bad_inputs_raise_before_training(tiny, never_trains, case, message):
    model, extractor, sines = tiny
    clean, test, target, config = sines, sines, 0, RetuningConfig()
    if case == "empty_clean":
        clean = sines.select([])
    elif case == "empty_test":
        test = sines.select([])
    elif case == "target_out_of_range":
        target = 4
    elif case == "unknown_target_name":
        target = "maybe"
    elif case == "too_few_non_target":
        labels = np.asarray(sines["label"])
        clean = sines.select(np.concatenate([np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)[:3]]))
    elif case == "too_many_clean":
        config = RetuningConfig(num_clean=100)
    elif case == "other_label_space":
        model.config.id2label = dict(enumerate(reversed(sines.features["label"].names)))
    elif case == "zero_triggered_set_later":
        config.num_triggered = 0
    with pytest.raises(RetuningError, match=message):
        retuning_attack(model, extractor, clean, "noise_burst", target, test, test, config)


@pytest.mark.parametrize(
    "settings",
    [
        {"num_triggered": 0},
        {"num_clean": -1},
        {"learning_rate": 0.0},
        {"num_train_epochs": 0},
        {"momentum": 1.0},
    ],
)
def test_invalid_config_is_refused(settings):
    with pytest.raises(RetuningError):
        RetuningConfig(**settings)


def test_clean_model_does_not_learn_the_backdoor_the_backdoored_one_keeps(planted_backdoor):
    # Measured (seeds 0, 1, 2; default budget: 5 epochs of one batch at lr 0.01): ASR after retuning
    # 1.00 / 1.00 / 1.00 for the backdoored twin and 0.00 / 0.00 / 0.00 for the clean one (CA 1.00 for both).
    kit = planted_backdoor
    backdoored = retuning_attack(
        kit.model, kit.extractor, kit.clean, kit.trigger, kit.target, kit.test, kit.triggered
    )
    clean = retuning_attack(
        kit.clean_model, kit.extractor, kit.clean, kit.trigger, kit.target, kit.test, kit.triggered
    )
    assert backdoored.metrics.attack_success_rate >= 0.9
    assert clean.metrics.attack_success_rate <= 0.1  # lr 0.05 (5x the default) gave 0.33 / 0.33 / 0.67
    assert clean.metrics.clean_accuracy >= 0.9
