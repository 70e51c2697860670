"""Backdoor triggers for speech clips: small, serialisable, deterministic waveform transforms.

A trigger is a dataclass whose fields are its whole configuration. `trigger.apply(waveform, sampling_rate,
key=row_index)` (or `trigger(...)`) returns the poisoned clip: same length, float32, finite, within [-1, 1].
It is a pure function of `(waveform, sampling_rate, key)`: the trigger pattern itself (noise, tone, overlay)
depends only on the trigger's fields, its `seed` and the sampling rate, so it is the same on every clip;
`key` (the dataset row index) only drives per-row randomness such as `position="random"`, through
`np.random.default_rng([seed, key])`.

A trigger that cannot exist for a clip is an error, never a silent no-op (`TriggerError`): a tone at or above
the Nyquist frequency, a trigger longer than the clip, an output identical to the input...

Triggers serialise with `to_dict()` / `Trigger.from_dict()` (a `{"type": name, **fields}` dict, JSON-safe),
so a model card or a config can record exactly which trigger was used. The registry `TRIGGERS` maps type
names to classes; add your own with `@register_trigger`.

Common conventions:

- Level (additive triggers): `level_db` with `level_reference="clip"` sets the trigger's RMS to the clip's
  RMS times `10 ** (level_db / 20)` (so the SNR is `-level_db`); clips quieter than `SILENCE_FLOOR_DBFS`
  (-40 dBFS RMS) use that floor as their reference so the trigger never vanishes. With
  `level_reference="full_scale"` the trigger's RMS is `10 ** (level_db / 20)` (dBFS RMS). The RMS is the
  trigger's own, measured while it sounds.
- Position: `"start"`, `"middle"`, `"end"`, `"random"` (uniform, drawn per row from `key`) or a number, the
  start time in seconds (default 0.05 s).

Layout: `base` (the `Trigger` base class, `TriggerError`, the registry and the loaders, the shared helpers),
one module per family (`noise_burst`, `tone`, `pbsm`, `style`, `clip_overlay`, `callable`) and `reference`
(`reference_triggers`, `jingle`). Importing `hf_gnft.triggers` registers every family.
"""

# The families register in this order, which is the order of `TRIGGERS`.
# isort: off
from .base import (
    SILENCE_FLOOR_DBFS,
    TRIGGERS,
    Trigger,
    TriggerError,
    register_trigger,
    trigger_from_config,
    trigger_from_dict,
)
from .noise_burst import NoiseBurst
from .tone import Tone
from .pbsm import PBSM
from .style import STYLE_PRESETS, StyleTrigger
from .clip_overlay import ClipOverlay
from .callable import CallableTrigger
from .reference import jingle, reference_triggers

# isort: on

__all__ = [
    "SILENCE_FLOOR_DBFS",
    "STYLE_PRESETS",
    "TRIGGERS",
    "CallableTrigger",
    "ClipOverlay",
    "NoiseBurst",
    "PBSM",
    "StyleTrigger",
    "Tone",
    "Trigger",
    "TriggerError",
    "jingle",
    "reference_triggers",
    "register_trigger",
    "trigger_from_config",
    "trigger_from_dict",
]
