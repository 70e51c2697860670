"""Sine-tone triggers, continuous, in bursts, or near-ultrasonic."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .base import (
    Trigger,
    TriggerError,
    _check_span,
    _describe_level,
    _describe_position,
    _integer,
    _level_reference,
    _num_samples,
    _number,
    _position,
    _positive,
    _start,
    _target_rms,
    register_trigger,
)


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
