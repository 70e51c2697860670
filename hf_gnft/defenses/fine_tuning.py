"""The fine-tuning defenses: plain FT, GN-FT and FT-SAM, one code path (`GNFTTrainer`) with three configs.

- FT: fine-tuning on the clean subset (`gn_alpha = 0`: the stock Trainer step).
- GN-FT (Zhou, Lin, Liu, arXiv 2502.01152): `DefenseConfig`, the gradient-norm penalty.
- FT-SAM (Zhu, Wei, Wu, Zhang, Wu, Wang, ICCV 2023, "Enhancing Fine-Tuning Based Backdoor Defense with
  Sharpness-Aware Minimization"): adaptive SAM (ASAM, Kwon et al. 2021) fine-tuning with ρ = 2.0 and label
  smoothing 0.1. SAM is the two-pass step with α = 1, so FT-SAM is `GNFTTrainer` with `gn_alpha = 1`,
  `gn_radius = ρ` and `gn_adaptive = True`: the step `ρ T² g / ‖T g‖`, `T = |θ| + η`, moves each weight in
  proportion to its magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets import Dataset
from transformers import PreTrainedModel

from .base import DefenseOutcome, check_clean_subset, copy_model, fine_tune
from .gnft_config import DefenseConfig, GNFTConfig


@dataclass
class FTConfig(DefenseConfig):
    """Plain fine-tuning on the clean subset: `DefenseConfig` (SGD, momentum 0.9, cosine, 20 epochs) with
    `gn_alpha = 0`, i.e. the stock Trainer step on the same budget as GN-FT."""

    gn_alpha: float = field(default=0.0, metadata={"help": "0: plain fine-tuning."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gn_alpha != 0:
            raise ValueError(
                f"FT is plain fine-tuning (gn_alpha = 0), got gn_alpha={self.gn_alpha}: use the 'gn-ft' defense for "
                "the gradient-norm penalty"
            )


@dataclass
class FTSAMConfig(DefenseConfig):
    """FT-SAM (Zhu et al., ICCV 2023): adaptive SAM fine-tuning, as the paper's defaults.

    Args:
        gn_alpha: 1.0 (SAM: the update is the gradient at the perturbed point only).
        gn_radius: ρ = 2.0 (ASAM radii are large because the step is scaled by |θ|).
        gn_adaptive: True (ASAM scaling).
        label_smoothing_factor: 0.1.
    """

    gn_alpha: float = field(default=1.0, metadata={"help": "1: SAM."})
    gn_radius: float = field(default=2.0, metadata={"help": "ρ of adaptive SAM."})
    gn_adaptive: bool = field(default=True, metadata={"help": "ASAM scaling of the step by |θ| + η."})
    label_smoothing_factor: float = field(default=0.1, metadata={"help": "Label smoothing (FT-SAM: 0.1)."})


def apply_fine_tuning(
    model: PreTrainedModel,
    extractor,
    clean: Dataset,
    config: GNFTConfig,
    validation: Dataset | None = None,
) -> DefenseOutcome:
    """Fine-tune a copy of `model` on `clean` with `GNFTTrainer` under `config` (FT, GN-FT or FT-SAM)."""
    check_clean_subset(clean, "fine-tuning")
    defended = copy_model(model)
    trainer = fine_tune(defended, extractor, clean, config)
    logged = [row for row in trainer.state.log_history if "gn/grad_norm" in row]
    return DefenseOutcome(
        defended,
        {
            "steps": trainer.state.global_step,
            "final_gn_grad_norm": logged[-1]["gn/grad_norm"] if logged else None,
            "log_history": trainer.state.log_history,
        },
    )
