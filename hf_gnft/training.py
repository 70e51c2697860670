"""Training and evaluation glue for keyword datasets: a collator, a GA-correct Trainer, predictions."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset
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
    """Build `trainer_class` on `train_dataset` with the audio collator, train it (from
    `resume_from_checkpoint` when given), and return the trainer, the `train()` output and the training wall
    time in seconds."""
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=AudioClassificationCollator(feature_extractor),
        **trainer_kwargs,
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
    collator = AudioClassificationCollator(feature_extractor, audio_column=audio_column, label_column=None)
    was_training = model.training
    model.eval()
    predictions = []
    try:
        for start in range(0, len(dataset), batch_size):
            rows = dataset.select_columns([audio_column])[start : start + batch_size]
            batch = collator([{audio_column: value} for value in rows[audio_column]])
            logits = model(**{key: value.to(device) for key, value in batch.items()}).logits
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
