"""Neuron categories by ablation: which neurons carry the backdoor, which the clean task, which both.

The authors of GN-FT classify each neuron by what zeroing it does to two losses: the clean loss (cross-entropy
of clean clips against their labels) and the backdoor loss (cross-entropy of triggered non-target clips against
the target class, low while the backdoor works). A neuron whose removal raises the backdoor loss carries the
backdoor; if it also raises the clean loss it serves both (hybrid). Here:

* backdoor-related: zeroing raises the backdoor loss by more than `threshold` and the clean loss by at most
  `threshold`;
* hybrid: zeroing raises both by more than `threshold`;
* clean: every other neuron (zeroing it does not weaken the backdoor).

The threshold is in nats of mean cross-entropy (default 0.005: on the benchmark's tiny models, zeroing a single
neuron rarely changes either loss by more than 0.02). Zeroing a neuron sets its output to 0 in a forward hook. The
convolutional feature encoder's output is computed once per batch and replayed while neurons after it are
zeroed, so categorising hundreds of transformer neurons costs a few seconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm

from ..neurons import NeuronLayer, resolve_layers
from ..training import audio_batches
from .gradients import GradientProfile

CATEGORIES = ("backdoor", "hybrid", "clean")


@dataclass
class NeuronCategories:
    """What zeroing each neuron did, and the category it gives.

    Args:
        clean_loss: the intact model's mean clean cross-entropy.
        backdoor_loss: the intact model's mean cross-entropy of triggered clips against the target.
        clean_loss_change: layer name -> clean-loss increase when each neuron is zeroed.
        backdoor_loss_change: layer name -> backdoor-loss increase when each neuron is zeroed.
        threshold: the loss increase (nats) above which a neuron counts as needed by a loss.
    """

    clean_loss: float
    backdoor_loss: float
    clean_loss_change: dict[str, torch.Tensor]
    backdoor_loss_change: dict[str, torch.Tensor]
    threshold: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def categories(self) -> dict[str, list[str]]:
        """Layer name -> each neuron's category ("backdoor", "hybrid" or "clean")."""
        out = {}
        for name, backdoor in self.backdoor_loss_change.items():
            clean = self.clean_loss_change[name]
            out[name] = [
                ("hybrid" if c > self.threshold else "backdoor") if b > self.threshold else "clean"
                for b, c in zip(backdoor.tolist(), clean.tolist(), strict=True)
            ]
        return out

    def counts(self) -> dict[str, int]:
        """How many neurons fall in each category, over all layers."""
        flat = [category for values in self.categories.values() for category in values]
        return {category: flat.count(category) for category in CATEGORIES}

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean_loss": self.clean_loss,
            "backdoor_loss": self.backdoor_loss,
            "threshold": self.threshold,
            "counts": self.counts(),
            "layers": {
                name: {
                    "clean_loss_change": self.clean_loss_change[name].tolist(),
                    "backdoor_loss_change": self.backdoor_loss_change[name].tolist(),
                    "category": categories,
                }
                for name, categories in self.categories.items()
            },
            **self.info,
        }


@contextlib.contextmanager
def replayed_feature_encoder(
    model: nn.Module, layers: Sequence[NeuronLayer], batches: list[dict]
) -> Iterator[None]:
    """Within the block, the model's convolutional feature encoder returns its output precomputed for each of
    `batches` (matched by the identity of their `input_values` tensor) instead of recomputing it. It is left as it
    is when the model has no `feature_extractor` or a scored layer lies inside it."""
    encoder = getattr(getattr(model, "base_model", model), "feature_extractor", None)
    prefix = next((name for name, module in model.named_modules() if module is encoder), None)
    if (
        not isinstance(encoder, nn.Module)
        or prefix is None
        or any(layer.name.startswith(f"{prefix}.") for layer in layers)
    ):
        yield
        return
    with torch.no_grad():
        cache = {id(batch["input_values"]): encoder(batch["input_values"]) for batch in batches}
    compute = encoder.forward

    def forward(input_values: torch.Tensor) -> torch.Tensor:
        cached = cache.get(id(input_values))
        return cached if cached is not None else compute(input_values)

    encoder.forward = forward
    try:
        yield
    finally:
        del encoder.forward


@torch.no_grad()
def _mean_loss(model: nn.Module, batches: list[dict]) -> float:
    total, count = 0.0, 0
    for batch in batches:
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        logits = model(**inputs).logits.float()
        total += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
        count += batch["labels"].shape[0]
    return total / count


def _zeroing_hook(neuron: int, channel_dim: int):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output.select(channel_dim, neuron).zero_()
        return output

    return hook


def categorize_neurons(
    model: nn.Module,
    extractor: Any,
    clean: Dataset,
    triggered: Dataset,
    target_label: int,
    layers: Sequence[str] | None = None,
    *,
    threshold: float = 0.005,
    max_samples: int | None = 256,
    batch_size: int = 64,
    progress: bool = True,
) -> NeuronCategories:
    """Zero each neuron of `layers` in turn and measure the clean and backdoor losses (see the module docs).

    Args:
        clean: clean clips with their labels.
        triggered: triggered clips of non-target classes (`make_triggered_eval_set`); their backdoor loss is the
            cross-entropy against `target_label`.
        threshold: loss increase (nats) above which a neuron counts as needed by a loss.
        max_samples: clips of each set used (the first ones); `None` for all.

    Raises:
        UnknownLayerError: a layer name the model does not have.
        ValueError: an empty clean or triggered set, or a negative threshold.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    chosen = resolve_layers(model, layers)
    if max_samples is not None:
        clean = clean.select(range(min(max_samples, len(clean))))
        triggered = triggered.select(range(min(max_samples, len(triggered))))
    if len(clean) == 0 or len(triggered) == 0:
        raise ValueError("categorising neurons needs clean and triggered clips; one of the sets is empty")
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    clean_batches = list(audio_batches(clean, extractor, batch_size, device=device, dtype=dtype))
    backdoor_batches = list(
        audio_batches(triggered, extractor, batch_size, labels=int(target_label), device=device, dtype=dtype)
    )
    was_training = model.training
    model.eval()
    clean_change: dict[str, torch.Tensor] = {}
    backdoor_change: dict[str, torch.Tensor] = {}
    try:
        with replayed_feature_encoder(model, chosen, clean_batches + backdoor_batches):
            base_clean, base_backdoor = _mean_loss(model, clean_batches), _mean_loss(model, backdoor_batches)
            total = sum(layer.num_neurons for layer in chosen)
            with tqdm(total=total, desc="Zeroing neurons", disable=not progress) as bar:
                for layer in chosen:
                    channel_dim = 1 if isinstance(layer.module, nn.Conv1d) else -1
                    clean_values, backdoor_values = [], []
                    for neuron in range(layer.num_neurons):
                        handle = layer.module.register_forward_hook(_zeroing_hook(neuron, channel_dim))
                        try:
                            clean_values.append(_mean_loss(model, clean_batches) - base_clean)
                            backdoor_values.append(_mean_loss(model, backdoor_batches) - base_backdoor)
                        finally:
                            handle.remove()
                        bar.update(1)
                    clean_change[layer.name] = torch.tensor(clean_values, dtype=torch.float64)
                    backdoor_change[layer.name] = torch.tensor(backdoor_values, dtype=torch.float64)
    finally:
        model.train(was_training)
    return NeuronCategories(
        clean_loss=base_clean,
        backdoor_loss=base_backdoor,
        clean_loss_change=clean_change,
        backdoor_loss_change=backdoor_change,
        threshold=float(threshold),
        info={"num_clean": len(clean), "num_triggered": len(triggered)},
    )


def mean_by_category(profile: GradientProfile, categories: NeuronCategories) -> dict[str, dict[str, Any]]:
    """Layer name -> category -> {"count", "mean"} of the profile's values (mean None for an empty category), plus
    "ratio_backdoor_to_clean" and "ratio_hybrid_to_clean" of the means; "all" pools every layer's neurons, and
    "all_layer_normalised" pools them after dividing each by its layer's median (layers of different scale, such as
    the projector and the feed-forward neurons, then weigh alike; 1 is a typical neuron of its layer)."""
    cats = categories.categories
    out: dict[str, dict[str, Any]] = {}
    pooled: dict[str, list[float]] = {c: [] for c in CATEGORIES}
    normalised: dict[str, list[float]] = {c: [] for c in CATEGORIES}
    for name, values in profile.layers.items():
        if name not in cats:
            continue
        kinds = np.asarray(cats[name])
        array = values.numpy()
        out[name] = {}
        for category in CATEGORIES:
            chosen = array[kinds == category]
            pooled[category].extend(chosen.tolist())
            normalised[category].extend((chosen / max(float(np.median(array)), 1e-30)).tolist())
            out[name][category] = {
                "count": int(chosen.size),
                "mean": float(chosen.mean()) if chosen.size else None,
            }
    out["all"] = {c: {"count": len(v), "mean": float(np.mean(v)) if v else None} for c, v in pooled.items()}
    out["all_layer_normalised"] = {
        c: {"count": len(v), "mean": float(np.mean(v)) if v else None} for c, v in normalised.items()
    }
    for summary in out.values():
        clean = summary["clean"]["mean"]
        for category in ("backdoor", "hybrid"):
            mean = summary[category]["mean"]
            summary[f"ratio_{category}_to_clean"] = mean / clean if mean is not None and clean else None
    return out
