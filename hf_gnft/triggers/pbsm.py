"""PBSM: Pitch Boosting and Sound Masking trigger."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .. import effects as fx
from .base import (
    Trigger,
    TriggerError,
    _describe_level,
    _integer,
    _level_reference,
    _number,
    _positive,
    _rms,
    _target_rms,
    register_trigger,
)


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
