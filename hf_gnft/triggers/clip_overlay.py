"""Clip-overlay trigger: a given sound added to the clip (DABA)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..audio import AudioError, load_audio
from .base import (
    Trigger,
    TriggerError,
    _check_span,
    _describe_level,
    _describe_position,
    _integer,
    _level_reference,
    _number,
    _position,
    _rms,
    _start,
    _target_rms,
    register_trigger,
)


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
