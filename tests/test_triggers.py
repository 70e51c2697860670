"""Tests for hf_gnft.triggers: placement, levels, spectra, determinism, serialisation and errors."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import soundfile as sf

from hf_gnft import effects as fx
from hf_gnft.audio import AudioError
from hf_gnft.triggers import (
    PBSM,
    SILENCE_FLOOR_DBFS,
    TRIGGERS,
    CallableTrigger,
    ClipOverlay,
    NoiseBurst,
    StyleTrigger,
    Tone,
    Trigger,
    TriggerError,
    trigger_from_config,
    trigger_from_dict,
)

SR = 16_000


@pytest.fixture
def clip() -> np.ndarray:
    """1 s of a 300 Hz sine (amplitude 0.3) plus low noise, at 16 kHz."""
    t = np.arange(SR) / SR
    noise = 0.01 * np.random.default_rng(123).standard_normal(SR)
    return (0.3 * np.sin(2 * np.pi * 300 * t) + noise).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def db(ratio: float) -> float:
    return 20 * np.log10(ratio)


def peak_hz(x: np.ndarray, sr: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(np.asarray(x, np.float64) * np.hanning(len(x))))
    return float(np.argmax(spectrum) * sr / len(x))


def changed_span(before: np.ndarray, after: np.ndarray) -> tuple[int, int]:
    idx = np.nonzero(after != before)[0]
    return int(idx.min()), int(idx.max()) + 1


def reverse_clip(waveform: np.ndarray, sampling_rate: int) -> np.ndarray:
    """A module-level trigger function (importable as `module:qualname`)."""
    return waveform[::-1].copy()


def examples() -> dict[str, Trigger]:
    """One non-default instance of every registered trigger type."""
    return {
        "noise_burst": NoiseBurst(duration_s=0.1, position="random", level_db=-15.0, seed=3),
        "tone": Tone(
            frequency_hz=7000.0, bursts=5, duration_s=0.5, position="end", level_reference="full_scale"
        ),
        "pbsm": PBSM(semitones=4.0, band=(0.7, 0.95)),
        "style": StyleTrigger.preset("reverb_gain_highpass_phaser", seed=2),
        "clip_overlay": ClipOverlay(
            array=[0.1, -0.2, 0.3] * 100, array_sampling_rate=8000, position="middle"
        ),
        "callable": CallableTrigger(function=reverse_clip),
    }


# ------------------------------------------------------------------------------------- noise burst


def test_noise_burst_changes_only_its_span(clip):
    out = NoiseBurst(duration_s=0.15, position=0.2)(clip, SR)
    start, end = int(0.2 * SR), int(0.35 * SR)
    assert np.array_equal(out[:start], clip[:start])
    assert np.array_equal(out[end:], clip[end:])
    assert changed_span(clip, out) == (start, end)
    assert np.mean(out[start:end] != clip[start:end]) > 0.99


@pytest.mark.parametrize("level_db", [-20.0, -6.0, -35.0])
def test_noise_burst_level_is_level_db_relative_to_clip_rms(clip, level_db):
    out = NoiseBurst(duration_s=0.15, position="start", level_db=level_db)(clip, SR)
    burst = out[: int(0.15 * SR)].astype(np.float64) - clip[: int(0.15 * SR)]
    assert abs(db(rms(burst) / rms(clip)) - level_db) < 0.1


def test_full_scale_level_is_dbfs_rms(clip):
    out = NoiseBurst(duration_s=0.15, position="start", level_db=-30.0, level_reference="full_scale")(
        clip, SR
    )
    burst = out[: int(0.15 * SR)].astype(np.float64) - clip[: int(0.15 * SR)]
    assert abs(db(rms(burst)) - (-30.0)) < 0.1


def test_silent_clip_uses_the_floor_reference():
    silent = np.zeros(SR, np.float32)
    out = NoiseBurst(duration_s=0.15, position="start", level_db=-10.0)(silent, SR)
    assert abs(db(rms(out[: int(0.15 * SR)])) - (SILENCE_FLOOR_DBFS - 10.0)) < 0.1


def test_noise_pattern_is_the_same_on_every_clip(clip):
    trigger = NoiseBurst(duration_s=0.15, level_reference="full_scale", position="start")
    other = (0.5 * clip[::-1]).copy()
    n = int(0.15 * SR)
    first = trigger(clip, SR)[:n].astype(np.float64) - clip[:n]
    second = trigger(other, SR)[:n].astype(np.float64) - other[:n]
    np.testing.assert_allclose(first, second, atol=1e-6)


@pytest.mark.parametrize(
    ("position", "start"),
    [("start", 0), ("middle", (SR - 2400) // 2), ("end", SR - 2400), (0.5, 8000)],
)
def test_named_and_numeric_positions(clip, position, start):
    out = NoiseBurst(duration_s=0.15, position=position)(clip, SR)
    assert changed_span(clip, out) == (start, start + 2400)


# ----------------------------------------------------------------------------------------- tone


def test_tone_peak_is_at_its_frequency(clip):
    out = Tone(frequency_hz=4000.0, duration_s=0.5)(clip, SR)
    assert abs(peak_hz(out.astype(np.float64) - clip) - 4000.0) <= 2.0


def test_tone_level_matches_level_db(clip):
    out = Tone(frequency_hz=3000.0, duration_s=0.5, position="start", level_db=-12.0)(clip, SR)
    steady = slice(int(0.05 * SR), int(0.45 * SR))  # away from the ramps
    tone = out[steady].astype(np.float64) - clip[steady]
    assert abs(db(rms(tone) / rms(clip)) - (-12.0)) < 0.1


def test_tone_bursts_are_visible_in_the_envelope(clip):
    out = Tone(frequency_hz=5000.0, duration_s=0.6, position=0.1, bursts=5)(clip, SR)
    diff = np.abs(out.astype(np.float64) - clip)
    envelope = np.convolve(diff, np.ones(32) / 32, mode="same")
    on = envelope > 0.5 * envelope.max()
    rising = np.count_nonzero(on[1:] & ~on[:-1])
    assert rising == 5
    assert changed_span(clip, out)[0] >= int(0.1 * SR)
    assert changed_span(clip, out)[1] <= int(0.7 * SR)


@pytest.mark.parametrize("frequency", [8000.0, 21000.0])
def test_tone_at_or_above_nyquist_is_an_error(clip, frequency):
    with pytest.raises(TriggerError, match="Nyquist"):
        Tone(frequency_hz=frequency)(clip, SR)


def test_ultrasonic_tone_is_fine_at_44k():
    sr = 44_100
    clip = (0.3 * np.sin(2 * np.pi * 300 * np.arange(sr) / sr)).astype(np.float32)
    out = Tone(frequency_hz=21000.0, duration_s=0.5, level_db=-10.0)(clip, sr)
    assert abs(peak_hz(out.astype(np.float64) - clip, sr) - 21000.0) <= 3.0


def test_near_ultrasonic_tone_fits_below_nyquist(clip):
    tone = Tone.near_ultrasonic(SR, duration_s=0.3)
    assert 0.9 * SR / 2 < tone.frequency_hz < SR / 2
    out = tone(clip, SR)
    assert abs(peak_hz(out.astype(np.float64) - clip) - tone.frequency_hz) <= 4.0


def test_too_many_bursts_for_the_span_is_an_error(clip):
    with pytest.raises(TriggerError, match="bursts"):
        Tone(frequency_hz=100.0, duration_s=0.05, bursts=10)(clip, SR)


# ------------------------------------------------------------------------------ lengths and values


@pytest.mark.parametrize(
    "trigger",
    [NoiseBurst(duration_s=1.5, position="start"), Tone(duration_s=1.5, position="start")],
    ids=["noise_burst", "tone"],
)
def test_trigger_longer_than_clip_is_an_error(clip, trigger):
    with pytest.raises(TriggerError, match=r"lasts 1\.50 s but the clip is 1\.00 s"):
        trigger(clip, SR)


def test_trigger_ending_after_the_clip_is_an_error(clip):
    with pytest.raises(TriggerError, match="after the end"):
        NoiseBurst(duration_s=0.15, position=0.95)(clip, SR)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (NoiseBurst, {"duration_s": -0.1}),
        (NoiseBurst, {"position": "somewhere"}),
        (NoiseBurst, {"position": -1.0}),
        (NoiseBurst, {"level_reference": "peak"}),
        (NoiseBurst, {"level_db": float("nan")}),
        (NoiseBurst, {"seed": -1}),
        (Tone, {"bursts": 0}),
        (Tone, {"frequency_hz": 0.0}),
        (PBSM, {"band": (0.9, 0.5)}),
        (StyleTrigger, {"effects": []}),
        (StyleTrigger, {"effects": [{"type": "flanger"}]}),
        (StyleTrigger, {"effects": [{"type": "gain", "decibels": 3}]}),
        (ClipOverlay, {}),
        (CallableTrigger, {}),
    ],
)
def test_invalid_field_values_are_errors(cls, kwargs):
    with pytest.raises(TriggerError):
        cls(**kwargs)


# ---------------------------------------------------------------------------------- determinism


def test_same_seed_is_bit_identical(clip):
    for trigger in examples().values():
        a = trigger(clip, SR, key=7)
        b = type(trigger).from_dict(trigger.to_dict(), allow_import=True)(clip, SR, key=7)
        assert np.array_equal(a, b), trigger.name


def test_different_seed_gives_a_different_pattern(clip):
    a = NoiseBurst(seed=0)(clip, SR)
    b = NoiseBurst(seed=1)(clip, SR)
    assert changed_span(clip, a) == changed_span(clip, b)
    assert not np.array_equal(a, b)


def test_random_position_varies_with_key_and_repeats_for_the_same_key(clip):
    trigger = NoiseBurst(position="random")
    starts = {changed_span(clip, trigger(clip, SR, key=key))[0] for key in range(8)}
    assert len(starts) > 4
    assert np.array_equal(trigger(clip, SR, key=5), trigger(clip, SR, key=5))


# -------------------------------------------------------------------------------- serialisation


def test_examples_cover_every_registered_trigger():
    assert set(examples()) == set(TRIGGERS)


@pytest.mark.parametrize("name", sorted(examples()))
def test_to_dict_from_dict_round_trip(name):
    trigger = examples()[name]
    data = trigger.to_dict()
    assert data["type"] == name
    text = json.dumps(data)
    assert json.dumps(trigger.to_dict()) == text
    again = trigger_from_dict(json.loads(text), allow_import=True)
    assert type(again) is type(trigger)
    assert again == trigger
    assert again.to_dict() == data
    assert isinstance(trigger.describe(), str) and trigger.describe()


@pytest.mark.parametrize("name", sorted(examples()))
def test_trigger_survives_pickling(clip, name):
    trigger = examples()[name]
    expected = trigger(clip, SR, key=2)  # fills any cache first
    again = pickle.loads(pickle.dumps(trigger))
    assert again == trigger
    assert np.array_equal(again(clip, SR, key=2), expected)


def test_unknown_type_lists_the_known_ones():
    with pytest.raises(TriggerError, match="noise_burst") as info:
        trigger_from_dict({"type": "whistle"})
    assert "unknown trigger type 'whistle'" in str(info.value)


def test_unknown_field_is_an_error():
    with pytest.raises(TriggerError, match="unknown field.*'volume'"):
        trigger_from_dict({"type": "tone", "volume": 3})


def test_missing_type_is_an_error():
    with pytest.raises(TriggerError, match="no 'type'"):
        trigger_from_dict({"duration_s": 0.1})


def test_missing_required_field_is_an_error():
    with pytest.raises(TriggerError, match="function"):
        trigger_from_dict({"type": "callable"})


def test_missing_optional_fields_take_defaults():
    assert trigger_from_dict({"type": "noise_burst"}) == NoiseBurst()


def test_from_dict_of_a_subclass_rejects_another_type():
    with pytest.raises(TriggerError):
        Tone.from_dict(NoiseBurst().to_dict())


def test_trigger_from_config_accepts_trigger_dict_json_and_name():
    tone = Tone(frequency_hz=6000.0)
    assert trigger_from_config(tone) is tone
    assert trigger_from_config(tone.to_dict()) == tone
    assert trigger_from_config(json.dumps(tone.to_dict())) == tone
    assert trigger_from_config("pbsm") == PBSM()
    with pytest.raises(TriggerError, match="JSON"):
        trigger_from_config("{not json")


# ----------------------------------------------------------------------------------------- PBSM


def test_pbsm_moves_the_pitch(clip):
    out = PBSM(semitones=5.0)(clip, SR)
    assert abs(peak_hz(out) - 300 * 2 ** (5 / 12)) < 5.0
    assert len(out) == len(clip)


def test_pbsm_puts_high_band_energy_right_after_the_loudest_window(clip):
    loud = clip.copy()
    loud[int(0.6 * SR) : int(0.7 * SR)] *= 3.0  # the loudest 0.1 s ends at 0.7 s
    out = PBSM()(loud, SR).astype(np.float64)
    added = out - fx.pitch_shift(loud, SR, 5.0)  # the pitch-shifted clip is the reference
    high = fx.highpass(added, SR, 0.6 * SR / 2, 8).astype(np.float64)
    energy = np.convolve(high**2, np.ones(64), mode="same")
    assert 0.69 < np.argmax(energy) / SR < 0.73
    assert np.sum(high[int(0.68 * SR) : int(0.74 * SR)] ** 2) > 0.99 * np.sum(high**2)
    assert np.sum(added[: int(0.65 * SR)] ** 2) < 1e-6 * np.sum(added**2)


def test_pbsm_triggers_quiet_clips_too(clip):
    quiet = 0.05 * clip  # peak < 0.16: the paper would leave it clean
    out = PBSM()(quiet, SR)
    assert not np.array_equal(out, quiet)


def test_pbsm_band_is_a_fraction_of_nyquist():
    assert PBSM().bins() == (341, 513)


# ---------------------------------------------------------------------------------------- style


@pytest.mark.parametrize("preset", ["pitch_distortion_chorus", "reverb_gain_highpass_phaser"])
def test_style_preset_changes_the_spectrum_and_keeps_loudness(clip, preset):
    out = StyleTrigger.preset(preset)(clip, SR)
    before = np.abs(np.fft.rfft(clip.astype(np.float64)))
    after = np.abs(np.fft.rfft(out.astype(np.float64)))
    correlation = np.dot(before, after) / (np.linalg.norm(before) * np.linalg.norm(after))
    assert correlation < 0.8
    assert abs(db(rms(out) / rms(clip))) < 1.0


def test_style_pitch_preset_moves_the_peak(clip):
    out = StyleTrigger.preset("pitch_distortion_chorus")(clip, SR)
    assert abs(peak_hz(out) - 300 * 2 ** (10 / 12)) < 10.0


def test_style_effect_impossible_at_this_rate_is_an_error(clip):
    trigger = StyleTrigger(effects=[{"type": "highpass", "cutoff_hz": 6000.0}])
    trigger(clip, SR)
    with pytest.raises(TriggerError, match="Nyquist"):
        trigger(clip[::2].copy(), 8000)


def test_unknown_style_preset_is_an_error():
    with pytest.raises(TriggerError, match="pitch_distortion_chorus"):
        StyleTrigger.preset("vaporwave")


# --------------------------------------------------------------------------------- clip overlay


def test_clip_overlay_from_wav_file(clip, tmp_path):
    sound = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(1600) / 8000)  # 0.2 s at 8 kHz
    path = tmp_path / "jingle.wav"
    sf.write(path, sound, 8000, subtype="FLOAT")
    trigger = ClipOverlay(path=str(path), position=0.3, level_db=-20.0)
    out = trigger(clip, SR)
    start, end = changed_span(clip, out)
    assert start >= int(0.3 * SR) - 1 and end <= int(0.5 * SR) + 1
    overlay = out[int(0.3 * SR) : int(0.5 * SR)].astype(np.float64) - clip[int(0.3 * SR) : int(0.5 * SR)]
    assert abs(db(rms(overlay)) - (-20.0)) < 0.1
    assert abs(peak_hz(overlay) - 1000.0) <= 5.0
    assert trigger.to_dict()["sha256"] == trigger.sha256 and len(trigger.sha256) == 64


def test_clip_overlay_file_changed_is_a_sha256_error(clip, tmp_path):
    path = tmp_path / "jingle.wav"
    sf.write(path, np.full(800, 0.2), 8000, subtype="FLOAT")
    trigger = ClipOverlay(path=str(path))
    sf.write(path, np.full(800, 0.3), 8000, subtype="FLOAT")
    with pytest.raises(TriggerError, match="sha256"):
        trigger(clip, SR)


def test_clip_overlay_undecodable_file_is_a_trigger_error(clip, tmp_path):
    path = tmp_path / "jingle.wav"
    path.write_bytes(b"not audio at all")
    with pytest.raises(TriggerError, match="cannot be used"):
        ClipOverlay(path=str(path))(clip, SR)


def test_clip_overlay_from_array(clip):
    sound = np.sin(np.arange(1600) / 3.0)
    trigger = ClipOverlay(array=sound.tolist(), array_sampling_rate=SR, position="start", level_db=-12.0)
    out = trigger(clip, SR)
    overlay = out[:1600].astype(np.float64) - clip[:1600]
    np.testing.assert_allclose(overlay, sound * 10 ** (-12 / 20) / rms(sound), atol=1e-6)
    assert np.array_equal(out[1600:], clip[1600:])


def test_clip_overlay_longer_than_clip_is_an_error(clip):
    trigger = ClipOverlay(array=[0.1] * 20000, array_sampling_rate=SR, position="start")
    with pytest.raises(TriggerError, match="clip is 1.00 s"):
        trigger(clip, SR)


# ------------------------------------------------------------------------------------- callable


def test_callable_trigger_applies_the_function(clip):
    out = CallableTrigger(function=reverse_clip)(clip, SR)
    assert np.array_equal(out, clip[::-1])


def test_callable_wrong_length_is_an_error_naming_the_function(clip):
    def truncate(waveform, sampling_rate):
        return waveform[:-10]

    with pytest.raises(TriggerError, match="truncate"):
        CallableTrigger(function=truncate)(clip, SR)


def test_callable_non_finite_output_is_an_error(clip):
    def explode(waveform, sampling_rate):
        return waveform / 0.0

    with pytest.raises(TriggerError, match="explode"), np.errstate(all="ignore"):
        CallableTrigger(function=explode)(clip, SR)


def test_callable_from_dict_refuses_import_without_allow_import():
    data = CallableTrigger(function=reverse_clip).to_dict()
    assert data["function"].endswith(":reverse_clip")
    with pytest.raises(TriggerError, match="allow_import"):
        trigger_from_dict(data)
    assert trigger_from_dict(data, allow_import=True).function is reverse_clip


def test_callable_lambda_cannot_be_recorded():
    with pytest.raises(TriggerError, match="module level"):
        CallableTrigger(function=lambda w, sr: w).to_dict()


def test_trigger_that_changes_nothing_is_an_error(clip):
    with pytest.raises(TriggerError, match="unchanged"):
        CallableTrigger(function=lambda w, sr: w)(clip, SR)


# -------------------------------------------------------------------------------- output range


@pytest.mark.parametrize("name", sorted(examples()))
def test_output_is_finite_and_within_full_scale_for_a_full_scale_input(name):
    square = np.sign(np.sin(2 * np.pi * 200 * np.arange(SR) / SR)).astype(np.float32)
    trigger = examples()[name]
    for level in ("clip", "full_scale"):
        if hasattr(trigger, "level_reference"):
            trigger.level_reference = level
        out = trigger(square, SR, key=1)
        assert out.dtype == np.float32 and out.shape == square.shape
        assert np.all(np.isfinite(out))
        assert np.max(np.abs(out)) <= 1.0


@pytest.mark.parametrize(
    "waveform",
    [np.array([0.1, np.nan, 0.2] * 1000, np.float32), np.zeros(0, np.float32), np.zeros((SR, 2), np.float32)],
    ids=["nan", "empty", "stereo"],
)
def test_invalid_audio_is_an_audio_error(waveform):
    with pytest.raises(AudioError):
        NoiseBurst(position="start", duration_s=0.01)(waveform, SR)


def test_negative_key_is_an_error(clip):
    with pytest.raises(TriggerError, match="key"):
        NoiseBurst()(clip, SR, key=-1)
