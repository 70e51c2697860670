"""TSBD: its settings, which weights it zeroes, where unlearning stops, and what it does to the planted backdoor of
the tests' twin tiny Wav2Vec2s (`planted_backdoor`)."""

from __future__ import annotations

import pytest
import torch
from testing_utils import LABELS, sine_dataset
from torch import nn
from transformers import HfArgumentParser

from hf_gnft.defenses import FTConfig, apply_fine_tuning, get_defense
from hf_gnft.defenses.base import DefenseInputError, copy_model, fine_tune
from hf_gnft.defenses.tsbd import (
    TSBDConfig,
    apply_tsbd,
    neuron_weight_changes,
    tsbd_neuron_layers,
    unlearn,
    weights_to_zero,
)
from hf_gnft.neurons import UnsupportedModelError
from hf_gnft.training import evaluate_backdoor

#: stage 2 on the planted twins: 32 clean clips, 10 epochs of batches of 16 (20 steps)
STAGE_2 = dict(per_device_train_batch_size=16, num_train_epochs=10, learning_rate=0.01, seed=0)


def tsbd_config(tmp_path, **overrides) -> TSBDConfig:
    values = dict(output_dir=str(tmp_path / "tsbd"), report_to="none", disable_tqdm=True, **STAGE_2)
    return TSBDConfig(**{**values, **overrides})


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def backdoor_metrics(planted, model):
    return evaluate_backdoor(model, planted.extractor, planted.test, planted.triggered, planted.target)


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"tsbd_neuron_ratio": 0.0}, "tsbd_neuron_ratio"),
        ({"tsbd_neuron_ratio": 1.5}, "tsbd_neuron_ratio"),
        ({"tsbd_neuron_ratio": float("nan")}, "tsbd_neuron_ratio"),
        ({"tsbd_weight_ratio": 0.0}, "tsbd_weight_ratio"),
        ({"tsbd_weight_ratio": 1.01}, "tsbd_weight_ratio"),
        ({"tsbd_accuracy_floor": 1.0}, "tsbd_accuracy_floor"),
        ({"tsbd_accuracy_floor": -0.1}, "tsbd_accuracy_floor"),
        ({"tsbd_unlearning_rate": 0.0}, "tsbd_unlearning_rate"),
        ({"tsbd_max_unlearning_steps": 0}, "tsbd_max_unlearning_steps"),
        ({"tsbd_unlearning_batch_size": 0}, "tsbd_unlearning_batch_size"),
        ({"tsbd_weight_scope": "global"}, "tsbd_weight_scope"),
        ({"tsbd_neuron_kinds": []}, "tsbd_neuron_kinds"),
        ({"tsbd_neuron_kinds": ["batch_norm"]}, "batch_norm"),
        ({"tsbd_neuron_kinds": ["conv", "conv"]}, "twice"),
    ],
)
def test_bad_tsbd_config_is_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tsbd_config(tmp_path, **overrides)


def test_tsbd_is_registered_and_its_settings_are_flags(tmp_path):
    method = get_defense("tsbd")
    assert (
        method.config_class is TSBDConfig and method.knob == "tsbd_neuron_ratio" and method.larger_is_stronger
    )
    (config,) = HfArgumentParser(TSBDConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--tsbd_neuron_ratio", "0.2", "--tsbd_neuron_kinds", "conv",
         "--tsbd_accuracy_floor", "0.3", "--tsbd_fine_tune", "false"]
    )  # fmt: skip
    assert config.tsbd_neuron_ratio == 0.2 and config.tsbd_neuron_kinds == ["conv"]
    assert config.tsbd_accuracy_floor == 0.3 and config.tsbd_fine_tune is False
    # stage 2 is GN-FT with the project's defaults
    assert (config.gn_alpha, config.gn_radius, config.optim_args) == (0.7, 0.05, "momentum=0.9")


# ---------------------------------------------------------------------------------------------- the rule


def test_neurons_are_ranked_by_l1_weight_change_over_all_layers_and_their_largest_changes_zeroed():
    changes = [
        torch.tensor(
            [[3.0, 0.0, 0.0], [1.0, 1.0, 1.5], [0.1, 0.1, 0.1]], dtype=torch.float64
        ),  # scores 3, 3.5, 0.3
        torch.tensor([[0.0, 4.0], [0.5, 0.5], [0.2, 0.0]], dtype=torch.float64),  # scores 4, 1, 0.2
    ]
    # n = 0.5 of 6 neurons: the 3 largest scores, 4 (layer 1, row 0), 3.5 (layer 0, row 1), 3 (layer 0, row 0)
    pooled = weights_to_zero(changes, 0.5, 0.5, "pooled")
    # their 8 weights pooled: 4 of them, the largest changes 4, 3, 1.5 and the first 1.0 (ties go first)
    assert pooled[0].tolist() == [[True, False, False], [True, False, True], [False, False, False]]
    assert pooled[1].tolist() == [[False, True], [False, False], [False, False]]
    per_neuron = weights_to_zero(changes, 0.5, 0.5, "per_neuron")
    # each chosen neuron loses int(0.5 · fan_in) = 1 weight, its largest change
    assert per_neuron[0].tolist() == [[True, False, False], [False, False, True], [False, False, False]]
    assert per_neuron[1].tolist() == [[False, True], [False, False], [False, False]]
    # int(n · total) neurons: 0.1 of 6 is none
    assert not any(mask.any() for mask in weights_to_zero(changes, 0.1, 1.0))


def test_neuron_weight_change_is_the_absolute_change_of_each_output_units_weights():
    before = [torch.zeros(2, 3, 2)]
    after = [torch.tensor([[[1.0, -2.0], [0.0, 0.0], [0.5, 0.0]], [[0.0, 0.0], [0.0, -1.0], [0.0, 0.0]]])]
    (change,) = neuron_weight_changes(before, after)
    assert change.shape == (2, 6)
    assert change.sum(dim=1).tolist() == [3.5, 1.0]
    with pytest.raises(ValueError, match="tsbd_unlearning_rate"):
        neuron_weight_changes(before, [torch.full((2, 3, 2), float("nan"))])


# ---------------------------------------------------------------------------------------------- stage 1


def test_unlearning_stops_at_the_first_epoch_at_the_floor(planted_backdoor, tmp_path):
    planted = planted_backdoor
    model = copy_model(planted.model)
    record = unlearn(
        model, planted.extractor, planted.clean, tsbd_config(tmp_path, tsbd_max_unlearning_steps=500)
    )
    print({key: value for key, value in record.items() if key != "unlearning_curve"})
    # the default floor is chance: 4 classes
    assert record["accuracy_floor"] == 1 / len(LABELS)
    assert record["reached_floor"] and record["unlearning_stopped_by"] == "floor"
    assert 0 < record["unlearning_steps"] < 500
    measured = evaluate_backdoor(model, planted.extractor, planted.clean).clean_accuracy
    assert measured == record["accuracy_after_unlearning"] <= 0.25
    curve = record["unlearning_curve"]
    assert curve[0]["accuracy"] == 1.0 and all(point["accuracy"] > 0.25 for point in curve[:-1])
    assert curve[-1]["step"] == record["unlearning_steps"]


def test_unlearning_that_misses_the_floor_stops_at_its_step_limit_and_tsbd_goes_on(
    planted_backdoor, tmp_path
):
    planted = planted_backdoor
    config = tsbd_config(tmp_path, tsbd_max_unlearning_steps=3, tsbd_accuracy_floor=0.0, tsbd_fine_tune=False)
    outcome = apply_tsbd(planted.model, planted.extractor, planted.clean, config)
    assert outcome.info["unlearning_steps"] == 3 and outcome.info["unlearning_epochs"] == 2
    assert not outcome.info["reached_floor"] and outcome.info["unlearning_stopped_by"] == "max_steps"
    assert outcome.info["accuracy_after_unlearning"] > 0.0
    assert outcome.info["weights_zeroed"] > 0


# ---------------------------------------------------------------------------------------------- stage 1's zeroing


def test_tsbd_zeroes_exactly_the_chosen_weights_of_the_suspect_and_nothing_else(planted_backdoor, tmp_path):
    planted = planted_backdoor
    suspect = snapshot(planted.model)
    config = tsbd_config(tmp_path, tsbd_fine_tune=False)
    outcome = apply_tsbd(planted.model, planted.extractor, planted.clean, config)
    assert all(torch.equal(value, suspect[key]) for key, value in planted.model.state_dict().items())

    # the same unlearning, ranking and choice, step by step (unlearning is seeded: the same weights move)
    unlearned = copy_model(planted.model)
    record = unlearn(unlearned, planted.extractor, planted.clean, config)
    assert record["unlearning_steps"] == outcome.info["unlearning_steps"]
    kinds = config.tsbd_neuron_kinds
    layers = tsbd_neuron_layers(planted.model, kinds)
    changes = neuron_weight_changes([layer.weight for layer in layers],
                                    [layer.weight for layer in tsbd_neuron_layers(unlearned, kinds)])  # fmt: skip
    masks = weights_to_zero(changes, config.tsbd_neuron_ratio, config.tsbd_weight_ratio)
    # the top 5% of all neurons by the L1 norm of their change; 70% of their pooled weights
    scores = torch.cat([change.sum(dim=1) for change in changes])
    fan_ins = torch.cat([torch.full((change.shape[0],), change.shape[1]) for change in changes])
    top = torch.argsort(scores, descending=True)[: int(0.05 * scores.numel())]
    assert outcome.info["weights_zeroed"] == sum(int(mask.sum()) for mask in masks)
    assert outcome.info["weights_zeroed"] == int(0.7 * int(fan_ins[top].sum())) > 0
    flat_masks = torch.cat([mask.any(dim=1) for mask in masks])
    assert set(torch.nonzero(flat_masks).flatten().tolist()) <= set(top.tolist())

    defended = outcome.model.state_dict()
    expected = dict(suspect)
    for layer, mask in zip(layers, masks, strict=True):
        key = f"{layer.name}.weight"
        expected[key] = suspect[key].masked_fill(mask.reshape(suspect[key].shape), 0.0)
        assert (suspect[key][mask.reshape(suspect[key].shape)] != 0).all()  # every chosen weight changes
    assert defended.keys() == expected.keys()
    changed = [key for key in expected if not torch.equal(defended[key], suspect[key])]
    assert changed and all(key.endswith(".weight") for key in changed)
    for key, value in expected.items():
        assert torch.equal(defended[key], value), key  # bit-identical elsewhere


# ---------------------------------------------------------------------------------------------- the backdoor


def test_tsbd_removes_a_planted_backdoor_that_fine_tuning_at_the_same_budget_keeps(
    planted_backdoor, tmp_path
):
    """Measured: FT and GN-FT (20 steps) leave ASR at 1.0; TSBD (about 45 unlearning steps, 5% of the neurons,
    all feature-encoder channels here, then the same 20 steps of GN-FT) reaches 0.0 at CA 1.0 (0.0-0.17 over
    unlearning seeds 0-2; 0.0 for all three at n = 10%)."""
    planted = planted_backdoor
    before = backdoor_metrics(planted, planted.model)
    assert before.attack_success_rate == 1.0 and before.clean_accuracy == 1.0
    ft_config = FTConfig(output_dir=str(tmp_path / "ft"), report_to="none", disable_tqdm=True, **STAGE_2)
    ft = backdoor_metrics(
        planted, apply_fine_tuning(planted.model, planted.extractor, planted.clean, ft_config).model
    )
    outcome = apply_tsbd(planted.model, planted.extractor, planted.clean, tsbd_config(tmp_path))
    tsbd = backdoor_metrics(planted, outcome.model)
    print(f"FT: {ft}; TSBD: {tsbd}; zeroed {outcome.info['per_kind']}")
    assert outcome.info["fine_tune_steps"] == 20 and outcome.info["reached_floor"]
    assert tsbd.attack_success_rate <= ft.attack_success_rate - 0.5
    assert tsbd.clean_accuracy >= 0.9


def test_zeroing_as_many_random_weights_of_the_same_layers_keeps_the_planted_backdoor(
    planted_backdoor, tmp_path
):
    """TSBD's choice is what removes the backdoor: the same number of neurons and weights per layer, chosen at
    random, followed by the same GN-FT, keep it (measured: ASR 1.0 in 9 of 9 draws over three unlearning seeds)."""
    planted = planted_backdoor
    config = tsbd_config(tmp_path, tsbd_fine_tune=False)
    reference = apply_tsbd(planted.model, planted.extractor, planted.clean, config)
    generator = torch.Generator().manual_seed(0)
    rates = []
    for _ in range(3):
        control = copy_model(planted.model)
        with torch.no_grad():
            layers = tsbd_neuron_layers(control, config.tsbd_neuron_kinds)
            for layer, row in zip(layers, reference.info["layers"], strict=True):
                if not row["neurons"]:
                    continue
                neurons = torch.randperm(layer.num_neurons, generator=generator)[: len(row["neurons"])]
                block = layer.weight[neurons].reshape(-1)
                block[torch.randperm(block.numel(), generator=generator)[: row["weights_zeroed"]]] = 0.0
                layer.weight[neurons] = block.reshape(layer.weight[neurons].shape)
        fine_tune(control, planted.extractor, planted.clean, tsbd_config(tmp_path))
        rates.append(backdoor_metrics(planted, control).attack_success_rate)
    print(f"random zeroing + GN-FT: ASR {rates}")
    assert sum(rates) / len(rates) >= 0.8


# ---------------------------------------------------------------------------------------------- bad input


class NoNeurons(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(4, 4)


def test_a_model_without_the_layers_is_refused_by_name(tmp_path):
    with pytest.raises(UnsupportedModelError, match="NoNeurons"):
        apply_tsbd(NoNeurons(), None, sine_dataset(num_rows=4, seconds=0.1), tsbd_config(tmp_path))


def test_an_empty_clean_subset_is_refused(planted_backdoor, tmp_path):
    empty = planted_backdoor.clean.select([])
    with pytest.raises(DefenseInputError, match="empty"):
        apply_tsbd(planted_backdoor.model, planted_backdoor.extractor, empty, tsbd_config(tmp_path))
