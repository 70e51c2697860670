"""Re-learning a speech model's convolutional feature encoder from clean audio (a stage of purification, issue 26).

A backdoor keyed to one exact waveform (a seeded noise burst) lives mostly in the feature encoder, the convolutions
that turn samples into frames: on the small grid's tiny Wav2Vec2 noise-burst suspect, other noise bursts of the same
level at the same place fire on 0.6–2.8% of clips against the trigger's 91%, and no inversion recovers the waveform
(an inverted pattern reaches the target at a tenth of the trigger's energy with a cosine of 0.03–0.09 to it). So no
surrogate unlearns it: purify's burst unlearning left 22–53% after retuning where unlearning the true trigger left
about 1%.

The encoder is re-initialised and trained to reproduce the suspect's encoder outputs on the clean clips (mixed in
pairs for variety), the rest of the model kept. Nothing in those clips carries the trigger, so the new encoder has
no reason to answer the trigger's waveform as the suspect's does, and the downstream layers' backdoor pathway loses
its input. Purify runs it before unlearning and keeps the encoder frozen in its repair. Measured in the 3-seed grid
with purify's defaults (3,000 steps on 0.25 s windows; docs/lasting.md): on the noise-burst suspect above 0.0–0.3%
ASR, at most 1.3% after the relapse check's clean fine-tunes, 1.7–15.2% after retuning (whole-clip re-learning:
1.7–46.4%). On the grid's tone suspect, with 1,500 steps on whole clips: 93.7 / 0.2% (validation 0.0), retuned
0.3%. With the encoder also frozen while unlearning, the tone came back to 19.1% after retuning: a tone is a sound
any clean encoder hears, and its pathway is downstream, where unlearning reaches it.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hf_gnft.inversion import normalise
from hf_gnft.neurons import feature_encoder


def set_encoder_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (or unfreeze) the model's feature encoder, as `freeze_feature_encoder` does."""
    encoder = feature_encoder(model)
    if encoder is None:
        return
    for parameter in encoder.parameters():
        parameter.requires_grad_(trainable)
    if hasattr(encoder, "_requires_grad"):
        encoder._requires_grad = trainable


def _reinitialise(module: nn.Module, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for sub in module.modules():
            if sub is not module and hasattr(sub, "reset_parameters"):
                sub.reset_parameters()


def check_crop(encoder: nn.Module, crop: int, inputs: torch.Tensor) -> None:
    """Refuse a re-learning window that is not a whole number of samples >= 1 or that `encoder` (a feature encoder)
    turns into no frame: shorter than its receptive field."""
    if isinstance(crop, bool) or not isinstance(crop, int) or crop < 1:
        raise ValueError(f"crop must be a number of samples >= 1, got {crop!r}")
    try:
        with torch.no_grad():
            frames = encoder(inputs[:1, ..., :crop]).shape[-1]
    except RuntimeError:
        frames = 0
    if frames < 1:
        raise ValueError(f"a crop of {crop} samples is shorter than the feature encoder's receptive field")


def encoder_error(student: nn.Module, teacher: nn.Module, batches: list[dict[str, Any]]) -> float:
    """How far `student`'s feature encoder is from `teacher`'s on `batches` (model batches, whole clips as given):
    the squared error of its outputs over the teacher outputs' mean square, pooled over every batch."""
    encoder, reference = feature_encoder(student), feature_encoder(teacher)
    error, scale = 0.0, 0.0
    with torch.no_grad():
        for batch in batches:
            target = reference(batch["input_values"])
            error += float((encoder(batch["input_values"]) - target).pow(2).sum())
            scale += float(target.pow(2).sum())
    return error / scale


def relearn_feature_encoder(
    student: nn.Module,
    teacher: nn.Module,
    batches: list[dict[str, Any]],
    *,
    steps: int,
    learning_rate: float,
    mix: float = 0.5,
    normalize: bool = True,
    crop: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Re-initialise `student`'s feature encoder and train it, alone, to reproduce `teacher`'s encoder outputs.

    Each step takes one batch of `batches` (clean model batches, `input_values`), mixes each clip with another
    clip of the batch shifted in time at a random weight up to `mix`, keeps one random window of `crop` samples of
    the batch (`None`: whole clips; the encoder is convolutional, so a window teaches the same function from fewer
    samples), renormalises each window when the extractor normalises clips, and minimises the mean squared
    error between the two encoders' outputs over the teacher outputs' mean square. Adam at `learning_rate`, cosine
    decay to zero over `steps`.

    Returns:
        A record: `steps`, `learning_rate`, `mix`, `crop`, the relative error of the first and last tenth of the steps
        (`error_start`, `error_end`) and `seconds`.

    Raises:
        ValueError: a model without a convolutional feature encoder, no batches, `steps` below 1, or a `crop`
            shorter than the encoder's receptive field.
    """
    encoder, reference = feature_encoder(student), feature_encoder(teacher)
    if encoder is None or reference is None:
        raise ValueError(
            "re-learning the feature encoder needs a model with a convolutional waveform encoder"
        )
    if not batches:
        raise ValueError("re-learning the feature encoder needs clean clips")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if crop is not None:
        check_crop(reference, crop, batches[0]["input_values"])
    started = time.perf_counter()
    _reinitialise(encoder, seed)
    set_encoder_trainable(student, True)
    reference_training = reference.training
    encoder.train()
    reference.eval()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    errors = []
    for _ in range(steps):
        batch = batches[int(torch.randint(len(batches), (1,), generator=generator))]
        inputs = batch["input_values"]
        count, length = inputs.shape[0], inputs.shape[-1]
        partners = inputs[torch.randperm(count, generator=generator).to(inputs.device)]
        partners = torch.roll(partners, int(torch.randint(length, (1,), generator=generator)), dims=-1)
        weights = (torch.rand(count, 1, generator=generator) * mix).to(inputs)
        mixed = inputs + weights * partners
        if crop is not None and crop < length:
            start = int(torch.randint(length - crop + 1, (1,), generator=generator))
            mixed = mixed[..., start : start + crop]
        if normalize:
            mixed = normalise(mixed)
        with torch.no_grad():
            target = reference(mixed)
        error = F.mse_loss(encoder(mixed), target) / target.pow(2).mean().clamp_min(1e-12)
        optimizer.zero_grad(set_to_none=True)
        error.backward()
        optimizer.step()
        schedule.step()
        errors.append(float(error.detach()))
    reference.train(reference_training)
    tenth = max(1, steps // 10)
    return {
        "steps": steps,
        "learning_rate": learning_rate,
        "mix": mix,
        "crop": crop,
        "error_start": round(sum(errors[:tenth]) / tenth, 4),
        "error_end": round(sum(errors[-tenth:]) / tenth, 4),
        "seconds": round(time.perf_counter() - started, 2),
    }
