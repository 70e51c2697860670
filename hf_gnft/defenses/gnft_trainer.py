"""`GNFTTrainer`: Gradient Norm-based Fine-Tuning as a drop-in `transformers.Trainer`."""

from __future__ import annotations

import contextlib
import logging
import math
import re
import types
from collections.abc import Iterator

import torch
from torch.nn.utils import parametrizations
from transformers import TrainingArguments

from ..perturbation import BatchNormSnapshot, ParameterSnapshot, RNGState, gradient_norm, perturb_
from ..trainer_args import as_config
from ..training import AudioClassificationTrainer
from .gnft_config import GNFTConfig

logger = logging.getLogger(__name__)

_DOUBLE_BACKPROP_ATTENTION = ("eager",)


def _composite_weight_norm(self: parametrizations._WeightNorm, weight_g, weight_v):
    dims = [d for d in range(weight_v.dim()) if d != self.dim % weight_v.dim()]
    return weight_v * (weight_g / torch.linalg.vector_norm(weight_v, dim=dims, keepdim=True))


@contextlib.contextmanager
def differentiable_weight_norm(model: torch.nn.Module) -> Iterator[None]:
    """Compute weight-norm parametrizations with plain ops while the context is open.

    PyTorch's fused `torch._weight_norm` kernel has an inexact second derivative on CPU (measured on the
    tiny Wav2Vec2's positional convolution: its Hessian-vector product is 0.27% off a central finite
    difference, against 1e-9 with plain ops), which would bias the exact penalty.
    """
    patched = [m for m in model.modules() if isinstance(m, parametrizations._WeightNorm)]
    for module in patched:
        module.forward = types.MethodType(_composite_weight_norm, module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


class GNFTTrainer(AudioClassificationTrainer):
    """Fine-tune with the gradient-norm penalty of GN-FT; otherwise the stock `Trainer`.

    Swap `Trainer` for `GNFTTrainer` and `TrainingArguments` for [`GNFTConfig`] in any (audio)
    classification script. Each micro-batch runs two forward/backward passes (see `GNFTConfig`):

    1. the gradients accumulated by earlier micro-batches are set aside and the RNG state is saved;
    2. first pass at θ (without DDP synchronisation): g1;
    3. θ' = θ + r·g1/‖g1‖ over the covered parameters; `.grad` becomes `stash + (1 − α)·g1`;
    4. the RNG state is restored, so dropout / LayerDrop / SpecAugment masks are the same, and the
       second pass at θ' adds `α·g2` (synchronised across processes on the last micro-batch);
    5. θ is restored bit for bit (and BatchNorm statistics, which the second pass must not update).

    Clipping, the optimizer, the scheduler and logging stay the Trainer's. With gradient accumulation the
    perturbation is computed per micro-batch ("m-sharpness"); under DDP each process perturbs with its own
    micro-batch gradient, so the update is the mean of the per-process penalty gradients.

    Logged with the training loss: `gn/ce_loss` (first-pass cross-entropy), `gn/grad_norm` (‖∇CE‖ of a
    micro-batch over the covered parameters), `gn/penalty` (λ·‖∇CE‖), `gn/alpha` (after warm-up) and
    `gn/skipped` (micro-batches whose first-pass gradient was not finite).

    DeepSpeed and FSDP are refused: DeepSpeed steps inside `backward` and ZeRO does not fill `.grad`;
    FSDP shards parameters while the first pass's local gradients are unsharded.
    """

    # Added to the model (`add_model_tags`), from where `Trainer.push_to_hub` puts them on the model card.
    _tag_names = ["hf-gnft", "gn-ft", "backdoor-defense"]

    def __init__(self, model=None, args: TrainingArguments | None = None, *pos, **kwargs) -> None:
        args = as_config(args, GNFTConfig, "gnft-output")
        super().__init__(model, args, *pos, **kwargs)
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)
        if self.is_deepspeed_enabled:
            raise ValueError(
                "GNFTTrainer does not support DeepSpeed: the engine steps the optimizer inside backward and "
                "ZeRO-2/3 do not fill `.grad`, so a two-pass update cannot be composed; use DDP"
            )
        if self.is_fsdp_enabled:
            raise ValueError(
                "GNFTTrainer does not support FSDP yet: the first (unsynchronised) pass leaves unsharded local "
                "gradients while parameters are sharded; use DDP"
            )
        self.covered_parameter_names = self._covered_names()
        if args.gn_mode == "exact":
            self._check_exact_mode()
        self._gn_two_pass_at_zero_alpha = False  # tests force the two-pass code at α = 0

    # ---------------------------------------------------------------------------------------- set-up

    def _covered_names(self) -> list[str]:
        pattern = re.compile(self.args.gn_parameters) if self.args.gn_parameters else None
        names = [
            name
            for name, param in self.model.named_parameters()
            if param.requires_grad and (pattern is None or pattern.search(name))
        ]
        if not names:
            raise ValueError(
                f"gn_parameters={self.args.gn_parameters!r} matches no trainable parameter of the model"
            )
        return names

    def _check_exact_mode(self) -> None:
        if self.args.world_size > 1:
            raise ValueError("gn_mode='exact' is a single-process reference; use gn_mode='approx' with DDP")
        if self.args.fp16:
            raise ValueError("gn_mode='exact' does not support fp16 (use bf16 or float32)")
        attention = getattr(getattr(self.model, "config", None), "_attn_implementation", None)
        if attention is not None and attention not in _DOUBLE_BACKPROP_ATTENTION:
            raise ValueError(
                f"gn_mode='exact' needs double backprop, which the {attention!r} attention does not provide "
                "(SDPA's CPU backward has no derivative); load the model with attn_implementation='eager'"
            )

    def _covered_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        named = dict(self.accelerator.unwrap_model(model).named_parameters())
        return [named[name] for name in self.covered_parameter_names]

    def current_alpha(self) -> float:
        """α after the penalty warm-up, at the current optimizer step."""
        warmup = self.args.gn_warmup_steps
        if warmup and warmup < 1:
            warmup = math.ceil(warmup * max(self.state.max_steps, 1))
        if not warmup:
            return float(self.args.gn_alpha)
        return float(self.args.gn_alpha) * min(1.0, self.state.global_step / warmup)

    # ------------------------------------------------------------------------------------ the step

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        alpha = self.current_alpha()
        if self.args.gn_mode == "approx" and alpha == 0.0 and not self._gn_two_pass_at_zero_alpha:
            self._step_metrics["gn/alpha"].append(0.0)
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        accumulation = getattr(
            self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps
        )
        if self.args.gn_mode == "exact":
            return self._exact_step(model, inputs, alpha, accumulation)
        return self._two_pass_step(model, inputs, alpha, accumulation)

    def _loss(self, model, inputs) -> torch.Tensor:
        # a shallow copy: with label smoothing the stock `compute_loss` pops "labels", which the second pass needs
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, dict(inputs))
        return loss.mean() if self.args.n_gpu > 1 else loss

    def _loss_scale(self) -> float:
        scaler = getattr(self.accelerator, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    def _two_pass_step(self, model, inputs, alpha: float, accumulation: int) -> torch.Tensor:
        trainable = [p for p in model.parameters() if p.requires_grad]
        stash = [p.grad.detach().clone() if p.grad is not None else None for p in trainable]
        for param in trainable:
            if param.grad is not None:
                param.grad.zero_()  # in place: DDP's bucket views point at these tensors
        rng = RNGState.capture()

        with self.accelerator.no_sync(model):
            loss = self._loss(model, inputs)
            self.accelerator.backward(loss / accumulation)
        batchnorm = BatchNormSnapshot(model)

        covered = [p for p in self._covered_parameters(model) if p.grad is not None]
        first_grads = [p.grad for p in covered]  # read before `.grad` is mixed below: no copy needed
        norm = gradient_norm(first_grads)
        if not torch.isfinite(norm):
            return self._non_finite_first_pass(trainable, stash, loss, accumulation)

        snapshot = ParameterSnapshot(covered)
        perturb_(
            covered,
            first_grads,
            self.args.gn_radius,
            self.args.gn_norm,
            adaptive=self.args.gn_adaptive,
            eta=self.args.gn_adaptive_eta,
        )
        with torch.no_grad():
            mixed = [p.grad for p in trainable if p.grad is not None]
            torch._foreach_mul_(mixed, 1.0 - alpha)
            for param, saved in zip(trainable, stash, strict=True):
                if saved is None:
                    continue
                if param.grad is None:
                    param.grad = saved
                else:
                    param.grad.add_(saved)

        rng.restore()
        second_loss = self._loss(model, inputs)
        self.accelerator.backward(alpha * second_loss / accumulation)
        snapshot.restore()
        batchnorm.restore()

        grad_norm = float(norm) * accumulation / self._loss_scale()
        self._record(loss, grad_norm, alpha)
        return (loss / accumulation).detach()

    def _non_finite_first_pass(self, trainable, stash, loss, accumulation: int) -> torch.Tensor:
        self._step_metrics["gn/skipped"].append(1.0)
        if self._loss_scale() != 1.0:
            # fp16: leave the non-finite gradient in place; the GradScaler skips the step and lowers its scale
            logger.warning("GN-FT: non-finite first-pass gradient under fp16: the scaler skips this step")
            return (loss / accumulation).detach()
        logger.warning(
            "GN-FT: non-finite first-pass gradient (loss %s): this micro-batch is dropped, weights are unchanged",
            float(loss),
        )
        with torch.no_grad():
            for param, saved in zip(trainable, stash, strict=True):
                if saved is not None:
                    param.grad.copy_(saved)
                elif param.grad is not None:
                    param.grad.zero_()
        return torch.zeros((), device=loss.device)

    def _exact_step(self, model, inputs, alpha: float, accumulation: int) -> torch.Tensor:
        covered = self._covered_parameters(model)
        with differentiable_weight_norm(model):
            loss = self._loss(model, inputs)
        grads = torch.autograd.grad(loss, covered, create_graph=True, allow_unused=True)
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))
        if not torch.isfinite(norm):
            trainable = [p for p in model.parameters() if p.requires_grad]
            stash = [p.grad.detach().clone() if p.grad is not None else None for p in trainable]
            return self._non_finite_first_pass(trainable, stash, loss, accumulation)
        penalised = loss + alpha * self.args.gn_radius * norm.to(loss.dtype)
        self.accelerator.backward(penalised / accumulation)
        self._record(loss, float(norm.detach()), alpha)
        return (loss / accumulation).detach()

    # ------------------------------------------------------------------------------------ logging

    def _record(self, loss: torch.Tensor, grad_norm: float, alpha: float) -> None:
        self._step_metrics["gn/ce_loss"].append(float(loss.detach()))
        self._step_metrics["gn/grad_norm"].append(grad_norm)
        self._step_metrics["gn/penalty"].append(alpha * self.args.gn_radius * grad_norm)
        self._step_metrics["gn/alpha"].append(alpha)
        self._step_metrics["gn/skipped"].append(0.0)
