"""Fine-pruning and CLP: which neurons they prune, that pruned neurons stay silent, and what they do to the
backdoor of the session's backdoored tiny Wav2Vec2."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from testing_utils import LABELS, sine_dataset
from torch import nn
from transformers import HfArgumentParser

from hf_gnft.defenses.base import DefenseInputError
from hf_gnft.defenses.clp import CLPConfig, apply_clp, conv_uclc, linear_uclc
from hf_gnft.defenses.fine_pruning import FinePruningConfig, apply_fine_pruning, pruning_schedule
from hf_gnft.models import build_model
from hf_gnft.neurons import (
    UnsupportedModelError,
    feature_encoder_convs,
    feed_forward_layers,
    mean_activations,
)
from hf_gnft.training import AudioClassificationCollator, evaluate_backdoor, predict_labels


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("tiny-wav2vec2", LABELS)


def fp_config(tmp_path, **overrides) -> FinePruningConfig:
    values = dict(output_dir=str(tmp_path / "fp"), report_to="none", disable_tqdm=True, fp_fine_tune=False)
    return FinePruningConfig(**{**values, **overrides})


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def assert_same_state(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    current = model.state_dict()
    assert current.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(current[key], value), key


def activations(model: nn.Module, extractor, layer_index: int, dataset) -> torch.Tensor:
    """Post-activation outputs of every neuron of one feed-forward layer, for every frame of `dataset`."""
    layer = feed_forward_layers(model)[layer_index]
    seen = []
    handle = layer.intermediate.register_forward_hook(
        lambda module, inputs, output: seen.append(layer.activation(output).reshape(-1, layer.num_neurons))
    )
    try:
        predict_labels(model, dataset, extractor)
    finally:
        handle.remove()
    return torch.cat(seen)


class NoFeedForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(4, 4)


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"fp_max_ratio": 0.0}, "fp_max_ratio"),
        ({"fp_max_ratio": 1.5}, "fp_max_ratio"),
        ({"fp_step_ratio": 0.0}, "fp_step_ratio"),
        ({"fp_step_ratio": float("nan")}, "fp_step_ratio"),
        ({"fp_accuracy_tolerance": -0.1}, "fp_accuracy_tolerance"),
        ({"fp_layers": []}, "fp_layers"),
        ({"fp_layers": [1, 1]}, "twice"),
    ],
)
def test_bad_fine_pruning_config_is_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        fp_config(tmp_path, **overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"clp_u": -1.0}, "clp_u"),
        ({"clp_u": float("nan")}, "clp_u"),
        ({"clp_layers": []}, "clp_layers"),
        ({"clp_layers": [0, 0]}, "twice"),
    ],
)
def test_bad_clp_config_is_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        CLPConfig(**overrides)


def test_configs_have_the_papers_defaults_and_parse_from_the_command_line(tmp_path):
    default = FinePruningConfig(output_dir=str(tmp_path), report_to="none")
    assert default.fp_layers == [-1] and default.gn_alpha == 0.0 and default.fp_fine_tune
    assert (default.fp_max_ratio, default.fp_step_ratio, default.fp_accuracy_tolerance) == (0.8, 0.05, 0.05)
    (parsed,) = HfArgumentParser(FinePruningConfig).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--fp_layers",
            "0",
            "1",
            "--fp_max_ratio",
            "0.5",
            "--fp_fine_tune",
            "false",
        ]
    )
    assert parsed.fp_layers == [0, 1] and parsed.fp_max_ratio == 0.5 and not parsed.fp_fine_tune
    assert CLPConfig() == CLPConfig(clp_u=3.0, clp_layers=None, clp_include_conv=False)
    (clp,) = HfArgumentParser(CLPConfig).parse_args_into_dataclasses(
        ["--clp_u", "2.5", "--clp_layers", "0", "--clp_include_conv"]
    )
    assert clp == CLPConfig(clp_u=2.5, clp_layers=[0], clp_include_conv=True)
    assert pruning_schedule(0.8, 0.05)[-1] == 0.8 and len(pruning_schedule(0.8, 0.05)) == 16
    assert pruning_schedule(0.3, 0.25) == [0.25, 0.3]


# ------------------------------------------------------------------------------------------ fine-pruning


def test_fine_pruning_prunes_the_lowest_activation_neurons_first(tmp_path):
    model, extractor = tiny_model()
    data = sine_dataset(num_rows=12, seconds=0.5)
    layer = feed_forward_layers(model)[-1]
    dormant = [3, 50, 77, 100, 200, 255]
    with torch.no_grad():  # input-independent GELU(-0.75) ≈ -0.17, the minimum of GELU: the lowest means
        layer.intermediate.weight[dormant] = 0.0
        layer.intermediate.bias[dormant] = -0.75
    step = len(dormant) / layer.num_neurons
    first = apply_fine_pruning(
        model,
        extractor,
        data,
        fp_config(tmp_path, fp_max_ratio=step, fp_step_ratio=step, fp_accuracy_tolerance=1.0),
    )
    assert first.info["layers"][0]["pruned"] == dormant

    half = apply_fine_pruning(
        model,
        extractor,
        data,
        fp_config(tmp_path, fp_max_ratio=0.5, fp_step_ratio=0.25, fp_accuracy_tolerance=1.0),
    )
    batches = [AudioClassificationCollator(extractor)([data[i] for i in range(len(data))])]
    (means,) = mean_activations(model, [layer], batches)
    expected = sorted(torch.argsort(means)[: layer.num_neurons // 2].tolist())
    assert half.info["layers"][0]["pruned"] == expected and set(dormant) <= set(expected)
    assert half.info["pruned_count"] == 128 and half.info["pruned_ratio"] == pytest.approx(0.5)
    assert [point["pruned"] for point in half.info["accuracy_curve"]] == [0, 64, 128]


def test_pruned_neurons_stay_silent_through_fine_tuning_and_the_input_model_is_unchanged(tmp_path):
    model, extractor = tiny_model()
    before = state(model)
    data = sine_dataset(num_rows=8, seconds=0.5)
    config = fp_config(
        tmp_path,
        fp_fine_tune=True,
        fp_layers=[0, -1],
        fp_max_ratio=0.3,
        fp_step_ratio=0.3,
        fp_accuracy_tolerance=1.0,
        max_steps=2,
        learning_rate=0.5,
        per_device_train_batch_size=4,
    )
    out = apply_fine_pruning(model, extractor, data, config)
    assert_same_state(model, before)
    assert out.model is not model
    changed = [k for k in before if not torch.equal(before[k], out.model.state_dict()[k])]
    assert any("encoder.layers.0.feed_forward.output_dense" in k for k in changed)  # it was fine-tuned

    for position, layer_index in enumerate([0, 1]):
        pruned = out.info["layers"][position]["pruned"]
        assert len(pruned) == round(0.3 * 256)
        values = activations(out.model, extractor, layer_index, data)
        assert torch.count_nonzero(values[:, pruned]) == 0
        kept = sorted(set(range(256)) - set(pruned))
        assert torch.count_nonzero(values[:, kept]) > 0

    out.model.save_pretrained(tmp_path / "saved")
    keys = load_file(str(tmp_path / "saved" / "model.safetensors")).keys()
    assert not any(k.endswith(("_orig", "_mask")) for k in keys)
    assert not any(k.endswith(("_orig", "_mask")) for k in out.model.state_dict())


def test_fine_pruning_needs_clean_data_and_feed_forward_layers(tmp_path):
    model, extractor = tiny_model()
    data = sine_dataset(num_rows=4, seconds=0.5)
    with pytest.raises(DefenseInputError, match="empty"):
        apply_fine_pruning(model, extractor, data.select([]), fp_config(tmp_path))
    with pytest.raises(UnsupportedModelError, match="NoFeedForward"):
        apply_fine_pruning(NoFeedForward(), extractor, data, fp_config(tmp_path))
    with pytest.raises(ValueError, match="out of range"):
        apply_fine_pruning(model, extractor, data, fp_config(tmp_path, fp_layers=[5]))


def test_clean_accuracy_while_pruning_stays_within_the_tolerance(backdoored, tmp_path):
    rows = backdoored.validation.select(range(40))
    # relabelled with the suspect's own predictions: accuracy 1 before pruning, and any changed prediction counts
    predictions = predict_labels(backdoored.model, rows, backdoored.extractor)
    mirror = rows.map(lambda row, i: {"label": int(predictions[i])}, with_indices=True)
    tolerance = 0.05
    config = fp_config(
        tmp_path, fp_layers=[0, 1], fp_max_ratio=1.0, fp_step_ratio=0.25, fp_accuracy_tolerance=tolerance
    )
    out = apply_fine_pruning(backdoored.model, backdoored.extractor, backdoored.clean, config, mirror)
    info = out.info
    curve = info["accuracy_curve"]
    assert info["accuracy_set"] == "validation" and info["baseline_accuracy"] == 1.0
    assert info["stopped_by"] == "tolerance"  # pruning whole feed-forward layers costs more than 2 of 40
    assert curve[-1]["accuracy"] < 1.0 - tolerance
    assert all(point["accuracy"] >= 1.0 - tolerance for point in curve[:-1])
    assert info["pruned_count"] == curve[-2]["pruned"]
    assert info["pruned_accuracy"] == curve[-2]["accuracy"]
    measured = evaluate_backdoor(out.model, backdoored.extractor, mirror).clean_accuracy
    assert measured == pytest.approx(info["pruned_accuracy"])


def test_fine_pruning_weakens_the_backdoor(backdoored, tmp_path):
    config = fp_config(
        tmp_path, fp_fine_tune=True, fp_step_ratio=0.2, max_steps=30, learning_rate=0.05, seed=0
    )
    out = apply_fine_pruning(backdoored.model, backdoored.extractor, backdoored.clean, config)
    after = evaluate_backdoor(
        out.model, backdoored.extractor, backdoored.test, backdoored.triggered, backdoored.target
    )
    assert out.info["pruned_count"] > 0 and out.info["fine_tuned"]
    assert after.attack_success_rate < backdoored.before.attack_success_rate


# ---------------------------------------------------------------------------------------------------- CLP


def expected_outliers(uclc: torch.Tensor, u: float) -> list[int]:
    threshold = uclc.mean() + u * uclc.std()
    return [i for i, value in enumerate(uclc.tolist()) if value > threshold]


def test_clp_prunes_exactly_the_neurons_above_mean_plus_u_std():
    model, _ = tiny_model()
    before = state(model)
    layers = feed_forward_layers(model)
    with torch.no_grad():
        layers[0].intermediate.weight[7] *= 100.0
    scaled = state(model)
    norms = [layer.intermediate.weight.detach().double().norm(dim=1) for layer in layers]
    for layer, layer_norms in zip(layers, norms, strict=True):
        torch.testing.assert_close(linear_uclc(layer), layer_norms)
    out = apply_clp(model, config=CLPConfig(clp_u=3.0))
    assert_same_state(model, scaled)
    assert scaled.keys() == before.keys()

    for layer, layer_norms, entry in zip(
        feed_forward_layers(out.model), norms, out.info["layers"], strict=True
    ):
        expected = expected_outliers(layer_norms, 3.0)
        assert entry["pruned"] == expected
        assert entry["threshold"] == pytest.approx(float(layer_norms.mean() + 3.0 * layer_norms.std()))
        assert torch.count_nonzero(layer.intermediate.weight[expected]) == 0
        assert torch.count_nonzero(layer.intermediate.bias[expected]) == 0
    assert 7 in out.info["layers"][0]["pruned"]
    assert out.info["pruned_count"] == sum(len(entry["pruned"]) for entry in out.info["layers"])
    assert not any(k.endswith(("_orig", "_mask")) for k in out.model.state_dict())


def test_clp_with_a_huge_u_prunes_nothing():
    model, _ = tiny_model()
    with torch.no_grad():
        feed_forward_layers(model)[0].intermediate.weight[7] *= 100.0
    for u in (1e6, 1e30):  # a non-finite u is refused (every setting finite)
        out = apply_clp(model, config=CLPConfig(clp_u=u, clp_include_conv=True))
        assert out.info["pruned_count"] == 0
        assert_same_state(out.model, state(model))


def test_clp_prunes_feature_encoder_channels_by_their_spectral_norm():
    model, _ = tiny_model()
    name, conv = feature_encoder_convs(model)[2]
    with torch.no_grad():
        conv.weight[5] *= 100.0
    spectral = torch.stack([torch.linalg.matrix_norm(w.double(), ord=2) for w in conv.weight.detach()])
    torch.testing.assert_close(conv_uclc(conv), spectral)
    out = apply_clp(model, config=CLPConfig(clp_include_conv=True))
    entry = next(e for e in out.info["layers"] if e["name"] == name)
    assert entry["kind"] == "conv" and entry["pruned"] == expected_outliers(spectral, 3.0)
    assert 5 in entry["pruned"]
    pruned_conv = dict(out.model.named_modules())[name]
    assert torch.count_nonzero(pruned_conv.weight[entry["pruned"]]) == 0
    kept = [c for c in range(conv.out_channels) if c not in entry["pruned"]]
    assert torch.equal(pruned_conv.weight[kept], conv.weight[kept])
    assert len([e for e in out.info["layers"] if e["kind"] == "conv"]) == 7


def test_clp_is_data_free_and_needs_feed_forward_layers():
    model, extractor = tiny_model()

    def no_forward(module, args):
        raise AssertionError("CLP ran the model")

    handle = model.register_forward_pre_hook(no_forward)
    without = apply_clp(model, config=CLPConfig(clp_u=1.0))
    with_data = apply_clp(model, extractor, sine_dataset(num_rows=4, seconds=0.5), CLPConfig(clp_u=1.0))
    handle.remove()
    assert without.info == with_data.info and without.info["pruned_count"] > 0
    assert_same_state(without.model, state(with_data.model))
    with pytest.raises(UnsupportedModelError, match="NoFeedForward"):
        apply_clp(NoFeedForward())


def test_clp_on_the_backdoored_model(backdoored):
    """Measured on this tiny model, and recorded as such: CLP at the paper's u = 3 prunes a few feed-forward
    neurons and leaves the backdoor in place (ASR within 3 points). In a probe over u = 2.5 ... 0.5, with and
    without the feature-encoder channels, no setting lowered ASR (it rose to 0.89-0.98 with the channels, as
    clean accuracy fell): CLP's premise (backdoor channels have outlying Lipschitz bounds) did not hold here."""
    before = backdoored.before.attack_success_rate
    default = apply_clp(backdoored.model)
    assert default.info["pruned_count"] > 0
    after = evaluate_backdoor(
        default.model, backdoored.extractor, backdoored.test, backdoored.triggered, backdoored.target
    ).attack_success_rate
    assert after == pytest.approx(before, abs=0.03)
