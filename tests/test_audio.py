from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import soundfile as sf

from hf_gnft.audio import (
    AudioError,
    audio_value,
    encode_wav,
    load_audio,
    resample,
    to_mono,
    validate_waveform,
)

SR = 16_000


def sine(frequency: float = 1000.0, sampling_rate: int = SR, seconds: float = 0.25, amplitude: float = 0.5):
    t = np.arange(int(round(seconds * sampling_rate))) / sampling_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def dominant_frequency(waveform: np.ndarray, sampling_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(waveform.size)))
    return float(np.fft.rfftfreq(waveform.size, 1 / sampling_rate)[np.argmax(spectrum)])


@pytest.fixture
def wav_file(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, sine(), SR, subtype="FLOAT")
    return path


def test_load_audio_from_path(wav_file):
    waveform, rate = load_audio(wav_file)
    assert rate == SR
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    np.testing.assert_array_equal(waveform, sine())


def test_load_audio_from_str_path(wav_file):
    waveform, rate = load_audio(str(wav_file))
    assert rate == SR
    np.testing.assert_array_equal(waveform, sine())


def test_load_audio_from_bytes(wav_file):
    waveform, rate = load_audio(wav_file.read_bytes())
    assert rate == SR
    np.testing.assert_array_equal(waveform, sine())


def test_load_audio_from_bytes_path_dict_prefers_bytes(wav_file):
    waveform, rate = load_audio({"bytes": wav_file.read_bytes(), "path": "does/not/exist.wav"})
    assert rate == SR
    np.testing.assert_array_equal(waveform, sine())


def test_load_audio_from_path_only_dict(wav_file):
    waveform, rate = load_audio({"bytes": None, "path": str(wav_file)})
    assert rate == SR
    np.testing.assert_array_equal(waveform, sine())


def test_load_audio_from_decoded_dict():
    waveform, rate = load_audio({"array": sine(), "sampling_rate": SR})
    assert rate == SR
    np.testing.assert_array_equal(waveform, sine())


def test_load_audio_from_numpy_array_with_rate():
    waveform, rate = load_audio(sine().astype(np.float64), source_sampling_rate=SR)
    assert rate == SR
    assert waveform.dtype == np.float32
    np.testing.assert_array_equal(waveform, sine())


def test_load_audio_reads_integer_pcm_files_as_float(tmp_path):
    path = tmp_path / "pcm16.wav"
    sf.write(path, sine(), SR, subtype="PCM_16")
    waveform, _ = load_audio(path)
    assert waveform.dtype == np.float32
    np.testing.assert_allclose(waveform, sine(), atol=1 / 2**15)


def test_resampling_22050_to_16000_keeps_frequency_and_length():
    source = sine(1000.0, sampling_rate=22_050, seconds=1.0)
    waveform, rate = load_audio({"array": source, "sampling_rate": 22_050}, SR)
    assert rate == SR
    assert waveform.shape == (SR,)
    assert dominant_frequency(waveform, SR) == pytest.approx(1000.0, abs=2.0)
    # The amplitude survives (away from the edges, where the filter rings).
    assert np.abs(waveform[1000:-1000]).max() == pytest.approx(0.5, abs=0.01)


def test_resample_is_a_no_op_at_the_same_rate():
    np.testing.assert_array_equal(resample(sine(), SR, SR), sine())


def test_stereo_is_down_mixed_to_the_channel_mean(tmp_path, caplog):
    left, right = sine(1000.0), sine(300.0, amplitude=0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    with caplog.at_level(logging.INFO, logger="hf_gnft.audio"):
        waveform, _ = load_audio(path)
    np.testing.assert_allclose(waveform, (left + right) / 2, atol=1e-7)
    assert any("down-mixed 2 channels" in record.getMessage() for record in caplog.records)


def test_single_channel_2d_array_is_not_logged(caplog):
    with caplog.at_level(logging.INFO, logger="hf_gnft.audio"):
        waveform = to_mono(sine()[:, None])
    assert waveform.shape == sine().shape
    assert not caplog.records


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_raise(bad_value):
    waveform = sine()
    waveform[10] = bad_value
    with pytest.raises(
        AudioError, match=r"clip-7: 1 of \d+ samples are NaN or infinite \(first at index 10\)"
    ):
        load_audio(waveform, source_sampling_rate=SR, name="clip-7")


def test_non_finite_samples_in_a_file_raise(tmp_path):
    waveform = sine()
    waveform[3] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, waveform, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: 1 of .* NaN or infinite"):
        load_audio(path)


def test_empty_clip_raises(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="empty.wav: the clip is empty"):
        load_audio(path)


def test_empty_array_raises():
    with pytest.raises(AudioError, match="the clip is empty"):
        load_audio(np.zeros(0, dtype=np.float32), source_sampling_rate=SR)


def test_raw_array_without_rate_raises():
    with pytest.raises(AudioError, match="sampling rate is unknown"):
        load_audio(sine())


def test_decoded_dict_without_rate_raises():
    with pytest.raises(AudioError, match="needs a 'sampling_rate'"):
        load_audio({"array": sine(), "sampling_rate": None})


@pytest.mark.parametrize("rate", [0, -16000, 16000.5, True])
def test_invalid_sampling_rate_raises(rate):
    with pytest.raises(AudioError, match="sampling rate must be a positive integer"):
        validate_waveform(sine(), rate)


def test_undecodable_bytes_raise():
    with pytest.raises(AudioError, match="garbage: soundfile cannot decode this format"):
        load_audio(b"this is not audio at all", name="garbage")


def test_missing_file_raises(tmp_path):
    with pytest.raises(AudioError, match="no such audio file"):
        load_audio(tmp_path / "missing.wav")


def test_value_without_bytes_or_path_raises():
    with pytest.raises(AudioError, match="neither 'bytes' nor 'path'"):
        load_audio({"bytes": None, "path": None})


def test_integer_arrays_are_rejected():
    with pytest.raises(AudioError, match="integer samples"):
        load_audio((sine() * 32767).astype(np.int16), source_sampling_rate=SR)


def test_encode_wav_round_trip_is_bit_exact():
    waveform = np.random.default_rng(0).uniform(-1, 1, size=4001).astype(np.float32)
    waveform[:3] = [np.float32(1e-38), np.float32(-0.0), np.nextafter(np.float32(1), np.float32(0))]
    decoded, rate = load_audio(encode_wav(waveform, 22_050))
    assert rate == 22_050
    assert decoded.dtype == np.float32
    assert decoded.tobytes() == waveform.tobytes()


def test_audio_value_is_a_decode_false_column_value():
    value = audio_value(sine(), SR)
    assert value["path"] is None
    assert value["bytes"][:4] == b"RIFF"
    assert sf.info(io.BytesIO(value["bytes"])).subtype == "FLOAT"


def test_encode_wav_is_deterministic():
    # libsndfile adds a PEAK chunk with a time stamp to float WAV files: the same samples encoded a
    # second later would give other bytes (and other dataset fingerprints).
    waveform = sine()
    data = encode_wav(waveform, SR)
    assert b"PEAK" not in data
    assert data == encode_wav(waveform.copy(), SR)
