"""Training and evaluation glue for keyword datasets: a collator, a GA-correct Trainer, predictions."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import FeatureExtractionMixin, PreTrainedModel, Trainer, TrainingArguments

from .audio import AudioError, load_audio
from .metrics import BackdoorMetrics, backdoor_metrics


class AudioClassificationCollator:
    """Decode a batch of `Audio(decode=False)` rows and run the feature extractor.

    The clips must already be at the feature extractor's sampling rate: a model silently fed audio at
    the wrong rate learns nothing useful, so a mismatch is an error (resample the dataset first with
    `prepare_keyword_dataset(..., sampling_rate=...)`).

    Args:
        feature_extractor: the model's feature extractor (its `sampling_rate` is enforced).
        audio_column: the audio column.
        label_column: the label column (`labels` in the batch); `None` for unlabelled batches.
        max_duration_s: crop clips to this many seconds (the first ones), `None` to keep them whole.
    """

    def __init__(
        self,
        feature_extractor: FeatureExtractionMixin,
        audio_column: str = "audio",
        label_column: str | None = "label",
        max_duration_s: float | None = None,
    ) -> None:
        self.feature_extractor = feature_extractor
        self.audio_column = audio_column
        self.label_column = label_column
        self.max_duration_s = max_duration_s

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        expected_rate = self.feature_extractor.sampling_rate
        waveforms = []
        for row in rows:
            if self.audio_column not in row:
                raise AudioError(
                    f"no audio column {self.audio_column!r} in the batch (columns: {sorted(row)})"
                )
            waveform, rate = load_audio(row[self.audio_column])
            if rate != expected_rate:
                raise AudioError(
                    f"audio at {rate} Hz but the model takes {expected_rate} Hz: resample the dataset first "
                    f"(prepare_keyword_dataset(..., sampling_rate={expected_rate}))"
                )
            if self.max_duration_s is not None:
                waveform = waveform[: int(self.max_duration_s * rate)]
            waveforms.append(waveform)
        batch = self.feature_extractor(
            waveforms, sampling_rate=expected_rate, padding=True, return_tensors="pt"
        )
        batch = dict(batch)
        if self.label_column is not None:
            batch["labels"] = torch.tensor([int(row[self.label_column]) for row in rows], dtype=torch.long)
        return batch


def audio_batches(
    dataset: Dataset,
    feature_extractor: FeatureExtractionMixin,
    batch_size: int,
    *,
    audio_column: str = "audio",
    label_column: str | None = "label",
    labels: int | None = None,
    shuffle_seed: int | None = None,
    repeat: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """The dataset as model batches ([`AudioClassificationCollator`]: decoded, feature-extracted, padded), the
    last one possibly smaller.

    Args:
        label_column: the label column (`labels` in the batch); `None` for batches without labels.
        labels: a class id that replaces every row's label (e.g. the target class of a backdoor loss).
        shuffle_seed: shuffle the rows with a `torch.Generator` seeded with it (a `DataLoader`'s order);
            `None` keeps the dataset's order.
        repeat: cycle through the dataset endlessly (a new order each pass when shuffled). Shuffled or repeated
            rows are decoded once, up front.
        device: where the tensors go (default: where the collator leaves them, the CPU).
        dtype: the dtype of the floating tensors (the model's), when given.

    Raises:
        AudioError: no audio column (or, from the collator, audio at another rate than the extractor's).
        ValueError: no label column (when `labels` is None), or a batch size below 1.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    row_labels = label_column if labels is None else None  # the rows' own labels, unless replaced
    columns = [audio_column] if row_labels is None else [audio_column, row_labels]
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        error = AudioError if audio_column in missing else ValueError
        raise error(f"no column {missing[0]!r} in the dataset (columns: {sorted(dataset.column_names)})")
    collator = AudioClassificationCollator(
        feature_extractor, audio_column=audio_column, label_column=row_labels
    )

    def finish(batch: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
        if labels is not None:
            batch["labels"] = torch.full((size,), int(labels), dtype=torch.long)
        return {
            key: value.to(device=device, dtype=dtype if value.is_floating_point() else None)
            for key, value in batch.items()
        }

    rows = dataset.select_columns(columns)
    if shuffle_seed is None and not repeat:
        return _batches_in_order(rows, collator, batch_size, finish)
    return _shuffled_batches(rows, collator, batch_size, finish, shuffle_seed, repeat)


def _batches_in_order(
    rows: Dataset,
    collator: AudioClassificationCollator,
    batch_size: int,
    finish: Callable[[dict[str, torch.Tensor], int], dict[str, torch.Tensor]],
) -> Iterator[dict[str, torch.Tensor]]:
    columns = rows.column_names
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        size = len(chunk[columns[0]])
        yield finish(collator([{column: chunk[column][i] for column in columns} for i in range(size)]), size)


def _shuffled_batches(
    rows: Dataset,
    collator: AudioClassificationCollator,
    batch_size: int,
    finish: Callable[[dict[str, torch.Tensor], int], dict[str, torch.Tensor]],
    shuffle_seed: int | None,
    repeat: bool,
) -> Iterator[dict[str, torch.Tensor]]:
    audio_column = collator.audio_column
    decoded = []
    for row in rows:
        waveform, rate = load_audio(row[audio_column])
        decoded.append({**row, audio_column: {"array": waveform, "sampling_rate": rate}})
    loader = DataLoader(
        decoded,
        batch_size=batch_size,
        shuffle=shuffle_seed is not None,
        generator=torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None,
        collate_fn=lambda chunk: (collator(chunk), len(chunk)),
    )
    while True:
        for batch, size in loader:
            yield finish(batch, size)
        if not repeat or not decoded:
            return


class AudioClassificationTrainer(Trainer):
    """`Trainer` for Wav2Vec2-style audio classifiers, with correct gradient-accumulation scaling.

    `Wav2Vec2ForSequenceClassification.forward` (HuBERT, WavLM likewise) takes `**kwargs`, so the stock
    Trainer assumes it scales its loss for gradient accumulation and skips the division: GA=4 then gives
    4x the gradient of GA=1 (and 2-rank DDP 2x). The loss is a per-batch mean, so here it is divided
    by the accumulation steps and `num_items_in_batch` is not passed to the model.
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        # per-micro-batch values of subclasses' own metrics, logged as means with the training loss
        self._step_metrics: dict[str, list[float]] = defaultdict(list)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._step_metrics:
            for key, values in self._step_metrics.items():
                logs[key] = sum(values) / len(values)
            self._step_metrics.clear()
        super().log(logs, start_time)


def train_timed(
    trainer_class: type[Trainer],
    model: PreTrainedModel,
    args: TrainingArguments,
    train_dataset: Dataset,
    feature_extractor: Any,
    resume_from_checkpoint: str | None = None,
    **trainer_kwargs: Any,
) -> tuple[Trainer, Any, float]:
    """Build `trainer_class` on `train_dataset` with the audio collator (or a `data_collator` passed in
    `trainer_kwargs`), train it (from
    `resume_from_checkpoint` when given), and return the trainer, the `train()` output and the training wall
    time in seconds."""
    collator = trainer_kwargs.pop("data_collator", None) or AudioClassificationCollator(feature_extractor)
    trainer = trainer_class(
        model=model, args=args, train_dataset=train_dataset, data_collator=collator, **trainer_kwargs
    )
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer, output, time.perf_counter() - started


@torch.no_grad()
def predict_labels(
    model: PreTrainedModel,
    dataset: Dataset,
    feature_extractor: FeatureExtractionMixin,
    *,
    batch_size: int = 64,
    audio_column: str = "audio",
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Predicted class ids for every row of `dataset` (model in eval mode, no gradients)."""
    if len(dataset) == 0:
        raise ValueError("cannot predict on an empty dataset")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    batches = audio_batches(
        dataset, feature_extractor, batch_size, audio_column=audio_column, label_column=None, device=device
    )
    was_training = model.training
    model.eval()
    predictions = []
    try:
        for batch in batches:
            logits = model(**batch).logits
            predictions.append(logits.argmax(dim=-1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(predictions)


def evaluate_backdoor(
    model: PreTrainedModel,
    feature_extractor: FeatureExtractionMixin,
    clean_dataset: Dataset,
    triggered_dataset: Dataset | None = None,
    target_label: int | None = None,
    *,
    batch_size: int = 64,
    label_column: str = "label",
    audio_column: str = "audio",
) -> BackdoorMetrics:
    """CA on `clean_dataset` and, with a triggered set (see `make_triggered_eval_set`), ASR and RA."""
    clean_predictions = predict_labels(
        model, clean_dataset, feature_extractor, batch_size=batch_size, audio_column=audio_column
    )
    if triggered_dataset is None:
        return backdoor_metrics(clean_predictions, clean_dataset[label_column])
    triggered_predictions = predict_labels(
        model, triggered_dataset, feature_extractor, batch_size=batch_size, audio_column=audio_column
    )
    original = (
        triggered_dataset["original_label"]
        if "original_label" in triggered_dataset.column_names
        else triggered_dataset[label_column]
    )
    return backdoor_metrics(
        clean_predictions, clean_dataset[label_column], triggered_predictions, original, target_label
    )
