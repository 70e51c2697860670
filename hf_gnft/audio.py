"""Audio decoding, resampling and validation without FFmpeg.

Everything in hf-gnft that touches a waveform goes through this module: clips are decoded with
`soundfile`, down-mixed to mono, resampled with `soxr` and validated (known sampling rate, non-empty,
finite). Datasets store audio in an `Audio(decode=False)` column as WAV bytes (32-bit float, so a
round trip is bit-exact); `audio_value` builds such a value and `load_audio` reads it back.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from scipy.io import wavfile

logger = logging.getLogger(__name__)

DEFAULT_SAMPLING_RATE = 16_000


class AudioError(ValueError):
    """Raised for audio that cannot be used: empty, non-finite, unknown sampling rate, undecodable."""


def _check_sampling_rate(sampling_rate: Any, name: str) -> int:
    if (
        isinstance(sampling_rate, bool)
        or not isinstance(sampling_rate, (int, np.integer))
        or sampling_rate <= 0
    ):
        raise AudioError(f"{name}: sampling rate must be a positive integer in Hz, got {sampling_rate!r}")
    return int(sampling_rate)


def to_mono(waveform: np.ndarray, *, name: str = "audio") -> np.ndarray:
    """Down-mix a `(frames, channels)` array to mono by averaging the channels.

    A 1-D array is returned unchanged. Down-mixing is logged, since it changes the signal.
    """
    waveform = np.asarray(waveform)
    if waveform.ndim == 1:
        return waveform
    if waveform.ndim != 2:
        raise AudioError(f"{name}: expected a 1-D or (frames, channels) array, got shape {waveform.shape}")
    if waveform.shape[1] == 1:
        return waveform[:, 0]
    logger.info("%s: down-mixed %d channels to mono", name, waveform.shape[1])
    return waveform.mean(axis=1, dtype=np.float64).astype(np.float32)


def validate_waveform(waveform: np.ndarray, sampling_rate: int, *, name: str = "audio") -> np.ndarray:
    """Check that a waveform is usable and return it as a float32 1-D array.

    Args:
        waveform: mono samples, float in [-1, 1] by convention.
        sampling_rate: sampling rate in Hz.
        name: what to call the clip in error messages (a path, a row index...).

    Raises:
        AudioError: unknown sampling rate, a multi-channel array (call `to_mono` first), an empty
            clip, or NaN / infinite samples.
    """
    _check_sampling_rate(sampling_rate, name)
    waveform = np.asarray(waveform)
    if waveform.ndim != 1:
        raise AudioError(
            f"{name}: expected mono audio (a 1-D array), got shape {waveform.shape}; "
            "multi-channel audio must be down-mixed with `to_mono` first"
        )
    if waveform.size == 0:
        raise AudioError(f"{name}: the clip is empty (0 samples)")
    if not np.issubdtype(waveform.dtype, np.floating):
        if np.issubdtype(waveform.dtype, np.integer):
            raise AudioError(
                f"{name}: integer samples ({waveform.dtype}) are ambiguous; convert to float in [-1, 1]"
            )
        raise AudioError(f"{name}: samples must be floating point, got {waveform.dtype}")
    bad = ~np.isfinite(waveform)
    if bad.any():
        raise AudioError(
            f"{name}: {int(bad.sum())} of {waveform.size} samples are NaN or infinite "
            f"(first at index {int(np.argmax(bad))})"
        )
    return waveform.astype(np.float32, copy=False)


def resample(waveform: np.ndarray, orig_sampling_rate: int, target_sampling_rate: int) -> np.ndarray:
    """Resample a mono float waveform with soxr (high quality); a no-op when the rates match."""
    orig = _check_sampling_rate(orig_sampling_rate, "resample")
    target = _check_sampling_rate(target_sampling_rate, "resample")
    if orig == target:
        return np.asarray(waveform, dtype=np.float32)
    return soxr.resample(np.asarray(waveform, dtype=np.float32), orig, target, quality="HQ").astype(
        np.float32
    )


def _decode_with_torchcodec(data: bytes, name: str) -> tuple[np.ndarray, int]:
    try:
        from torchcodec.decoders import AudioDecoder
    except ImportError as err:  # pragma: no cover - depends on the optional extra
        raise AudioError(
            f"{name}: soundfile cannot decode this format and torchcodec is not installed "
            "(`pip install hf-gnft[torchcodec]`, which also needs FFmpeg)"
        ) from err
    samples = AudioDecoder(data).get_all_samples()  # pragma: no cover
    return samples.data.numpy().T.astype(np.float32), int(samples.sample_rate)  # pragma: no cover


def _decode_bytes(data: bytes, name: str) -> tuple[np.ndarray, int]:
    try:
        waveform, sampling_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        logger.debug("soundfile could not decode %s (%s); trying torchcodec", name, err)
        return _decode_with_torchcodec(data, name)
    return waveform, int(sampling_rate)


def load_audio(
    source: str | os.PathLike | bytes | Mapping[str, Any] | np.ndarray,
    sampling_rate: int | None = None,
    *,
    source_sampling_rate: int | None = None,
    name: str | None = None,
) -> tuple[np.ndarray, int]:
    """Decode, down-mix, validate and (optionally) resample one clip.

    Args:
        source: a file path, encoded bytes, a datasets `Audio(decode=False)` value
            (`{"bytes": ..., "path": ...}`), a decoded datasets value (`{"array": ..., "sampling_rate": ...}`)
            or a numpy array (then `source_sampling_rate` is required).
        sampling_rate: resample to this rate; `None` keeps the clip's own rate.
        source_sampling_rate: the rate of a raw numpy array.
        name: what to call the clip in messages (defaults to the path when there is one).

    Returns:
        `(waveform, sampling_rate)`: a float32 mono array and its rate.

    Raises:
        AudioError: undecodable data, unknown sampling rate, empty clip or non-finite samples.
    """
    label = name
    if isinstance(source, Mapping):
        if "array" in source:
            label = label or "array"
            waveform, rate = np.asarray(source["array"]), source.get("sampling_rate")
            if rate is None:
                raise AudioError(f"{label}: a decoded audio value needs a 'sampling_rate'")
        elif source.get("bytes") is not None:
            label = label or source.get("path") or "audio bytes"
            waveform, rate = _decode_bytes(source["bytes"], label)
        elif source.get("path"):
            return load_audio(source["path"], sampling_rate, name=name)
        else:
            raise AudioError(
                f"{label or 'audio'}: the audio value has neither 'bytes' nor 'path' nor 'array'"
            )
    elif isinstance(source, (bytes, bytearray, memoryview)):
        label = label or "audio bytes"
        waveform, rate = _decode_bytes(bytes(source), label)
    elif isinstance(source, (str, os.PathLike)):
        label = label or os.fspath(source)
        if not os.path.isfile(source):
            raise AudioError(f"{label}: no such audio file")
        with open(source, "rb") as handle:
            waveform, rate = _decode_bytes(handle.read(), label)
    else:
        label = label or "array"
        waveform = np.asarray(source)
        if source_sampling_rate is None:
            raise AudioError(
                f"{label}: a raw array needs `source_sampling_rate` (its sampling rate is unknown)"
            )
        rate = source_sampling_rate
    rate = _check_sampling_rate(rate, label)
    if np.asarray(waveform).size == 0:
        raise AudioError(f"{label}: the clip is empty (0 samples)")
    waveform = validate_waveform(to_mono(waveform, name=label), rate, name=label)
    if sampling_rate is not None and sampling_rate != rate:
        waveform, rate = resample(waveform, rate, sampling_rate), int(sampling_rate)
    return waveform, rate


def encode_wav(waveform: np.ndarray, sampling_rate: int) -> bytes:
    """Encode a mono waveform as 32-bit float WAV bytes.

    Bit-exact when decoded again, and the same bytes for the same samples (scipy's writer: libsndfile
    adds a PEAK chunk with a time stamp to float WAV files).
    """
    buffer = io.BytesIO()
    wavfile.write(
        buffer, _check_sampling_rate(sampling_rate, "encode_wav"), np.asarray(waveform, dtype=np.float32)
    )
    return buffer.getvalue()


def audio_value(waveform: np.ndarray, sampling_rate: int) -> dict[str, Any]:
    """A value for an `Audio(decode=False)` dataset column: `{"bytes": <wav>, "path": None}`."""
    return {"bytes": encode_wav(waveform, sampling_rate), "path": None}
