"""ANP: Adversarial Neuron Pruning (Wu & Wang, "Adversarial Neuron Pruning Purifies Backdoored Deep Models",
NeurIPS 2021).

Backdoored networks are more sensitive to adversarial perturbations of their neurons than clean ones: a
small multiplicative perturbation of the neurons that carry the backdoor makes the model misbehave on clean
inputs. ANP learns a mask `m ∈ [0, 1]` per neuron on the clean subset, with the model's weights frozen,
minimising

    α · L(m, 0, 0) + (1 − α) · max_{δ, ξ ∈ [−ε, ε]} L(m, δ, ξ),

where neuron k's output `w_k·x + b_k` becomes `(m_k + δ_k) · w_k·x + (1 + ξ_k) · b_k`, and then prunes the
neurons whose mask is small (below a threshold, or the N smallest).

Adaptation: the paper masks the BatchNorm neurons (channels) of CNNs. The speech transformers cleaned here
have no BatchNorm in their encoder, so the neurons are the feed-forward neurons of every encoder layer
(rows of `intermediate_dense`, see [`hf_gnft.neurons`]); `w_k·x` is the neuron's pre-bias output,
recovered in a forward hook as the layer's output minus its bias. `anp_neurons="layer_norm"` masks the channels
of every affine LayerNorm instead (`γ_k·x̂_k + β_k`: the same scale-and-shift form as the paper's BatchNorm
neurons; pruning sets `γ_k = β_k = 0`). `anp_neurons="conv"` masks the output channels of the convolutional
feature encoder, the CNN in front of the transformer and the closest counterpart of the paper's CNN channels:
after the first layer's per-channel GroupNorm (`γ_k·x̂_k + β_k`, masking before it would be normalised away), and
at the output of the bias-free convolutions of the other layers (`m_k·z_k`); pruning zeroes the norm's `γ_k, β_k`
or the convolution's weight slice. The paper optimises the masks with the
model in train mode (for BatchNorm statistics); here the model is in eval mode, so dropout and the model's
SpecAugment are off and the masks see deterministic outputs.

Measured on the test suite's backdoored tiny Wav2Vec2 (2 layers of 256 neurons, 80 clean clips): the
perturbations barely raise the loss (ε = 0.4: 1.249 → 1.267 after 200 steps; ε = 1.0: 1.287 → 1.332), few
masks fall below 0.2 (4 to 7 neurons), and pruning up to 100 of the 512 neurons by smallest mask leaves the
attack success rate unchanged (0.83). ANP's premise, backdoor neurons that are unusually sensitive to
perturbation, did not hold for feed-forward neurons of that model. In the small benchmark grid
(`make bench-defenses`) threshold 0.2 pruned nothing on any suspect; the LayerNorm variant (ε = 1, the 60
smallest of 352 masks) lowered ASR by at most 7 points within the 2-point validation rule (docs/notes/2026-12-defense-benchmarks-history.md). On the conv
channels (`benchmarks/grids/anp-variants.yaml`, ε = 1) the perturbations do bite (the perturbed loss reached 9–14
nats against 1–3 unperturbed), but the smallest masks are channels the clean task needs: pruning 5–20 of the 224
cost Wav2Vec2 4–5 points of validation accuracy for ASR 82–86% (from 93%), and HuBERT's 5 within the rule left
ASR at 92%. On a tiny Wav2Vec2 trained on noisy sines with a planted noise-burst backdoor (the tests' planted
pair), conv-channel ANP partly does what the paper says: 200 steps pruned 52 of the 224 channels, ASR 1.0 → 0.63
at CA 1.0 (first measured at 0.2 with older library versions; the twin is retrained each run), while as many
random channels per layer cost 0–65 points of CA (mean 38).

Each step (the paper's Algorithm 1): δ and ξ are drawn uniformly in [−ε, ε], take `anp_perturb_steps`
signed-gradient ascent steps on the cross-entropy (clipped to [−ε, ε]), then the masks take one SGD step
(momentum 0.9) on the combined loss and are clipped to [0, 1].
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel

from ..neurons import (
    ChannelNeurons,
    FeedForwardLayer,
    conv_neurons,
    feed_forward_layers,
    layer_norm_neurons,
    make_pruning_permanent,
    prune_neurons_,
)
from ..settings import check_numeric_settings
from ..training import audio_batches
from .base import DefenseOutcome, check_clean_subset, copy_model

PRUNE_BY = ("threshold", "number")
NEURON_KINDS = ("feed_forward", "layer_norm", "conv")


Neurons = FeedForwardLayer | ChannelNeurons


def _masked_module(layer: Neurons) -> nn.Module:
    return layer.module if isinstance(layer, ChannelNeurons) else layer.intermediate


def anp_neurons(model: nn.Module, kind: str) -> list[Neurons]:
    """The neurons ANP masks: feed-forward neurons (`"feed_forward"`), LayerNorm channels (`"layer_norm"`) or
    the channels of the convolutional feature encoder (`"conv"`)."""
    if kind == "layer_norm":
        return layer_norm_neurons(model)
    if kind == "conv":
        return conv_neurons(model)
    return feed_forward_layers(model, defense="ANP")


@dataclass
class ANPConfig:
    """Configuration of ANP (the paper's defaults where it has them).

    Args:
        anp_eps: ε, the bound of the neuron perturbations δ (on the weight term) and ξ (on the bias term).
        anp_alpha: α, the trade-off: `α · L(unperturbed) + (1 − α) · L(worst perturbation)`.
        anp_steps: mask-optimisation iterations (one clean batch each; the paper: 2000).
        anp_mask_lr: learning rate of the masks (SGD with momentum 0.9, as in the paper).
        anp_perturb_steps: signed-gradient ascent steps on δ, ξ per iteration (the paper: 1).
        anp_perturb_lr: step size of each ascent step on δ, ξ.
        anp_batch_size: clean clips per iteration.
        anp_prune_by: `"threshold"` (prune the neurons whose mask is below `anp_threshold`) or `"number"`
            (prune the `anp_prune_number` neurons with the smallest masks, over all layers).
        anp_threshold: the mask threshold of `"threshold"` pruning.
        anp_prune_number: how many neurons `"number"` pruning removes.
        anp_seed: seed of the batch order and of the random initialisation of the perturbations.
        anp_neurons: which neurons are masked: `"feed_forward"` (the rows of each encoder layer's
            `intermediate_dense`), `"layer_norm"` (the channels of every affine LayerNorm: the scale-and-shift
            neurons closest to the paper's BatchNorm neurons) or `"conv"` (the channels of the convolutional
            feature encoder, see the module docs).
    """

    anp_eps: float = field(default=0.4, metadata={"help": "ε: bound of the neuron perturbations."})
    anp_alpha: float = field(default=0.2, metadata={"help": "α: weight of the unperturbed loss."})
    anp_steps: int = field(default=2000, metadata={"help": "Mask-optimisation iterations."})
    anp_mask_lr: float = field(
        default=0.2, metadata={"help": "Learning rate of the masks (SGD, momentum 0.9)."}
    )
    anp_perturb_steps: int = field(
        default=1, metadata={"help": "Ascent steps on the perturbations per step."}
    )
    anp_perturb_lr: float = field(default=0.2, metadata={"help": "Step size of the perturbation ascent."})
    anp_batch_size: int = field(default=32, metadata={"help": "Clean clips per iteration."})
    anp_prune_by: str = field(default="threshold", metadata={"help": "'threshold' or 'number'."})
    anp_threshold: float = field(default=0.2, metadata={"help": "Prune neurons whose mask is below this."})
    anp_prune_number: int | None = field(
        default=None, metadata={"help": "With anp_prune_by='number': how many neurons to prune."}
    )
    anp_seed: int = field(
        default=0, metadata={"help": "Seed of batch order and perturbation initialisation."}
    )
    anp_neurons: str = field(
        default="feed_forward", metadata={"help": "'feed_forward', 'layer_norm' or 'conv'."}
    )

    def __post_init__(self) -> None:
        check_numeric_settings(self)

        def number(name: str, low: float, high: float = math.inf, integer: bool = False) -> None:
            value = getattr(self, name)
            kind = int if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
                bounds = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
                raise ValueError(
                    f"{name} must be {'an integer' if integer else 'a number'} {bounds}, got {value!r}"
                )

        number("anp_eps", 0.0)
        number("anp_alpha", 0.0, 1.0)
        number("anp_steps", 1, integer=True)
        number("anp_perturb_steps", 0, integer=True)
        number("anp_batch_size", 1, integer=True)
        number("anp_threshold", 0.0, 1.0)
        number("anp_seed", -math.inf, integer=True)
        for name in ("anp_mask_lr", "anp_perturb_lr"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), (int, float)):
                raise ValueError(f"{name} must be a number > 0, got {getattr(self, name)!r}")
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.anp_neurons not in NEURON_KINDS:
            raise ValueError(f"unknown anp_neurons {self.anp_neurons!r}; use one of {NEURON_KINDS}")
        if self.anp_prune_by not in PRUNE_BY:
            raise ValueError(f"unknown anp_prune_by {self.anp_prune_by!r}; use one of {PRUNE_BY}")
        if self.anp_prune_by == "number":
            if self.anp_prune_number is None:
                raise ValueError("anp_prune_by='number' needs anp_prune_number")
            number("anp_prune_number", 0, integer=True)


class NeuronMasks:
    """Masks `m` and perturbations `δ`, `ξ` on the neurons of `layers` (feed-forward blocks or LayerNorms),
    applied by forward hooks on `intermediate_dense` (or the LayerNorm) while the object is attached (use it
    as a context manager).

    Neuron k's output `z_k + b_k` (`z_k = w_k·x`) becomes `(m_k + δ_k) · z_k + (1 + ξ_k) · b_k` when
    `perturbed` is True, and `m_k · z_k + b_k` otherwise. Masks start at 1 and perturbations at 0, so an
    attached, unperturbed, fresh object leaves the model's outputs unchanged.

    Attributes:
        masks: one tensor per layer, shape (num_neurons,), requires grad.
        weight_noise: δ, one tensor per layer, requires grad.
        bias_noise: ξ, one tensor per layer, requires grad.
        perturbed: whether δ and ξ are applied.
    """

    def __init__(self, layers: list[Neurons], eps: float) -> None:
        self.layers = layers
        self.eps = float(eps)

        def zeros(layer: Neurons) -> torch.Tensor:
            weight = _masked_module(layer).weight
            return torch.zeros(layer.num_neurons, device=weight.device, dtype=weight.dtype)

        self.masks = [(zeros(layer) + 1).requires_grad_() for layer in layers]
        self.weight_noise = [zeros(layer).requires_grad_() for layer in layers]
        self.bias_noise = [zeros(layer).requires_grad_() for layer in layers]
        self.perturbed = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def perturbations(self) -> list[torch.Tensor]:
        return self.weight_noise + self.bias_noise

    def _hook(self, position: int):
        layer = self.layers[position]
        channel_dim = layer.channel_dim if isinstance(layer, ChannelNeurons) else -1

        def per_channel(values: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
            if channel_dim in (-1, output.dim() - 1):
                return values
            return values.reshape(-1, *([1] * (output.dim() - 1 - channel_dim % output.dim())))

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            scale = self.masks[position]
            if self.perturbed:
                scale = scale + self.weight_noise[position]
            scale = per_channel(scale, output)
            bias = module.bias
            if bias is None:
                return output * scale
            bias = per_channel(bias, output)
            shift = bias * (1 + per_channel(self.bias_noise[position], output)) if self.perturbed else bias
            return (output - bias) * scale + shift

        return hook

    def attach(self) -> NeuronMasks:
        if not self._handles:
            self._handles = [
                _masked_module(layer).register_forward_hook(self._hook(i))
                for i, layer in enumerate(self.layers)
            ]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> NeuronMasks:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    @torch.no_grad()
    def reset_perturbations(self, generator: torch.Generator) -> None:
        """Draw δ and ξ uniformly in [−ε, ε] (on the CPU generator, then moved)."""
        for noise in self.perturbations:
            values = torch.rand(noise.shape, generator=generator, dtype=torch.float64) * 2 - 1
            noise.copy_((values * self.eps).to(device=noise.device, dtype=noise.dtype))

    @torch.no_grad()
    def clip_masks_(self) -> None:
        for mask in self.masks:
            mask.clamp_(0.0, 1.0)

    def mask_values(self) -> list[torch.Tensor]:
        """The masks, detached, on the CPU."""
        return [mask.detach().cpu().clone() for mask in self.masks]


def _cross_entropy(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(**inputs).logits
    return F.cross_entropy(logits.float(), batch["labels"])


def optimize_anp_masks(
    model: nn.Module, extractor: Any, clean: Dataset, config: ANPConfig
) -> tuple[NeuronMasks, dict[str, Any]]:
    """Run ANP's mask optimisation on `model` (its weights are left unchanged and its train/eval mode and
    `requires_grad` flags restored). Returns the detached [`NeuronMasks`] after the last step and a record
    (the last step's unperturbed and perturbed losses).

    Raises:
        UnsupportedModelError: the model has no neurons of `config.anp_neurons`'s kind.
    """
    layers = anp_neurons(model, config.anp_neurons)
    masks = NeuronMasks(layers, config.anp_eps)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(config.anp_seed)
    batches = audio_batches(
        clean, extractor, config.anp_batch_size, shuffle_seed=config.anp_seed, repeat=True, device=device
    )
    optimizer = torch.optim.SGD(masks.masks, lr=config.anp_mask_lr, momentum=0.9)
    perturb = config.anp_eps > 0 and config.anp_alpha < 1
    was_training = model.training
    requires_grad = [param.requires_grad for param in model.parameters()]
    natural = robust = torch.tensor(float("nan"))
    model.eval()
    model.requires_grad_(False)
    try:
        with masks:
            for batch in itertools.islice(batches, config.anp_steps):
                if perturb:
                    masks.reset_perturbations(generator)
                    masks.perturbed = True
                    for _ in range(config.anp_perturb_steps):
                        # a bias-free convolution has no bias term: its ξ gets no gradient
                        grads = torch.autograd.grad(
                            _cross_entropy(model, batch), masks.perturbations, allow_unused=True
                        )
                        with torch.no_grad():
                            for noise, grad in zip(masks.perturbations, grads, strict=True):
                                if grad is not None:
                                    noise.add_(config.anp_perturb_lr * grad.sign()).clamp_(
                                        -masks.eps, masks.eps
                                    )
                loss = torch.zeros((), device=device)
                masks.perturbed = False
                if config.anp_alpha > 0 or not perturb:
                    natural = _cross_entropy(model, batch)
                    loss = loss + (config.anp_alpha if perturb else 1.0) * natural
                    natural = natural.detach()
                if perturb:
                    masks.perturbed = True
                    robust = _cross_entropy(model, batch)
                    loss = loss + (1 - config.anp_alpha) * robust
                    robust = robust.detach()
                    masks.perturbed = False
                grads = torch.autograd.grad(loss, masks.masks)
                for mask, grad in zip(masks.masks, grads, strict=True):
                    mask.grad = grad
                optimizer.step()
                masks.clip_masks_()
    finally:
        masks.perturbed = False
        model.train(was_training)
        for param, flag in zip(model.parameters(), requires_grad, strict=True):
            param.requires_grad_(flag)
    for tensor in masks.masks + masks.perturbations:
        tensor.grad = None
    return masks, {"final_natural_loss": natural.item(), "final_robust_loss": robust.item()}


def neurons_to_prune(mask_values: list[torch.Tensor], config: ANPConfig) -> list[torch.Tensor]:
    """Boolean masks (one per layer) of the neurons ANP prunes: mask below `anp_threshold`, or the
    `anp_prune_number` smallest masks over all layers (ties broken by layer, then neuron order)."""
    if config.anp_prune_by == "threshold":
        return [values < config.anp_threshold for values in mask_values]
    flat = torch.cat([values.flatten() for values in mask_values])
    number = config.anp_prune_number
    if number > flat.numel():
        raise ValueError(f"anp_prune_number={number} exceeds the {flat.numel()} neurons of the model")
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.argsort(flat, stable=True)[:number]] = True
    return list(chosen.split([values.numel() for values in mask_values]))


def _summary(values: torch.Tensor) -> dict[str, float]:
    values = values.double()
    quantiles = torch.quantile(values, torch.tensor([0.01, 0.05, 0.25, 0.5], dtype=torch.float64))
    return {
        "min": float(values.min()),
        "q01": float(quantiles[0]),
        "q05": float(quantiles[1]),
        "q25": float(quantiles[2]),
        "median": float(quantiles[3]),
        "mean": float(values.mean()),
        "max": float(values.max()),
    }


def apply_anp(
    model: PreTrainedModel,
    extractor: Any,
    clean: Dataset,
    config: ANPConfig,
    validation: Dataset | None = None,
) -> DefenseOutcome:
    """ANP on a copy of `model`: optimise neuron masks on `clean` (weights frozen), then prune the neurons
    with small masks (`torch.nn.utils.prune`, made permanent). `model` is not changed.

    `validation` is accepted for the common defense interface and is not used.

    Returns:
        The pruned model, and `info`: steps, the number of pruned neurons, the pruned neuron indices per
        layer (by module name), a summary of the final masks (over all neurons and per layer) and the last
        step's unperturbed / perturbed losses.

    Raises:
        DefenseInputError: the clean subset is empty.
        UnsupportedModelError: the model has no transformer feed-forward blocks.
    """
    check_clean_subset(clean, "ANP")
    if not isinstance(config, ANPConfig):
        raise TypeError(f"apply_anp needs an ANPConfig, got {type(config).__name__}")
    anp_neurons(model, config.anp_neurons)  # refuse an unsupported model before copying it
    defended = copy_model(model)
    masks, record = optimize_anp_masks(defended, extractor, clean, config)
    values = masks.mask_values()
    pruned = neurons_to_prune(values, config)
    for layer, chosen in zip(masks.layers, pruned, strict=True):
        if not chosen.any():
            continue
        if isinstance(layer, ChannelNeurons):
            layer.prune_(chosen)
        else:
            prune_neurons_(layer, ~chosen)
    make_pruning_permanent(defended)
    info = {
        "defense": "anp",
        "neurons": config.anp_neurons,
        "steps": config.anp_steps,
        "prune_by": config.anp_prune_by,
        "threshold": config.anp_threshold if config.anp_prune_by == "threshold" else None,
        "pruned_count": int(sum(int(chosen.sum()) for chosen in pruned)),
        "total_neurons": int(sum(v.numel() for v in values)),
        "pruned_neurons": {
            layer.name: torch.nonzero(chosen).flatten().tolist()
            for layer, chosen in zip(masks.layers, pruned, strict=True)
        },
        "mask_summary": _summary(torch.cat(values)),
        "mask_summary_per_layer": {
            layer.name: _summary(v) for layer, v in zip(masks.layers, values, strict=True)
        },
        **record,
    }
    return DefenseOutcome(defended, info)
