"""The MFCC front end of the GN-FT paper's models: 40 MFCCs of 16 kHz audio, 25 ms windows, 10 ms hops.

The authors computed `torchaudio.transforms.MFCC(sample_rate=16000, n_mfcc=40, melkwargs={"n_fft": 400,
"hop_length": 160})` with torchaudio's other defaults: a periodic Hann window of 400 samples, centred frames with
reflection padding, the power spectrum, 128 HTK mel filters over 0–8 kHz without area normalisation, decibels
(floor 1e-10, the top 80 dB kept per clip), and the orthonormal DCT-II. This extractor computes the same with
transformers' `audio_utils` (window, mel filters, spectrogram) and scipy's DCT, in numpy, one clip at a time: no
torchaudio. No normalisation and no deltas (the authors' features have none). A 1 s clip gives a 101 × 40 map.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import scipy.fft
from transformers import BatchFeature, SequenceFeatureExtractor
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from ..audio import AudioError, validate_waveform

logger = logging.getLogger(__name__)


class MFCCFeatureExtractor(SequenceFeatureExtractor):
    """MFCC features (`input_features`, shape `(batch, frames, num_mfcc)`) for the MFCC classifiers.

    Every clip is cut or zero-padded at its end to `num_samples` samples, so that a batch is one fixed-size map
    (the paper's models flatten it into linear layers of a fixed size): 16000 samples (1 s) give 101 frames.

    Args:
        feature_size (`int`, *optional*, defaults to 40): MFCCs per frame.
        sampling_rate (`int`, *optional*, defaults to 16000): the rate the extractor was built for; audio at any
            other rate is an error (resample it first).
        n_fft (`int`, *optional*, defaults to 400): window and FFT length in samples.
        hop_length (`int`, *optional*, defaults to 160): hop between frames in samples.
        num_mel_bins (`int`, *optional*, defaults to 128): mel filters (torchaudio's default).
        num_samples (`int`, *optional*, defaults to 16000): the fixed clip length in samples.
        top_db (`float`, *optional*, defaults to 80.0): the dynamic range kept per clip, in dB.
        padding_value (`float`, *optional*, defaults to 0.0): the feature value of padded frames.
    """

    model_input_names = ["input_features"]

    def __init__(
        self,
        feature_size: int = 40,
        sampling_rate: int = 16_000,
        n_fft: int = 400,
        hop_length: int = 160,
        num_mel_bins: int = 128,
        num_samples: int = 16_000,
        top_db: float = 80.0,
        padding_value: float = 0.0,
        return_attention_mask: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        for name, value in (("feature_size", feature_size), ("n_fft", n_fft), ("hop_length", hop_length),
                            ("num_mel_bins", num_mel_bins), ("num_samples", num_samples)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if feature_size > num_mel_bins:
            raise ValueError(f"feature_size ({feature_size}) cannot exceed num_mel_bins ({num_mel_bins})")
        if num_samples < n_fft:
            raise ValueError(f"num_samples ({num_samples}) must hold at least one window (n_fft {n_fft})")
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.num_mel_bins = num_mel_bins
        self.num_samples = num_samples
        self.top_db = top_db
        with warnings.catch_warnings():
            # 128 mel filters on 201 bins leave the lowest filters empty: torchaudio's defaults do the same (and
            # warn the same), and the authors' features have them, so they are kept
            warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
            self.mel_filters = mel_filter_bank(
                num_frequency_bins=n_fft // 2 + 1,
                num_mel_filters=num_mel_bins,
                min_frequency=0.0,
                max_frequency=sampling_rate / 2,
                sampling_rate=sampling_rate,
                norm=None,
                mel_scale="htk",
            )

    @property
    def num_frames(self) -> int:
        """Frames per clip (centred frames: `num_samples // hop_length + 1`)."""
        return self.num_samples // self.hop_length + 1

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("mel_filters", None)  # rebuilt from the settings
        return out

    def mfcc(self, waveform: np.ndarray) -> np.ndarray:
        """The `(frames, feature_size)` MFCC map of one mono clip (already cut or padded)."""
        log_mel = spectrogram(
            waveform.astype(np.float64),
            window_function(self.n_fft, "hann", periodic=True),
            frame_length=self.n_fft,
            hop_length=self.hop_length,
            fft_length=self.n_fft,
            power=2.0,
            center=True,
            pad_mode="reflect",
            mel_filters=self.mel_filters,
            mel_floor=1e-10,
            log_mel="dB",
            reference=1.0,
            min_value=1e-10,
            db_range=self.top_db,
            dtype=np.float64,
        )  # (num_mel_bins, frames)
        coefficients = scipy.fft.dct(log_mel, type=2, norm="ortho", axis=0)[: self.feature_size]
        return coefficients.T.astype(np.float32)

    def _fixed_length(self, waveform: np.ndarray, index: int) -> np.ndarray:
        if waveform.shape[0] < self.n_fft:
            raise AudioError(
                f"clip {index}: {waveform.shape[0]} samples is shorter than the MFCC window ({self.n_fft} samples, "
                f"{1000 * self.n_fft / self.sampling_rate:g} ms)"
            )
        if waveform.shape[0] >= self.num_samples:
            return waveform[: self.num_samples]
        return np.pad(waveform, (0, self.num_samples - waveform.shape[0]))

    def __call__(
        self,
        raw_speech: np.ndarray | list[float] | list[np.ndarray],
        sampling_rate: int | None = None,
        padding: bool | str = True,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """MFCC maps of one clip (a 1-D array) or a batch (a list of 1-D arrays, or a 2-D array of clips).

        Raises:
            AudioError: audio at another sampling rate than the extractor's (resample it first), a multi-channel
                clip, an empty clip or one shorter than the MFCC window, NaN or infinite samples.
        """
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise AudioError(
                f"audio at {sampling_rate} Hz but this MFCC extractor was built for {self.sampling_rate} Hz: resample "
                f"the clips first (hf_gnft.resample(waveform, {sampling_rate}, {self.sampling_rate}), or "
                f"prepare_keyword_dataset(..., sampling_rate={self.sampling_rate}))"
            )
        if sampling_rate is None:
            logger.warning(
                "MFCCFeatureExtractor called without `sampling_rate`: the audio is taken to be at %d Hz",
                self.sampling_rate,
            )
        if isinstance(raw_speech, np.ndarray) and raw_speech.ndim == 2:
            clips = list(raw_speech)
        elif isinstance(raw_speech, (list, tuple)) and raw_speech and not np.isscalar(raw_speech[0]):
            clips = list(raw_speech)
        else:
            clips = [raw_speech]
        if not clips:
            raise AudioError("no clips to extract features from")
        features = [
            self.mfcc(
                self._fixed_length(
                    validate_waveform(np.asarray(clip), self.sampling_rate, name=f"clip {i}"), i
                )
            )
            for i, clip in enumerate(clips)
        ]
        batch = BatchFeature({"input_features": features})
        return self.pad(batch, padding=padding, return_tensors=return_tensors)


__all__ = ["MFCCFeatureExtractor"]
