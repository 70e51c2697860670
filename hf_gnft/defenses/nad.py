"""NAD: Neural Attention Distillation (Li, Lyu, Koren, Lyu, Li, Ma, "Neural Attention Distillation: Erasing
Backdoor Triggers from Deep Neural Networks", ICLR 2021).

NAD fine-tunes a copy of the suspect model on the clean subset to get a *teacher*, then trains the suspect
(the *student*) on the same clean data with cross-entropy plus an attention-distillation term that pulls the
student's attention maps towards the teacher's:

    L = CE(student(x), y) + β · Σ_l ‖A(h_l^S) − A(h_l^T)‖₂,   A(h) = normalise_2(mean_c |h_c|^p).

The paper takes the attention maps of CNN residual-group outputs (spatial maps, mean over channels). Here
the distilled features are the outputs of the transformer encoder layers, `hidden_states[l + 1]` of a model
called with `output_hidden_states=True`, of shape (batch, time, hidden): the attention map is the mean of
`|h|^p` over the hidden dimension, a map over time, L2-normalised per example.

Adaptations, beyond the feature maps:

- The teacher runs in eval mode, so it sees the input without the model's own SpecAugment time masking or
  dropout, while the student (train mode) sees them: the paper's teacher is also in eval mode, but its data
  augmentation happens outside the model and is shared. Padded frames are part of the map (the keyword
  clips of the benchmark all have one length).
- Post-LN encoders (Wav2Vec2 / HuBERT base) end every layer in a LayerNorm, which makes `mean_c h_c²` much
  the same in every frame (exactly 1 at initialisation, where γ = 1 and β = 0): the maps over time are
  nearly flat and the distances between them small, so β must be large (see `NADConfig.nad_beta`). The paper uses β in the thousands (5000 on CIFAR-10) for
  its own CNN maps; the default here, 100, was measured to put the attention term at the scale of the
  cross-entropy on the benchmark's tiny Wav2Vec2.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel, TrainingArguments

from ..neurons import UnsupportedModelError, resolve_layer_indices
from ..trainer_args import as_config
from ..training import AudioClassificationTrainer
from .base import DefenseOutcome, check_clean_subset, copy_model, fine_tune
from .gnft_config import DefenseConfig

logger = logging.getLogger(__name__)


@dataclass
class NADConfig(DefenseConfig):
    """Configuration of NAD: `DefenseConfig` (SGD with momentum 0.9, cosine schedule, batches of 32) for the
    student, plus the teacher's budget and the attention-distillation loss.

    `num_train_epochs` / `max_steps` set the student's budget (the paper: 20 epochs); the teacher is trained
    for `nad_teacher_epochs` (the paper: 10) with the same optimizer settings and learning rate.

    Args:
        gn_alpha: 0 (the default) fine-tunes the teacher plainly, as in the paper; a value > 0 gives a
            GN-FT-trained teacher. The student is always trained with `NADTrainer` (CE + attention term).
        nad_teacher_epochs: epochs of plain fine-tuning of the suspect on the clean subset that make the
            teacher (the paper: 10). `max_steps` does not apply to the teacher.
        nad_beta: β, the weight of the attention-distillation term (summed over the distilled layers).
            The default, 100, was measured on the test suite's backdoored tiny Wav2Vec2 (2 encoder layers,
            80 clean clips, teacher fine-tuned 30 steps at lr 0.05): at the start of student training the
            summed AT loss against the teacher is about 0.016 and the cross-entropy about 1.5, so β = 100
            makes the attention term (≈ 1.6) comparable to CE. About 0.012 to 0.016 of the AT loss is a floor
            that training does not remove: the student sees dropout and SpecAugment, the eval-mode teacher
            does not. The paper's β in the thousands belongs to its CNN maps.
        nad_layers: indices of the transformer encoder layers whose outputs are distilled (negative counts
            from the end); `None` distils all of them.
        nad_power: p of the attention map `mean_c |h_c|^p` (the paper: 2).
    """

    gn_alpha: float = field(default=0.0, metadata={"help": "0: the teacher is fine-tuned plainly (NAD)."})
    nad_teacher_epochs: float = field(
        default=10.0, metadata={"help": "Epochs of plain fine-tuning that make the teacher."}
    )
    nad_beta: float = field(default=100.0, metadata={"help": "β: weight of the attention-distillation loss."})
    nad_layers: list[int] | None = field(
        default=None, metadata={"help": "Encoder layer indices to distil (default: all)."}
    )
    nad_power: float = field(default=2.0, metadata={"help": "p of the attention map mean(|h|^p)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.nad_teacher_epochs, (int, float)) or not self.nad_teacher_epochs > 0:
            raise ValueError(f"nad_teacher_epochs must be > 0, got {self.nad_teacher_epochs!r}")
        if not isinstance(self.nad_beta, (int, float)) or not self.nad_beta >= 0:
            raise ValueError(f"nad_beta must be >= 0 (0 is plain fine-tuning), got {self.nad_beta!r}")
        if not isinstance(self.nad_power, (int, float)) or not self.nad_power > 0:
            raise ValueError(f"nad_power must be > 0, got {self.nad_power!r}")
        if self.nad_layers is not None:
            layers = list(self.nad_layers)
            if not layers:
                raise ValueError("nad_layers must name at least one layer (or be None for all layers)")
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
                raise ValueError(f"nad_layers must be integers, got {self.nad_layers!r}")
            self.nad_layers = layers


def attention_map(hidden: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """NAD's attention map of a hidden state of shape (batch, time, hidden): the mean over the hidden
    dimension of `|h|^power`, L2-normalised over time for each example. Returns (batch, time), in float32
    (or float64 for float64 input)."""
    if hidden.dim() != 3:
        raise ValueError(f"expected a hidden state of shape (batch, time, hidden), got {tuple(hidden.shape)}")
    if hidden.dtype not in (torch.float32, torch.float64):
        hidden = hidden.float()
    return F.normalize(hidden.abs().pow(power).mean(dim=-1), p=2, dim=-1)


def attention_transfer_loss(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, power: float = 2.0
) -> torch.Tensor:
    """The AT loss of one layer: the mean over the batch of ‖A(student) − A(teacher)‖₂."""
    difference = attention_map(student_hidden, power) - attention_map(teacher_hidden, power)
    return torch.linalg.vector_norm(difference, ord=2, dim=-1).mean()


def encoder_layer_count(model: nn.Module, defense: str = "NAD") -> int:
    """The number of transformer encoder layers (`config.num_hidden_layers`).

    Raises:
        UnsupportedModelError: the model has no such configuration (the message names the model class).
    """
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(count, int) or count < 1:
        raise UnsupportedModelError(
            f"{defense} distils the outputs of transformer encoder layers (`output_hidden_states=True`, "
            f"`config.num_hidden_layers`), and {type(model).__name__} has none"
        )
    return count


class NADTrainer(AudioClassificationTrainer):
    """Train the student of NAD: `compute_loss` returns `CE + β · Σ_l AT(student_l, teacher_l)`.

    β, the layers and p come from `args` (a [`NADConfig`]; plain `TrainingArguments` get its defaults). The
    teacher is frozen (no gradients), kept in eval mode and moved to the student's device.

    Logged with the training loss: `nad/ce_loss` (the student's cross-entropy), `nad/at_loss` (Σ_l AT, not
    weighted) and `nad/attention_term` (β · Σ_l AT, the part of the loss that is not CE), averaged over the
    micro-batches since the last log.
    """

    # Added to the model (`add_model_tags`), from where `Trainer.push_to_hub` puts them on the model card.
    _tag_names = ["hf-gnft", "nad", "backdoor-defense"]

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        *pos: Any,
        teacher_model: nn.Module,
        **kwargs: Any,
    ) -> None:
        args = as_config(args, NADConfig, "nad-output")
        if teacher_model is None:
            raise ValueError("NADTrainer needs a teacher_model")
        super().__init__(model, args, *pos, **kwargs)
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)
        self.teacher_model = teacher_model
        self.teacher_model.requires_grad_(False)
        self.teacher_model.eval()
        self.teacher_model.to(self.args.device)
        self.nad_layer_indices: list[int] | None = None
        count = getattr(getattr(self.model, "config", None), "num_hidden_layers", None)
        if isinstance(count, int):
            self.nad_layer_indices = resolve_layer_indices(self.args.nad_layers, count)

    def attention_loss(self, student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor]):
        """Σ over the distilled layers of the AT loss (hidden state `l + 1` is the output of layer `l`)."""
        if self.nad_layer_indices is None:
            self.nad_layer_indices = resolve_layer_indices(self.args.nad_layers, len(student_states) - 1)
        return sum(
            attention_transfer_loss(student_states[i + 1], teacher_states[i + 1], self.args.nad_power)
            for i in self.nad_layer_indices
        )

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        labels = inputs.get("labels")
        features = {key: value for key, value in inputs.items() if key != "labels"}
        if self.label_smoother is not None and labels is not None:
            outputs = model(**features, output_hidden_states=True)
            ce = self.label_smoother(outputs, labels)
        else:
            outputs = model(**inputs, output_hidden_states=True)
            ce = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        student_states = outputs.hidden_states
        if student_states is None:
            raise UnsupportedModelError(
                f"NAD needs hidden states (output_hidden_states=True), and {type(model).__name__} returns none"
            )
        if self.teacher_model.training:
            self.teacher_model.eval()
        with torch.no_grad():
            teacher_states = self.teacher_model(**features, output_hidden_states=True).hidden_states
        at_loss = self.attention_loss(student_states, teacher_states)
        attention_term = self.args.nad_beta * at_loss
        loss = ce + attention_term.to(ce.dtype)
        if model.training:
            self._step_metrics["nad/ce_loss"].append(float(ce.detach()))
            self._step_metrics["nad/at_loss"].append(float(at_loss.detach()))
            self._step_metrics["nad/attention_term"].append(float(attention_term.detach()))
        return (loss, outputs) if return_outputs else loss


def _last_logged(log_history: list[dict[str, Any]], key: str) -> float | None:
    rows = [row[key] for row in log_history if key in row]
    return rows[-1] if rows else None


def apply_nad(
    model: PreTrainedModel,
    extractor: Any,
    clean: Dataset,
    config: NADConfig,
    validation: Dataset | None = None,
) -> DefenseOutcome:
    """NAD: fine-tune a copy of `model` on `clean` into the teacher (`nad_teacher_epochs`, plain FT unless
    `gn_alpha > 0`), then train another copy with [`NADTrainer`] under `config`. `model` is not changed.

    `validation` is accepted for the common defense interface and is not used.

    Returns:
        The student, and `info`: steps of teacher and student, β, distilled layers, p, and the last logged
        cross-entropy, attention loss and attention term of the student, and its whole log history.
    """
    check_clean_subset(clean, "NAD")
    if not isinstance(config, NADConfig):
        raise TypeError(f"apply_nad needs a NADConfig, got {type(config).__name__}")
    num_layers = encoder_layer_count(model, "NAD")
    layers = resolve_layer_indices(config.nad_layers, num_layers)

    teacher = copy_model(model)
    teacher_args = copy.deepcopy(config)
    teacher_args.num_train_epochs = config.nad_teacher_epochs
    teacher_args.max_steps = -1
    teacher_args.save_strategy, teacher_args.resume_from_checkpoint = (
        "no",
        None,
    )  # checkpoints are the student's
    teacher_trainer = fine_tune(teacher, extractor, clean, teacher_args)

    student = copy_model(model)
    trainer = fine_tune(student, extractor, clean, config, trainer_class=NADTrainer, teacher_model=teacher)
    history = trainer.state.log_history
    info = {
        "defense": "nad",
        "teacher_steps": teacher_trainer.state.global_step,
        "steps": trainer.state.global_step,
        "nad_beta": float(config.nad_beta),
        "nad_layers": layers,
        "nad_power": float(config.nad_power),
        "teacher_gn_alpha": float(config.gn_alpha),
        "final_ce_loss": _last_logged(history, "nad/ce_loss"),
        "final_at_loss": _last_logged(history, "nad/at_loss"),
        "final_attention_term": _last_logged(history, "nad/attention_term"),
        "log_history": history,
    }
    return DefenseOutcome(student, info)
