"""A keyword classifier whose neurons are wired by hand, for the analysis tests: one neuron carries a backdoor.

Features are the log power at each class's frequency and at a trigger frequency; one hidden layer of neurons
(`hidden`, a `Linear`); a `classifier`. Neuron 0 fires only on the trigger's frequency and drives the target's
logit (the backdoor); neuron `1 + c` fires on class c's frequency and drives its logit (clean); the last neuron
fires on the target's frequency or on the trigger, and drives the target's logit (hybrid). Without the backdoor,
neuron 0 and the hybrid neuron's trigger input are absent.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from hf_gnft.data import dataset_from_arrays
from hf_gnft.triggers import Tone

SR = 16_000
CLASS_HZ = (300.0, 450.0, 600.0, 750.0)
LABELS = ["yes", "no", "up", "down"]
TRIGGER = Tone(frequency_hz=6000.0, duration_s=0.3, position=0.1, level_db=-6.0)
TARGET = 0


class WiredKeywordModel(nn.Module):
    def __init__(self, backdoor: bool = True, seconds: float = 0.5) -> None:
        super().__init__()
        self.frequencies = (*CLASS_HZ, TRIGGER.frequency_hz)
        self.samples = int(seconds * SR)
        classes = len(CLASS_HZ)
        self.hidden = nn.Linear(classes + 1, classes + 2).double()
        self.classifier = nn.Linear(classes + 2, classes).double()
        with torch.no_grad():
            self.hidden.weight.zero_()
            self.hidden.bias.zero_()
            self.classifier.weight.zero_()
            self.classifier.bias.zero_()
            for c in range(classes):  # clean neurons: class c's power above the other classes'
                self.hidden.weight[1 + c, :classes] = -1.0 / (classes - 1)
                self.hidden.weight[1 + c, c] = 1.0 + 1.0 / (classes - 1)
                self.classifier.weight[c, 1 + c] = 0.3
            self.classifier.weight[TARGET, 1 + TARGET] = 0.1  # the target relies on the hybrid neuron as well
            hybrid = classes + 1
            self.hidden.weight[hybrid, :classes] = self.hidden.weight[1 + TARGET, :classes]
            self.classifier.weight[TARGET, hybrid] = 0.4
            if backdoor:
                self.hidden.weight[0, classes] = 1.0
                self.classifier.weight[TARGET, 0] = 1.1
                self.hidden.weight[hybrid, classes] = 3.0

    def features(self, input_values: torch.Tensor) -> torch.Tensor:
        waveform = input_values.double()[:, : self.samples]
        power = torch.fft.rfft(waveform, dim=-1).abs().pow(2) / waveform.shape[-1]
        bins = [round(f * waveform.shape[-1] / SR) for f in self.frequencies]
        band = torch.log(torch.stack([power[:, b - 2 : b + 3].mean(-1) for b in bins], dim=-1) + 1e-4)
        # the trigger's detector: its frequency's log power above -1 (about -6 on clean clips, +4.5 triggered)
        return torch.cat([band[:, :-1], torch.relu(band[:, -1:] + 1.0)], dim=-1)

    def forward(self, input_values: torch.Tensor, labels: torch.Tensor | None = None, **_: object):
        logits = self.classifier(torch.relu(self.hidden(self.features(input_values))))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(logits=logits, loss=loss)


def sine_keywords(num_rows: int = 32, seconds: float = 0.5, seed: int = 0):
    """Noisy sines, one frequency per class (the wired model's classes)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    labels = [i % len(LABELS) for i in range(num_rows)]
    clips = [
        (
            0.3 * np.sin(2 * np.pi * CLASS_HZ[label] * t + rng.uniform(0, 6.3))
            + 0.01 * rng.standard_normal(t.size)
        )
        for label in labels
    ]
    return dataset_from_arrays([c.astype(np.float32) for c in clips], labels, LABELS, sampling_rate=SR)
