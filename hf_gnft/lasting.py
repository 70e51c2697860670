"""Did the backdoor stay gone? The relapse check and the interpolation curve of a defended model.

A defense can *suppress* a backdoor (ASR near 0 on the defended weights) without *removing* it: fine-tune the
model again and the backdoor comes back ("superficial safety", Min et al., NeurIPS 2024, arXiv 2410.09838). Three
checks tell the two apart; the first two are here, the third is [`hf_gnft.retuning`]:

- **relapse** ([`relapse_check`]): a clean-only fine-tune of the defended model, the FT defense's budget on the
  clean subset (20 epochs, SGD with momentum 0.9, cosine) at its learning rate (0.01) and at 5× it (0.05), then
  CA / ASR. No trigger trains it, so a defender can run it too: with a re-inversion after each fine-tune
  ([`hf_gnft.inversion.reinversion_check`] against the suspect's detection) it is a trigger-free check, and a
  model whose re-inversion success climbs back after a clean fine-tune is still backdoored.
- **interpolation curve** ([`interpolation_curve`]): CA and ASR along the straight line θ_suspect → θ_defended
  (about 11 points): a defense that moved just past the edge of the backdoor's basin shows ASR falling only at the
  very end of the line.
- **retuning** ([`hf_gnft.retuning.retuning_attack`]): a fine-tune with 5 triggered clips among the clean ones,
  beside the same retuning of a model trained without poisoning (the reference).

Measured on `make demo`'s suspect (tiny Wav2Vec2, noise burst, CA 95.7 / ASR 91.6, issue 26): the old purify
(whole-clip additive surrogate, lr 0.01) reached 92.5 / 0.3% and relapsed to 27.1 / 61.3% ASR after the clean
fine-tunes at lr 0.01 / 0.05; unlearning with the true trigger at lr 0.05 stayed at 0.1 / 1.4%.

Nothing is written to disk but temporary Trainer folders, deleted at the end; the models passed in are never
changed.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedModel

from .defenses.base import is_finite_number
from .inversion import (
    ClassInversion,
    detection_settings,
    invert_classes,
    reinversion_check,
    reinversion_clips,
)
from .settings import check_numeric_settings
from .training import evaluate_backdoor

#: the relapse fine-tunes' learning rates: the FT defense's own (0.01) and 5× it
RELAPSE_LEARNING_RATES = (0.01, 0.05)


class LastingCheckError(ValueError):
    """A relapse or interpolation check that cannot run with the settings or data it was given."""


@dataclass
class RelapseConfig:
    """Settings of the relapse check.

    Args:
        learning_rates: the clean fine-tunes' learning rates (default: the FT defense's 0.01 and 5× it).
        num_train_epochs: epochs over the clean subset (the FT defense's 20).
        seed: seeds each fine-tune (the pipeline passes the clean subset's seed).
        reinversion: run the re-inversion check after each fine-tune (needs the suspect and clean clips).
    """

    learning_rates: list[float] = field(default_factory=lambda: list(RELAPSE_LEARNING_RATES))
    num_train_epochs: float = 20.0
    seed: int = 0
    reinversion: bool = True

    def __post_init__(self) -> None:
        rates = self.learning_rates
        if isinstance(rates, (int, float)) or not rates:
            raise LastingCheckError(f"learning_rates must be a non-empty list, got {rates!r}")
        check_numeric_settings(self, error=LastingCheckError)
        for rate in rates:
            if not (is_finite_number(rate) and rate > 0):
                raise LastingCheckError(
                    f"every relapse learning rate must be a finite number > 0, got {rate!r}"
                )
        epochs = self.num_train_epochs
        if not (is_finite_number(epochs) and epochs > 0):
            raise LastingCheckError(f"num_train_epochs must be a finite number > 0, got {epochs!r}")
        self.learning_rates = [float(rate) for rate in rates]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean_fine_tune(
    model: PreTrainedModel, extractor: Any, clean: Dataset, learning_rate: float, config: RelapseConfig
) -> PreTrainedModel:
    """A copy of `model` after the FT defense on `clean` at `learning_rate` (the relapse check's fine-tune)."""
    from .defenses import FTConfig, apply_fine_tuning  # the defenses import this module's users

    with tempfile.TemporaryDirectory(prefix="hf_gnft_relapse_") as scratch:
        settings = FTConfig(output_dir=scratch, learning_rate=learning_rate, seed=config.seed,
                            num_train_epochs=config.num_train_epochs, disable_tqdm=True, report_to="none",
                            logging_strategy="no")  # fmt: skip
        outcome = apply_fine_tuning(model, extractor, clean, settings)
    outcome.model.eval()
    return outcome.model


def relapse_check(
    model: PreTrainedModel,
    extractor: Any,
    clean: Dataset,
    *,
    test: Dataset | None = None,
    triggered: Dataset | None = None,
    target: int | None = None,
    suspect: PreTrainedModel | None = None,
    clips: Dataset | None = None,
    detection: ClassInversion | None = None,
    config: RelapseConfig | None = None,
) -> dict[str, Any]:
    """Fine-tune copies of `model` on the clean subset alone (no trigger) at each learning rate of `config`, and
    measure each: CA / ASR / RA on `test` / `triggered` (when given; `target` is the attack's) and, with
    `suspect` and `clips` (clean held-out clips), the re-inversion check's largest success against the suspect's
    suspected targets (`detection`: the suspect's inversion of `clips`, when already measured).

    Returns:
        A record: `settings`, and `runs`, one per learning rate: `learning_rate`, `clean_accuracy`,
        `attack_success_rate`, `robust_accuracy` (`None` without a triggered set), `reinversion` (the largest
        re-inversion success after the fine-tune; `None` when not run or no class is suspected), `seconds`.

    Raises:
        LastingCheckError: an empty clean subset, or a triggered set without a test set and target.
    """
    config = RelapseConfig(**config.to_dict()) if config is not None else RelapseConfig()
    if clean is None or len(clean) == 0:
        raise LastingCheckError("the relapse check fine-tunes on clean clips, and the clean subset is empty")
    if triggered is not None and (test is None or target is None):
        raise LastingCheckError("measuring ASR after a relapse needs the clean test set and the target too")
    reinvert = config.reinversion and suspect is not None and clips is not None and len(clips) > 0
    if reinvert:
        clips = reinversion_clips(clips)
        detection = detection or invert_classes(suspect, extractor, clips, detection_settings())
    runs = []
    for learning_rate in config.learning_rates:
        started = time.perf_counter()
        relapsed = clean_fine_tune(model, extractor, clean, learning_rate, config)
        metrics = (
            evaluate_backdoor(relapsed, extractor, test, triggered, target) if test is not None else None
        )
        reinverted = (
            reinversion_check(suspect, relapsed, extractor, clips, detection=detection)["max_success_after"]
            if reinvert
            else None
        )
        runs.append(
            {
                "learning_rate": learning_rate,
                "clean_accuracy": metrics.clean_accuracy if metrics else None,
                "attack_success_rate": metrics.attack_success_rate if metrics else None,
                "robust_accuracy": metrics.robust_accuracy if metrics else None,
                "reinversion": reinverted,
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
    return {"settings": config.to_dict(), "runs": runs}


def relapse_summary(record: dict[str, Any] | None) -> dict[str, float | None]:
    """The largest ASR and the largest re-inversion success over a relapse record's runs (`None` where absent)."""
    runs = (record or {}).get("runs") or []

    def largest(key: str) -> float | None:
        values = [run[key] for run in runs if run.get(key) is not None]
        return max(values) if values else None

    return {"attack_success_rate": largest("attack_success_rate"), "reinversion": largest("reinversion")}


@torch.no_grad()
def interpolation_curve(
    suspect: torch.nn.Module,
    defended: torch.nn.Module,
    extractor: Any,
    test: Dataset,
    triggered: Dataset | None = None,
    target: int | None = None,
    points: int = 11,
) -> list[dict[str, float | None]]:
    """CA and ASR at `points` evenly spaced w in [0, 1] on θ_suspect + w · (θ_defended − θ_suspect) (w 0: the
    suspect, w 1: the defended model); neither model is changed.

    Raises:
        LastingCheckError: fewer than 2 points, or models whose weights do not match.
    """
    from .defenses.purify import interpolate_weights

    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise LastingCheckError(f"an interpolation curve needs at least 2 points, got {points!r}")
    start = {key: value.detach().clone() for key, value in suspect.state_dict().items()}
    end = {key: value.detach().clone() for key, value in defended.state_dict().items()}
    if start.keys() != end.keys() or any(start[k].shape != end[k].shape for k in start):
        raise LastingCheckError("the suspect and the defended model have different weights: no straight line")
    walker = copy.deepcopy(defended)
    curve = []
    for weight in np.linspace(0.0, 1.0, points):
        interpolate_weights(walker, start, end, float(weight))
        walker.eval()
        metrics = evaluate_backdoor(walker, extractor, test, triggered, target)
        curve.append(
            {
                "weight": round(float(weight), 4),
                "clean_accuracy": metrics.clean_accuracy,
                "attack_success_rate": metrics.attack_success_rate if triggered is not None else None,
            }
        )
    return curve


__all__ = [
    "RELAPSE_LEARNING_RATES",
    "LastingCheckError",
    "RelapseConfig",
    "clean_fine_tune",
    "interpolation_curve",
    "relapse_check",
    "relapse_summary",
]
