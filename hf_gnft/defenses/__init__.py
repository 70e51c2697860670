"""Backdoor defenses, GN-FT and the baselines it is measured against, behind one registry.

One module per method, each with its config: `gnft_config.py` + `gnft_trainer.py` (GN-FT, in TRL's manner),
`fine_tuning.py` (FT, GN-FT and FT-SAM: one code path, three configs), `fine_pruning.py`, `nad.py`, `anp.py`,
`clp.py`, `tsbd.py`, `purify.py` (trigger inversion + unlearning, built on GN-FT). Every defense is `apply_<name>(model, extractor, clean, config, validation=None) ->
DefenseOutcome`: it returns a defended copy (the suspect is never changed) and what it did. Training rules
are Trainer subclasses configured by `TrainingArguments` subclasses; pruning defenses are functions.
`DEFENSE_METHODS` names them, with the knob the defender tunes on clean validation data, for the one
pipeline every method runs through (`hf_gnft.pipeline`, `hf-gnft defend --defense NAME`) and the benchmark.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from ..neurons import UnsupportedModelError
from .anp import ANPConfig, apply_anp
from .base import DefenseInputError, DefenseOutcome
from .clp import CLPConfig, apply_clp
from .fine_pruning import FinePruningConfig, apply_fine_pruning
from .fine_tuning import FTConfig, FTSAMConfig, apply_fine_tuning
from .gnft_config import DefenseConfig, GNFTConfig
from .gnft_trainer import GNFTTrainer
from .nad import NADConfig, NADTrainer, apply_nad
from .purify import (
    ExactPurificationConfig,
    PurifyConfig,
    PurifyTrainer,
    apply_exact_purification,
    apply_purify,
)
from .tsbd import TSBDConfig, apply_tsbd


@dataclass(frozen=True)
class DefenseMethod:
    """A defense as the pipeline and the benchmark see it.

    Args:
        name: its key in `DEFENSE_METHODS`.
        config_class: the dataclass of its settings.
        apply: its entry point.
        knob: the setting the defender tunes (on clean validation data only; `--knob_grid`, the benchmark).
        larger_is_stronger: whether a larger knob value is the stronger defense.
        paper: where it comes from.
        uses_data: False for a data-free defense (its result does not depend on the clean subset's seed).
        paper_url: a link to the paper (arXiv), when there is one.
        long_name: its full name, for cards (default: `name`).
    """

    name: str
    config_class: type
    apply: Callable[..., DefenseOutcome]
    knob: str
    larger_is_stronger: bool
    paper: str
    uses_data: bool = True
    paper_url: str | None = None
    long_name: str | None = None

    @property
    def title(self) -> str:
        """Its full name (e.g. "Gradient Norm-based Fine-Tuning (GN-FT)")."""
        return self.long_name or self.name

    @property
    def setting_names(self) -> frozenset[str]:
        """The names of its config's fields (what `--<name>` flags it takes)."""
        return frozenset(f.name for f in fields(self.config_class))

    @property
    def trains(self) -> bool:
        """Whether it fine-tunes with a Trainer (its config is a `DefenseConfig`, a `TrainingArguments`)."""
        return issubclass(self.config_class, DefenseConfig)

    def stronger_when_larger(self, knob: str | None = None) -> bool:
        """Whether a larger value of `knob` (default: its own knob) is the stronger defense: the method's
        direction for its own knob, True for any other setting (a learning rate, a number of epochs)."""
        return self.larger_is_stronger if (knob or self.knob) == self.knob else True

    def typed_value(self, setting: str, value: float) -> float | int:
        """`value` as the config field `setting` wants it: an integer field (a number of neurons) gets an int."""
        annotation = str(next(f.type for f in fields(self.config_class) if f.name == setting))
        if "int" in annotation and "float" not in annotation and float(value).is_integer():
            return int(value)
        return value

    def make_config(self, **settings: Any) -> Any:
        """The config with `settings`; unknown names are an error that lists the known ones."""
        unknown = sorted(set(settings) - self.setting_names)
        if unknown:
            raise ValueError(f"defense {self.name!r} has no setting {', '.join(unknown)}")
        if self.trains:
            settings = {"report_to": "none", "disable_tqdm": True, **settings}
        return self.config_class(**settings)


ARXIV = "https://arxiv.org/abs/"

DEFENSE_METHODS: dict[str, DefenseMethod] = {
    method.name: method
    for method in (
        DefenseMethod("ft", FTConfig, apply_fine_tuning, "learning_rate", True, "fine-tuning on the clean subset",
                      long_name="plain fine-tuning (FT)"),
        DefenseMethod("gn-ft", DefenseConfig, apply_fine_tuning, "learning_rate", True,
                      "Zhou, Lin, Liu, arXiv 2502.01152 (2025)", paper_url=f"{ARXIV}2502.01152",
                      long_name="Gradient Norm-based Fine-Tuning (GN-FT)"),
        DefenseMethod("ft-sam", FTSAMConfig, apply_fine_tuning, "learning_rate", True, "Zhu et al., ICCV 2023",
                      paper_url=f"{ARXIV}2304.11823",
                      long_name="fine-tuning with sharpness-aware minimization (FT-SAM)"),
        DefenseMethod("fp", FinePruningConfig, apply_fine_pruning, "fp_accuracy_tolerance", True,
                      "Liu, Dolan-Gavitt, Garg, RAID 2018", paper_url=f"{ARXIV}1805.12185",
                      long_name="fine-pruning (FP)"),
        DefenseMethod("nad", NADConfig, apply_nad, "learning_rate", True, "Li et al., ICLR 2021",
                      paper_url=f"{ARXIV}2101.05930",
                      long_name="neural attention distillation (NAD)"),
        DefenseMethod("anp", ANPConfig, apply_anp, "anp_threshold", True, "Wu & Wang, NeurIPS 2021",
                      paper_url=f"{ARXIV}2110.14430",
                      long_name="adversarial neuron pruning (ANP)"),
        DefenseMethod("clp", CLPConfig, apply_clp, "clp_u", False, "Zheng et al., ECCV 2022", uses_data=False,
                      paper_url=f"{ARXIV}2208.03111",
                      long_name="channel-Lipschitzness-based pruning (CLP)"),
        DefenseMethod("tsbd", TSBDConfig, apply_tsbd, "tsbd_neuron_ratio", True, "Lin et al., NeurIPS 2024",
                      paper_url=f"{ARXIV}2405.20291", long_name="Two-Stage Backdoor Defense (TSBD)"),
        DefenseMethod("purify", PurifyConfig, apply_purify, "learning_rate", True,
                      "trigger inversion + unlearning with GN-FT (this project; after I-BAU, Zeng et al., ICLR 2022)",
                      paper_url=f"{ARXIV}2110.03735",
                      long_name="purification: trigger inversion and unlearning with GN-FT"),
    )
}  # fmt: skip


#: evaluation-only references the benchmark runs beside the defenses, never offered by `hf-gnft defend`: they use
#: what a defender does not have (the attack's trigger), so they are never used to choose a setting either
ORACLE_METHODS: dict[str, DefenseMethod] = {
    "oracle-ep": DefenseMethod(
        "oracle-ep", ExactPurificationConfig, apply_exact_purification, "learning_rate", True,
        "exact purification with the true trigger (Min et al., NeurIPS 2024): an evaluation-only reference",
        paper_url=f"{ARXIV}2410.09838", long_name="oracle: unlearning the true trigger (EP)",
    ),
}  # fmt: skip


def get_benchmark_defense(name: str) -> DefenseMethod:
    """A defense, or one of the benchmark's evaluation-only references (`ORACLE_METHODS`)."""
    if name in ORACLE_METHODS:
        return ORACLE_METHODS[name]
    try:
        return get_defense(name)
    except ValueError:
        raise ValueError(
            f"unknown defense {name!r}; known: {', '.join(DEFENSE_METHODS)} (and for the benchmark only: "
            f"{', '.join(ORACLE_METHODS)})"
        ) from None


def get_defense(name: str) -> DefenseMethod:
    """The defense called `name`; an unknown name is an error that lists the known ones."""
    try:
        return DEFENSE_METHODS[name]
    except KeyError:
        raise ValueError(f"unknown defense {name!r}; known: {', '.join(DEFENSE_METHODS)}") from None


__all__ = [
    "ANPConfig",
    "CLPConfig",
    "DEFENSE_METHODS",
    "DefenseInputError",
    "DefenseMethod",
    "DefenseOutcome",
    "DefenseConfig",
    "ExactPurificationConfig",
    "GNFTConfig",
    "GNFTTrainer",
    "FTConfig",
    "FTSAMConfig",
    "FinePruningConfig",
    "NADConfig",
    "NADTrainer",
    "ORACLE_METHODS",
    "PurifyConfig",
    "PurifyTrainer",
    "TSBDConfig",
    "UnsupportedModelError",
    "apply_anp",
    "apply_clp",
    "apply_exact_purification",
    "apply_fine_pruning",
    "apply_fine_tuning",
    "apply_nad",
    "apply_purify",
    "apply_tsbd",
    "get_benchmark_defense",
    "get_defense",
]
