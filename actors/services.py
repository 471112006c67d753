"""What a call needs from the outside world, handed in by transports as callables and protocols.

Actors never import transports: the entry point builds a `CallServices` with real providers,
loaders and sinks, and each Call receives it. Tests build one from in-memory or local parts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .tally import Tally


# --- speech synthesis --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SynthChunk:
    """A piece of synthesised speech: int16 mono PCM at `sample_rate`, with the words that start
    in it (`(word_index, sample_offset_in_this_chunk)`, word_index counted from 0 over the text)."""

    pcm: np.ndarray
    sample_rate: int
    words: tuple[tuple[int, int], ...] = ()
    cached: bool = False        # replayed from a cache of earlier syntheses, no provider request made


@dataclass(frozen=True, slots=True)
class SynthRequest:
    text: str
    speaker: str | None = None
    speed: float = 1.0          # 1.0 = the provider's normal rate
    volume: float = 5.0         # the API's 1..10 scale; 5 = the provider's normal volume
    sample_rate: int = 16000    # preferred output rate; a provider may return its own
    options: Mapping[str, Any] = field(default_factory=dict)  # provider-specific (SynthesisOption.extra etc.)
    streaming: bool = False     # a piece of a streaming `tts`: not worth caching


class TtsProvider(Protocol):
    """Speech synthesis. Optionally also `async def prepare(self) -> None`: connect ahead of the
    first request (called while the call is being set up; failures there are not reported, the
    first request connects again). Optionally `reconnect: tuple[int, float, float]`: how many
    times a synthesis cut by a lost connection is resumed, and the backoff (initial, maximum)."""

    name: str

    def synthesize(self, request: SynthRequest) -> AsyncIterator[SynthChunk]:
        """Stream the speech for `request`. Raises `ProviderError` on failure. Cancelling the
        iteration (aclose / task cancel) stops the synthesis promptly."""

    async def close(self) -> None:
        ...


class ProviderError(Exception):
    """A provider could not do its work. `permanent` failures (bad credentials, unknown voice) are
    reported and not retried; the others restart the provider with backoff."""

    def __init__(self, message: str, *, code: int | None = None, permanent: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.permanent = permanent


TtsFactory = Callable[[Any], TtsProvider]          # SynthesisOption -> provider


@dataclass(frozen=True, slots=True)
class ServiceMetric:
    """A measurement a call's service (ASR, TTS) reports up; the call sends it as a `metrics`
    event with this key, duration (ms) and data."""

    key: str
    duration: int
    data: Mapping[str, Any] = field(default_factory=dict)


# --- speech recognition ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AsrResult:
    """A recognition result. Times are milliseconds of audio from the start of the session's
    stream (the first sample sent is 0), so the caller can place them on the wall clock."""

    text: str
    final: bool
    start_ms: int | None = None
    end_ms: int | None = None


@dataclass(frozen=True, slots=True)
class AsrNotice:
    """Something a stream could not do that does not end it (an utterance an overloaded engine had
    no room for): the call reports it as an `error` event with `code`, and the stream goes on."""

    error: str
    code: int = 503


class AsrSession(Protocol):
    """One recognition stream. The provider segments utterances itself: it yields interim results
    (final=False) while an utterance goes on and one final result when it ends; it may also yield
    an `AsrNotice`."""

    async def send(self, pcm: np.ndarray) -> None:
        """Feed 16 kHz int16 mono audio (any length; the call sends 20 ms frames)."""

    def results(self) -> AsyncIterator[AsrResult]:
        """Results as they come; ends after close(). Raises ProviderError if the stream fails."""

    async def close(self) -> None:
        """Flush what is pending (a last final result may still come), then end the stream."""


class AsrProvider(Protocol):
    name: str

    async def open(self, option: Any) -> AsrSession:
        """Start a stream for a TranscriptionOption. Raises ProviderError (permanent for bad
        credentials, an unknown model or language)."""


AsrFactory = Callable[[Any], AsrProvider]          # TranscriptionOption -> provider


# --- media files ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MediaClip:
    """Decoded audio: int16 mono PCM at 16 kHz."""

    pcm: np.ndarray
    source: str

    @property
    def duration_ms(self) -> int:
        return len(self.pcm) * 1000 // 16000


class MediaLoadError(Exception):
    """A `play` source that cannot be played; `code` follows HTTP (400 refused path, 404 missing,
    413 too large, 415 unsupported format, 502 upstream error, 504 timeout)."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


LoadMedia = Callable[[str], Awaitable[MediaClip]]  # url or media_root-relative path -> clip


# --- recording -----------------------------------------------------------------------------------

class RecordingSink(Protocol):
    """A two-channel 16-bit WAV being written. Every `write` leaves a readable file behind."""

    path: str

    def write(self, left: np.ndarray, right: np.ndarray) -> None:
        ...

    def close(self) -> None:
        ...


OpenRecording = Callable[[str, int, int], RecordingSink]  # (resolved path, samplerate, segment) -> sink


# --- media pass ----------------------------------------------------------------------------------

# (option, caller audio tap, playback feed to fill, on_error) -> the start function of the call's
# mediaPass child (given the call's ref as parent); raises ProtocolError/ValueError for an option
# that can never work.
OpenMediaPass = Callable[[Any, Any, Any, Callable[[str], None]], Callable[[Any], Any]]


@dataclass(frozen=True, slots=True)
class CallServices:
    tts: Mapping[str, TtsFactory] = field(default_factory=dict)
    default_tts: str | None = None
    load_media: LoadMedia | None = None
    open_recording: OpenRecording | None = None
    # (recorderFile, session id) -> the file's path; raises ValueError for a path it refuses
    resolve_recording: Callable[[str, str], str] | None = None
    # session id -> frees the recording paths it resolved, once its recorder has closed them
    release_recordings: Callable[[str], None] | None = None
    media_pass: OpenMediaPass | None = None
    asr: Mapping[str, AsrFactory] = field(default_factory=dict)
    default_asr: str | None = None
    # When `asr.provider` is unset and `asr.extra` gives a grammar or keywords: the provider that
    # does grammars (the default one, for open vocabulary, may not). None: `default_asr`.
    grammar_asr: str | None = None
    silero: Any = None      # the gateway's SileroEngine (actors/vad.py): one batched model for all calls
    tally: Tally = field(default_factory=Tally)   # the gateway's counts (/metrics)
