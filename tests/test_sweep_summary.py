"""The GN-FT sweep's defender rule (chosen from clean validation accuracy only) and its CA-vs-ASR plot."""

from __future__ import annotations

import pytest
from testing_utils import load_benchmark_script


@pytest.fixture(scope="module")
def sweep():
    return load_benchmark_script("sweep_gnft")


def _row(defense: str, lr: float, seed: int, val_after: float, asr: float, optim: str = "sgd") -> dict:
    return {
        "suspect": "tiny-wav2vec2-noise_burst",
        "defense": defense,
        "learning_rate": lr,
        "seed": seed,
        "before": {"clean_accuracy": 0.96, "attack_success_rate": 0.92, "robust_accuracy": 0.07},
        "after": {"clean_accuracy": val_after, "attack_success_rate": asr, "robust_accuracy": 1 - asr},
        "der": 0.5,
        "validation_accuracy": {"before": 0.95, "after": val_after},
        "train_seconds": 10.0,
        "optim": {"optim": optim},
    }


def test_choice_is_the_largest_lr_within_the_validation_drop_whatever_the_asr(sweep):
    rows = [
        _row("FT", 0.05, 0, 0.94, 0.80),
        _row("FT", 0.05, 1, 0.94, 0.85),
        _row("FT", 0.1, 0, 0.935, 0.50),  # mean drop 1.75 pp: allowed
        _row("FT", 0.1, 1, 0.93, 0.40),
        _row("FT", 0.2, 0, 0.90, 0.01),  # drop 5 pp: not allowed, though its ASR is best
        _row("GN-FT global", 0.05, 0, 0.92, 0.30),  # drop 3 pp at every lr: no choice
    ]
    table = sweep.summarise(rows)
    chosen = table.split("Chosen by clean validation accuracy")[1]
    assert "| FT | 0.1 |" in chosen
    assert "| FT | 0.2 |" not in chosen and "| FT | 0.05 |" not in chosen
    assert "GN-FT global" not in chosen
    assert "45.0 ± 7.1" in chosen  # mean ± std of the two seeds' ASR at lr 0.1


def test_plot_writes_one_panel_row_per_optimiser(sweep, tmp_path):
    rows = [_row("FT", 0.05, 0, 0.94, 0.8), _row("FT", 0.1, 0, 0.93, 0.5), _row("FT", 0.1, 1, 0.93, 0.6)]
    rows += [_row("FT AdamW", 0.003, 0, 0.94, 0.7, optim="adamw_torch")]
    path = tmp_path / "sweep.png"
    sweep.plot(rows, path)
    from matplotlib.image import imread

    image = imread(path)
    assert image.shape[0] > image.shape[1]  # two rows (SGD, AdamW) of one suspect: taller than wide
