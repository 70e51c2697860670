"""The embedded default data: a Speech-Commands-like keyword corpus spoken by eSpeak NG.

Every clip is a pure function of `(config, split, index)`: the speaker, the word, the rate/pitch
jitter, the background noise, its SNR and the offset come from `numpy.random.default_rng` keyed by
the corpus seed, the split and the index, and eSpeak NG is driven deterministically (see
`hf_gnft.data.espeak`). The corpus is therefore bit-identical for a seed, whatever the order or
number of processes that render it, and `corpus_fingerprint` names it on disk.

Speakers are (voice, variant, base pitch, pitch range, base rate) tuples; the (voice, variant) pairs
of train, validation and test are disjoint, so test speakers are never heard in training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, Value, load_from_disk

from ..audio import DEFAULT_SAMPLING_RATE, audio_value, resample
from ..outputs import atomic_cache_dir
from .espeak import ENGLISH_VOICES, ESPEAK_SAMPLING_RATE, ESpeakSynthesizer, list_variants
from .keywords import KEYWORDS, SILENCE_LABEL, UNKNOWN_LABEL, UNKNOWN_WORDS
from .loading import dataset_from_arrays

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_SPLIT_IDS = {name: number for number, name in enumerate(SPLITS)}
# Bump when the rendering changes in a way that changes the audio: it is part of the fingerprint.
_RENDER_VERSION = 1


@dataclass
class SyntheticKeywordsConfig:
    """How to render the synthetic keyword corpus.

    Args:
        train_size: number of training clips.
        validation_size: number of validation clips.
        test_size: number of test clips.
        keywords: the keyword classes, in label order.
        include_silence: add a SUPERB-style `_silence_` class (background noise only).
        include_unknown: add an `_unknown_` class spoken from `UNKNOWN_WORDS`.
        seed: the corpus seed; the same config gives bit-identical audio.
        sampling_rate: output rate in Hz (eSpeak speaks at 22 050 Hz; clips are resampled with soxr).
        clip_duration_s: clip length in seconds.
        snr_db: range of the background-noise SNR in dB (uniform).
        rate_wpm: range of a speaker's base speaking rate, words per minute.
        pitch: range of a speaker's base pitch (eSpeak 0–100).
        pitch_range: range of a speaker's pitch range (eSpeak 0–100).
        peak_dbfs: range of the speech peak level in dBFS.
        speaker_fractions: shares of the (voice, variant) pairs given to train/validation/test.
    """

    train_size: int = 4000
    validation_size: int = 500
    test_size: int = 1000
    keywords: tuple[str, ...] = KEYWORDS
    include_silence: bool = False
    include_unknown: bool = False
    seed: int = 0
    sampling_rate: int = DEFAULT_SAMPLING_RATE
    clip_duration_s: float = 1.0
    snr_db: tuple[float, float] = (20.0, 40.0)
    rate_wpm: tuple[int, int] = (120, 220)
    pitch: tuple[int, int] = (20, 80)
    pitch_range: tuple[int, int] = (20, 90)
    peak_dbfs: tuple[float, float] = (-12.0, -1.0)
    speaker_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    voices: tuple[str, ...] = ENGLISH_VOICES

    def __post_init__(self) -> None:
        for name in ("train_size", "validation_size", "test_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.train_size + self.validation_size + self.test_size == 0:
            raise ValueError("the corpus would be empty: all split sizes are 0")
        self.keywords = tuple(self.keywords)
        if not self.keywords or len(set(self.keywords)) != len(self.keywords):
            raise ValueError(f"keywords must be a non-empty list of distinct words, got {self.keywords}")
        for name in ("snr_db", "rate_wpm", "pitch", "pitch_range", "peak_dbfs"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be a (low, high) range, got {(low, high)}")
            setattr(self, name, (low, high))
        if self.peak_dbfs[1] > 0:
            raise ValueError(f"peak_dbfs must be <= 0 dBFS, got {self.peak_dbfs}")
        if self.sampling_rate <= 0 or self.clip_duration_s <= 0:
            raise ValueError("sampling_rate and clip_duration_s must be positive")
        fractions = tuple(float(f) for f in self.speaker_fractions)
        if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(f"speaker_fractions must be three positive shares summing to 1, got {fractions}")
        self.speaker_fractions = fractions
        self.voices = tuple(self.voices)

    @property
    def label_names(self) -> list[str]:
        """Class names in label order: the keywords, then `_silence_` and `_unknown_` when enabled."""
        names = list(self.keywords)
        if self.include_silence:
            names.append(SILENCE_LABEL)
        if self.include_unknown:
            names.append(UNKNOWN_LABEL)
        return names

    def split_size(self, split: str) -> int:
        return {"train": self.train_size, "validation": self.validation_size, "test": self.test_size}[split]

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


def corpus_fingerprint(config: SyntheticKeywordsConfig) -> str:
    """A short hash of everything that determines the corpus' audio (config, renderer, eSpeak build)."""
    from importlib.metadata import version

    payload = {
        "config": config.to_dict(),
        "render_version": _RENDER_VERSION,
        "espeakng_loader": version("espeakng-loader"),
        "soxr": version("soxr"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _speaker_pools(config: SyntheticKeywordsConfig) -> dict[str, list[tuple[str, str]]]:
    """Partition the (voice, variant) pairs into disjoint train/validation/test pools."""
    pairs = [(voice, variant) for voice in config.voices for variant in list_variants()]
    order = np.random.default_rng([config.seed, 7919]).permutation(len(pairs))
    pairs = [pairs[i] for i in order]
    n_train = int(round(config.speaker_fractions[0] * len(pairs)))
    n_val = int(round(config.speaker_fractions[1] * len(pairs)))
    return {
        "train": pairs[:n_train],
        "validation": pairs[n_train : n_train + n_val],
        "test": pairs[n_train + n_val :],
    }


def _speaker(config: SyntheticKeywordsConfig, split: str, pool_index: int, pair: tuple[str, str]) -> dict:
    """A speaker's fixed traits, derived from the seed and its (voice, variant) pair."""
    rng = np.random.default_rng([config.seed, 104729, _SPLIT_IDS[split], pool_index])
    return {
        "voice": f"{pair[0]}+{pair[1]}",
        "rate": int(rng.integers(config.rate_wpm[0], config.rate_wpm[1] + 1)),
        "pitch": int(rng.integers(config.pitch[0], config.pitch[1] + 1)),
        "pitch_range": int(rng.integers(config.pitch_range[0], config.pitch_range[1] + 1)),
    }


def clip_specs(config: SyntheticKeywordsConfig, split: str) -> list[dict]:
    """The per-clip recipe of a split: label, word, speaker and seeds (no audio yet)."""
    size = config.split_size(split)
    pool = _speaker_pools(config)[split]
    if size and not pool:
        raise ValueError(f"split {split!r} has no speakers: raise its share in speaker_fractions")
    names = config.label_names
    specs = []
    for index in range(size):
        rng = np.random.default_rng([config.seed, _SPLIT_IDS[split], index])
        label = index % len(names)  # balanced classes
        name = names[label]
        if name == UNKNOWN_LABEL:
            word = UNKNOWN_WORDS[int(rng.integers(len(UNKNOWN_WORDS)))]
        elif name == SILENCE_LABEL:
            word = ""
        else:
            word = name
        pool_index = int(rng.integers(len(pool)))
        speaker = _speaker(config, split, pool_index, pool[pool_index])
        specs.append(
            {
                "clip_id": f"{split}-{index:06d}",
                "label": label,
                "word": word,
                "speaker_id": f"{speaker['voice']}/r{speaker['rate']}/p{speaker['pitch']}/pr{speaker['pitch_range']}",
                "voice": speaker["voice"],
                "rate": int(np.clip(speaker["rate"] * rng.uniform(0.9, 1.1), 80, 450)),
                "pitch": int(np.clip(speaker["pitch"] + rng.integers(-5, 6), 0, 100)),
                "pitch_range": speaker["pitch_range"],
                "clip_seed": int(rng.integers(2**31 - 1)),
            }
        )
    return specs


def _colored_noise(rng: np.random.Generator, num_samples: int, exponent: float) -> np.ndarray:
    """Unit-RMS noise with a 1/f^exponent power spectrum (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    frequencies = np.fft.rfftfreq(num_samples)
    frequencies[0] = frequencies[1]
    spectrum /= frequencies ** (exponent / 2)
    noise = np.fft.irfft(spectrum, n=num_samples)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _trim_silence(samples: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples) > threshold * np.abs(samples).max())
    return samples[loud[0] : loud[-1] + 1] if loud.size else samples


def render_clip(spec: dict, config: SyntheticKeywordsConfig, synthesizer: ESpeakSynthesizer) -> np.ndarray:
    """Render one clip from its spec: speech at a random offset and level over background noise."""
    num_samples = int(round(config.clip_duration_s * config.sampling_rate))
    rng = np.random.default_rng([config.seed, spec["clip_seed"]])
    clip = np.zeros(num_samples, dtype=np.float64)
    if spec["word"]:
        speech = synthesizer.synthesize(
            spec["word"],
            spec["voice"],
            rate=spec["rate"],
            pitch=spec["pitch"],
            pitch_range=spec["pitch_range"],
            seed=spec["clip_seed"],
        )
        speech = resample(speech.astype(np.float32) / 32768.0, ESPEAK_SAMPLING_RATE, config.sampling_rate)
        speech = _trim_silence(speech.astype(np.float64))[:num_samples]
        peak = np.abs(speech).max()
        if peak > 0:
            speech *= 10 ** (rng.uniform(*config.peak_dbfs) / 20) / peak
        offset = int(rng.integers(0, num_samples - speech.size + 1))
        clip[offset : offset + speech.size] = speech
        speech_rms = np.sqrt(np.mean(speech**2))
    else:  # _silence_: background only, at a level speech would have
        speech_rms = 10 ** (rng.uniform(*config.peak_dbfs) / 20) / 4
    noise = _colored_noise(rng, num_samples, exponent=float(rng.choice([0.0, 1.0, 2.0])))
    snr_db = rng.uniform(*config.snr_db)
    clip += noise * speech_rms * 10 ** (-snr_db / 20)
    return np.clip(clip, -1.0, 1.0).astype(np.float32)


def _features(config: SyntheticKeywordsConfig) -> Features:
    return Features(
        {
            "audio": Audio(sampling_rate=config.sampling_rate, decode=False),
            "label": ClassLabel(names=config.label_names),
            "word": Value("string"),
            "speaker_id": Value("string"),
            "clip_id": Value("string"),
        }
    )


_SYNTHESIZER: ESpeakSynthesizer | None = None


def _render_batch(batch: dict, config: SyntheticKeywordsConfig) -> dict:
    global _SYNTHESIZER
    if _SYNTHESIZER is None:  # one worker per rendering process
        _SYNTHESIZER = ESpeakSynthesizer()
    rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    return {
        "audio": [audio_value(render_clip(row, config, _SYNTHESIZER), config.sampling_rate) for row in rows]
    }


def render_split(config: SyntheticKeywordsConfig, split: str, num_proc: int | None = None) -> Dataset:
    """Render one split as a `Dataset` (no disk cache; see `load_synthetic_keywords`)."""
    specs = clip_specs(config, split)
    if not specs:
        return _empty_split(config)
    base = Dataset.from_dict({key: [spec[key] for spec in specs] for key in specs[0]})
    rendered = base.map(
        _render_batch,
        fn_kwargs={"config": config},
        batched=True,
        batch_size=64,
        num_proc=num_proc,
        desc=f"Speaking {split} clips with eSpeak NG",
        load_from_cache_file=False,
    )
    rendered = rendered.cast_column("audio", Audio(sampling_rate=config.sampling_rate, decode=False))
    rendered = rendered.cast_column("label", ClassLabel(names=config.label_names))
    return rendered.select_columns(list(_features(config)))


def _empty_split(config: SyntheticKeywordsConfig) -> Dataset:
    columns = {"word": [], "speaker_id": [], "clip_id": []}
    return dataset_from_arrays(
        [], [], config.label_names, sampling_rate=config.sampling_rate, extra_columns=columns
    )


def default_cache_dir() -> Path:
    """`$HF_GNFT_CACHE`, else `~/.cache/hf_gnft`."""
    return Path(os.environ.get("HF_GNFT_CACHE", Path.home() / ".cache" / "hf_gnft"))


def load_synthetic_keywords(
    config: SyntheticKeywordsConfig | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
    overwrite: bool = False,
) -> DatasetDict:
    """Render (or load from the disk cache) the synthetic keyword corpus.

    Args:
        config: what to render; defaults to `SyntheticKeywordsConfig()` (4000/500/1000 clips).
        cache_dir: where rendered corpora are kept, one folder per `corpus_fingerprint`.
        num_proc: processes used to render (the audio does not depend on it).
        overwrite: render again even when a cached copy exists.

    Returns:
        A `DatasetDict` with the `train`, `validation` and `test` splits (those of non-zero size) and the columns `audio`
        (`Audio(decode=False)`, 32-bit float WAV), `label` (`ClassLabel`), `word`, `speaker_id`, `clip_id`.
    """
    config = config or SyntheticKeywordsConfig()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "synthetic_keywords" / corpus_fingerprint(config)
    if target.exists() and not overwrite:
        logger.info("Loading the synthetic keyword corpus from %s", target)
        return load_from_disk(str(target))
    corpus = DatasetDict(
        {
            split: render_split(config, split, num_proc=num_proc)
            for split in SPLITS
            if config.split_size(split)
        }
    )
    # Written next to the target and renamed: a crash never leaves a half-written corpus that looks complete.
    if target.exists():  # overwrite: replaced by the new copy
        shutil.rmtree(target)
    with atomic_cache_dir(target) as staging:
        corpus.save_to_disk(str(staging))
        (staging / "hf_gnft_synthetic_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    return load_from_disk(str(target))


def corpus_content_hash(corpus: DatasetDict | Dataset) -> str:
    """SHA-256 over every split's audio bytes, labels and clip ids, in order."""
    digest = hashlib.sha256()
    splits = corpus.items() if isinstance(corpus, DatasetDict) else [("", corpus)]
    for name, split in splits:
        digest.update(name.encode())
        for row in split.select_columns(["audio", "label", "clip_id"]):
            digest.update(row["clip_id"].encode())
            digest.update(int(row["label"]).to_bytes(4, "little"))
            digest.update(row["audio"]["bytes"])
    return digest.hexdigest()
