"""FT and FT-SAM as configs of the GN-FT two-pass step; ASAM scaling checked against a hand-written SAM step."""

from __future__ import annotations

import pytest
import torch
from testing_utils import Float64Collator, InOrderGNFT, config, flat, sine_dataset, tiny_float64_model

from hf_gnft.defenses.base import DefenseInputError
from hf_gnft.defenses.fine_tuning import FTConfig, FTSAMConfig, apply_fine_tuning
from hf_gnft.perturbation import perturbation
from hf_gnft.training import evaluate_backdoor


def test_adaptive_step_scales_with_the_weight_magnitude():
    params = [torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)]
    grads = [torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)]
    (step,) = perturbation(params, grads, radius=2.0, adaptive=True, eta=0.0)
    scale = params[0].abs()
    torch.testing.assert_close(step, 2.0 * scale**2 * grads[0] / (scale * grads[0]).norm())
    assert step[0] == 0 and step[2] / step[1] == pytest.approx(9.0)  # ∝ |w|² for a flat gradient
    (with_eta,) = perturbation(params, grads, radius=2.0, adaptive=True, eta=0.01)
    assert with_eta[0] > 0  # η keeps zero weights movable
    (plain,) = perturbation(params, grads, radius=2.0)
    torch.testing.assert_close(plain.norm(), torch.tensor(2.0, dtype=torch.float64))


def test_ft_sam_step_is_the_gradient_at_the_asam_point(tmp_path):
    data = sine_dataset(num_rows=4, seconds=0.4)
    radius, eta = 0.5, 0.01
    model, extractor = tiny_float64_model()
    trainer = InOrderGNFT(
        model=model,
        args=config(tmp_path, "ftsam", gn_alpha=1.0, gn_radius=radius, gn_adaptive=True, gn_adaptive_eta=eta),
        train_dataset=data,
        data_collator=Float64Collator(extractor),
    )
    reference, _ = tiny_float64_model()
    start = flat(model)
    trainer.train()
    update = flat(model) - start

    batch = Float64Collator(extractor)([data[i] for i in range(4)])
    params = [p for p in reference.parameters() if p.requires_grad]
    grads = torch.autograd.grad(reference(**batch).loss, params, allow_unused=True)
    used = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
    steps = perturbation([p for p, _ in used], [g for _, g in used], radius, adaptive=True, eta=eta)
    with torch.no_grad():
        for (param, _), step in zip(used, steps, strict=True):
            param.add_(step)
    second = torch.autograd.grad(reference(**batch).loss, params, allow_unused=True)
    expected = torch.cat(
        [
            -(g if g is not None else torch.zeros_like(p)).flatten()
            for p, g in zip(params, second, strict=True)
        ]
    )  # SGD, lr 1, one step: θ ← θ − ∇L(θ + e)
    torch.testing.assert_close(update, expected, rtol=1e-9, atol=1e-12)


def test_configs_carry_the_papers_defaults():
    ft = FTConfig(output_dir="unused", report_to="none")
    sam = FTSAMConfig(output_dir="unused", report_to="none")
    assert ft.gn_alpha == 0.0 and ft.optim == "sgd"
    assert (sam.gn_alpha, sam.gn_radius, sam.gn_adaptive, sam.label_smoothing_factor) == (1.0, 2.0, True, 0.1)
    with pytest.raises(ValueError, match="exact"):
        FTSAMConfig(output_dir="unused", report_to="none", gn_mode="exact")
    with pytest.raises(ValueError, match="gn_adaptive_eta"):
        FTSAMConfig(output_dir="unused", report_to="none", gn_adaptive_eta=-1.0)


def test_empty_clean_subset_is_refused(backdoored):
    with pytest.raises(DefenseInputError, match="empty"):
        apply_fine_tuning(
            backdoored.model, backdoored.extractor, backdoored.clean.select([]), FTConfig(report_to="none")
        )


@pytest.mark.parametrize("config_class", [FTConfig, FTSAMConfig])
def test_fine_tuning_defenses_lower_the_noise_burst_asr(backdoored, tmp_path, config_class):
    before = [p.detach().clone() for p in backdoored.model.parameters()]
    args = config_class(output_dir=str(tmp_path), report_to="none", max_steps=30, learning_rate=0.05,
                        per_device_train_batch_size=16, disable_tqdm=True, seed=0)  # fmt: skip
    outcome = apply_fine_tuning(backdoored.model, backdoored.extractor, backdoored.clean, args)
    after = evaluate_backdoor(
        outcome.model, backdoored.extractor, backdoored.test, backdoored.triggered, backdoored.target
    )
    assert after.attack_success_rate < backdoored.before.attack_success_rate
    assert all(torch.equal(a, b) for a, b in zip(before, backdoored.model.parameters(), strict=True))
    print(
        f"{config_class.__name__}: ASR {backdoored.before.attack_success_rate:.3f} -> {after.attack_success_rate:.3f}"
    )


def test_label_smoothing_works_with_the_two_pass_step(tmp_path):
    """The stock `compute_loss` pops "labels" when smoothing; the second pass must still see them."""
    data = sine_dataset(num_rows=4, seconds=0.4)
    model, extractor = tiny_float64_model()
    trainer = InOrderGNFT(
        model=model,
        args=config(tmp_path, "smooth", gn_alpha=0.7, label_smoothing_factor=0.1),
        train_dataset=data,
        data_collator=Float64Collator(extractor),
    )
    start = flat(model)
    trainer.train()
    assert torch.isfinite(flat(model)).all() and not torch.equal(flat(model), start)
