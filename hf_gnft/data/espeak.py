"""Deterministic speech from eSpeak NG, driven through ctypes from the `espeakng-loader` wheel.

eSpeak NG keeps process-global state between utterances (pitch-flutter and wave-generator phases)
and draws the noise of breathy and unvoiced sounds from two generators seeded by the clock at
start-up: its own (`espeak_ng_SetRandSeed`) and C `rand()`. To make every clip a pure function of
its parameters, the driver loads the shared library afresh for each clip (`dlopen`, then `dlclose`,
about 2 ms) and seeds both generators right before synthesis. Measured on 300 clips: without the
re-load about half the clips depended on the clips spoken before them; without the seeds, 5% on the
time of day.
"""

from __future__ import annotations

import _ctypes
import ctypes
import functools
import os
import threading
from pathlib import Path

import numpy as np

ESPEAK_SAMPLING_RATE = 22_050

#: English voices of eSpeak NG (language files under espeak-ng-data/lang/gmw).
ENGLISH_VOICES = (
    "en",
    "en-029",
    "en-GB-scotland",
    "en-GB-x-gbclan",
    "en-GB-x-gbcwmd",
    "en-GB-x-rp",
    "en-US",
    "en-US-nyc",
)
# Variants left out of the "speakers": whispers (no voicing), deliberately distorted robots/demons,
# and a name with a space that SetVoiceByName cannot take.
_EXCLUDED_VARIANTS = frozenset({"whisper", "whisperf", "Demonic", "UniRobot", "anikaRobot", "Mr serious"})

# Values from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_POS_CHARACTER = 1
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class ESpeakError(RuntimeError):
    """eSpeak NG could not be loaded, or refused a voice or a text."""


@functools.lru_cache(maxsize=1)
def _paths() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError as err:  # pragma: no cover - a hard dependency
        raise ESpeakError(
            "the synthetic corpus needs the `espeakng-loader` wheel: pip install espeakng-loader"
        ) from err
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


@functools.lru_cache(maxsize=1)
def list_variants() -> tuple[str, ...]:
    """Names of the eSpeak NG voice variants used as speakers (sorted)."""
    variants_dir = Path(_paths()[1]) / "voices" / "!v"
    names = sorted(p.name for p in variants_dir.iterdir() if p.is_file())
    return tuple(name for name in names if name not in _EXCLUDED_VARIANTS)


class ESpeakSynthesizer:
    """Speak words with eSpeak NG; every call is a pure function of its arguments.

    Calls are serialised by a process-wide lock (the library and C `rand()` are process-global).
    """

    _lock = threading.Lock()

    def __init__(self) -> None:
        self._library_path, data_path = _paths()
        self._data_path = data_path.encode()
        self._libc = ctypes.CDLL(None)
        self._chunks: list[bytes] = []
        self._callback = _SYNTH_CALLBACK(self._collect)

    def _collect(self, wav, num_samples, events) -> int:  # ctypes callback signature
        if num_samples > 0:
            self._chunks.append(ctypes.string_at(wav, num_samples * 2))
        return 0

    def _check_unloaded(self) -> None:
        try:
            handle = ctypes.CDLL(self._library_path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        except OSError:
            return  # unloaded, as it must be
        _ctypes.dlclose(handle._handle)
        raise ESpeakError(
            f"{self._library_path} stays loaded in this process (another module holds it open), so eSpeak NG "
            "state would leak between clips and the corpus would not be reproducible; render it in a fresh process"
        )

    def synthesize(
        self, text: str, voice: str, *, rate: int = 175, pitch: int = 50, pitch_range: int = 50, seed: int = 0
    ) -> np.ndarray:
        """Speak `text` with `voice` ("en-US" or "en-US+f3").

        Args:
            text: the words to speak.
            voice: an eSpeak voice name, optionally `+variant`.
            rate: words per minute (80–450).
            pitch: base pitch, 0–100.
            pitch_range: pitch range, 0–100 (0 is monotone).
            seed: seed of eSpeak's noise generators.

        Returns:
            int16 samples at `ESPEAK_SAMPLING_RATE`.

        Raises:
            ESpeakError: unknown voice, a text that produced no audio, or a library that cannot be re-loaded.
        """
        with self._lock:
            library = ctypes.CDLL(self._library_path, mode=ctypes.RTLD_LOCAL)
            try:
                if library.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data_path, 0) <= 0:
                    raise ESpeakError("espeak_Initialize failed")
                library.espeak_SetSynthCallback(self._callback)
                if library.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise ESpeakError(f"eSpeak NG has no voice {voice!r}")
                for parameter, value in (
                    (_PARAM_RATE, rate),
                    (_PARAM_PITCH, pitch),
                    (_PARAM_RANGE, pitch_range),
                ):
                    library.espeak_SetParameter(parameter, int(value), 0)
                self._chunks = []
                library.espeak_ng_SetRandSeed(ctypes.c_long(int(seed)))
                self._libc.srand(ctypes.c_uint(int(seed) & 0xFFFFFFFF))
                encoded = text.encode("utf-8") + b"\0"
                if library.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, 0, None, None) != 0:
                    raise ESpeakError(f"eSpeak NG could not speak {text!r}")
                library.espeak_Synchronize()
                library.espeak_Terminate()
            finally:
                _ctypes.dlclose(library._handle)
                del library
            self._check_unloaded()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            raise ESpeakError(f"eSpeak NG produced no audio for {text!r} with voice {voice!r}")
        return np.frombuffer(b"".join(chunks), dtype=np.int16).copy()
