"""The two-pass machinery shared by GN-FT and SAM-style defenses.

A step of either method evaluates the gradient at θ (first pass), moves θ along it by a radius r,
evaluates the gradient again at the perturbed point (second pass) and puts θ back. GN-FT mixes the
two gradients, `(1 - α) g1 + α g2`; SAM (α = 1) keeps only the second. Everything that touches the
parameters or the random-number generators lives here, so both trainers share one implementation.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

NORMS = ("global", "per_tensor")


@dataclass
class RNGState:
    """A snapshot of every generator a forward pass may draw from (dropout, LayerDrop, SpecAugment)."""

    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor] | None
    numpy: tuple
    python: tuple

    @classmethod
    def capture(cls) -> RNGState:
        cuda = (
            torch.cuda.get_rng_state_all()
            if torch.cuda.is_available() and torch.cuda.is_initialized()
            else None
        )
        return cls(torch.get_rng_state(), cuda, np.random.get_state(), random.getstate())

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)
        np.random.set_state(self.numpy)
        random.setstate(self.python)


def gradient_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of a list of gradients, in float32 (a 0-dim tensor, inf/nan if any entry is)."""
    if not grads:
        raise ValueError("no gradients: the penalty covers no parameter that received a gradient")
    norms = torch._foreach_norm(
        [g.float() if g.dtype in (torch.float16, torch.bfloat16) else g for g in grads]
    )
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


def perturbation(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    radius: float,
    norm: str = "global",
    adaptive: bool = False,
    eps: float = 1e-12,
    eta: float = 0.0,
) -> list[torch.Tensor]:
    """The step `e` that moves θ by `radius` along the gradient.

    Args:
        params: the parameters θ (used by `adaptive` only).
        grads: their gradients g (any positive scale: it cancels out).
        radius: r.
        norm: "global" (`e = r g / ‖g‖`, ‖·‖ over all tensors) or "per_tensor" (`e_p = r g_p / ‖g_p‖`,
            as in the GN-FT / TSBD authors' code).
        adaptive: ASAM scaling (Kwon et al. 2021, used by FT-SAM): `e = r T² g / ‖T g‖` with `T = |θ| + eta`.
        eps: guards the division.
        eta: ASAM's η (0 gives `T = |θ|`).
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")
    if adaptive:
        scales = [p.detach().abs().add_(eta) if eta else p.detach().abs() for p in params]
        scaled = [t * g for t, g in zip(scales, grads, strict=True)]
        directions = [t * s for t, s in zip(scales, scaled, strict=True)]
    else:
        scaled, directions = list(grads), list(grads)
    if norm == "global":
        return torch._foreach_mul(directions, float(radius / (gradient_norm(scaled) + eps)))
    norms = torch._foreach_norm(scaled)
    return torch._foreach_mul(directions, [float(radius / (n + eps)) for n in norms])


@torch.no_grad()
def perturb_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    radius: float,
    norm: str = "global",
    adaptive: bool = False,
    eps: float = 1e-12,
    eta: float = 0.0,
) -> None:
    """θ ← θ + e in place, with `e` as in `perturbation`; without ASAM scaling, `e` is never materialised."""
    if adaptive:
        torch._foreach_add_(list(params), perturbation(params, grads, radius, norm, adaptive, eps, eta))
    elif norm == "global":
        torch._foreach_add_(list(params), list(grads), alpha=float(radius / (gradient_norm(grads) + eps)))
    elif norm == "per_tensor":
        for param, grad, grad_norm in zip(params, grads, torch._foreach_norm(list(grads)), strict=True):
            param.add_(grad, alpha=float(radius / (grad_norm + eps)))
    else:
        raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")


class ParameterSnapshot:
    """An exact copy of some parameters, to put them back bit for bit after a perturbation."""

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        self.params = list(params)
        self.values = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def restore(self) -> None:
        if self.params:
            torch._foreach_copy_(self.params, self.values)


class BatchNormSnapshot:
    """Running statistics of BatchNorm layers, so a second forward pass does not update them twice."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.modules = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        self.buffers = [
            {name: buffer.detach().clone() for name, buffer in m.named_buffers(recurse=False)}
            for m in self.modules
        ]

    @torch.no_grad()
    def restore(self) -> None:
        for module, saved in zip(self.modules, self.buffers, strict=True):
            for name, value in saved.items():
                getattr(module, name).copy_(value)
