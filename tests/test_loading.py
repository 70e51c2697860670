from __future__ import annotations

import io
import json
import logging

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from datasets import Audio, ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, Value

from hf_gnft.audio import AudioError, encode_wav
from hf_gnft.data.loading import (
    KEYWORDS,
    DatasetFormatError,
    dataset_source,
    decode_example_audio,
    load_keyword_dataset,
    prepare_keyword_dataset,
    select_keywords,
    speech_commands,
)

SR = 16_000


def tone(frequency: float, sampling_rate: int = SR, seconds: float = 0.1) -> np.ndarray:
    t = np.arange(int(round(seconds * sampling_rate))) / sampling_rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def read_wav(value: dict) -> tuple[np.ndarray, int, str]:
    waveform, rate = sf.read(io.BytesIO(value["bytes"]), dtype="float32")
    return waveform, rate, sf.info(io.BytesIO(value["bytes"])).subtype


def make_dataset(columns: dict[str, list], features: Features) -> Dataset:
    """Build a dataset with an Audio column without torchcodec (from_dict would need it to encode)."""
    table = pa.table({name: columns[name] for name in features}).cast(features.arrow_schema)
    return Dataset(table, info=DatasetInfo(features=features))


# -- an audiofolder: <root>/<split>/<label>/<clip>.wav ------------------------------------------------

# clip -> (split, label, sampling rate, channels, frequency)
CLIPS = {
    "a": ("train", "yes", SR, 1, 500.0),
    "b": ("train", "no", 22_050, 1, 1000.0),
    "c": ("train", "yes", SR, 2, 700.0),
    "d": ("train", "no", SR, 1, 900.0),
    "e": ("test", "no", 22_050, 1, 1200.0),
    "f": ("test", "yes", SR, 1, 300.0),
}


def clip_samples(clip: str) -> np.ndarray:
    _, _, rate, channels, frequency = CLIPS[clip]
    mono = tone(frequency, rate)
    if channels == 2:
        return np.stack([mono, 0.5 * tone(2 * frequency, rate)], axis=1)
    return mono


def write_audiofolder(root) -> None:
    for clip, (split, label, rate, _, _) in CLIPS.items():
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{clip}.wav", clip_samples(clip), rate, subtype="FLOAT")


@pytest.fixture(scope="module")
def audiofolder(tmp_path_factory):
    root = tmp_path_factory.mktemp("audiofolder")
    write_audiofolder(root)
    return root


@pytest.fixture(scope="module")
def loaded_audiofolder(audiofolder, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return load_keyword_dataset("audiofolder", data_dir=str(audiofolder), cache_dir=str(cache))


def expected_clip(clip: str) -> np.ndarray:
    """What a clip should look like after loading: mono (channel mean) at 16 kHz."""
    samples = clip_samples(clip)
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float64).astype(np.float32)
    return decode_example_audio({"array": samples, "sampling_rate": CLIPS[clip][2]}, SR)


def find_clip(split_ds: Dataset, clip: str) -> dict:
    """The row of `clip`, recognised by its label and its samples."""
    target = expected_clip(clip)
    names = split_ds.features["label"].names
    for row in split_ds:
        waveform, rate, _ = read_wav(row["audio"])
        if waveform.shape == target.shape and np.allclose(waveform, target, atol=1e-6):
            return {"waveform": waveform, "rate": rate, "label": names[row["label"]]}
    raise AssertionError(f"clip {clip} not found")


def test_audiofolder_loads_every_split(loaded_audiofolder):
    assert isinstance(loaded_audiofolder, DatasetDict)
    assert {split: len(part) for split, part in loaded_audiofolder.items()} == {"train": 4, "test": 2}


def test_audiofolder_labels_are_a_class_label_shared_by_splits(loaded_audiofolder):
    for part in loaded_audiofolder.values():
        assert part.features["label"] == ClassLabel(names=["no", "yes"])
    assert find_clip(loaded_audiofolder["train"], "a")["label"] == "yes"
    assert find_clip(loaded_audiofolder["train"], "b")["label"] == "no"
    assert find_clip(loaded_audiofolder["test"], "e")["label"] == "no"


def test_audiofolder_audio_is_float_wav_bytes_at_16k(loaded_audiofolder):
    for part in loaded_audiofolder.values():
        assert part.features["audio"] == Audio(sampling_rate=SR, decode=False)
        for value in part["audio"]:
            assert value["path"] is None
            waveform, rate, subtype = read_wav(value)
            assert (rate, subtype, waveform.ndim) == (SR, "FLOAT", 1)


def test_audiofolder_resamples_22050_hz_clips(loaded_audiofolder):
    row = find_clip(loaded_audiofolder["train"], "b")
    assert row["waveform"].shape == (int(round(0.1 * SR)),)  # 2205 samples at 22.05 kHz -> 1600 at 16 kHz
    spectrum = np.abs(np.fft.rfft(row["waveform"] * np.hanning(row["waveform"].size)))
    assert np.fft.rfftfreq(row["waveform"].size, 1 / SR)[np.argmax(spectrum)] == pytest.approx(
        1000.0, abs=10.0
    )


def test_audiofolder_stereo_clip_is_down_mixed(loaded_audiofolder):
    row = find_clip(loaded_audiofolder["train"], "c")
    left, right = clip_samples("c").T
    np.testing.assert_allclose(row["waveform"], (left + right) / 2, atol=1e-7)


def test_audiofolder_records_its_source(loaded_audiofolder, audiofolder):
    record = dataset_source(loaded_audiofolder)
    assert record["source"] == "audiofolder"
    assert record["data_dir"] == str(audiofolder)
    assert record["revision"] is None


def test_split_argument_returns_one_dataset(audiofolder, tmp_path):
    test = load_keyword_dataset(
        "audiofolder", data_dir=str(audiofolder), split="test", cache_dir=str(tmp_path)
    )
    assert isinstance(test, Dataset)
    assert len(test) == 2
    assert test.features["audio"] == Audio(sampling_rate=SR, decode=False)


def test_num_proc_2_gives_identical_bytes(audiofolder, loaded_audiofolder, tmp_path):
    parallel = load_keyword_dataset(
        "audiofolder", data_dir=str(audiofolder), num_proc=2, cache_dir=str(tmp_path)
    )
    for split, part in loaded_audiofolder.items():
        assert parallel[split]["audio"][:] == part["audio"][:]
        assert parallel[split]["label"][:] == part["label"][:]
        # The decoding really ran in two processes: map wrote one cache shard per process.
        assert len(parallel[split].cache_files) == 2


def test_local_directory_of_wav_files_loads_without_torchcodec(audiofolder, loaded_audiofolder, tmp_path):
    ds = load_keyword_dataset(str(audiofolder), cache_dir=str(tmp_path))
    assert ds["train"].features["label"] == ClassLabel(names=["no", "yes"])
    assert ds["train"]["audio"][:] == loaded_audiofolder["train"]["audio"][:]


def test_cached_decoding_depends_on_the_sampling_rate(audiofolder, tmp_path):
    first = load_keyword_dataset(
        "audiofolder", data_dir=str(audiofolder), split="test", cache_dir=str(tmp_path)
    )
    again = load_keyword_dataset(
        "audiofolder", data_dir=str(audiofolder), split="test", cache_dir=str(tmp_path)
    )
    slower = load_keyword_dataset(
        "audiofolder", data_dir=str(audiofolder), split="test", sampling_rate=8000, cache_dir=str(tmp_path)
    )
    assert again.cache_files == first.cache_files  # the decoding is cached...
    assert {read_wav(value)[1] for value in slower["audio"]} == {8000}  # ...per sampling rate


def test_audiofolder_with_metadata_file_needs_torchcodec(tmp_path):
    (tmp_path / "meta").mkdir()
    sf.write(tmp_path / "meta" / "a.wav", tone(440.0), SR)
    (tmp_path / "meta" / "metadata.csv").write_text("file_name,label\na.wav,yes\n")
    with pytest.raises(DatasetFormatError, match="needs torchcodec"):
        load_keyword_dataset(
            "audiofolder", data_dir=str(tmp_path / "meta"), cache_dir=str(tmp_path / "cache")
        )


def test_audiofolder_without_label_folders_has_no_labels(tmp_path):
    (tmp_path / "flat").mkdir()
    sf.write(tmp_path / "flat" / "a.wav", tone(440.0), SR)
    sf.write(tmp_path / "flat" / "b.wav", tone(660.0), SR)
    with pytest.raises(DatasetFormatError, match="has no labels"):
        load_keyword_dataset(
            "audiofolder", data_dir=str(tmp_path / "flat"), cache_dir=str(tmp_path / "cache")
        )


def test_synthetic_is_not_loaded_here():
    with pytest.raises(ValueError, match="hf_gnft.data.synthetic"):
        load_keyword_dataset("synthetic")


# -- a local "Hub-like" parquet dataset (the layout of google/speech_commands' parquet files) ---------

SC_NAMES = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "zero", "one", "_silence_"]
SC_FEATURES = Features(
    {
        "file": Value("string"),
        "audio": Audio(sampling_rate=SR),
        "label": ClassLabel(names=SC_NAMES),
        "is_unknown": Value("bool"),
        "speaker_id": Value("string"),
        "utterance_id": Value("int8"),
    }
)


def pcm16_wav(waveform: np.ndarray, rate: int = SR) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, waveform, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def speech_commands_rows(words: list[str]) -> list[dict]:
    return [
        {
            "file": f"{word}/speaker{index}_nohash_0.wav",
            "audio": {"bytes": pcm16_wav(tone(300.0 + 50 * index)), "path": f"speaker{index}_nohash_0.wav"},
            "label": SC_NAMES.index(word),
            "is_unknown": word not in KEYWORDS and word != "_silence_",
            "speaker_id": f"speaker{index}",
            "utterance_id": 0,
        }
        for index, word in enumerate(words)
    ]


def write_parquet(path, rows: list[dict], features: Features) -> None:
    """A parquet file as the Hub stores it: the datasets features in the schema metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows).select(list(features)).cast(features.arrow_schema)
    metadata = {"huggingface": json.dumps({"info": {"features": features.to_dict()}})}
    pq.write_table(table.replace_schema_metadata(metadata), path)


@pytest.fixture
def parquet_repo(tmp_path):
    root = tmp_path / "speech_commands_like"
    write_parquet(
        root / "data" / "train-00000-of-00001.parquet",
        speech_commands_rows(["yes", "no", "zero"]),
        SC_FEATURES,
    )
    write_parquet(
        root / "data" / "test-00000-of-00001.parquet",
        speech_commands_rows(["stop", "_silence_"]),
        SC_FEATURES,
    )
    return root


def test_local_parquet_dataset_loads_as_keyword_dataset(parquet_repo, tmp_path):
    ds = load_keyword_dataset(str(parquet_repo), cache_dir=str(tmp_path / "cache"))
    assert set(ds) == {"train", "test"}
    train = ds["train"]
    assert train.features["label"] == ClassLabel(names=SC_NAMES)
    assert train.features["audio"] == Audio(sampling_rate=SR, decode=False)
    assert [SC_NAMES[label] for label in train["label"]] == ["yes", "no", "zero"]
    waveform, rate, subtype = read_wav(train[1]["audio"])
    assert (rate, subtype) == (SR, "FLOAT")
    np.testing.assert_allclose(waveform, tone(350.0), atol=1 / 2**15)


def test_local_parquet_dataset_keeps_other_columns(parquet_repo, tmp_path):
    ds = load_keyword_dataset(str(parquet_repo), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.column_names == list(SC_FEATURES)
    assert list(ds["speaker_id"]) == ["speaker0", "speaker1", "speaker2"]


def test_custom_column_names_are_renamed(tmp_path):
    features = Features({"speech": Audio(), "command": Value("string"), "speaker_id": Value("string")})
    rows = [
        {"speech": {"bytes": encode_wav(tone(440.0), SR), "path": None}, "command": "go", "speaker_id": "s"}
    ]
    write_parquet(tmp_path / "repo" / "train.parquet", rows, features)
    ds = load_keyword_dataset(
        str(tmp_path / "repo"),
        audio_column="speech",
        label_column="command",
        cache_dir=str(tmp_path / "cache"),
    )
    assert ds["train"].column_names == ["audio", "label", "speaker_id"]
    assert ds["train"].features["label"] == ClassLabel(names=["go"])


def test_missing_audio_column_lists_the_columns(tmp_path):
    rows = [{"speech": {"bytes": encode_wav(tone(440.0), SR), "path": None}, "label": 0}]
    features = Features({"speech": Audio(), "label": ClassLabel(names=["yes"])})
    write_parquet(tmp_path / "repo" / "train.parquet", rows, features)
    with pytest.raises(
        DatasetFormatError, match=r"no audio column 'audio'; available columns: \['speech', 'label'\]"
    ):
        load_keyword_dataset(str(tmp_path / "repo"), cache_dir=str(tmp_path / "cache"))


def test_dataset_without_label_column_raises(tmp_path):
    rows = [{"audio": {"bytes": encode_wav(tone(440.0), SR), "path": None}, "speaker_id": "s"}]
    write_parquet(
        tmp_path / "repo" / "train.parquet", rows, Features({"audio": Audio(), "speaker_id": Value("string")})
    )
    with pytest.raises(DatasetFormatError, match="no label column 'label': keyword datasets need labels"):
        load_keyword_dataset(str(tmp_path / "repo"), cache_dir=str(tmp_path / "cache"))


# -- the Hub, faked: `datasets.load_dataset` is replaced so that nothing is downloaded -------------------

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def fake_hub(monkeypatch, parquet_repo, tmp_path):
    """`load_dataset` for Hub ids: the local parquet repo, stored in a folder named like a commit (as
    datasets names its cache folders). `script_dataset=True` mimics a repo that still has a loading script."""
    calls = []
    local = datasets.load_dataset(str(parquet_repo), cache_dir=str(tmp_path / "cache"))
    for split, part in local.items():
        part.save_to_disk(str(tmp_path / "hub" / split / SHA))
    state = {"script_dataset": False}

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        assert "trust_remote_code" not in kwargs
        if state["script_dataset"] and kwargs.get("revision") is None:
            raise RuntimeError("Dataset scripts are no longer supported, but found speech_commands.py")
        parts = {split: Dataset.load_from_disk(str(tmp_path / "hub" / split / SHA)) for split in local}
        return parts[kwargs["split"]] if kwargs.get("split") else DatasetDict(parts)

    monkeypatch.setattr("hf_gnft.data.loading.load_dataset", fake_load_dataset)
    return calls, state


def test_hub_dataset_records_the_resolved_revision(fake_hub):
    calls, _ = fake_hub
    ds = load_keyword_dataset("google/speech_commands", name="v0.02", revision="main")
    assert calls[0][0] == "google/speech_commands"
    assert calls[0][1]["name"] == "v0.02"
    record = dataset_source(ds)
    assert record["revision"] == SHA
    assert record["requested_revision"] == "main"
    assert record["config"] == "v0.02"


def test_script_dataset_falls_back_to_the_parquet_export(fake_hub):
    calls, state = fake_hub
    state["script_dataset"] = True
    ds = load_keyword_dataset("google/speech_commands", name="v0.02", split="test")
    assert [kwargs.get("revision") for _, kwargs in calls] == [None, "refs/convert/parquet"]
    assert dataset_source(ds)["requested_revision"] == "refs/convert/parquet"


def test_speech_commands_keeps_the_keywords_only(fake_hub):
    ds = speech_commands()
    assert ds["train"].features["label"] == ClassLabel(names=list(KEYWORDS))
    assert list(ds["train"]["word"]) == ["yes", "no"]
    assert list(ds["test"]["word"]) == ["stop"]
    assert ds["train"].features["audio"] == Audio(sampling_rate=SR, decode=False)
    assert read_wav(ds["train"][0]["audio"])[1:] == (SR, "FLOAT")
    assert list(ds["train"]["speaker_id"]) == ["speaker0", "speaker1"]


def test_speech_commands_with_unknown_and_silence(fake_hub):
    ds = speech_commands(include_unknown=True, include_silence=True)
    names = ds["train"].features["label"].names
    assert names == [*KEYWORDS, "_silence_", "_unknown_"]
    assert [names[label] for label in ds["train"]["label"]] == ["yes", "no", "_unknown_"]
    assert [names[label] for label in ds["test"]["label"]] == ["stop", "_silence_"]


# -- prepare_keyword_dataset on in-memory datasets -----------------------------------------------------

RAW_FEATURES = Features(
    {"audio": Audio(sampling_rate=SR, decode=False), "label": ClassLabel(names=["no", "yes"])}
)


def raw_dataset(waveforms: list[np.ndarray], labels: list[int], rate: int = SR) -> Dataset:
    audio = [{"bytes": encode_wav(waveform, rate), "path": None} for waveform in waveforms]
    return make_dataset({"audio": audio, "label": labels}, RAW_FEATURES)


def test_nan_samples_raise_audio_error_naming_the_row():
    bad = tone(440.0)
    bad[7] = np.nan
    ds = DatasetDict({"validation": raw_dataset([tone(440.0), tone(550.0), bad], [0, 1, 0])})
    with pytest.raises(AudioError, match=r"validation row 2: 1 of 1600 samples are NaN or infinite"):
        prepare_keyword_dataset(ds)


def test_nan_row_index_is_global_with_num_proc():
    waveforms = [tone(440.0) for _ in range(6)]
    waveforms[4][2] = np.nan
    with pytest.raises(AudioError, match=r"^row 4: 1 of 1600 samples are NaN"):
        prepare_keyword_dataset(raw_dataset(waveforms, [0] * 6), num_proc=2)


def test_empty_clip_raises_audio_error_naming_the_row():
    ds = raw_dataset([tone(440.0), np.zeros(0, dtype=np.float32)], [0, 1])
    with pytest.raises(AudioError, match=r"row 1: the clip is empty"):
        prepare_keyword_dataset(ds)


def test_undecodable_bytes_raise_audio_error_naming_the_row():
    audio = [{"bytes": b"not a wav file", "path": "broken.wav"}]
    ds = make_dataset({"audio": audio, "label": [0]}, RAW_FEATURES)
    with pytest.raises(AudioError, match=r"row 0 \(broken.wav\)"):
        prepare_keyword_dataset(ds)


def test_string_labels_are_class_encoded_jointly_over_splits():
    features = Features({"audio": Audio(decode=False), "label": Value("string")})
    audio = {"bytes": encode_wav(tone(440.0), SR), "path": None}
    ds = DatasetDict(
        {
            "train": make_dataset({"audio": [audio, audio], "label": ["up", "down"]}, features),
            "test": make_dataset({"audio": [audio], "label": ["up"]}, features),
        }
    )
    prepared = prepare_keyword_dataset(ds)
    assert (
        prepared["train"].features["label"]
        == prepared["test"].features["label"]
        == ClassLabel(names=["down", "up"])
    )
    assert list(prepared["test"]["label"]) == [1]


def test_audio_column_without_audio_raises():
    ds = Dataset.from_dict({"audio": [0.5], "label": ["yes"]})
    with pytest.raises(DatasetFormatError, match="does not hold audio"):
        prepare_keyword_dataset(ds)


def test_plain_bytes_path_structs_are_accepted():
    ds = Dataset.from_dict(
        {"audio": [{"bytes": encode_wav(tone(440.0, 8000), 8000), "path": None}], "label": ["up"]}
    )
    prepared = prepare_keyword_dataset(ds)
    assert prepared.features["audio"] == Audio(sampling_rate=SR, decode=False)
    assert read_wav(prepared[0]["audio"])[0].shape == (1600,)


def test_integer_labels_without_names_raise():
    features = Features({"audio": Audio(decode=False), "label": Value("int64")})
    ds = make_dataset(
        {"audio": [{"bytes": encode_wav(tone(440.0), SR), "path": None}], "label": [3]}, features
    )
    with pytest.raises(DatasetFormatError, match="must be a ClassLabel or strings"):
        prepare_keyword_dataset(ds)


def test_max_duration_truncates_long_clips():
    ds = raw_dataset([tone(440.0, seconds=0.5), tone(440.0, seconds=0.05)], [0, 1])
    prepared = prepare_keyword_dataset(ds, max_duration_s=0.1)
    lengths = [read_wav(value)[0].size for value in prepared["audio"]]
    assert lengths == [1600, 800]


def test_prepare_is_idempotent():
    prepared = prepare_keyword_dataset(raw_dataset([tone(440.0), tone(550.0)], [1, 0]))
    again = prepare_keyword_dataset(prepared)
    assert again["audio"][:] == prepared["audio"][:]


def test_target_sampling_rate_is_honoured():
    prepared = prepare_keyword_dataset(raw_dataset([tone(440.0)], [0]), sampling_rate=8000)
    assert prepared.features["audio"] == Audio(sampling_rate=8000, decode=False)
    waveform, rate, _ = read_wav(prepared[0]["audio"])
    assert (rate, waveform.size) == (8000, 800)


def test_decode_example_audio_returns_the_waveform_at_the_rate():
    waveform = decode_example_audio({"bytes": encode_wav(tone(440.0, 22_050), 22_050), "path": None}, SR)
    assert waveform.dtype == np.float32
    assert waveform.shape == (1600,)


# -- select_keywords ------------------------------------------------------------------------------------


@pytest.fixture
def commands():
    features = Features(
        {
            "audio": Audio(sampling_rate=SR, decode=False),
            "label": ClassLabel(names=SC_NAMES),
            "speaker_id": Value("string"),
        }
    )
    words = ["yes", "zero", "_silence_", "stop", "one", "no"]
    audio = [{"bytes": encode_wav(tone(300.0 + 10 * i), SR), "path": None} for i in range(len(words))]
    labels = [SC_NAMES.index(word) for word in words]
    return make_dataset(
        {"audio": audio, "label": labels, "speaker_id": [f"s{i}" for i in range(len(words))]}, features
    )


def relabeled(ds: Dataset) -> list[tuple[str, str]]:
    names = ds.features["label"].names
    return [(ds[i]["speaker_id"], names[ds[i]["label"]]) for i in range(len(ds))]


def test_select_keywords_drops_other_words(commands):
    ds = select_keywords(commands, KEYWORDS)
    assert ds.features["label"] == ClassLabel(names=list(KEYWORDS))
    assert relabeled(ds) == [("s0", "yes"), ("s3", "stop"), ("s5", "no")]


def test_select_keywords_maps_other_words_to_unknown(commands):
    ds = select_keywords(commands, KEYWORDS, include_unknown=True)
    assert ds.features["label"].names == [*KEYWORDS, "_unknown_"]
    assert relabeled(ds) == [
        ("s0", "yes"),
        ("s1", "_unknown_"),
        ("s3", "stop"),
        ("s4", "_unknown_"),
        ("s5", "no"),
    ]


def test_select_keywords_keeps_silence_when_asked(commands):
    ds = select_keywords(commands, KEYWORDS, include_unknown=True, include_silence=True)
    assert ds.features["label"].names == [*KEYWORDS, "_silence_", "_unknown_"]
    assert ("s2", "_silence_") in relabeled(ds)
    assert len(ds) == 6


def test_select_keywords_keeps_the_original_word_and_audio(commands):
    ds = select_keywords(commands, ("yes", "no"), include_unknown=True)
    assert list(ds["word"]) == ["yes", "zero", "stop", "one", "no"]
    assert ds[1]["audio"] == commands[1]["audio"]


def test_select_keywords_rejects_unknown_keywords(commands):
    with pytest.raises(DatasetFormatError, match=r"keywords \['maybe'\] are not classes"):
        select_keywords(commands, ("yes", "maybe"))


def test_select_keywords_on_a_dataset_dict_relabels_each_split(commands):
    ds = select_keywords(DatasetDict({"train": commands, "test": commands.select([0, 1])}), ("yes",))
    assert {split: len(part) for split, part in ds.items()} == {"train": 1, "test": 1}


def test_select_keywords_warns_when_silence_is_missing(caplog):
    features = Features({"audio": Audio(decode=False), "label": ClassLabel(names=["yes", "no"])})
    ds = make_dataset(
        {"audio": [{"bytes": encode_wav(tone(440.0), SR), "path": None}], "label": [0]}, features
    )
    with caplog.at_level(logging.WARNING, logger="hf_gnft.data.loading"):
        select_keywords(ds, ("yes",), include_silence=True)
    assert any("no _silence_ class" in record.getMessage() for record in caplog.records)
