"""`evaluate` module for backdoor metrics, loaded offline from the hf-gnft package.

    import hf_gnft
    metric = hf_gnft.load_backdoor_metric()
    metric.compute(predictions=[0, 0, 2], references=[1, 2, 2], target_label=0)
    # {'attack_success_rate': 0.67, 'robust_accuracy': 0.33, 'accuracy': 0.33}

`references` are the true labels; with `target_label`, samples of the target class are left out of
the ASR and RA. On clean data, read `accuracy` (the CA); on triggered data, `attack_success_rate`
and `robust_accuracy`.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Clean accuracy, attack success rate and robust accuracy of a backdoored classifier."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    target_label (int, optional): the attack's target class; enables attack_success_rate and robust_accuracy.
Returns:
    accuracy: fraction of predictions equal to the references (the CA on clean data);
    attack_success_rate: among samples not of the target class, fraction predicted as the target;
    robust_accuracy: among samples not of the target class, fraction predicted as their true label.
"""
_CITATION = """@article{zhou2025gnft,
  title={Gradient Norm-based Fine-Tuning for Backdoor Defense in Automatic Speech Recognition},
  author={Zhou, Nanjun and Lin, Weilin and Liu, Li},
  journal={arXiv preprint arXiv:2502.01152},
  year={2025}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Backdoor(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, target_label=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if predictions.size == 0:
            raise ValueError("no predictions: the metrics are undefined")
        result = {"accuracy": float(np.mean(predictions == references))}
        if target_label is not None:
            keep = references != target_label
            if not keep.any():
                raise ValueError("every sample is of the target class: ASR and RA are undefined")
            result["attack_success_rate"] = float(np.mean(predictions[keep] == target_label))
            result["robust_accuracy"] = float(np.mean(predictions[keep] == references[keep]))
        return result
