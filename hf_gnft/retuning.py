"""The retuning check: does a defended model re-learn its backdoor from a handful of triggered clips?

Min, Qin, Zhang, Shen, Cheng ("Uncovering, Explaining, and Mitigating the Superficial Safety of Backdoor
Defense", NeurIPS 2024, arXiv 2410.09838) fine-tune a purified model on a small clean set in which a few
clips carry the true trigger and the attack's target label (their "retuning attack", RA). A model whose
backdoor was removed stays near a clean model's ASR; a model whose backdoor was only hidden gets it back
within a few epochs ("superficial safety"). `retuning_attack` runs that check on a deep copy of a model and
reports CA / ASR / RA after it.

Settings, from the authors' released code (`AISafety-HKUST/stable_backdoor_purification`,
`fine_tune/ft_poison.py`, its argument defaults and README example; the paper's code is not copied), and
how they are adapted to the tiny keyword models:

- `num_triggered = 5`: the authors' `--poison_num 5`. Their poisoned samples come from the attack's poisoned
  training set (non-target inputs with the trigger, relabelled to the target); here they are clean clips
  whose label is not the target, triggered and relabelled the same way (seeded draw).
- `num_clean = None`: every other clip of the clean set. The authors retune on the defense's own clean split
  (`--split_ratio 0.02`: 1,000 CIFAR-10 images) in which the 5 poisoned samples replace 5 clean ones; here
  the clean set is the defender's (5%: 200 clips by default), so 195 clean + 5 triggered clips.
- `num_train_epochs = 5`: the authors' README example (`--epochs 5`).
- SGD, momentum 0.9, constant learning rate, no weight decay: the authors' optimizer (no scheduler).
- `learning_rate = 0.01`: the authors' default (`--lr 0.01`), kept (measured below).
- `per_device_train_batch_size = 32` (the authors: 128): 1,000 images in batches of 128 for 5 epochs are
  40 steps; 200 clips in batches of 32 for 5 epochs are 35, a like budget (about 3 s on 2 CPU cores).
- `seed = 0` (the authors: 42): the project's default; it draws the clips and seeds training.

Measured on the demo's setting (tiny Wav2Vec2, 4,000 synthetic clips, noise-burst trigger at 10% dirty-label
poisoning, seed 42; 200 clean clips; defaults, seed 0), CA / ASR % before -> after retuning: backdoored
96.5 / 92.0 -> 96.2 / 92.2; its clean twin (same data unpoisoned) 96.5 / 0.0 -> 95.8 / 0.0; FT at lr 0.2
(a defense that reached ASR 1.3, CA 90.2) -> 90.2 / 61.9: the backdoor was hidden, not removed. At lr 0.05
the same FT model went to ASR 83.6 but the clean twin lost 7.8 CA points, so the authors' 0.01 was kept.

Nothing is written to disk but a temporary Trainer folder, deleted at the end; the model passed in is never
changed.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from datasets import Dataset
from transformers import FeatureExtractionMixin, PreTrainedModel, TrainingArguments

from .metrics import BackdoorMetrics
from .poison import _check_columns, _fingerprint, _map_trigger, _preflight
from .settings import check_numeric_settings
from .training import AudioClassificationTrainer, evaluate_backdoor, train_timed
from .triggers import Trigger, trigger_from_config


class RetuningError(ValueError):
    """A retuning check that cannot run on its inputs (too few clips, a bad label or setting)."""


@dataclass
class RetuningConfig:
    """Settings of the retuning check (see the module docstring for their sources).

    Args:
        num_triggered: clean clips of other classes given the trigger and the target label (authors: 5).
        num_clean: clean clips mixed in; `None` for every clean clip not triggered.
        num_train_epochs: epochs over the retuning set (authors: 5).
        learning_rate: constant learning rate of SGD (authors: 0.01).
        momentum: SGD momentum (authors: 0.9).
        per_device_train_batch_size: batch size (authors: 128 on 1,000 images; 32 on the 200 clips here).
        seed: draws the triggered and clean clips, and seeds training.
    """

    num_triggered: int = 5
    num_clean: int | None = None
    num_train_epochs: float = 5.0
    learning_rate: float = 0.01
    momentum: float = 0.9
    per_device_train_batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        check_numeric_settings(self, error=RetuningError)
        if isinstance(self.num_triggered, bool) or not isinstance(self.num_triggered, int):
            raise RetuningError(f"num_triggered must be an integer >= 1, got {self.num_triggered!r}")
        if self.num_triggered < 1:
            raise RetuningError(
                f"num_triggered must be >= 1 (the retuning check needs triggered clips), got {self.num_triggered}"
            )
        if self.num_clean is not None and (
            isinstance(self.num_clean, bool) or not isinstance(self.num_clean, int) or self.num_clean < 0
        ):
            raise RetuningError(f"num_clean must be an integer >= 0 or None, got {self.num_clean!r}")
        if not self.num_train_epochs > 0:
            raise RetuningError(f"num_train_epochs must be > 0, got {self.num_train_epochs!r}")
        if not self.learning_rate > 0:
            raise RetuningError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0 <= self.momentum < 1:
            raise RetuningError(f"momentum must be in [0, 1), got {self.momentum!r}")
        batch_size = self.per_device_train_batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise RetuningError(
                f"per_device_train_batch_size must be >= 1, got {self.per_device_train_batch_size!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RetuningResult:
    """What the retuning check measured and did.

    Args:
        metrics: CA / ASR / RA of the retuned copy on the test sets.
        triggered_rows: the rows of the clean set that were triggered and relabelled (sorted).
        num_triggered: triggered clips in the retuning set.
        num_clean: clean clips in the retuning set.
        steps: optimizer steps.
        train_loss: mean training loss over the run.
        train_seconds: training wall time.
        config: the settings used.
    """

    metrics: BackdoorMetrics
    triggered_rows: list[int]
    num_triggered: int
    num_clean: int
    steps: int
    train_loss: float
    train_seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["metrics"] = self.metrics.to_dict()
        return values


def _target_id(model: PreTrainedModel, target_label: int | str) -> int:
    """The target's class id among the model's labels."""
    num_labels = model.config.num_labels
    label2id = {str(name): int(index) for name, index in (model.config.label2id or {}).items()}
    if isinstance(target_label, str) and not target_label.lstrip("-").isdigit():
        if target_label not in label2id:
            raise RetuningError(
                f"unknown target label {target_label!r}; the model's labels are {sorted(label2id)}"
            )
        return label2id[target_label]
    if isinstance(target_label, bool) or not 0 <= int(target_label) < num_labels:
        raise RetuningError(
            f"target label {target_label!r} is outside the model's {num_labels} labels (ids 0..{num_labels - 1})"
        )
    return int(target_label)


def _check_label_space(model: PreTrainedModel, clean: Dataset, label_column: str = "label") -> None:
    feature = clean.features.get(label_column)
    data_names = getattr(feature, "names", None)
    model_names = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    if data_names is not None and list(data_names) != model_names:
        raise RetuningError(
            f"the model's classes {model_names} differ from the clean data's {list(data_names)}: the retuning "
            "check needs clean clips in the model's label space"
        )


def select_retuning_rows(
    labels: np.ndarray, target: int, num_triggered: int, num_clean: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The rows to trigger (drawn from the rows not of `target`) and the clean rows (drawn from the rest),
    both sorted; deterministic for `seed`.

    Raises:
        RetuningError: fewer non-target rows than `num_triggered`, or fewer remaining rows than `num_clean`.
    """
    labels = np.asarray(labels)
    candidates = np.flatnonzero(labels != target)
    if candidates.size < num_triggered:
        raise RetuningError(
            f"the retuning check needs {num_triggered} clean clips whose label is not the target {target}, "
            f"but the clean set has {candidates.size} (of {labels.size}): pass more clean data or lower num_triggered"
        )
    rng = np.random.default_rng([seed, 0x2E7E])
    triggered = np.sort(rng.choice(candidates, size=num_triggered, replace=False))
    rest = np.setdiff1d(np.arange(labels.size), triggered)
    if num_clean is None:
        return triggered, rest
    if num_clean > rest.size:
        raise RetuningError(
            f"num_clean={num_clean} clean clips requested, but only {rest.size} remain besides the "
            f"{num_triggered} triggered ones: lower num_clean or pass more clean data"
        )
    return triggered, np.sort(rng.choice(rest, size=num_clean, replace=False))


def build_retuning_set(
    clean: Dataset,
    trigger: Trigger | dict | str,
    target: int,
    config: RetuningConfig,
    *,
    audio_column: str = "audio",
    label_column: str = "label",
) -> tuple[Dataset, np.ndarray]:
    """The retuning set: `config.num_clean` clean clips and `config.num_triggered` clips of other classes with
    the trigger and the target label (columns `poisoned` and `original_label` added, as `poison_dataset`
    does), and the triggered rows' indices in `clean`."""
    trigger = trigger_from_config(trigger)
    class_label = _check_columns(clean, audio_column, label_column)
    if not 0 <= target < class_label.num_classes:
        raise RetuningError(
            f"target label {target} is outside the data's {class_label.num_classes} classes {class_label.names}"
        )
    triggered, kept = select_retuning_rows(
        np.asarray(clean[label_column]), target, config.num_triggered, config.num_clean, config.seed
    )
    rows = np.union1d(triggered, kept)
    subset = clean.select(rows)
    selected = np.isin(rows, triggered)
    _preflight(subset, trigger, int(np.flatnonzero(selected)[0]), audio_column)
    retuning_set = _map_trigger(
        subset,
        trigger,
        selected,
        relabel_to=target,
        class_label=class_label,
        audio_column=audio_column,
        label_column=label_column,
        batch_size=64,
        num_proc=None,
        fingerprint=_fingerprint(
            subset, trigger, "retuning", target, config.seed, audio_column, label_column
        ),
        desc=f"Retuning set: {triggered.size} clips with {trigger.describe()}",
    )
    return retuning_set, triggered


def retuning_attack(
    model: PreTrainedModel,
    feature_extractor: FeatureExtractionMixin,
    clean: Dataset,
    trigger: Trigger | dict | str,
    target_label: int | str,
    test: Dataset,
    triggered_test: Dataset,
    config: RetuningConfig | None = None,
) -> RetuningResult:
    """Fine-tune a deep copy of `model` on clean clips mixed with a few triggered ones relabelled to the target,
    and measure CA / ASR / RA after it (the retuning attack of Min et al., NeurIPS 2024).

    A backdoor that a defense only hid comes back; one that it removed does not (a model trained without the
    backdoor is the reference). `model` itself is never changed.

    Args:
        model: the model to check (defended, backdoored or clean).
        feature_extractor: its feature extractor.
        clean: clean labelled clips (`Audio(decode=False)`, `ClassLabel`); the triggered clips are drawn from
            those whose label is not the target.
        trigger: the attack's true trigger (a `Trigger`, its dict or JSON).
        target_label: the attack's target class id (or name).
        test: the clean test set (CA).
        triggered_test: the triggered non-target test clips (ASR / RA; see `make_triggered_eval_set`).
        config: the check's settings (`RetuningConfig()` by default).

    Returns:
        `RetuningResult`: the metrics after retuning and what was done.

    Raises:
        RetuningError: an invalid `config` (e.g. `num_triggered < 1`), an empty clean or test set, a target
            outside the model's labels, clean data in another label space, fewer clean clips of other classes
            than `config.num_triggered` (or fewer remaining than `config.num_clean`); all before any training.
    """
    # rebuilt, so that a config changed after construction is checked again
    config = RetuningConfig(**config.to_dict()) if config is not None else RetuningConfig()
    if clean is None or len(clean) == 0:
        raise RetuningError("the retuning check needs clean clips, and the clean set is empty")
    if len(test) == 0 or len(triggered_test) == 0:
        raise RetuningError("the retuning check needs a non-empty clean test set and a triggered test set")
    target = _target_id(model, target_label)
    _check_label_space(model, clean)
    retuning_set, triggered_rows = build_retuning_set(clean, trigger, target, config)
    retuned = copy.deepcopy(model)
    with tempfile.TemporaryDirectory(prefix="hf_gnft_retuning_") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            num_train_epochs=config.num_train_epochs,
            per_device_train_batch_size=config.per_device_train_batch_size,
            learning_rate=config.learning_rate,
            optim="sgd",
            optim_args=f"momentum={config.momentum}",
            weight_decay=0.0,
            lr_scheduler_type="constant",
            seed=config.seed,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            remove_unused_columns=False,
            dataloader_num_workers=0,
        )
        trainer, output, seconds = train_timed(
            AudioClassificationTrainer, retuned, args, retuning_set, feature_extractor
        )
    retuned.eval()
    metrics = evaluate_backdoor(retuned, feature_extractor, test, triggered_test, target)
    return RetuningResult(
        metrics=metrics,
        triggered_rows=[int(row) for row in triggered_rows],
        num_triggered=int(triggered_rows.size),
        num_clean=len(retuning_set) - int(triggered_rows.size),
        steps=trainer.state.global_step,
        train_loss=float(output.training_loss),
        train_seconds=seconds,
        config=config.to_dict(),
    )
