from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from testing_utils import (
    LABELS,
    Float64Collator,
    InOrderFT,
    InOrderGNFT,
    config,
    flat,
    sine_dataset,
    tiny_model,
)
from transformers import TrainerCallback, TrainingArguments

from hf_gnft.defenses.gnft_config import GNFTConfig
from hf_gnft.defenses.gnft_trainer import GNFTTrainer
from hf_gnft.models import build_model


def train(trainer_class, args, dataset, *, model_kwargs=None, force_two_pass=False):
    model, extractor = tiny_model(**(model_kwargs or {}))
    start = flat(model)
    trainer = trainer_class(
        model=model, args=args, train_dataset=dataset, data_collator=Float64Collator(extractor)
    )
    if force_two_pass:
        trainer._gn_two_pass_at_zero_alpha = True
    trainer.train()
    return flat(model) - start, trainer


@pytest.fixture(scope="module")
def data8():
    return sine_dataset(num_rows=8, seconds=0.4)


@pytest.mark.parametrize("accumulation", [1, 4])
@pytest.mark.parametrize("force_two_pass", [False, True])
def test_alpha_zero_reproduces_the_stock_trainer(tmp_path, data8, accumulation, force_two_pass):
    batch = 8 // accumulation
    args = config(
        tmp_path,
        "gn",
        gn_alpha=0.0,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
    )
    stock_args = TrainingArguments(
        **{k: v for k, v in args.to_dict().items() if not k.startswith(("gn_", "_"))}
    )
    stock_args.output_dir = str(tmp_path / "stock")
    gn, _ = train(InOrderGNFT, args, data8, model_kwargs={"dropout": True}, force_two_pass=force_two_pass)
    stock, _ = train(InOrderFT, stock_args, data8, model_kwargs={"dropout": True})
    torch.testing.assert_close(gn, stock, rtol=0, atol=1e-12)


def test_approximation_matches_exact_double_backprop_as_radius_shrinks(tmp_path, data8):
    lam = 0.05
    errors = []
    exact, _ = train(
        InOrderGNFT, config(tmp_path, "exact", gn_mode="exact", gn_alpha=lam / 0.05, gn_radius=0.05), data8
    )
    plain, _ = train(InOrderGNFT, config(tmp_path, "plain", gn_alpha=0.0), data8)
    assert (exact - plain).norm() / plain.norm() > 1e-3  # the penalty changes the update
    for radius in (1e-2, 1e-3, 1e-5):
        approx, _ = train(
            InOrderGNFT, config(tmp_path, f"r{radius}", gn_alpha=lam / radius, gn_radius=radius), data8
        )
        errors.append(float((approx - exact).norm() / exact.norm()))
    assert errors[-1] <= 1e-4
    assert errors[0] > errors[1] > errors[2]  # first-order convergence in r


def test_gradient_accumulation_averages_per_micro_batch_penalties(tmp_path, data8):
    """Documented GA semantics: each micro-batch is perturbed with its own gradient (m-sharpness)."""
    kwargs = dict(gn_alpha=0.7, gn_radius=0.05)
    first, _ = train(InOrderGNFT, config(tmp_path, "a", **kwargs), data8.select(range(4)))
    second, _ = train(InOrderGNFT, config(tmp_path, "b", **kwargs), data8.select(range(4, 8)))
    accumulated, _ = train(
        InOrderGNFT, config(tmp_path, "ga", gradient_accumulation_steps=2, **kwargs), data8
    )
    torch.testing.assert_close(accumulated, (first + second) / 2, rtol=0, atol=1e-10)
    big_batch, _ = train(InOrderGNFT, config(tmp_path, "big", per_device_train_batch_size=8, **kwargs), data8)
    assert (big_batch - accumulated).norm() / big_batch.norm() > 1e-4  # not the same as one batch of 8


def test_both_passes_see_the_same_spec_augment_and_layerdrop_masks(tmp_path, data8):
    noisy = {"dropout": True, "spec_augment": True, "layerdrop": 0.5}
    plain, _ = train(InOrderGNFT, config(tmp_path, "ft", gn_alpha=0.0), data8, model_kwargs=noisy)
    # α = 1 with a vanishing radius: the update equals plain FT only if the second pass used the same masks
    tiny_radius, _ = train(
        InOrderGNFT, config(tmp_path, "sam", gn_alpha=1.0, gn_radius=1e-9), data8, model_kwargs=noisy
    )
    torch.testing.assert_close(tiny_radius, plain, rtol=1e-6, atol=1e-9)


def test_parameters_are_restored_exactly_after_the_second_pass(tmp_path, data8):
    model, extractor = tiny_model()
    trainer = GNFTTrainer(
        model=model, args=config(tmp_path), train_dataset=data8, data_collator=Float64Collator(extractor)
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    before = flat(model)
    batch = Float64Collator(extractor)([data8[i] for i in range(4)])
    trainer.training_step(model, batch)
    assert torch.equal(flat(model), before)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert set(dict(model.named_parameters())) - set(grads) == {
        "wav2vec2.masked_spec_embed"
    }  # unused w/o SpecAugment
    assert all(torch.isfinite(grad).all() for grad in grads.values())


def test_metrics_appear_in_log_history(tmp_path, data8):
    _, trainer = train(InOrderGNFT, config(tmp_path, max_steps=2, per_device_train_batch_size=4), data8)
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert logged and all(
        key in logged[0] for key in ("gn/grad_norm", "gn/penalty", "gn/ce_loss", "gn/alpha")
    )
    assert logged[0]["gn/grad_norm"] > 0 and logged[0]["gn/penalty"] == pytest.approx(
        0.035 * logged[0]["gn/grad_norm"]
    )


def test_penalty_warmup_ramps_alpha(tmp_path, data8):
    _, trainer = train(
        InOrderGNFT, config(tmp_path, max_steps=4, per_device_train_batch_size=2, gn_warmup_steps=2), data8
    )
    alphas = [row["gn/alpha"] for row in trainer.state.log_history if "gn/alpha" in row]
    assert alphas == pytest.approx([0.0, 0.35, 0.7, 0.7])


def test_resume_from_checkpoint_ends_at_the_same_weights(tmp_path):
    data = sine_dataset(num_rows=24, seconds=0.4)
    common = dict(
        max_steps=6, per_device_train_batch_size=4, learning_rate=0.05, save_strategy="steps", save_steps=3
    )
    model, extractor = tiny_model(dropout=True)
    GNFTTrainer(
        model=model, args=config(tmp_path, "straight", **common), train_dataset=data,
        data_collator=Float64Collator(extractor),
    ).train()  # fmt: skip
    straight = flat(model)

    class StopAtThree(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 3

    model, extractor = tiny_model(dropout=True)
    interrupted = GNFTTrainer(
        model=model, args=config(tmp_path, "resumed", **common), train_dataset=data,
        data_collator=Float64Collator(extractor), callbacks=[StopAtThree()],
    )  # fmt: skip
    interrupted.train()
    assert interrupted.state.global_step == 3
    model, extractor = tiny_model(
        dropout=True, seed=123
    )  # another init: everything must come from the checkpoint
    resumed = GNFTTrainer(
        model=model, args=config(tmp_path, "resumed", **common), train_dataset=data,
        data_collator=Float64Collator(extractor),
    )  # fmt: skip
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    assert resumed.state.global_step == 6
    torch.testing.assert_close(flat(model), straight, rtol=0, atol=1e-10)


def test_non_finite_gradient_skips_the_micro_batch_and_keeps_weights_finite(tmp_path, data8, caplog):
    class PoisonedCollator(Float64Collator):
        def __call__(self, rows):
            batch = super().__call__(rows)
            batch["input_values"][0, :10] = float("nan")
            return batch

    model, extractor = tiny_model()
    before = flat(model)
    trainer = GNFTTrainer(
        model=model, args=config(tmp_path), train_dataset=data8, data_collator=PoisonedCollator(extractor)
    )
    with caplog.at_level(logging.WARNING, logger="hf_gnft.defenses.gnft_trainer"):
        trainer.train()
    assert torch.isfinite(flat(model)).all()
    assert torch.equal(flat(model), before)  # plain SGD, no weight decay: a dropped micro-batch moves nothing
    assert "non-finite first-pass gradient" in caplog.text
    assert trainer.state.log_history[0]["gn/skipped"] == 1.0


def test_training_arguments_are_accepted_as_a_drop_in(tmp_path, data8):
    model, extractor = tiny_model()
    args = TrainingArguments(
        output_dir=str(tmp_path / "plain-args"), max_steps=1, use_cpu=True, report_to="none"
    )
    trainer = GNFTTrainer(
        model=model, args=args, train_dataset=data8, data_collator=Float64Collator(extractor)
    )
    assert (
        isinstance(trainer.args, GNFTConfig) and trainer.args.gn_alpha == 0.7 and trainer.args.max_steps == 1
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"gn_radius": -0.1}, "gn_radius"),
        ({"gn_radius": 0.0}, "gn_radius"),
        ({"gn_alpha": -1.0}, "gn_alpha"),
        ({"gn_mode": "hessian"}, "gn_mode"),
        ({"gn_norm": "layer"}, "gn_norm"),
        ({"gn_warmup_steps": -3}, "gn_warmup_steps"),
        ({"gn_parameters": "encoder.(layers"}, "regular expression"),
    ],
)
def test_bad_config_is_rejected(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **overrides)


def test_alpha_above_one_is_allowed(tmp_path):
    assert config(tmp_path, gn_alpha=50.0, gn_radius=1e-3).gn_lambda == pytest.approx(0.05)


def test_parameter_filter_that_matches_nothing_is_an_error(tmp_path, data8):
    model, extractor = tiny_model()
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        GNFTTrainer(model=model, args=config(tmp_path, gn_parameters="^nothing$"), train_dataset=data8)


def test_parameter_filter_limits_the_perturbation(tmp_path, data8):
    model, extractor = tiny_model()
    trainer = GNFTTrainer(
        model=model, args=config(tmp_path, gn_parameters=r"^classifier\."), train_dataset=data8
    )
    assert trainer.covered_parameter_names == ["classifier.weight", "classifier.bias"]


def test_exact_mode_refuses_attention_without_double_backprop(tmp_path, data8):
    torch.manual_seed(0)
    model, _ = build_model("tiny-wav2vec2", LABELS, attn_implementation="sdpa")
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        GNFTTrainer(model=model, args=config(tmp_path, gn_mode="exact"), train_dataset=data8)


def test_penalty_lowers_the_gradient_norm_more_than_plain_fine_tuning(tmp_path):
    """A sanity check of the sign: after a few steps the penalised run has a flatter loss (smaller ‖∇CE‖)."""
    data = sine_dataset(num_rows=16, seconds=0.4)
    common = dict(max_steps=8, per_device_train_batch_size=8, learning_rate=0.05)
    _, plain = train(InOrderGNFT, config(tmp_path, "ft", gn_alpha=0.0, **common), data)
    _, penalised = train(
        InOrderGNFT, config(tmp_path, "gn", gn_mode="exact", gn_alpha=20.0, gn_radius=0.05, **common), data
    )
    norms = {}
    for name, trainer in (("plain", plain), ("penalised", penalised)):
        model = trainer.model
        model.zero_grad()
        batch = Float64Collator(trainer.data_collator.feature_extractor)([data[i] for i in range(16)])
        model.eval()
        model(**batch).loss.backward()
        norms[name] = float(
            torch.sqrt(sum((p.grad**2).sum() for p in model.parameters() if p.grad is not None))
        )
    assert norms["penalised"] < norms["plain"]
    assert np.isfinite(list(norms.values())).all()


def test_batchnorm_statistics_are_updated_once_per_step(tmp_path):
    """The second pass must not move BatchNorm running statistics (CNN baselines have BatchNorm)."""

    class TinyCNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU())
            self.head = torch.nn.Linear(16, 3)

        def forward(self, x, labels=None):
            logits = self.head(self.body(x))
            return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}

    rows = [
        {"x": torch.randn(8, generator=torch.Generator().manual_seed(i)), "labels": i % 3} for i in range(8)
    ]

    def collate(batch):
        return {
            "x": torch.stack([r["x"] for r in batch]),
            "labels": torch.tensor([r["labels"] for r in batch]),
        }

    stats = {}
    for alpha in (0.0, 0.7):
        torch.manual_seed(0)
        model = TinyCNN()
        args = config(
            tmp_path, f"bn{alpha}", gn_alpha=alpha, per_device_train_batch_size=8, learning_rate=1e-30
        )
        InOrderGNFT(model=model, args=args, train_dataset=rows, data_collator=collate).train()
        batchnorm = model.body[1]
        stats[alpha] = (batchnorm.running_mean.clone(), int(batchnorm.num_batches_tracked))
    torch.testing.assert_close(stats[0.7][0], stats[0.0][0], rtol=0, atol=0)
    assert stats[0.7][1] == stats[0.0][1] == 1
