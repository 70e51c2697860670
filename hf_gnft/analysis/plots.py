"""Figures of the neuron-gradient analysis (matplotlib, saved as PNG)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .categories import CATEGORIES, NeuronCategories, mean_by_category
from .gradients import GradientProfile

COLOURS = {"backdoor": "#d62728", "hybrid": "#ff7f0e", "clean": "#1f77b4"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, path: str | Path) -> Path:
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _short(name: str) -> str:
    """`wav2vec2.encoder.layers.1.feed_forward.intermediate_dense` -> `layers.1 ff`."""
    if ".layers." in name and name.endswith("feed_forward.intermediate_dense"):
        return f"layer {name.split('.layers.')[1].split('.')[0]} ff"
    return name.rsplit(".", 2)[-1] if name.count(".") > 2 else name


def plot_gradient_by_category(
    profiles: Mapping[str, GradientProfile], categories: NeuronCategories, path: str | Path, title: str = ""
) -> Path:
    """One panel per profile (e.g. clean and triggered data): each layer's neurons (dots, log scale) by category,
    with the category means (bars)."""
    plt = _pyplot()
    cats = categories.categories
    layers = [name for name in next(iter(profiles.values())).layers if name in cats]
    figure, axes = plt.subplots(1, len(profiles), figsize=(5.2 * len(profiles), 4.2), squeeze=False)
    rng = np.random.default_rng(0)
    for axis, (label, profile) in zip(axes[0], profiles.items(), strict=True):
        for x, name in enumerate(layers):
            values = profile.layers[name].numpy()
            kinds = np.asarray(cats[name])
            for offset, category in zip((-0.25, 0.0, 0.25), CATEGORIES, strict=True):
                chosen = values[kinds == category]
                if chosen.size == 0:
                    continue
                jitter = rng.uniform(-0.08, 0.08, chosen.size)
                axis.scatter(x + offset + jitter, chosen, s=6, alpha=0.45, color=COLOURS[category],
                             label=category if x == 0 else None)  # fmt: skip
                axis.hlines(chosen.mean(), x + offset - 0.11, x + offset + 0.11, color="k", linewidth=2)
        axis.set_yscale("log")
        axis.set_xticks(range(len(layers)))
        axis.set_xticklabels([_short(n) for n in layers], fontsize=8)
        axis.set_ylabel("mean |∂L/∂W| per neuron")
        axis.set_title(label, fontsize=9)
        axis.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7, markerscale=2)
    counts = categories.counts()
    figure.suptitle(
        f"{title}  neurons by category (black: mean): " + ", ".join(f"{counts[c]} {c}" for c in CATEGORIES),
        fontsize=9,
    )
    return _save(plt, figure, path)


def plot_before_after(
    pairs: Mapping[str, tuple[GradientProfile, GradientProfile]],
    categories: NeuronCategories,
    path: str | Path,
    *,
    asr: tuple[float, float] | None = None,
    title: str = "",
) -> Path:
    """Mean gradient per layer and category, suspect (light) vs cleaned model (dark), over the same neurons (the
    suspect's categories): one panel per data set (`pairs`: label -> (suspect's profile, cleaned model's))."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(pairs), figsize=(5.6 * len(pairs), 4.0), squeeze=False)
    for axis, (label, (before, after)) in zip(axes[0], pairs.items(), strict=True):
        before_means, after_means = mean_by_category(before, categories), mean_by_category(after, categories)
        layers = [name for name in before.layers if name in before_means]
        present = [c for c in CATEGORIES if before_means["all"][c]["count"]]
        width = 0.8 / (2 * len(present))
        for position, category in enumerate(present):
            for step, (means, shade, when) in enumerate(
                ((before_means, 0.45, "suspect"), (after_means, 1.0, "after"))
            ):
                offset = -0.4 + width * (2 * position + step + 0.5)
                heights = [means[name][category]["mean"] or 0.0 for name in layers]
                axis.bar(np.arange(len(layers)) + offset, heights, width, color=COLOURS[category], alpha=shade,
                         label=f"{category}, {when}")  # fmt: skip
        axis.set_yscale("log")
        axis.set_xticks(range(len(layers)))
        axis.set_xticklabels([_short(n) for n in layers], fontsize=8)
        axis.set_ylabel("mean |∂L/∂W| per neuron")
        axis.set_title(label, fontsize=9)
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3, axis="y")
    subtitle = f"  ASR {100 * asr[0]:.1f}% → {100 * asr[1]:.1f}%" if asr else ""
    figure.suptitle(f"{title}{subtitle}", fontsize=9)
    return _save(plt, figure, path)


def plot_layer_summary(
    profile: GradientProfile, categories: NeuronCategories | None, path: str | Path, title: str = ""
) -> Path:
    """Per layer: the mean gradient of each category (or of all neurons, without categories) and the number of
    neurons in each category."""
    plt = _pyplot()
    layers = list(profile.layers)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10.0, 3.8))
    x = np.arange(len(layers))
    if categories is None:
        left.bar(x, [float(profile.layers[n].mean()) for n in layers], color="#7f7f7f")
        right.bar(x, [profile.layers[n].numel() for n in layers], color="#7f7f7f")
    else:
        means = mean_by_category(profile, categories)
        bottom = np.zeros(len(layers))
        for offset, category in zip((-0.27, 0.0, 0.27), CATEGORIES, strict=True):
            left.bar(x + offset, [means[n][category]["mean"] or 0.0 for n in layers], 0.27,
                     color=COLOURS[category], label=category)  # fmt: skip
            counts = np.array([means[n][category]["count"] for n in layers], dtype=float)
            right.bar(x, counts, 0.6, bottom=bottom, color=COLOURS[category], label=category)
            bottom += counts
        left.legend(fontsize=7)
    for axis, label in ((left, "mean |∂L/∂W| per neuron"), (right, "neurons")):
        axis.set_xticks(x)
        axis.set_xticklabels([_short(n) for n in layers], fontsize=8)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3, axis="y")
    left.set_yscale("log")
    figure.suptitle(title, fontsize=9)
    return _save(plt, figure, path)
