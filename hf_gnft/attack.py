"""Train a backdoored keyword-spotting model: data → poison → train → measure CA / ASR / RA.

The configuration is three dataclasses that `HfArgumentParser` reads from the command line or a YAML
file (`recipes/attack.py`); `run_attack` is the same pipeline for Python users.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from datasets import DatasetDict

from .audio import AudioError
from .data.arguments import DataArguments
from .models import build_model
from .outputs import (
    check_output_dir,
    machine_description,
    resume_checkpoint,
    save_shareable_model,
    staged_output_dir,
)
from .poison import (
    POISON_MODES,
    AttackSpec,
    PoisonError,
    make_triggered_eval_set,
    poison_dataset,
    resolve_label,
)
from .settings import check_numeric_settings
from .trainer_args import KeywordTrainingArguments, is_main_process
from .training import AudioClassificationTrainer, evaluate_backdoor, train_timed
from .triggers import Trigger, trigger_from_config

logger = logging.getLogger(__name__)

ATTACK_SPEC_FILE = "attack_spec.json"
METRICS_FILE = "metrics.json"
TRAINING_ARGS_FILE = "training_args.json"


def training_budget_suffix(settings: dict[str, Any]) -> str:
    """The folder-name suffix of a model trained with `settings` over the recipe's (`""` for none), e.g.
    `-learning_rate0.004-num_train_epochs30`: the attack table's cells and the benchmark's suspects share it, so
    either reuses a model the other trained with the same budget."""
    return "".join(
        f"-{key}{value:g}" if isinstance(value, (int, float)) else f"-{key}{value}"
        for key, value in sorted(settings.items())
    )


@dataclass
class AttackArguments:
    """The backdoor to plant.

    Args:
        trigger: a trigger type name with its defaults ("noise_burst", "tone", "pbsm", "style",
            "clip_overlay"), its JSON dict (`{"type": "tone", "frequency_hz": 7500}`), or a dict in YAML;
            from Python also a `Trigger` object (e.g. `CallableTrigger(function=my_fn)`), used as is.
        poison_rate: fraction in (0, 1] of the training split (dirty) or of the target class (clean-label).
        target_label: target class name or id.
        poison_mode: "dirty" or "clean_label".
        poison_seed: seed of the poisoned-row selection.
    """

    trigger: str = field(
        default="noise_burst",
        metadata={
            "help": "A trigger type name with its defaults ('noise_burst', 'tone', 'pbsm', 'style', "
            "'clip_overlay'), its JSON dict (e.g. "
            '{"type": "tone", "frequency_hz": 7500}), or a dict in YAML.'
        },
    )
    poison_rate: float = field(
        default=0.1,
        metadata={
            "help": "Fraction in (0, 1] of the training split (dirty) or of the target class (clean-label)."
        },
    )
    target_label: str = field(default="yes", metadata={"help": "Target class name or id."})
    poison_mode: str = field(default="dirty", metadata={"help": "'dirty' or 'clean_label'."})
    poison_seed: int = field(default=0, metadata={"help": "Seed of the poisoned-row selection."})

    def __post_init__(self) -> None:
        check_numeric_settings(self, error=PoisonError)  # a rate outside (0, 1] is the poisoning's error
        if isinstance(self.trigger, Trigger):  # from Python: used as is (a callable one is not re-imported)
            self.trigger.to_dict()  # a trigger that cannot be recorded in attack_spec.json fails now
        else:
            self.trigger = trigger_from_config(self.trigger).to_dict()
        if self.poison_mode not in POISON_MODES:
            raise PoisonError(f"unknown poison_mode {self.poison_mode!r}; use one of {POISON_MODES}")
        if isinstance(self.poison_rate, bool) or not 0.0 < float(self.poison_rate) <= 1.0:
            raise PoisonError(f"poison_rate must be in (0, 1], got {self.poison_rate!r}")


@dataclass
class ModelArguments:
    """The model to backdoor.

    Args:
        model: a named config (`hf_gnft.models.TINY_MODELS`: "tiny-wav2vec2", "tiny-hubert", "tiny-wavlm",
            "tiny-data2vec-audio", and the paper's MFCC networks "smallcnn", "largecnn", "smalllstm",
            "lstmwithattention", "rnn", "resnet"), a config JSON file, or a pretrained checkpoint (local folder or Hub
            id) for `AutoModelForAudioClassification` (safetensors only).
        model_revision: Hub revision of a checkpoint.
        freeze_feature_encoder: freeze the convolutional feature encoder of a pretrained checkpoint.
        trust_remote_code: run code shipped with a checkpoint (off unless asked for).
        allow_pickle_weights: load a checkpoint that has only pickled weights (refused by default).
    """

    model: str = field(
        default="tiny-wav2vec2",
        metadata={
            "help": "A named config (tiny-wav2vec2, tiny-hubert, tiny-wavlm, tiny-data2vec-audio; the paper's MFCC "
            "networks smallcnn, largecnn, smalllstm, lstmwithattention, rnn, resnet), a config JSON file, or a "
            "pretrained checkpoint (local folder or Hub id) for AutoModelForAudioClassification "
            "(safetensors only)."
        },
    )
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision of a checkpoint."})
    freeze_feature_encoder: bool = field(
        default=True,
        metadata={"help": "Freeze the convolutional feature encoder of a pretrained checkpoint."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run code shipped with a checkpoint (off unless asked for)."}
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={"help": "Load a checkpoint that has only pickled weights (refused by default)."},
    )


@dataclass
class AttackResult:
    """What `run_attack` wrote and measured."""

    output_dir: str
    spec: AttackSpec | None
    metrics: dict[str, Any] = field(default_factory=dict)


def _load_and_build(
    data_args: DataArguments, model_args: ModelArguments
) -> tuple[DatasetDict, Any, Any, list[str]]:
    """The dataset (train and test splits checked) and the model to train on it."""
    sampling_rate = data_args.sampling_rate
    dataset = data_args.load(sampling_rate)
    for split in (data_args.train_split, data_args.test_split):
        if split not in dataset:
            raise ValueError(f"no split {split!r}; the dataset has {list(dataset)}")
    label_names = dataset[data_args.train_split].features["label"].names
    model, feature_extractor = build_model(
        model_args.model,
        label_names,
        revision=model_args.model_revision,
        freeze_feature_encoder=model_args.freeze_feature_encoder,
        trust_remote_code=model_args.trust_remote_code,
        allow_pickle_weights=model_args.allow_pickle_weights,
    )
    if feature_extractor.sampling_rate != sampling_rate:
        raise AudioError(
            f"the model takes {feature_extractor.sampling_rate} Hz audio but the data is loaded at {sampling_rate} Hz: "
            f"pass --sampling_rate {feature_extractor.sampling_rate} to resample it"
        )
    return dataset, model, feature_extractor, label_names


def run_clean_training(
    data_args: DataArguments,
    model_args: ModelArguments,
    training_args: KeywordTrainingArguments,
) -> AttackResult:
    """Train the model on the unpoisoned training split: the clean reference that backdoored models are compared
    with (e.g. to calibrate a backdoor scan). Writes what `run_attack` writes, without `attack_spec.json`;
    `metrics.json` holds CA only, and the returned `spec` is `None`."""
    return run_attack(data_args, None, model_args, training_args)


def run_attack(
    data_args: DataArguments,
    attack_args: AttackArguments | None,
    model_args: ModelArguments,
    training_args: KeywordTrainingArguments,
) -> AttackResult:
    """Poison the training split, train the model on it and write a backdoored checkpoint.

    Writes to `training_args.output_dir` (atomically: everything goes to a temporary folder that is
    renamed at the end): safetensors weights, config, feature extractor, `attack_spec.json` and
    `metrics.json` (CA, ASR and RA on the held-out test split, and the training time). With `attack_args=None`
    nothing is poisoned (`run_clean_training`).

    Raises:
        PoisonError / TriggerError / AudioError / ValueError: bad arguments, detected before any training.
    """
    started = time.perf_counter()
    output_dir = Path(training_args.output_dir)
    overwrite = bool(getattr(training_args, "overwrite_output_dir", False))
    main_process = is_main_process(training_args)
    resume = resume_checkpoint(output_dir, training_args.resume_from_checkpoint)  # every rank resumes from it
    check_output_dir(output_dir, overwrite=overwrite, resume=resume is not None)  # before any work
    trigger = trigger_from_config(attack_args.trigger) if attack_args is not None else None
    dataset, model, feature_extractor, _ = _load_and_build(data_args, model_args)
    train, test = dataset[data_args.train_split], dataset[data_args.test_split]
    spec, target, triggered_test, poisoned_train = None, None, None, train
    if attack_args is not None:
        target = resolve_label(attack_args.target_label, train.features["label"])
        poisoned_train, spec = poison_dataset(
            train,
            trigger,
            attack_args.poison_rate,
            target,
            seed=attack_args.poison_seed,
            mode=attack_args.poison_mode,
            num_proc=data_args.num_proc,
        )
        triggered_test = make_triggered_eval_set(test, trigger, target, num_proc=data_args.num_proc)

    with staged_output_dir(
        output_dir, overwrite=overwrite, resume=resume is not None, main_process=main_process
    ) as staged:
        training_args.output_dir = str(staged.path)
        try:
            trainer, train_output, train_seconds = train_timed(
                AudioClassificationTrainer,
                model,
                training_args,
                poisoned_train,
                feature_extractor,
                resume_from_checkpoint=resume,
            )
        finally:
            training_args.output_dir = str(output_dir)
        metrics = evaluate_backdoor(
            trainer.model, feature_extractor, test, triggered_test, target, batch_size=64
        )
        measured = metrics.to_dict()
        if spec is None:
            measured = {k: measured[k] for k in ("clean_accuracy", "num_clean")}
        record = {
            **measured,
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
            "train_loss": train_output.training_loss,
            "model": model_args.model,
            "dataset": data_args.dataset,
            "machine": machine_description(),
            "data_args": asdict(data_args),
            "attack": spec.to_dict() if spec else None,
        }
        staged.publish = main_process and trainer.is_world_process_zero()
        if staged.publish:
            save_shareable_model(trainer, feature_extractor, staged.path)
            (staged.path / TRAINING_ARGS_FILE).write_text(
                json.dumps(training_args.to_dict(), indent=2, default=str)
            )
            if spec is not None:
                spec.to_json(str(staged.path / ATTACK_SPEC_FILE))
            (staged.path / METRICS_FILE).write_text(json.dumps(record, indent=2))
    if spec is None:
        logger.info("Clean model in %s: CA %.1f%%", output_dir, 100 * metrics.clean_accuracy)
    else:
        logger.info(
            "Backdoored model in %s: CA %.1f%%, ASR %.1f%%, RA %.1f%%",
            output_dir,
            100 * metrics.clean_accuracy,
            100 * metrics.attack_success_rate,
            100 * metrics.robust_accuracy,
        )
    return AttackResult(output_dir=str(output_dir), spec=spec, metrics=record)
