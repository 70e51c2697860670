"""Per-neuron gradient profiles: the observation GN-FT rests on, measured on any Wav2Vec2-family model.

GN-FT (Zhou, Lin, Liu 2025) starts from an observation: in a backdoored model, the neurons that carry the
backdoor show larger gradients than the others, and clean neurons the smallest. The authors score neuron k
of a layer by the summed magnitude of the gradient of its weights, `|∂L/∂W_k|` summed over the row (an
output feature of a linear layer, an output channel of a convolution), averaged over batches. This module
measures that score for chosen layers over a dataset.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm

from ..neurons import resolve_layers
from ..training import audio_batches


@dataclass
class GradientProfile:
    """Mean per-neuron gradient magnitude of some layers over a dataset.

    Args:
        layers: layer name -> tensor `(num_neurons,)` (float64, CPU): the batch-mean of `|∂L/∂W_k|` summed over
            neuron k's weights, L being the batch's mean cross-entropy.
        num_samples: clips the profile was measured on.
        label_source: "label" (each clip's own label) or "class N" (every clip labelled N).
    """

    layers: dict[str, torch.Tensor]
    num_samples: int
    label_source: str = "label"
    info: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> torch.Tensor:
        """Every neuron's value, layer after layer."""
        return torch.cat([values for values in self.layers.values()])

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "label_source": self.label_source,
            "layers": {name: values.tolist() for name, values in self.layers.items()},
            **self.info,
        }


@contextlib.contextmanager
def gradients_for(model: nn.Module, weights: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within the block the model is in eval mode and only `weights` require gradients; its mode and every
    parameter's `requires_grad` flag are restored afterwards."""
    was_training = model.training
    flags = [param.requires_grad for param in model.parameters()]
    model.eval()
    model.requires_grad_(False)
    for weight in weights:
        weight.requires_grad_(True)
    try:
        yield
    finally:
        model.train(was_training)
        for param, flag in zip(model.parameters(), flags, strict=True):
            param.requires_grad_(flag)


def neuron_gradient_profile(
    model: nn.Module,
    extractor: Any,
    dataset: Dataset,
    layers: Sequence[str] | None = None,
    *,
    labels: int | None = None,
    label_column: str = "label",
    batch_size: int = 32,
    max_samples: int | None = None,
    progress: bool = True,
    desc: str = "Gradient profile",
) -> GradientProfile:
    """The per-neuron gradient magnitude of `layers` (default: `default_layer_names`) over `dataset`.

    The model is in eval mode (no dropout or SpecAugment: the profile is deterministic) and only the scored
    layers' weights get gradients; the model's train mode and `requires_grad` flags are restored.

    Args:
        labels: a class id every clip is labelled with (e.g. the target class, for the gradient of the backdoor
            loss on triggered clips); `None` takes each clip's own label (fine-tuning on correct labels).
        max_samples: measure on the first `max_samples` clips only.

    Raises:
        UnknownLayerError: a layer name the model does not have.
        ValueError: the dataset is empty.
    """
    chosen = resolve_layers(model, layers)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError("cannot measure a gradient profile on an empty dataset")
    parameter = next(model.parameters())
    device = parameter.device
    totals = [torch.zeros(layer.num_neurons, dtype=torch.float64) for layer in chosen]
    weights = [layer.module.weight for layer in chosen]
    seen = 0
    with gradients_for(model, weights):
        batches = audio_batches(dataset, extractor, batch_size, label_column=label_column, labels=labels,
                                device=device, dtype=parameter.dtype)  # fmt: skip
        total = -(-len(dataset) // batch_size)
        for batch in tqdm(batches, total=total, desc=desc, disable=not progress):
            inputs = {key: value for key, value in batch.items() if key != "labels"}
            loss = F.cross_entropy(model(**inputs).logits.float(), batch["labels"])
            grads = torch.autograd.grad(loss, weights)
            size = batch["labels"].shape[0]
            for position, grad in enumerate(grads):
                totals[position] += (
                    size * grad.detach().abs().reshape(grad.shape[0], -1).sum(1).double().cpu()
                )
            seen += size
    return GradientProfile(
        layers={layer.name: total / seen for layer, total in zip(chosen, totals, strict=True)},
        num_samples=seen,
        label_source="label" if labels is None else f"class {int(labels)}",
    )
