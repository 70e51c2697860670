from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import Value, load_from_disk
from testing_utils import sine_dataset

from hf_gnft.audio import load_audio
from hf_gnft.poison import (
    AttackSpec,
    PoisonError,
    make_triggered_eval_set,
    poison_dataset,
    select_poison_indices,
)
from hf_gnft.triggers import NoiseBurst, Tone, TriggerError

TRIGGER = NoiseBurst(duration_s=0.1, position=0.05, level_db=-20.0, seed=1)


def test_dirty_label_poisons_exact_count_of_non_target_rows(sines):
    poisoned, spec = poison_dataset(sines, TRIGGER, rate=0.25, target_label="yes", seed=0)
    flags = np.asarray(poisoned["poisoned"])
    assert flags.sum() == 10 == spec.num_poisoned  # round(0.25 * 40)
    original = np.asarray(poisoned["original_label"])
    labels = np.asarray(poisoned["label"])
    assert (original[flags] != 0).all()  # drawn from rows not already of the target class
    assert (labels[flags] == 0).all()  # relabelled to the target
    assert (labels[~flags] == original[~flags]).all()


def test_untouched_rows_are_bit_identical_and_poisoned_rows_carry_the_trigger(sines):
    poisoned, _ = poison_dataset(sines, TRIGGER, rate=0.25, target_label="yes", seed=0)
    for before, after, flag in zip(sines["audio"], poisoned["audio"], poisoned["poisoned"], strict=True):
        if not flag:
            assert after["bytes"] == before["bytes"]
            continue
        clean, rate = load_audio(before)
        dirty, _ = load_audio(after)
        np.testing.assert_array_equal(dirty, TRIGGER.apply(clean, rate))
        changed = np.flatnonzero(dirty != clean)
        assert changed.min() >= int(0.05 * rate) and changed.max() < int(0.15 * rate)


def test_clean_label_poisons_only_target_rows_and_keeps_labels(sines):
    poisoned, spec = poison_dataset(sines, TRIGGER, rate=0.5, target_label="no", seed=0, mode="clean_label")
    flags = np.asarray(poisoned["poisoned"])
    assert flags.sum() == 5 == spec.num_poisoned  # half of the 10 "no" rows
    assert (np.asarray(poisoned["label"])[flags] == 1).all()
    assert poisoned["label"] == sines["label"]


def test_same_arguments_same_result_on_one_or_two_processes(sines):
    one, spec_one = poison_dataset(sines, TRIGGER, rate=0.3, target_label=0, seed=5)
    two, spec_two = poison_dataset(sines, TRIGGER, rate=0.3, target_label=0, seed=5, num_proc=2)
    assert spec_one == spec_two
    assert [a["bytes"] for a in one["audio"]] == [a["bytes"] for a in two["audio"]]
    assert one["label"] == two["label"] and one["poisoned"] == two["poisoned"]


def test_seed_changes_the_selection(sines):
    _, first = poison_dataset(sines, TRIGGER, rate=0.3, target_label=0, seed=1)
    _, second = poison_dataset(sines, TRIGGER, rate=0.3, target_label=0, seed=2)
    assert first.poisoned_ids_sha256 != second.poisoned_ids_sha256


def test_cache_fingerprint_follows_trigger_parameters(sines):
    first, _ = poison_dataset(sines, TRIGGER, rate=0.25, target_label=0)
    again, _ = poison_dataset(
        sines, NoiseBurst(duration_s=0.1, position=0.05, level_db=-20.0, seed=1), 0.25, 0
    )
    louder, _ = poison_dataset(
        sines, NoiseBurst(duration_s=0.1, position=0.05, level_db=-10.0, seed=1), 0.25, 0
    )
    assert first._fingerprint == again._fingerprint
    assert first._fingerprint != louder._fingerprint


def test_triggered_eval_set_drops_target_rows_and_keeps_true_labels(sines):
    triggered = make_triggered_eval_set(sines, TRIGGER, "yes")
    assert len(triggered) == 30
    assert 0 not in triggered["label"]
    assert triggered["label"] == triggered["original_label"]
    assert all(triggered["poisoned"])
    clean_rows = sines.filter(lambda row: row["label"] != 0)
    for before, after in zip(clean_rows["audio"], triggered["audio"], strict=True):
        assert before["bytes"] != after["bytes"]


def test_attack_spec_round_trips_through_json(sines, tmp_path):
    _, spec = poison_dataset(sines, Tone(frequency_hz=3000.0, duration_s=0.2), rate=0.1, target_label="up")
    path = tmp_path / "attack_spec.json"
    spec.to_json(str(path))
    loaded = AttackSpec.from_json(str(path))
    assert loaded == spec
    assert loaded.build_trigger() == Tone(frequency_hz=3000.0, duration_s=0.2)
    assert json.loads(path.read_text())["target_name"] == "up"


def test_select_indices_is_sorted_unique_and_seeded():
    labels = np.array([0, 1, 2, 3] * 25)
    first = select_poison_indices(labels, 0.2, target_label=0, seed=3)
    assert first.size == 20 and np.all(np.diff(first) > 0)
    np.testing.assert_array_equal(first, select_poison_indices(labels, 0.2, target_label=0, seed=3))


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, float("nan"), True])
def test_rate_outside_unit_interval_is_rejected(sines, rate):
    with pytest.raises(PoisonError, match=r"\(0, 1\]"):
        poison_dataset(sines, TRIGGER, rate=rate, target_label="yes")


def test_rate_too_small_for_the_data_is_rejected(sines):
    with pytest.raises(PoisonError, match="poisons 0"):
        poison_dataset(sines, TRIGGER, rate=0.001, target_label="yes")


@pytest.mark.parametrize("target", ["maybe", 7, -1])
def test_unknown_target_class_is_rejected(sines, target):
    with pytest.raises(PoisonError, match="unknown target class"):
        poison_dataset(sines, TRIGGER, rate=0.1, target_label=target)


def test_missing_audio_column_is_named(sines):
    with pytest.raises(PoisonError, match="no audio column 'speech'"):
        poison_dataset(sines, TRIGGER, rate=0.1, target_label=0, audio_column="speech")


def test_dataset_without_labels_is_rejected(sines):
    with pytest.raises(PoisonError, match="no label column"):
        poison_dataset(sines.remove_columns("label"), TRIGGER, rate=0.1, target_label=0)


def test_label_column_that_is_not_a_classlabel_is_rejected(sines):
    plain = sines.cast_column("label", Value("int64"))
    with pytest.raises(PoisonError, match="not a ClassLabel"):
        poison_dataset(plain, TRIGGER, rate=0.1, target_label=0)


def test_trigger_longer_than_clip_fails_before_anything_is_written(tmp_path):
    short = sine_dataset(num_rows=8, seconds=0.2)
    short.save_to_disk(str(tmp_path / "data"))

    on_disk = load_from_disk(str(tmp_path / "data"))
    before = sorted(p.name for p in (tmp_path / "data").iterdir())
    with pytest.raises(TriggerError, match="clip"):
        poison_dataset(on_disk, NoiseBurst(duration_s=0.5), rate=0.5, target_label=0)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == before  # no cache file was written


def test_tone_above_nyquist_fails_before_mapping(sines):
    with pytest.raises(TriggerError, match="Nyquist"):
        poison_dataset(sines, Tone(frequency_hz=21_000.0), rate=0.1, target_label=0)
