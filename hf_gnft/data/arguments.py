"""Where the keyword data comes from, and the defender's clean subset of it (`HfArgumentParser` dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset, DatasetDict

from ..settings import check_numeric_settings
from .loading import load_keyword_dataset
from .synthetic import SyntheticKeywordsConfig, load_synthetic_keywords


@dataclass
class DataArguments:
    """Where the keyword data comes from.

    Args:
        dataset: "synthetic" (the embedded eSpeak NG corpus), a Hub id (e.g. "google/speech_commands"),
            a local dataset folder, or "audiofolder" (with `data_dir`).
        dataset_config: the dataset's configuration name (e.g. "v0.02").
        data_dir: folder of an audiofolder dataset.
        revision: Hub revision of the dataset.
        train_split: split to poison and train on.
        test_split: held-out split for CA / ASR / RA.
        audio_column: audio column of a real dataset.
        label_column: label column of a real dataset.
        synthetic_train_size: clips in the synthetic train split.
        synthetic_validation_size: clips in the synthetic validation split.
        synthetic_test_size: clips in the synthetic test split.
        synthetic_seed: seed of the synthetic corpus.
        include_silence: synthetic corpus: add a `_silence_` class.
        include_unknown: synthetic corpus: add an `_unknown_` class.
        cache_dir: where datasets and the synthetic corpus are cached.
        num_proc: processes for rendering and poisoning.
        sampling_rate: the rate the audio is resampled to; must be the model's.
    """

    dataset: str = field(
        default="synthetic",
        metadata={
            "help": "'synthetic' (the embedded eSpeak NG corpus), a Hub id (e.g. 'google/speech_commands'), "
            "a local dataset folder, or 'audiofolder' (with --data_dir)."
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "The dataset's configuration name (e.g. 'v0.02')."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "Folder of an audiofolder dataset."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the dataset."})
    train_split: str = field(default="train", metadata={"help": "Split to poison and train on."})
    test_split: str = field(default="test", metadata={"help": "Held-out split for CA / ASR / RA."})
    audio_column: str = field(default="audio", metadata={"help": "Audio column of a real dataset."})
    label_column: str = field(default="label", metadata={"help": "Label column of a real dataset."})
    synthetic_train_size: int = field(default=4000, metadata={"help": "Clips in the synthetic train split."})
    synthetic_validation_size: int = field(
        default=500, metadata={"help": "Clips in the synthetic validation split."}
    )
    synthetic_test_size: int = field(default=1000, metadata={"help": "Clips in the synthetic test split."})
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic corpus."})
    include_silence: bool = field(
        default=False, metadata={"help": "Synthetic corpus: add a `_silence_` class."}
    )
    include_unknown: bool = field(
        default=False, metadata={"help": "Synthetic corpus: add an `_unknown_` class."}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where datasets and the synthetic corpus are cached."}
    )
    num_proc: int | None = field(default=None, metadata={"help": "Processes for rendering and poisoning."})
    sampling_rate: int = field(
        default=16_000, metadata={"help": "The rate the audio is resampled to; must be the model's."}
    )

    def __post_init__(self) -> None:
        check_numeric_settings(self)

    def load(self, sampling_rate: int) -> DatasetDict:
        """The dataset as a `DatasetDict` with `audio` (decode=False, at `sampling_rate`) and `label` columns."""
        if self.dataset == "synthetic":
            config = SyntheticKeywordsConfig(
                train_size=self.synthetic_train_size,
                validation_size=self.synthetic_validation_size,
                test_size=self.synthetic_test_size,
                include_silence=self.include_silence,
                include_unknown=self.include_unknown,
                seed=self.synthetic_seed,
                sampling_rate=sampling_rate,
            )
            return load_synthetic_keywords(config, cache_dir=self.cache_dir, num_proc=self.num_proc)
        return load_keyword_dataset(
            self.dataset,
            name=self.dataset_config,
            data_dir=self.data_dir,
            revision=self.revision,
            audio_column=self.audio_column,
            label_column=self.label_column,
            sampling_rate=sampling_rate,
            num_proc=self.num_proc,
            cache_dir=self.cache_dir,
        )


class CleanDataError(ValueError):
    """The defender's clean data cannot be used (empty, labels that do not match the model...)."""


@dataclass
class CleanDataArguments:
    """The defender's clean data.

    Args:
        clean_split: the split the defender trusts (a subset of it is used).
        clean_fraction: fraction of that split used for fine-tuning (the authors use 5%).
        clean_count: a number of clips instead of a fraction.
        clean_seed: seed of the subset selection.
        eval_split: held-out split for CA (and, triggered, ASR / RA).
        validation_split: a clean split whose accuracy before and after is recorded, for choosing
            hyperparameters without the test set or the trigger (skipped when the dataset has no such split).
    """

    clean_split: str = field(
        default="train", metadata={"help": "The split the defender trusts (a subset of it is used)."}
    )
    clean_fraction: float = field(
        default=0.05, metadata={"help": "Fraction of that split used for fine-tuning (the authors use 5%%)."}
    )
    clean_count: int | None = field(
        default=None, metadata={"help": "A number of clips instead of a fraction."}
    )
    clean_seed: int = field(default=0, metadata={"help": "Seed of the subset selection."})
    eval_split: str = field(
        default="test", metadata={"help": "Held-out split for CA (and, triggered, ASR / RA)."}
    )
    validation_split: str | None = field(
        default="validation",
        metadata={
            "help": "A clean split whose accuracy before and after is recorded, for choosing hyperparameters "
            "without the test set or the trigger (skipped when the dataset has no such split)."
        },
    )

    def __post_init__(self) -> None:
        check_numeric_settings(self, error=CleanDataError)

    def select(self, dataset: Dataset) -> Dataset:
        """The clean subset: `clean_count` or `round(clean_fraction * len)` rows drawn with `clean_seed`."""
        if self.clean_count is not None:
            count = int(self.clean_count)
        else:
            if not 0.0 < self.clean_fraction <= 1.0:
                raise CleanDataError(f"clean_fraction must be in (0, 1], got {self.clean_fraction}")
            count = int(round(self.clean_fraction * len(dataset)))
        if count <= 0:
            raise CleanDataError(
                f"the clean set is empty ({self.clean_count=}, {self.clean_fraction=} of {len(dataset)} rows): "
                "a defense needs clean data"
            )
        if count > len(dataset):
            raise CleanDataError(f"clean_count {count} exceeds the {len(dataset)} rows of the clean split")
        rows = np.random.default_rng([self.clean_seed, 0xC1EA]).choice(
            len(dataset), size=count, replace=False
        )
        return dataset.select(np.sort(rows))
