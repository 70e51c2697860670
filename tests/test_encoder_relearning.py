"""Re-learning the convolutional feature encoder (`hf_gnft.defenses.encoder_relearning`, a stage of purify): it
reproduces the suspect's encoder on clean clips from a fresh start, touches nothing else, and a backdoor keyed to
one exact waveform does not survive it."""

from __future__ import annotations

import copy

import pytest
import torch
from testing_utils import sine_dataset

from hf_gnft.defenses.encoder_relearning import (
    encoder_error,
    feature_encoder,
    relearn_feature_encoder,
    relearn_upper_layers,
    set_encoder_trainable,
)
from hf_gnft.training import audio_batches, evaluate_backdoor


def _batches(planted, rows=None):
    clips = planted.clean if rows is None else sine_dataset(num_rows=rows, seconds=0.3, seed=3)
    return list(audio_batches(clips, planted.extractor, 16))


def test_relearning_reproduces_the_suspects_encoder_from_scratch_and_touches_nothing_else(planted_backdoor):
    teacher = planted_backdoor.model
    snapshot = {key: value.clone() for key, value in teacher.state_dict().items()}
    student = copy.deepcopy(teacher)
    set_encoder_trainable(
        student, False
    )  # frozen before: re-learning trains it anyway, and leaves it trainable
    record = relearn_feature_encoder(
        student, teacher, _batches(planted_backdoor), steps=150, learning_rate=0.005
    )
    assert record["steps"] == 150 and record["seconds"] > 0
    assert record["error_end"] < 0.5 * record["error_start"]  # it learns the suspect's encoder outputs
    for key, value in teacher.state_dict().items():  # the teacher is untouched
        torch.testing.assert_close(value, snapshot[key])
    encoder_keys = {
        f"wav2vec2.feature_extractor.{name}" for name, _ in feature_encoder(student).named_parameters()
    }
    changed = {key for key, value in student.state_dict().items() if not torch.equal(value, snapshot[key])}
    assert changed == encoder_keys  # only the encoder moved, all of it
    assert all(parameter.requires_grad for parameter in feature_encoder(student).parameters())
    # reproducible: the same seed gives the same encoder
    again = copy.deepcopy(teacher)
    relearn_feature_encoder(again, teacher, _batches(planted_backdoor), steps=150, learning_rate=0.005)
    torch.testing.assert_close(again.state_dict(), student.state_dict())


def test_relearning_on_clean_clips_removes_a_backdoor_keyed_to_one_waveform(planted_backdoor):
    """The twin's noise burst lives in its encoder: a fresh encoder taught the suspect's outputs on clean clips only
    loses it, while the clips' accuracy stays."""
    planted = planted_backdoor

    def metrics(model):
        return evaluate_backdoor(model, planted.extractor, planted.test, planted.triggered, planted.target)

    before = metrics(planted.model)
    student = copy.deepcopy(planted.model)
    relearn_feature_encoder(
        student, planted.model, _batches(planted, rows=96), steps=400, learning_rate=0.005
    )
    after = metrics(student)
    assert before.attack_success_rate >= 0.9
    assert after.attack_success_rate <= 0.3
    assert after.clean_accuracy >= before.clean_accuracy - 0.15


@pytest.mark.slow
def test_a_crop_shows_the_encoders_windows_only_and_still_reproduces_whole_clips(planted_backdoor):
    """Re-learning on windows of half of each clip: both encoders only ever see windows of that length, and with twice
    the steps (the same samples) the new encoder reproduces the suspect's on whole held-out clips: a twentieth of a
    fresh encoder's error, within twice that of re-learning on whole clips (0.021 against 0.012 on these 0.3 s clips,
    whose 0.15 s windows give the first layer's per-channel normalisation fewer frames; on the grid's one-second
    clips 0.25 s windows did better than whole clips, docs/lasting.md)."""
    teacher, batches = planted_backdoor.model, _batches(planted_backdoor)
    held_out = list(audio_batches(planted_backdoor.test, planted_backdoor.extractor, 32))
    length = batches[0]["input_values"].shape[-1]
    crop = length // 2
    seen = {"teacher": [], "student": []}
    cropped = copy.deepcopy(teacher)
    hooks = [feature_encoder(model).register_forward_pre_hook(lambda _, args, name=name: seen[name].append(args[0].shape[-1]))
             for name, model in (("teacher", teacher), ("student", cropped))]  # fmt: skip
    try:
        record = relearn_feature_encoder(cropped, teacher, batches, steps=600, learning_rate=0.005, crop=crop)
    finally:
        for hook in hooks:
            hook.remove()
    assert record["crop"] == crop
    assert len(seen["student"]) == 600 and set(seen["student"]) == {crop}
    assert len(seen["teacher"]) == 601 and set(seen["teacher"]) == {crop}  # and the receptive-field check's
    whole = copy.deepcopy(teacher)
    relearn_feature_encoder(whole, teacher, batches, steps=300, learning_rate=0.005)
    fresh = copy.deepcopy(teacher)
    relearn_feature_encoder(fresh, teacher, batches, steps=1, learning_rate=1e-9)
    errors = {name: encoder_error(model, teacher, held_out) for name, model in
              (("cropped", cropped), ("whole", whole), ("fresh", fresh))}  # fmt: skip
    print(errors)
    assert errors["cropped"] < 0.05 * errors["fresh"]
    assert errors["cropped"] < 2 * errors["whole"]
    # a crop as long as the clips is no crop
    same = copy.deepcopy(teacher)
    relearn_feature_encoder(same, teacher, batches, steps=20, learning_rate=0.005, crop=length)
    plain = copy.deepcopy(teacher)
    relearn_feature_encoder(plain, teacher, batches, steps=20, learning_rate=0.005)
    torch.testing.assert_close(same.state_dict(), plain.state_dict())


def test_models_without_a_waveform_encoder_and_bad_settings_are_refused(planted_backdoor):
    teacher = planted_backdoor.model
    mfcc_like = torch.nn.Sequential(torch.nn.Linear(4, 2))
    assert feature_encoder(mfcc_like) is None
    set_encoder_trainable(mfcc_like, False)  # nothing to freeze: no error
    with pytest.raises(ValueError, match="convolutional waveform encoder"):
        relearn_feature_encoder(mfcc_like, teacher, _batches(planted_backdoor), steps=1, learning_rate=0.01)
    with pytest.raises(ValueError, match="clean clips"):
        relearn_feature_encoder(copy.deepcopy(teacher), teacher, [], steps=1, learning_rate=0.01)
    with pytest.raises(ValueError, match="steps"):
        relearn_feature_encoder(copy.deepcopy(teacher), teacher, _batches(planted_backdoor), steps=0,
                                learning_rate=0.01)  # fmt: skip
    for crop in (0, 100):  # nothing, and less than the encoder's 400-sample receptive field
        with pytest.raises(ValueError, match="crop"):
            relearn_feature_encoder(copy.deepcopy(teacher), teacher, _batches(planted_backdoor), steps=1,
                                    learning_rate=0.01, crop=crop)  # fmt: skip


def test_upper_relearning_reproduces_the_suspects_hidden_states_and_keeps_encoder_and_head(planted_backdoor):
    teacher = planted_backdoor.model
    snapshot = {key: value.clone() for key, value in teacher.state_dict().items()}
    student = copy.deepcopy(teacher)
    record = relearn_upper_layers(
        student, teacher, _batches(planted_backdoor), steps=150, learning_rate=0.002
    )
    assert record["steps"] == 150 and record["error_end"] < 0.5 * record["error_start"]
    for key, value in teacher.state_dict().items():  # the teacher is untouched
        torch.testing.assert_close(value, snapshot[key])
    changed = {key for key, value in student.state_dict().items() if not torch.equal(value, snapshot[key])}
    assert not any(
        key.startswith(("wav2vec2.feature_extractor.", "projector.", "classifier.")) for key in changed
    )
    assert any(key.startswith("wav2vec2.encoder.layers.") for key in changed)
    assert any(
        key.startswith("wav2vec2.encoder.pos_conv_embed.") for key in changed
    )  # parametrised, re-drawn too
    assert any(key.startswith("wav2vec2.feature_projection.") for key in changed)
    assert all(parameter.requires_grad for parameter in student.parameters())  # trains like any model after
    with pytest.raises(ValueError, match="steps must be an integer"):
        relearn_upper_layers(student, teacher, _batches(planted_backdoor), steps=0, learning_rate=0.002)
