"""Loaders for real keyword-spotting data (the Hub, local dataset folders, audio folders).

Every loader returns a "keyword dataset": a `DatasetDict` (or `Dataset`) whose `audio` column is an
`Audio(sampling_rate=..., decode=False)` feature holding mono 32-bit float WAV bytes already at the
target sampling rate and validated (see `hf_gnft.audio`), and whose `label` column is a `ClassLabel`.
Other columns are kept.

Decoding never relies on datasets' own audio decoding (torchcodec + FFmpeg): clips are decoded with
`hf_gnft.audio.load_audio` (soundfile + soxr). When torchcodec is missing, an `audiofolder` is read
with its audio column as plain file paths, which datasets can build without encoding audio.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Audio, ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, Value, load_dataset
from datasets.fingerprint import Hasher

from .. import audio as _audio_module
from ..audio import DEFAULT_SAMPLING_RATE, AudioError, audio_value, load_audio, validate_waveform
from .keywords import KEYWORDS, SILENCE_LABEL, UNKNOWN_LABEL

logger = logging.getLogger(__name__)

#: The ten Speech Commands keywords of the standard 12-class keyword-spotting setup.
SPEECH_COMMANDS_REPO = "google/speech_commands"

_FOLDER_BUILDERS = ("audiofolder",)
_METADATA_FILENAMES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
_PARQUET_EXPORT_REVISION = "refs/convert/parquet"
_SOURCE_MARKER = "hf-gnft source: "
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
# The audio and label columns of a folder dataset read without torchcodec (see `_load_raw`).
_PATH_FEATURES = Features({"audio": Value("string"), "label": Value("string")})
_TORCHCODEC_NEEDED = (
    "datasets needs torchcodec to build {source!r}: it encodes the audio files while preparing a folder "
    "dataset, and the folder could not be read as <split>/<label>/<clip> paths either (a metadata file?). "
    "Install torchcodec and FFmpeg, or lay the folder out as <split>/<label>/<clip> without metadata."
)


class DatasetFormatError(ValueError):
    """Raised when a dataset does not fit the keyword-dataset layout (missing columns, no labels...)."""


@functools.lru_cache(maxsize=1)
def _torchcodec_available() -> bool:
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception:  # ImportError, or a broken FFmpeg / torch build (RuntimeError, OSError)
        return False
    return True


@functools.lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    """A hash of the decoding code. datasets fingerprints a `map` function by reference, not by what it
    calls, so without this a change to `hf_gnft.audio` would silently reuse stale cached decodings."""
    sources = []
    for path in (_audio_module.__file__, __file__):
        with open(path, "rb") as handle:
            sources.append(handle.read())
    return Hasher.hash(sources)


def _splits(ds: DatasetDict | Dataset) -> list[tuple[str | None, Dataset]]:
    if isinstance(ds, DatasetDict):
        return list(ds.items())
    if isinstance(ds, Dataset):
        return [(str(ds.split) if ds.split is not None else None, ds)]
    raise TypeError(f"expected a datasets.Dataset or DatasetDict, got {type(ds).__name__}")


def _where(split: str | None) -> str:
    return f"split {split!r}" if split else "the dataset"


def _is_hub_id(source: str) -> bool:
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return not os.path.exists(source) and source not in _PACKAGED_DATASETS_MODULES


def _has_metadata_file(data_dir: str | None) -> bool:
    if data_dir is None or not os.path.isdir(data_dir):
        return False
    return any(set(files) & set(_METADATA_FILENAMES) for _, _, files in os.walk(data_dir))


def _caused_by_missing_torchcodec(err: BaseException | None) -> bool:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ImportError) and "torchcodec" in str(err):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _resolved_revision(ds: DatasetDict | Dataset) -> str | None:
    """The Hub commit a dataset was built from: datasets names its cache folder after it."""
    for _, split in _splits(ds):
        for cache_file in split.cache_files:
            folder = os.path.basename(os.path.dirname(cache_file["filename"]))
            if _COMMIT_SHA.fullmatch(folder):
                return folder
    return None


def _record_source(ds: DatasetDict | Dataset, record: dict[str, Any]) -> None:
    line = _SOURCE_MARKER + json.dumps(record, sort_keys=True)
    for _, split in _splits(ds):
        kept = [text for text in split.info.description.splitlines() if not text.startswith(_SOURCE_MARKER)]
        split.info.description = "\n".join([*kept, line]).strip()


def dataset_source(ds: DatasetDict | Dataset) -> dict[str, Any] | None:
    """Where `load_keyword_dataset` loaded a dataset from: `source`, `config`, `revision` (the resolved
    Hub commit when known, else the requested one), `requested_revision` and `data_dir`.

    The record is kept in `DatasetInfo.description`, so it survives `map`, `filter` and `save_to_disk`.
    Returns `None` for datasets that were not loaded by this module.
    """
    for _, split in _splits(ds):
        for text in split.info.description.splitlines():
            if text.startswith(_SOURCE_MARKER):
                return json.loads(text[len(_SOURCE_MARKER) :])
    return None


def _load_dataset_or_parquet_export(
    source: str, kwargs: dict[str, Any]
) -> tuple[DatasetDict | Dataset, str | None]:
    """`load_dataset`, falling back to the Hub's parquet export for a repo that still has a loading script
    (datasets no longer runs them). Returns the dataset and the revision asked for."""
    try:
        return load_dataset(source, **kwargs), kwargs.get("revision")
    except RuntimeError as err:
        if kwargs.get("revision") is not None or "Dataset scripts are no longer supported" not in str(err):
            raise
    logger.warning(
        "%s is a script dataset, which datasets no longer runs; loading its parquet export (%s) instead",
        source,
        _PARQUET_EXPORT_REVISION,
    )
    kwargs = {**kwargs, "revision": _PARQUET_EXPORT_REVISION}
    return load_dataset(source, **kwargs), _PARQUET_EXPORT_REVISION


def _load_raw(
    source: str,
    *,
    name: str | None = None,
    split: str | None = None,
    revision: str | None = None,
    num_proc: int | None = None,
    cache_dir: str | None = None,
    data_dir: str | None = None,
) -> DatasetDict | Dataset:
    """`datasets.load_dataset` without torchcodec, recording where the data came from."""
    if source == "synthetic":
        raise ValueError(
            "'synthetic' is the embedded corpus: build it with `hf_gnft.data.synthetic.load_synthetic_keywords`"
        )
    kwargs: dict[str, Any] = {
        "name": name,
        "split": split,
        "revision": revision,
        "num_proc": num_proc,
        "cache_dir": cache_dir,
        "data_dir": data_dir,
    }
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    if source in _FOLDER_BUILDERS and not _torchcodec_available() and not _has_metadata_file(data_dir):
        kwargs["features"] = _PATH_FEATURES  # no failed first attempt: see below
    try:
        ds, revision = _load_dataset_or_parquet_export(source, kwargs)
    except Exception as err:
        if not _caused_by_missing_torchcodec(err):
            raise
        if "features" in kwargs:
            raise DatasetFormatError(_TORCHCODEC_NEEDED.format(source=source)) from err
        # A folder of audio files (a local directory or a Hub repo): datasets encodes its `Audio` values
        # with torchcodec while building it, even with decode=False. As plain strings, the paths need no
        # encoding; `prepare_keyword_dataset` casts them to `Audio(decode=False)`.
        logger.info("torchcodec is not installed: reading the audio files of %s as paths", source)
        kwargs["features"] = _PATH_FEATURES
        try:
            ds, revision = _load_dataset_or_parquet_export(source, kwargs)
        except Exception as retry_err:
            raise DatasetFormatError(_TORCHCODEC_NEEDED.format(source=source)) from retry_err
    if kwargs.get("features") is _PATH_FEATURES and any(
        part.data.column("audio").null_count for _, part in _splits(ds)
    ):
        # A folder with a metadata file: read this way, its `file_name` column is dropped.
        raise DatasetFormatError(_TORCHCODEC_NEEDED.format(source=source))
    resolved = _resolved_revision(ds) if _is_hub_id(source) else None
    record = {
        "source": source,
        "config": name,
        "revision": resolved or revision,
        "requested_revision": revision,
        "data_dir": data_dir,
    }
    if resolved:
        logger.info("Loaded %s (config %s) at revision %s", source, name, resolved)
    _record_source(ds, record)
    return ds


def load_keyword_dataset(
    source: str,
    *,
    name: str | None = None,
    split: str | None = None,
    revision: str | None = None,
    audio_column: str = "audio",
    label_column: str = "label",
    sampling_rate: int = DEFAULT_SAMPLING_RATE,
    max_duration_s: float | None = None,
    num_proc: int | None = None,
    cache_dir: str | None = None,
    data_dir: str | None = None,
) -> DatasetDict | Dataset:
    """Load a keyword-spotting dataset and bring it to the keyword-dataset layout.

    Args:
        source: a Hub dataset id (e.g. `"google/speech_commands"`), a local directory that
            `datasets.load_dataset` reads (parquet / arrow files), or `"audiofolder"` with `data_dir`
            (`<data_dir>/<split>/<label>/<clip>.wav`). The synthetic corpus is built by
            `hf_gnft.data.synthetic`, not here.
        name: the dataset configuration (e.g. `"v0.02"`).
        split: load one split (a `Dataset`) instead of all of them (a `DatasetDict`).
        revision: a Hub branch, tag or commit; the commit actually loaded is recorded (see `dataset_source`).
        audio_column: the column holding the audio, renamed to `audio`.
        label_column: the column holding the class, renamed to `label`.
        sampling_rate: the rate every clip is resampled to, in Hz.
        max_duration_s: truncate longer clips to their first `max_duration_s` seconds.
        num_proc: processes used to build and decode the dataset.
        cache_dir: the datasets cache directory.
        data_dir: the data folder (`audiofolder`) or a sub-folder of the repository.

    Returns:
        A `DatasetDict` (or a `Dataset` when `split` is given); see `prepare_keyword_dataset`.

    Raises:
        DatasetFormatError: missing audio or label column, unlabeled data.
        AudioError: a clip that cannot be decoded or is empty / non-finite (the message names its row).
    """
    ds = _load_raw(
        source,
        name=name,
        split=split,
        revision=revision,
        num_proc=num_proc,
        cache_dir=cache_dir,
        data_dir=data_dir,
    )
    return prepare_keyword_dataset(
        ds,
        audio_column=audio_column,
        label_column=label_column,
        sampling_rate=sampling_rate,
        max_duration_s=max_duration_s,
        num_proc=num_proc,
    )


def _check_columns(ds: DatasetDict | Dataset, audio_column: str, label_column: str) -> None:
    for split, part in _splits(ds):
        columns = part.column_names
        if audio_column not in columns:
            raise DatasetFormatError(
                f"{_where(split)} has no audio column {audio_column!r}; available columns: {columns} "
                "(pass `audio_column=` to name it)"
            )
        if label_column not in columns:
            raise DatasetFormatError(
                f"{_where(split)} has no label column {label_column!r}: keyword datasets need labels; "
                f"available columns: {columns} (pass `label_column=` to name it)"
            )
        for column, target in ((audio_column, "audio"), (label_column, "label")):
            if column != target and target in columns:
                raise DatasetFormatError(
                    f"{_where(split)}: cannot rename {column!r} to {target!r}, which is another column "
                    f"(columns: {columns}); remove or rename it first"
                )


def _encode_labels(ds: DatasetDict | Dataset, label_column: str) -> DatasetDict | Dataset:
    """Make the label column a `ClassLabel`, class-encoding string labels (jointly over the splits)."""
    string_labels: set[str] = set()
    needs_encoding = False
    for split, part in _splits(ds):
        feature = part.features[label_column]
        if isinstance(feature, ClassLabel):
            labels = np.asarray(part[label_column])
            if labels.size and labels.min() < 0:
                raise DatasetFormatError(
                    f"{_where(split)}: {int((labels < 0).sum())} rows have no label "
                    f"(first at row {int(np.argmax(labels < 0))})"
                )
            continue
        if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
            raise DatasetFormatError(
                f"{_where(split)}: the label column {label_column!r} must be a ClassLabel or strings, got "
                f"{feature}; cast it with `ds.cast_column({label_column!r}, ClassLabel(names=[...]))`"
            )
        labels = list(part[label_column])
        missing = [index for index, label in enumerate(labels) if label is None]
        if labels and len(missing) == len(labels):
            raise DatasetFormatError(
                f"{_where(split)} has no labels: every value of {label_column!r} is empty "
                "(an audiofolder needs one sub-folder per class: <split>/<label>/<clip>)"
            )
        if missing:
            raise DatasetFormatError(
                f"{_where(split)}: {len(missing)} rows have no label (first at row {missing[0]})"
            )
        string_labels.update(labels)
        needs_encoding = True
    if needs_encoding:
        # Not `DatasetDict.class_encode_column`: it encodes each split on its own, so a class missing
        # from one split would shift the ids of that split.
        encoded = ClassLabel(names=sorted(string_labels))
        parts = {split: part.cast_column(label_column, encoded) for split, part in _splits(ds)}
        ds = DatasetDict(parts) if isinstance(ds, DatasetDict) else next(iter(parts.values()))
    names = {split: part.features[label_column].names for split, part in _splits(ds)}
    if len({tuple(value) for value in names.values()}) > 1:
        raise DatasetFormatError(f"the splits have different label names: {names}")
    return ds


def _cast_audio(part: Dataset, split: str | None, audio_column: str) -> Dataset:
    feature = part.features[audio_column]
    if isinstance(feature, Audio) and not feature.decode:
        return part
    try:
        return part.cast_column(audio_column, Audio(decode=False))
    except (TypeError, ValueError, pa.ArrowException) as err:
        raise DatasetFormatError(
            f"{_where(split)}: the column {audio_column!r} ({feature}) does not hold audio "
            "(expected an Audio feature, file paths or {'bytes', 'path'} structs)"
        ) from err


def _clip_name(split: str | None, index: int, value: Any) -> str:
    name = f"{split} row {index}" if split else f"row {index}"
    path = value.get("path") if isinstance(value, Mapping) else value if isinstance(value, str) else None
    return f"{name} ({path})" if path else name


def _decode_batch(
    batch: dict[str, list],
    indices: list[int],
    *,
    split: str | None,
    sampling_rate: int,
    max_samples: int | None,
) -> dict[str, list]:
    values = []
    for value, index in zip(batch["audio"], indices, strict=True):
        if value is None:
            raise AudioError(f"{_clip_name(split, index, value)}: the audio value is missing")
        waveform = decode_example_audio(value, sampling_rate, name=_clip_name(split, index, value))
        if max_samples is not None and waveform.size > max_samples:
            waveform = waveform[:max_samples]
        values.append(audio_value(waveform, sampling_rate))
    return {"audio": values}


def prepare_keyword_dataset(
    ds: DatasetDict | Dataset,
    *,
    audio_column: str = "audio",
    label_column: str = "label",
    sampling_rate: int = DEFAULT_SAMPLING_RATE,
    max_duration_s: float | None = None,
    num_proc: int | None = None,
) -> DatasetDict | Dataset:
    """Bring a loaded dataset to the keyword-dataset layout.

    Checks the audio and label columns, class-encodes string labels, decodes every clip with
    `hf_gnft.audio.load_audio` (file path or bytes), down-mixes it to mono, resamples it to
    `sampling_rate`, validates it and stores it back as 32-bit float WAV bytes.

    Args:
        ds: a `Dataset` or `DatasetDict`.
        audio_column: the audio column (an `Audio` feature, file paths or `{"bytes", "path"}` structs).
        label_column: the label column (a `ClassLabel`, or strings that are class-encoded).
        sampling_rate: the target sampling rate in Hz.
        max_duration_s: truncate longer clips to their first `max_duration_s` seconds.
        num_proc: processes used to decode.

    Returns:
        The same type as `ds`, with `audio` (`Audio(sampling_rate=sampling_rate, decode=False)`) and
        `label` (`ClassLabel`) columns; the other columns are kept.

    Raises:
        DatasetFormatError: a missing audio column, missing or empty labels, labels that are neither a
            `ClassLabel` nor strings, an audio column that holds no audio.
        AudioError: an undecodable, empty or non-finite clip; the message names its split and row.
    """
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, int) or sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive integer in Hz, got {sampling_rate!r}")
    if max_duration_s is not None and max_duration_s <= 0:
        raise ValueError(f"max_duration_s must be positive, got {max_duration_s}")
    _check_columns(ds, audio_column, label_column)
    ds = _encode_labels(ds, label_column)
    max_samples = None if max_duration_s is None else max(1, int(round(max_duration_s * sampling_rate)))
    prepared = {}
    for split, part in _splits(ds):
        part = _cast_audio(part, split, audio_column)
        renames = {audio_column: "audio", label_column: "label"}
        renames = {column: target for column, target in renames.items() if column != target}
        if renames:
            part = part.rename_columns(renames)
        features = Features(part.features)
        features["audio"] = Audio(sampling_rate=sampling_rate, decode=False)
        part = part.map(
            _decode_batch,
            with_indices=True,
            batched=True,
            batch_size=256,
            fn_kwargs={"split": split, "sampling_rate": sampling_rate, "max_samples": max_samples},
            features=features,
            num_proc=num_proc,
            desc=f"Decoding {split or 'dataset'} audio to mono {sampling_rate} Hz",
            new_fingerprint=Hasher.hash(
                [part._fingerprint, _code_fingerprint(), split, sampling_rate, max_samples]
            ),
        )
        prepared[split] = part
    if isinstance(ds, DatasetDict):
        return DatasetDict(prepared)
    return next(iter(prepared.values()))


def decode_example_audio(
    value: str | bytes | Mapping[str, Any],
    sampling_rate: int = DEFAULT_SAMPLING_RATE,
    *,
    name: str | None = None,
) -> np.ndarray:
    """Decode one audio column value (`{"bytes", "path"}`, a path or bytes) to a float32 mono waveform
    at `sampling_rate`, validated (see `hf_gnft.audio.load_audio`)."""
    waveform, rate = load_audio(value, sampling_rate, name=name)
    # Resampling a clip of a few samples can leave none: validate what is returned, not only the input.
    return validate_waveform(waveform, rate, name=name or "audio")


def _relabel_batch(
    labels: list[int], *, mapping: list[int], names: list[str], label_column: str, add_word: bool
) -> dict[str, list]:
    out: dict[str, list] = {label_column: [mapping[label] for label in labels]}
    if add_word:
        out["word"] = [names[label] for label in labels]
    return out


def select_keywords(
    ds: DatasetDict | Dataset,
    keywords: Sequence[str] = KEYWORDS,
    include_unknown: bool = False,
    include_silence: bool = False,
    *,
    label_column: str = "label",
) -> DatasetDict | Dataset:
    """Map a dataset's label space to a keyword-spotting setup.

    The new `ClassLabel` has the `keywords` in order, then `_silence_` (when `include_silence`) and
    `_unknown_` (when `include_unknown`). Rows of the other words are dropped, or labeled `_unknown_`
    when `include_unknown`; `_silence_` rows are kept only when `include_silence`. The original class
    name of each row is kept in a `word` column (unless the dataset already has one). The audio is
    not touched, so this works before or after `prepare_keyword_dataset`.

    Raises:
        DatasetFormatError: the label column is not a `ClassLabel`, or a keyword is not one of its classes.
    """
    keywords = tuple(keywords)
    new_names = [*keywords]
    if include_silence:
        new_names.append(SILENCE_LABEL)
    if include_unknown:
        new_names.append(UNKNOWN_LABEL)
    if len(set(new_names)) != len(new_names):
        raise ValueError(f"duplicate class names in {new_names}")
    new_ids = {label: index for index, label in enumerate(new_names)}
    result = {}
    for split, part in _splits(ds):
        feature = part.features.get(label_column)
        if not isinstance(feature, ClassLabel):
            raise DatasetFormatError(
                f"{_where(split)}: the label column {label_column!r} must be a ClassLabel, got {feature}"
            )
        missing = [word for word in keywords if word not in feature.names]
        if missing:
            raise DatasetFormatError(
                f"keywords {missing} are not classes of {_where(split)}: {feature.names}"
            )
        if include_silence and SILENCE_LABEL not in feature.names:
            logger.warning("%s has no %s class: that class will be empty", _where(split), SILENCE_LABEL)
        mapping = np.full(len(feature.names), -1, dtype=np.int64)
        for old_id, word in enumerate(feature.names):
            if word in new_ids:
                mapping[old_id] = new_ids[word]
            elif include_unknown and word != SILENCE_LABEL:
                mapping[old_id] = new_ids[UNKNOWN_LABEL]
        labels = np.asarray(part[label_column], dtype=np.int64)
        if labels.size and labels.min() < 0:
            raise DatasetFormatError(
                f"{_where(split)}: rows without a label (first at row {int(np.argmax(labels < 0))})"
            )
        kept = np.flatnonzero(mapping[labels] >= 0)
        logger.info(
            "%s: keeping %d of %d rows for %d classes", _where(split), kept.size, labels.size, len(new_names)
        )
        part = part.select(kept)
        add_word = "word" not in part.column_names
        features = Features(part.features)
        features[label_column] = ClassLabel(names=new_names)
        if add_word:
            features["word"] = Value("string")

        result[split] = part.map(
            _relabel_batch,
            input_columns=label_column,
            batched=True,
            batch_size=1000,
            fn_kwargs={
                "mapping": mapping.tolist(),
                "names": list(feature.names),
                "label_column": label_column,
                "add_word": add_word,
            },
            features=features,
            desc=f"Relabeling {split or 'dataset'} to {len(new_names)} keyword classes",
        )
    if isinstance(ds, DatasetDict):
        return DatasetDict(result)
    return next(iter(result.values()))


def speech_commands(
    version: str = "v0.02",
    keywords: Sequence[str] = KEYWORDS,
    include_unknown: bool = False,
    include_silence: bool = False,
    *,
    split: str | None = None,
    revision: str | None = None,
    sampling_rate: int = DEFAULT_SAMPLING_RATE,
    max_duration_s: float | None = None,
    num_proc: int | None = None,
    cache_dir: str | None = None,
) -> DatasetDict | Dataset:
    """Load Speech Commands (`google/speech_commands`) as a keyword dataset.

    Args:
        version: `"v0.01"` or `"v0.02"`.
        keywords, include_unknown, include_silence: the label space, see `select_keywords`.
        split, revision, sampling_rate, max_duration_s, num_proc, cache_dir: see `load_keyword_dataset`.
            The `_silence_` clips can be long background-noise recordings: crop them (`max_duration_s`,
            or a random crop in the training transform).

    Returns:
        A keyword dataset whose labels are `keywords` (+ `_silence_`, `_unknown_`), keeping the
        `speaker_id`, `utterance_id`, `is_unknown` and `file` columns and adding `word`.
    """
    ds = _load_raw(
        SPEECH_COMMANDS_REPO,
        name=version,
        split=split,
        revision=revision,
        num_proc=num_proc,
        cache_dir=cache_dir,
    )
    # Relabel before decoding: the words that are dropped are never decoded.
    ds = select_keywords(ds, keywords, include_unknown, include_silence)
    return prepare_keyword_dataset(
        ds, sampling_rate=sampling_rate, max_duration_s=max_duration_s, num_proc=num_proc
    )


def dataset_from_arrays(
    waveforms: Sequence[np.ndarray],
    labels: Sequence[int | str],
    label_names: Sequence[str],
    *,
    sampling_rate: int = DEFAULT_SAMPLING_RATE,
    extra_columns: Mapping[str, Sequence[Any]] | None = None,
) -> Dataset:
    """A keyword `Dataset` from in-memory clips (no torchcodec needed).

    Args:
        waveforms: mono float clips at `sampling_rate` (validated: finite, non-empty).
        labels: class ids or names, one per clip.
        label_names: the class names, in label order.
        sampling_rate: the clips' rate.
        extra_columns: further columns (e.g. `speaker_id`), one value per clip.
    """
    if len(waveforms) != len(labels):
        raise DatasetFormatError(f"{len(waveforms)} clips but {len(labels)} labels")
    class_label = ClassLabel(names=list(label_names))
    ids = [class_label.str2int(label) if isinstance(label, str) else int(label) for label in labels]
    bad = [label for label in ids if not 0 <= label < class_label.num_classes]
    if bad:
        raise DatasetFormatError(
            f"labels {sorted(set(bad))} are outside the {class_label.num_classes} classes"
        )
    columns: dict[str, list] = {
        "audio": [
            audio_value(validate_waveform(np.asarray(w), sampling_rate, name=f"clip {i}"), sampling_rate)
            for i, w in enumerate(waveforms)
        ],
        "label": ids,
    }
    features = {"audio": Audio(sampling_rate=sampling_rate, decode=False), "label": class_label}
    for name, values in (extra_columns or {}).items():
        if len(values) != len(ids):
            raise DatasetFormatError(f"column {name!r} has {len(values)} values for {len(ids)} clips")
        columns[name] = list(values)
        features[name] = Value("string") if all(isinstance(v, str) for v in values) else None
    table = pa.table(columns)
    schema = Features({k: v for k, v in features.items() if v is not None})
    for name in columns:
        if name not in schema:
            schema[name] = Features.from_arrow_schema(pa.schema([table.schema.field(name)]))[name]
    return Dataset(table.cast(schema.arrow_schema), info=DatasetInfo(features=schema))
