"""Trigger inversion (`hf_gnft.inversion`, shared with the scan) and purification (`--defense purify`): its
settings, bad input, what it does to the planted backdoor of the tests' twin tiny Wav2Vec2s (`planted_backdoor`),
and that a model with no suspect class is only fine-tuned."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from testing_utils import LABELS, sine_dataset
from torch import nn
from transformers import HfArgumentParser

from hf_gnft.defenses import FTConfig, apply_fine_tuning, get_defense
from hf_gnft.defenses.base import DefenseInputError
from hf_gnft.defenses.purify import (
    AVOID_KEY,
    TEACHER_KEY,
    TRIGGER_COLUMN,
    PurifyCollator,
    PurifyConfig,
    PurifyTrainer,
    apply_purify,
    interpolate_weights,
    mixed_training_set,
    walk_back,
    weak_detection,
)
from hf_gnft.inversion import (
    ClassInversion,
    InversionError,
    InversionSettings,
    InvertedTrigger,
    best_shift,
    class_batches,
    invert_additive,
    invert_classes,
    normalise,
    pitch_shifted,
    rank_suspects,
    refine_suspects,
    shift_predictions,
    spectral_filter,
)
from hf_gnft.training import evaluate_backdoor

#: the planted twins: 32 clean clips, batches of 16, 5 epochs over the mixed set (20 steps, FT's 10 epochs)
TRAINING = dict(
    per_device_train_batch_size=16, learning_rate=0.05, seed=0, report_to="none", disable_tqdm=True
)


#: the encoder re-learning's steps on the twins (the default 3,000 is sized for 200 one-second clips)
RELEARN_STEPS = 200


def purify_config(tmp_path, **overrides) -> PurifyConfig:
    values = dict(output_dir=str(tmp_path / "purify"), num_train_epochs=5, purify_mix_ratio=1.0,
                  purify_repair_epochs=0.0, purify_relearn_encoder_steps=RELEARN_STEPS, **TRAINING)  # fmt: skip
    return PurifyConfig(**{**values, **overrides})


def backdoor_metrics(planted, model):
    return evaluate_backdoor(model, planted.extractor, planted.test, planted.triggered, planted.target)


# ---------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"purify_radius": 0.0}, "radius"),
        ({"purify_radius": -0.01}, "radius"),
        ({"purify_radius": float("nan")}, "radius"),
        ({"purify_radius": float("inf")}, "radius"),
        ({"purify_detection_radius": 0.0}, "radius"),
        ({"purify_rounds": 0}, "purify_rounds"),
        ({"purify_steps": 0}, "steps"),
        ({"purify_filter_steps": -1}, "filter_steps"),
        ({"purify_mix_ratio": 0.0}, "purify_mix_ratio"),
        ({"purify_max_gain_db": 0.0}, "max_gain_db"),
        ({"purify_max_semitones": 30}, "max_semitones"),
        ({"purify_families": []}, "families"),
        ({"purify_families": ["additive", "additive"]}, "twice"),
        ({"purify_families": ["patch"]}, "patch"),
        ({"purify_detection_threshold": 1.0}, "purify_detection_threshold"),
        ({"purify_max_targets": 0}, "purify_max_targets"),
        ({"purify_distillation": 1.5}, "purify_distillation"),
        ({"purify_distillation": -0.1}, "purify_distillation"),
        ({"purify_temperature": 0.0}, "purify_temperature"),
        ({"purify_temperature": float("nan")}, "purify_temperature"),
        ({"purify_objective": "forget"}, "purify_objective"),
        ({"purify_interpolation_step": 1.0}, "purify_interpolation_step"),
        ({"purify_interpolation_step": -0.1}, "purify_interpolation_step"),
        ({"purify_interpolation_step": float("nan")}, "purify_interpolation_step"),
        ({"purify_interpolation_tolerance": 1.5}, "purify_interpolation_tolerance"),
        ({"purify_interpolation_tolerance": float("inf")}, "purify_interpolation_tolerance"),
        ({"purify_interpolation_weight": 0.0}, "purify_interpolation_weight"),
        ({"purify_interpolation_weight": 1.5}, "purify_interpolation_weight"),
        ({"purify_interpolation_weight": float("nan")}, "purify_interpolation_weight"),
        ({"purify_interpolation_weight": 0.5, "purify_interpolation_step": 0.1}, "set one"),
    ],
)
def test_bad_purify_config_is_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        purify_config(tmp_path, **overrides)


def test_purify_is_registered_and_its_settings_are_flags(tmp_path):
    method = get_defense("purify")
    assert method.config_class is PurifyConfig and method.knob == "learning_rate" and method.trains
    (config,) = HfArgumentParser(PurifyConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--purify_rounds", "2", "--purify_families", "additive",
         "--purify_radius", "0.03"]
    )  # fmt: skip
    assert (
        config.purify_rounds == 2 and config.purify_families == ["additive"] and config.purify_radius == 0.03
    )
    # GN-FT is the engine: the authors' penalty
    assert (config.gn_alpha, config.gn_radius, config.optim_args) == (0.7, 0.05, "momentum=0.9")


def test_one_class_clean_set_and_one_class_model_are_refused_before_any_training(planted_backdoor, tmp_path):
    planted = planted_backdoor
    config = purify_config(tmp_path)
    one_class = planted.clean.filter(lambda row: row["label"] == 1)
    with pytest.raises(DefenseInputError, match="only class"):
        apply_purify(planted.model, planted.extractor, one_class, config)
    with pytest.raises(DefenseInputError, match="empty"):
        apply_purify(planted.model, planted.extractor, planted.clean.select([]), config)
    from hf_gnft.models import build_model

    single, extractor = build_model("tiny-wav2vec2", ["yes"])
    with pytest.raises(DefenseInputError, match="1 class"):
        apply_purify(single, extractor, planted.clean, config)
    assert not (tmp_path / "purify").exists()  # nothing written


def test_inversion_settings_are_checked():
    for bad in (dict(budget=0.0), dict(budget=float("nan")), dict(steps=0), dict(max_gain_db=-1.0),
                dict(families=["additive", "patch"]), dict(filter_steps=-1)):  # fmt: skip
        with pytest.raises(InversionError):
            InversionSettings(**bad)


# ---------------------------------------------------------------------------------------------- the families


def test_additive_trigger_pads_a_short_perturbation_and_cuts_a_long_one():
    trigger = InvertedTrigger("additive", 0, 1.0, delta=torch.ones(4))
    assert trigger.apply(torch.zeros(2, 6)).tolist() == [[1, 1, 1, 1, 0, 0]] * 2
    assert trigger.apply(torch.zeros(1, 3)).tolist() == [[1, 1, 1]]


def test_a_flat_spectral_filter_and_no_shift_give_the_clip_back():
    clips = normalise(torch.randn(3, 4000, dtype=torch.float64))
    assert torch.allclose(spectral_filter(clips, torch.zeros(257, dtype=torch.float64)), clips, atol=1e-9)
    trigger = InvertedTrigger(
        "spectral", 0, 1.0, semitones=0, log_gains=torch.zeros(257, dtype=torch.float64)
    )
    assert torch.allclose(trigger.apply(clips), clips, atol=1e-6)
    # a cut of every bin by 6 dB halves the clip (and renormalisation undoes it)
    half = spectral_filter(clips, torch.full((257,), math.log(0.5), dtype=torch.float64))
    assert torch.allclose(half, clips / 2, atol=1e-9)


class HighPitchDetector(nn.Module):
    """A toy classifier: class 0 when most of the clip's energy lies above 1.5 kHz, else class 1."""

    def forward(self, input_values):
        spectrum = torch.fft.rfft(input_values).abs().pow(2)
        frequencies = torch.fft.rfftfreq(input_values.shape[-1], 1 / 16_000)
        high = spectrum[:, frequencies > 1500].sum(-1) / spectrum.sum(-1)
        logits = torch.stack([10 * (high - 0.5), torch.zeros_like(high)], dim=-1)
        return type("Output", (), {"logits": logits})()


def test_the_pitch_search_finds_the_shift_a_pitch_trigger_needs():
    t = torch.arange(8000) / 16_000
    clips = torch.stack([torch.sin(2 * math.pi * f * t) for f in (1000.0, 1050.0, 1100.0, 1150.0)])
    predictions = shift_predictions(
        HighPitchDetector(), [{"input_values": clips}], range(-12, 13), 16_000, True
    )
    assert predictions[0].tolist() == [1, 1, 1, 1]  # unshifted: all low
    chosen = best_shift(predictions, slice(None), 0)
    # 1.5 kHz / 1 kHz is 7.02 semitones: +8 is the smallest shift that sends all four clips up
    assert chosen == 8
    assert pitch_shifted(clips, chosen).shape == clips.shape


def test_shifting_the_same_clips_again_reuses_the_first_shift_and_gives_the_same_copy(monkeypatch):
    from hf_gnft import inversion

    calls = []
    monkeypatch.setattr(
        inversion, "pitch_shift", lambda row, rate, semitones: calls.append(semitones) or row * 2
    )
    monkeypatch.setattr(inversion, "_SHIFTED", inversion._ShiftedClips(max_bytes=1 << 20))
    clips = torch.randn(3, 400)
    first = pitch_shifted(clips, 5)
    again = pitch_shifted(clips.clone(), 5)  # the same content in a new tensor: not shifted again
    assert calls == [5, 5, 5]
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    again.zero_()  # a copy: changing it leaves the kept result alone
    torch.testing.assert_close(pitch_shifted(clips, 5), 2 * clips, rtol=0, atol=0)
    pitch_shifted(clips + 1, 5), pitch_shifted(clips, 4), pitch_shifted(clips.double(), 5)
    assert calls == [5] * 3 + [5] * 3 + [4] * 3 + [5] * 3  # other clips, semitones or precision: shifted
    assert pitch_shifted(clips, 0) is clips
    # each clip is kept on its own: a new batch of known clips and one changed clip (e.g. padded in a batch of
    # longer clips, or purify's triggered copies in new batches every epoch) shifts only the changed one
    calls.clear()
    changed = clips.clone()
    changed[1, -1] += 1.0
    torch.testing.assert_close(pitch_shifted(changed[[2, 1, 0]], 5), 2 * changed[[2, 1, 0]], rtol=0, atol=0)
    assert calls == [5]
    monkeypatch.setattr(inversion, "_SHIFTED", inversion._ShiftedClips(max_bytes=2 * clips[0].nbytes))
    pitch_shifted(clips, 1)
    assert len(inversion._SHIFTED.clips) == 2 and inversion._SHIFTED.nbytes == 2 * clips[0].nbytes
    calls.clear()
    pitch_shifted(clips[2:], 1), pitch_shifted(clips[:1], 1)
    assert calls == [1]  # the oldest (the first clip) was dropped; the last two were kept


# ---------------------------------------------------------------------------------------------- shared with the scan


def _scan_reference(model, batches, target, steps, budget):
    """The scan's universal perturbation as it was before it moved to `hf_gnft.inversion` (a reference)."""
    train, held_out = batches[0], batches[1:] or batches[:1]
    inputs = train["input_values"]
    radius = budget * math.sqrt(inputs.shape[-1])
    delta = torch.zeros(inputs.shape[-1], dtype=inputs.dtype)
    labels = torch.full((inputs.shape[0],), target, dtype=torch.long)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(input_values=inputs + delta).logits.float(), labels)
        (grad,) = torch.autograd.grad(loss, [delta])
        with torch.no_grad():
            delta = delta - (radius / 4) * grad / grad.norm().clamp_min(1e-12)
            delta = delta * min(1.0, radius / float(delta.norm().clamp_min(1e-12)))
    hits = count = 0
    with torch.no_grad():
        for batch in held_out:
            shift = delta[: batch["input_values"].shape[-1]]
            logits = model(input_values=batch["input_values"][..., : shift.shape[-1]] + shift).logits
            hits += int((logits.argmax(-1) == target).sum())
            count += batch["input_values"].shape[0]
    return hits / count


def test_the_scans_inversion_is_unchanged_by_sharing_the_code(planted_backdoor):
    planted = planted_backdoor
    clips = sine_dataset(num_rows=48, seconds=0.3, seed=5)
    for target in range(len(LABELS)):
        batches = class_batches(clips, planted.extractor, target, 16)
        expected = _scan_reference(planted.model, batches, target, 10, 0.01)
        assert invert_additive(planted.model, batches, target, 10, 0.01).success == expected


# ---------------------------------------------------------------------------------------------- detection


def test_the_inversion_names_the_planted_target_and_none_on_the_clean_twin(planted_backdoor):
    planted = planted_backdoor
    settings = InversionSettings(families=["additive"], steps=20, budget=0.01)
    backdoored = invert_classes(planted.model, planted.extractor, planted.clean, settings)
    clean = invert_classes(planted.clean_model, planted.extractor, planted.clean, settings)
    print(backdoored.describe(), clean.describe())
    assert backdoored.suspected["additive"] == planted.target
    threshold = PurifyConfig(output_dir="x").purify_detection_threshold
    assert backdoored.suspects(threshold) == [planted.target]
    assert clean.suspects(threshold) == []
    with pytest.raises(InversionError, match="at least 2 classes"):
        invert_classes(
            planted.model, planted.extractor, planted.clean.filter(lambda r: r["label"] == 2), settings
        )


def test_suspects_are_ranked_by_their_margin_over_the_threshold():
    detection = ClassInversion(
        success={}, gap={"additive": 0.2, "spectral": 0.9}, suspected={"additive": 3, "spectral": 1}
    )
    thresholds = {"additive": 0.1, "spectral": 0.5}
    assert rank_suspects(detection, thresholds, 2) == [1, 3]
    assert rank_suspects(detection, thresholds, 1) == [1]
    assert rank_suspects(detection, {"additive": 0.3, "spectral": 0.95}, 2) == []


# ---------------------------------------------------------------------------------------------- unlearning


def test_the_refinement_reuses_the_detections_pitch_shifts_and_finds_the_same_triggers(planted_backdoor):
    planted = planted_backdoor
    settings = InversionSettings(steps=3, budget=0.02, max_semitones=4, filter_steps=2)
    detection = invert_classes(planted.model, planted.extractor, planted.clean,
                               InversionSettings(steps=2, budget=0.01, max_semitones=4, filter_steps=0), batch_size=16)  # fmt: skip
    candidates = {"spectral": [0, planted.target], "additive": [planted.target]}
    fresh = refine_suspects(
        planted.model, planted.extractor, planted.clean, candidates, settings, batch_size=16
    )
    reused = refine_suspects(planted.model, planted.extractor, planted.clean, candidates, settings, batch_size=16,
                             detection=detection)  # fmt: skip
    assert [(r["target"], r["family"], r["success"]) for r in fresh] == [
        (r["target"], r["family"], r["success"]) for r in reused
    ]
    for a, b in zip(fresh, reused, strict=True):
        if a["family"] == "spectral":
            assert a["trigger"].semitones == b["trigger"].semitones
            assert b["trigger"].semitones == detection.triggers["spectral"][b["target"]].semitones


class FixedLogits(nn.Module):
    """A stand-in model whose logits are its input."""

    def forward(self, input_values, **_):
        return SimpleNamespace(logits=input_values)


class TeacherLogits(nn.Module):
    """A stand-in teacher (with a parameter, as models have) whose logits are its input."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, input_values, **_):
        return SimpleNamespace(logits=input_values)


def test_the_teacher_hides_its_leaning_to_the_suspected_target_on_other_classes_clips():
    logits = torch.tensor([[2.0, 5.0, -1.0], [0.1, 3.0, 0.2], [1.0, 4.0, 1.0]])
    labels = torch.tensor([0, 1, 2])
    state = SimpleNamespace(
        teacher=TeacherLogits(), teacher_hides=[1], args=SimpleNamespace(device=torch.device("cpu"))
    )
    taught = PurifyTrainer._teacher_logits(state, {"input_values": logits, "labels": labels})
    expected = logits.clone()
    expected[0, 1], expected[2, 1] = -1.0 - 20.0, 1.0 - 20.0  # 20 below the row's smallest
    torch.testing.assert_close(taught, expected)  # a clip of the target class keeps the teacher's answer
    assert taught[[0, 2]].softmax(-1)[:, 1].max() < 1e-8
    state.teacher_hides = []
    torch.testing.assert_close(
        PurifyTrainer._teacher_logits(state, {"input_values": logits, "labels": labels}), logits
    )


def test_the_unlearning_losses_match_their_formulas():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 3.0, 0.2], [1.0, 1.0, 1.0]])
    labels = torch.tensor([0, 2, 1])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.5, 1.5, 0.0]])
    state = SimpleNamespace(distillation=0.25, temperature=2.0)

    def loss(**extra):
        return PurifyTrainer.compute_loss(
            state, FixedLogits(), {"input_values": logits, "labels": labels, **extra}
        )

    ce = F.cross_entropy(logits, labels, reduction="none")
    # avoid_target: a triggered row of another class pays −log(1 − p(target)); the others their cross-entropy
    avoid = torch.tensor([-1, 1, -1])
    p_target = logits.softmax(-1)[1, 1]
    expected = torch.stack([ce[0], -torch.log(1 - p_target), ce[2]]).mean()
    torch.testing.assert_close(loss(**{AVOID_KEY: avoid}), expected)
    # distillation: (1 − w) · the above + w · T² · KL(teacher ‖ model) at temperature T, averaged over rows
    kl = (
        sum(
            (
                F.softmax(teacher[i] / 2, -1)
                * (F.log_softmax(teacher[i] / 2, -1) - F.log_softmax(logits[i] / 2, -1))
            ).sum()
            for i in range(3)
        )
        / 3
    )
    torch.testing.assert_close(
        loss(**{AVOID_KEY: avoid, TEACHER_KEY: teacher}), 0.75 * expected + 0.25 * 4 * kl
    )
    torch.testing.assert_close(loss(**{TEACHER_KEY: teacher}), 0.75 * ce.mean() + 0.25 * 4 * kl)
    # a model that answers as the teacher pays only its cross-entropy share
    same = PurifyTrainer.compute_loss(
        state, FixedLogits(), {"input_values": teacher, "labels": labels, TEACHER_KEY: teacher}
    )
    torch.testing.assert_close(same, 0.75 * F.cross_entropy(teacher, labels))


def test_the_mixed_set_marks_its_triggered_copies(planted_backdoor):
    clean = planted_backdoor.clean
    mixed = mixed_training_set(clean, 1.5, seed=0)
    marks = mixed[TRIGGER_COLUMN]
    assert len(mixed) == len(clean) + 48 and marks[: len(clean)] == [-1] * len(clean)
    assert marks[len(clean) :] == list(range(48))
    batch = PurifyCollator(planted_backdoor.extractor)([mixed[0], mixed[len(clean)]])
    assert batch[TRIGGER_COLUMN].tolist() == [-1, 0] and batch["input_values"].shape[0] == 2


def test_purify_removes_the_planted_backdoor_where_ft_with_the_same_steps_does_not(
    planted_backdoor, tmp_path
):
    planted = planted_backdoor
    before = backdoor_metrics(planted, planted.model)
    assert before.attack_success_rate == 1.0
    config = purify_config(
        tmp_path, purify_families=["additive"], purify_shapes=[], purify_relearn_encoder_steps=0
    )  # the detection's surrogate alone: no encoder re-learning
    outcome = apply_purify(planted.model, planted.extractor, planted.clean, config)
    after = backdoor_metrics(planted, outcome.model)
    ft = apply_fine_tuning(
        planted.model, planted.extractor, planted.clean, FTConfig(output_dir=str(tmp_path / "ft"), num_train_epochs=10,
                                                                  **TRAINING)
    )  # fmt: skip
    after_ft = backdoor_metrics(planted, ft.model)
    print(outcome.info["detection"], outcome.info["rounds"], after, after_ft)
    assert outcome.info["targets"] == [planted.target] and outcome.info["fallback"] is None
    assert outcome.info["weak_detection"] is None  # a planted backdoor's target is reached by most clips
    assert outcome.info["steps"] == ft.info["steps"] == 20  # the same budget
    # three rounds, each re-inverting the target against the current model at its start
    assert [(r["round"], r["step"]) for r in outcome.info["rounds"]] == [(0, 0), (1, 7), (2, 14)]
    # round 0 takes the refinement's trigger (inverted against the same, unchanged model); later rounds invert
    assert [r["reused"] for r in outcome.info["rounds"]] == [1, 0, 0]
    assert set(outcome.info["seconds"]) == {
        "detection", "refinement", "shapes", "relearning", "training", "round_inversions", "interpolation", "repair"
    }  # fmt: skip
    assert outcome.info["seconds"]["relearning"] == 0.0 and "encoder_relearning" not in outcome.info
    assert outcome.info["shapes"] == [] and "repair" not in outcome.info  # both off here
    assert outcome.info["rounds"][0]["triggers"][0]["success"] >= 0.9
    assert "interpolation" not in outcome.info and outcome.info["seconds"]["interpolation"] == 0.0  # off
    assert after.attack_success_rate <= 0.1 and after.clean_accuracy >= before.clean_accuracy - 0.05
    assert after_ft.attack_success_rate >= 0.9
    # the suspect is untouched
    assert backdoor_metrics(planted, planted.model).attack_success_rate == 1.0


def test_interpolated_weights_lie_on_the_line_between_the_two_models():
    start, end = nn.Linear(3, 2), nn.Linear(3, 2)
    model = nn.Linear(3, 2)
    states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in (start, end)]
    for weight in (0.0, 0.3, 1.0):
        interpolate_weights(model, *states, weight)
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, states[0][key] + weight * (states[1][key] - states[0][key]))


@pytest.mark.parametrize(
    "step, tolerance, kept, tried",
    [
        (0.1, 0.05, 1.0, [1.0, 0.9]),  # the first step back makes the trigger 0.1 easier: stay
        (0.1, 0.25, 0.8, [1.0, 0.9, 0.8, 0.7]),
        (0.25, 1 - 1e-6, 0.25, [1.0, 0.75, 0.5, 0.25]),  # never easier enough: as far as the steps go
        (0.0, 0.5, 1.0, [1.0]),  # no walk
    ],
)
def test_the_walk_back_keeps_the_last_weight_whose_re_inversion_stays_within_the_tolerance(
    monkeypatch, step, tolerance, kept, tried
):
    import hf_gnft.defenses.purify as purify

    suspect, purified = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        suspect.weight.fill_(0.0)
        purified.weight.fill_(1.0)
    # a stand-in inversion whose success grows as the weights return to the suspect's: 1 − w
    calls = []

    def fake_invert(model, batches, target, family, settings, **kwargs):
        calls.append((target, family))
        return SimpleNamespace(success=1.0 - float(model.weight))

    monkeypatch.setattr(purify, "invert", fake_invert)
    record = walk_back(suspect, purified, [(3, "additive")], {3: []}, InversionSettings(), step, tolerance)
    assert record["weight"] == pytest.approx(kept)
    assert [row["weight"] for row in record["path"]] == pytest.approx(tried)
    assert [row["success"] for row in record["path"]] == pytest.approx([1 - w for w in tried], abs=1e-4)
    assert float(purified.weight) == pytest.approx(kept)  # the model ends at the kept weight
    assert float(suspect.weight) == 0.0 and set(calls) == {(3, "additive")}


#: the interpolation tests' purify (the encoder re-learning, tested on its own, left out: it does not change the walk)
INTERPOLATION_SETTINGS = dict(purify_families=["additive"], purify_relearn_encoder_steps=0, seed=0)


@pytest.fixture(scope="module")
def plain_purified(planted_backdoor, tmp_path_factory):
    """The planted twin purified without interpolation, shared by the interpolation tests."""
    planted = planted_backdoor
    config = purify_config(tmp_path_factory.mktemp("plain"), **INTERPOLATION_SETTINGS)
    return apply_purify(planted.model, planted.extractor, planted.clean, config)


@pytest.mark.parametrize(
    "interpolation", [{"purify_interpolation_step": 0.25}, {"purify_interpolation_weight": 0.4}]
)
@pytest.mark.slow
def test_purify_interpolates_towards_the_suspect_and_records_the_weight(
    planted_backdoor, plain_purified, tmp_path, interpolation
):
    planted, plain, settings = planted_backdoor, plain_purified, INTERPOLATION_SETTINGS
    outcome = apply_purify(planted.model, planted.extractor, planted.clean,
                           purify_config(tmp_path, **interpolation, **settings))  # fmt: skip
    walk = outcome.info["interpolation"]
    print(walk)
    if "purify_interpolation_weight" in interpolation:
        assert walk == {"weight": 0.4, "fixed": True}
    else:
        assert walk["path"][0] == {"weight": 1.0, "success": walk["reference"]}
        assert [row["weight"] for row in walk["path"]] == [1.0, 0.75, 0.5, 0.25][: len(walk["path"])]
        kept = [row for row in walk["path"] if row["weight"] >= walk["weight"]]
        assert all(row["success"] <= walk["reference"] + walk["tolerance"] for row in kept)
    # training is deterministic: the walk's model is the kept point between the suspect and the plain purification
    suspect, purified = planted.model.state_dict(), plain.model.state_dict()
    for key, value in outcome.model.state_dict().items():
        if value.is_floating_point():
            expected = suspect[key] + walk["weight"] * (purified[key] - suspect[key])
            torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_purify_with_distillation_and_the_avoid_target_objective_removes_the_planted_backdoor(
    planted_backdoor, tmp_path
):
    planted = planted_backdoor
    config = purify_config(tmp_path, purify_families=["additive"], purify_distillation=0.5,
                           purify_objective="avoid_target")  # fmt: skip
    outcome = apply_purify(planted.model, planted.extractor, planted.clean, config)
    after = backdoor_metrics(planted, outcome.model)
    before = backdoor_metrics(planted, planted.model)
    assert outcome.info["targets"] == [planted.target]
    assert after.attack_success_rate <= 0.1 and after.clean_accuracy >= before.clean_accuracy - 0.05
    assert before.attack_success_rate == 1.0  # the teacher (the suspect itself) is untouched


@pytest.mark.slow
def test_purify_can_re_learn_the_layers_above_the_encoder_too(planted_backdoor, tmp_path):
    planted = planted_backdoor
    config = purify_config(tmp_path, purify_families=["additive"], purify_relearn_upper_steps=100)
    outcome = apply_purify(planted.model, planted.extractor, planted.clean, config)
    record = outcome.info["upper_relearning"]
    assert record["steps"] == 100 and record["error_end"] < record["error_start"]
    relearning = outcome.info["encoder_relearning"]["seconds"] + record["seconds"]
    assert outcome.info["seconds"]["relearning"] == pytest.approx(relearning, abs=0.02)
    after = backdoor_metrics(planted, outcome.model)
    assert outcome.info["targets"] == [planted.target]
    assert after.attack_success_rate <= 0.1
    assert after.clean_accuracy >= backdoor_metrics(planted, planted.model).clean_accuracy - 0.05


def test_purify_on_the_clean_twin_only_fine_tunes_and_keeps_its_accuracy(planted_backdoor, tmp_path):
    """Nothing to unlearn: GN-FT with the mixed set's steps at the GN-FT defense's rate, not purify's 0.05."""
    planted = planted_backdoor
    before = backdoor_metrics(planted, planted.clean_model)
    outcome = apply_purify(planted.clean_model, planted.extractor, planted.clean, purify_config(tmp_path))
    after = backdoor_metrics(planted, outcome.model)
    print(outcome.info["detection"])
    assert outcome.info["targets"] == [] and outcome.info["fallback"] == "gn-ft"
    assert outcome.info["steps"] == 20  # GN-FT with the mixed set's steps
    assert TRAINING["learning_rate"] == 0.05 and outcome.info["fallback_learning_rate"] == 0.01
    rates = [row["learning_rate"] for row in outcome.info["log_history"] if "learning_rate" in row]
    assert rates and max(rates) <= 0.01
    assert abs(after.clean_accuracy - before.clean_accuracy) <= 0.01
    assert np.isfinite(list(outcome.info["detection"]["gap"].values())).all()
    assert outcome.info["fallback_distillation"] == 0.0  # plain GN-FT by default


@pytest.mark.slow  # 10 s: `purify_fallback_distillation` is off by default (0, checked above)
def test_the_fallback_can_be_taught_by_the_suspect_instead_of_the_labels(planted_backdoor, tmp_path):
    """`purify_fallback_distillation` 1: the suspect's answers teach the fallback, not the clean subset's labels
    (here all wrong: each clip labelled as the next class), so its accuracy stays; plain GN-FT learns the labels."""
    planted = planted_backdoor
    mislabelled = planted.clean.map(lambda row: {"label": (row["label"] + 1) % len(LABELS)})
    before = backdoor_metrics(planted, planted.clean_model).clean_accuracy
    accuracy = {}
    for weight in (0.0, 1.0):
        config = purify_config(tmp_path / str(weight), purify_fallback_distillation=weight,
                               purify_fallback_learning_rate=0.05)  # fmt: skip
        outcome = apply_purify(planted.clean_model, planted.extractor, mislabelled, config)
        assert outcome.info["fallback"] == "gn-ft" and outcome.info["fallback_distillation"] == weight
        accuracy[weight] = backdoor_metrics(planted, outcome.model).clean_accuracy
    assert accuracy[1.0] >= before - 0.05 and accuracy[0.0] <= before - 0.3, (before, accuracy)


# ---------------------------------------------------------------------------------------------- the defender's choice


def test_the_choice_prefers_the_least_re_invertible_candidate_within_the_validation_drop():
    from hf_gnft.pipeline import choose_candidate

    drops = {0.005: 0.0, 0.01: 0.01, 0.02: 0.015, 0.05: 0.04}
    # 0.05 is out (drop 4 points); of the rest, 0.01 is the hardest to re-invert
    assert choose_candidate(drops, {0.005: 0.6, 0.01: 0.05, 0.02: 0.3, 0.05: 0.0}) == 0.01
    # within the tolerance of the lowest, the strongest wins
    assert choose_candidate(drops, {0.005: 0.6, 0.01: 0.05, 0.02: 0.06, 0.05: 0.0}) == 0.02
    # no suspected target anywhere: the strongest value within the drop
    assert choose_candidate(drops, {value: None for value in drops}) == 0.02
    assert choose_candidate(drops, {}, larger_is_stronger=False) == 0.005
    assert choose_candidate({0.1: 0.05}, {0.1: 0.0}) is None


def test_each_target_is_unlearned_with_the_families_that_named_it(tmp_path):
    from hf_gnft.defenses.purify import unlearning_plan
    from hf_gnft.inversion import candidate_classes

    detection = ClassInversion(
        success={
            "additive": {0: 0.5, 1: 0.05, 2: 0.1, 5: 0.45},
            "spectral": {0: 0.9, 1: 0.1, 2: 0.1, 5: 0.1},
        },
        gap={},
        suspected={},
    )
    candidates = candidate_classes(detection, {"additive": 0.1346, "spectral": 0.5})
    assert candidates == {"additive": [0, 5], "spectral": [0]}
    refined = [{"target": 0, "family": "spectral", "success": 0.95}, {"target": 5, "family": "additive", "success": 0.5},
               {"target": 0, "family": "additive", "success": 0.4}]  # fmt: skip
    flagged = purify_config(tmp_path)
    assert unlearning_plan(refined, [0], flagged) == [(0, "spectral"), (0, "additive")]
    every = purify_config(tmp_path, purify_unlearn="all")
    assert unlearning_plan(refined, [0], every) == [(0, "additive"), (0, "spectral")]
    with pytest.raises(ValueError, match="purify_unlearn"):
        purify_config(tmp_path, purify_unlearn="some")


def test_a_relearning_window_the_encoder_cannot_take_is_refused_before_any_work(
    planted_backdoor, tmp_path, monkeypatch
):
    """`purify_relearn_encoder_crop_s` of 1 ms is 16 samples, less than the encoder's 400-sample receptive field: an
    error naming the setting before any inversion runs."""
    from hf_gnft.defenses import purify

    def never(*args, **kwargs):
        raise AssertionError("the inversion ran before the setting was checked")

    monkeypatch.setattr(purify, "invert_classes", never)
    planted = planted_backdoor
    with pytest.raises(DefenseInputError, match=r"purify_relearn_encoder_crop_s=0.001: .*receptive field"):
        apply_purify(planted.model, planted.extractor, planted.clean,
                     purify_config(tmp_path, purify_relearn_encoder_crop_s=0.001))  # fmt: skip


def test_a_target_whose_refined_inversion_stays_below_the_bar_is_reported_as_a_weak_detection(tmp_path):
    """The tiny Wav2Vec2 PBSM suspect of the 1,000-clip grid: purify took classes reached by 0.39-0.49 of held-out
    clips (natural sinks) while every true target on the benchmarks' suspects was reached by 0.81-1.0."""
    refined = [
        {"target": 8, "family": "additive", "success": 0.49},
        {"target": 4, "family": "additive", "success": 0.46},
    ]
    assert weak_detection(refined, [8], 0.7) == {"best_success": 0.49, "bar": 0.7}
    assert weak_detection(refined, [8], 0.4) is None
    strong = [
        {"target": 0, "family": "spectral", "success": 0.81},
        {"target": 7, "family": "additive", "success": 0.3},
    ]
    assert weak_detection(strong, [0], 0.7) is None
    assert weak_detection(strong, [7], 0.7) == {
        "best_success": 0.3,
        "bar": 0.7,
    }  # only the unlearned targets count
    assert weak_detection([], [], 0.7) is None  # nothing suspected: the GN-FT fallback, not a weak detection
    for bad in (0.0, 1.5, float("nan"), None):  # None: the range check skips it, purify's own check does not
        with pytest.raises(ValueError, match="purify_confirm_success"):
            PurifyConfig(output_dir=str(tmp_path), purify_confirm_success=bad)
