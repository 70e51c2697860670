"""Keyword-spotting data: the embedded synthetic corpus and loaders for real data."""

from .arguments import CleanDataArguments, CleanDataError, DataArguments
from .keywords import KEYWORDS, SILENCE_LABEL, UNKNOWN_LABEL, UNKNOWN_WORDS
from .loading import (
    DatasetFormatError,
    dataset_from_arrays,
    dataset_source,
    decode_example_audio,
    load_keyword_dataset,
    prepare_keyword_dataset,
    select_keywords,
    speech_commands,
)
from .synthetic import (
    SyntheticKeywordsConfig,
    corpus_content_hash,
    corpus_fingerprint,
    load_synthetic_keywords,
    render_split,
)

__all__ = [
    "KEYWORDS",
    "CleanDataArguments",
    "CleanDataError",
    "DataArguments",
    "SILENCE_LABEL",
    "UNKNOWN_LABEL",
    "UNKNOWN_WORDS",
    "DatasetFormatError",
    "SyntheticKeywordsConfig",
    "corpus_content_hash",
    "corpus_fingerprint",
    "dataset_from_arrays",
    "dataset_source",
    "decode_example_audio",
    "load_keyword_dataset",
    "load_synthetic_keywords",
    "prepare_keyword_dataset",
    "render_split",
    "select_keywords",
    "speech_commands",
]
