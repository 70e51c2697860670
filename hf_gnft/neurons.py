"""What a neuron is in the speech classifiers we clean, for the defenses and the analysis alike.

The defenses were written for CNN channels. In the speech transformers cleaned here (Wav2Vec2, HuBERT, WavLM,
Data2VecAudio, ...) their counterparts are:

* feed-forward neurons: the intermediate neurons of each encoder layer's feed-forward block
  (`intermediate_dense` → activation → `output_dense`), a row of `intermediate_dense` ([`FeedForwardLayer`]);
* channel neurons: the channels of a scale-and-shift layer (`LayerNorm`, the feature encoder's `GroupNorm`) or
  of a convolution ([`ChannelNeurons`], ANP's masks);
* weight neurons: the output units of a weight layer, a row of a `Linear` weight or an output channel of a
  `Conv1d` ([`NeuronLayer`]: gradient profiles, and [`weight_neuron_layers`] picks them by kind).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune


class UnsupportedModelError(ValueError):
    """The model has no layer of the kind a defense works on."""


class UnknownLayerError(ValueError):
    """A layer name that the model does not have (the message lists the ones it has)."""


def resolve_layer_indices(
    indices: Iterable[int] | None, num_layers: int, what: str = "encoder layers"
) -> list[int]:
    """Layer indices in `[0, num_layers)`: all when `indices` is None, negatives counted from the end.

    Raises:
        ValueError: an index is out of range (the message names `what` the model has and how many).
    """
    if indices is None:
        return list(range(num_layers))
    resolved = []
    for index in indices:
        if not -num_layers <= index < num_layers:
            raise ValueError(f"layer index {index} is out of range: the model has {num_layers} {what}")
        resolved.append(index % num_layers)
    return resolved


# --- feed-forward neurons ------------------------------------------------------------------------------------


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


def _feed_forward_blocks(model: nn.Module) -> list[FeedForwardLayer]:
    layers = []
    for name, module in model.named_modules():
        intermediate = getattr(module, "intermediate_dense", None)
        output = getattr(module, "output_dense", None)
        if isinstance(intermediate, nn.Linear) and isinstance(output, nn.Linear):
            activation = getattr(module, "intermediate_act_fn", None) or nn.Identity()
            layers.append(FeedForwardLayer(name, len(layers), intermediate, output, activation))
    return layers


def feed_forward_layers(model: nn.Module, defense: str = "this defense") -> list[FeedForwardLayer]:
    """The model's transformer feed-forward blocks, in depth order.

    Raises:
        UnsupportedModelError: the model has none (the message names the model class).
    """
    layers = _feed_forward_blocks(model)
    if not layers:
        raise UnsupportedModelError(
            f"{defense} works on the feed-forward neurons of transformer layers (`intermediate_dense` / "
            f"`output_dense`, as in Wav2Vec2, HuBERT, WavLM, Data2VecAudio), and {type(model).__name__} has none"
        )
    return layers


def select_layers(layers: list[FeedForwardLayer], indices: Iterable[int] | None) -> list[FeedForwardLayer]:
    """`layers[i]` for each index (negative counts from the end); all layers when `indices` is None."""
    return [layers[index] for index in resolve_layer_indices(indices, len(layers), "feed-forward layers")]


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


# --- channel neurons -----------------------------------------------------------------------------------------


@dataclass
class ChannelNeurons:
    """The channels of one scale-and-shift layer (a `LayerNorm`, a `GroupNorm`) or of a bias-only `Conv1d`, as
    ANP neurons: channel k's output is `γ_k·x̂_k + β_k` (or `z_k + b_k`), the form of the BatchNorm neurons the
    paper masks. Pruning channel k zeroes `γ_k` and `β_k` (or the conv's weight slice and bias).

    Args:
        name: the module's name in the model.
        module: the module whose output is masked (it has `weight` and possibly `bias`, one value per channel
            for a norm).
        channel_dim: the dimension of the module's output that indexes the channels (-1 for a `LayerNorm`, 1
            for a `GroupNorm` or `Conv1d` output `(batch, channels, time)`).
    """

    name: str
    module: nn.Module
    channel_dim: int = -1

    @property
    def num_neurons(self) -> int:
        return int(self.module.weight.shape[0])

    @torch.no_grad()
    def prune_(self, chosen: torch.Tensor) -> None:
        """Silence the chosen channels (a boolean mask): their weights (and bias) become 0."""
        chosen = chosen.to(self.module.weight.device)
        self.module.weight[chosen] = 0.0
        if self.module.bias is not None:
            self.module.bias[chosen] = 0.0


def layer_norm_neurons(model: nn.Module, defense: str = "ANP") -> list[ChannelNeurons]:
    """Every affine `LayerNorm` of the model (with weight and bias), in module order.

    Raises:
        UnsupportedModelError: the model has none (the message names the model class).
    """
    norms = [
        ChannelNeurons(name, module, -1)
        for name, module in model.named_modules()
        if isinstance(module, nn.LayerNorm) and module.weight is not None and module.bias is not None
    ]
    if not norms:
        raise UnsupportedModelError(
            f"{defense} on layer_norm neurons needs affine LayerNorm layers; {type(model).__name__} has none"
        )
    return norms


def _is_feature_encoder(module: nn.Module) -> bool:
    return isinstance(getattr(module, "conv_layers", None), nn.ModuleList)


def feature_encoder(model: nn.Module) -> nn.Module | None:
    """The model's convolutional waveform encoder (a module with a `conv_layers` list: `feature_extractor` of
    Wav2Vec2, HuBERT and their kin), or `None` for models without one (the MFCC networks)."""
    return next((module for _, module in model.named_modules() if _is_feature_encoder(module)), None)


def _feature_encoder_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module, nn.Conv1d]]:
    """`(name, layer, conv)` for each layer of the convolutional feature encoder (a `conv_layers` list of
    layers with a `Conv1d` `conv`), in order."""
    for name, module in model.named_modules():
        if not _is_feature_encoder(module):
            continue
        for position, layer in enumerate(module.conv_layers):
            conv = getattr(layer, "conv", None)
            if isinstance(conv, nn.Conv1d):
                yield f"{name}.conv_layers.{position}".lstrip("."), layer, conv


def _no_feature_encoder(model: nn.Module, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{what} a convolutional feature encoder (`conv_layers` of Conv1d, as in Wav2Vec2, HuBERT), and "
        f"{type(model).__name__} has none"
    )


def conv_neurons(model: nn.Module, defense: str = "ANP") -> list[ChannelNeurons]:
    """The output channels of every layer of the model's convolutional feature encoder (a `conv_layers` list of
    layers with a `conv`, as in Wav2Vec2, HuBERT, WavLM): the CNN whose channels the paper masks. Where the
    layer normalises its channels (`layer_norm`: a per-channel `GroupNorm`, or a `LayerNorm` over channels),
    the neuron is the norm's scale-and-shift output `γ_k·x̂_k + β_k` (scaling the convolution before a
    per-channel norm would be normalised away); otherwise it is the convolution's output channel.

    Raises:
        UnsupportedModelError: the model has no convolutional feature encoder (the message names its class).
    """
    neurons = []
    for prefix, layer, conv in _feature_encoder_layers(model):
        norm = getattr(layer, "layer_norm", None)
        if isinstance(norm, nn.GroupNorm) and norm.affine and norm.num_groups == norm.num_channels:
            neurons.append(ChannelNeurons(f"{prefix}.layer_norm", norm, 1))
        elif isinstance(norm, nn.LayerNorm) and norm.weight is not None and norm.bias is not None:
            neurons.append(ChannelNeurons(f"{prefix}.layer_norm", norm, -1))
        else:
            neurons.append(ChannelNeurons(f"{prefix}.conv", conv, 1))
    if not neurons:
        raise _no_feature_encoder(model, f"{defense} on conv neurons needs")
    return neurons


def feature_encoder_convs(model: nn.Module, defense: str = "this defense") -> list[tuple[str, nn.Conv1d]]:
    """The `Conv1d` of each layer of the model's convolutional feature encoder (a `conv_layers` list), in order.

    Raises:
        UnsupportedModelError: the model has none (the message names the model class).
    """
    convs = [(f"{prefix}.conv", conv) for prefix, _, conv in _feature_encoder_layers(model)]
    if not convs:
        raise _no_feature_encoder(model, f"{defense} works on")
    return convs


# --- weight neurons ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NeuronLayer:
    """A layer whose output features (a `Linear`) or output channels (a `Conv1d`, a `Conv2d`) are scored as neurons.

    Args:
        name: the module's name in the model.
        module: the `Linear` or convolution; neuron k is row k of its weight (and entry k of its bias).
        kind: the kind [`weight_neuron_layers`] found it as (`None` for a layer chosen by name).
    """

    name: str
    module: nn.Module
    kind: str | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The module's weight, of shape `(num_neurons, ...)`."""
        return self.module.weight

    @property
    def num_neurons(self) -> int:
        return int(self.module.weight.shape[0])


def neuron_layer_names(model: nn.Module) -> list[str]:
    """The names of every `Linear` and `Conv1d` module of the model (the layers a profile can score)."""
    return [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv1d))]


def default_layer_names(model: nn.Module) -> list[str]:
    """The default layers: the feed-forward neurons (`intermediate_dense`) of every transformer layer, then the
    classifier's `projector`, where the model has them."""
    names = [name for name in neuron_layer_names(model) if name.endswith("feed_forward.intermediate_dense")]
    if "projector" in dict(model.named_modules()):
        names.append("projector")
    if not names:
        raise UnknownLayerError(
            f"{type(model).__name__} has no transformer feed-forward layers or projector; choose layers by name "
            f"from: {', '.join(neuron_layer_names(model))}"
        )
    return names


def resolve_layers(model: nn.Module, names: Sequence[str] | None = None) -> list[NeuronLayer]:
    """The `NeuronLayer`s named (default: `default_layer_names`).

    Raises:
        UnknownLayerError: a name is not a `Linear` / `Conv1d` of the model; the message lists the ones it has.
    """
    modules = dict(model.named_modules())
    names = list(names) if names is not None else default_layer_names(model)
    if not names:
        raise UnknownLayerError("no layers named")
    available = neuron_layer_names(model)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise UnknownLayerError(
            f"{type(model).__name__} has no Linear / Conv1d layer named {', '.join(map(repr, unknown))}; "
            f"available: {', '.join(available)}"
        )
    if len(set(names)) != len(names):
        raise UnknownLayerError(f"a layer is named twice: {names}")
    return [NeuronLayer(name, modules[name]) for name in names]


#: kind -> the layers `weight_neuron_layers` looks for (named in its error message)
WEIGHT_NEURON_KINDS = {
    "feed_forward": "each encoder layer's feed-forward `intermediate_dense`",
    "feed_forward_output": "each encoder layer's feed-forward `output_dense`",
    "attention_output": "the self-attention output projection `out_proj`",
    "conv": "the feature encoder's `conv_layers.*.conv`",
    "conv2d": "every `Conv2d` (the channels of a CNN on a feature map, e.g. the MFCC networks)",
}


def _attention_output_projections(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    for name, module in model.named_modules():
        out_proj = getattr(module, "out_proj", None)
        is_attention = isinstance(module, nn.MultiheadAttention) or all(
            isinstance(getattr(module, projection, None), nn.Linear)
            for projection in ("q_proj", "k_proj", "v_proj")
        )
        if isinstance(out_proj, nn.Linear) and is_attention:
            yield f"{name}.out_proj".lstrip("."), out_proj


def weight_neuron_layers(
    model: nn.Module,
    kinds: Sequence[str] = ("feed_forward", "attention_output", "conv"),
    defense: str = "this defense",
) -> list[NeuronLayer]:
    """The weight layers whose output units are the neurons, by kind, in module order (feature encoder first,
    then each encoder layer's attention before its feed-forward block).

    A neuron is an output unit: a row of a `Linear` weight, an output channel of a `Conv1d`. The kinds:

    * `"feed_forward"`: each encoder layer's `intermediate_dense`, the feed-forward block's hidden neurons (each
      followed by its own nonlinearity; the neurons of [`FeedForwardLayer`]).
    * `"feed_forward_output"`: each encoder layer's `output_dense`. Its rows write the residual stream (hidden
      size) with no nonlinearity of their own, like `out_proj`; not a default, ask for it.
    * `"attention_output"`: the self-attention output projections (`out_proj`).
    * `"conv"`: the convolutions of the feature encoder (the CNN in front of the transformer).
    * `"conv2d"`: every `Conv2d`, whose output channels are the neurons of a CNN on a feature map (the GN-FT
      paper's MFCC networks; TSBD's authors rank exactly these on them, shortcut convolutions included).

    Args:
        kinds: the kinds wanted (see `WEIGHT_NEURON_KINDS`).
        defense: who asks, for the error message.

    Raises:
        ValueError: no kind, or an unknown kind.
        UnsupportedModelError: the model has none of the requested kinds (the message names the model class and
            the layers looked for).
    """
    kinds = list(kinds) if not isinstance(kinds, str) else [kinds]
    unknown = [kind for kind in kinds if kind not in WEIGHT_NEURON_KINDS]
    if not kinds or unknown:
        raise ValueError(
            f"unknown neuron kind(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"use some of {', '.join(WEIGHT_NEURON_KINDS)}"
        )
    found: dict[str, tuple[nn.Module, str]] = {}
    if "feed_forward" in kinds or "feed_forward_output" in kinds:
        for block in _feed_forward_blocks(model):
            if "feed_forward" in kinds:
                found[f"{block.name}.intermediate_dense".lstrip(".")] = (block.intermediate, "feed_forward")
            if "feed_forward_output" in kinds:
                found[f"{block.name}.output_dense".lstrip(".")] = (block.output, "feed_forward_output")
    if "attention_output" in kinds:
        for name, out_proj in _attention_output_projections(model):
            found[name] = (out_proj, "attention_output")
    if "conv" in kinds:
        for prefix, _, conv in _feature_encoder_layers(model):
            found[f"{prefix}.conv"] = (conv, "conv")
    if "conv2d" in kinds:
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):
                found[name] = (module, "conv2d")
    if not found:
        looked_for = "; ".join(f"{kind}: {WEIGHT_NEURON_KINDS[kind]}" for kind in kinds)
        raise UnsupportedModelError(
            f"{defense} works on the output units of weight layers ({looked_for}), and "
            f"{type(model).__name__} has none of them"
        )
    return [
        NeuronLayer(name, module, found[name][1]) for name, module in model.named_modules() if name in found
    ]
