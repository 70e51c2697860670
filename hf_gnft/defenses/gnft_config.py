"""`GNFTConfig`: `TrainingArguments` plus the settings of the gradient-norm penalty."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..perturbation import NORMS
from ..settings import check_numeric_settings

GN_MODES = ("approx", "exact")


@dataclass
class GNFTConfig(TrainingArguments):
    r"""Configuration of [`GNFTTrainer`]: every `TrainingArguments` field, plus the penalty.

    GN-FT (Zhou, Lin, Liu, arXiv 2502.01152) fine-tunes on a small clean set with the loss
    `CE + λ‖∇θ CE‖₂`. In "approx" mode the gradient of that loss is estimated with two passes,
    `g = (1 − α)·∇L(θ) + α·∇L(θ + r·∇L(θ)/‖∇L(θ)‖)` with `α = λ / r`; in "exact" mode it is computed by
    double backprop (a reference: 1.6× the time of "approx" on the tiny models, 1.25× on a base-size one;
    `make bench-gnft`).

    The defaults are the authors' (r = 0.05, α = 0.7). The project's sweep (docs/gnft.md, "GN-FT vs FT: the sweep")
    found no consistent gain from a larger radius, α = 1, a warm-up or per-tensor normalisation, and kept them.

    Parameters that control the penalty:

    > Gradient-norm penalty

        gn_alpha (`float`, *optional*, defaults to `0.7`):
            α = λ / r, the weight of the second-pass gradient. 0 is plain fine-tuning (the stock Trainer step);
            1 is SAM. Values above 1 are allowed (λ > r, e.g. when taking r → 0 at fixed λ).
        gn_radius (`float`, *optional*, defaults to `0.05`):
            r, the radius of the finite-difference step (authors' default 0.05).
        gn_norm (`str`, *optional*, defaults to `"global"`):
            How the first-pass gradient is normalised: `"global"` (‖g‖ over all covered parameters, as in
            the GNP reference code) or `"per_tensor"` (each tensor by its own norm, as in the GN-FT / TSBD
            authors' code; its total step grows with the square root of the number of tensors).
        gn_mode (`str`, *optional*, defaults to `"approx"`):
            `"approx"` (two passes) or `"exact"` (double backprop of CE + λ‖∇CE‖, λ = α·r; single process only,
            needs an attention implementation that double-backprops, e.g. `attn_implementation="eager"`).
        gn_warmup_steps (`float`, *optional*, defaults to `0`):
            Optimizer steps over which α (hence λ) ramps linearly from 0 to `gn_alpha`; a value in (0, 1) is
            a fraction of the total steps. Gradient regularisation can hurt early in training (Zhao et al.,
            ICML 2024), so a warm-up of the penalty is offered.
        gn_adaptive (`bool`, *optional*, defaults to `False`):
            ASAM scaling of the step (Kwon et al., ICML 2021), as FT-SAM uses it: `e = r T² g / ‖T g‖` with
            `T = |θ| + gn_adaptive_eta`, so each weight moves in proportion to its magnitude. "approx" mode only.
        gn_adaptive_eta (`float`, *optional*, defaults to `0.01`):
            η of the ASAM scaling (ASAM's default), which keeps zero weights movable.
        gn_parameters (`str` or `None`, *optional*, defaults to `None`):
            A regular expression over parameter names: only matching trainable parameters are perturbed and
            enter ‖∇θ CE‖ (e.g. `"encoder\\.layers\\.1\\."`). `None` covers every trainable parameter.
    """

    gn_alpha: float = field(default=0.7, metadata={"help": "α = λ / r: weight of the second-pass gradient."})
    gn_radius: float = field(default=0.05, metadata={"help": "r: radius of the finite-difference step."})
    gn_norm: str = field(
        default="global", metadata={"help": "Normalisation of ∇L: 'global' or 'per_tensor'."}
    )
    gn_mode: str = field(
        default="approx", metadata={"help": "'approx' (two passes) or 'exact' (double backprop)."}
    )
    gn_warmup_steps: float = field(
        default=0, metadata={"help": "Steps (or a fraction < 1 of all steps) over which α ramps up from 0."}
    )
    gn_adaptive: bool = field(
        default=False, metadata={"help": "ASAM scaling of the step by |θ| + η (FT-SAM)."}
    )
    gn_adaptive_eta: float = field(default=0.01, metadata={"help": "η of the ASAM scaling."})
    gn_parameters: str | None = field(
        default=None, metadata={"help": "Regex over parameter names covered by the penalty (default: all)."}
    )

    def __post_init__(self) -> None:
        check_numeric_settings(self)  # every number finite and in range, before TrainingArguments reads them
        super().__post_init__()
        if not isinstance(self.gn_alpha, (int, float)) or not self.gn_alpha >= 0:
            raise ValueError(f"gn_alpha must be >= 0 (0 is plain fine-tuning), got {self.gn_alpha!r}")
        if not isinstance(self.gn_radius, (int, float)) or not self.gn_radius > 0:
            raise ValueError(f"gn_radius must be > 0, got {self.gn_radius!r}")
        if self.gn_norm not in NORMS:
            raise ValueError(f"unknown gn_norm {self.gn_norm!r}; use one of {NORMS}")
        if self.gn_mode not in GN_MODES:
            raise ValueError(f"unknown gn_mode {self.gn_mode!r}; use one of {GN_MODES}")
        if not isinstance(self.gn_warmup_steps, (int, float)) or not self.gn_warmup_steps >= 0:
            raise ValueError(f"gn_warmup_steps must be >= 0, got {self.gn_warmup_steps!r}")
        if not isinstance(self.gn_adaptive_eta, (int, float)) or not self.gn_adaptive_eta >= 0:
            raise ValueError(f"gn_adaptive_eta must be >= 0, got {self.gn_adaptive_eta!r}")
        if self.gn_adaptive and self.gn_mode == "exact":
            raise ValueError(
                "gn_adaptive (ASAM scaling) has no exact double-backprop form: use gn_mode='approx'"
            )
        if self.gn_parameters is not None:
            import re

            try:
                re.compile(self.gn_parameters)
            except re.error as err:
                raise ValueError(f"gn_parameters is not a valid regular expression: {err}") from err

    @property
    def gn_lambda(self) -> float:
        """λ = α · r, the weight of ‖∇θ CE‖ in the loss."""
        return self.gn_alpha * self.gn_radius


@dataclass
class DefenseConfig(GNFTConfig):
    """`GNFTConfig` with defaults for cleaning a small keyword model on a small clean set.

    The authors' optimizer: SGD with momentum 0.9 and weight decay 5e-5 (TSBD), cosine schedule;
    20 epochs of batches of 32, learning rate 0.01. Plain fine-tuning with the same budget is `FTConfig` (the
    `ft` defense). `push_to_hub` / `hub_model_id` / `hub_private_repo` push the finished output folder (model, card,
    metrics; never checkpoints) once, at the end; `hub_dry_run` lists what would be pushed. Checkpoints
    (`save_strategy="steps"`) go to `OUTPUT_DIR.partial/` and `resume_from_checkpoint=True` continues
    from the last. The benchmark (docs/gnft.md, "GN-FT vs FT: the sweep") found 0.01 too small for the tiny keyword
    models and recommends choosing the learning rate from clean validation accuracy with a knob search
    ([`search_knob`], `--learning_rate_grid 0.05 0.1`); the defaults stay the authors'.
    """

    output_dir: str | None = field(default=None, metadata={"help": "Where the cleaned model is written."})
    optim: str = field(default="sgd", metadata={"help": "Optimizer (the authors: SGD with momentum)."})
    optim_args: str | None = field(default="momentum=0.9", metadata={"help": "Optimizer arguments."})
    learning_rate: float = field(default=0.01, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=5e-5, metadata={"help": "Weight decay."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    num_train_epochs: float = field(default=20.0, metadata={"help": "Epochs over the clean set."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing strategy."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Loggers to report to."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep `audio` for the collator."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished output folder (once the new one is complete)."}
    )
    hub_dry_run: bool = field(
        default=False, metadata={"help": "List the files a push would upload, and upload nothing."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.push_to_hub and not self.hub_model_id and not self.hub_dry_run:
            raise ValueError("--push_to_hub needs --hub_model_id NAMESPACE/NAME (or --hub_dry_run true)")
