"""Channel Lipschitzness-based Pruning (CLP): data-free backdoor removal.

Zheng, Zhang, Wagner, Goldhahn, Wang, "Data-Free Backdoor Removal Based on Channel Lipschitzness",
ECCV 2022. A backdoor makes a few channels very sensitive to a small input pattern: their Lipschitz constant
is large. CLP bounds each channel's Lipschitz constant from its weights alone (the Upper bound of the Channel
Lipschitz Constant, UCLC: the spectral norm of the channel's weight) and, within each layer, prunes the
channels whose UCLC exceeds `mean + u · std` of that layer's UCLCs. No data, no training.

Adaptation to speech transformers:

* Feed-forward neurons. Neuron k of a feed-forward block computes `act(w_k · x + b_k)`; its weight is the
  row `w_k` of `intermediate_dense.weight`, a 1 × d matrix whose spectral norm is its L2 norm. The paper
  multiplies each convolution kernel by the scale of the BatchNorm that follows it; no per-neuron
  normalisation follows these linear layers, so the row norm is the bound itself.
* Feature-encoder convolutions (`clp_include_conv=True`). Channel c of a `Conv1d` has an
  `in_channels × kernel` weight slice; its UCLC is that matrix's spectral norm. The GroupNorm that follows
  the first convolution of Wav2Vec2-style encoders normalises each input on its own and has no fixed
  statistics to fold in, so the bound uses the convolution weight alone. A pruned channel has its weight
  slice (and bias, if any) set to zero.

`std` is the sample standard deviation (`torch.std`, Bessel-corrected) of the layer's UCLCs.

Measured: CLP did not lower the ASR of the tests' backdoored tiny Wav2Vec2 (u 3 … 0.5), nor of a tiny Wav2Vec2
with a planted noise-burst backdoor trained on noisy sines (u 3, 2, 1, with and without the conv channels: ASR
stayed 1.0, and with the channels at u 1 CA fell to 0.58). In the small benchmark grid it lowered ASR by 1.6–2.7
points on the noise-burst suspects (docs/notes/2026-12-defense-benchmarks-history.md). The backdoors of these models do not sit in channels with outlying
Lipschitz bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel

from ..neurons import (
    FeedForwardLayer,
    feature_encoder_convs,
    feed_forward_layers,
    make_pruning_permanent,
    prune_neurons_,
    select_layers,
)
from ..settings import check_numeric_settings
from .base import DefenseOutcome, copy_model

DEFENSE_NAME = "CLP"


@dataclass
class CLPConfig:
    """Configuration of CLP (data-free).

    Args:
        clp_u (`float`, *optional*, defaults to `3.0`):
            u: within each layer, neurons (channels) whose UCLC exceeds `mean + u · std` of the layer's UCLCs
            are pruned (the paper's default is 3). A larger u prunes fewer; `inf` prunes none.
        clp_layers (`list[int]` or `None`, *optional*, defaults to `None`):
            Indices of the transformer feed-forward layers examined (negative counts from the end);
            `None` examines all of them.
        clp_include_conv (`bool`, *optional*, defaults to `False`):
            Also examine the output channels of the convolutional feature encoder (`Conv1d` layers).
    """

    clp_u: float = field(
        default=3.0, metadata={"help": "Prune neurons with UCLC > mean + u·std of the layer."}
    )
    clp_layers: list[int] | None = field(
        default=None, metadata={"help": "Feed-forward layers examined (default: all)."}
    )
    clp_include_conv: bool = field(
        default=False, metadata={"help": "Also prune channels of the convolutional feature encoder."}
    )

    def __post_init__(self) -> None:
        check_numeric_settings(self)
        if (
            not isinstance(self.clp_u, (int, float))
            or isinstance(self.clp_u, bool)
            or math.isnan(self.clp_u)
            or self.clp_u < 0
        ):
            raise ValueError(f"clp_u must be a number >= 0 (inf prunes nothing), got {self.clp_u!r}")
        if self.clp_layers is not None and (
            not isinstance(self.clp_layers, (list, tuple))
            or not self.clp_layers
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in self.clp_layers)
        ):
            raise ValueError(
                f"clp_layers must be None (all layers) or a non-empty list of layer indices, got {self.clp_layers!r}"
            )
        if self.clp_layers is not None and len(set(self.clp_layers)) != len(self.clp_layers):
            raise ValueError(f"clp_layers names a layer twice: {self.clp_layers}")


@torch.no_grad()
def linear_uclc(layer: FeedForwardLayer) -> torch.Tensor:
    """UCLC of each neuron of a feed-forward block: the L2 norm of its `intermediate_dense` row."""
    return torch.linalg.vector_norm(layer.intermediate.weight.detach().double(), dim=1).cpu()


@torch.no_grad()
def conv_uclc(conv: nn.Conv1d) -> torch.Tensor:
    """UCLC of each output channel of a `Conv1d`: the spectral norm of its `in_channels × kernel` slice."""
    return torch.linalg.matrix_norm(conv.weight.detach().double(), ord=2).cpu()


def clp_outliers(uclc: torch.Tensor, u: float) -> torch.Tensor:
    """Boolean mask of the entries above `mean + u · std` (sample std) of `uclc`."""
    if math.isinf(u) or uclc.numel() < 2:
        return torch.zeros(uclc.shape, dtype=torch.bool)
    return uclc > uclc.mean() + u * uclc.std()


def _stats(uclc: torch.Tensor, threshold: float | None) -> dict[str, Any]:
    return {
        "uclc_mean": float(uclc.mean()),
        "uclc_std": float(uclc.std()) if uclc.numel() > 1 else 0.0,
        "uclc_max": float(uclc.max()),
        "threshold": threshold,
    }


def apply_clp(
    model: PreTrainedModel,
    extractor: Any = None,
    clean: Dataset | None = None,
    config: CLPConfig | None = None,
    validation: Dataset | None = None,
) -> DefenseOutcome:
    """CLP (Zheng et al., ECCV 2022) on a copy of `model`; `model` itself is left unchanged.

    Data-free: `extractor`, `clean` and `validation` are accepted for a common signature and ignored.

    Returns:
        A [`DefenseOutcome`] whose `info` holds, per examined layer, the UCLC mean / std / max, the pruning
        threshold and the pruned neuron (channel) indices, and the totals.

    Raises:
        UnsupportedModelError: the model has no transformer feed-forward layers (or, with
            `clp_include_conv`, no convolutional feature encoder).
        ValueError: an index of `clp_layers` is out of range.
    """
    config = config if config is not None else CLPConfig()
    u = float(config.clp_u)
    pruned_model = copy_model(model)
    layers = select_layers(feed_forward_layers(pruned_model, DEFENSE_NAME), config.clp_layers)
    convs = (
        feature_encoder_convs(pruned_model, f"{DEFENSE_NAME} with clp_include_conv")
        if config.clp_include_conv
        else []
    )

    layer_info: list[dict[str, Any]] = []
    for layer in layers:
        uclc = linear_uclc(layer)
        pruned = clp_outliers(uclc, u)
        if pruned.any():
            prune_neurons_(layer, ~pruned)
        threshold = None if math.isinf(u) else float(uclc.mean() + u * uclc.std())
        layer_info.append(
            {
                "kind": "feed_forward",
                "name": layer.name,
                "index": layer.index,
                "num_neurons": layer.num_neurons,
                **_stats(uclc, threshold),
                "pruned": pruned.nonzero().flatten().tolist(),
            }
        )
    for name, conv in convs:
        uclc = conv_uclc(conv)
        pruned = clp_outliers(uclc, u)
        with torch.no_grad():
            conv.weight[pruned.to(conv.weight.device)] = 0
            if conv.bias is not None:
                conv.bias[pruned.to(conv.bias.device)] = 0
        threshold = None if math.isinf(u) else float(uclc.mean() + u * uclc.std())
        layer_info.append(
            {
                "kind": "conv",
                "name": name,
                "num_neurons": conv.out_channels,
                **_stats(uclc, threshold),
                "pruned": pruned.nonzero().flatten().tolist(),
            }
        )
    make_pruning_permanent(pruned_model)

    total = sum(entry["num_neurons"] for entry in layer_info)
    pruned_count = sum(len(entry["pruned"]) for entry in layer_info)
    info: dict[str, Any] = {
        "defense": DEFENSE_NAME,
        "u": u if math.isfinite(u) else "inf",
        "layers": layer_info,
        "pruned_count": pruned_count,
        "pruned_ratio": pruned_count / total if total else 0.0,
    }
    return DefenseOutcome(model=pruned_model, info=info)
