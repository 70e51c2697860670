"""BadNets-style noise-burst trigger."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import (
    Trigger,
    _check_span,
    _describe_level,
    _describe_position,
    _level_reference,
    _num_samples,
    _number,
    _position,
    _positive,
    _rms,
    _start,
    _target_rms,
    register_trigger,
)


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
