"""Fine-pruning: prune the neurons that clean inputs leave dormant, then fine-tune on clean data.

Liu, Dolan-Gavitt, Garg, "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural Networks",
RAID 2018. A backdoor tends to live in neurons that clean inputs barely activate. The defender measures the
mean activation of each neuron of a late layer on clean data, removes neurons in increasing order of
activation until clean accuracy would drop by more than a tolerance, and fine-tunes the pruned network on
the clean data (the pruned neurons stay removed during fine-tuning).

Adaptation to speech transformers: the paper prunes the channels of the last convolutional layer; here the
neurons are the intermediate neurons of transformer feed-forward blocks (by default the last layer's, see
[`hf_gnft.neurons`]). When several layers are chosen, each step prunes the same fraction of every
chosen layer (activation scales differ between layers, so one global ranking would favour one layer).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel

from ..neurons import (
    FeedForwardLayer,
    feed_forward_layers,
    make_pruning_permanent,
    mean_activations,
    prune_neurons_,
    select_layers,
)
from ..training import audio_batches, evaluate_backdoor
from .base import DefenseOutcome, check_clean_subset, copy_model, fine_tune, is_finite_number
from .gnft_config import DefenseConfig

logger = logging.getLogger(__name__)

DEFENSE_NAME = "fine-pruning"

# accuracies are fractions of a finite set; this absorbs float rounding in "drop <= tolerance"
_EPSILON = 1e-9


@dataclass
class FinePruningConfig(DefenseConfig):
    """Configuration of fine-pruning: [`DefenseConfig`] (the fine-tuning that follows the pruning) plus the
    pruning schedule. `gn_alpha` defaults to 0 here, so the fine-tuning is plain fine-tuning as in the paper.

    Args:
        fp_layers (`list[int]`, *optional*, defaults to `[-1]`):
            Indices of the transformer feed-forward layers whose neurons are pruned (negative counts from the
            end). The default, the last layer, is the counterpart of the paper's last convolutional layer.
        fp_max_ratio (`float`, *optional*, defaults to `0.8`):
            The largest fraction of each chosen layer's neurons that is pruned.
        fp_step_ratio (`float`, *optional*, defaults to `0.05`):
            The fraction of each chosen layer's neurons pruned per step.
        fp_accuracy_tolerance (`float`, *optional*, defaults to `0.05`):
            Pruning stops at the last step whose clean accuracy is at most this much (absolute) below the
            unpruned model's. Accuracy is measured on `validation` when given, else on the clean subset.
        fp_fine_tune (`bool`, *optional*, defaults to `True`):
            Fine-tune the pruned model on the clean subset with this config's training arguments.
    """

    gn_alpha: float = field(
        default=0.0, metadata={"help": "α of GN-FT during the fine-tuning; 0 (plain FT) follows the paper."}
    )
    fp_layers: list[int] = field(
        default_factory=lambda: [-1],
        metadata={"help": "Feed-forward layers whose neurons are pruned (negative counts from the end)."},
    )
    fp_max_ratio: float = field(
        default=0.8, metadata={"help": "Largest fraction of each chosen layer's neurons that is pruned."}
    )
    fp_step_ratio: float = field(default=0.05, metadata={"help": "Fraction of the neurons pruned per step."})
    fp_accuracy_tolerance: float = field(
        default=0.05, metadata={"help": "Largest allowed drop of clean accuracy (absolute) while pruning."}
    )
    fp_fine_tune: bool = field(default=True, metadata={"help": "Fine-tune the pruned model on clean data."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            not isinstance(self.fp_layers, (list, tuple))
            or not self.fp_layers
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in self.fp_layers)
        ):
            raise ValueError(f"fp_layers must be a non-empty list of layer indices, got {self.fp_layers!r}")
        if len(set(self.fp_layers)) != len(self.fp_layers):
            raise ValueError(f"fp_layers names a layer twice: {self.fp_layers}")
        if not is_finite_number(self.fp_max_ratio) or not 0 < self.fp_max_ratio <= 1:
            raise ValueError(f"fp_max_ratio must be in (0, 1], got {self.fp_max_ratio!r}")
        if not is_finite_number(self.fp_step_ratio) or not 0 < self.fp_step_ratio <= 1:
            raise ValueError(f"fp_step_ratio must be in (0, 1], got {self.fp_step_ratio!r}")
        if not is_finite_number(self.fp_accuracy_tolerance) or not 0 <= self.fp_accuracy_tolerance <= 1:
            raise ValueError(f"fp_accuracy_tolerance must be in [0, 1], got {self.fp_accuracy_tolerance!r}")


def pruning_schedule(max_ratio: float, step_ratio: float) -> list[float]:
    """The cumulative pruned fractions tried, in order: `step_ratio, 2·step_ratio, ...`, capped at and
    ending with `max_ratio`."""
    steps = max(1, math.ceil(max_ratio / step_ratio - _EPSILON))
    return [round(min(max_ratio, (step + 1) * step_ratio), 12) for step in range(steps)]


class _SilencedNeurons:
    """Zero the outputs of chosen `intermediate_dense` neurons with forward hooks, for trying a pruning level
    without stacking `torch.nn.utils.prune` masks (same effect: the row and its bias give 0, and the
    activations used by these models map 0 to 0)."""

    def __init__(self, layers: list[FeedForwardLayer]) -> None:
        self.keep = [torch.ones(layer.num_neurons, dtype=torch.bool) for layer in layers]
        self.handles = [
            layer.intermediate.register_forward_hook(self._hook_for(position))
            for position, layer in enumerate(layers)
        ]

    def _hook_for(self, position: int):
        def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
            return output * self.keep[position].to(device=output.device, dtype=output.dtype)

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _accuracy(model: PreTrainedModel, extractor: Any, dataset: Dataset, batch_size: int) -> float:
    return float(evaluate_backdoor(model, extractor, dataset, batch_size=batch_size).clean_accuracy)


def apply_fine_pruning(
    model: PreTrainedModel,
    extractor: Any,
    clean: Dataset,
    config: FinePruningConfig | None = None,
    validation: Dataset | None = None,
) -> DefenseOutcome:
    """Fine-pruning (Liu et al., RAID 2018) of a copy of `model`; `model` itself is left unchanged.

    1. Mean activation of every neuron of the chosen feed-forward layers over the clean subset.
    2. Prune in increasing order of mean activation, `fp_step_ratio` of each layer per step, up to
       `fp_max_ratio`; after each step measure clean accuracy (on `validation` if given, else on `clean`)
       and keep the last step whose accuracy is within `fp_accuracy_tolerance` of the unpruned model's.
    3. Fine-tune on `clean` with `config` (masks in place, so pruned neurons stay silent), when
       `fp_fine_tune`; then fold the masks into the weights.

    Returns:
        A [`DefenseOutcome`] whose `info` holds: the pruned neuron indices per layer, their count and fraction,
        the accuracy curve of the pruning search, the accuracy set used, and why pruning stopped.

    Raises:
        DefenseInputError: the clean subset is empty.
        UnsupportedModelError: the model has no transformer feed-forward layers.
        ValueError: an index of `fp_layers` is out of range.
    """
    config = config if config is not None else FinePruningConfig()
    check_clean_subset(clean, DEFENSE_NAME)
    pruned_model = copy_model(model)
    layers = select_layers(feed_forward_layers(pruned_model, DEFENSE_NAME), config.fp_layers)
    batch_size = config.per_device_eval_batch_size

    activations = mean_activations(pruned_model, layers, audio_batches(clean, extractor, batch_size))
    # stable sort: ties keep index order, so the result is deterministic
    orders = [torch.sort(values, stable=True).indices for values in activations]

    accuracy_set, accuracy_data = ("validation", validation) if validation is not None else ("clean", clean)
    if accuracy_set == "validation" and len(accuracy_data) == 0:
        raise ValueError(
            "the validation set is empty: pass validation=None to measure accuracy on clean data"
        )
    baseline = _accuracy(pruned_model, extractor, accuracy_data, batch_size)
    curve: list[dict[str, float | int]] = [{"ratio": 0.0, "pruned": 0, "accuracy": baseline}]
    chosen_counts = [0 for _ in layers]
    stopped_by = "max_ratio"
    silenced = _SilencedNeurons(layers)
    try:
        for ratio in pruning_schedule(config.fp_max_ratio, config.fp_step_ratio):
            counts = [int(round(ratio * layer.num_neurons)) for layer in layers]
            for position, (layer, count) in enumerate(zip(layers, counts, strict=True)):
                keep = torch.ones(layer.num_neurons, dtype=torch.bool)
                keep[orders[position][:count]] = False
                silenced.keep[position] = keep
            accuracy = _accuracy(pruned_model, extractor, accuracy_data, batch_size)
            curve.append({"ratio": ratio, "pruned": sum(counts), "accuracy": accuracy})
            logger.info("Fine-pruning: %.1f%% pruned, %s accuracy %.4f", 100 * ratio, accuracy_set, accuracy)
            if baseline - accuracy > config.fp_accuracy_tolerance + _EPSILON:
                stopped_by = "tolerance"
                break
            chosen_counts = counts
    finally:
        silenced.remove()

    pruned_indices = []
    for position, (layer, count) in enumerate(zip(layers, chosen_counts, strict=True)):
        indices = orders[position][:count]
        keep = torch.ones(layer.num_neurons, dtype=torch.bool)
        keep[indices] = False
        prune_neurons_(layer, keep)
        pruned_indices.append(sorted(int(i) for i in indices))
    pruned_accuracy = next(
        (point["accuracy"] for point in reversed(curve) if point["pruned"] == sum(chosen_counts)), baseline
    )

    if config.fp_fine_tune:
        fine_tune(pruned_model, extractor, clean, config)
    make_pruning_permanent(pruned_model)
    pruned_model.eval()

    total = sum(layer.num_neurons for layer in layers)
    info: dict[str, Any] = {
        "defense": DEFENSE_NAME,
        "layers": [
            {
                "name": layer.name,
                "index": layer.index,
                "num_neurons": layer.num_neurons,
                "pruned": indices,
                "mean_activation": [float(v) for v in values],
            }
            for layer, indices, values in zip(layers, pruned_indices, activations, strict=True)
        ],
        "pruned_count": sum(chosen_counts),
        "pruned_ratio": sum(chosen_counts) / total,
        "accuracy_set": accuracy_set,
        "baseline_accuracy": baseline,
        "pruned_accuracy": pruned_accuracy,
        "accuracy_curve": curve,
        "stopped_by": stopped_by,
        "fine_tuned": bool(config.fp_fine_tune),
    }
    return DefenseOutcome(model=pruned_model, info=info)
