"""Callable trigger: any user function `(waveform, sampling_rate) -> waveform` as a trigger."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .base import Trigger, TriggerError, register_trigger


def _function_path(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not module or not qualname:
        raise TriggerError(f"cannot record {function!r}: it has no __module__/__qualname__")
    return f"{module}:{qualname}"


def _import_function(path: str) -> Callable[..., Any]:
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise TriggerError(f"a callable trigger's function must be 'module:qualname', got {path!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as err:
        raise TriggerError(f"cannot import trigger function {path!r}: {err}") from err
    if not callable(target):
        raise TriggerError(f"{path!r} is not callable")
    return target


@register_trigger
@dataclass
class CallableTrigger(Trigger):
    """Wrap any function `(waveform, sampling_rate) -> waveform` as a trigger.

    The function gets a float32 copy of the clip and must return the same number of finite samples. It is
    recorded as `"module:qualname"`, so it must be a module-level function (not a lambda or a closure) to
    be saved. Loading it back imports that module, which runs its code: `from_dict` only does it with
    `allow_import=True`, for configs you trust.

    Args:
        function: the trigger function.
        seed: not passed to the function (kept for a uniform interface).
    """

    name: ClassVar[str] = "callable"
    function: Callable[[np.ndarray, int], np.ndarray] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.function is None:
            raise TriggerError(
                "a callable trigger needs `function`, a callable (waveform, sampling_rate) -> waveform"
            )
        if isinstance(self.function, str) or not callable(self.function):
            raise TriggerError(
                f"function must be a callable, got {self.function!r}; to load 'module:qualname' use "
                "Trigger.from_dict(..., allow_import=True)"
            )

    def _label(self) -> str:
        module = getattr(self.function, "__module__", "?")
        qualname = getattr(self.function, "__qualname__", repr(self.function))
        return f"{module}:{qualname}"

    def _apply(self, waveform: np.ndarray, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
        out = self.function(waveform.astype(np.float32), sampling_rate)
        try:
            out = np.asarray(out, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TriggerError(
                f"trigger function {self._label()} returned {type(out).__name__}, not samples"
            ) from err
        if out.shape != waveform.shape:
            raise TriggerError(
                f"trigger function {self._label()} returned shape {out.shape} for an input of shape "
                f"{waveform.shape}; it must keep the clip's length"
            )
        if not np.all(np.isfinite(out)):
            raise TriggerError(f"trigger function {self._label()} returned NaN or infinite samples")
        return out

    def to_dict(self) -> dict[str, Any]:
        path = _function_path(self.function)
        if "<" in path:
            raise TriggerError(
                f"cannot record trigger function {path}: lambdas and nested functions cannot be re-imported; "
                "define it at module level"
            )
        return {"type": self.name, "function": path, "seed": self.seed}

    @classmethod
    def _from_fields(cls, data: dict[str, Any], *, allow_import: bool) -> Trigger:
        function = data.get("function")
        if isinstance(function, str):
            if not allow_import:
                raise TriggerError(
                    f"refusing to import trigger function {function!r}: importing a module runs its code and a "
                    "trigger dict may come from an untrusted checkpoint or config; pass allow_import=True if you "
                    "trust it, or build CallableTrigger(function=...) yourself"
                )
            data = {**data, "function": _import_function(function)}
        return super()._from_fields(data, allow_import=allow_import)

    def describe(self) -> str:
        return f"callable {self._label()}"
