"""What a neuron is: the weight-neuron finder on tiny Wav2Vec2 / HuBERT and on a model without such layers."""

from __future__ import annotations

import pytest
import torch
from testing_utils import LABELS

from hf_gnft.models import build_model
from hf_gnft.neurons import UnsupportedModelError, resolve_layer_indices, weight_neuron_layers

CONV_LAYERS = 7
ENCODER_LAYERS = 2


@pytest.mark.parametrize("name", ["tiny-wav2vec2", "tiny-hubert"])
def test_weight_neuron_layers_finds_feed_forward_attention_output_and_conv_in_module_order(name):
    model, _ = build_model(name, LABELS)
    layers = weight_neuron_layers(model)
    kinds = [layer.kind for layer in layers]
    assert kinds == ["conv"] * CONV_LAYERS + ["attention_output", "feed_forward"] * ENCODER_LAYERS
    base = model.base_model_prefix
    assert layers[0].name == f"{base}.feature_extractor.conv_layers.0.conv"
    assert [layer.name for layer in layers[CONV_LAYERS:CONV_LAYERS + 2]] == [
        f"{base}.encoder.layers.0.attention.out_proj",
        f"{base}.encoder.layers.0.feed_forward.intermediate_dense",
    ]  # fmt: skip
    modules = dict(model.named_modules())
    for layer in layers:
        assert layer.module is modules[layer.name]
        assert layer.weight is layer.module.weight
        assert isinstance(layer.module, torch.nn.Conv1d if layer.kind == "conv" else torch.nn.Linear)
    assert [layer.num_neurons for layer in layers[CONV_LAYERS:CONV_LAYERS + 2]] == [64, 256]  # fmt: skip


def test_weight_neuron_layers_selects_kinds_and_offers_output_dense_on_request():
    model, _ = build_model("tiny-wav2vec2", LABELS)
    assert {layer.kind for layer in weight_neuron_layers(model, kinds=["conv"])} == {"conv"}
    outputs = weight_neuron_layers(model, kinds=["feed_forward_output"])
    assert [layer.name.rsplit(".", 2)[-2:] for layer in outputs] == [["feed_forward", "output_dense"]] * 2
    assert [layer.num_neurons for layer in outputs] == [64, 64]
    with pytest.raises(ValueError, match="unknown neuron kind.*'dense'.*feed_forward"):
        weight_neuron_layers(model, kinds=["dense"])


def test_weight_neuron_layers_refuses_a_model_without_them_naming_class_and_layers():
    class PlainNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

    with pytest.raises(UnsupportedModelError, match=r"PlainNet has none.*") as error:
        weight_neuron_layers(PlainNet(), defense="TSBD")
    message = str(error.value)
    assert message.startswith("TSBD")
    assert all(part in message for part in ("intermediate_dense", "out_proj", "conv_layers"))


def test_resolve_layer_indices_counts_negatives_from_the_end_and_refuses_out_of_range():
    assert resolve_layer_indices(None, 3) == [0, 1, 2]
    assert resolve_layer_indices([-1, 0], 3) == [2, 0]
    with pytest.raises(ValueError, match="out of range: the model has 3 encoder layers"):
        resolve_layer_indices([3], 3)
