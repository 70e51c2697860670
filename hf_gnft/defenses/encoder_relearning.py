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

`relearn_upper_layers` does the same one level up, for such triggers: the layers above the encoder (projection,
positional convolution, transformer) are re-initialised and taught the suspect's hidden states on clean clips
(purify's `purify_relearn_upper_steps`, off by default; probes in docs/lasting.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
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


def mixed_clips(
    batches: list[dict[str, Any]], generator: torch.Generator, mix: float, crop: int | None, normalize: bool
) -> torch.Tensor:
    """One re-learning input: a random batch of `batches`, each clip mixed with another clip of the batch shifted in
    time at a random weight up to `mix`, cut to one random window of `crop` samples (`None`: whole clips) and
    renormalised when the extractor normalises clips."""
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
    return normalise(mixed) if normalize else mixed


def relative_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean squared error of `output` against `target` over the target's mean square."""
    return F.mse_loss(output, target) / target.pow(2).mean().clamp_min(1e-12)


def _check_run(batches: list[dict[str, Any]], steps: int, what: str) -> None:
    """Refuse a re-learning of `what` without clean clips or without a whole number of steps >= 1."""
    if not batches:
        raise ValueError(f"re-learning {what} needs clean clips")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")


def _distil(
    parameters: list[nn.Parameter],
    error: Callable[[torch.Tensor], torch.Tensor],
    batches: list[dict[str, Any]],
    steps: int,
    learning_rate: float,
    mix: float,
    crop: int | None,
    normalize: bool,
    seed: int,
) -> list[float]:
    """Minimise `error` (of one `mixed_clips` input) over `parameters` for `steps` steps: Adam at `learning_rate`,
    cosine decay to zero. Returns each step's error."""
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    errors = []
    for _ in range(steps):
        loss = error(mixed_clips(batches, generator, mix, crop, normalize))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        errors.append(float(loss.detach()))
    return errors


def _record(
    steps: int, learning_rate: float, mix: float, crop: int | None, errors: list[float], started: float
) -> dict[str, Any]:
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
    _check_run(batches, steps, "the feature encoder")
    if crop is not None:
        check_crop(reference, crop, batches[0]["input_values"])
    started = time.perf_counter()
    _reinitialise(encoder, seed)
    set_encoder_trainable(student, True)
    reference_training = reference.training
    encoder.train()
    reference.eval()

    def error(mixed: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = reference(mixed)
        return relative_error(encoder(mixed), target)

    errors = _distil(
        list(encoder.parameters()), error, batches, steps, learning_rate, mix, crop, normalize, seed
    )
    reference.train(reference_training)
    return _record(steps, learning_rate, mix, crop, errors, started)


def _body(model: nn.Module) -> nn.Module:
    """The backbone whose layers above the feature encoder are re-learned (`base_model`: `wav2vec2`, `hubert`)."""
    body = getattr(model, "base_model", None)
    if body is None or body is model or feature_encoder(body) is None:
        raise ValueError("re-learning the layers above the feature encoder needs a Wav2Vec2-style backbone")
    return body


def relearn_upper_layers(
    student: nn.Module,
    teacher: nn.Module,
    batches: list[dict[str, Any]],
    *,
    steps: int,
    learning_rate: float,
    mix: float = 0.5,
    normalize: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Re-initialise the layers of `student`'s backbone above its feature encoder (feature projection, positional
    convolution, transformer layers) and train them, the feature encoder frozen, to reproduce `teacher`'s hidden
    states (each layer's output) on the clean clips of `batches`, mixed in pairs as in `relearn_feature_encoder`.
    The classification head is kept. Adam at `learning_rate`, cosine decay to zero over `steps`; both models in
    eval mode (no dropout, no time masking) so that the targets are the teacher's deterministic features.

    Returns:
        A record as `relearn_feature_encoder`'s (`crop` is `None`: whole clips).
    """
    body, reference = _body(student), _body(teacher)
    _check_run(batches, steps, "the layers above the feature encoder")
    started = time.perf_counter()
    encoder = feature_encoder(body)
    names = [name for name, module in body.named_children() if module is not encoder]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # the config's own initialisation, parametrised convolutions included (`reset_parameters` misses those)
        fresh = type(body)(body.config)
    upper = [getattr(body, name) for name in names]
    for name, module in zip(names, upper, strict=True):
        module.load_state_dict(getattr(fresh, name).state_dict())
    parameters = [p for module in upper for p in module.parameters()]
    for parameter in parameters:
        parameter.requires_grad_(True)
    set_encoder_trainable(student, False)
    student_training, teacher_training = student.training, teacher.training
    student.eval()
    teacher.eval()

    def error(mixed: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            targets = reference(mixed, output_hidden_states=True).hidden_states
        outputs = body(mixed, output_hidden_states=True).hidden_states
        pairs = list(zip(outputs, targets, strict=True))
        return sum(relative_error(output, target) for output, target in pairs) / len(pairs)

    errors = _distil(parameters, error, batches, steps, learning_rate, mix, None, normalize, seed)
    student.train(student_training)
    teacher.train(teacher_training)
    set_encoder_trainable(student, True)
    return _record(steps, learning_rate, mix, None, errors, started)
