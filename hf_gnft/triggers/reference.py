"""The reference set: one trigger of each built-in kind, and the generated `jingle`."""

from __future__ import annotations

import numpy as np

from .base import Trigger
from .clip_overlay import ClipOverlay
from .noise_burst import NoiseBurst
from .pbsm import PBSM
from .style import StyleTrigger
from .tone import Tone


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
