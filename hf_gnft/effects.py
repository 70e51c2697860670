"""Audio effects for style triggers, written with numpy and scipy only.

Every effect is a pure, deterministic function of a mono waveform: it returns a float32 array of the same
length (effects that need randomness, such as `reverb`, take a `seed`). They implement the effect chains of
JingleBack ("Going in Style", Koffas et al., ICASSP 2023) without the GPL-licensed pedalboard: the
algorithms are textbook ones (phase vocoder, tanh soft clipping, modulated delay line, noise-impulse
convolution reverb, Butterworth high-pass, swept all-pass phaser), so the sound is close to, not identical
with, pedalboard's.

Effects raise `ValueError` for parameters that cannot work (a cutoff at or above the Nyquist frequency, a
negative mix...). `EFFECTS` maps names to functions and `apply_effects` runs a chain of
`{"type": name, **params}` dicts, the format used by `hf_gnft.triggers.StyleTrigger`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import signal

__all__ = [
    "EFFECTS",
    "apply_effects",
    "chorus",
    "distortion",
    "gain",
    "highpass",
    "istft",
    "phaser",
    "pitch_shift",
    "reverb",
    "stft",
    "time_stretch",
    "validate_effect",
]


def _mono(waveform: np.ndarray) -> np.ndarray:
    x = np.asarray(waveform)
    if x.ndim != 1:
        raise ValueError(f"effects need a mono (1-D) waveform, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"effects need floating-point samples, got {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError("effects need finite samples (the waveform contains NaN or infinite values)")
    return x.astype(np.float64)


def _finite(value: Any, name: str, *, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low:g}, got {value:g}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high:g}, got {value:g}")
    return value


def _rate(sr: Any) -> int:
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise ValueError(f"sampling rate must be a positive integer in Hz, got {sr!r}")
    return int(sr)


def _below_nyquist(freq: float, sr: int, name: str) -> None:
    if not 0 < freq < sr / 2:
        raise ValueError(
            f"{name} {freq:g} Hz must be between 0 and the Nyquist frequency {sr / 2:g} Hz of {sr} Hz audio"
        )


# --------------------------------------------------------------------------------------------- STFT


def _window(n_fft: int, win_length: int) -> np.ndarray:
    win = np.zeros(n_fft)
    left = (n_fft - win_length) // 2
    win[left : left + win_length] = signal.windows.hann(win_length, sym=False)
    return win


def _check_stft_sizes(n_fft: int, hop_length: int, win_length: int) -> None:
    for value, name in ((n_fft, "n_fft"), (hop_length, "hop_length"), (win_length, "win_length")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if win_length > n_fft:
        raise ValueError(f"win_length ({win_length}) must not exceed n_fft ({n_fft})")
    if hop_length > win_length // 2:
        raise ValueError(f"hop_length ({hop_length}) must be at most win_length / 2 ({win_length // 2})")


def stft(waveform: np.ndarray, n_fft: int, hop_length: int, win_length: int | None = None) -> np.ndarray:
    """Centred short-time Fourier transform with a periodic Hann window.

    The signal is zero-padded by `n_fft // 2` on the left (frame `t` is centred on sample `t * hop_length`)
    and on the right so that every sample is covered.

    Args:
        waveform: mono samples.
        n_fft: FFT size.
        hop_length: hop between frames, in samples.
        win_length: Hann window length (centred inside `n_fft`); defaults to `n_fft`.

    Returns:
        A complex array of shape `(num_frames, n_fft // 2 + 1)`.
    """
    win_length = n_fft if win_length is None else win_length
    _check_stft_sizes(n_fft, hop_length, win_length)
    x = _mono(waveform)
    num_frames = 1 + -(-x.size // hop_length)
    padded = np.zeros((num_frames - 1) * hop_length + n_fft)
    padded[n_fft // 2 : n_fft // 2 + x.size] = x
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length][:num_frames]
    return np.fft.rfft(frames * _window(n_fft, win_length), axis=1)


def istft(spectrogram: np.ndarray, hop_length: int, length: int, win_length: int | None = None) -> np.ndarray:
    """Inverse of `stft` (weighted overlap-add), trimmed or zero-padded to `length` samples.

    Args:
        spectrogram: complex array `(num_frames, n_fft // 2 + 1)`.
        hop_length: hop between frames, in samples.
        length: number of output samples.
        win_length: the window length used by `stft`; defaults to `n_fft`.

    Returns:
        A float64 array of `length` samples.
    """
    spectrogram = np.asarray(spectrogram)
    n_fft = 2 * (spectrogram.shape[1] - 1)
    win_length = n_fft if win_length is None else win_length
    _check_stft_sizes(n_fft, hop_length, win_length)
    win = _window(n_fft, win_length)
    frames = np.fft.irfft(spectrogram, n=n_fft, axis=1) * win
    total = (frames.shape[0] - 1) * hop_length + n_fft
    out = np.zeros(total)
    norm = np.zeros(total)
    win_sq = win**2
    for index, frame in enumerate(frames):
        out[index * hop_length : index * hop_length + n_fft] += frame
        norm[index * hop_length : index * hop_length + n_fft] += win_sq
    out = out / np.where(norm > 1e-10, norm, 1.0)
    out = out[n_fft // 2 :]
    if out.size < length:
        out = np.pad(out, (0, length - out.size))
    return out[:length]


# ------------------------------------------------------------------------------------------ effects


def time_stretch(
    waveform: np.ndarray, rate: float, *, n_fft: int = 1024, hop_length: int = 256
) -> np.ndarray:
    """Change the duration without changing the pitch (phase vocoder).

    Frames are read at fractional positions `0, rate, 2 * rate, ...`; magnitudes are interpolated between
    neighbouring frames and each bin's phase advances by its measured instantaneous frequency.

    Args:
        waveform: mono samples.
        rate: speed factor (> 1 is shorter, < 1 longer).
        n_fft: FFT size of the vocoder.
        hop_length: hop between frames.

    Returns:
        A float32 array of `round(len(waveform) / rate)` samples.
    """
    rate = _finite(rate, "rate")
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate:g}")
    x = _mono(waveform)
    length = max(1, int(round(x.size / rate)))
    spec = stft(x, n_fft, hop_length)
    spec = np.concatenate([spec, np.zeros((1, spec.shape[1]), dtype=spec.dtype)])
    steps = np.arange(0.0, spec.shape[0] - 1, rate)
    index = steps.astype(int)
    frac = (steps - index)[:, None]
    magnitude = np.abs(spec)
    angle = np.angle(spec)
    mags = (1.0 - frac) * magnitude[index] + frac * magnitude[index + 1]
    expected = 2.0 * np.pi * hop_length * np.arange(spec.shape[1]) / n_fft
    deviation = angle[index + 1] - angle[index] - expected
    deviation -= 2.0 * np.pi * np.round(deviation / (2.0 * np.pi))
    advance = expected + deviation
    phase = angle[0] + np.concatenate([np.zeros((1, spec.shape[1])), np.cumsum(advance[:-1], axis=0)])
    return istft(mags * np.exp(1j * phase), hop_length, length).astype(np.float32)


def pitch_shift(
    waveform: np.ndarray, sr: int, semitones: float, *, n_fft: int = 1024, hop_length: int = 256
) -> np.ndarray:
    """Shift the pitch by `semitones`, keeping the length and duration.

    The clip is time-stretched by the pitch factor `2 ** (semitones / 12)` with a phase vocoder, then
    resampled (FFT resampling) back to the original number of samples, which scales every frequency by the
    factor.

    Args:
        waveform: mono samples.
        sr: sampling rate in Hz (only checked: the shift is relative).
        semitones: shift in semitones (+12 doubles every frequency); at most 36 either way.
        n_fft: FFT size of the phase vocoder.
        hop_length: hop of the phase vocoder.

    Returns:
        A float32 array of the same length.
    """
    _rate(sr)
    semitones = _finite(semitones, "semitones", low=-36, high=36)
    x = _mono(waveform)
    if semitones == 0:
        return x.astype(np.float32)
    factor = 2.0 ** (semitones / 12.0)
    stretched = time_stretch(x, 1.0 / factor, n_fft=n_fft, hop_length=hop_length)
    return signal.resample(stretched.astype(np.float64), x.size).astype(np.float32)


def gain(waveform: np.ndarray, db: float) -> np.ndarray:
    """Multiply by `10 ** (db / 20)`.

    Args:
        waveform: mono samples.
        db: gain in decibels.

    Returns:
        A float32 array (not clipped).
    """
    db = _finite(db, "db", low=-120, high=120)
    return (_mono(waveform) * 10.0 ** (db / 20.0)).astype(np.float32)


def distortion(waveform: np.ndarray, drive_db: float = 25.0) -> np.ndarray:
    """Soft-clipping distortion: `tanh(x * 10 ** (drive_db / 20))`.

    Args:
        waveform: mono samples.
        drive_db: input gain before the tanh (0 dB is a gentle saturation; 30 dB squares a sine off).

    Returns:
        A float32 array within [-1, 1].
    """
    drive_db = _finite(drive_db, "drive_db", low=-60, high=100)
    return np.tanh(_mono(waveform) * 10.0 ** (drive_db / 20.0)).astype(np.float32)


def chorus(
    waveform: np.ndarray,
    sr: int,
    rate_hz: float = 1.0,
    depth_ms: float = 5.0,
    delay_ms: float = 10.0,
    mix: float = 0.5,
) -> np.ndarray:
    """Chorus: mix the clip with a copy whose delay is swept by a sine LFO.

    The delay is `delay_ms + depth_ms * sin(2 pi rate_hz t)` (linear interpolation between samples; zeros
    before the clip starts).

    Args:
        waveform: mono samples.
        sr: sampling rate in Hz.
        rate_hz: LFO frequency.
        depth_ms: LFO amplitude in milliseconds (at most `delay_ms`).
        delay_ms: centre delay in milliseconds.
        mix: share of the delayed copy, in [0, 1].

    Returns:
        A float32 array of the same length.
    """
    sr = _rate(sr)
    rate_hz = _finite(rate_hz, "rate_hz", low=0)
    depth_ms = _finite(depth_ms, "depth_ms", low=0)
    delay_ms = _finite(delay_ms, "delay_ms", low=0)
    mix = _finite(mix, "mix", low=0, high=1)
    if depth_ms > delay_ms:
        raise ValueError(
            f"depth_ms ({depth_ms:g}) must not exceed delay_ms ({delay_ms:g}): delays must be >= 0"
        )
    x = _mono(waveform)
    n = np.arange(x.size)
    delay = (delay_ms + depth_ms * np.sin(2.0 * np.pi * rate_hz * n / sr)) * sr / 1000.0
    delayed = np.interp(n - delay, n, x, left=0.0, right=0.0)
    return ((1.0 - mix) * x + mix * delayed).astype(np.float32)


def reverb(
    waveform: np.ndarray, sr: int, decay_s: float = 0.5, wet: float = 0.33, seed: int = 0
) -> np.ndarray:
    """Convolution reverb with a seeded, exponentially decaying white-noise impulse response.

    The impulse response lasts `decay_s` and falls by 60 dB over it (so `decay_s` is the RT60, a
    "room size"); it is normalised to unit energy so the reverberant part has about the clip's loudness.
    The output is `(1 - wet) * dry + wet * reverberant`, truncated to the input length.

    Args:
        waveform: mono samples.
        sr: sampling rate in Hz.
        decay_s: reverberation time (RT60) in seconds, in (0, 10].
        wet: share of the reverberant signal, in [0, 1].
        seed: seed of the impulse-response noise (same seed, same room).

    Returns:
        A float32 array of the same length.
    """
    sr = _rate(sr)
    decay_s = _finite(decay_s, "decay_s", high=10)
    if decay_s <= 0:
        raise ValueError(f"decay_s must be positive, got {decay_s:g}")
    wet = _finite(wet, "wet", low=0, high=1)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    x = _mono(waveform)
    length = max(1, int(round(decay_s * sr)))
    t = np.arange(length) / sr
    impulse = np.random.default_rng([int(seed), sr]).standard_normal(length) * 10.0 ** (-3.0 * t / decay_s)
    impulse /= np.sqrt(np.sum(impulse**2))
    wet_signal = signal.fftconvolve(x, impulse)[: x.size]
    return ((1.0 - wet) * x + wet * wet_signal).astype(np.float32)


def highpass(waveform: np.ndarray, sr: int, cutoff_hz: float = 1000.0, order: int = 4) -> np.ndarray:
    """Butterworth high-pass filter (causal, like an analogue 4-pole ladder filter in high-pass mode).

    Args:
        waveform: mono samples.
        sr: sampling rate in Hz.
        cutoff_hz: -3 dB frequency, below the Nyquist frequency.
        order: filter order (4 = 24 dB/octave).

    Returns:
        A float32 array of the same length.
    """
    sr = _rate(sr)
    cutoff_hz = _finite(cutoff_hz, "cutoff_hz")
    _below_nyquist(cutoff_hz, sr, "cutoff_hz")
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 1 <= order <= 12:
        raise ValueError(f"order must be an integer between 1 and 12, got {order!r}")
    sos = signal.butter(int(order), cutoff_hz, btype="highpass", fs=sr, output="sos")
    return signal.sosfilt(sos, _mono(waveform)).astype(np.float32)


def phaser(
    waveform: np.ndarray,
    sr: int,
    rate_hz: float = 1.0,
    depth: float = 0.5,
    centre_hz: float = 1300.0,
    stages: int = 4,
    mix: float = 0.5,
) -> np.ndarray:
    """Phaser: mix the clip with itself through a chain of swept first-order all-pass filters.

    Each all-pass `H(z) = (a + z^-1) / (1 + a z^-1)` has its 90-degree frequency at
    `centre_hz * 2 ** (2 * depth * sin(2 pi rate_hz t))` (depth 1 sweeps +-2 octaves); mixing creates moving
    notches. The coefficient is updated every 32 samples (filter state carried over).

    Args:
        waveform: mono samples.
        sr: sampling rate in Hz.
        rate_hz: sweep (LFO) frequency.
        depth: sweep depth in [0, 1].
        centre_hz: centre frequency of the sweep, below the Nyquist frequency.
        stages: number of all-pass stages (each pair adds a notch).
        mix: share of the all-passed signal, in [0, 1].

    Returns:
        A float32 array of the same length.
    """
    sr = _rate(sr)
    rate_hz = _finite(rate_hz, "rate_hz", low=0)
    depth = _finite(depth, "depth", low=0, high=1)
    centre_hz = _finite(centre_hz, "centre_hz")
    _below_nyquist(centre_hz, sr, "centre_hz")
    mix = _finite(mix, "mix", low=0, high=1)
    if isinstance(stages, bool) or not isinstance(stages, (int, np.integer)) or not 1 <= stages <= 24:
        raise ValueError(f"stages must be an integer between 1 and 24, got {stages!r}")
    x = _mono(waveform)
    block = 32
    starts = np.arange(0, x.size, block)
    centres = (starts + np.minimum(block, x.size - starts) / 2.0) / sr
    freqs = centre_hz * 2.0 ** (2.0 * depth * np.sin(2.0 * np.pi * rate_hz * centres))
    freqs = np.clip(freqs, 1.0, 0.45 * sr)
    tangent = np.tan(np.pi * freqs / sr)
    coefs = (tangent - 1.0) / (tangent + 1.0)
    wet_signal = np.empty_like(x)
    states = np.zeros((int(stages), 1))
    for start, a in zip(starts, coefs, strict=True):
        chunk = x[start : start + block]
        for stage in range(int(stages)):
            chunk, states[stage] = signal.lfilter([a, 1.0], [1.0, a], chunk, zi=states[stage])
        wet_signal[start : start + block] = chunk
    return ((1.0 - mix) * x + mix * wet_signal).astype(np.float32)


EFFECTS: dict[str, Callable[..., np.ndarray]] = {
    "pitch_shift": pitch_shift,
    "distortion": distortion,
    "chorus": chorus,
    "reverb": reverb,
    "highpass": highpass,
    "phaser": phaser,
    "gain": gain,
}
"""Effect name -> function; the names used in `{"type": name, **params}` effect specs."""


def _parameters(function: Callable[..., np.ndarray]) -> dict[str, inspect.Parameter]:
    params = dict(inspect.signature(function).parameters)
    params.pop("waveform")
    params.pop("sr", None)
    return params


def validate_effect(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check the shape of one effect spec `{"type": name, **params}` and return a plain copy.

    Only names are checked here (unknown effect, unknown or missing parameters); values are checked when
    the effect runs, since some depend on the sampling rate.

    Raises:
        ValueError: not a mapping, unknown effect type, unknown or missing parameter.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"an effect must be a dict like {{'type': 'gain', 'db': 6}}, got {spec!r}")
    spec = dict(spec)
    kind = spec.get("type")
    if kind not in EFFECTS:
        raise ValueError(f"unknown effect type {kind!r}; known effects: {', '.join(sorted(EFFECTS))}")
    params = _parameters(EFFECTS[kind])
    unknown = sorted(set(spec) - {"type"} - set(params))
    if unknown:
        raise ValueError(
            f"effect {kind!r} has no parameter(s) {', '.join(unknown)}; its parameters are: {', '.join(params)}"
        )
    missing = [
        name for name, p in params.items() if p.default is inspect.Parameter.empty and name not in spec
    ]
    if missing:
        raise ValueError(f"effect {kind!r} needs parameter(s) {', '.join(missing)}")
    return spec


def apply_effects(
    waveform: np.ndarray, sr: int, effects: Sequence[Mapping[str, Any]], *, seed: int = 0
) -> np.ndarray:
    """Run a chain of effects, in order.

    Args:
        waveform: mono samples.
        sr: sampling rate in Hz.
        effects: `{"type": name, **params}` dicts (see `EFFECTS`).
        seed: passed to effects that take a `seed` (reverb) unless the spec sets one.

    Returns:
        A float32 array of the same length (not clipped or loudness-normalised).

    Raises:
        ValueError: an invalid spec or parameter value.
    """
    out = _mono(waveform).astype(np.float32)
    for raw in effects:
        spec = validate_effect(raw)
        function = EFFECTS[spec.pop("type")]
        params = inspect.signature(function).parameters
        if "seed" in params and "seed" not in spec:
            spec["seed"] = seed
        out = function(out, sr, **spec) if "sr" in params else function(out, **spec)
    return out
