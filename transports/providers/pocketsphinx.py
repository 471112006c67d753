"""pocketsphinx as an ``AsrProvider``: offline streaming recognition on the EngineHost's pocketsphinx thread.

Model: the en-us acoustic model, CMU dictionary and language model that ship in the
``pocketsphinx`` 5.1.1 wheel. No other language ships, so a ``TranscriptionOption.language`` other
than en / en-US is refused as a permanent ``ProviderError``. The option's ``samplerate``,
``modelType`` and credentials do not apply: the call always feeds 16 kHz, the model is fixed.

What a session recognises, from ``TranscriptionOption.extra``:

- nothing: open vocabulary with the default language model (accuracy is low; see the tests);
- ``{"grammar": "<JSGF text>"}``: a JSGF grammar (its first public rule is the entry point);
- ``{"keywords": ["yes", "no", "talk to an operator"]}``: each utterance is one of the phrases.
  They become a grammar of alternatives rather than pocketsphinx's keyphrase spotting, whose
  thresholds false-alarm on short words (measured: "no" fired five times in "talk to an operator").

Every word of a grammar or keyword list must be in the dictionary (a permanent error names the
ones that are not). Such a session's decoder carries only those words, which makes it about 6 MB
and 10 ms to build, where an open-vocabulary decoder takes about 60 MB and 0.25 s. The language
model (~35 MB) is loaded once per engine and shared by its decoders; the dictionary is read once
per process (~35 MB) when the first grammar session opens.

Endpointing is pocketsphinx's own ``Endpointer`` (a WebRTC-style VAD with a 0.3 s voting window):
audio outside speech never reaches a decoder. Within an utterance an interim result (final=False)
comes after every ``interim_ms`` of decoded speech when the hypothesis has changed, and one final
result when the endpointer closes the utterance; an utterance that produced no words at all (a
cough) gives nothing. ``start_ms`` is the endpointer's speech start, ``end_ms`` its speech end
(for an interim: the end of the audio decoded so far), in ms of audio from the stream start. The
endpointer decides about 0.3 s after the fact, so results trail the audio by at least that much.

Decoding: with the language model the decoder also gets 300 ms of the audio before the
endpointer's onset (it wants some silence before the first word); grammars get none, a word
insertion penalty of 0.1; both get a filler probability of 0.1. Each was measured on a tuning set
apart from the test fixtures (see the constants). Results depend a little on how the audio is cut
into decoder calls, so the engine always cuts it the same way: the figures repeat exactly.

Threads: pocketsphinx's Python binding holds the GIL for the whole of every decoding call, so
decoders on several threads would only take turns (measured: two threads decoding 8 s each took
4.9 s together against 1.5 s for one alone); they all live on ONE engine thread, one decoder per
session, serialised, each built, used and freed there. Audio goes to a decoder in 10 ms pieces
with the GIL let go between them, and the decoder's second pass (``fwdflat``), which re-decodes a
whole utterance in one call of ~0.3 s at its end, is turned off; the lattice best path stays on.
The CPU cost is paid only during speech (``PocketsphinxEngine.stats`` counts it); the figures the
tests print give the real-time factor per stream and so the number of streams the engine thread
carries. That is a ceiling for the process, not per core: the GIL serialises the decoders and
the event loop competes with them for it.

The loop side never waits for the engine thread to finish a call's audio: ``send`` buffers and
returns, and a pump task per session hands the audio over in jobs of at most ``max_feed_ms``, so
sessions take turns on the thread. Past ``max_backlog_ms`` of unprocessed audio ``send`` waits
for the engine to catch up, which pushes back on the caller's (dropping) audio pipe.

Reuse: building a language-model decoder holds the GIL for 0.15-0.5 s on the engine thread, which
stalls the event loop as surely as building it there would. So a stream's language-model decoder
is not freed when it closes but kept (at most ``SPARE_DECODERS``, ~60 MB each) for the next
open-vocabulary stream, its cepstral mean set back to a new decoder's: only a new peak of
concurrent open-vocabulary streams builds one. Grammar decoders (~10 ms) are built per stream.

Freeing: ``close`` flushes the utterance in progress (a last final result may come), then frees
(or keeps for reuse) the decoder on its thread, even if the task awaiting ``close`` is cancelled; an ``open`` cancelled
while its decoder is being built frees that decoder once built. Stopping the host frees all.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import re
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from actors.engines import EngineError, EngineHost, EngineStartError
from actors.services import AsrProvider, AsrResult, ProviderError
from protocol.api import TranscriptionOption

from .recognition_results import END, read_results

__all__ = [
    "ENGINE_NAME",
    "INTERIM_MS",
    "MAX_BACKLOG_MS",
    "MAX_FEED_MS",
    "MAX_STREAMS",
    "POCKETSPHINX_PROVIDER_NAMES",
    "PocketsphinxEngine",
    "PocketsphinxProvider",
    "PocketsphinxSession",
    "PocketsphinxStats",
    "RecognizerSpec",
    "SAMPLE_RATE",
    "keywords_grammar",
    "make_pocketsphinx_factory",
    "pocketsphinx_factories",
    "recognizer_spec",
    "register_pocketsphinx",
]

ENGINE_NAME = "pocketsphinx"
POCKETSPHINX_PROVIDER_NAMES = ("pocketsphinx", "local", "sphinx")
SAMPLE_RATE = 16000
LANGUAGES = frozenset({"en", "en-us"})
INTERIM_MS = 400
MAX_FEED_MS = 200
MAX_BACKLOG_MS = 2000       # a supervised restart replays ~2 s of pre-roll: it fits without waiting
MAX_STREAMS = 32            # open-vocabulary decoders weigh ~60 MB each
SPARE_DECODERS = 2          # language-model decoders kept built between streams, for the next ones
ENDPOINT_WINDOW = 0.3       # pocketsphinx's defaults: seconds of voting window, fraction to switch
ENDPOINT_RATIO = 0.9
VAD_MODE = 0                # loose: telephone speech is quiet and band-limited
LOG_LEVEL = "ERROR"         # pocketsphinx writes its own log to stderr; keep it to real errors
# Decoder settings measured on tuning sets spoken like the fixtures but apart from them (24
# random digit strings with the digits grammar, 12 call-centre sentences with the language model,
# three voices), decoded through this engine:
# - word insertion penalty for grammars (pocketsphinx's default 0.65 suits its language model):
#   digits WER 0.116 at 0.65, 0.045 at 0.1;
# - filler (noise) probability, default 1e-8: line noise around the words came out as short words
#   ("eight", "five"); at 0.1 digits went from 0.054 to 0.045, open vocabulary 0.375 to 0.347;
# - audio before the endpointer's onset, given to the decoder too (it wants some silence before
#   the first word): 300 ms took open vocabulary from 0.431 to 0.347, but with a grammar that
#   noise turned into leading digits (0.045 without, 0.098 with 300 ms), so grammars get none.
GRAMMAR_WIP = 0.1
FILLER_PROB = 0.1
PREROLL_MS = 300
GRAMMAR_PREROLL_MS = 0

_PIECE = SAMPLE_RATE // 100 * 2     # bytes
_WORD = re.compile(r"[A-Za-z0-9'.\-]+")


# --- what a session decodes against ----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RecognizerSpec:
    """How one stream is decoded. ``grammar`` is JSGF text; None means the default language model."""

    grammar: str | None = None
    interim_ms: int = INTERIM_MS
    preroll_ms: int | None = None       # None: PREROLL_MS, or GRAMMAR_PREROLL_MS with a grammar
    endpoint_window: float = ENDPOINT_WINDOW
    endpoint_ratio: float = ENDPOINT_RATIO
    vad_mode: int = VAD_MODE

    def __post_init__(self) -> None:
        if self.interim_ms <= 0:
            raise ValueError("interim_ms must be positive")
        if self.preroll_ms is not None and self.preroll_ms < 0:
            raise ValueError("preroll_ms must not be negative")

    @property
    def lead_ms(self) -> int:
        if self.preroll_ms is not None:
            return self.preroll_ms
        return GRAMMAR_PREROLL_MS if self.grammar else PREROLL_MS
        if not 0 <= self.vad_mode <= 3:
            raise ValueError("vad_mode must be 0..3")


def keywords_grammar(keywords: Sequence[str]) -> str:
    """A JSGF grammar in which an utterance is exactly one of ``keywords`` (phrases of dictionary words)."""
    phrases: list[str] = []
    for keyword in keywords:
        if not isinstance(keyword, str):
            raise ValueError(f"keyword {keyword!r} is not a string")
        words = keyword.split()
        if not words:
            raise ValueError("empty keyword")
        bad = [w for w in words if not _WORD.fullmatch(w)]
        if bad:
            raise ValueError(f"keyword {keyword!r} has characters no dictionary word has: {' '.join(bad)}")
        phrase = " ".join(words)
        if phrase not in phrases:
            phrases.append(phrase)
    if not phrases:
        raise ValueError("no keywords")
    return "#JSGF V1.0;\ngrammar keywords;\npublic <keyword> = " + " | ".join(phrases) + ";\n"


def recognizer_spec(option: TranscriptionOption | None, *, interim_ms: int = INTERIM_MS,
                    endpoint_window: float = ENDPOINT_WINDOW, endpoint_ratio: float = ENDPOINT_RATIO,
                    vad_mode: int = VAD_MODE) -> RecognizerSpec:
    """The spec for ``option``; a permanent ProviderError (code 400) for what pocketsphinx cannot do."""
    language = option.language if option is not None else None
    if language is not None and language.strip().replace("_", "-").lower() not in LANGUAGES:
        raise ProviderError(f"pocketsphinx has no model for language {language!r} (only en-US ships)",
                            code=400, permanent=True)
    extra = (option.extra if option is not None else None) or {}
    if not isinstance(extra, dict):
        raise ProviderError("pocketsphinx: asr.extra must be an object", code=400, permanent=True)
    grammar = extra.get("grammar")
    keywords = extra.get("keywords")
    if grammar is not None and keywords is not None:
        raise ProviderError("pocketsphinx: give either extra.grammar or extra.keywords, not both",
                            code=400, permanent=True)
    if grammar is not None and (not isinstance(grammar, str) or not grammar.strip()):
        raise ProviderError("pocketsphinx: extra.grammar must be JSGF text", code=400, permanent=True)
    if keywords is not None:
        if isinstance(keywords, str) or not isinstance(keywords, (list, tuple)):
            raise ProviderError("pocketsphinx: extra.keywords must be a list of phrases", code=400, permanent=True)
        try:
            grammar = keywords_grammar(keywords)
        except ValueError as exc:
            raise ProviderError(f"pocketsphinx: extra.keywords: {exc}", code=400, permanent=True) from None
    return RecognizerSpec(grammar=grammar, interim_ms=interim_ms, endpoint_window=endpoint_window,
                          endpoint_ratio=endpoint_ratio, vad_mode=vad_mode)


# --- the engine thread ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PocketsphinxStats:
    live_streams: int
    opened: int               # streams opened since the engine started
    audio_seconds: float      # audio received by all streams
    speech_seconds: float     # of which the endpointer passed to a decoder
    cpu_seconds: float        # engine-thread CPU time spent building, feeding and flushing decoders
    built: int = 0            # language-model decoders built (the others were reused)
    spare: int = 0            # language-model decoders built and waiting for a stream

    @property
    def real_time_factor(self) -> float:
        """CPU seconds per second of audio received, averaged over streams (0 before any audio)."""
        return self.cpu_seconds / self.audio_seconds if self.audio_seconds else 0.0


@functools.cache
def _lexicon(path: str) -> dict[str, tuple[str, ...]]:
    """The dictionary file as word -> pronunciations; read once, then only read (several engine
    threads may share it)."""
    words: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            word, _, phones = line.strip().partition(" ")
            if not word or not phones:
                continue
            base = word.split("(", 1)[0]        # "word(2)" is the second pronunciation of "word"
            words.setdefault(base, []).append(phones.strip())
    return {word: tuple(prons) for word, prons in words.items()}


def _grammar_words(fsg: Any) -> list[str]:
    # FsgModel has no safe way to walk its vocabulary from Python (word_str past the end reads
    # out of bounds), but it can write its symbol table: "<eps> 0", then "word id" lines.
    fd, path = tempfile.mkstemp(prefix="pocketsphinx-", suffix=".sym")
    os.close(fd)
    try:
        fsg.writefile_symtab(path)
        with open(path, encoding="utf-8") as f:
            names = [line.rsplit(None, 1)[0] for line in f if line.strip()]
    finally:
        os.unlink(path)
    return [name for name in names if name != "<eps>"]


def _text(hyp: Any) -> str:
    return " ".join(hyp.hypstr.split()) if hyp is not None and hyp.hypstr else ""


class _Stream:
    """One session's endpointer and decoder, and where its utterance stands."""

    __slots__ = ("decoder", "endpointer", "interim_samples", "pending", "received", "speech", "recent",
                 "preroll", "decoded_until", "in_utterance", "start_ms", "decoded", "since_interim",
                 "last_text", "interims", "cmn")

    def __init__(self, decoder: Any, endpointer: Any, spec: RecognizerSpec, cmn: str | None = None) -> None:
        self.decoder = decoder
        self.cmn = cmn                  # a language-model decoder's initial cepstral mean: it is reused
        self.endpointer = endpointer
        self.interim_samples = spec.interim_ms * SAMPLE_RATE // 1000
        self.pending = bytearray()      # less than one endpointer frame
        # The endpointer hands over speech from its onset on; the decoder also wants a little of
        # the silence before it, which the endpointer has already let go: keep the recent frames.
        frame_ms = endpointer.frame_length * 1000
        self.preroll = spec.lead_ms * SAMPLE_RATE // 1000
        self.recent: deque[tuple[int, bytes]] = deque(
            maxlen=math.ceil((spec.endpoint_window * 1000 + spec.lead_ms) / frame_ms) + 2)
        self.decoded_until = 0          # sample after the last one a previous utterance decoded
        self.received = 0               # samples
        self.speech = 0                 # samples passed to the decoder, pre-roll included
        self.in_utterance = False
        self.start_ms = 0
        self.decoded = 0                # samples of the current utterance decoded
        self.since_interim = 0
        self.last_text = ""
        self.interims = 0

    def feed(self, data: bytes, out: list[AsrResult]) -> None:
        self.pending += data
        self.received += len(data) // 2
        size = self.endpointer.frame_bytes
        taken = 0
        position = self.received - len(self.pending) // 2     # sample at which pending starts
        while len(self.pending) - taken >= size:
            frame = bytes(self.pending[taken:taken + size])
            self.recent.append((position + taken // 2, frame))
            self._frame(frame, out)
            taken += size
        del self.pending[:taken]

    def flush(self, out: list[AsrResult]) -> None:
        ep = self.endpointer
        if ep.in_speech:
            # end_stream needs at least one sample; a single zero sample is 1/16 ms of silence.
            speech = ep.end_stream(bytes(self.pending) or b"\0\0")
            if speech is not None:
                self._decode(speech)
        self.pending.clear()
        if self.in_utterance:
            self._end(max(self.start_ms, round(ep.speech_end * 1000)), out)

    def _frame(self, frame: bytes, out: list[AsrResult]) -> None:
        ep = self.endpointer
        was_speech = ep.in_speech
        speech = ep.process(frame)
        if speech is None:
            return
        if not was_speech or not self.in_utterance:
            self._begin(round(ep.speech_start * 1000))
        self._decode(speech)
        if not ep.in_speech:
            self._end(round(ep.speech_end * 1000), out)
        elif self.since_interim >= self.interim_samples:
            self.since_interim = 0
            text = _text(self.decoder.hyp())
            if text and text != self.last_text:
                self.last_text = text
                self.interims += 1
                out.append(AsrResult(text, False, self.start_ms,
                                     self.start_ms + self.decoded * 1000 // SAMPLE_RATE))

    def _begin(self, start_ms: int) -> None:
        if self.in_utterance:       # cannot happen with a sane endpointer; never decode across
            self.decoder.end_utt()
        self.decoder.start_utt()
        self.in_utterance = True
        self.start_ms = start_ms
        self.decoded = self.since_interim = self.interims = 0
        self.last_text = ""
        onset = start_ms * SAMPLE_RATE // 1000
        since = max(onset - self.preroll, self.decoded_until)      # never the last utterance again
        lead = b"".join(frame for at, frame in self.recent if since <= at < onset)
        if lead:
            self._process(lead)
            self.speech += len(lead) // 2

    def _decode(self, speech: bytes) -> None:
        samples = len(speech) // 2
        self._process(speech)
        self.decoded += samples
        self.since_interim += samples
        self.speech += samples

    def _process(self, audio: bytes) -> None:
        # The binding holds the GIL for a whole call; the event loop waits for it meanwhile. With
        # the language model a 10 ms piece costs 1.5 ms (median) to 12.6 ms (max), a 30 ms frame up
        # to 24 ms. Between pieces the thread lets go of the GIL, so a waiting loop takes it then
        # rather than after the 5 ms switch interval.
        for start in range(0, len(audio), _PIECE):
            self.decoder.process_raw(audio[start:start + _PIECE])
            time.sleep(0)

    def _end(self, end_ms: int, out: list[AsrResult]) -> None:
        self.in_utterance = False
        self.decoded_until = self.start_ms * SAMPLE_RATE // 1000 + self.decoded
        # A grammar search whose best path has not reached a final state when the utterance ends
        # (it stopped inside a word) has no final hypothesis; its best partial one stands in.
        partial = self.decoder.hyp()
        self.decoder.end_utt()
        text = _text(self.decoder.hyp()) or _text(partial)
        if text or self.interims:
            out.append(AsrResult(text, True, self.start_ms, max(end_ms, self.start_ms)))


def _frameless(method: Callable[..., Any]) -> Callable[..., Any]:
    """Raise the method's failure afresh, without the traceback it came with: that traceback's
    frames hold decoders, and would carry them to the loop thread, where the error is read and
    dropped, and free them there instead of here."""

    @functools.wraps(method)
    def job(*args: Any, **kwargs: Any) -> Any:
        failure: Exception | None = None
        try:
            return method(*args, **kwargs)
        except ProviderError as exc:
            failure = ProviderError(str(exc), code=exc.code, permanent=exc.permanent)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
            failure = RuntimeError(f"{type(exc).__name__}: {exc}")
        raise failure   # outside the handler: no context chained to the original

    return job


class PocketsphinxEngine:
    """Every pocketsphinx decoder of the process that uses this engine, on the engine's one thread.

    Methods are called by the EngineHost on that thread only; stream ids are handed to the loop side.
    """

    def __init__(self, *, max_streams: int = MAX_STREAMS, spare_decoders: int = SPARE_DECODERS) -> None:
        import pocketsphinx

        self._ps = pocketsphinx
        self._hmm = pocketsphinx.get_model_path("en-us/en-us")
        self._dict = pocketsphinx.get_model_path("en-us/cmudict-en-us.dict")
        self._lm_path = pocketsphinx.get_model_path("en-us/en-us.lm.bin")
        for path in (self._hmm, self._dict, self._lm_path):
            if not os.path.exists(path):
                raise RuntimeError(f"pocketsphinx model file missing: {path}")
        self.max_streams = max_streams
        self.spare_decoders = spare_decoders
        self._spare: list[tuple[Any, str]] = []     # (decoder, its initial cepstral mean)
        self._built = 0
        self._lm: Any = None
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._opened = 0
        self._audio = 0
        self._speech_freed = 0
        self._cpu = 0.0

    # jobs

    @_frameless
    def open(self, spec: RecognizerSpec) -> int:
        if len(self._streams) >= self.max_streams:
            raise ProviderError(f"pocketsphinx: {self.max_streams} streams already open")
        started = time.thread_time()
        cmn: str | None = None
        try:
            if spec.grammar:
                decoder = self._grammar_decoder(spec.grammar)
            else:
                decoder, cmn = self._take_lm_decoder()
            endpointer = self._ps.Endpointer(window=spec.endpoint_window, ratio=spec.endpoint_ratio,
                                             vad_mode=spec.vad_mode, sample_rate=SAMPLE_RATE)
        finally:
            self._cpu += time.thread_time() - started
        stream_id = self._next_id
        self._next_id += 1
        self._streams[stream_id] = _Stream(decoder, endpointer, spec, cmn)
        self._opened += 1
        return stream_id

    @_frameless
    def feed(self, stream_id: int, pcm: bytes) -> list[AsrResult]:
        stream = self._stream(stream_id)
        out: list[AsrResult] = []
        started = time.thread_time()
        try:
            stream.feed(pcm, out)
        finally:
            self._cpu += time.thread_time() - started
            self._audio += len(pcm) // 2
        return out

    @_frameless
    def finish(self, stream_id: int) -> list[AsrResult]:
        """Flush the utterance in progress and free the stream, whatever the flush does."""
        stream = self._stream(stream_id)
        out: list[AsrResult] = []
        started = time.thread_time()
        try:
            stream.flush(out)
        finally:
            self._cpu += time.thread_time() - started
            self._release(stream_id)
        return out

    def free(self, stream_id: int) -> bool:
        """Drop a stream without flushing; False if it was already gone."""
        return self._release(stream_id)

    def live_streams(self) -> int:
        return len(self._streams)

    def stats(self) -> PocketsphinxStats:
        speech = self._speech_freed + sum(s.speech for s in self._streams.values())
        return PocketsphinxStats(
            live_streams=len(self._streams),
            opened=self._opened,
            audio_seconds=self._audio / SAMPLE_RATE,
            speech_seconds=speech / SAMPLE_RATE,
            cpu_seconds=self._cpu,
            built=self._built,
            spare=len(self._spare),
        )

    def close(self) -> None:
        for stream_id in list(self._streams):
            self._release(stream_id)
        self._spare.clear()
        self._lm = None

    # building decoders

    def _decoder(self, **config: Any) -> Any:
        return self._ps.Decoder(hmm=self._hmm, samprate=SAMPLE_RATE, fwdflat=False, fillprob=FILLER_PROB,
                                loglevel=LOG_LEVEL, **config)

    def _take_lm_decoder(self) -> tuple[Any, str]:
        # Building one holds the GIL for 0.15-0.5 s (the dictionary, then the search over the
        # language model), and so the event loop with it: a decoder a stream has finished with
        # serves the next one instead, its cepstral mean set back to where a new decoder's starts,
        # so that a reused decoder decodes exactly as a new one does.
        if self._spare:
            decoder, cmn = self._spare.pop()
            decoder.set_cmn(cmn)
            return decoder, cmn
        decoder = self._lm_decoder()
        return decoder, decoder.get_cmn()

    def _lm_decoder(self) -> Any:
        self._built += 1
        decoder = self._decoder(lm=None, dict=self._dict)
        if self._lm is None:
            self._lm = self._ps.NGramModel(decoder.config, decoder.logmath, self._lm_path)
        decoder.add_lm("lm", self._lm)
        decoder.activate_search("lm")
        return decoder

    def _grammar_decoder(self, grammar: str) -> Any:
        # Only the grammar's words go into this decoder's dictionary: the full one costs ~22 MB
        # and ~80 ms per decoder.
        decoder = self._decoder(lm=None, dict=None, wip=GRAMMAR_WIP)
        try:
            fsg = decoder.parse_jsgf(grammar)
        except (ValueError, RuntimeError) as exc:
            raise ProviderError(f"pocketsphinx: invalid JSGF grammar: {exc}", code=400, permanent=True) from None
        words = _grammar_words(fsg)
        if not words:
            raise ProviderError("pocketsphinx: the grammar has no words", code=400, permanent=True)
        lexicon = _lexicon(self._dict)
        missing: list[str] = []
        for word in words:
            prons = lexicon.get(word) or lexicon.get(word.lower())
            if prons is None:
                missing.append(word)
                continue
            for n, phones in enumerate(prons):
                decoder.add_word(word if n == 0 else f"{word}({n + 1})", phones, False)
        if missing:
            raise ProviderError(f"pocketsphinx: not in the dictionary: {' '.join(sorted(missing))}", code=400,
                                permanent=True)
        decoder.add_fsg("grammar", fsg)
        decoder.activate_search("grammar")
        return decoder

    def _stream(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise ProviderError(f"pocketsphinx: no stream {stream_id}")
        return stream

    def _release(self, stream_id: int) -> bool:
        # Dropping the last reference frees the decoder (ps_free) here, on the engine thread.
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return False
        self._speech_freed += stream.speech
        if stream.cmn is not None and len(self._spare) < self.spare_decoders:
            try:
                if stream.in_utterance:
                    stream.decoder.end_utt()
                self._spare.append((stream.decoder, stream.cmn))
            except Exception:  # noqa: BLE001 - a decoder in a bad state is freed, not reused
                pass
        return True


def register_pocketsphinx(host: EngineHost, *, name: str = ENGINE_NAME, max_streams: int = MAX_STREAMS) -> None:
    """Declare the pocketsphinx engine on ``host`` under ``name``; the defaults may be declared again."""
    if max_streams == MAX_STREAMS:
        host.register(name, PocketsphinxEngine)
    else:
        host.register(name, functools.partial(PocketsphinxEngine, max_streams=max_streams))


# --- the loop side --------------------------------------------------------------------------


def _pcm_bytes(pcm: np.ndarray) -> bytes:
    array = np.asarray(pcm)
    if array.dtype != np.int16:
        raise TypeError(f"pocketsphinx takes int16 PCM, not {array.dtype}")
    return np.ascontiguousarray(array.reshape(-1)).tobytes()


async def _engine_call(host: EngineHost, engine: str, method: str, *args: Any) -> Any:
    try:
        return await host.call(engine, method, *args)
    except ProviderError:
        raise
    except EngineStartError as exc:
        # A model that fails to load will not load on the next try either.
        raise ProviderError(f"pocketsphinx unavailable: {exc.__cause__ or exc}", permanent=True) from exc
    except EngineError as exc:
        raise ProviderError(f"pocketsphinx: {exc}") from exc
    except Exception as exc:
        raise ProviderError(f"pocketsphinx failed: {exc!r}") from exc


class PocketsphinxSession:
    """One recognition stream (``AsrSession``) over a decoder on the engine thread.

    Its owner must ``close`` it: until then the decoder stays on the engine (a host that stops
    frees it too).
    """

    def __init__(self, host: EngineHost, engine: str, stream_id: int, *,
                 max_backlog_ms: int = MAX_BACKLOG_MS, max_feed_ms: int = MAX_FEED_MS) -> None:
        self._host = host
        self._engine = engine
        self.stream_id = stream_id
        self._max_backlog = max(1, max_backlog_ms) * SAMPLE_RATE // 1000 * 2     # bytes
        self._max_feed = max(1, max_feed_ms) * SAMPLE_RATE // 1000 * 2
        self._buffer = bytearray()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._results: asyncio.Queue[Any] = asyncio.Queue()
        self._closing = False
        self._error: ProviderError | None = None
        self._pump = asyncio.create_task(self._run(), name=f"pocketsphinx-{stream_id}")

    @property
    def backlog_ms(self) -> int:
        """Audio sent and not yet handed to the engine."""
        return len(self._buffer) // 2 * 1000 // SAMPLE_RATE

    async def send(self, pcm: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise ProviderError("pocketsphinx session is closed")
        data = _pcm_bytes(pcm)
        if not data:
            return
        self._buffer += data
        self._wake.set()
        while len(self._buffer) > self._max_backlog and not self._closing:
            self._room.clear()
            await self._room.wait()
        if self._error is not None:
            raise self._error

    def results(self) -> AsyncIterator[AsrResult]:
        return read_results(self._results)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._room.set()
        # The pump flushes and frees the decoder; cancelling this wait does not stop it.
        await asyncio.shield(self._pump)

    async def _run(self) -> None:
        owned = True
        try:
            while True:
                if self._buffer:
                    chunk = bytes(self._buffer[:self._max_feed])
                    del self._buffer[:len(chunk)]
                    self._room.set()
                    self._deliver(await self._call("feed", self.stream_id, chunk))
                elif self._closing:
                    break
                else:
                    self._wake.clear()
                    await self._wake.wait()
            owned = False       # finish frees the stream even when its flush fails
            self._deliver(await self._call("finish", self.stream_id))
        except ProviderError as exc:
            self._error = exc
            self._results.put_nowait(exc)
            if owned:
                try:
                    await self._call("free", self.stream_id)
                except ProviderError:
                    pass        # the host is gone, and the decoders with it
        finally:
            self._closing = True
            self._buffer.clear()
            self._room.set()
            self._results.put_nowait(END)

    def _deliver(self, results: list[AsrResult]) -> None:
        for result in results:
            self._results.put_nowait(result)

    async def _call(self, method: str, *args: Any) -> Any:
        return await _engine_call(self._host, self._engine, method, *args)


class PocketsphinxProvider:
    """``AsrProvider`` over the host's pocketsphinx engine. Cheap: one per call is fine."""

    name = "pocketsphinx"

    def __init__(self, host: EngineHost, *, engine: str = ENGINE_NAME, interim_ms: int = INTERIM_MS,
                 max_backlog_ms: int = MAX_BACKLOG_MS, max_feed_ms: int = MAX_FEED_MS,
                 endpoint_window: float = ENDPOINT_WINDOW, endpoint_ratio: float = ENDPOINT_RATIO,
                 vad_mode: int = VAD_MODE) -> None:
        if not host.is_registered(engine):
            register_pocketsphinx(host, name=engine)
        self._host = host
        self._engine = engine
        self._spec_args = {"interim_ms": interim_ms, "endpoint_window": endpoint_window,
                           "endpoint_ratio": endpoint_ratio, "vad_mode": vad_mode}
        self._session_args = {"max_backlog_ms": max_backlog_ms, "max_feed_ms": max_feed_ms}
        self._orphans: set[asyncio.Task[Any]] = set()

    async def open(self, option: TranscriptionOption | None = None) -> PocketsphinxSession:
        spec = recognizer_spec(option, **self._spec_args)
        building = asyncio.ensure_future(_engine_call(self._host, self._engine, "open", spec))
        try:
            stream_id = await asyncio.shield(building)
        except asyncio.CancelledError:
            building.add_done_callback(self._free_orphan)
            raise
        return PocketsphinxSession(self._host, self._engine, stream_id, **self._session_args)

    def _free_orphan(self, building: asyncio.Future[int]) -> None:
        if building.cancelled() or building.exception() is not None:
            return
        task = asyncio.ensure_future(self._free(building.result()))
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    async def _free(self, stream_id: int) -> None:
        try:
            await _engine_call(self._host, self._engine, "free", stream_id)
        except ProviderError:
            pass        # the host is stopping and frees every decoder itself


def make_pocketsphinx_factory(host: EngineHost,
                              **provider_args: Any) -> Callable[[TranscriptionOption | None], AsrProvider]:
    """An ASR factory for ``CallServices.asr``; the option is read when the provider opens a stream.
    ``provider_args`` are PocketsphinxProvider's keyword arguments."""
    if not host.is_registered(provider_args.get("engine", ENGINE_NAME)):
        register_pocketsphinx(host, name=provider_args.get("engine", ENGINE_NAME))

    def factory(option: TranscriptionOption | None) -> AsrProvider:
        return PocketsphinxProvider(host, **provider_args)

    return factory


def pocketsphinx_factories(host: EngineHost, *, names: Sequence[str] = POCKETSPHINX_PROVIDER_NAMES,
                           **provider_args: Any) -> dict[str, Callable[[TranscriptionOption | None], AsrProvider]]:
    """The same factory under each provider name that means pocketsphinx ("pocketsphinx", "local", "sphinx")."""
    factory = make_pocketsphinx_factory(host, **provider_args)
    return {name: factory for name in names}
