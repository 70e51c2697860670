"""NAD (attention distillation) and ANP (adversarial neuron pruning): losses, masks, pruning, interface, efficacy."""

from __future__ import annotations

import pytest
import torch
from testing_utils import LABELS, Float64Collator, sine_dataset, tiny_float64_model
from transformers import HfArgumentParser

from hf_gnft.defenses.anp import (
    ANPConfig,
    NeuronMasks,
    apply_anp,
    neurons_to_prune,
    optimize_anp_masks,
)
from hf_gnft.defenses.base import DefenseInputError, copy_model
from hf_gnft.defenses.nad import (
    NADConfig,
    NADTrainer,
    apply_nad,
    attention_map,
    attention_transfer_loss,
)
from hf_gnft.models import build_model
from hf_gnft.neurons import (
    ChannelNeurons,
    FeedForwardLayer,
    UnsupportedModelError,
    conv_neurons,
    feed_forward_layers,
)
from hf_gnft.training import AudioClassificationCollator, evaluate_backdoor


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def assert_same_weights(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(state[key], value), key


def nad_config(tmp_path, **overrides) -> NADConfig:
    values = dict(
        output_dir=str(tmp_path / "nad"),
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=0.5,
        lr_scheduler_type="constant",
        optim_args=None,
        weight_decay=0.0,
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    values.update(overrides)
    return NADConfig(**values)


# ------------------------------------------------------------------------------------------------ NAD


def test_attention_map_is_normalised_and_the_loss_vanishes_only_for_equal_maps():
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    other = torch.randn(3, 7, 5, dtype=torch.float64)
    attention = attention_map(hidden, power=3.0)
    assert attention.shape == (3, 7)
    torch.testing.assert_close(attention.norm(dim=-1), torch.ones(3, dtype=torch.float64))
    raw = hidden.detach().abs().pow(3.0).mean(-1)
    torch.testing.assert_close(attention, raw / raw.norm(dim=-1, keepdim=True))

    same = attention_transfer_loss(hidden, hidden.detach())
    assert same.item() == 0.0
    same.backward()
    assert torch.isfinite(hidden.grad).all()  # no NaN from the norm at 0
    assert attention_transfer_loss(hidden, 4.0 * hidden.detach()).item() == pytest.approx(0.0, abs=1e-12)
    differing = attention_transfer_loss(hidden, other)
    expected = (attention_map(hidden) - attention_map(other)).norm(dim=-1).mean()
    assert differing.item() > 0.01
    torch.testing.assert_close(differing, expected)


def test_nad_loss_is_ce_plus_the_logged_attention_term(tmp_path):
    data = sine_dataset(num_rows=4, seconds=0.4)
    teacher, _ = tiny_float64_model(seed=1)
    # Each layer of the post-LN Wav2Vec2 ends in a LayerNorm, which at initialisation (γ = 1, β = 0) makes
    # mean_c h_c² = 1 in every frame: flat attention maps. Random γ give the teacher maps of its own.
    with torch.no_grad():
        for layer in teacher.wav2vec2.encoder.layers:
            layer.final_layer_norm.weight.uniform_(0.0, 2.0)
    losses, logs, at_expected = {}, {}, None
    for beta in (0.0, 2.5):
        student, extractor = tiny_float64_model(seed=0)
        if at_expected is None:  # AT loss of the untrained student against the teacher on the one batch
            batch = Float64Collator(extractor)([data[i] for i in range(4)])
            inputs = {"input_values": batch["input_values"]}
            with torch.no_grad():
                s = student(**inputs, output_hidden_states=True).hidden_states
                t = teacher(**inputs, output_hidden_states=True).hidden_states
            at_expected = sum(attention_transfer_loss(s[i + 1], t[i + 1]) for i in range(2)).item()
            ce_expected = student(**batch).loss.item()
        trainer = NADTrainer(
            model=student,
            args=nad_config(tmp_path, nad_beta=beta),
            train_dataset=data,
            data_collator=Float64Collator(extractor),
            teacher_model=teacher,
        )
        trainer.train()
        (row,) = [row for row in trainer.state.log_history if "loss" in row]
        losses[beta], logs[beta] = row["loss"], row
    assert at_expected > 1e-3
    assert logs[2.5]["nad/at_loss"] == pytest.approx(at_expected, rel=1e-9)
    assert logs[2.5]["nad/attention_term"] == pytest.approx(2.5 * at_expected, rel=1e-9)
    assert logs[0.0]["nad/attention_term"] == 0.0
    assert logs[0.0]["nad/ce_loss"] == pytest.approx(ce_expected, rel=1e-9)
    assert logs[2.5]["nad/ce_loss"] == pytest.approx(ce_expected, rel=1e-9)
    # the Trainer rounds the logged loss to 4 decimals
    assert losses[2.5] - losses[0.0] == pytest.approx(logs[2.5]["nad/attention_term"], abs=2e-4)
    assert losses[2.5] == pytest.approx(ce_expected + 2.5 * at_expected, abs=1e-4)


def test_nad_teacher_is_frozen_and_unchanged_by_student_training(tmp_path):
    data = sine_dataset(num_rows=8, seconds=0.4)
    teacher, _ = tiny_float64_model(seed=1)
    student, extractor = tiny_float64_model(seed=0)
    teacher_before, student_before = snapshot(teacher), snapshot(student)
    trainer = NADTrainer(
        model=student,
        args=nad_config(tmp_path, max_steps=2, nad_beta=5.0, nad_layers=[-1]),
        train_dataset=data,
        data_collator=Float64Collator(extractor),
        teacher_model=teacher,
    )
    trainer.train()
    assert_same_weights(teacher, teacher_before)
    assert not teacher.training
    assert not any(param.requires_grad for param in teacher.parameters())
    assert any(not torch.equal(student.state_dict()[k], v) for k, v in student_before.items())
    assert trainer.nad_layer_indices == [1]
    assert all(row["nad/at_loss"] > 0 for row in trainer.state.log_history if "loss" in row)


def test_nad_config_validation_and_parsing():
    parsed, *_ = HfArgumentParser(NADConfig).parse_args_into_dataclasses(
        ["--output_dir", "x", "--nad_layers", "0", "-1", "--nad_beta", "3", "--report_to", "none"]
    )
    assert (parsed.nad_layers, parsed.nad_beta, parsed.gn_alpha, parsed.nad_teacher_epochs) == (
        [0, -1],
        3,
        0,
        10,
    )
    for bad, match in [
        ({"nad_beta": -1.0}, "nad_beta"),
        ({"nad_power": 0.0}, "nad_power"),
        ({"nad_teacher_epochs": 0}, "nad_teacher_epochs"),
        ({"nad_layers": []}, "nad_layers"),
        ({"nad_layers": [0.5]}, "nad_layers"),
    ]:
        with pytest.raises(ValueError, match=match):
            NADConfig(output_dir="x", report_to="none", **bad)


def test_nad_refuses_layers_out_of_range_and_empty_clean_data(tmp_path):
    model, extractor = build_model("tiny-wav2vec2", LABELS)
    data = sine_dataset(num_rows=4, seconds=0.2)
    with pytest.raises(ValueError, match="out of range"):
        apply_nad(model, extractor, data, nad_config(tmp_path, nad_layers=[2]))
    with pytest.raises(DefenseInputError, match="empty"):
        apply_nad(model, extractor, data.select([]), nad_config(tmp_path))


# ------------------------------------------------------------------------------------------------ ANP


def test_neuron_masks_apply_the_anp_formula():
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 5).double()
    layer = FeedForwardLayer("ff", 0, linear, torch.nn.Linear(5, 3).double(), torch.nn.Identity())
    masks = NeuronMasks([layer], eps=0.4)
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    plain = linear(x)
    with masks:
        torch.testing.assert_close(linear(x), plain)  # fresh masks: the identity
        masks.reset_perturbations(torch.Generator().manual_seed(0))
        with torch.no_grad():
            masks.masks[0].copy_(torch.rand(5, dtype=torch.float64))
        m, delta, xi = masks.masks[0].detach(), masks.weight_noise[0].detach(), masks.bias_noise[0].detach()
        assert delta.abs().max() <= 0.4 and xi.abs().max() <= 0.4 and delta.abs().min() > 0
        z = x @ linear.weight.T
        torch.testing.assert_close(linear(x), m * z + linear.bias)
        masks.perturbed = True
        torch.testing.assert_close(linear(x), (m + delta) * z + (1 + xi) * linear.bias)
    torch.testing.assert_close(linear(x), plain)  # detached: hooks removed


def test_layer_norm_neurons_follow_the_same_formula_and_prune_to_zero_channels(tmp_path):
    norm = torch.nn.LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    masks = NeuronMasks([ChannelNeurons("ln", norm)], eps=0.4)
    x = torch.randn(3, 6, dtype=torch.float64)
    normalised = torch.nn.functional.layer_norm(x, (6,))
    with masks:
        masks.reset_perturbations(torch.Generator().manual_seed(1))
        masks.perturbed = True
        m, delta, xi = masks.masks[0].detach(), masks.weight_noise[0].detach(), masks.bias_noise[0].detach()
        torch.testing.assert_close(norm(x), (m + delta) * norm.weight * normalised + (1 + xi) * norm.bias)

    torch.manual_seed(0)
    model, extractor = build_model("tiny-wav2vec2", LABELS)
    config = ANPConfig(anp_neurons="layer_norm", anp_steps=2, anp_batch_size=4, anp_prune_by="number",
                       anp_prune_number=5)  # fmt: skip
    outcome = apply_anp(model, extractor, sine_dataset(num_rows=8, seconds=0.3), config)
    pruned = outcome.info["pruned_neurons"]
    assert outcome.info["neurons"] == "layer_norm" and outcome.info["pruned_count"] == 5
    assert set(pruned) == {
        name for name, module in model.named_modules() if isinstance(module, torch.nn.LayerNorm)
    }
    defended = dict(outcome.model.named_modules())
    for name, channels in pruned.items():
        assert all(defended[name].weight[c] == 0 and defended[name].bias[c] == 0 for c in channels)
        kept = [c for c in range(defended[name].weight.numel()) if c not in channels]
        assert torch.equal(defended[name].weight[kept], dict(model.named_modules())[name].weight[kept])
    with pytest.raises(ValueError, match="unknown anp_neurons"):
        ANPConfig(anp_neurons="attention")


def test_conv_neurons_are_the_feature_encoders_channels_masked_after_their_norm():
    torch.manual_seed(0)
    model, extractor = build_model("tiny-hubert", LABELS)
    neurons = conv_neurons(model)
    encoder = "hubert.feature_extractor.conv_layers"
    assert [n.name for n in neurons] == [f"{encoder}.0.layer_norm"] + [
        f"{encoder}.{i}.conv" for i in range(1, 7)
    ]
    assert [n.channel_dim for n in neurons] == [1] * 7 and sum(n.num_neurons for n in neurons) == 224
    norm = neurons[0].module
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 32, 50)
    masks = NeuronMasks(neurons, eps=0.4)
    with masks:
        masks.reset_perturbations(torch.Generator().manual_seed(2))
        masks.perturbed = True
        m, delta, xi = (t[0].detach()[:, None] for t in (masks.masks, masks.weight_noise, masks.bias_noise))
        normalised = torch.nn.functional.group_norm(x, 32)
        expected = (m + delta) * norm.weight[:, None] * normalised + (1 + xi) * norm.bias[:, None]
        torch.testing.assert_close(norm(x), expected)
        conv = neurons[1].module
        h = torch.randn(2, 32, 40)
        assert conv.bias is None  # a bias-free convolution: its channels are only scaled
        scale = (masks.masks[1] + masks.weight_noise[1]).detach()[:, None]
        torch.testing.assert_close(
            conv(h), scale * torch.nn.functional.conv1d(h, conv.weight, stride=conv.stride)
        )

    config = ANPConfig(
        anp_neurons="conv", anp_steps=2, anp_batch_size=4, anp_prune_by="number", anp_prune_number=6
    )
    data = sine_dataset(num_rows=8, seconds=0.3)
    outcome = apply_anp(model, extractor, data, config)
    pruned = outcome.info["pruned_neurons"]
    assert outcome.info["neurons"] == "conv" and outcome.info["pruned_count"] == 6
    defended = dict(outcome.model.named_modules())
    outputs = {}
    for position in range(7):
        layer = defended[f"{encoder}.{position}"]
        layer.register_forward_hook(lambda module, i, out, p=position: outputs.__setitem__(p, out))
    batch = AudioClassificationCollator(extractor)([data[i] for i in range(4)])
    with torch.no_grad():
        outcome.model(input_values=batch["input_values"])
    for name, channels in pruned.items():
        module = defended[name]
        assert all(torch.count_nonzero(module.weight[c]) == 0 for c in channels)
        position = int(name.split("conv_layers.")[1].split(".")[0])
        assert all(torch.count_nonzero(outputs[position][:, c]) == 0 for c in channels)  # GELU(0) = 0
    assert sum(len(c) for c in pruned.values()) == 6
    with pytest.raises(UnsupportedModelError, match="NoFeedForward"):
        apply_anp(NoFeedForward(), extractor, data, ANPConfig(anp_neurons="conv", anp_steps=1))


def test_anp_masks_move_within_bounds_and_weights_stay_frozen():
    torch.manual_seed(0)
    model, extractor = build_model("tiny-wav2vec2", LABELS)
    model.train()
    before = snapshot(model)
    config = ANPConfig(
        anp_steps=4, anp_batch_size=4, anp_mask_lr=20.0
    )  # a random model's gradients are small
    masks, record = optimize_anp_masks(model, extractor, sine_dataset(num_rows=8, seconds=0.3), config)
    values = torch.cat(masks.mask_values())
    assert values.min() >= 0 and values.max() <= 1
    assert values.min() < 0.99 and (values < 1).float().mean() > 0.1  # the masks moved away from 1
    for noise in masks.perturbations:
        assert noise.abs().max() <= config.anp_eps
        assert noise.abs().max() > config.anp_eps / 2
    assert record["final_robust_loss"] >= 0 and record["final_natural_loss"] >= 0
    assert_same_weights(model, before)
    assert model.training and all(param.requires_grad for param in model.parameters())
    assert all(
        not hook for layer in feed_forward_layers(model) for hook in [layer.intermediate._forward_hooks]
    )


def test_neurons_to_prune_by_threshold_and_by_number():
    values = [torch.tensor([0.9, 0.1, 0.19, 0.2]), torch.tensor([0.0, 0.5, 0.1])]
    by_threshold = neurons_to_prune(values, ANPConfig(anp_threshold=0.2))
    assert [v.tolist() for v in by_threshold] == [[False, True, True, False], [True, False, True]]
    by_number = neurons_to_prune(values, ANPConfig(anp_prune_by="number", anp_prune_number=3))
    assert [v.tolist() for v in by_number] == [[False, True, False, False], [True, False, True]]
    with pytest.raises(ValueError, match="exceeds"):
        neurons_to_prune(values, ANPConfig(anp_prune_by="number", anp_prune_number=8))


def test_anp_prunes_exactly_n_neurons_whose_outputs_are_zero(tmp_path):
    torch.manual_seed(0)
    model, extractor = build_model("tiny-wav2vec2", LABELS)
    before = snapshot(model)
    data = sine_dataset(num_rows=4, seconds=0.3)
    config = ANPConfig(anp_steps=2, anp_batch_size=4, anp_prune_by="number", anp_prune_number=7)
    outcome = apply_anp(model, extractor, data, config)
    assert_same_weights(model, before)  # the input model is untouched
    info = outcome.info
    assert info["pruned_count"] == 7 == sum(len(v) for v in info["pruned_neurons"].values())
    assert set(info["pruned_neurons"]) == {layer.name for layer in feed_forward_layers(model)}

    defended = outcome.model
    assert not any("_orig" in key or "_mask" in key for key in defended.state_dict())  # pruning is permanent
    outputs = {}
    layers = feed_forward_layers(defended)
    handles = [
        layer.intermediate.register_forward_hook(
            lambda module, inputs, output, name=layer.name: outputs.__setitem__(name, output)
        )
        for layer in layers
    ]
    batch = AudioClassificationCollator(extractor)([data[i] for i in range(4)])
    with torch.no_grad():
        defended(input_values=batch["input_values"])
    for handle in handles:
        handle.remove()
    for layer in layers:
        pruned = info["pruned_neurons"][layer.name]
        kept = [i for i in range(layer.num_neurons) if i not in pruned]
        assert torch.count_nonzero(layer.activation(outputs[layer.name][..., pruned])) == 0
        assert torch.count_nonzero(layer.intermediate.weight[pruned]) == 0
        assert (outputs[layer.name][..., kept] != 0).any()
    defended.save_pretrained(tmp_path / "anp")  # plain weights


def test_anp_config_validation_and_parsing():
    parsed, *_ = HfArgumentParser(ANPConfig).parse_args_into_dataclasses(
        ["--anp_prune_by", "number", "--anp_prune_number", "5", "--anp_steps", "10"]
    )
    assert (parsed.anp_prune_number, parsed.anp_steps, parsed.anp_eps, parsed.anp_alpha) == (5, 10, 0.4, 0.2)
    for bad, match in [
        ({"anp_eps": -0.1}, "anp_eps"),
        ({"anp_alpha": 1.5}, "anp_alpha"),
        ({"anp_steps": 0}, "anp_steps"),
        ({"anp_steps": 2.5}, "anp_steps"),
        ({"anp_mask_lr": 0.0}, "anp_mask_lr"),
        ({"anp_perturb_lr": -1.0}, "anp_perturb_lr"),
        ({"anp_batch_size": 0}, "anp_batch_size"),
        ({"anp_threshold": 1.2}, "anp_threshold"),
        ({"anp_prune_by": "fraction"}, "anp_prune_by"),
        ({"anp_prune_by": "number"}, "anp_prune_number"),
        ({"anp_prune_by": "number", "anp_prune_number": -1}, "anp_prune_number"),
    ]:
        with pytest.raises(ValueError, match=match):
            ANPConfig(**bad)


class NoFeedForward(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return self.proj(input_values)


def test_unsupported_model_and_empty_clean_subset_are_refused(tmp_path):
    _, extractor = build_model("tiny-wav2vec2", LABELS)
    data = sine_dataset(num_rows=4, seconds=0.2)
    with pytest.raises(UnsupportedModelError, match="NoFeedForward"):
        apply_anp(NoFeedForward(), extractor, data, ANPConfig(anp_steps=1))
    with pytest.raises(UnsupportedModelError, match="NoFeedForward"):
        apply_nad(NoFeedForward(), extractor, data, nad_config(tmp_path))
    model, _ = build_model("tiny-wav2vec2", LABELS)
    with pytest.raises(DefenseInputError, match="empty"):
        apply_anp(model, extractor, data.select([]), ANPConfig(anp_steps=1))


# ------------------------------------------------------------------------------------------------ efficacy


def test_nad_lowers_the_attack_success_rate(backdoored, tmp_path):
    before = snapshot(backdoored.model)
    config = NADConfig(
        output_dir=str(tmp_path / "nad"),
        learning_rate=0.05,
        nad_teacher_epochs=10,  # 80 clips, batches of 32: 30 steps
        num_train_epochs=10,
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    outcome = apply_nad(backdoored.model, backdoored.extractor, backdoored.clean, config)
    assert_same_weights(backdoored.model, before)
    after = evaluate_backdoor(
        outcome.model, backdoored.extractor, backdoored.test, backdoored.triggered, backdoored.target
    )
    print(f"NAD: {backdoored.before} -> {after}; {outcome.info}")
    assert outcome.info["teacher_steps"] == 30 and outcome.info["steps"] == 30
    assert outcome.info["final_at_loss"] > 0
    assert after.attack_success_rate < backdoored.before.attack_success_rate


def test_anp_runs_on_the_backdoored_model_and_keeps_clean_accuracy(backdoored):
    """ANP does not lower the ASR of this suspect (see `hf_gnft.defenses.anp`: with up to 300 steps, ε of 0.4
    or 1.0 and up to 100 of 512 neurons pruned, the ASR stayed at 0.83), so this checks the pipeline on a
    real backdoored model: the input is untouched, the pruned neurons are those reported, CA is kept."""
    before = snapshot(backdoored.model)
    outcome = apply_anp(backdoored.model, backdoored.extractor, backdoored.clean, ANPConfig(anp_steps=60))
    assert_same_weights(backdoored.model, before)
    info = outcome.info
    assert 0 <= info["mask_summary"]["min"] < 1 and info["mask_summary"]["max"] <= 1
    assert info["pruned_count"] == sum(len(v) for v in info["pruned_neurons"].values())
    for layer in feed_forward_layers(outcome.model):
        rows = info["pruned_neurons"][layer.name]
        assert torch.count_nonzero(layer.intermediate.weight[rows]) == 0
    after = evaluate_backdoor(
        outcome.model, backdoored.extractor, backdoored.test, backdoored.triggered, backdoored.target
    )
    print(f"ANP: {backdoored.before} -> {after}; pruned {info['pruned_count']}")
    assert after.clean_accuracy >= backdoored.before.clean_accuracy - 0.05


@pytest.mark.slow  # 14 s: `anp_neurons="conv"` is off by default; its unit test above stays in make test
def test_anp_on_the_feature_encoder_removes_a_planted_backdoor_that_random_pruning_keeps(planted_backdoor):
    """ANP's premise holds, in part, for the channels of the convolutional feature encoder of a tiny model with a
    planted noise-burst backdoor: the masks that perturbation drives down are more the backdoor's channels than
    the task's. Measured (torch 2.13, transformers 5.24): 200 mask steps prune 52 of the 224 channels, ASR 1.0 ->
    0.63 at CA 1.0 (400 steps: CA 0.75, ASR 1.0; 600 steps: ASR 0.67), while pruning as many random channels per
    layer costs far more clean accuracy (CA 0.35-1.0, mean 0.62, over 5 draws). (With the library versions of the first measurement the same test gave
    ASR 0.2: the planted twin is retrained each run, and the result depends on it.)"""

    planted = planted_backdoor

    def metrics(model):
        return evaluate_backdoor(model, planted.extractor, planted.test, planted.triggered, planted.target)

    before = metrics(planted.model)
    assert before.attack_success_rate == 1.0 and before.clean_accuracy == 1.0
    reference = snapshot(planted.model)
    config = ANPConfig(anp_steps=200, anp_batch_size=16, anp_neurons="conv")
    outcome = apply_anp(planted.model, planted.extractor, planted.clean, config)
    assert_same_weights(planted.model, reference)
    after = metrics(outcome.model)
    counts = {name: len(rows) for name, rows in outcome.info["pruned_neurons"].items()}
    print(f"ANP (conv): {before} -> {after}; pruned {counts}")
    assert after.attack_success_rate <= 0.8 and after.clean_accuracy >= 0.9

    generator = torch.Generator().manual_seed(0)
    random_clean_accuracy = []
    for _ in range(5):
        control = copy_model(planted.model)
        for layer in conv_neurons(control):
            chosen = torch.zeros(layer.num_neurons, dtype=torch.bool)
            chosen[torch.randperm(layer.num_neurons, generator=generator)[: counts[layer.name]]] = True
            layer.prune_(chosen)
        random_clean_accuracy.append(metrics(control).clean_accuracy)
    print(f"random pruning of as many channels: CA {random_clean_accuracy}")
    assert sum(random_clean_accuracy) / 5 <= after.clean_accuracy - 0.2
