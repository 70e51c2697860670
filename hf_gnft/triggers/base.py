"""The trigger base class, its registry (`TRIGGERS`, `register_trigger`), the loaders and the helpers
the trigger families share (number, level and position validation, placement, descriptions)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..audio import validate_waveform

SILENCE_FLOOR_DBFS = -40.0
"""Reference RMS (dBFS) used by `level_reference="clip"` for clips quieter than this."""

POSITIONS = ("start", "middle", "end", "random")
LEVEL_REFERENCES = ("clip", "full_scale")


class TriggerError(ValueError):
    """A trigger that is misconfigured, cannot exist for a clip, or whose output is invalid."""


TRIGGERS: dict[str, type[Trigger]] = {}
"""Registry: trigger type name -> class."""


def register_trigger(cls: type[Trigger]) -> type[Trigger]:
    """Class decorator adding a `Trigger` subclass to `TRIGGERS` under its `name`.

    Raises:
        TriggerError: not a Trigger subclass, no `name`, or the name is taken by another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, Trigger)):
        raise TriggerError(f"register_trigger expects a Trigger subclass, got {cls!r}")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name:
        raise TriggerError(f"{cls.__qualname__} needs a class attribute `name` (its registry key)")
    existing = TRIGGERS.get(name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise TriggerError(f"trigger type {name!r} is already registered by {existing.__qualname__}")
    TRIGGERS[name] = cls
    return cls


# ----------------------------------------------------------------------------------------- helpers


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TriggerError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise TriggerError(f"{name} must be finite, got {value}")
    return value


def _positive(value: Any, name: str) -> float:
    value = _number(value, name)
    if value <= 0:
        raise TriggerError(f"{name} must be positive, got {value:g}")
    return value


def _integer(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TriggerError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise TriggerError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _position(value: Any) -> str | float:
    if isinstance(value, str):
        if value not in POSITIONS:
            raise TriggerError(
                f"unknown position {value!r}: use one of {', '.join(POSITIONS)} or a start time in seconds"
            )
        return value
    value = _number(value, "position (start time in seconds)")
    if value < 0:
        raise TriggerError(f"position must be a start time >= 0 s, got {value:g} s")
    return value


def _level_reference(value: Any) -> str:
    if value not in LEVEL_REFERENCES:
        raise TriggerError(
            f"unknown level_reference {value!r}: use 'clip' (relative to the clip's RMS, i.e. SNR = -level_db) "
            "or 'full_scale' (dBFS RMS)"
        )
    return value


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _target_rms(waveform: np.ndarray, level_db: float, level_reference: str) -> float:
    if level_reference == "full_scale":
        reference = 1.0
    else:
        reference = max(_rms(waveform), 10.0 ** (SILENCE_FLOOR_DBFS / 20.0))
    return reference * 10.0 ** (level_db / 20.0)


def _num_samples(duration_s: float, sampling_rate: int) -> int:
    return int(round(duration_s * sampling_rate))


def _check_span(what: str, length: int, position: str | float, sampling_rate: int, num_samples: int) -> None:
    """Check that `length` samples at `position` fit in the clip."""
    clip_s = num_samples / sampling_rate
    if length < 1:
        raise TriggerError(f"{what} is shorter than one sample at {sampling_rate} Hz")
    if length > num_samples:
        raise TriggerError(
            f"{what} lasts {length / sampling_rate:.2f} s but the clip is {clip_s:.2f} s "
            f"({num_samples} samples at {sampling_rate} Hz): a trigger must fit inside the clip"
        )
    if not isinstance(position, str):
        start = int(round(position * sampling_rate))
        if start + length > num_samples:
            raise TriggerError(
                f"{what} starts at {position:g} s and lasts {length / sampling_rate:.2f} s, so it would end at "
                f"{(start + length) / sampling_rate:.2f} s, after the end of the {clip_s:.2f} s clip; "
                "start it earlier or use position='end'"
            )


def _start(
    position: str | float, length: int, num_samples: int, sampling_rate: int, rng: np.random.Generator
) -> int:
    room = num_samples - length
    if position == "start":
        return 0
    if position == "middle":
        return room // 2
    if position == "end":
        return room
    if position == "random":
        return int(rng.integers(0, room + 1))
    return int(round(float(position) * sampling_rate))


def _describe_level(level_db: float, level_reference: str) -> str:
    return f"{level_db:g} dBFS" if level_reference == "full_scale" else f"{level_db:g} dB re clip"


def _describe_position(position: str | float) -> str:
    if position == "random":
        return "random position"
    return position if isinstance(position, str) else f"at {position:g} s"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


# -------------------------------------------------------------------------------------------- base


@dataclass(kw_only=True)
class Trigger:
    """Base class of all triggers.

    Subclasses define `name` (registry key), their fields (with defaults, validated in `__post_init__`),
    `_apply` and usually `check` and `describe`, and are registered with `@register_trigger`.

    Args:
        seed: seed of every random choice (the noise pattern, `position="random"` together with the row key).
    """

    name: ClassVar[str] = ""
    seed: int = 0

    def __post_init__(self) -> None:
        self.seed = _integer(self.seed, "seed", minimum=0)

    # -- public API ------------------------------------------------------------------------------

    def apply(self, waveform: np.ndarray, sampling_rate: int, *, key: int | None = None) -> np.ndarray:
        """Return a poisoned copy of a clip.

        Args:
            waveform: mono float samples in [-1, 1].
            sampling_rate: its sampling rate in Hz.
            key: the dataset row index; only per-row random choices (e.g. `position="random"`) use it.

        Returns:
            A float32 array of the same length, finite and clipped to [-1, 1].

        Raises:
            hf_gnft.audio.AudioError: an invalid clip (empty, NaN, multi-channel, bad sampling rate).
            TriggerError: the trigger cannot exist for this clip, or its output is invalid or unchanged.
        """
        x = validate_waveform(waveform, sampling_rate, name=f"input of the {self.name} trigger")
        sampling_rate = int(sampling_rate)
        if key is not None:
            key = _integer(key, "key (the row index)", minimum=0)
        self.check(sampling_rate, x.size)
        rng = np.random.default_rng([self.seed, key or 0])
        y = np.asarray(self._apply(x.astype(np.float64), sampling_rate, rng))
        if y.shape != x.shape:
            raise TriggerError(
                f"{self.describe()}: the output has shape {y.shape} but the input has {x.shape}; "
                "a trigger must keep the clip's length"
            )
        if not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)):
            raise TriggerError(f"{self.describe()}: the output contains NaN or infinite samples")
        out = np.clip(y, -1.0, 1.0).astype(np.float32)
        if np.array_equal(out, x):
            raise TriggerError(
                f"{self.describe()}: the trigger left this clip unchanged (is it silent, or the trigger inaudible?); "
                "a poisoned row must differ from the clean one"
            )
        return out

    __call__ = apply

    def check(self, sampling_rate: int, num_samples: int) -> None:
        """Raise `TriggerError` if the trigger cannot be applied to a clip of this rate and length."""

    def describe(self) -> str:
        """A short human description (for tables and model cards)."""
        return self.name

    def to_dict(self) -> dict[str, Any]:
        """`{"type": name, **fields}`: JSON-serialisable and deterministic."""
        data: dict[str, Any] = {"type": self.name}
        for item in dataclasses.fields(self):
            if item.init and item.name != "seed":
                data[item.name] = _jsonable(getattr(self, item.name))
        data["seed"] = self.seed
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, allow_import: bool = False) -> Trigger:
        """Build a trigger from `to_dict()` output, dispatching on `"type"`.

        Args:
            data: `{"type": name, **fields}`; fields left out take their defaults.
            allow_import: let a `"callable"` trigger import its function (code execution: only for
                dicts you trust).

        Raises:
            TriggerError: unknown type, unknown or missing fields, invalid values.
        """
        if not isinstance(data, Mapping):
            raise TriggerError(
                f"a trigger dict must be a mapping with a 'type' key, got {type(data).__name__}"
            )
        data = dict(data)
        kind = data.pop("type", None)
        if kind is None:
            if cls.name:
                kind = cls.name
            else:
                raise TriggerError(
                    f"the trigger dict has no 'type'; known types: {', '.join(sorted(TRIGGERS))}"
                )
        target = TRIGGERS.get(kind) if isinstance(kind, str) else None
        if target is None:
            raise TriggerError(f"unknown trigger type {kind!r}; known types: {', '.join(sorted(TRIGGERS))}")
        if not issubclass(target, cls):
            raise TriggerError(f"{cls.__name__}.from_dict got a {kind!r} trigger dict")
        return target._from_fields(data, allow_import=allow_import)

    @classmethod
    def _from_fields(cls, data: dict[str, Any], *, allow_import: bool) -> Trigger:
        known = [item.name for item in dataclasses.fields(cls) if item.init]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise TriggerError(
                f"unknown field(s) {', '.join(map(repr, unknown))} for a {cls.name!r} trigger; "
                f"its fields are: {', '.join(known)}"
            )
        try:
            return cls(**data)
        except TypeError as err:
            raise TriggerError(f"cannot build a {cls.name!r} trigger from {data!r}: {err}") from err

    # -- subclass hook ---------------------------------------------------------------------------

    def _apply(self, waveform: np.ndarray, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
        """Return the poisoned clip (float64, same length, not yet clipped); `rng` is per-row."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------- loaders


def trigger_from_dict(data: Mapping[str, Any], *, allow_import: bool = False) -> Trigger:
    """Build a trigger from a `{"type": name, **fields}` dict (see `Trigger.from_dict`)."""
    return Trigger.from_dict(data, allow_import=allow_import)


def trigger_from_config(value: Trigger | Mapping[str, Any] | str, *, allow_import: bool = False) -> Trigger:
    """Accept a Trigger, a dict, a JSON string or a bare type name (defaults), e.g. from a command line.

    Args:
        value: `NoiseBurst()`, `{"type": "tone", "frequency_hz": 7000}`, `'{"type": "tone"}'` or `"pbsm"`.
        allow_import: see `Trigger.from_dict`.

    Raises:
        TriggerError: invalid JSON, unknown type or fields.
    """
    if isinstance(value, Trigger):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text in TRIGGERS:
            return Trigger.from_dict({"type": text})
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise TriggerError(
                f"a trigger config must be a JSON object or a type name ({', '.join(sorted(TRIGGERS))}); "
                f"cannot parse {text[:80]!r}: {err}"
            ) from err
    if isinstance(value, Mapping):
        return Trigger.from_dict(value, allow_import=allow_import)
    raise TriggerError(
        f"a trigger config must be a Trigger, a dict or a JSON string, got {type(value).__name__}"
    )
