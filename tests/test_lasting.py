"""Did the backdoor stay gone: the shape inversions that find a surrogate like the trigger (burst, tonal), the relapse
check, the interpolation curve and the oracle (exact purification with the true trigger), on the tests' planted
backdoors."""

from __future__ import annotations

import math

import pytest
import torch
from testing_utils import sine_dataset

import hf_gnft.inversion as inversion_module
from hf_gnft.defenses import ORACLE_METHODS, get_benchmark_defense, get_defense
from hf_gnft.defenses.encoder_relearning import feature_encoder
from hf_gnft.defenses.purify import (
    ExactPurificationConfig,
    PurifyConfig,
    apply_exact_purification,
    apply_purify,
    shape_candidates,
    unlearning_plan,
    unlearning_rounds,
)
from hf_gnft.inversion import (
    InversionError,
    InversionSettings,
    class_batches,
    invert,
    invert_burst,
    tone_grid,
    window_starts,
)
from hf_gnft.lasting import (
    LastingCheckError,
    RelapseConfig,
    interpolation_curve,
    relapse_check,
    relapse_summary,
)
from hf_gnft.neurons import UnsupportedModelError
from hf_gnft.training import evaluate_backdoor

#: the planted triggers: 0.08 s at 0.05 s, −10 dB re the clip; the shape families are given that window and level
SHAPES = dict(window_s=0.08, level_db=-10.0, stride_s=0.01)
TRAINING = dict(per_device_train_batch_size=16, seed=0, report_to="none", disable_tqdm=True)


def metrics(planted, model):
    return evaluate_backdoor(model, planted.extractor, planted.test, planted.triggered, planted.target)


# ------------------------------------------------------------------------------------------- shapes


def test_window_starts_cover_the_clip_and_end_at_the_last_start_that_fits():
    assert window_starts(100, 30, 20) == [0, 20, 40, 60, 70]
    assert window_starts(100, 30, 35) == [0, 35, 70]
    assert window_starts(30, 30, 10) == [0]
    grid = tone_grid(16_000)
    assert math.isclose(grid[0], 80.0) and math.isclose(grid[-1], 7680.0) and len(grid) == 48


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"window_s": 0.0}, "window_s"),
        ({"window_s": float("nan")}, "window_s"),
        ({"stride_s": -1.0}, "stride_s"),
        ({"level_db": 3.0}, "level_db"),
        ({"level_db": float("-inf")}, "level_db"),
        ({"families": ["burst", "burst"]}, "twice"),
        ({"shape_steps": 0}, "steps"),
    ],
)
def test_bad_shape_settings_are_refused(settings, message):
    with pytest.raises(InversionError, match=message):
        InversionSettings(**settings)


def test_the_burst_family_finds_the_planted_bursts_place_and_sends_clips_to_its_target(planted_backdoor):
    planted = planted_backdoor
    batches = class_batches(
        sine_dataset(num_rows=48, seconds=0.3, seed=5), planted.extractor, planted.target, 16
    )
    trigger = invert_burst(planted.model, batches, planted.target, 30, **SHAPES)
    print(trigger.describe())
    assert abs(trigger.start_s - 0.05) <= 0.05  # the planted burst starts at 0.05 s
    assert trigger.success >= 0.9
    delta = trigger.delta
    outside = torch.ones_like(delta, dtype=torch.bool)
    start = round(trigger.start_s * 16_000)
    outside[start : start + round(0.08 * 16_000)] = False
    assert float(delta[outside].abs().max()) == 0.0  # nothing outside its window
    window_power = float(delta[~outside].pow(2).mean())
    assert window_power <= 10 ** (-10.0 / 10) * 1.0001  # within the level, re a unit-power clip
    # the clean twin: the same budget sends far fewer clips to that class
    clean = invert_burst(planted.clean_model, batches, planted.target, 30, **SHAPES)
    print(clean.describe())
    assert clean.success <= trigger.success - 0.3


def test_a_burst_at_every_start_gives_each_clip_one_window_in_turn(planted_backdoor):
    planted = planted_backdoor
    batches = class_batches(
        sine_dataset(num_rows=48, seconds=0.3, seed=5), planted.extractor, planted.target, 16
    )
    trigger = invert_burst(planted.model, batches, planted.target, 9, every_start=True, **SHAPES)
    length = batches[0]["input_values"].shape[-1]
    starts = window_starts(length, round(0.08 * 16_000), round(0.01 * 16_000))
    assert trigger.deltas.shape == (len(starts), length) and trigger.delta is None
    assert trigger.describe()["starts_s"] == [round(start / 16_000, 4) for start in starts]
    window = round(0.08 * 16_000)
    for row, start in enumerate(starts):  # each pattern lies in its own window, within the level
        inside = trigger.deltas[row, start : start + window]
        outside = torch.cat([trigger.deltas[row, :start], trigger.deltas[row, start + window :]])
        assert not bool(outside.any())
        assert float(inside.pow(2).mean()) <= 10 ** (-10.0 / 10) * 1.0001
    zeros = torch.zeros(len(starts) + 2, length)
    applied = trigger.apply(zeros)
    assert torch.equal(applied[: len(starts)], trigger.deltas) and torch.equal(
        applied[len(starts)], trigger.deltas[0]
    )
    assert trigger.success >= 0.5  # the planted burst's window is among them


def test_the_shapes_take_their_own_step_count_and_the_other_families_keep_theirs(
    planted_backdoor, monkeypatch
):
    planted = planted_backdoor
    batches = class_batches(
        sine_dataset(num_rows=48, seconds=0.3, seed=5), planted.extractor, planted.target, 16
    )
    seen = []
    real = inversion_module._project_pattern

    def counting(model, inputs, labels, pattern, start, radius, steps):
        seen.append(steps)
        return real(model, inputs, labels, pattern, start, radius, steps)

    monkeypatch.setattr(inversion_module, "_project_pattern", counting)
    settings = PurifyConfig(output_dir="unused", purify_shape_steps=9, purify_window_s=0.08,
                            purify_level_db=-10.0).inversion_settings()  # fmt: skip
    assert settings.steps == 60 and settings.localised_steps == 9
    invert(planted.model, batches, planted.target, "burst", settings)
    length = batches[0]["input_values"].shape[-1]
    starts = window_starts(length, round(0.08 * 16_000), round(0.05 * 16_000))
    assert seen == [3] * len(starts)  # a third of the shape steps at every window start
    assert InversionSettings(steps=20).localised_steps == 20  # unset: the families' steps


def test_the_tonal_family_finds_the_planted_tones_frequency(planted_tone_backdoor):
    planted = planted_tone_backdoor
    batches = class_batches(
        sine_dataset(num_rows=48, seconds=0.3, seed=5), planted.extractor, planted.target, 16
    )
    trigger = invert(planted.model, batches, planted.target, "tonal", InversionSettings(steps=20, **SHAPES))
    print(trigger.describe())
    assert trigger.family == "tonal"
    assert abs(trigger.frequency_hz - 2500.0) <= 0.05 * 2500.0
    assert trigger.success >= 0.8
    assert trigger.describe()["frequency_hz"] == pytest.approx(trigger.frequency_hz, abs=1e-3)


def test_a_clean_models_inversion_names_no_target_and_purify_then_only_fine_tunes(planted_backdoor, tmp_path):
    """With the shape families on (the default), a model with no backdoor is still not unlearned: the detection
    names no class, so no shape is inverted."""
    planted = planted_backdoor
    config = PurifyConfig(output_dir=str(tmp_path / "p"), num_train_epochs=2, learning_rate=0.01,
                          purify_window_s=0.08, purify_level_db=-10.0, **TRAINING)  # fmt: skip
    outcome = apply_purify(planted.clean_model, planted.extractor, planted.clean, config)
    assert outcome.info["targets"] == [] and outcome.info["fallback"] == "gn-ft"
    assert outcome.info["shapes"] == [] and outcome.info["plan"] == []


def test_a_shape_that_reaches_the_bar_stands_in_for_the_additive_surrogate_never_for_a_pitch_shift(tmp_path):
    config = PurifyConfig(output_dir=str(tmp_path), purify_shape_min_success=0.6)
    refined = [
        {"target": 0, "family": "additive", "success": 0.95},
        {"target": 3, "family": "spectral", "success": 0.9},
        {"target": 5, "family": "additive", "success": 0.8},
        {"target": 5, "family": "spectral", "success": 0.7},
    ]
    shaped = [{"target": 0, "family": "burst", "success": 0.8}, {"target": 0, "family": "tonal", "success": 0.97},
              {"target": 5, "family": "burst", "success": 0.9}]  # fmt: skip
    # the most successful shape alone where the additive detection named the target at least as strongly as the
    # pitch search; where the pitch search reached it more often (the tiny HuBERT PBSM suspect), never a shape
    assert unlearning_plan(refined, [0, 5], config, shaped=shaped) == [(0, "tonal"), (5, "burst")]
    pitch_first = [{"target": 5, "family": "spectral", "success": 0.97}, {"target": 5, "family": "additive",
                   "success": 0.54}]  # fmt: skip
    assert unlearning_plan(pitch_first, [5], config, shaped=shaped) == [(5, "spectral"), (5, "additive")]
    assert shape_candidates(pitch_first, [5], config) == []
    # the grid's PBSM suspect: only the pitch shift named the target, and a burst that reaches the bar is not used
    pbsm = [{"target": 3, "family": "burst", "success": 0.61}]
    assert unlearning_plan(refined, [3], config, shaped=pbsm) == [(3, "spectral")]
    assert shape_candidates(refined, [0, 3, 5], config) == [0, 5]  # so the shapes are not even inverted for 3
    # with every family unlearned, spectral is every target's family: a target only it reached is not shaped
    everything = PurifyConfig(output_dir=str(tmp_path), purify_unlearn="all")
    assert shape_candidates(refined, [3], everything) == []
    assert unlearning_plan(refined, [3], everything, shaped=pbsm) == [(3, "additive"), (3, "spectral")]
    additive_only = PurifyConfig(output_dir=str(tmp_path), purify_unlearn="all", purify_families=["additive"])
    assert unlearning_plan(refined, [3], additive_only, shaped=pbsm) == [(3, "burst")]
    weak = [{"target": 0, "family": "burst", "success": 0.5}]
    assert unlearning_plan(refined, [0], config, shaped=weak) == [(0, "additive")]  # below the bar
    tie = [{"target": 0, "family": "burst", "success": 0.9}, {"target": 0, "family": "tonal", "success": 0.9}]
    assert unlearning_plan(refined, [0], config, shaped=tie) == [(0, "burst")]
    assert unlearning_plan(refined, [0], config) == [(0, "additive")]  # no shapes: the detection's families
    # a shape alone is unlearned in purify_shape_rounds; any whole-clip surrogate keeps purify_rounds' re-inversions
    rounds = PurifyConfig(output_dir=str(tmp_path), purify_rounds=3, purify_shape_rounds=2)
    assert unlearning_rounds([(0, "tonal"), (1, "burst")], rounds) == 2
    assert unlearning_rounds([(0, "tonal"), (3, "spectral")], rounds) == 3
    assert unlearning_rounds([], rounds) == 3
    with pytest.raises(ValueError, match="purify_shape_rounds"):
        PurifyConfig(output_dir=str(tmp_path), purify_shape_rounds=0)
    with pytest.raises(ValueError, match="purify_shapes"):
        PurifyConfig(output_dir=str(tmp_path), purify_shapes=["additive"])
    with pytest.raises(ValueError, match="purify_families"):
        PurifyConfig(output_dir=str(tmp_path), purify_families=["burst"])
    with pytest.raises(ValueError, match="purify_shape_min_success"):
        PurifyConfig(output_dir=str(tmp_path), purify_shape_min_success=0.0)
    with pytest.raises(ValueError, match="level_db"):
        PurifyConfig(output_dir=str(tmp_path), purify_level_db=float("nan"))


# ------------------------------------------------------------------------------------------- relapse


def test_relapse_settings_are_checked():
    for bad in ({"learning_rates": []}, {"learning_rates": [0.0]}, {"learning_rates": [float("nan")]},
                {"learning_rates": 0.01}, {"num_train_epochs": 0}, {"num_train_epochs": float("inf")}):  # fmt: skip
        with pytest.raises(LastingCheckError):
            RelapseConfig(**bad)
    assert RelapseConfig().learning_rates == [0.01, 0.05]


def test_the_relapse_check_brings_back_a_suppressed_backdoor_and_not_a_removed_one(
    planted_backdoor, tmp_path
):
    """A shallow unlearning of the true trigger (a small learning rate) suppresses the planted backdoor; a clean-only
    fine-tune brings it back. The same unlearning deep enough (a large learning rate) removes it: the clean
    fine-tune leaves it gone."""
    planted = planted_backdoor

    def exact(learning_rate: float):
        config = ExactPurificationConfig(output_dir=str(tmp_path / f"ep{learning_rate}"), num_train_epochs=5,
                                         learning_rate=learning_rate, oracle_trigger=planted.trigger.to_dict(),
                                         oracle_target=planted.target, **TRAINING)  # fmt: skip
        return apply_exact_purification(planted.model, planted.extractor, planted.clean, config).model

    relapse = RelapseConfig(learning_rates=[0.05], num_train_epochs=10, reinversion=False)
    results = {}
    for learning_rate in (0.02, 0.1):
        model = exact(learning_rate)
        record = relapse_check(model, planted.extractor, planted.clean, test=planted.test,
                               triggered=planted.triggered, target=planted.target, config=relapse)  # fmt: skip
        results[learning_rate] = (metrics(planted, model).attack_success_rate,
                                  relapse_summary(record)["attack_success_rate"])  # fmt: skip
    print(results)
    # measured: lr 0.02 → ASR 0.0, 0.67 after the clean fine-tune; lr 0.1 → 0.0, 0.0 (0.01: 0.33, 1.0)
    assert results[0.02][0] <= 0.2 and results[0.1][0] <= 0.2  # both suppress it
    assert results[0.02][1] >= 0.5  # the shallow one relapses
    assert results[0.1][1] <= 0.2  # the deep one does not


def test_the_relapse_check_needs_clean_data_and_a_whole_attack(planted_backdoor):
    planted = planted_backdoor
    with pytest.raises(LastingCheckError, match="empty"):
        relapse_check(planted.model, planted.extractor, planted.clean.select([]))
    with pytest.raises(LastingCheckError, match="target"):
        relapse_check(planted.model, planted.extractor, planted.clean, triggered=planted.triggered)


def test_the_interpolation_curve_runs_from_the_suspect_to_the_defended_model(planted_backdoor, tmp_path):
    planted = planted_backdoor
    config = ExactPurificationConfig(output_dir=str(tmp_path / "ep"), num_train_epochs=2, learning_rate=0.05,
                                     oracle_trigger=planted.trigger.to_dict(), oracle_target=0, **TRAINING)  # fmt: skip
    defended = apply_exact_purification(planted.model, planted.extractor, planted.clean, config).model
    before = [p.detach().clone() for p in planted.model.parameters()]
    curve = interpolation_curve(
        planted.model, defended, planted.extractor, planted.test, planted.triggered, 0, 3
    )
    assert [point["weight"] for point in curve] == [0.0, 0.5, 1.0]
    for point, model in ((curve[0], planted.model), (curve[-1], defended)):
        expected = metrics(planted, model)
        assert point["clean_accuracy"] == expected.clean_accuracy
        assert point["attack_success_rate"] == expected.attack_success_rate
    assert all(torch.equal(a, b) for a, b in zip(before, planted.model.parameters(), strict=True))
    with pytest.raises(LastingCheckError, match="2 points"):
        interpolation_curve(planted.model, defended, planted.extractor, planted.test, points=1)


# ------------------------------------------------------------------------------------------- the oracle


def test_the_oracle_is_for_the_benchmark_only_and_needs_the_attack(planted_backdoor, tmp_path):
    assert (
        "oracle-ep" in ORACLE_METHODS
        and get_benchmark_defense("oracle-ep").config_class is ExactPurificationConfig
    )
    with pytest.raises(ValueError, match="unknown defense"):
        get_defense("oracle-ep")  # not a product defense: `hf-gnft defend` never offers it
    config = ExactPurificationConfig(output_dir=str(tmp_path / "ep"), **TRAINING)
    with pytest.raises(UnsupportedModelError, match="trigger"):
        apply_exact_purification(
            planted_backdoor.model, planted_backdoor.extractor, planted_backdoor.clean, config
        )


def test_the_repair_fine_tunes_on_clean_clips_after_unlearning(planted_backdoor, tmp_path):
    planted = planted_backdoor
    config = PurifyConfig(output_dir=str(tmp_path / "p"), num_train_epochs=5, learning_rate=0.05, purify_mix_ratio=1.0,
                          purify_window_s=0.08, purify_level_db=-10.0, purify_repair_epochs=3,
                          purify_relearn_encoder_steps=200,
                          purify_repair_learning_rate=0.01, purify_repair_distillation=0.5,
                          purify_distillation_hides_target=True, **TRAINING)  # fmt: skip
    suspect_weights = {key: value.clone() for key, value in planted.model.state_dict().items()}
    outcome = apply_purify(planted.model, planted.extractor, planted.clean, config)
    assert outcome.info["targets"] == [planted.target]
    # the burst at every start, unlearned in one round (purify_shape_rounds): no re-inversion during training
    assert outcome.info["plan"] == [[planted.target, "burst"]] and len(outcome.info["rounds"]) == 1
    assert outcome.info["repair"] == {
        "steps": 6,
        "learning_rate": 0.01,
        "epochs": 3,
        "distillation": 0.5,  # taught by the suspect too, its leaning to the target left out
    }  # 32 clips, batches of 16
    for key, value in planted.model.state_dict().items():  # the teacher is the suspect, untouched
        torch.testing.assert_close(value, suspect_weights[key])
    assert outcome.info["seconds"]["repair"] > 0
    assert metrics(planted, outcome.model).attack_success_rate <= 0.2
    # the feature encoder was re-learned first (a fresh one, not the suspect's) and trains again once published
    assert outcome.info["encoder_relearning"]["steps"] == 200 and outcome.info["seconds"]["relearning"] > 0
    assert outcome.info["encoder_relearning"]["crop"] == 4000  # the default 0.25 s window of the 0.3 s clips
    encoder, suspect_encoder = feature_encoder(outcome.model), feature_encoder(planted.model)
    assert not torch.equal(encoder.conv_layers[0].conv.weight, suspect_encoder.conv_layers[0].conv.weight)
    assert all(parameter.requires_grad for parameter in outcome.model.parameters())
    with pytest.raises(ValueError, match="purify_repair_epochs"):
        PurifyConfig(output_dir=str(tmp_path), purify_repair_epochs=float("nan"))
    with pytest.raises(ValueError, match="purify_repair_learning_rate"):
        PurifyConfig(output_dir=str(tmp_path), purify_repair_learning_rate=0.0)
    with pytest.raises(ValueError, match="purify_fallback_learning_rate"):
        PurifyConfig(output_dir=str(tmp_path), purify_fallback_learning_rate=float("inf"))
    assert (
        PurifyConfig(
            output_dir=str(tmp_path), purify_fallback_learning_rate=None
        ).purify_fallback_learning_rate
        is None
    )


def test_the_spectral_surrogate_at_every_shift_gives_each_copy_one_nonzero_shift_in_turn(
    planted_backdoor, tmp_path
):
    """`purify_spectral_every_shift`: copy k of a spectral trigger is pitch-shifted by the (k mod 2n)-th nonzero
    semitone in [−n, n], then filtered by the inverted trigger's filter; the trigger's own shift is not used."""
    import copy

    from hf_gnft.defenses.purify import TRIGGER_COLUMN, PurifyCollator, PurifyTrainer
    from hf_gnft.inversion import SPECTRAL_N_FFT, InvertedTrigger, pitch_shifted

    planted = planted_backdoor
    student = copy.deepcopy(planted.model)
    seen = {}
    student.register_forward_pre_hook(lambda m, a, k: seen.__setitem__("inputs", k["input_values"].clone()),
                                      with_kwargs=True)  # fmt: skip
    trigger = InvertedTrigger(
        "spectral", 1, 0.9, semitones=7, log_gains=torch.full((SPECTRAL_N_FFT // 2 + 1,), -0.5)
    )
    config = PurifyConfig(output_dir=str(tmp_path), **TRAINING)
    rows = planted.clean.select(range(8)).add_column(TRIGGER_COLUMN, list(range(8)))
    trainer = PurifyTrainer(model=student, args=config, train_dataset=rows, data_collator=PurifyCollator(planted.extractor),
                            plan=[(1, "spectral")], inversion_batches={}, settings=config.inversion_settings(),
                            rounds=1, initial_triggers={(1, "spectral"): trigger}, every_shift=2)  # fmt: skip
    assert trainer.shifts == [-2, -1, 1, 2]
    batch = PurifyCollator(planted.extractor)([rows[i] for i in range(8)])
    original = batch["input_values"].clone()
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer.training_step(student, dict(batch))
    for k in range(8):
        expected = trigger.apply_to_shifted(pitch_shifted(original[k : k + 1], [-2, -1, 1, 2][k % 4]))
        torch.testing.assert_close(seen["inputs"][k : k + 1], expected, atol=1e-4, rtol=1e-4)
    own = trigger.apply_to_shifted(pitch_shifted(original[:1], 7))
    assert (seen["inputs"][:1] - own).abs().max() > 1e-2  # not the search's shift
