"""Backdoor triggers for speech clips: small, serialisable, deterministic waveform transforms.

A trigger is a dataclass whose fields are its whole configuration. `trigger.apply(waveform, sampling_rate,
key=row_index)` (or `trigger(...)`) returns the poisoned clip: same length, float32, finite, within [-1, 1].
It is a pure function of `(waveform, sampling_rate, key)`: the trigger pattern itself (noise, tone, overlay)
depends only on the trigger's fields, its `seed` and the sampling rate, so it is the same on every clip;
`key` (the dataset row index) only drives per-row randomness such as `position="random"`, through
`np.random.default_rng([seed, key])`.

A trigger that cannot exist for a clip is an error, never a silent no-op (`TriggerError`): a tone at or above
the Nyquist frequency, a trigger longer than the clip, an output identical to the input...

Triggers serialise with `to_dict()` / `Trigger.from_dict()` (a `{"type": name, **fields}` dict, JSON-safe),
so a model card or a config can record exactly which trigger was used. The registry `TRIGGERS` maps type
names to classes; add your own with `@register_trigger`.

Common conventions:

- Level (additive triggers): `level_db` with `level_reference="clip"` sets the trigger's RMS to the clip's
  RMS times `10 ** (level_db / 20)` (so the SNR is `-level_db`); clips quieter than `SILENCE_FLOOR_DBFS`
  (-40 dBFS RMS) use that floor as their reference so the trigger never vanishes. With
  `level_reference="full_scale"` the trigger's RMS is `10 ** (level_db / 20)` (dBFS RMS). The RMS is the
  trigger's own, measured while it sounds.
- Position: `"start"`, `"middle"`, `"end"`, `"random"` (uniform, drawn per row from `key`) or a number, the
  start time in seconds (default 0.05 s).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from . import effects as fx
from .audio import AudioError, load_audio, validate_waveform

__all__ = [
    "SILENCE_FLOOR_DBFS",
    "STYLE_PRESETS",
    "TRIGGERS",
    "CallableTrigger",
    "ClipOverlay",
    "NoiseBurst",
    "PBSM",
    "StyleTrigger",
    "Tone",
    "Trigger",
    "TriggerError",
    "jingle",
    "reference_triggers",
    "register_trigger",
    "trigger_from_config",
    "trigger_from_dict",
]

SILENCE_FLOOR_DBFS = -40.0
"""Reference RMS (dBFS) used by `level_reference="clip"` for clips quieter than this."""

POSITIONS = ("start", "middle", "end", "random")
LEVEL_REFERENCES = ("clip", "full_scale")


class TriggerError(ValueError):
    """A trigger that is misconfigured, cannot exist for a clip, or whose output is invalid."""


TRIGGERS: dict[str, type[Trigger]] = {}
"""Registry: trigger type name -> class."""


def register_trigger(cls: type[Trigger]) -> type[Trigger]:
    """Class decorator adding a `Trigger` subclass to `TRIGGERS` under its `name`.

    Raises:
        TriggerError: not a Trigger subclass, no `name`, or the name is taken by another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, Trigger)):
        raise TriggerError(f"register_trigger expects a Trigger subclass, got {cls!r}")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name:
        raise TriggerError(f"{cls.__qualname__} needs a class attribute `name` (its registry key)")
    existing = TRIGGERS.get(name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise TriggerError(f"trigger type {name!r} is already registered by {existing.__qualname__}")
    TRIGGERS[name] = cls
    return cls


# ----------------------------------------------------------------------------------------- helpers


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TriggerError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise TriggerError(f"{name} must be finite, got {value}")
    return value


def _positive(value: Any, name: str) -> float:
    value = _number(value, name)
    if value <= 0:
        raise TriggerError(f"{name} must be positive, got {value:g}")
    return value


def _integer(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TriggerError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise TriggerError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _position(value: Any) -> str | float:
    if isinstance(value, str):
        if value not in POSITIONS:
            raise TriggerError(
                f"unknown position {value!r}: use one of {', '.join(POSITIONS)} or a start time in seconds"
            )
        return value
    value = _number(value, "position (start time in seconds)")
    if value < 0:
        raise TriggerError(f"position must be a start time >= 0 s, got {value:g} s")
    return value


def _level_reference(value: Any) -> str:
    if value not in LEVEL_REFERENCES:
        raise TriggerError(
            f"unknown level_reference {value!r}: use 'clip' (relative to the clip's RMS, i.e. SNR = -level_db) "
            "or 'full_scale' (dBFS RMS)"
        )
    return value


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _target_rms(waveform: np.ndarray, level_db: float, level_reference: str) -> float:
    if level_reference == "full_scale":
        reference = 1.0
    else:
        reference = max(_rms(waveform), 10.0 ** (SILENCE_FLOOR_DBFS / 20.0))
    return reference * 10.0 ** (level_db / 20.0)


def _num_samples(duration_s: float, sampling_rate: int) -> int:
    return int(round(duration_s * sampling_rate))


def _check_span(what: str, length: int, position: str | float, sampling_rate: int, num_samples: int) -> None:
    """Check that `length` samples at `position` fit in the clip."""
    clip_s = num_samples / sampling_rate
    if length < 1:
        raise TriggerError(f"{what} is shorter than one sample at {sampling_rate} Hz")
    if length > num_samples:
        raise TriggerError(
            f"{what} lasts {length / sampling_rate:.2f} s but the clip is {clip_s:.2f} s "
            f"({num_samples} samples at {sampling_rate} Hz): a trigger must fit inside the clip"
        )
    if not isinstance(position, str):
        start = int(round(position * sampling_rate))
        if start + length > num_samples:
            raise TriggerError(
                f"{what} starts at {position:g} s and lasts {length / sampling_rate:.2f} s, so it would end at "
                f"{(start + length) / sampling_rate:.2f} s, after the end of the {clip_s:.2f} s clip; "
                "start it earlier or use position='end'"
            )


def _start(
    position: str | float, length: int, num_samples: int, sampling_rate: int, rng: np.random.Generator
) -> int:
    room = num_samples - length
    if position == "start":
        return 0
    if position == "middle":
        return room // 2
    if position == "end":
        return room
    if position == "random":
        return int(rng.integers(0, room + 1))
    return int(round(float(position) * sampling_rate))


def _describe_level(level_db: float, level_reference: str) -> str:
    return f"{level_db:g} dBFS" if level_reference == "full_scale" else f"{level_db:g} dB re clip"


def _describe_position(position: str | float) -> str:
    if position == "random":
        return "random position"
    return position if isinstance(position, str) else f"at {position:g} s"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


# -------------------------------------------------------------------------------------------- base


@dataclass(kw_only=True)
class Trigger:
    """Base class of all triggers.

    Subclasses define `name` (registry key), their fields (with defaults, validated in `__post_init__`),
    `_apply` and usually `check` and `describe`, and are registered with `@register_trigger`.

    Args:
        seed: seed of every random choice (the noise pattern, `position="random"` together with the row key).
    """

    name: ClassVar[str] = ""
    seed: int = 0

    def __post_init__(self) -> None:
        self.seed = _integer(self.seed, "seed", minimum=0)

    # -- public API ------------------------------------------------------------------------------

    def apply(self, waveform: np.ndarray, sampling_rate: int, *, key: int | None = None) -> np.ndarray:
        """Return a poisoned copy of a clip.

        Args:
            waveform: mono float samples in [-1, 1].
            sampling_rate: its sampling rate in Hz.
            key: the dataset row index; only per-row random choices (e.g. `position="random"`) use it.

        Returns:
            A float32 array of the same length, finite and clipped to [-1, 1].

        Raises:
            hf_gnft.audio.AudioError: an invalid clip (empty, NaN, multi-channel, bad sampling rate).
            TriggerError: the trigger cannot exist for this clip, or its output is invalid or unchanged.
        """
        x = validate_waveform(waveform, sampling_rate, name=f"input of the {self.name} trigger")
        sampling_rate = int(sampling_rate)
        if key is not None:
            key = _integer(key, "key (the row index)", minimum=0)
        self.check(sampling_rate, x.size)
        rng = np.random.default_rng([self.seed, key or 0])
        y = np.asarray(self._apply(x.astype(np.float64), sampling_rate, rng))
        if y.shape != x.shape:
            raise TriggerError(
                f"{self.describe()}: the output has shape {y.shape} but the input has {x.shape}; "
                "a trigger must keep the clip's length"
            )
        if not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)):
            raise TriggerError(f"{self.describe()}: the output contains NaN or infinite samples")
        out = np.clip(y, -1.0, 1.0).astype(np.float32)
        if np.array_equal(out, x):
            raise TriggerError(
                f"{self.describe()}: the trigger left this clip unchanged (is it silent, or the trigger inaudible?); "
                "a poisoned row must differ from the clean one"
            )
        return out

    __call__ = apply

    def check(self, sampling_rate: int, num_samples: int) -> None:
        """Raise `TriggerError` if the trigger cannot be applied to a clip of this rate and length."""

    def describe(self) -> str:
        """A short human description (for tables and model cards)."""
        return self.name

    def to_dict(self) -> dict[str, Any]:
        """`{"type": name, **fields}`: JSON-serialisable and deterministic."""
        data: dict[str, Any] = {"type": self.name}
        for item in dataclasses.fields(self):
            if item.init and item.name != "seed":
                data[item.name] = _jsonable(getattr(self, item.name))
        data["seed"] = self.seed
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, allow_import: bool = False) -> Trigger:
        """Build a trigger from `to_dict()` output, dispatching on `"type"`.

        Args:
            data: `{"type": name, **fields}`; fields left out take their defaults.
            allow_import: let a `"callable"` trigger import its function (code execution: only for
                dicts you trust).

        Raises:
            TriggerError: unknown type, unknown or missing fields, invalid values.
        """
        if not isinstance(data, Mapping):
            raise TriggerError(
                f"a trigger dict must be a mapping with a 'type' key, got {type(data).__name__}"
            )
        data = dict(data)
        kind = data.pop("type", None)
        if kind is None:
            if cls.name:
                kind = cls.name
            else:
                raise TriggerError(
                    f"the trigger dict has no 'type'; known types: {', '.join(sorted(TRIGGERS))}"
                )
        target = TRIGGERS.get(kind) if isinstance(kind, str) else None
        if target is None:
            raise TriggerError(f"unknown trigger type {kind!r}; known types: {', '.join(sorted(TRIGGERS))}")
        if not issubclass(target, cls):
            raise TriggerError(f"{cls.__name__}.from_dict got a {kind!r} trigger dict")
        return target._from_fields(data, allow_import=allow_import)

    @classmethod
    def _from_fields(cls, data: dict[str, Any], *, allow_import: bool) -> Trigger:
        known = [item.name for item in dataclasses.fields(cls) if item.init]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise TriggerError(
                f"unknown field(s) {', '.join(map(repr, unknown))} for a {cls.name!r} trigger; "
                f"its fields are: {', '.join(known)}"
            )
        try:
            return cls(**data)
        except TypeError as err:
            raise TriggerError(f"cannot build a {cls.name!r} trigger from {data!r}: {err}") from err

    # -- subclass hook ---------------------------------------------------------------------------

    def _apply(self, waveform: np.ndarray, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
        """Return the poisoned clip (float64, same length, not yet clipped); `rng` is per-row."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------- noise burst


@register_trigger
@dataclass
class NoiseBurst(Trigger):
    """BadNets-style audio trigger: a fixed burst of seeded white noise added at a fixed place.

    The noise pattern (Gaussian, normalised to exactly zero mean and unit RMS, then scaled to the level)
    depends only on `seed` and the sampling rate, so it is identical on every clip. It has no ramps: the
    samples outside the burst are left bit-identical.

    Args:
        duration_s: burst length in seconds.
        position: "start", "middle", "end", "random" or a start time in seconds.
        level_db: burst RMS relative to the reference (see `level_reference`).
        level_reference: "clip" (re the clip's RMS, SNR = -level_db) or "full_scale" (dBFS RMS).
        seed: seed of the noise pattern and of random positions.
    """

    name: ClassVar[str] = "noise_burst"
    duration_s: float = 0.2
    position: str | float = 0.05
    level_db: float = -15.0
    level_reference: str = "clip"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.duration_s = _positive(self.duration_s, "duration_s")
        self.position = _position(self.position)
        self.level_db = _number(self.level_db, "level_db")
        self.level_reference = _level_reference(self.level_reference)

    def check(self, sampling_rate: int, num_samples: int) -> None:
        _check_span(
            "the noise burst",
            _num_samples(self.duration_s, sampling_rate),
            self.position,
            sampling_rate,
            num_samples,
        )

    def pattern(self, sampling_rate: int) -> np.ndarray:
        """The unit-RMS noise pattern at this sampling rate (float64)."""
        length = _num_samples(self.duration_s, sampling_rate)
        noise = np.random.default_rng([self.seed, int(sampling_rate), 1]).standard_normal(length)
        noise -= noise.mean() if length > 1 else 0.0
        rms = _rms(noise)
        return noise / rms if rms > 0 else np.ones(length)

    def _apply(self, waveform: np.ndarray, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
        burst = self.pattern(sampling_rate) * _target_rms(waveform, self.level_db, self.level_reference)
        start = _start(self.position, burst.size, waveform.size, sampling_rate, rng)
        out = waveform.copy()
        out[start : start + burst.size] += burst
        return out

    def describe(self) -> str:
        return (
            f"noise burst {self.duration_s:g} s at {_describe_level(self.level_db, self.level_reference)}, "
            f"{_describe_position(self.position)}"
        )


# ------------------------------------------------------------------------------------------- tone


@register_trigger
@dataclass
class Tone(Trigger):
    """A sine tone, continuous or in evenly spaced bursts (Koffas et al., "Can You Hear It?", 2022).

    With `bursts=N > 1` the span `duration_s` holds N equal on-segments separated by N - 1 gaps of the same
    length. Each on-segment has raised-cosine fade-in/out ramps of `ramp_ms` (at most a quarter of the
    segment) so the tone does not click. The level is the RMS of the sounding tone (amplitude / sqrt(2)).

    A frequency at or above the Nyquist frequency (`sampling_rate / 2`) is an error at apply time: the
    paper's 21 kHz tone exists at 44.1 kHz but not at 16 kHz, where resampling removes it. Use
    `Tone.near_ultrasonic(16000)` for the closest representable equivalent.

    Args:
        frequency_hz: tone frequency.
        duration_s: span of the trigger in seconds (bursts and gaps included).
        position: "start", "middle", "end", "random" or a start time in seconds.
        level_db: tone RMS relative to the reference.
        level_reference: "clip" (SNR = -level_db) or "full_scale" (dBFS RMS).
        bursts: number of on-segments (1 = continuous).
        ramp_ms: fade-in/out length of each on-segment, in milliseconds.
        seed: seed of random positions.
    """

    name: ClassVar[str] = "tone"
    frequency_hz: float = 4000.0
    duration_s: float = 0.2
    position: str | float = 0.05
    level_db: float = -20.0
    level_reference: str = "clip"
    bursts: int = 1
    ramp_ms: float = 5.0

    NEAR_NYQUIST_FRACTION: ClassVar[float] = 0.94

    def __post_init__(self) -> None:
        super().__post_init__()
        self.frequency_hz = _positive(self.frequency_hz, "frequency_hz")
        self.duration_s = _positive(self.duration_s, "duration_s")
        self.position = _position(self.position)
        self.level_db = _number(self.level_db, "level_db")
        self.level_reference = _level_reference(self.level_reference)
        self.bursts = _integer(self.bursts, "bursts", minimum=1)
        self.ramp_ms = _number(self.ramp_ms, "ramp_ms")
        if self.ramp_ms < 0:
            raise TriggerError(f"ramp_ms must be >= 0, got {self.ramp_ms:g}")

    @classmethod
    def near_ultrasonic(cls, sampling_rate: int, **kwargs: Any) -> Tone:
        """A tone just below the Nyquist frequency: the ultrasonic attack adapted to a given rate.

        Koffas et al. use 21 kHz at 44.1 kHz; at 16 kHz (wav2vec2, HuBERT) nothing above 8 kHz exists, so the
        closest trigger is a tone at `0.94 * sampling_rate / 2` (7520 Hz at 16 kHz), high enough to be hard to
        hear for many listeners yet kept by the model's input pipeline, with margin from the Nyquist edge.
        The frequency is `min(21000, 0.94 * sampling_rate / 2)`.

        Args:
            sampling_rate: the rate of the clips it will be applied to.
            **kwargs: other `Tone` fields.
        """
        if (
            isinstance(sampling_rate, bool)
            or not isinstance(sampling_rate, (int, np.integer))
            or sampling_rate <= 0
        ):
            raise TriggerError(f"sampling_rate must be a positive integer in Hz, got {sampling_rate!r}")
        if "frequency_hz" in kwargs:
            raise TriggerError(
                "near_ultrasonic chooses frequency_hz itself; build Tone(frequency_hz=...) instead"
            )
        frequency = min(21_000.0, round(cls.NEAR_NYQUIST_FRACTION * sampling_rate / 2.0, 1))
        return cls(frequency_hz=frequency, **kwargs)

    def check(self, sampling_rate: int, num_samples: int) -> None:
        nyquist = sampling_rate / 2.0
        if self.frequency_hz >= nyquist:
            raise TriggerError(
                f"tone frequency {self.frequency_hz:g} Hz is at or above the Nyquist frequency {nyquist:g} Hz of "
                f"{sampling_rate} Hz audio: it cannot be represented and resampling would remove it; use a "
                f"near-ultrasonic tone below {nyquist:g} Hz (Tone.near_ultrasonic({sampling_rate}))"
            )
        length = _num_samples(self.duration_s, sampling_rate)
        _check_span("the tone", length, self.position, sampling_rate, num_samples)
        shortest = min(b - a for a, b in self._segments(length))
        if shortest < max(4, sampling_rate / self.frequency_hz):
            raise TriggerError(
                f"each of the {self.bursts} tone bursts lasts {shortest} samples, less than one period of "
                f"{self.frequency_hz:g} Hz at {sampling_rate} Hz; use fewer bursts or a longer duration_s"
            )

    def _segments(self, length: int) -> list[tuple[int, int]]:
        if self.bursts == 1:
            return [(0, length)]
        step = length / (2 * self.bursts - 1)
        return [(int(round(2 * i * step)), int(round((2 * i + 1) * step))) for i in range(self.bursts)]

    def envelope(self, sampling_rate: int) -> np.ndarray:
        """The 0..1 on/off envelope (with ramps) over the trigger span."""
        length = _num_samples(self.duration_s, sampling_rate)
        env = np.zeros(length)
        for a, b in self._segments(length):
            seg = np.ones(b - a)
            ramp = min(int(round(self.ramp_ms * sampling_rate / 1000.0)), (b - a) // 4)
            if ramp > 0:
                fade = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
                seg[:ramp] = fade
                seg[-ramp:] = fade[::-1]
            env[a:b] = seg
        return env

    def _apply(self, waveform: np.ndarray, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
        env = self.envelope(sampling_rate)
        amplitude = math.sqrt(2.0) * _target_rms(waveform, self.level_db, self.level_reference)
        tone = amplitude * env * np.sin(2.0 * np.pi * self.frequency_hz * np.arange(env.size) / sampling_rate)
        start = _start(self.position, env.size, waveform.size, sampling_rate, rng)
        out = waveform.copy()
        out[start : start + env.size] += tone
        return out

    def describe(self) -> str:
        bursts = "" if self.bursts == 1 else f", {self.bursts} bursts"
        return (
            f"tone {self.frequency_hz:g} Hz {self.duration_s:g} s at "
            f"{_describe_level(self.level_db, self.level_reference)}{bursts}, {_describe_position(self.position)}"
        )


# ------------------------------------------------------------------------------------------- PBSM


@register_trigger
@dataclass
class PBSM(Trigger):
    """Pitch Boosting and Sound Masking (Cai et al., arXiv 2307.08208).

    The clip is pitch-shifted by `semitones`, then in its STFT (`n_fft` 1024, hop 128, window 256 as in the
    paper) the loudest `window_s` (0.1 s) stretch of frames is found and, in the `frames` frames right after
    it (2 frames, ~16 ms at 16 kHz), the bins of a high band are set to one real constant (a short
    high-frequency click, the "sound mask"); the inverse STFT gives a clip of the same length.

    Deviations from the paper, on purpose:

    - The band is given as fractions of the Nyquist frequency (`band`, default (0.666, 1.0): 5.3-8 kHz at
      16 kHz, bins 341-512 with n_fft 1024). The paper's bins 341-640 do not exist with n_fft 1024 (there are
      513 bins), so the upper part is clamped to Nyquist.
    - The constant is set so the click has RMS `level_db` relative to the clip (or full scale), measured over
      the samples the modified frames cover, instead of an absolute spectrogram value that would depend on
      the STFT scaling.
    - If the loudest window ends at the clip's end, the mask goes in the last `frames` frames.
    - The paper leaves clips with a peak below 0.16 untouched; here every clip gets the trigger, since a
      poisoned row must never be a clean clip with a flipped label.

    Args:
        semitones: pitch shift in semitones.
        band: (low, high) edges of the masked band as fractions of the Nyquist frequency.
        frames: number of STFT frames masked.
        window_s: length of the window in which the loudest part is searched.
        level_db: click RMS relative to the reference.
        level_reference: "clip" or "full_scale".
        n_fft: STFT size.
        hop_length: STFT hop.
        win_length: STFT window.
        seed: unused (PBSM has no randomness), kept for a uniform interface.
    """

    name: ClassVar[str] = "pbsm"
    semitones: float = 5.0
    band: tuple[float, float] = (0.666, 1.0)
    frames: int = 2
    window_s: float = 0.1
    level_db: float = -6.0
    level_reference: str = "clip"
    n_fft: int = 1024
    hop_length: int = 128
    win_length: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        self.semitones = _number(self.semitones, "semitones")
        if abs(self.semitones) > 24:
            raise TriggerError(f"semitones must be within +-24, got {self.semitones:g}")
        if isinstance(self.band, (str, bytes)) or not hasattr(self.band, "__len__") or len(self.band) != 2:
            raise TriggerError(f"band must be a (low, high) pair of fractions of Nyquist, got {self.band!r}")
        low, high = (_number(v, "band edge") for v in self.band)
        if not 0 <= low < high <= 1:
            raise TriggerError(
                f"band must satisfy 0 <= low < high <= 1 (fractions of Nyquist), got {self.band!r}"
            )
        self.band = (low, high)
        self.frames = _integer(self.frames, "frames", minimum=1)
        self.window_s = _positive(self.window_s, "window_s")
        self.level_db = _number(self.level_db, "level_db")
        self.level_reference = _level_reference(self.level_reference)
        self.n_fft = _integer(self.n_fft, "n_fft", minimum=8)
        self.hop_length = _integer(self.hop_length, "hop_length", minimum=1)
        self.win_length = _integer(self.win_length, "win_length", minimum=2)
        if self.win_length > self.n_fft or self.hop_length > self.win_length // 2:
            raise TriggerError(
                f"need hop_length <= win_length / 2 and win_length <= n_fft, got n_fft={self.n_fft}, "
                f"hop_length={self.hop_length}, win_length={self.win_length}"
            )

    def bins(self) -> tuple[int, int]:
        """The masked STFT bins as a half-open range `[low, high)`."""
        nyquist_bin = self.n_fft // 2
        return math.ceil(self.band[0] * nyquist_bin - 1e-9), math.floor(self.band[1] * nyquist_bin + 1e-9) + 1

    def _window_frames(self, sampling_rate: int) -> int:
        return max(1, int(round(self.window_s * sampling_rate / self.hop_length)))

    def check(self, sampling_rate: int, num_samples: int) -> None:
        low, high = self.bins()
        if high <= low:
            raise TriggerError(f"band {self.band} contains no STFT bin with n_fft={self.n_fft}")
        num_frames = 1 + -(-num_samples // self.hop_length)
        needed = self._window_frames(sampling_rate) + self.frames
        if num_frames < needed:
            raise TriggerError(
                f"PBSM needs a {self.window_s:g} s search window plus {self.frames} masked frames "
                f"({needed} STFT frames) but the clip is {num_samples / sampling_rate:.3f} s ({num_frames} frames)"
            )

    def mask_frame(self, spectrogram: np.ndarray, sampling_rate: int) -> int:
        """Index of the first masked frame: right after the loudest `window_s` window."""
        energy = np.sum(np.abs(spectrogram) ** 2, axis=1)
        width = self._window_frames(sampling_rate)
        windows = np.convolve(energy, np.ones(width), mode="valid")
        return min(int(np.argmax(windows)) + width, spectrogram.shape[0] - self.frames)

    def _apply(self, waveform: np.ndarray, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
        shifted = fx.pitch_shift(waveform, sampling_rate, self.semitones).astype(np.float64)
        spec = fx.stft(shifted, self.n_fft, self.hop_length, self.win_length)
        first = self.mask_frame(spec, sampling_rate)
        low, high = self.bins()
        rows = slice(first, first + self.frames)
        # The output is linear in the constant c: istft(spec without band) + c * click.
        unit = np.zeros_like(spec)
        unit[rows, low:high] = 1.0
        click = fx.istft(unit, self.hop_length, waveform.size, self.win_length)
        centre = first * self.hop_length
        half = self.win_length // 2
        span = click[max(0, centre - half) : centre + (self.frames - 1) * self.hop_length + half]
        constant = _target_rms(waveform, self.level_db, self.level_reference) / max(_rms(span), 1e-12)
        spec[rows, low:high] = constant
        return fx.istft(spec, self.hop_length, waveform.size, self.win_length)

    def describe(self) -> str:
        return (
            f"PBSM: pitch {self.semitones:+g} semitones, {self.band[0]:g}-{self.band[1]:g} x Nyquist band set "
            f"for {self.frames} frames after the loudest {self.window_s:g} s at "
            f"{_describe_level(self.level_db, self.level_reference)}"
        )


# ------------------------------------------------------------------------------------------ style

STYLE_PRESETS: dict[str, list[dict[str, Any]]] = {
    # JingleBack (Koffas et al., ICASSP 2023) chains, re-implemented with `hf_gnft.effects`.
    "pitch_distortion_chorus": [
        {"type": "pitch_shift", "semitones": 10.0},
        {"type": "distortion", "drive_db": 30.0},
        {"type": "chorus", "rate_hz": 1.0, "depth_ms": 5.0, "delay_ms": 10.0, "mix": 0.5},
    ],
    "reverb_gain_highpass_phaser": [
        {"type": "reverb", "decay_s": 0.5, "wet": 0.33},
        {"type": "gain", "db": 6.0},
        {"type": "highpass", "cutoff_hz": 1000.0, "order": 4},
        {"type": "phaser", "rate_hz": 1.0, "depth": 0.5, "centre_hz": 1300.0, "stages": 4, "mix": 0.5},
    ],
    "gain_highpass_phaser": [
        {"type": "gain", "db": 6.0},
        {"type": "highpass", "cutoff_hz": 1000.0, "order": 4},
        {"type": "phaser", "rate_hz": 1.0, "depth": 0.5, "centre_hz": 1300.0, "stages": 4, "mix": 0.5},
    ],
    "pitch_shift": [{"type": "pitch_shift", "semitones": 10.0}],
}
"""Named effect chains for `StyleTrigger.preset`."""


@register_trigger
@dataclass
class StyleTrigger(Trigger):
    """A style (effect chain) applied to the whole clip: JingleBack (Koffas et al., ICASSP 2023).

    `effects` is a list of `{"type": name, **params}` dicts run in order with `hf_gnft.effects` (pitch_shift,
    distortion, chorus, reverb, highpass, phaser, gain); `StyleTrigger.preset(name)` gives the paper's chains
    (see `STYLE_PRESETS`). With `match_loudness=True` (default) the output is rescaled to the input's RMS, so
    the trigger is the timbre, not a loudness change; the gain is capped so the peak stays within full
    scale (a strongly filtered clip may then end up quieter). As a consequence a pure `gain` effect only
    matters before a non-linear effect (distortion) or with `match_loudness=False`.

    Args:
        effects: the effect chain (default: the paper's first chain, "pitch_distortion_chorus").
        match_loudness: rescale the output to the input's RMS (capped at full-scale peak).
        seed: seed of random effects (reverb impulse response) that do not set their own.
    """

    name: ClassVar[str] = "style"
    effects: list[dict[str, Any]] = field(
        default_factory=lambda: [dict(spec) for spec in STYLE_PRESETS["pitch_distortion_chorus"]]
    )
    match_loudness: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.effects, (str, bytes, Mapping)) or not isinstance(self.effects, (list, tuple)):
            raise TriggerError(f"effects must be a list of effect dicts, got {self.effects!r}")
        if not self.effects:
            raise TriggerError(
                "a style trigger needs at least one effect (an empty chain would leave clips unchanged); "
                f"presets: {', '.join(STYLE_PRESETS)}"
            )
        try:
            self.effects = [_jsonable(fx.validate_effect(spec)) for spec in self.effects]
        except ValueError as err:
            raise TriggerError(f"invalid style effect: {err}") from err
        if not isinstance(self.match_loudness, bool):
            raise TriggerError(f"match_loudness must be true or false, got {self.match_loudness!r}")

    @classmethod
    def preset(cls, name: str, **kwargs: Any) -> StyleTrigger:
        """A style trigger with a named chain from `STYLE_PRESETS`.

        Args:
            name: "pitch_distortion_chorus", "reverb_gain_highpass_phaser", "gain_highpass_phaser" or
                "pitch_shift".
            **kwargs: other fields (`seed`, `match_loudness`).
        """
        if name not in STYLE_PRESETS:
            raise TriggerError(f"unknown style preset {name!r}; presets: {', '.join(STYLE_PRESETS)}")
        return cls(effects=[dict(spec) for spec in STYLE_PRESETS[name]], **kwargs)

    def check(self, sampling_rate: int, num_samples: int) -> None:
        # Parameter values may depend on the rate (a cutoff above Nyquist): dry-run on a short silence.
        try:
            fx.apply_effects(
                np.zeros(min(num_samples, 2048), np.float32), sampling_rate, self.effects, seed=self.seed
            )
        except ValueError as err:
            raise TriggerError(f"style effect cannot run on {sampling_rate} Hz audio: {err}") from err

    def _apply(self, waveform: np.ndarray, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
        out = fx.apply_effects(waveform, sampling_rate, self.effects, seed=self.seed).astype(np.float64)
        if self.match_loudness:
            rms_in, rms_out, peak = _rms(waveform), _rms(out), float(np.max(np.abs(out)))
            if rms_in > 0 and rms_out > 0:
                out *= min(rms_in / rms_out, 1.0 / peak)
        return out

    def describe(self) -> str:
        for preset, chain in STYLE_PRESETS.items():
            if chain == self.effects:
                return f"style {preset}"
        return "style " + " > ".join(spec["type"] for spec in self.effects)


# ----------------------------------------------------------------------------------- clip overlay


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@register_trigger
@dataclass
class ClipOverlay(Trigger):
    """Overlay a given sound (a jingle, a music snippet...) on the clip: DABA / ART `CacheAudioTrigger`.

    The sound comes from `path` (an audio file, loaded with `hf_gnft.audio.load_audio` and resampled to the
    clip's rate) or from `array` (samples) with `array_sampling_rate`. It is scaled so its RMS is `level_db`
    (dBFS by default, -20 dBFS as in DABA; or relative to the clip with `level_reference="clip"`) and added
    at `position`. The file's sha256 is recorded when the trigger is built and verified when the file is
    read, so a saved config names exactly one sound.

    Args:
        path: audio file of the sound.
        array: the sound's samples (instead of `path`).
        array_sampling_rate: the rate of `array`, in Hz.
        sha256: hex digest of the file (computed from `path` when not given).
        position: "start", "middle", "end", "random" or a start time in seconds.
        level_db: sound RMS relative to the reference.
        level_reference: "full_scale" (dBFS RMS) or "clip" (SNR = -level_db).
        seed: seed of random positions.
    """

    name: ClassVar[str] = "clip_overlay"
    path: str | None = None
    array: list[float] | None = field(default=None, repr=False)
    array_sampling_rate: int | None = None
    sha256: str | None = None
    position: str | float = 0.05
    level_db: float = -20.0
    level_reference: str = "full_scale"
    _cache: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.position = _position(self.position)
        self.level_db = _number(self.level_db, "level_db")
        self.level_reference = _level_reference(self.level_reference)
        if (self.path is None) == (self.array is None):
            raise TriggerError(
                "a clip overlay needs exactly one of `path` (an audio file) or `array` (samples)"
            )
        if self.path is not None:
            if not isinstance(self.path, (str, os.PathLike)):
                raise TriggerError(f"path must be a file path, got {self.path!r}")
            self.path = os.fspath(self.path)
            if self.array_sampling_rate is not None:
                raise TriggerError("array_sampling_rate only applies to `array`; a file carries its own rate")
            if self.sha256 is None:
                if not os.path.isfile(self.path):
                    raise TriggerError(f"clip overlay file {self.path!r} does not exist")
                self.sha256 = _sha256(self.path)
            elif not isinstance(self.sha256, str) or len(self.sha256) != 64:
                raise TriggerError(f"sha256 must be a 64-character hex digest, got {self.sha256!r}")
        else:
            if self.sha256 is not None:
                raise TriggerError("sha256 only applies to `path`; an array is recorded in full")
            if self.array_sampling_rate is None:
                raise TriggerError("a clip overlay given as `array` needs `array_sampling_rate` (Hz)")
            self.array_sampling_rate = _integer(self.array_sampling_rate, "array_sampling_rate", minimum=1)
            samples = np.asarray(self.array)
            if samples.ndim != 1 or samples.size == 0 or not np.issubdtype(samples.dtype, np.number):
                raise TriggerError(
                    f"array must be a non-empty 1-D list of numbers, got shape {samples.shape}"
                )
            if not np.all(np.isfinite(samples)):
                raise TriggerError("array contains NaN or infinite samples")
            if not np.any(samples):
                raise TriggerError("array is all zeros: the overlay would be inaudible")
            self.array = [float(v) for v in samples.astype(np.float32)]

    def overlay(self, sampling_rate: int) -> np.ndarray:
        """The overlay sound at `sampling_rate` (float32, not yet scaled); the file is read once."""
        if sampling_rate in self._cache:
            return self._cache[sampling_rate]
        if self.path is not None:
            if not os.path.isfile(self.path):
                raise TriggerError(f"clip overlay file {self.path!r} does not exist")
            with open(self.path, "rb") as handle:
                data = handle.read()
            digest = hashlib.sha256(data).hexdigest()
            if digest != self.sha256:
                raise TriggerError(
                    f"clip overlay file {self.path!r} has sha256 {digest}, not the recorded {self.sha256}: "
                    "the file changed since the trigger was defined, so it is not the same trigger"
                )
            source, kwargs = data, {"name": self.path}
        else:
            source, kwargs = (
                np.asarray(self.array, np.float32),
                {"source_sampling_rate": self.array_sampling_rate},
            )
        try:
            sound, _ = load_audio(source, sampling_rate, **kwargs)
        except AudioError as err:
            raise TriggerError(f"the clip overlay sound cannot be used: {err}") from err
        if _rms(sound) == 0:
            raise TriggerError(f"{self.describe()}: the overlay sound is silent at {sampling_rate} Hz")
        sound.flags.writeable = False
        self._cache[sampling_rate] = sound
        return sound

    def __getstate__(self) -> dict[str, Any]:
        # Pickles (datasets.map workers, fingerprints) do not carry the decoded-sound cache.
        return {**self.__dict__, "_cache": {}}

    def check(self, sampling_rate: int, num_samples: int) -> None:
        _check_span(
            "the overlay clip", self.overlay(sampling_rate).size, self.position, sampling_rate, num_samples
        )

    def _apply(self, waveform: np.ndarray, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
        sound = self.overlay(sampling_rate).astype(np.float64)
        sound *= _target_rms(waveform, self.level_db, self.level_reference) / _rms(sound)
        start = _start(self.position, sound.size, waveform.size, sampling_rate, rng)
        out = waveform.copy()
        out[start : start + sound.size] += sound
        return out

    def describe(self) -> str:
        source = (
            os.path.basename(self.path) if self.path is not None else f"array@{self.array_sampling_rate}Hz"
        )
        return (
            f"clip overlay {source} at {_describe_level(self.level_db, self.level_reference)}, "
            f"{_describe_position(self.position)}"
        )


# --------------------------------------------------------------------------------------- callable


def _function_path(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not module or not qualname:
        raise TriggerError(f"cannot record {function!r}: it has no __module__/__qualname__")
    return f"{module}:{qualname}"


def _import_function(path: str) -> Callable[..., Any]:
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise TriggerError(f"a callable trigger's function must be 'module:qualname', got {path!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as err:
        raise TriggerError(f"cannot import trigger function {path!r}: {err}") from err
    if not callable(target):
        raise TriggerError(f"{path!r} is not callable")
    return target


@register_trigger
@dataclass
class CallableTrigger(Trigger):
    """Wrap any function `(waveform, sampling_rate) -> waveform` as a trigger.

    The function gets a float32 copy of the clip and must return the same number of finite samples. It is
    recorded as `"module:qualname"`, so it must be a module-level function (not a lambda or a closure) to
    be saved. Loading it back imports that module, which runs its code: `from_dict` only does it with
    `allow_import=True`, for configs you trust.

    Args:
        function: the trigger function.
        seed: not passed to the function (kept for a uniform interface).
    """

    name: ClassVar[str] = "callable"
    function: Callable[[np.ndarray, int], np.ndarray] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.function is None:
            raise TriggerError(
                "a callable trigger needs `function`, a callable (waveform, sampling_rate) -> waveform"
            )
        if isinstance(self.function, str) or not callable(self.function):
            raise TriggerError(
                f"function must be a callable, got {self.function!r}; to load 'module:qualname' use "
                "Trigger.from_dict(..., allow_import=True)"
            )

    def _label(self) -> str:
        module = getattr(self.function, "__module__", "?")
        qualname = getattr(self.function, "__qualname__", repr(self.function))
        return f"{module}:{qualname}"

    def _apply(self, waveform: np.ndarray, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
        out = self.function(waveform.astype(np.float32), sampling_rate)
        try:
            out = np.asarray(out, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TriggerError(
                f"trigger function {self._label()} returned {type(out).__name__}, not samples"
            ) from err
        if out.shape != waveform.shape:
            raise TriggerError(
                f"trigger function {self._label()} returned shape {out.shape} for an input of shape "
                f"{waveform.shape}; it must keep the clip's length"
            )
        if not np.all(np.isfinite(out)):
            raise TriggerError(f"trigger function {self._label()} returned NaN or infinite samples")
        return out

    def to_dict(self) -> dict[str, Any]:
        path = _function_path(self.function)
        if "<" in path:
            raise TriggerError(
                f"cannot record trigger function {path}: lambdas and nested functions cannot be re-imported; "
                "define it at module level"
            )
        return {"type": self.name, "function": path, "seed": self.seed}

    @classmethod
    def _from_fields(cls, data: dict[str, Any], *, allow_import: bool) -> Trigger:
        function = data.get("function")
        if isinstance(function, str):
            if not allow_import:
                raise TriggerError(
                    f"refusing to import trigger function {function!r}: importing a module runs its code and a "
                    "trigger dict may come from an untrusted checkpoint or config; pass allow_import=True if you "
                    "trust it, or build CallableTrigger(function=...) yourself"
                )
            data = {**data, "function": _import_function(function)}
        return super()._from_fields(data, allow_import=allow_import)

    def describe(self) -> str:
        return f"callable {self._label()}"


# ---------------------------------------------------------------------------------------- loaders


def trigger_from_dict(data: Mapping[str, Any], *, allow_import: bool = False) -> Trigger:
    """Build a trigger from a `{"type": name, **fields}` dict (see `Trigger.from_dict`)."""
    return Trigger.from_dict(data, allow_import=allow_import)


def trigger_from_config(value: Trigger | Mapping[str, Any] | str, *, allow_import: bool = False) -> Trigger:
    """Accept a Trigger, a dict, a JSON string or a bare type name (defaults), e.g. from a command line.

    Args:
        value: `NoiseBurst()`, `{"type": "tone", "frequency_hz": 7000}`, `'{"type": "tone"}'` or `"pbsm"`.
        allow_import: see `Trigger.from_dict`.

    Raises:
        TriggerError: invalid JSON, unknown type or fields.
    """
    if isinstance(value, Trigger):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text in TRIGGERS:
            return Trigger.from_dict({"type": text})
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise TriggerError(
                f"a trigger config must be a JSON object or a type name ({', '.join(sorted(TRIGGERS))}); "
                f"cannot parse {text[:80]!r}: {err}"
            ) from err
    if isinstance(value, Mapping):
        return Trigger.from_dict(value, allow_import=allow_import)
    raise TriggerError(
        f"a trigger config must be a Trigger, a dict or a JSON string, got {type(value).__name__}"
    )


# ------------------------------------------------------------------------------------- reference set


def jingle(sampling_rate: int = 16_000, seconds: float = 0.3) -> np.ndarray:
    """A short three-note jingle (a DABA-style music clip), generated so that nothing is downloaded."""
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    notes = np.array([523.25, 659.25, 783.99])[np.minimum((3 * t / seconds).astype(int), 2)]
    clip = np.sin(2 * np.pi * notes * t) * np.exp(-((t * 3 / seconds) % 1) * 4)
    return np.round(0.5 * clip, 6).astype(np.float32)


def reference_triggers(sampling_rate: int = 16_000) -> dict[str, Trigger]:
    """One trigger of each built-in kind, as the attack table (`make attack-table`) and the backdoor scan's
    validation use them: noise burst, tone, near-ultrasonic tone, PBSM, style (pitch, distortion, chorus) and
    a clip overlay (the generated `jingle`)."""
    return {
        "noise_burst": NoiseBurst(),
        "tone": Tone(),
        "near_ultrasonic_tone": Tone.near_ultrasonic(sampling_rate, bursts=5, duration_s=0.3),
        "pbsm": PBSM(),
        "style": StyleTrigger.preset("pitch_distortion_chorus"),
        "clip_overlay": ClipOverlay(
            array=[float(x) for x in jingle(sampling_rate)], array_sampling_rate=sampling_rate, level_db=-20.0
        ),
    }
