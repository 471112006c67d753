"""espeak-ng as a ``TtsProvider``: offline synthesis on the EngineHost's espeak-ng thread.

The library (from the ``espeakng-loader`` wheel, loaded with ctypes) is process-global and not
re-entrant, so exactly one ``EspeakEngine`` may exist at a time and only its engine thread calls
into it. It runs in AUDIO_OUTPUT_SYNCHRONOUS mode: ``espeak_Synth`` does the work on the calling
(engine) thread and returns when done. The RETRIEVAL mode would run synthesis on a pthread of the
library's own and leave the engine thread parked in ``espeak_Synchronize``.

Queueing: every call's synthesis goes through that one thread, in arrival order, one request at a
time. That is cheap because espeak-ng is fast (a few thousandths of real time through the host, see
the figures the tests print) and each request is short (a sentence or a paragraph); a synthesis that a
call abandons stops within one chunk (``CHUNK_MS`` of audio) and frees the thread for the next.

Audio comes out as int16 mono at the library's rate (22,050 Hz), in chunks of ``CHUNK_MS``, while
synthesis proceeds; the Tts actor resamples. Word marks come from espeak's WORD events: the index
of the whitespace-separated word of the text in which the event's character position falls, and
the event's sample offset inside the chunk that carries it.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import math
import os
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any

import numpy as np

from actors.engines import Emitter, EngineError, EngineHost, EngineStartError
from actors.services import ProviderError, SynthChunk, SynthRequest, TtsProvider
from protocol.api import SynthesisOption

__all__ = [
    "CHUNK_MS",
    "DEFAULT_VOICE",
    "ENGINE_NAME",
    "ESPEAK_PROVIDER_NAMES",
    "EspeakEngine",
    "EspeakProvider",
    "espeak_factories",
    "espeak_rate",
    "espeak_volume",
    "make_espeak_factory",
    "register_espeak",
]

ENGINE_NAME = "espeak-ng"
ESPEAK_PROVIDER_NAMES = ("espeak", "espeak-ng", "local")
DEFAULT_VOICE = "en-us"
CHUNK_MS = 60           # espeak's own default buffer; also bounds how late a cancellation lands

RATE_NORMAL, RATE_MIN, RATE_MAX = 175, 80, 450     # words per minute (speak_lib.h)
VOLUME_NORMAL = 100                                # espeak's 0..200 scale

# speak_lib.h values
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000      # without it, missing data makes the library call exit()
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK, _EE_NOT_FOUND = 0, 2
_PARAM_RATE, _PARAM_VOLUME = 1, 2
_EVENT_LIST_TERMINATED, _EVENT_WORD = 0, 1
_MAX_EVENTS = 4096      # a bound on walking a C array whose end marker we trust but do not assume


def espeak_rate(speed: float) -> int:
    """The API's speed factor (1.0 = normal) as espeak words per minute, within espeak's range."""
    if not math.isfinite(speed) or speed <= 0:
        speed = 1.0
    return max(RATE_MIN, min(RATE_MAX, round(RATE_NORMAL * speed)))


def espeak_volume(volume: float) -> int:
    """The API's 1..10 volume (5 = normal, fractions allowed) on espeak's integer scale (100 =
    normal, 200 = loudest): linear, so 5.5 is 110."""
    return round(max(0.0, min(10.0, volume)) * VOLUME_NORMAL / 5)


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),     # characters from the start of the text, from 1
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),    # ms
        ("sample", ctypes.c_int),            # samples from the start of this synthesis
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))


@functools.cache
def _library() -> ctypes.CDLL:
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint),
                                 ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Terminate.argtypes = []
    lib.espeak_Terminate.restype = ctypes.c_int
    return lib


_WORD = re.compile(r"\S+")


class _Synthesis:
    """One request in progress, fed by the synth callback on the engine thread."""

    __slots__ = ("emitter", "sample_rate", "word_starts", "last_word", "pending", "position", "error")

    def __init__(self, emitter: Emitter[SynthChunk], sample_rate: int, text: str) -> None:
        self.emitter = emitter
        self.sample_rate = sample_rate
        self.word_starts = [m.start() for m in _WORD.finditer(text)]
        self.last_word = -1
        self.pending: list[tuple[int, int]] = []       # (word index, sample from synthesis start)
        self.position = 0                              # samples emitted so far
        self.error: BaseException | None = None

    def take(self, wav: Any, count: int, events: Any) -> bool:
        """Absorb one callback's audio and events; False asks espeak to abort."""
        if events:
            for i in range(_MAX_EVENTS):
                event = events[i]
                if event.type == _EVENT_LIST_TERMINATED:
                    break
                if event.type == _EVENT_WORD:
                    self._word(event.text_position - 1, event.sample)
        if count <= 0 or not wav:
            return not self.emitter.cancelled
        pcm = np.ctypeslib.as_array(wav, shape=(count,)).copy()     # espeak reuses its buffer
        return self._emit(pcm)

    def _word(self, char: int, sample: int) -> None:
        # espeak sends several WORD events for one written word it expands ("123", "3.5"); the
        # first one starts the word, the rest fall inside it and are dropped.
        index = max(0, bisect.bisect_right(self.word_starts, char) - 1)
        if index > self.last_word and self.word_starts:
            self.last_word = index
            self.pending.append((index, sample))

    def _emit(self, pcm: np.ndarray) -> bool:
        end = self.position + len(pcm)
        marks = tuple((index, max(0, sample - self.position)) for index, sample in self.pending if sample < end)
        if marks:
            self.pending = [(index, sample) for index, sample in self.pending if sample >= end]
        self.position = end
        return self.emitter.emit(SynthChunk(pcm, self.sample_rate, marks))

    def finish(self) -> None:
        # Words announced after the last audio (rare: a trailing word with no sound) still count:
        # they start at the very end, carried by an empty chunk.
        if self.pending and not self.emitter.cancelled:
            marks = tuple((index, 0) for index, _ in self.pending)
            self.pending = []
            self.emitter.emit(SynthChunk(np.zeros(0, dtype=np.int16), self.sample_rate, marks))


class EspeakEngine:
    """The espeak-ng library, initialised on the thread that builds this object and used only there."""

    _owned = False      # the library is process-global: one owner at a time

    def __init__(self, *, chunk_ms: int = CHUNK_MS, data_path: str | None = None) -> None:
        if EspeakEngine._owned:
            raise RuntimeError("espeak-ng is already owned by another engine thread")
        lib = _library()
        if data_path is None:
            import espeakng_loader

            data_path = espeakng_loader.get_data_path()
        # Checked here because the library cannot tell: once initialised in this process, a
        # second espeak_Initialize over missing data still reports success.
        if not os.path.isfile(os.path.join(data_path, "phontab")):
            raise RuntimeError(f"no espeak-ng data (phontab) in {data_path}")
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, chunk_ms, data_path.encode(),
                                     _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate}) with data at {data_path}")
        EspeakEngine._owned = True
        self._lib = lib
        self.sample_rate = rate
        self._voice: str | None = None
        self._current: _Synthesis | None = None
        self._callback = _SynthCallback(self._on_audio)     # kept alive as long as espeak may call it
        lib.espeak_SetSynthCallback(self._callback)

    def synthesize(self, emitter: Emitter[SynthChunk], text: str, voice: str, rate: int, volume: int) -> None:
        """Emit the speech for ``text`` chunk by chunk; returns early once the consumer has gone."""
        self._select(voice)
        lib = self._lib
        lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
        lib.espeak_SetParameter(_PARAM_VOLUME, volume, 0)
        text = text.replace("\x00", " ")
        if not text.strip():
            return
        data = text.encode("utf-8")
        synthesis = _Synthesis(emitter, self.sample_rate, text)
        self._current = synthesis
        try:
            status = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        finally:
            self._current = None
        if synthesis.error is not None:
            raise synthesis.error
        if emitter.cancelled:
            return
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed ({status})")
        synthesis.finish()

    def _select(self, voice: str) -> None:
        if voice == self._voice:
            return
        if not voice or "\x00" in voice:
            raise ProviderError(f"invalid espeak-ng voice name {voice!r}", code=400, permanent=True)
        # Whatever a failed selection left behind, the next request selects its voice afresh.
        self._voice = None
        status = self._lib.espeak_SetVoiceByName(voice.encode("utf-8"))
        if status == _EE_NOT_FOUND:
            raise ProviderError(f"unknown espeak-ng voice {voice!r}", code=400, permanent=True)
        if status != _EE_OK:
            raise RuntimeError(f"espeak_SetVoiceByName({voice!r}) failed ({status})")
        self._voice = voice

    def _on_audio(self, wav: Any, count: int, events: Any) -> int:
        synthesis = self._current
        if synthesis is None:
            return 1
        try:
            return 0 if synthesis.take(wav, count, events) else 1
        except BaseException as exc:  # noqa: BLE001 - raising through C is not an option
            synthesis.error = exc
            return 1

    def close(self) -> None:
        if EspeakEngine._owned:
            self._lib.espeak_Terminate()
            EspeakEngine._owned = False


def register_espeak(host: EngineHost, *, name: str = ENGINE_NAME, chunk_ms: int = CHUNK_MS,
                    data_path: str | None = None) -> None:
    """Declare the espeak-ng engine on ``host`` under ``name``; the defaults may be declared again
    harmlessly. ``data_path`` is an espeak-ng-data directory (default: the wheel's own)."""
    if chunk_ms == CHUNK_MS and data_path is None:
        host.register(name, EspeakEngine)
    else:
        host.register(name, functools.partial(EspeakEngine, chunk_ms=chunk_ms, data_path=data_path))


class EspeakProvider:
    """``TtsProvider`` over the host's espeak-ng engine. Cheap: one per call is fine."""

    name = "espeak"

    def __init__(self, host: EngineHost, *, voice: str = DEFAULT_VOICE, engine: str = ENGINE_NAME) -> None:
        if not host.is_registered(engine):
            register_espeak(host, name=engine)
        self._host = host
        self._engine = engine
        self.voice = voice
        self._closed = False

    async def synthesize(self, request: SynthRequest) -> AsyncIterator[SynthChunk]:
        if self._closed:
            raise ProviderError("espeak-ng provider is closed")
        chunks = self._host.stream(self._engine, "synthesize", request.text, request.speaker or self.voice,
                                   espeak_rate(request.speed), espeak_volume(request.volume))
        try:
            async with aclosing(chunks):
                async for chunk in chunks:
                    yield chunk
        except ProviderError:
            raise
        except EngineStartError as exc:
            # A library or data set that fails to load will not load on the next try either.
            raise ProviderError(f"espeak-ng unavailable: {exc.__cause__ or exc}", permanent=True) from exc
        except EngineError as exc:
            raise ProviderError(f"espeak-ng: {exc}") from exc
        except Exception as exc:
            raise ProviderError(f"espeak-ng failed: {exc}") from exc

    async def close(self) -> None:
        # The engine is shared by every call; it belongs to the host, which stops it.
        self._closed = True


def make_espeak_factory(host: EngineHost, *, voice: str = DEFAULT_VOICE) -> Callable[[SynthesisOption | None], TtsProvider]:
    """A TTS factory for ``CallServices.tts``: the option's ``speaker`` becomes the default voice."""
    if not host.is_registered(ENGINE_NAME):
        register_espeak(host)

    def factory(option: SynthesisOption | None) -> TtsProvider:
        speaker = option.speaker if option is not None and option.speaker else voice
        return EspeakProvider(host, voice=speaker)

    return factory


def espeak_factories(host: EngineHost, *, voice: str = DEFAULT_VOICE,
                     names: Sequence[str] = ESPEAK_PROVIDER_NAMES) -> dict[str, Callable[[SynthesisOption | None], TtsProvider]]:
    """The same factory under each provider name that means espeak-ng ("espeak", "espeak-ng", "local")."""
    factory = make_espeak_factory(host, voice=voice)
    return {name: factory for name in names}
