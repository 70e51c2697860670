from __future__ import annotations

import numpy as np
import pytest
from transformers import EvalPrediction

from hf_gnft.metrics import (
    BackdoorMetrics,
    attack_success_rate,
    backdoor_metrics,
    clean_accuracy,
    defense_effectiveness_rating,
    make_compute_metrics,
    robust_accuracy,
)


def test_clean_accuracy_hand_computed():
    assert clean_accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75


def test_asr_counts_target_predictions_among_non_target_samples():
    predictions = [0, 0, 1, 0, 2]
    original = [1, 2, 1, 0, 2]  # the 4th sample is of the target class and is left out
    assert attack_success_rate(predictions, target_label=0, original_labels=original) == 0.5
    assert attack_success_rate([0, 0, 1, 2], target_label=0) == 0.5


def test_robust_accuracy_counts_true_label_predictions():
    assert robust_accuracy([0, 2, 1, 0], [1, 2, 1, 0], target_label=0) == pytest.approx(2 / 3)
    assert robust_accuracy([0, 2, 1, 0], [1, 2, 1, 0]) == 0.75


@pytest.mark.parametrize(
    "ca_before, asr_before, ca_after, asr_after, expected",
    [
        (0.95, 0.90, 0.95, 0.90, 0.5),  # nothing changed
        (0.95, 1.00, 0.95, 0.00, 1.0),  # perfect defense
        (0.95, 0.90, 0.93, 0.10, (0.80 - 0.02 + 1) / 2),
        (0.95, 0.10, 0.96, 0.30, 0.5),  # ASR rose and CA rose: both clipped at 0
        (0.95, 0.90, 0.10, 0.90, (0 - 0.85 + 1) / 2),
    ],
)
def test_der_hand_computed(ca_before, asr_before, ca_after, asr_after, expected):
    assert defense_effectiveness_rating(ca_before, asr_before, ca_after, asr_after) == pytest.approx(expected)


def test_der_rejects_percentages():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        defense_effectiveness_rating(95.0, 90.0, 94.0, 5.0)


def test_empty_inputs_are_errors():
    with pytest.raises(ValueError, match="empty"):
        clean_accuracy([], [])
    with pytest.raises(ValueError, match="target class"):
        attack_success_rate([0, 0], target_label=0, original_labels=[0, 0])
    with pytest.raises(ValueError, match="predictions for"):
        clean_accuracy([0, 1], [0])


def test_backdoor_metrics_and_der_against():
    before = backdoor_metrics([0, 1, 2, 3], [0, 1, 2, 3], [0, 0, 0], [1, 2, 3], target_label=0)
    assert before == BackdoorMetrics(1.0, 1.0, 0.0, num_clean=4, num_triggered=3)
    after = backdoor_metrics([0, 1, 2, 0], [0, 1, 2, 3], [1, 0, 3], [1, 2, 3], target_label=0)
    assert after.clean_accuracy == 0.75 and after.attack_success_rate == pytest.approx(1 / 3)
    assert after.der_against(before) == pytest.approx((2 / 3 - 0.25 + 1) / 2)


def test_compute_metrics_for_trainer():
    logits = np.array([[5.0, 0.0], [4.0, 1.0], [0.0, 3.0], [2.0, 1.0]])
    metrics = make_compute_metrics(target_label=0)(
        EvalPrediction(predictions=logits, label_ids=np.array([0, 1, 1, 1]))
    )
    assert metrics == {"accuracy": 0.5, "target_rate": 0.75}


def test_evaluate_module_loads_offline_and_matches_the_functions():
    from hf_gnft.metrics import load_backdoor_metric

    metric = load_backdoor_metric()
    predictions, references = [0, 0, 2, 1, 0], [1, 2, 2, 1, 0]
    result = metric.compute(predictions=predictions, references=references, target_label=0)
    assert result["accuracy"] == clean_accuracy(predictions, references)
    assert result["attack_success_rate"] == attack_success_rate(predictions, 0, references) == 0.5
    assert result["robust_accuracy"] == robust_accuracy(predictions, references, target_label=0) == 0.5
