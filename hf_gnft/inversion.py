"""Trigger inversion from clean labelled clips: the one implementation the scan and purification share.

The defender has the suspect and some clean labelled clips, never the trigger. For a class c, an inversion looks
for one transform, shared by every clip, that sends the other classes' clips to c. A backdoor's target is unusually
easy to reach: its inversion succeeds on far more clips than any other class's (the *success gap*).

Two families of transform, both on the model's input (the feature extractor's normalised waveform):

* `"additive"`: one additive perturbation within an L2 ball of radius `budget · sqrt(length)` (at 0.01, −40 dB
  of a unit-variance clip's energy), found by normalised-gradient steps (a trigger inversion in the spirit of
  Neural Cleanse). It can express a sound added to the clip (a noise burst, a tone). On a model that takes
  feature maps (`input_features`, e.g. the MFCC networks of `hf_gnft.mfcc_models`) the perturbation is one map
  added to every clip's, within `budget · sqrt(size) · rms` (rms: the first batch's root mean square feature),
  which can express a patch of the map (BadNets on MFCCs) and, on log-mel or cepstral features, a fixed filter
  (a gain per band adds a constant to every frame).
* `"spectral"`: a pitch shift by a whole number of semitones (searched over a grid, [`hf_gnft.effects.
  pitch_shift`]) followed by a learned filter, one gain per STFT bin within `±max_gain_db`, and the clip's
  normalisation again. It can express triggers that are not a sound added to the clip: a pitch shift (PBSM,
  JingleBack's +10 semitones) and an equaliser-like colouring (a high-pass, a phaser's notches). It needs the
  waveform: models that take feature maps are inverted with the additive family only ([`supported_families`]).
* `"burst"`: a free pattern confined to one window of `window_s` seconds, within `level_db` of the clip's energy
  in that window (a −15 dB window holds a −15 dB noise burst), Neural Cleanse's mask-and-pattern made for audio:
  the window's start is searched first (every start on a `stride_s` grid, a few steps each at a quarter of the
  budget), then the pattern is optimised there; or one pattern is optimised at *every* start (`burst_every_start`,
  purification's default: the search finds where the class is easiest to reach, not where the trigger is). It expresses what real audio triggers mostly are, a short loud sound at one place in the clip, where the
  additive family spreads a faint perturbation over the whole clip.
* `"tonal"`: a sinusoid (frequency, onset in a `window_s` window, amplitude and phase within `level_db`): the
  frequency is searched on a log grid from 80 Hz to 0.48 of the sampling rate and refined, then the onset, then
  amplitude and phase by gradient. It expresses the tone and near-ultrasonic triggers.
  Both need the waveform; they are *shape* families: the detection ([`DETECTION_FAMILIES`]) keeps the calibrated
  additive and spectral statistics, and purification inverts a detected target with the shapes to unlearn a
  surrogate that looks like the trigger.

Every inversion optimises on the first batch of the clips it is given and reports its success (the fraction of
clips sent to the class) on the others (on the first when there is only one), so a transform that merely
memorised its clips does not count.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .effects import pitch_shift
from .training import audio_batches

FAMILIES = ("additive", "spectral", "burst", "tonal")
#: the families of the detection (the scan's calibrated additive statistic and the spectral pitch search)
DETECTION_FAMILIES = ("additive", "spectral")
#: the families that add one time-localised sound to the clip (an additive `delta` confined to a window)
LOCALISED_FAMILIES = ("burst", "tonal")
#: the spectral family's filter: STFT size and hop of the learned gains (at 16 kHz, 31 Hz bins)
SPECTRAL_N_FFT = 512
SPECTRAL_HOP = 128


class InversionError(ValueError):
    """An inversion cannot run with the settings or the data it was given."""


def check_inversion_settings(
    budget: float | None = None,
    steps: int | None = None,
    max_gain_db: float | None = None,
    max_semitones: int | None = None,
    families: Sequence[str] | None = None,
    window_s: float | None = None,
    level_db: float | None = None,
    stride_s: float | None = None,
) -> None:
    """Refuse impossible inversion settings with a clear error (before any work is done).

    Raises:
        InversionError: a budget, gain, window or stride that is not a finite number > 0, steps < 1, a semitone range
            outside [0, 24], a level outside [-60, 0] dB, an unknown or repeated family.
    """

    def positive(name: str, value: Any) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise InversionError(f"the inversion's {name} must be a finite number > 0, got {value!r}")

    if budget is not None:
        positive("radius (budget)", budget)
    for name, value in (("window_s", window_s), ("stride_s", stride_s)):
        if value is not None:
            positive(name, value)
    if level_db is not None and (
        isinstance(level_db, bool)
        or not isinstance(level_db, (int, float))
        or not math.isfinite(level_db)
        or not -60 <= level_db <= 0
    ):
        raise InversionError(
            f"the inversion's level_db must be a number in [-60, 0] dB re the clip, got {level_db!r}"
        )
    if max_gain_db is not None:
        positive("max_gain_db", max_gain_db)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise InversionError(f"the inversion needs an integer number of steps >= 1, got {steps!r}")
    if max_semitones is not None and (
        isinstance(max_semitones, bool) or not isinstance(max_semitones, int) or not 0 <= max_semitones <= 24
    ):
        raise InversionError(f"max_semitones must be an integer in [0, 24], got {max_semitones!r}")
    if families is not None:
        if isinstance(families, str) or not families:
            raise InversionError(f"families must be a non-empty list of {FAMILIES}, got {families!r}")
        unknown = [family for family in families if family not in FAMILIES]
        if unknown:
            raise InversionError(f"unknown inversion families {unknown}; use some of {', '.join(FAMILIES)}")
        if len(set(families)) != len(families):
            raise InversionError(f"an inversion family is named twice: {list(families)}")


def input_name(model: nn.Module) -> str:
    """The model's main input: `"input_values"` (a waveform) or `"input_features"` (a feature map)."""
    return getattr(model, "main_input_name", "input_values") or "input_values"


def supported_families(model: nn.Module, families: Sequence[str] = FAMILIES) -> list[str]:
    """The families of `families` that can invert `model`: every one on a waveform model, the additive one alone on
    a model that takes feature maps (a pitch shift, a filter, a burst and a tone act on the waveform)."""
    if input_name(model) == "input_values":
        return list(families)
    return [family for family in families if family == "additive"]


def normalise(inputs: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per clip: what the Wav2Vec2 feature extractor does (`do_normalize`)."""
    mean = inputs.mean(dim=-1, keepdim=True)
    variance = inputs.var(dim=-1, keepdim=True, unbiased=False)
    return (inputs - mean) / torch.sqrt(variance + 1e-7)


class _ShiftedClips:
    """The last pitch-shifted clips, each keyed by its content, up to `max_bytes` (least recently used dropped)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.clips: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.nbytes = 0

    def get(self, key: tuple) -> torch.Tensor | None:
        clip = self.clips.get(key)
        if clip is not None:
            self.clips.move_to_end(key)
        return clip

    def put(self, key: tuple, clip: torch.Tensor) -> None:
        self.clips[key] = clip
        self.nbytes += clip.nbytes
        while self.nbytes > self.max_bytes and len(self.clips) > 1:
            self.nbytes -= self.clips.popitem(last=False)[1].nbytes


#: pitch-shifted clips, by content: purify's triggered copies are the same clips every epoch, and a defense's
#: re-inversion checks (after it, and after each relapse fine-tune) shift the same clips by the same semitones; the
#: shift costs far more than the model's pass. 1 GiB holds about 16,000 one-second clips (float32).
_SHIFTED = _ShiftedClips(max_bytes=1 << 30)


def pitch_shifted(inputs: torch.Tensor, semitones: int, sampling_rate: int = 16_000) -> torch.Tensor:
    """Every clip of `inputs` (batch, length) shifted by `semitones`, the same length (not differentiable). Shifted
    clips are kept (on the CPU, up to 1 GiB), each keyed by its content, so a clip shifted before costs only a hash
    of its samples."""
    if semitones == 0:
        return inputs
    rows = []
    for row in inputs.detach().cpu().double().numpy():
        key = (
            int(semitones),
            int(sampling_rate),
            str(inputs.dtype),
            row.shape,
            hashlib.sha1(row.tobytes()).hexdigest(),
        )
        shifted = _SHIFTED.get(key)
        if shifted is None:
            shifted = torch.from_numpy(pitch_shift(row, sampling_rate, semitones)).to(dtype=inputs.dtype)
            _SHIFTED.put(key, shifted)
        rows.append(shifted)
    return torch.stack(rows).to(device=inputs.device)  # stacked: a new tensor the caller may change in place


def spectral_filter(inputs: torch.Tensor, log_gains: torch.Tensor) -> torch.Tensor:
    """`inputs` (batch, length) through a filter with one gain `exp(log_gains[f])` per STFT bin (differentiable
    in the gains)."""
    window = torch.hann_window(SPECTRAL_N_FFT, device=inputs.device, dtype=inputs.dtype)
    spectrum = torch.stft(
        inputs, SPECTRAL_N_FFT, SPECTRAL_HOP, window=window, return_complex=True, center=True
    )
    filtered = spectrum * torch.exp(log_gains).to(spectrum.real.dtype)[:, None]
    return torch.istft(filtered, SPECTRAL_N_FFT, SPECTRAL_HOP, window=window, length=inputs.shape[-1])


@dataclass
class InvertedTrigger:
    """One inverted trigger: a transform of the model's input that sends clips to `target`.

    Args:
        family: one of `FAMILIES`.
        target: the class id it sends clips to.
        success: the fraction of held-out other-class clips it sends to `target`.
        delta: the additive perturbation (length samples), for `"additive"`, `"burst"` and `"tonal"` (zero outside
            the window for the last two).
        semitones: the pitch shift, for `"spectral"`.
        log_gains: the filter's natural-log gain per STFT bin, for `"spectral"`.
        normalize: whether the model's input is normalised per clip (the spectral transform renormalises).
        sampling_rate: the input's sampling rate (for the pitch shift).
    """

    family: str
    target: int
    success: float
    delta: torch.Tensor | None = None
    semitones: int = 0
    log_gains: torch.Tensor | None = None
    normalize: bool = True
    sampling_rate: int = 16_000
    start_s: float | None = None
    window_s: float | None = None
    frequency_hz: float | None = None
    deltas: torch.Tensor | None = None
    starts_s: list[float] | None = None

    def apply(self, inputs: torch.Tensor) -> torch.Tensor:
        """`inputs` (batch, length) carrying the trigger. An additive perturbation shorter than the clips leaves
        their tail as it is; a longer one is cut to their length. A feature-map perturbation is added as it is. A
        burst at every start (`deltas`, one row per start) gives row i of `inputs` the burst `i mod starts`."""
        if self.deltas is not None:
            deltas = self.deltas.to(device=inputs.device, dtype=inputs.dtype)
            length = min(inputs.shape[-1], deltas.shape[-1])
            chosen = deltas[torch.arange(inputs.shape[0], device=inputs.device) % deltas.shape[0], :length]
            return inputs + F.pad(chosen, (0, inputs.shape[-1] - length))
        if self.delta is not None:
            delta = self.delta.to(device=inputs.device, dtype=inputs.dtype)
            if delta.dim() > 1:  # a feature map: the maps have one fixed size
                return inputs + delta
            length = inputs.shape[-1]
            if delta.shape[-1] >= length:
                return inputs + delta[:length]
            return inputs + F.pad(delta, (0, length - delta.shape[-1]))
        return self.apply_to_shifted(pitch_shifted(inputs, self.semitones, self.sampling_rate))

    def apply_to_shifted(self, shifted: torch.Tensor) -> torch.Tensor:
        """The spectral trigger's filter (and renormalisation) on clips already shifted by `semitones` (the pitch
        shift is the costly part: a caller that applies the trigger to the same clips again can keep them)."""
        filtered = spectral_filter(shifted, self.log_gains.to(device=shifted.device, dtype=shifted.dtype))
        return normalise(filtered) if self.normalize else filtered

    def describe(self) -> dict[str, Any]:
        """Its family, target, success and size, for records (no tensors)."""
        out: dict[str, Any] = {"family": self.family, "target": self.target, "success": self.success}
        if self.deltas is not None:
            out["l2_norm"] = float(self.deltas.norm(dim=-1).max())
            out["starts_s"] = [round(start, 4) for start in self.starts_s or []]
            out["window_s"] = round(float(self.window_s), 4)
        elif self.delta is not None:
            out["l2_norm"] = float(self.delta.norm())
            for name in ("start_s", "window_s", "frequency_hz"):
                if getattr(self, name) is not None:
                    out[name] = round(float(getattr(self, name)), 4)
        else:
            gains_db = 20 * self.log_gains.detach().double() / math.log(10)
            out["semitones"] = self.semitones
            out["max_abs_gain_db"] = float(gains_db.abs().max())
        return out


@torch.no_grad()
def trigger_success(model: nn.Module, batches: Sequence[dict], trigger: InvertedTrigger) -> float:
    """The fraction of the clips of `batches` that `trigger` sends to its target."""
    hits, count, name = 0, 0, input_name(model)
    for batch in batches:
        logits = model(**{name: trigger.apply(batch[name])}).logits
        hits += int((logits.argmax(-1) == trigger.target).sum())
        count += batch[name].shape[0]
    return hits / max(count, 1)


def invert_additive(
    model: nn.Module, batches: Sequence[dict], target: int, steps: int, budget: float
) -> InvertedTrigger:
    """Optimise one additive perturbation of the (normalised) input, shared by every clip, within an L2 ball of
    radius `budget · sqrt(length)`, to send the first batch's clips to `target` (`steps` normalised-gradient steps
    of a quarter of the radius); its success is measured on the other batches (on the first, if there is only
    one). The scan's `universal_perturbation_gap` is built on this. On a model that takes feature maps the
    perturbation is one map and the radius `budget · sqrt(size) · rms` (rms: the batch's root mean square
    feature)."""
    train, held_out = batches[0], list(batches[1:]) or list(batches[:1])
    name = input_name(model)
    inputs = train[name]
    if name == "input_values":
        radius = budget * math.sqrt(inputs.shape[-1])
        delta = torch.zeros(inputs.shape[-1], dtype=inputs.dtype, device=inputs.device)
    else:
        scale = float(inputs.detach().double().pow(2).mean().sqrt().clamp_min(1e-12))
        radius = budget * math.sqrt(inputs[0].numel()) * scale
        delta = torch.zeros(inputs.shape[1:], dtype=inputs.dtype, device=inputs.device)
    labels = torch.full((inputs.shape[0],), target, dtype=torch.long, device=inputs.device)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(**{name: inputs + delta}).logits.float(), labels)
        (grad,) = torch.autograd.grad(loss, [delta])
        with torch.no_grad():
            delta = delta - (radius / 4) * grad / grad.norm().clamp_min(1e-12)
            delta = delta * min(1.0, radius / float(delta.norm().clamp_min(1e-12)))
    trigger = InvertedTrigger("additive", int(target), 0.0, delta=delta.detach())
    trigger.success = trigger_success(model, held_out, trigger)
    return trigger


@torch.no_grad()
def shift_predictions(
    model: nn.Module,
    batches: Sequence[dict],
    semitone_grid: Sequence[int],
    sampling_rate: int,
    normalize: bool,
) -> dict[int, torch.Tensor]:
    """Semitones -> the predicted class of every clip of `batches` (in order) shifted by that many semitones."""
    out = {}
    for semitones in semitone_grid:
        predicted = []
        for batch in batches:
            shifted = pitch_shifted(batch["input_values"], semitones, sampling_rate)
            predicted.append(
                model(input_values=normalise(shifted) if normalize else shifted).logits.argmax(-1)
            )
        out[semitones] = torch.cat(predicted)
    return out


def best_shift(predictions: dict[int, torch.Tensor], rows: torch.Tensor | slice, target: int) -> int:
    """The semitone shift that sends most of `rows` to `target` (ties: the smaller shift, then the lower one)."""
    hits = {semitones: int((predicted[rows] == target).sum()) for semitones, predicted in predictions.items()}
    return max(sorted(hits), key=lambda semitones: (hits[semitones], -abs(semitones)))


def invert_spectral(
    model: nn.Module,
    batches: Sequence[dict],
    target: int,
    steps: int,
    max_gain_db: float,
    max_semitones: int = 12,
    *,
    semitones: int | None = None,
    normalize: bool = True,
    sampling_rate: int = 16_000,
) -> InvertedTrigger:
    """Find the pitch shift (whole semitones in `[-max_semitones, max_semitones]`; given as `semitones`, the
    search is skipped) that sends most of the first batch's clips to `target`, then learn a filter on top of it
    (one gain per STFT bin within `±max_gain_db`, `steps` normalised-gradient steps of a quarter of the bound,
    starting flat; none when `steps` is 0); its success is measured on the other batches (on the first, if there
    is only one)."""
    train, held_out = batches[0], list(batches[1:]) or list(batches[:1])
    inputs = train["input_values"]
    if semitones is None:
        grid = range(-max_semitones, max_semitones + 1)
        predictions = shift_predictions(model, [train], grid, sampling_rate, normalize)
        semitones = best_shift(predictions, slice(None), target)
    shifted = pitch_shifted(inputs, semitones, sampling_rate)
    bound = max_gain_db * math.log(10) / 20
    log_gains = torch.zeros(SPECTRAL_N_FFT // 2 + 1, dtype=inputs.dtype, device=inputs.device)
    labels = torch.full((inputs.shape[0],), target, dtype=torch.long, device=inputs.device)
    for _ in range(steps):
        log_gains.requires_grad_(True)
        filtered = spectral_filter(shifted, log_gains)
        logits = model(input_values=normalise(filtered) if normalize else filtered).logits.float()
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels), [log_gains])
        with torch.no_grad():
            step = (bound / 4) * grad / grad.abs().max().clamp_min(1e-12)
            log_gains = (log_gains - step).clamp(-bound, bound)
    trigger = InvertedTrigger(
        "spectral",
        int(target),
        0.0,
        semitones=int(semitones),
        log_gains=log_gains.detach(),
        normalize=normalize,
        sampling_rate=sampling_rate,
    )
    trigger.success = trigger_success(model, held_out, trigger)
    return trigger


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window starts from 0 every `stride` samples, and the last start that fits (`length - window`)."""
    starts = list(range(0, max(length - window, 0) + 1, max(stride, 1)))
    if starts[-1] != max(length - window, 0):
        starts.append(max(length - window, 0))
    return starts


def _target_loss(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(input_values=inputs).logits.float(), labels)


def _project_pattern(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    pattern: torch.Tensor,
    start: int,
    radius: float,
    steps: int,
) -> tuple[torch.Tensor, float]:
    """`steps` normalised-gradient steps (a quarter of `radius`) of `pattern`, added at `start`, within the L2 ball
    of `radius`; returns the pattern and the loss at it."""
    window = pattern.shape[-1]
    for _ in range(steps):
        pattern.requires_grad_(True)
        padded = F.pad(pattern, (start, inputs.shape[-1] - start - window))
        (grad,) = torch.autograd.grad(_target_loss(model, inputs + padded, labels), [pattern])
        with torch.no_grad():
            pattern = pattern - (radius / 4) * grad / grad.norm().clamp_min(1e-12)
            pattern = pattern * min(1.0, radius / float(pattern.norm().clamp_min(1e-12)))
    with torch.no_grad():
        padded = F.pad(pattern, (start, inputs.shape[-1] - start - window))
        loss = float(_target_loss(model, inputs + padded, labels))
    return pattern.detach(), loss


def _window_geometry(
    inputs: torch.Tensor, window_s: float, level_db: float, stride_s: float, sampling_rate: int
) -> tuple[int, int, float]:
    """(window samples, stride samples, L2 radius of a sound at `level_db` re a unit-power clip over the window)."""
    length = inputs.shape[-1]
    window = max(1, min(length, int(round(window_s * sampling_rate))))
    stride = max(1, int(round(stride_s * sampling_rate)))
    return window, stride, 10 ** (level_db / 20) * math.sqrt(window)


def invert_burst(
    model: nn.Module,
    batches: Sequence[dict],
    target: int,
    steps: int,
    *,
    window_s: float = 0.2,
    level_db: float = -15.0,
    stride_s: float = 0.05,
    sampling_rate: int = 16_000,
    every_start: bool = False,
) -> InvertedTrigger:
    """A time-localised trigger towards `target`: one free pattern in a window of `window_s` seconds, within an L2
    radius of `level_db` re the (normalised, unit-power) clip over the window.

    The window's start is searched first: every start on a `stride_s` grid gets a few steps (`max(2, steps // 10)`)
    at a quarter of the radius, and the start whose pattern brings the clips closest to `target` wins; the pattern
    is then optimised there for `steps` normalised-gradient steps at the full radius. The search finds *a* place
    where a short sound reaches the target, not necessarily the trigger's: on `make demo`'s suspect the true noise
    burst fires at 0.05 s and nowhere from 0.2 s on, while an optimised pattern reaches "yes" from anywhere and the
    search picked 0.8 s.

    With `every_start`, one pattern at every start of the grid instead (each optimised for `max(1, steps // 3)`
    steps; the trigger's `deltas`, applied one per clip in turn): a short loud sound anywhere, the trigger's place
    among them. Its success is the share of held-out clips sent to `target` with each clip's burst.

    Optimised on the first batch, its success measured on the others (on the first, if there is only one)."""
    train, held_out = batches[0], list(batches[1:]) or list(batches[:1])
    inputs = train["input_values"]
    window, stride, radius = _window_geometry(inputs, window_s, level_db, stride_s, sampling_rate)
    labels = torch.full((inputs.shape[0],), target, dtype=torch.long, device=inputs.device)
    starts = window_starts(inputs.shape[-1], window, stride)
    if every_start:
        deltas = []
        for start in starts:
            zero = torch.zeros(window, dtype=inputs.dtype, device=inputs.device)
            pattern = _project_pattern(model, inputs, labels, zero, start, radius, max(1, steps // 3))[0]
            deltas.append(F.pad(pattern, (start, inputs.shape[-1] - start - window)))
        trigger = InvertedTrigger("burst", int(target), 0.0, sampling_rate=sampling_rate, deltas=torch.stack(deltas),
                                  starts_s=[start / sampling_rate for start in starts],
                                  window_s=window / sampling_rate)  # fmt: skip
        trigger.success = trigger_success(model, held_out, trigger)
        return trigger
    losses = {}
    for candidate in starts:
        zero = torch.zeros(window, dtype=inputs.dtype, device=inputs.device)
        losses[candidate] = _project_pattern(
            model, inputs, labels, zero, candidate, radius / 4, max(2, steps // 10)
        )[1]
    start = min(starts, key=lambda s: (losses[s], s))
    zero = torch.zeros(window, dtype=inputs.dtype, device=inputs.device)
    pattern, _ = _project_pattern(model, inputs, labels, zero, start, radius, steps)
    delta = F.pad(pattern, (start, inputs.shape[-1] - start - window))
    trigger = InvertedTrigger("burst", int(target), 0.0, delta=delta, sampling_rate=sampling_rate,
                              start_s=start / sampling_rate, window_s=window / sampling_rate)  # fmt: skip
    trigger.success = trigger_success(model, held_out, trigger)
    return trigger


def tone_grid(sampling_rate: int, points: int = 48, lowest_hz: float = 80.0) -> np.ndarray:
    """The tonal family's frequency grid: `points` log-spaced frequencies from `lowest_hz` to 0.48 of the rate."""
    return np.geomspace(lowest_hz, 0.48 * sampling_rate, points)


def _tone(
    frequency: float, window: int, sampling_rate: int, dtype, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-power sine and cosine of `frequency` over `window` samples."""
    t = torch.arange(window, dtype=torch.float64, device=device) / sampling_rate
    phase = 2 * math.pi * frequency * t
    return (math.sqrt(2) * torch.sin(phase)).to(dtype), (math.sqrt(2) * torch.cos(phase)).to(dtype)


@torch.no_grad()
def _tone_loss(model, inputs, labels, frequency, start, window, level, sampling_rate) -> float:
    sine, _ = _tone(frequency, window, sampling_rate, inputs.dtype, inputs.device)
    padded = F.pad(level * sine, (start, inputs.shape[-1] - start - window))
    return float(_target_loss(model, inputs + padded, labels))


def invert_tonal(
    model: nn.Module,
    batches: Sequence[dict],
    target: int,
    steps: int,
    *,
    window_s: float = 0.2,
    level_db: float = -15.0,
    stride_s: float = 0.05,
    sampling_rate: int = 16_000,
) -> InvertedTrigger:
    """A tone towards `target`: a sinusoid in a window of `window_s` seconds, its power at most `level_db` re the
    (normalised, unit-power) clip. The frequency is searched first with the tone over the whole clip at that level
    ([`tone_grid`], then 9 points between the best point's neighbours), by the loss towards `target`; then the
    window's start on a `stride_s` grid; then amplitude and phase (a sine and a cosine weight, within the level) by
    `steps` normalised-gradient steps. Optimised on the first batch, its success measured on the others (on the
    first, if there is only one)."""
    train, held_out = batches[0], list(batches[1:]) or list(batches[:1])
    inputs = train["input_values"]
    length = inputs.shape[-1]
    window, stride, _ = _window_geometry(inputs, window_s, level_db, stride_s, sampling_rate)
    level = 10 ** (level_db / 20)
    labels = torch.full((inputs.shape[0],), target, dtype=torch.long, device=inputs.device)
    grid = tone_grid(sampling_rate)
    coarse = [_tone_loss(model, inputs, labels, f, 0, length, level, sampling_rate) for f in grid]
    best = int(np.argmin(coarse))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    fine = np.geomspace(low, high, 9)
    frequency = float(
        min(fine, key=lambda f: _tone_loss(model, inputs, labels, f, 0, length, level, sampling_rate))
    )
    starts = window_starts(length, window, stride)
    start = min(starts, key=lambda s: (_tone_loss(model, inputs, labels, frequency, s, window, level,
                                                  sampling_rate), s))  # fmt: skip
    sine, cosine = _tone(frequency, window, sampling_rate, inputs.dtype, inputs.device)
    weights = torch.tensor([level, 0.0], dtype=inputs.dtype, device=inputs.device)
    for _ in range(steps):
        weights.requires_grad_(True)
        padded = F.pad(weights[0] * sine + weights[1] * cosine, (start, length - start - window))
        (grad,) = torch.autograd.grad(_target_loss(model, inputs + padded, labels), [weights])
        with torch.no_grad():
            weights = weights - (level / 4) * grad / grad.norm().clamp_min(1e-12)
            weights = weights * min(1.0, level / float(weights.norm().clamp_min(1e-12)))
    weights = weights.detach()
    delta = F.pad(weights[0] * sine + weights[1] * cosine, (start, length - start - window))
    trigger = InvertedTrigger("tonal", int(target), 0.0, delta=delta, sampling_rate=sampling_rate,
                              start_s=start / sampling_rate, window_s=window / sampling_rate,
                              frequency_hz=frequency)  # fmt: skip
    trigger.success = trigger_success(model, held_out, trigger)
    return trigger


@dataclass
class InversionSettings:
    """How hard each family tries (the defender's budget).

    Args:
        families: the families to invert (see the module docs).
        steps: optimisation steps per class and family.
        budget: the additive perturbation's L2 radius over the square root of the clip length.
        max_gain_db: the spectral filter's largest gain or cut, in dB.
        max_semitones: the spectral family's largest pitch shift, in semitones either way.
        filter_steps: the spectral filter's optimisation steps (`None`: `steps`; 0: the pitch shift alone).
        window_s: the burst and tonal families' window, in seconds (cut to the clip).
        level_db: their largest energy in that window, in dB re the clip's (a normalised clip has unit power).
        stride_s: the grid of window starts they search, in seconds.
        burst_every_start: the burst family inverts one pattern at every start of that grid, instead of searching
            one start ([`invert_burst`]).
        shape_steps: the burst and tonal families' optimisation steps (`None`: `steps`).
    """

    families: list[str] = field(default_factory=lambda: list(DETECTION_FAMILIES))
    steps: int = 60
    budget: float = 0.02
    max_gain_db: float = 12.0
    max_semitones: int = 12
    filter_steps: int | None = None
    window_s: float = 0.2
    level_db: float = -15.0
    stride_s: float = 0.05
    burst_every_start: bool = False
    shape_steps: int | None = None

    def __post_init__(self) -> None:
        check_inversion_settings(self.budget, self.steps, self.max_gain_db, self.max_semitones, self.families,
                                 self.window_s, self.level_db, self.stride_s)  # fmt: skip
        steps = self.filter_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise InversionError(f"filter_steps must be an integer >= 0, got {steps!r}")
        if self.shape_steps is not None:
            check_inversion_settings(steps=self.shape_steps)

    @property
    def spectral_filter_steps(self) -> int:
        return self.steps if self.filter_steps is None else self.filter_steps

    @property
    def localised_steps(self) -> int:
        """The burst and tonal families' steps."""
        return self.steps if self.shape_steps is None else self.shape_steps


def invert(
    model: nn.Module,
    batches: Sequence[dict],
    target: int,
    family: str,
    settings: InversionSettings,
    *,
    semitones: int | None = None,
    normalize: bool = True,
    sampling_rate: int = 16_000,
) -> InvertedTrigger:
    """One family's inversion towards `target` from `batches` (other-class clips; see [`invert_additive`],
    [`invert_spectral`], [`invert_burst`] and [`invert_tonal`]). The model is put in eval mode for it and its mode restored."""
    if family not in supported_families(model):
        raise InversionError(
            f"the {family} family acts on the waveform, and this model takes {input_name(model)}: use "
            f"{supported_families(model)}"
        )
    was_training = model.training
    model.eval()
    try:
        if family == "additive":
            return invert_additive(model, batches, target, settings.steps, settings.budget)
        if family == "spectral":
            return invert_spectral(
                model,
                batches,
                target,
                settings.spectral_filter_steps,
                settings.max_gain_db,
                settings.max_semitones,
                semitones=semitones,
                normalize=normalize,
                sampling_rate=sampling_rate,
            )
        if family in LOCALISED_FAMILIES:
            shape = dict(window_s=settings.window_s, level_db=settings.level_db, stride_s=settings.stride_s,
                         sampling_rate=sampling_rate)  # fmt: skip
            if family == "burst":
                return invert_burst(model, batches, target, settings.localised_steps,
                                    every_start=settings.burst_every_start, **shape)  # fmt: skip
            return invert_tonal(model, batches, target, settings.localised_steps, **shape)
        raise InversionError(f"unknown inversion family {family!r}; use one of {', '.join(FAMILIES)}")
    finally:
        model.train(was_training)


@dataclass
class ClassInversion:
    """Every class's inversion by every family, and the classes whose success stands out.

    Args:
        success: family -> class id -> success on held-out clips.
        gap: family -> the largest class's success minus the median class's.
        suspected: family -> the class with the largest success.
        triggers: family -> class id -> the inverted trigger.
    """

    success: dict[str, dict[int, float]]
    gap: dict[str, float]
    suspected: dict[str, int]
    triggers: dict[str, dict[int, InvertedTrigger]] = field(default_factory=dict, repr=False)

    def suspects(self, threshold: float) -> list[int]:
        """The classes some family's gap names, where that gap exceeds `threshold` (ascending ids)."""
        return sorted({self.suspected[family] for family, gap in self.gap.items() if gap > threshold})

    def describe(self) -> dict[str, Any]:
        return {
            "success": {
                family: {str(c): s for c, s in values.items()} for family, values in self.success.items()
            },
            "gap": dict(self.gap),
            "suspected": dict(self.suspected),
        }


def model_input(model: nn.Module, extractor: Any) -> tuple[dict[str, Any], bool, int]:
    """How inversion batches meet `model`: `audio_batches` keywords (its device and dtype), whether the extractor
    normalises each clip, and its sampling rate."""
    first = next(model.parameters())
    normalize = bool(getattr(extractor, "do_normalize", True))
    return (
        {"device": first.device, "dtype": first.dtype},
        normalize,
        int(getattr(extractor, "sampling_rate", 16_000)),
    )


def class_batches(
    clips: Any, extractor: Any, target: int, batch_size: int, *, label_column: str = "label", **batching: Any
) -> list[dict]:
    """The clips of `clips` (a dataset) whose label is not `target`, in order, as model batches labelled
    `target`."""
    labels = np.asarray(clips[label_column])
    others = np.flatnonzero(labels != target)
    if others.size == 0:
        return []
    return list(audio_batches(clips.select(others), extractor, batch_size, labels=target, **batching))


def invert_classes(
    model: nn.Module,
    extractor: Any,
    clips: Any,
    settings: InversionSettings,
    *,
    classes: Sequence[int] | None = None,
    batch_size: int = 32,
    label_column: str = "label",
) -> ClassInversion:
    """Invert every class of `classes` (default: every class of the clips' label feature) with every family of
    `settings` that can invert the model ([`supported_families`]), from the clean labelled dataset `clips`.

    Raises:
        InversionError: fewer than 2 classes in the label space, or fewer than 2 labels present in the clips (an
            inversion compares classes: with one, there are no other-class clips to send anywhere).
    """
    names = clips.features[label_column].names
    present = set(int(label) for label in clips[label_column])
    if len(names) < 2:
        raise InversionError("trigger inversion compares classes: the model must have at least 2")
    if len(present) < 2:
        raise InversionError(
            f"trigger inversion needs clean clips of at least 2 classes, got only {sorted(present)}"
        )
    batching, normalize, rate = model_input(model, extractor)
    classes = list(range(len(names))) if classes is None else list(classes)
    labels = torch.as_tensor(clips[label_column])
    families = supported_families(model, settings.families)
    if not families:
        raise InversionError(f"none of the families {settings.families} can invert a model that takes "
                             f"{input_name(model)}: use {supported_families(model)}")  # fmt: skip
    shifts = None
    if "spectral" in families:  # every clip's prediction at every shift, once for all classes
        was_training = model.training
        model.eval()
        try:
            everything = list(audio_batches(clips, extractor, batch_size, label_column=None, **batching))
            grid = range(-settings.max_semitones, settings.max_semitones + 1)
            predictions = shift_predictions(model, everything, grid, rate, normalize)
            shifts = {semitones: predicted.cpu() for semitones, predicted in predictions.items()}
        finally:
            model.train(was_training)
    success: dict[str, dict[int, float]] = {family: {} for family in families}
    triggers: dict[str, dict[int, InvertedTrigger]] = {family: {} for family in families}
    for target in classes:
        batches = class_batches(clips, extractor, target, batch_size, label_column=label_column, **batching)
        if not batches:
            continue
        others = torch.nonzero(labels != target).flatten()
        train_rows, held_rows = others[:batch_size], others[batch_size:]
        for family in families:
            semitones = best_shift(shifts, train_rows, target) if family == "spectral" else None
            if family == "spectral" and settings.spectral_filter_steps == 0:
                rows = held_rows if held_rows.numel() else train_rows  # the pitch shift alone: no model call
                share = float((shifts[semitones][rows] == target).float().mean())
                flat = torch.zeros(SPECTRAL_N_FFT // 2 + 1)
                trigger = InvertedTrigger("spectral", int(target), share, semitones=semitones, log_gains=flat,
                                          normalize=normalize, sampling_rate=rate)  # fmt: skip
            else:
                trigger = invert(model, batches, target, family, settings, semitones=semitones,
                                 normalize=normalize, sampling_rate=rate)  # fmt: skip
            success[family][target] = trigger.success
            triggers[family][target] = trigger
    gap, suspected = {}, {}
    for family, values in success.items():
        ordered = np.array([values[c] for c in sorted(values)])
        gap[family] = float(ordered.max() - np.median(ordered))
        suspected[family] = sorted(values)[int(ordered.argmax())]
    return ClassInversion(success, gap, suspected, triggers)


#: a class is a suspected target when a family's gap (its success over the median class's) exceeds this: for the
#: additive family the scan's calibrated threshold at the detection settings (`analysis/scan_calibration.json`);
#: for the spectral family's pitch search, a value between a noise-burst suspect's 0.33 and style / PBSM suspects'
#: 0.59 / 0.88 (tiny Wav2Vec2s of the small grid)
DEFAULT_THRESHOLDS = {"additive": 0.1346, "spectral": 0.5}


def detection_settings(families: Sequence[str] = DETECTION_FAMILIES) -> InversionSettings:
    """The detection's settings: the scan's additive inversion (radius 0.01, 20 steps) and the pitch search alone."""
    return InversionSettings(list(families), steps=20, budget=0.01, filter_steps=0)


def rank_suspects(
    detection: ClassInversion, thresholds: dict[str, float], limit: int | None = None
) -> list[int]:
    """The classes some family's gap names above its threshold, the largest margin over its threshold first, at
    most `limit`."""
    ranked = sorted(
        ((gap - thresholds[family], detection.suspected[family]) for family, gap in detection.gap.items()
         if gap > thresholds[family]),
        reverse=True,
    )  # fmt: skip
    targets: list[int] = []
    for _, target in ranked:
        if target not in targets:
            targets.append(target)
    return targets if limit is None else targets[:limit]


def reinversion_clips(clips: Any, max_clips: int = 128, seed: int = 0) -> Any:
    """The clean clips a re-inversion check uses: at most `max_clips`, drawn with `seed`."""
    return clips.shuffle(seed=seed).select(range(max_clips)) if len(clips) > max_clips else clips


def reinversion_check(
    suspect: nn.Module,
    defended: nn.Module,
    extractor: Any,
    clips: Any,
    *,
    settings: InversionSettings | None = None,
    thresholds: dict[str, float] | None = None,
    max_clips: int = 128,
    seed: int = 0,
    batch_size: int = 32,
    detection: ClassInversion | None = None,
) -> dict[str, Any]:
    """Is the defended model still easy to push to a suspected target? From clean clips only (the defender's
    evidence): every class of the suspect is inverted ([`detection_settings`]), the classes whose gap stands out
    ([`rank_suspects`]) are the suspected targets, and a fresh inversion of each against the defended model
    measures how many held-out clips it still sends there.

    `detection`: the suspect's inversion on the same clips with the same settings, when already measured (the
    benchmark measures it once per suspect).

    Returns:
        A record: `targets` (suspected class ids), `suspect` (the suspect's per-class detection), `defended` (family ->
        target -> success against the defended model), `max_success_before` / `max_success_after` (the largest
        success over the targets and families; `None` when no class is suspected).
    """
    settings = settings or detection_settings()
    thresholds = thresholds or DEFAULT_THRESHOLDS
    clips = reinversion_clips(clips, max_clips, seed)
    detection = detection or invert_classes(suspect, extractor, clips, settings, batch_size=batch_size)
    targets = rank_suspects(detection, thresholds)
    after = (
        invert_classes(defended, extractor, clips, settings, classes=targets, batch_size=batch_size)
        if targets
        else None
    )
    record: dict[str, Any] = {
        "targets": targets,
        "thresholds": dict(thresholds),
        "clips": len(clips),
        "suspect": detection.describe(),
        "defended": after.describe()["success"] if after else {},
        "max_success_before": None,
        "max_success_after": None,
    }
    if targets:
        record["max_success_before"] = max(
            detection.success[f][t] for f in detection.success for t in targets
        )
        record["max_success_after"] = max(after.success[f][t] for f in after.success for t in targets)
    return record


def candidate_classes(
    detection: ClassInversion, thresholds: dict[str, float], per_family: int = 3
) -> dict[str, list[int]]:
    """Family -> the classes whose success exceeds the family's median class's by more than its threshold, the
    most successful first, at most `per_family`."""
    out = {}
    for family, values in detection.success.items():
        median = float(np.median([values[c] for c in sorted(values)]))
        above = [
            c for c in sorted(values, key=lambda c: -values[c]) if values[c] - median > thresholds[family]
        ]
        out[family] = above[:per_family]
    return out


def refine_suspects(
    model: nn.Module,
    extractor: Any,
    clips: Any,
    candidates: dict[str, list[int]],
    settings: InversionSettings,
    *,
    batch_size: int = 32,
    label_column: str = "label",
    detection: ClassInversion | None = None,
) -> list[dict[str, Any]]:
    """Invert every candidate (class, family) again with `settings` (a stronger budget than the detection's) and
    rank them by success, highest first. `detection`: the detection's inversion of the same `clips` with the same
    `batch_size`, whose pitch shifts are then reused (the same search on the same clips finds the same shift). A backdoor's target is reached almost always at such a budget, while a
    class that is merely easy to reach (a "natural" sink of universal perturbations) stays lower: measured on tiny
    Wav2Vec2 suspects, 0.90–0.99 for the true target against 0.45–0.62 for the wrong classes the detection's gap
    named first.

    Returns:
        One row per (class, family): `target`, `family`, `success` and `trigger` (the [`InvertedTrigger`]), most
        successful first.
    """
    batching, normalize, rate = model_input(model, extractor)
    ranked = []
    for family, classes in candidates.items():
        for target in classes:
            batches = class_batches(
                clips, extractor, target, batch_size, label_column=label_column, **batching
            )
            found = (detection.triggers.get(family) or {}).get(target) if detection is not None else None
            semitones = found.semitones if family == "spectral" and found is not None else None
            trigger = invert(model, batches, target, family, settings, semitones=semitones, normalize=normalize,
                             sampling_rate=rate)  # fmt: skip
            ranked.append(
                {"target": target, "family": family, "success": trigger.success, "trigger": trigger}
            )
    return sorted(ranked, key=lambda row: -row["success"])
