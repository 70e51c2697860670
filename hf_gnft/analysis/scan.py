"""A first answer, from clean data alone, to "is this downloaded model backdoored?".

The defender has the suspect and some clean labelled clips, and does not know the trigger. The scan measures
gradients on those clips and turns them into statistics (all are reported; one makes the verdict):

* `gradient_tail`: the heavy tail of the per-neuron gradient profile (GN-FT's observation): per layer, the
  mean of the top 1% of neurons' gradient magnitudes over the median; the largest over the layers.
* `gradient_kurtosis`: the largest excess kurtosis of a layer's per-neuron gradient profile.
* `class_gradient_norm_ratio`: for each class c, the gradient that pushes the other classes' clips towards c
  (cross-entropy against c). A backdoor is a shortcut to its target, so the target may stand out. The statistic
  is the largest class's total gradient norm over the median class's; that class is the suspected target.
* `class_gradient_tail_ratio`: the same for the heavy tail of each class's per-neuron profile (the largest
  layer tail ratio): a shortcut through a few neurons concentrates the gradient on them.
* `input_gradient_coherence_ratio`: for each class c, how much the input gradients towards c agree across clips
  (the norm of the mean of the unit-normalised per-clip gradients, 0 to 1). A trigger is one pattern that sends
  every clip to the target, so the target's gradients may share a direction. The statistic is the largest
  class's coherence over the median class's.

* `universal_perturbation_gap`: for each class c, one additive perturbation shared by all clips, far quieter than the
  built-in triggers (L2 radius 0.01 · sqrt(length) of the normalised input, −40 dB), optimised for a few steps to send the
  other classes' clips to c (the additive trigger inversion of `hf_gnft.inversion`, which purification shares); the
  fraction of held-out clips it sends to c. A backdoor's target is unusually easy to reach. The statistic is the largest class's fraction
  minus the median class's; that class is the suspected target.

What separates backdoored from clean models is measured by `benchmarks/scan_validation.py` on tiny models (every
built-in trigger, several seeds, clean models trained on the same data); the shipped calibration
(`scan_calibration.json`) records the verdict's statistic, its threshold and how well it did. A calibration
holds for the kind of model and data it was measured on: for other models, calibrate on clean models of your own
(`calibrate_threshold`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm

from ..inversion import input_name, invert_additive
from ..neurons import resolve_layers
from ..training import audio_batches
from .gradients import gradients_for

STATISTICS = (
    "gradient_tail",
    "gradient_kurtosis",
    "class_gradient_norm_ratio",
    "class_gradient_tail_ratio",
    "input_gradient_coherence_ratio",
    "universal_perturbation_gap",
)
#: class-wise statistic -> the per-class value it compares
CLASS_VALUES = {
    "class_gradient_norm_ratio": "gradient_norm",
    "class_gradient_tail_ratio": "gradient_tail",
    "input_gradient_coherence_ratio": "input_gradient_coherence",
}
CALIBRATION_FILE = "scan_calibration.json"


class ScanError(ValueError):
    """The scan cannot run on the input it was given."""


@dataclass
class ScanCalibration:
    """The statistic that makes the verdict, its threshold, and where they come from.

    Args:
        statistic: one of `STATISTICS`.
        threshold: a model whose statistic exceeds it is reported as suspicious.
        source: what the threshold was calibrated on (models, data, command).
        auroc: separation of backdoored and clean models measured there, if known.
        false_positive_rate: fraction of clean models above the threshold there, if known.
        detection_rate: fraction of backdoored models above the threshold there, if known.
        extra: further measurements of the calibration (e.g. its held-out AUROC and rates).
    """

    statistic: str
    threshold: float
    source: str = ""
    auroc: float | None = None
    false_positive_rate: float | None = None
    detection_rate: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ScanError(f"unknown scan statistic {self.statistic!r}; use one of {STATISTICS}")
        if not math.isfinite(float(self.threshold)):
            raise ScanError(f"the scan threshold must be finite, got {self.threshold!r}")

    @classmethod
    def from_json(cls, path: str | Path) -> ScanCalibration:
        return cls(**json.loads(Path(path).read_text()))

    @classmethod
    def shipped(cls) -> ScanCalibration:
        """The calibration measured by `benchmarks/scan_validation.py` on the tiny models (see its `source`)."""
        text = resources.files("hf_gnft.analysis").joinpath(CALIBRATION_FILE).read_text()
        return cls(**json.loads(text))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScanResult:
    """The scan of one model.

    Args:
        statistics: every statistic of `STATISTICS`.
        per_class: class name -> its targeted gradient norm, gradient tail ratio and input-gradient coherence.
        suspected_target: the class the verdict's statistic points at (if it is class-wise).
        suspected_targets: class-wise statistic -> the class with the largest value.
        calibration: the verdict's statistic and threshold.
        score: the verdict's statistic.
        suspicious: whether the score exceeds the threshold.
        verdict: the result in plain words.
        seconds: wall time of the scan.
        num_clips: clean clips used.
    """

    statistics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    suspected_target: str | None
    calibration: ScanCalibration
    score: float
    suspicious: bool
    verdict: str
    seconds: float
    num_clips: int
    suspected_targets: dict[str, str] = field(default_factory=dict)
    layer_tails: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["calibration"] = self.calibration.to_dict()
        return out


def max_over_median(values: Sequence[float]) -> tuple[float, int]:
    """The largest value over the median one, and the largest one's index."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.max() / max(float(np.median(array)), 1e-30)), int(array.argmax())


def tail_ratio(values: torch.Tensor, fraction: float = 0.01) -> float:
    """Mean of the top `fraction` of the values (at least 2) over their median."""
    values = values.double().flatten()
    k = max(2, int(round(fraction * values.numel())))
    top = torch.topk(values, min(k, values.numel())).values.mean()
    return float(top / values.median().clamp_min(1e-30))


def excess_kurtosis(values: torch.Tensor) -> float:
    values = values.double().flatten()
    centred = values - values.mean()
    variance = centred.pow(2).mean()
    if variance <= 0:
        return 0.0
    return float(centred.pow(4).mean() / variance.pow(2) - 3.0)


def _class_pass(
    model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], weights: list[torch.Tensor]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-neuron gradient magnitudes of `weights` (batch-mean loss, averaged over batches) and the mean of
    the unit-normalised per-clip input gradients, for the loss against each batch's `labels`."""
    sums = [torch.zeros(w.shape[0], dtype=torch.float64) for w in weights]
    direction = None
    count = 0
    name = input_name(model)
    for batch in batches:
        inputs = batch[name].detach().requires_grad_(True)
        extra = {key: value for key, value in batch.items() if key not in (name, "labels")}
        logits = model(**{name: inputs}, **extra).logits.float()
        loss = F.cross_entropy(logits, batch["labels"], reduction="sum")
        size = batch["labels"].shape[0]
        grads = torch.autograd.grad(loss, [*weights, inputs])
        for position, grad in enumerate(grads[:-1]):
            # the gradient of the batch-mean loss is the sum's over the batch size
            sums[position] += grad.detach().abs().reshape(grad.shape[0], -1).sum(1).double().cpu()
        unit = F.normalize(grads[-1].detach().reshape(size, -1).double(), dim=1).sum(0).cpu()
        direction = unit if direction is None else direction + unit
        count += size
    return [total / count for total in sums], direction / count


def scan_model(
    model: nn.Module,
    extractor: Any,
    clean: Dataset,
    *,
    layers: Sequence[str] | None = None,
    calibration: ScanCalibration | None = None,
    max_clips: int | None = 200,
    batch_size: int = 32,
    label_column: str = "label",
    universal_steps: int = 20,
    universal_budget: float = 0.01,
    progress: bool = True,
) -> ScanResult:
    """Scan `model` for a backdoor from the clean labelled clips `clean` (see the module docs).

    Args:
        layers: the layers whose neurons are profiled (default: feed-forward neurons and projector).
        calibration: the verdict's statistic and threshold (default: `ScanCalibration.shipped()`).
        max_clips: clean clips used (drawn with a fixed seed when `clean` has more); `None` for all.
        universal_steps: optimisation steps of each class's universal perturbation (0: skip that statistic).
        universal_budget: the perturbation's L2 radius over the square root of the clip length (0.01: −40 dB of
            a normalised clip's energy, well below the built-in triggers; at 0.03 and 0.1 clean tiny models could
            already be pushed to some class for 40–98% of clips).

    Raises:
        ScanError: fewer than 2 classes, or no clips.
        UnknownLayerError: a layer name the model does not have.
    """
    started = time.perf_counter()
    calibration = calibration or ScanCalibration.shipped()
    chosen = resolve_layers(model, layers)
    if max_clips is not None and len(clean) > max_clips:
        clean = clean.shuffle(seed=0).select(range(max_clips))
    if len(clean) == 0:
        raise ScanError("the scan needs clean clips, and the clean set is empty")
    names = clean.features[label_column].names
    labels = np.asarray(clean[label_column])
    if len(names) < 2:
        raise ScanError("the scan compares classes: the model must have at least 2")
    device = next(model.parameters()).device
    weights = [layer.module.weight for layer in chosen]
    batching = {"device": device, "dtype": weights[0].dtype}
    per_class: dict[str, dict[str, float]] = {}
    with gradients_for(model, weights):
        own, _ = _class_pass(model, audio_batches(clean, extractor, batch_size, **batching), weights)
        for index in tqdm(range(len(names)), desc="Scanning classes", disable=not progress):
            others = np.flatnonzero(labels != index)
            if others.size == 0:
                continue
            # the other classes' clips labelled as this class, decoded once for both passes
            batches = list(
                audio_batches(clean.select(others), extractor, batch_size, labels=index, **batching)
            )
            profile, direction = _class_pass(model, batches, weights)
            per_class[names[index]] = {
                "gradient_norm": float(torch.cat(profile).norm()),
                "gradient_tail": max(tail_ratio(values) for values in profile),
                "input_gradient_coherence": float(direction.norm()),
            }
            if universal_steps > 0:
                per_class[names[index]]["universal_success"] = invert_additive(
                    model, batches, index, universal_steps, universal_budget
                ).success
    layer_tails = {layer.name: tail_ratio(values) for layer, values in zip(chosen, own, strict=True)}
    classes = list(per_class)
    statistics = {
        "gradient_tail": max(layer_tails.values()),
        "gradient_kurtosis": max(excess_kurtosis(values) for values in own),
    }
    suspected_targets = {}
    for statistic, key in CLASS_VALUES.items():
        ratio, position = max_over_median([per_class[c][key] for c in classes])
        statistics[statistic] = ratio
        suspected_targets[statistic] = classes[position]
    if universal_steps > 0:
        success = np.array([per_class[c]["universal_success"] for c in classes])
        statistics["universal_perturbation_gap"] = float(success.max() - np.median(success))
        suspected_targets["universal_perturbation_gap"] = classes[int(success.argmax())]
    if calibration.statistic not in statistics:
        raise ScanError(f"the verdict's statistic {calibration.statistic!r} needs universal_steps > 0")
    suspected = suspected_targets.get(calibration.statistic)
    score = statistics[calibration.statistic]
    suspicious = score > calibration.threshold
    return ScanResult(
        statistics=statistics,
        per_class=per_class,
        suspected_target=suspected,
        calibration=calibration,
        score=score,
        suspicious=suspicious,
        verdict=verdict_text(score, suspicious, calibration, suspected),
        seconds=time.perf_counter() - started,
        num_clips=len(clean),
        suspected_targets=suspected_targets,
        layer_tails=layer_tails,
    )


def verdict_text(score: float, suspicious: bool, calibration: ScanCalibration, target: str | None) -> str:
    """The scan's result in plain words, with what it does and does not mean."""
    measured = ""
    if calibration.false_positive_rate is not None and calibration.detection_rate is not None:
        measured = (
            f" (where it was calibrated, {100 * calibration.detection_rate:.0f}% of backdoored and "
            f"{100 * calibration.false_positive_rate:.0f}% of clean models scored above it)"
        )
    comparison = f"{calibration.statistic} = {score:.3g}, threshold {calibration.threshold:.3g}{measured}"
    if suspicious:
        towards = f"; the suspected target class is {target!r}" if target else ""
        return (
            f"SUSPICIOUS: {comparison}{towards}. Treat the model as backdoored until a defense (e.g. "
            "`hf-gnft defend --defense purify`) and a trigger-specific test say otherwise."
        )
    return (
        f"NO EVIDENCE FOUND: {comparison}. This is not proof of a clean model: the scan misses some backdoors, "
        "and its calibration holds only for the kind of model and data it was measured on."
    )


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve of scores where `positive` should be higher (ties count half)."""
    from scipy.stats import mannwhitneyu

    if not positive or not negative:
        raise ValueError("AUROC needs at least one positive and one negative score")
    statistic = mannwhitneyu(list(positive), list(negative), alternative="two-sided").statistic
    return float(statistic) / (len(positive) * len(negative))


def calibrate_threshold(clean_scores: Sequence[float], *, deviations: float = 2.0) -> float:
    """A threshold from clean models' scores: their mean plus `deviations` standard deviations, and never below
    the largest of them (so that no calibration model is a false positive)."""
    scores = np.asarray(clean_scores, dtype=np.float64)
    if scores.size < 2:
        raise ScanError("calibrating a threshold needs the scores of at least 2 clean models")
    return float(max(scores.mean() + deviations * scores.std(ddof=1), scores.max()))
