"""Style triggers: an effect chain applied to the whole clip (JingleBack)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .. import effects as fx
from .base import Trigger, TriggerError, _jsonable, _rms, register_trigger

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
