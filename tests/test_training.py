from __future__ import annotations

import numpy as np
import pytest
import torch
from testing_utils import LABELS, sine_dataset, tiny_float64_model
from transformers import Trainer

from hf_gnft.audio import AudioError
from hf_gnft.data import dataset_from_arrays
from hf_gnft.models import TINY_MODELS, build_model
from hf_gnft.trainer_args import KeywordTrainingArguments
from hf_gnft.training import AudioClassificationCollator, AudioClassificationTrainer, predict_labels


def one_step(trainer_class, batch_size: int, accumulation: int, tmp_path, dataset):
    torch.manual_seed(0)
    model, extractor = tiny_float64_model()
    args = KeywordTrainingArguments(
        output_dir=str(tmp_path / f"{trainer_class.__name__}-{batch_size}-{accumulation}"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,
        seed=0,
        data_seed=0,
        use_cpu=True,
        logging_steps=1,
        disable_tqdm=True,
    )
    collator = AudioClassificationCollator(extractor)

    def float64_collator(rows):
        batch = collator(rows)
        return {**batch, "input_values": batch["input_values"].double()}

    trainer = trainer_class(model=model, args=args, train_dataset=dataset, data_collator=float64_collator)
    trainer.train()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("model_name", sorted(TINY_MODELS))
def test_tiny_models_build_from_packaged_configs(model_name):
    model, extractor = build_model(model_name, LABELS)
    assert model.config.num_labels == 4 and model.config.id2label[0] == "yes"
    assert extractor.sampling_rate == 16_000
    if model_name.startswith("tiny-"):  # the paper's MFCC networks keep the authors' sizes (up to 12M)
        assert sum(p.numel() for p in model.parameters()) < 300_000


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    dataset = sine_dataset(num_rows=8, seconds=0.5)
    torch.manual_seed(0)
    start = torch.cat([p.detach().flatten() for p in tiny_float64_model()[0].parameters()])
    trainer = AudioClassificationTrainer
    big = one_step(trainer, batch_size=8, accumulation=1, tmp_path=tmp_path, dataset=dataset)
    accumulated = one_step(trainer, batch_size=2, accumulation=4, tmp_path=tmp_path, dataset=dataset)
    assert (accumulated - big).norm() / (big - start).norm() < 1e-8


def test_stock_trainer_overscales_accumulated_gradients(tmp_path):
    """The pitfall AudioClassificationTrainer fixes is real: the stock Trainer moves the weights further."""
    dataset = sine_dataset(num_rows=8, seconds=0.5)
    torch.manual_seed(0)
    start = torch.cat([p.detach().flatten() for p in tiny_float64_model()[0].parameters()])
    big = one_step(Trainer, batch_size=8, accumulation=1, tmp_path=tmp_path, dataset=dataset)
    accumulated = one_step(Trainer, batch_size=2, accumulation=4, tmp_path=tmp_path, dataset=dataset)
    ratio = (accumulated - start).norm() / (big - start).norm()
    assert ratio > 2.0


def test_collator_refuses_audio_at_another_sampling_rate():
    _, extractor = build_model("tiny-wav2vec2", LABELS)
    clip = np.zeros(8000, dtype=np.float32) + 0.1
    dataset = dataset_from_arrays([clip], [0], LABELS, sampling_rate=8000)
    with pytest.raises(AudioError, match="8000 Hz but the model takes 16000 Hz"):
        AudioClassificationCollator(extractor)([dataset[0]])


def test_collator_names_a_missing_audio_column(sines):
    _, extractor = build_model("tiny-wav2vec2", LABELS)
    with pytest.raises(AudioError, match="no audio column 'speech'"):
        AudioClassificationCollator(extractor, audio_column="speech")([sines[0]])


def test_collator_batches_input_values_and_labels(sines):
    _, extractor = build_model("tiny-wav2vec2", LABELS)
    batch = AudioClassificationCollator(extractor)([sines[i] for i in range(3)])
    assert batch["input_values"].shape == (3, 16_000)
    assert batch["labels"].tolist() == sines["label"][:3]


def test_predict_labels_returns_one_class_per_row(sines):
    model, extractor = build_model("tiny-wav2vec2", LABELS)
    model.train()
    predictions = predict_labels(model, sines, extractor, batch_size=16)
    assert predictions.shape == (len(sines),) and set(predictions.tolist()) <= set(range(4))
    assert model.training  # the mode is restored
