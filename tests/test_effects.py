"""Tests for hf_gnft.effects: each effect keeps the length and does what its name says."""

from __future__ import annotations

import numpy as np
import pytest

from hf_gnft import effects as fx

SR = 16_000


def sine(freq: float, amplitude: float = 0.5, sr: int = SR, seconds: float = 1.0) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(np.asarray(x, np.float64) * np.hanning(len(x))))
    return float(np.argmax(spectrum) * sr / len(x))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize(("semitones", "expected"), [(12, 880.0), (-12, 220.0), (5, 440 * 2 ** (5 / 12))])
def test_pitch_shift_moves_the_peak_and_keeps_length(semitones, expected):
    out = fx.pitch_shift(sine(440.0), SR, semitones)
    assert out.shape == (SR,)
    assert abs(peak_hz(out) - expected) < 3.0


def test_stft_istft_reconstructs():
    x = np.random.default_rng(0).standard_normal(5000)
    spec = fx.stft(x, 1024, 128, 256)
    np.testing.assert_allclose(fx.istft(spec, 128, x.size, 256), x, atol=1e-10)


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "pitch_shift", "semitones": 3},
        {"type": "distortion", "drive_db": 30},
        {"type": "chorus"},
        {"type": "reverb"},
        {"type": "highpass"},
        {"type": "phaser"},
        {"type": "gain", "db": -6},
    ],
    ids=lambda spec: spec["type"],
)
def test_every_effect_keeps_length_is_deterministic_and_changes_the_signal(spec):
    x = sine(300.0) + 0.01 * np.random.default_rng(1).standard_normal(SR).astype(np.float32)
    a = fx.apply_effects(x, SR, [spec])
    assert a.shape == x.shape and a.dtype == np.float32 and np.all(np.isfinite(a))
    assert np.array_equal(a, fx.apply_effects(x, SR, [spec]))
    assert not np.allclose(a, x, atol=1e-3)


def test_distortion_is_bounded_soft_clipping():
    out = fx.distortion(sine(200.0, 0.9), 30.0)
    assert np.max(np.abs(out)) <= 1.0
    assert rms(out) > 0.9  # a 30 dB drive turns the sine almost into a square wave


def test_highpass_removes_low_frequencies():
    low, high = fx.highpass(sine(100.0), SR, 1000.0), fx.highpass(sine(4000.0), SR, 1000.0)
    assert rms(low[SR // 2 :]) < 0.01 * rms(sine(100.0))
    assert abs(rms(high[SR // 2 :]) / rms(sine(4000.0)) - 1) < 0.05


def test_reverb_depends_on_seed_and_adds_a_tail():
    impulse = np.zeros(SR, np.float32)
    impulse[0] = 1.0
    a, b = fx.reverb(impulse, SR, seed=0), fx.reverb(impulse, SR, seed=1)
    assert not np.array_equal(a, b)
    assert np.any(np.abs(a[SR // 10 : SR // 5]) > 0)


def test_gain_scales_by_decibels():
    np.testing.assert_allclose(fx.gain(sine(300.0), 6.0), sine(300.0) * 10 ** (6 / 20), rtol=1e-6)


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "highpass", "cutoff_hz": 9000.0},
        {"type": "chorus", "depth_ms": 20.0, "delay_ms": 10.0},
        {"type": "phaser", "mix": 2.0},
        {"type": "flanger"},
        {"type": "gain"},
        {"type": "gain", "db": 3, "volume": 1},
    ],
)
def test_invalid_effect_is_a_value_error(spec):
    with pytest.raises(ValueError):
        fx.apply_effects(sine(300.0), SR, [spec])
