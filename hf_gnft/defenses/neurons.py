"""The neurons that baseline defenses score, mask and prune: the feed-forward neurons of transformer layers.

Fine-pruning, ANP and CLP were written for CNN channels. In the speech transformers we clean (Wav2Vec2,
HuBERT, WavLM, Data2VecAudio, ...) their counterpart is the intermediate neuron of each encoder layer's
feed-forward block (`intermediate_dense` → activation → `output_dense`): a row of `intermediate_dense`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune


class UnsupportedModelError(ValueError):
    """The model has no layer of the kind a defense works on."""


@dataclass
class FeedForwardLayer:
    """One transformer feed-forward block; its neurons are the output features of `intermediate`."""

    name: str
    index: int
    intermediate: nn.Linear
    output: nn.Linear
    activation: nn.Module

    @property
    def num_neurons(self) -> int:
        return self.intermediate.out_features


def feed_forward_layers(model: nn.Module, defense: str = "this defense") -> list[FeedForwardLayer]:
    """The model's transformer feed-forward blocks, in depth order.

    Raises:
        UnsupportedModelError: the model has none (the message names the model class).
    """
    layers = []
    for name, module in model.named_modules():
        intermediate = getattr(module, "intermediate_dense", None)
        output = getattr(module, "output_dense", None)
        if isinstance(intermediate, nn.Linear) and isinstance(output, nn.Linear):
            activation = getattr(module, "intermediate_act_fn", None) or nn.Identity()
            layers.append(FeedForwardLayer(name, len(layers), intermediate, output, activation))
    if not layers:
        raise UnsupportedModelError(
            f"{defense} works on the feed-forward neurons of transformer layers (`intermediate_dense` / "
            f"`output_dense`, as in Wav2Vec2, HuBERT, WavLM, Data2VecAudio), and {type(model).__name__} has none"
        )
    return layers


def select_layers(layers: list[FeedForwardLayer], indices: Iterable[int] | None) -> list[FeedForwardLayer]:
    """`layers[i]` for each index (negative counts from the end); all layers when `indices` is None."""
    if indices is None:
        return list(layers)
    chosen = []
    for index in indices:
        if not -len(layers) <= index < len(layers):
            raise ValueError(
                f"layer index {index} is out of range: the model has {len(layers)} feed-forward layers"
            )
        chosen.append(layers[index])
    return chosen


def prune_neurons_(layer: FeedForwardLayer, keep: torch.Tensor) -> None:
    """Silence the neurons where `keep` is False, persistently: `torch.nn.utils.prune` masks the rows of
    `intermediate_dense` (weight and bias), so later fine-tuning cannot bring them back. Masks combine with
    earlier ones. Call `make_pruning_permanent` before saving."""
    keep = keep.to(device=layer.intermediate.weight.device, dtype=torch.bool)
    if keep.shape != (layer.num_neurons,):
        raise ValueError(f"keep must have shape ({layer.num_neurons},), got {tuple(keep.shape)}")
    weight_mask = keep[:, None].expand_as(layer.intermediate.weight).to(layer.intermediate.weight.dtype)
    prune.custom_from_mask(layer.intermediate, "weight", weight_mask)
    if layer.intermediate.bias is not None:
        prune.custom_from_mask(layer.intermediate, "bias", keep.to(layer.intermediate.bias.dtype))


def pruned_neurons(layer: FeedForwardLayer) -> torch.Tensor:
    """Boolean mask of the neurons pruned so far (all False when none is)."""
    mask = getattr(layer.intermediate, "weight_mask", None)
    if mask is None:
        return torch.zeros(layer.num_neurons, dtype=torch.bool)
    return ~mask.bool().any(dim=1).cpu()


def make_pruning_permanent(model: nn.Module) -> int:
    """Fold every `torch.nn.utils.prune` mask into its weight (so the state dict has plain weights);
    returns the number of tensors folded."""
    folded = 0
    for module in model.modules():
        for name in [hook._tensor_name for hook in module._forward_pre_hooks.values() if isinstance(hook, prune.BasePruningMethod)]:  # fmt: skip
            prune.remove(module, name)
            folded += 1
    return folded


@torch.no_grad()
def mean_activations(
    model: nn.Module, layers: list[FeedForwardLayer], batches: Iterable[dict[str, torch.Tensor]]
) -> list[torch.Tensor]:
    """Mean post-activation value of every neuron of `layers` over the batches (all frames of every clip),
    with the model in eval mode. One tensor of shape `(num_neurons,)` per layer, on the CPU."""
    sums = [torch.zeros(layer.num_neurons, dtype=torch.float64) for layer in layers]
    counts = [0 for _ in layers]

    def hook_for(position: int, layer: FeedForwardLayer):
        def hook(module, inputs, output):
            values = layer.activation(output).reshape(-1, layer.num_neurons)
            sums[position] += values.double().sum(0).cpu()
            counts[position] += values.shape[0]

        return hook

    handles = [layer.intermediate.register_forward_hook(hook_for(i, layer)) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not all(counts):
        raise ValueError("no data reached the layers: the clean batches are empty")
    return [total / count for total, count in zip(sums, counts, strict=True)]
