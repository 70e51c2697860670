"""What every defense shares: its outcome, and fine-tuning on the clean subset."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel, Trainer, TrainingArguments

from ..training import train_timed
from .gnft_trainer import GNFTTrainer


class DefenseInputError(ValueError):
    """A defense cannot run on the input it was given (e.g. an empty clean subset)."""


@dataclass
class DefenseOutcome:
    """A defended model and what the defense did to get it (pruned neurons, masks, losses ...)."""

    model: PreTrainedModel
    info: dict[str, Any] = field(default_factory=dict)


def is_finite_number(value: Any) -> bool:
    """Whether a setting is a finite int or float (a bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_clean_subset(clean: Dataset | None, defense: str) -> None:
    """A clean subset is present and not empty."""
    if clean is None or len(clean) == 0:
        raise DefenseInputError(f"{defense} needs clean data, and the clean subset is empty")


def fine_tune(
    model: PreTrainedModel,
    extractor: Any,
    clean: Dataset,
    args: TrainingArguments,
    trainer_class: type[Trainer] | None = None,
    **trainer_kwargs: Any,
) -> Trainer:
    """Train `model` in place on `clean` with `trainer_class` (`GNFTTrainer` by default; `gn_alpha=0` is plain
    FT).

    A checkpoint path in `args.resume_from_checkpoint` (the pipeline sets it when a run resumes) continues that
    run; `True` / `None` start afresh (the pipeline resolves `True` to the last checkpoint first)."""
    resume = args.resume_from_checkpoint if isinstance(args.resume_from_checkpoint, str) else None
    return train_timed(
        trainer_class or GNFTTrainer,
        model,
        args,
        clean,
        extractor,
        resume_from_checkpoint=resume,
        **trainer_kwargs,
    )[0]


def copy_model(model: PreTrainedModel) -> PreTrainedModel:
    """A deep copy, so that a defense never changes the suspect model it was handed."""
    return copy.deepcopy(model)
