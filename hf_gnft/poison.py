"""Poisoning keyword datasets with triggers, through `datasets.map`.

`poison_dataset` picks a seeded set of rows, applies a trigger to their audio and (dirty-label)
relabels them to the target class; it adds the audit columns `poisoned` and `original_label`.
Rows that are not picked keep their audio bytes unchanged. The selection depends only on the
labels, the rate, the target, the mode and the seed, and the trigger is a pure function of
(waveform, sampling rate, row index), so the result is the same on 1 or N processes, and datasets'
cache fingerprint is derived from all of it (the trigger's parameters included).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from datasets import Audio, ClassLabel, Dataset, Value
from datasets.fingerprint import Hasher

from .audio import audio_value, load_audio
from .triggers import Trigger, TriggerError, trigger_from_config

PoisonMode = Literal["dirty", "clean_label"]
POISON_MODES = ("dirty", "clean_label")


class PoisonError(ValueError):
    """A poisoning request that cannot be carried out (bad rate, unknown target, missing column...)."""


def _check_columns(dataset: Dataset, audio_column: str, label_column: str) -> ClassLabel:
    if audio_column not in dataset.column_names:
        raise PoisonError(f"no audio column {audio_column!r}; the dataset has {dataset.column_names}")
    if label_column not in dataset.column_names:
        raise PoisonError(
            f"no label column {label_column!r}: a backdoor needs labelled data; the dataset has {dataset.column_names}"
        )
    feature = dataset.features[label_column]
    if not isinstance(feature, ClassLabel):
        raise PoisonError(
            f"label column {label_column!r} is {feature}, not a ClassLabel; use dataset.class_encode_column"
        )
    audio_feature = dataset.features[audio_column]
    if not isinstance(audio_feature, Audio) or audio_feature.decode:
        raise PoisonError(
            f"audio column {audio_column!r} must be an Audio(decode=False) feature holding encoded clips "
            f"(see hf_gnft.prepare_keyword_dataset), got {audio_feature}"
        )
    return feature


def resolve_label(label: int | str, class_label: ClassLabel, what: str = "target class") -> int:
    """A class id from a class name or id, with an error that lists the classes."""
    if isinstance(label, str) and not label.lstrip("-").isdigit():
        if label not in class_label.names:
            raise PoisonError(f"unknown {what} {label!r}; the classes are {class_label.names}")
        return class_label.str2int(label)
    index = int(label)
    if not 0 <= index < class_label.num_classes:
        raise PoisonError(
            f"unknown {what} {index}: there are {class_label.num_classes} classes {class_label.names}"
        )
    return index


def _check_rate(rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < float(rate) <= 1.0:
        raise PoisonError(f"poison rate must be in (0, 1], got {rate!r}")
    return float(rate)


def select_poison_indices(
    labels: np.ndarray, rate: float, target_label: int, seed: int, mode: PoisonMode = "dirty"
) -> np.ndarray:
    """The sorted row indices to poison.

    Dirty-label: `round(rate * len(labels))` rows drawn from the rows not of the target class.
    Clean-label: `round(rate * n_target)` rows drawn from the target-class rows (their labels stay).
    """
    rate = _check_rate(rate)
    if mode not in POISON_MODES:
        raise PoisonError(f"unknown poison mode {mode!r}; use one of {POISON_MODES}")
    labels = np.asarray(labels)
    if mode == "dirty":
        candidates = np.flatnonzero(labels != target_label)
        count = int(round(rate * labels.size))
    else:
        candidates = np.flatnonzero(labels == target_label)
        count = int(round(rate * candidates.size))
    if count == 0:
        raise PoisonError(
            f"rate {rate} poisons 0 of the {candidates.size} candidate rows ({mode} mode): raise the rate or add data"
        )
    if count > candidates.size:
        raise PoisonError(
            f"rate {rate} asks for {count} poisoned rows but only {candidates.size} rows are not of the target class"
        )
    rng = np.random.default_rng([seed, 0x5EED])
    return np.sort(rng.choice(candidates, size=count, replace=False))


def _indices_digest(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()


@dataclass
class AttackSpec:
    """Exactly which backdoor was planted: stored as JSON beside a backdoored model and read by defenses.

    Args:
        trigger: the trigger's `to_dict()`.
        rate: poison rate.
        target_label: target class id.
        target_name: target class name.
        mode: "dirty" or "clean_label".
        seed: seed of the row selection.
        num_poisoned: number of poisoned rows.
        num_rows: number of rows of the poisoned split.
        poisoned_ids_sha256: SHA-256 of the poisoned row indices (int64, sorted).
        label_names: the class names in label order.
    """

    trigger: dict
    rate: float
    target_label: int
    target_name: str
    mode: str
    seed: int
    num_poisoned: int
    num_rows: int
    poisoned_ids_sha256: str
    label_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AttackSpec:
        return cls(**values)

    def to_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2)

    @classmethod
    def from_json(cls, path: str) -> AttackSpec:
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def build_trigger(self, *, allow_import: bool = False) -> Trigger:
        """The trigger object.

        Args:
            allow_import: let a `"callable"` trigger import its function (`"module:qualname"`), which runs that
                module's code: only for a spec you trust. Without it such a spec is refused; build
                `CallableTrigger(function=...)` yourself and pass it to `make_triggered_eval_set` instead.

        Raises:
            TriggerError: an invalid trigger dict, or a callable trigger that may not or cannot be imported.
        """
        try:
            return trigger_from_config(self.trigger, allow_import=allow_import)
        except TriggerError as err:
            is_callable = isinstance(self.trigger, dict) and self.trigger.get("type") == "callable"
            function = self.trigger.get("function") if is_callable else None
            if not (isinstance(function, str) and function.startswith("__main__:")):
                raise
            raise TriggerError(
                f"{err}. Note: {function!r} was defined in the script that ran the attack (`__main__`), which "
                "another program (a defense, the analysis) cannot import: define the function in an importable "
                "module and run the attack again, or build `CallableTrigger(function=...)` yourself and pass it "
                "to `make_triggered_eval_set`"
            ) from err


def _fingerprint(dataset: Dataset, trigger: Trigger, *parts: Any) -> str:
    return Hasher.hash(
        [dataset._fingerprint, "hf_gnft.poison", trigger.to_dict(), Hasher.hash(trigger), *parts]
    )


def _apply_to_batch(
    batch: dict[str, list],
    indices: list[int],
    *,
    trigger: Trigger,
    selected: np.ndarray,
    relabel_to: int | None,
    audio_column: str,
    label_column: str,
) -> dict[str, list]:
    audio, labels, poisoned = [], [], []
    for row, value, label in zip(indices, batch[audio_column], batch[label_column], strict=True):
        if selected[row]:
            waveform, rate = load_audio(value, name=f"row {row}")
            audio.append(audio_value(trigger.apply(waveform, rate, key=row), rate))
            labels.append(label if relabel_to is None else relabel_to)
            poisoned.append(True)
        else:
            audio.append(value)
            labels.append(label)
            poisoned.append(False)
    return {
        audio_column: audio,
        label_column: labels,
        "poisoned": poisoned,
        "original_label": batch[label_column],
    }


def _preflight(dataset: Dataset, trigger: Trigger, row: int, audio_column: str) -> None:
    """Apply the trigger once in this process, so a bad trigger fails here with a clear error."""
    waveform, rate = load_audio(dataset[row][audio_column], name=f"row {row}")
    trigger.apply(waveform, rate, key=row)


def _map_trigger(
    dataset: Dataset,
    trigger: Trigger,
    selected: np.ndarray,
    *,
    relabel_to: int | None,
    class_label: ClassLabel,
    audio_column: str,
    label_column: str,
    batch_size: int,
    num_proc: int | None,
    fingerprint: str,
    desc: str,
) -> Dataset:
    """Trigger (and relabel) the `selected` rows in a batched `map`, adding `poisoned` and `original_label`."""
    features = dataset.features.copy()
    features["poisoned"] = Value("bool")
    features["original_label"] = ClassLabel(names=class_label.names)
    return dataset.map(
        _apply_to_batch,
        fn_kwargs={
            "trigger": trigger,
            "selected": selected,
            "relabel_to": relabel_to,
            "audio_column": audio_column,
            "label_column": label_column,
        },
        with_indices=True,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        features=features,
        new_fingerprint=fingerprint,
        desc=desc,
    )


def poison_dataset(
    dataset: Dataset,
    trigger: Trigger | dict | str,
    rate: float,
    target_label: int | str,
    seed: int = 0,
    mode: PoisonMode = "dirty",
    *,
    num_proc: int | None = None,
    audio_column: str = "audio",
    label_column: str = "label",
    batch_size: int = 64,
) -> tuple[Dataset, AttackSpec]:
    """Plant a backdoor in a keyword dataset.

    Args:
        dataset: a keyword `Dataset` (audio as `Audio(decode=False)`, labels as `ClassLabel`).
        trigger: a `Trigger`, its dict, or JSON.
        rate: fraction in (0, 1]: of all rows (dirty-label), of the target-class rows (clean-label).
        target_label: target class name or id.
        seed: seed of the row selection.
        mode: "dirty" (triggered rows are relabelled to the target) or "clean_label" (only target-class rows
            are triggered, labels unchanged).
        num_proc: processes for `map`; the result does not depend on it.
        audio_column: the audio column.
        label_column: the label column.
        batch_size: rows per `map` batch.

    Returns:
        `(poisoned_dataset, attack_spec)`: the dataset with the columns `poisoned` (bool) and
        `original_label` added, and the record of what was done.

    Raises:
        PoisonError: rate outside (0, 1], unknown target or mode, missing columns, nothing to poison.
        TriggerError / AudioError: a trigger that cannot be applied to this data (checked before mapping).
    """
    trigger = trigger_from_config(trigger)
    class_label = _check_columns(dataset, audio_column, label_column)
    target = resolve_label(target_label, class_label)
    labels = np.asarray(dataset[label_column])
    indices = select_poison_indices(labels, rate, target, seed, mode)
    selected = np.zeros(len(dataset), dtype=bool)
    selected[indices] = True
    _preflight(dataset, trigger, int(indices[0]), audio_column)
    poisoned = _map_trigger(
        dataset,
        trigger,
        selected,
        relabel_to=target if mode == "dirty" else None,
        class_label=class_label,
        audio_column=audio_column,
        label_column=label_column,
        batch_size=batch_size,
        num_proc=num_proc,
        fingerprint=_fingerprint(
            dataset, trigger, float(rate), target, seed, mode, audio_column, label_column
        ),
        desc=f"Poisoning {len(indices)} rows with {trigger.describe()}",
    )
    spec = AttackSpec(
        trigger=trigger.to_dict(),
        rate=float(rate),
        target_label=target,
        target_name=class_label.int2str(target),
        mode=mode,
        seed=seed,
        num_poisoned=int(indices.size),
        num_rows=len(dataset),
        poisoned_ids_sha256=_indices_digest(indices),
        label_names=list(class_label.names),
    )
    return poisoned, spec


def make_triggered_eval_set(
    dataset: Dataset,
    trigger: Trigger | dict | str,
    target_label: int | str,
    *,
    num_proc: int | None = None,
    audio_column: str = "audio",
    label_column: str = "label",
    batch_size: int = 64,
) -> Dataset:
    """The test rows whose label is not the target, with the trigger applied and their true labels kept.

    The model's predictions on it give the ASR (fraction predicted as the target) and the RA
    (fraction predicted as the true label). `original_label` and `poisoned` are added as in `poison_dataset`.
    """
    trigger = trigger_from_config(trigger)
    class_label = _check_columns(dataset, audio_column, label_column)
    target = resolve_label(target_label, class_label)
    keep = np.flatnonzero(np.asarray(dataset[label_column]) != target)
    if keep.size == 0:
        raise PoisonError("every row is of the target class: there is nothing to trigger")
    _preflight(dataset, trigger, int(keep[0]), audio_column)
    subset = dataset.select(keep)
    return _map_trigger(
        subset,
        trigger,
        np.ones(len(subset), dtype=bool),
        relabel_to=None,
        class_label=class_label,
        audio_column=audio_column,
        label_column=label_column,
        batch_size=batch_size,
        num_proc=num_proc,
        fingerprint=_fingerprint(subset, trigger, "triggered-eval", target, audio_column, label_column),
        desc=f"Triggering {len(subset)} evaluation rows with {trigger.describe()}",
    )
