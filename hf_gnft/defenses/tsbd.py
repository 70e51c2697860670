"""TSBD: Two-Stage Backdoor Defense (Lin, Zhou, Liu et al., "Unveiling and Mitigating Backdoor Vulnerabilities
based on Unlearning Weight Changes and Backdoor Activeness", NeurIPS 2024, arXiv 2405.20291).

Stage 1, NWC-based backdoor reinitialisation. A copy of the suspect is *unlearned* on the clean subset (gradient
ascent on the cross-entropy) until its clean accuracy falls to a floor. The neurons whose weights moved most
during that unlearning (neuron weight change, NWC: the L1 norm of the change of a neuron's weights) are taken
for backdoor neurons: the paper observes that clean and poison unlearning move the same neurons. In the top
`tsbd_neuron_ratio` of neurons, the `tsbd_weight_ratio` most-changed weights are set to zero on the *original*
suspect (the unlearned copy is discarded). Stage 2, activeness-aware fine-tuning, is GN-FT on the clean subset:
[`GNFTTrainer`] with this config's inherited `TrainingArguments` and `gn_*` fields, the same update.

Facts from the authors' released code (`linweiii/TSBD`: `tsbd.py`, `tsbd/config.yaml`), followed here:

- unlearning: SGD, `lr_un = 1e-4`, momentum 0.9, no weight decay, model in train mode, every parameter
  updated; after each epoch over the clean data the clean accuracy (eval mode, same clean data) is measured,
  and unlearning stops once it is at most 10% (`epochs: 1000` caps it);
- the NWC score of a neuron is `(W_unlearned - W_original)[k].abs().sum()` over the weight slice of output unit
  k (biases are neither scored nor zeroed), for every target layer (`layer_type: conv`: every convolution but
  the shortcuts);
- one ranking of all neurons of all target layers, largest score first; the top `int(n · total)` are chosen;
- zeroing: the weight changes of the chosen neurons are pooled and the `int(m · pooled)` largest are set to 0
  (`m: 0.7`). `tsbd_weight_scope="per_neuron"` zeroes each chosen neuron's own `int(m · fan_in)` largest
  instead. Ties go to the earlier position, so exactly that many are zeroed (the authors' threshold
  comparison would also zero tied ones);
- stage 2: `lr_ft = 0.01`, SGD momentum 0.9, `r = 0.05`, `α = 0.7`, 20 (+1) epochs, each tensor's step
  normalised by its own norm, no weight decay or schedule in the code. Here stage 2 takes the project's
  [`DefenseConfig`] defaults, which differ in global normalisation (`gn_norm="per_tensor"` is theirs) and in a
  cosine schedule and weight decay 5e-5 (both listed in their config file);
- n is not fixed: the released script sweeps `n ∈ {1%, 5%, 10%, ..., 90%}` and reports each. Here it is
  `tsbd_neuron_ratio`, the knob the defender tunes on clean validation data (default 5%, a project choice).

Adaptation to speech transformers (the paper's neurons are CNN output channels). A neuron is an output unit of a
weight layer, its weight slice `W[k]` being its incoming weights ([`hf_gnft.neurons.weight_neuron_layers`]);
`tsbd_neuron_kinds` picks the layers:

- `"feed_forward"`: each encoder layer's feed-forward hidden neurons (rows of `intermediate_dense`), the units
  fine-pruning, ANP and CLP use;
- `"attention_output"`: each self-attention block's output units (rows of `out_proj`), which write the attention
  result into the residual stream (the transformer's other place where a trigger's feature can be routed);
- `"conv"`: the output channels of the convolutional feature encoder (`conv_layers.*.conv`, weight slice
  `(in_channels, kernel)`), the direct counterpart of the paper's CNN channels;
- `"feed_forward_output"` (rows of `output_dense`) is offered, not a default;
- `"conv2d"`: every `Conv2d`'s output channels, for the GN-FT paper's MFCC networks (`hf_gnft.mfcc_models`): the
  authors' own TSBD on these models ranks exactly their `Conv2d` channels (shortcut convolutions included, the
  classifier and any LSTM or Linear layer never), so `rnn`, which has no convolution, has no TSBD neurons
  (an `UnsupportedModelError`, as in their code, where it has none either); `lstmwithattention` has 11.

The three default kinds are ranked together, as the authors rank all their convolutions together, by the raw L1
sum (a neuron with more incoming weights can score higher, as in the paper's network). On the test suite's tiny
Wav2Vec2 with a planted noise-burst backdoor the top 5% were all feature-encoder channels; TSBD then removed the
backdoor (ASR 1.0 → 0.0, CA 1.0, after 20 steps of GN-FT) where FT, GN-FT, and zeroing as many random weights of
the same layers before GN-FT kept it (ASR 1.0).
On the session's backdoored tiny Wav2Vec2 of the tests (synthetic keywords, 10 classes, CA 0.38 / ASR 0.82; 80
clean clips, lr 0.05, 20 epochs) n = 5% gave ASR 0.14 at CA 0.36, FT 0.46 / 0.36 and GN-FT 0.49 / 0.39; larger n
cost clean accuracy (10%: CA 0.23). Feed-forward and attention neurons entered the top only from n = 30%.

The floor. The paper's 10% is chance on CIFAR-10, and unlearning drives a model to a constant prediction (on the
planted backdoor of the tests: the target), i.e. to chance: a floor below chance is rarely reached (measured: a
4-class model stayed at 25%). So the default floor is chance, `1 / num_labels` (0.10 for 10 classes); set
`tsbd_accuracy_floor` for another value. If the floor is not reached within `tsbd_max_unlearning_steps`
(a clean model, whose loss is near zero, barely moves under gradient ascent), or the loss stops being finite,
unlearning stops there, the weight changes so far are ranked, and `info` records `reached_floor=False` and why
it stopped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel, set_seed

from ..neurons import WEIGHT_NEURON_KINDS, NeuronLayer, weight_neuron_layers
from ..training import audio_batches, evaluate_backdoor
from .base import DefenseOutcome, check_clean_subset, copy_model, fine_tune, is_finite_number
from .gnft_config import DefenseConfig

logger = logging.getLogger(__name__)

DEFENSE_NAME = "TSBD"
NEURON_KINDS = tuple(WEIGHT_NEURON_KINDS)
DEFAULT_NEURON_KINDS = ("feed_forward", "attention_output", "conv", "conv2d")
WEIGHT_SCOPES = ("pooled", "per_neuron")

# accuracies are fractions of a finite set; this absorbs float rounding in "accuracy <= floor"
_EPSILON = 1e-9


@dataclass
class TSBDConfig(DefenseConfig):
    """Configuration of TSBD: [`DefenseConfig`] (stage 2: GN-FT with the authors' r = 0.05, α = 0.7, SGD with
    momentum 0.9) plus stage 1. `seed` (a `TrainingArguments` field) also seeds the unlearning (batch order,
    dropout).

    Args:
        tsbd_unlearning_rate (`float`, *optional*, defaults to `1e-4`):
            Learning rate of the gradient-ascent unlearning (SGD, momentum 0.9; the authors' `lr_un`).
        tsbd_accuracy_floor (`float`, *optional*):
            Unlearning stops after the first epoch whose clean accuracy (eval mode, on the clean subset) is at
            most this. Unset: chance, `1 / num_labels` (the paper's 10% on 10 classes).
        tsbd_max_unlearning_steps (`int`, *optional*, defaults to `2000`):
            The most unlearning steps (one batch each); unlearning that has not reached the floor by then stops
            and its weight changes are used as they are.
        tsbd_unlearning_batch_size (`int`, *optional*):
            Clean clips per unlearning step; `per_device_train_batch_size` when unset.
        tsbd_neuron_ratio (`float`, *optional*, defaults to `0.05`):
            n: the fraction of all neurons (largest weight change first) whose weights are zeroed; the knob the
            defender tunes.
        tsbd_weight_ratio (`float`, *optional*, defaults to `0.7`):
            m: the fraction of the chosen neurons' weights (largest change first) set to zero (the authors' m).
        tsbd_weight_scope (`str`, *optional*, defaults to `"pooled"`):
            `"pooled"` (the authors' code: the chosen neurons' weight changes are ranked together) or
            `"per_neuron"` (each chosen neuron loses its own m fraction).
        tsbd_neuron_kinds (`list[str]`, *optional*, defaults to `["feed_forward", "attention_output", "conv", "conv2d"]`):
            The layers whose neurons are scored (see the module docs); a model has the first three (a speech
            transformer) or the last (a CNN on MFCCs).
        tsbd_fine_tune (`bool`, *optional*, defaults to `True`):
            Run stage 2 (GN-FT with this config's training arguments) after the zeroing.
    """

    tsbd_unlearning_rate: float = field(
        default=1e-4,
        metadata={"help": "Learning rate of the gradient-ascent unlearning (SGD, momentum 0.9)."},
    )
    tsbd_accuracy_floor: float | None = field(
        default=None,
        metadata={
            "help": "Unlearning stops once clean accuracy is at most this (default: chance, 1/num_labels)."
        },
    )
    tsbd_max_unlearning_steps: int = field(
        default=2000, metadata={"help": "The most unlearning steps, if the floor is not reached first."}
    )
    tsbd_unlearning_batch_size: int | None = field(
        default=None, metadata={"help": "Clips per unlearning step (default: per_device_train_batch_size)."}
    )
    tsbd_neuron_ratio: float = field(
        default=0.05, metadata={"help": "n: fraction of neurons (largest weight change first) to reset."}
    )
    tsbd_weight_ratio: float = field(
        default=0.7, metadata={"help": "m: fraction of the chosen neurons' weights set to zero."}
    )
    tsbd_weight_scope: str = field(
        default="pooled", metadata={"help": "'pooled' (the authors' code) or 'per_neuron'."}
    )
    tsbd_neuron_kinds: list[str] = field(
        default_factory=lambda: list(DEFAULT_NEURON_KINDS),
        metadata={"help": f"Layers whose neurons are scored: some of {', '.join(NEURON_KINDS)}."},
    )
    tsbd_fine_tune: bool = field(default=True, metadata={"help": "Run stage 2 (GN-FT) after the zeroing."})

    def __post_init__(self) -> None:
        super().__post_init__()

        def ratio(name: str, low_closed: bool, high_closed: bool) -> None:
            value = getattr(self, name)
            if not (
                is_finite_number(value)
                and (0 <= value if low_closed else 0 < value)
                and (value <= 1 if high_closed else value < 1)
            ):
                interval = f"{'[' if low_closed else '('}0, 1{']' if high_closed else ')'}"
                raise ValueError(f"{name} must be in {interval}, got {value!r}")

        ratio("tsbd_neuron_ratio", low_closed=False, high_closed=True)
        ratio("tsbd_weight_ratio", low_closed=False, high_closed=True)
        if self.tsbd_accuracy_floor is not None:
            ratio("tsbd_accuracy_floor", low_closed=True, high_closed=False)
        rate = self.tsbd_unlearning_rate
        if not (is_finite_number(rate) and rate > 0):
            raise ValueError(f"tsbd_unlearning_rate must be a number > 0, got {rate!r}")
        for name in ("tsbd_max_unlearning_steps", "tsbd_unlearning_batch_size"):
            value = getattr(self, name)
            if value is None and name == "tsbd_unlearning_batch_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.tsbd_weight_scope not in WEIGHT_SCOPES:
            raise ValueError(
                f"unknown tsbd_weight_scope {self.tsbd_weight_scope!r}; use one of {', '.join(WEIGHT_SCOPES)}"
            )
        kinds = self.tsbd_neuron_kinds
        if isinstance(kinds, str) or not isinstance(kinds, (list, tuple)) or not kinds:
            raise ValueError(f"tsbd_neuron_kinds must be a non-empty list of {NEURON_KINDS}, got {kinds!r}")
        unknown = [kind for kind in kinds if kind not in NEURON_KINDS]
        if unknown:
            raise ValueError(f"unknown tsbd_neuron_kinds {unknown}; use some of {', '.join(NEURON_KINDS)}")
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"tsbd_neuron_kinds names a kind twice: {list(kinds)}")


def tsbd_neuron_layers(model: nn.Module, kinds: list[str]) -> list[NeuronLayer]:
    """The layers whose output units TSBD scores, in module order.

    Raises:
        UnsupportedModelError: the model has none of these kinds (the message names its class).
    """
    return weight_neuron_layers(model, kinds, defense=DEFENSE_NAME)


# ---------------------------------------------------------------------------------------------- stage 1


def accuracy_floor(model: nn.Module, clean: Dataset, config: TSBDConfig) -> float:
    """`tsbd_accuracy_floor`, or chance (`1 / num_labels` of the model's config; of the clean labels' range
    when the model has no config) when it is unset."""
    if config.tsbd_accuracy_floor is not None:
        return float(config.tsbd_accuracy_floor)
    num_labels = getattr(getattr(model, "config", None), "num_labels", None) or max(clean["label"]) + 1
    return 1.0 / num_labels


def unlearn(model: nn.Module, extractor: Any, clean: Dataset, config: TSBDConfig) -> dict[str, Any]:
    """Clean unlearning of `model`, in place: gradient ascent on the cross-entropy over `clean` (SGD with
    momentum 0.9, learning rate `tsbd_unlearning_rate`, model in train mode, batches shuffled with `seed`).
    After each epoch the clean accuracy is measured (eval mode); unlearning stops at the first epoch at or below
    the floor ([`accuracy_floor`]), after `tsbd_max_unlearning_steps` steps, or before a step whose loss is not
    finite. The model's train/eval mode is restored. Like the Trainer, it seeds the global random number
    generators with `seed` (dropout and SpecAugment masks), so the same call moves the same weights.

    Returns:
        A record: steps and epochs run, the floor, the accuracy before and at the end, whether the floor was
        reached, why unlearning stopped (`"floor"`, `"max_steps"` or `"diverged"`) and the accuracy curve.
    """
    floor = accuracy_floor(model, clean, config)
    batch_size = config.tsbd_unlearning_batch_size or config.per_device_train_batch_size
    eval_batch_size = config.per_device_eval_batch_size
    first = next(model.parameters())
    set_seed(config.seed)  # dropout / SpecAugment masks, as the Trainer seeds stage 2
    batches = audio_batches(
        clean,
        extractor,
        batch_size,
        shuffle_seed=config.seed,
        repeat=True,
        device=first.device,
        dtype=first.dtype,
    )
    steps_per_epoch = math.ceil(len(clean) / batch_size)
    optimizer = torch.optim.SGD(
        [param for param in model.parameters() if param.requires_grad],
        lr=config.tsbd_unlearning_rate,
        momentum=0.9,
    )
    start_accuracy = accuracy = float(
        evaluate_backdoor(model, extractor, clean, batch_size=eval_batch_size).clean_accuracy
    )
    curve: list[dict[str, float]] = [{"step": 0, "accuracy": accuracy}]
    steps = epochs = 0
    stopped_by = "floor"
    was_training = model.training
    try:
        while accuracy > floor + _EPSILON:
            if steps >= config.tsbd_max_unlearning_steps:
                stopped_by = "max_steps"
                break
            model.train()
            losses = []
            for _ in range(min(steps_per_epoch, config.tsbd_max_unlearning_steps - steps)):
                batch = next(batches)
                labels = batch.pop("labels")
                loss = F.cross_entropy(model(**batch).logits.float(), labels)
                if not torch.isfinite(loss):
                    stopped_by = "diverged"
                    break
                optimizer.zero_grad(set_to_none=True)
                (-loss).backward()
                optimizer.step()
                steps += 1
                losses.append(loss.item())
            epochs += 1
            accuracy = float(
                evaluate_backdoor(model, extractor, clean, batch_size=eval_batch_size).clean_accuracy
            )
            curve.append({"step": steps, "accuracy": accuracy, "loss": sum(losses) / max(len(losses), 1)})
            logger.info("TSBD unlearning: step %d, clean accuracy %.4f", steps, accuracy)
            if stopped_by == "diverged":
                break
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)
    reached = accuracy <= floor + _EPSILON
    if reached:
        stopped_by = "floor"
    elif stopped_by == "floor":
        stopped_by = "max_steps"
    if not reached:
        logger.warning(
            "TSBD: unlearning stopped (%s) after %d steps at clean accuracy %.4f, above the floor %.4f; the "
            "weight changes so far are used",
            stopped_by,
            steps,
            accuracy,
            floor,
        )
    return {
        "unlearning_steps": steps,
        "unlearning_epochs": epochs,
        "accuracy_floor": floor,
        "accuracy_before_unlearning": start_accuracy,
        "accuracy_after_unlearning": accuracy,
        "reached_floor": reached,
        "unlearning_stopped_by": stopped_by,
        "unlearning_curve": curve,
    }


def neuron_weight_changes(original: list[torch.Tensor], unlearned: list[torch.Tensor]) -> list[torch.Tensor]:
    """`|W_unlearned − W_original|` per layer, one row per neuron: a `(num_neurons, fan_in)` float64 tensor each,
    on the CPU.

    Raises:
        ValueError: a change is not finite (the unlearning overflowed: lower `tsbd_unlearning_rate`).
    """
    changes = []
    for before, after in zip(original, unlearned, strict=True):
        change = (after.detach().double() - before.detach().double()).abs().reshape(before.shape[0], -1).cpu()
        if not torch.isfinite(change).all():
            raise ValueError(
                "the unlearned weights are not finite (gradient ascent overflowed): lower tsbd_unlearning_rate"
            )
        changes.append(change)
    return changes


def weights_to_zero(
    changes: list[torch.Tensor], neuron_ratio: float, weight_ratio: float, scope: str = "pooled"
) -> list[torch.Tensor]:
    """The weights TSBD sets to zero, as one boolean mask per layer, of the shape of its `changes` entry.

    Neurons (rows) are ranked over all layers together by their NWC score, the sum of their weight changes,
    largest first, and the top `int(neuron_ratio · total)` are chosen. Of their weights, the
    `int(weight_ratio · count)` largest changes are chosen: over all chosen neurons together (`"pooled"`, the
    authors' code) or within each chosen neuron (`"per_neuron"`). Ties go to the earlier layer, neuron and
    weight (stable sorts), so exactly that many are chosen.
    """
    if scope not in WEIGHT_SCOPES:
        raise ValueError(f"unknown scope {scope!r}; use one of {', '.join(WEIGHT_SCOPES)}")
    masks = [torch.zeros(change.shape, dtype=torch.bool) for change in changes]
    scores = torch.cat([change.sum(dim=1) for change in changes])
    layer_of = torch.cat([torch.full((change.shape[0],), i) for i, change in enumerate(changes)])
    neuron_of = torch.cat([torch.arange(change.shape[0]) for change in changes])
    top = torch.sort(scores, descending=True, stable=True).indices[: int(neuron_ratio * scores.numel())]
    chosen = [(int(layer_of[i]), int(neuron_of[i])) for i in top]
    if not chosen:
        return masks
    if scope == "per_neuron":
        for layer, neuron in chosen:
            row = changes[layer][neuron]
            count = int(weight_ratio * row.numel())
            masks[layer][neuron, torch.sort(row, descending=True, stable=True).indices[:count]] = True
        return masks
    chosen.sort()  # pool in (layer, neuron) order, so ties go to the earlier position
    pooled = torch.cat([changes[layer][neuron] for layer, neuron in chosen])
    selected = torch.zeros(pooled.numel(), dtype=torch.bool)
    selected[
        torch.sort(pooled, descending=True, stable=True).indices[: int(weight_ratio * pooled.numel())]
    ] = True
    offset = 0
    for layer, neuron in chosen:
        width = changes[layer].shape[1]
        masks[layer][neuron] = selected[offset : offset + width]
        offset += width
    return masks


# ---------------------------------------------------------------------------------------------- defense


def apply_tsbd(
    model: PreTrainedModel,
    extractor: Any,
    clean: Dataset,
    config: TSBDConfig | None = None,
    validation: Dataset | None = None,
) -> DefenseOutcome:
    """TSBD (Lin et al., NeurIPS 2024) on a copy of `model`; `model` itself is left unchanged.

    1. Unlearn a copy on `clean` ([`unlearn`]) and score every neuron of `tsbd_neuron_kinds` by the L1 change of
       its weights ([`neuron_weight_changes`]).
    2. On a fresh copy of the original, zero the chosen weights ([`weights_to_zero`]); then GN-FT on `clean`
       with `config` when `tsbd_fine_tune`.

    `validation` is accepted for the common defense interface and is not used (the floor is measured on the
    clean subset, as the authors do).

    Returns:
        A [`DefenseOutcome`] whose `info` holds the unlearning record (steps, floor, accuracy before and after,
        whether the floor was reached, the curve), the neurons and weights zeroed per kind and per layer, and
        stage 2's steps and log.

    Raises:
        DefenseInputError: the clean subset is empty.
        UnsupportedModelError: the model has no layer of the chosen kinds (the message names its class).
        ValueError: the unlearned weights are not finite.
    """
    config = config if config is not None else TSBDConfig()
    if not isinstance(config, TSBDConfig):
        raise TypeError(f"apply_tsbd needs a TSBDConfig, got {type(config).__name__}")
    check_clean_subset(clean, DEFENSE_NAME)
    kinds = list(config.tsbd_neuron_kinds)
    original_layers = tsbd_neuron_layers(model, kinds)  # refuses an unsupported model before any copy

    unlearned = copy_model(model)
    record = unlearn(unlearned, extractor, clean, config)
    changes = neuron_weight_changes(
        [layer.weight for layer in original_layers],
        [layer.weight for layer in tsbd_neuron_layers(unlearned, kinds)],
    )
    del unlearned
    masks = weights_to_zero(
        changes, config.tsbd_neuron_ratio, config.tsbd_weight_ratio, config.tsbd_weight_scope
    )

    defended = copy_model(model)
    per_layer = []
    with torch.no_grad():
        for layer, mask in zip(tsbd_neuron_layers(defended, kinds), masks, strict=True):
            layer.weight.masked_fill_(mask.to(layer.weight.device).reshape(layer.weight.shape), 0.0)
            per_layer.append(
                {
                    "name": layer.name,
                    "kind": layer.kind,
                    "num_neurons": layer.num_neurons,
                    "neurons": torch.nonzero(mask.any(dim=1)).flatten().tolist(),
                    "weights_zeroed": int(mask.sum()),
                }
            )
    per_kind = {
        kind: {
            "total_neurons": sum(row["num_neurons"] for row in per_layer if row["kind"] == kind),
            "neurons": sum(len(row["neurons"]) for row in per_layer if row["kind"] == kind),
            "weights_zeroed": sum(row["weights_zeroed"] for row in per_layer if row["kind"] == kind),
        }
        for kind in kinds
    }
    info: dict[str, Any] = {
        "defense": "tsbd",
        **record,
        "neuron_ratio": config.tsbd_neuron_ratio,
        "weight_ratio": config.tsbd_weight_ratio,
        "weight_scope": config.tsbd_weight_scope,
        "neurons_zeroed": sum(row["neurons"] for row in per_kind.values()),
        "weights_zeroed": sum(row["weights_zeroed"] for row in per_kind.values()),
        "per_kind": per_kind,
        "layers": per_layer,
        "fine_tuned": bool(config.tsbd_fine_tune),
        "fine_tune_steps": 0,
    }
    if config.tsbd_fine_tune:
        trainer = fine_tune(defended, extractor, clean, config)
        info["fine_tune_steps"] = trainer.state.global_step
        info["log_history"] = list(trainer.state.log_history)
    defended.eval()
    return DefenseOutcome(defended, info)
