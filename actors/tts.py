"""The Tts actor: one per call, permanent, restarted with backoff by its Call.

It turns `tts` commands into audio in PlayFeeds: one cancellable synthesis subtask per feed, at
most `maxConcurrentTasks` non-streaming syntheses at once (later ones wait their turn; the
playlist plays items in command order whatever finishes first), streaming pieces of one playId
synthesised in order into the same item. Provider output is resampled to the media rate here.

Each text is synthesised sentence by sentence (protocol/sentences.py), one provider request per
sentence. A request cut by a transient provider failure (a dropped connection, a 5xx, a stall) is
resumed: the provider object is replaced (its next request connects afresh), the sentence is
requested again after a backoff and the samples of it already delivered are skipped, so the
caller hears the rest of the sentence and then the rest of the text, nothing twice and nothing
lost when the provider renders the same sentence the same way again (deterministic engines do;
a neural voice that does not may shift a syllable at the join). Each cut is reported as an
`error` (sender tts) and each resumption as a `reconnect.tts.<provider>` metric. Past the
provider's resume budget the item finishes with what it has, the failure is reported and this
actor fails, so the Call restarts it with backoff.

A permanent failure (bad credentials, unknown voice) finishes the item it was working on and is
reported with its code, never retried; after a refusal of the credentials (401, 403) that provider
is not contacted again for the rest of this actor's life (each later request is refused at once). `completed.tts.<provider>` reports each finished synthesis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from protocol.codecs import MEDIA_RATE, Resampler
from protocol.sentences import count_words, split_sentences

from .base import Actor
from .mailbox import SystemMessage
from .playout import PlayFeed
from .services import ProviderError, ServiceMetric, SynthChunk, SynthRequest, TtsProvider
from .supervisor import Backoff

# A provider without a `reconnect` policy of its own: resumed this many times per synthesis.
RESUME_ATTEMPTS = 3
RESUME_BACKOFF = Backoff(initial=0.2, factor=2.0, maximum=5.0)
# Permanent failures that concern the provider as a whole (credentials), not one request's
# parameters (an unknown voice): after one of these the provider is not contacted again.
REFUSING_CODES = frozenset({401, 403})


@dataclass(frozen=True, slots=True)
class Synthesize:
    feed: PlayFeed
    play_id: str | None
    request: SynthRequest
    provider: str
    streaming: bool = False
    end_of_stream: bool = False
    max_concurrent: int = 1
    base64_pcm: bytes | None = None   # `base64: true`: audio to play as is (16 kHz s16le)


@dataclass(frozen=True, slots=True)
class CancelSynthesis(SystemMessage):
    """Stop every synthesis (interrupt): running subtasks are cancelled, queued ones dropped."""


@dataclass(frozen=True, slots=True)
class PrepareSynthesis:
    """Create `provider` now and let it connect ahead of the first request (call set-up)."""

    provider: str


@dataclass(frozen=True, slots=True)
class TtsMetric:
    """Time to first audio of one synthesis, reported up to the Call."""

    provider: str
    play_id: str | None
    ttfb_ms: int


@dataclass(frozen=True, slots=True)
class TtsFailed:
    """A synthesis failed; the Call tells the application."""

    provider: str
    play_id: str | None
    error: str
    code: int | None
    permanent: bool


@dataclass(eq=False)
class _Job:
    feed: PlayFeed
    play_id: str | None
    provider: str
    streaming: bool
    pieces: deque[tuple[SynthRequest, bytes | None]] = field(default_factory=deque)
    end_of_stream: bool = False
    task: asyncio.Task[None] | None = None
    resumes: int = 0
    started: float = 0.0                  # monotonic time of the first request
    first_audio: bool = True
    last_audio: float = 0.0
    requests: int = 0
    cached: int = 0                       # requests answered from a cache
    words: int = 0                        # words in the pieces already spoken (streaming)
    speaker: str | None = None


class Tts(Actor):
    def __init__(self, providers: Callable[[str], TtsProvider], *, report: Callable[[object], None],
                 session_id: str = "") -> None:
        self._provider_for = providers       # name -> a new provider
        self._providers: dict[str, TtsProvider] = {}
        self._refused: dict[str, ProviderError] = {}   # permanent failures: not contacted again
        self.report = report
        self.log = structlog.get_logger("tts").bind(session_id=session_id)
        self._running: set[_Job] = set()
        self._waiting: deque[tuple[_Job, int]] = deque()
        self._streams: dict[str | None, _Job] = {}   # playId -> open streaming job
        self._closing: set[asyncio.Task[None]] = set()
        self._preparing: dict[str, asyncio.Task[None]] = {}

    async def on_stop(self) -> None:
        await self._cancel_all()
        for task in list(self._preparing.values()):
            task.cancel()
        await asyncio.gather(*self._preparing.values(), return_exceptions=True)
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            await self._close(provider)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def on_failure(self, error: BaseException) -> None:
        await self.on_stop()

    async def on_receive(self, message: object) -> object:
        if isinstance(message, Synthesize):
            self._submit(message)
            return None
        if isinstance(message, CancelSynthesis):
            await self._cancel_all()
            return None
        if isinstance(message, PrepareSynthesis):
            self._prepare(message.provider)
            return None
        return await super().on_receive(message)

    def _job_done(self, job: _Job, error: BaseException | None) -> None:
        self._running.discard(job)
        self._start_waiting()
        if isinstance(error, ProviderError) and not error.permanent:
            raise error  # a sick provider: let the Call restart this actor with backoff

    def _submit(self, msg: Synthesize) -> None:
        piece = (msg.request, msg.base64_pcm)
        if msg.streaming:
            job = self._streams.get(msg.play_id)
            if job is not None and job.feed is msg.feed:
                if piece[0].text or piece[1]:
                    job.pieces.append(piece)
                job.end_of_stream = msg.end_of_stream
                if job.task is None or job.task.done():
                    self._run(job)
                return
            job = _Job(msg.feed, msg.play_id, msg.provider, streaming=True, end_of_stream=msg.end_of_stream)
            if piece[0].text or piece[1]:
                job.pieces.append(piece)
            self._streams[msg.play_id] = job
            self._run(job)
            return
        job = _Job(msg.feed, msg.play_id, msg.provider, streaming=False, end_of_stream=True)
        job.pieces.append(piece)
        if self._whole_running() < max(1, msg.max_concurrent):
            self._run(job)
        else:
            self._waiting.append((job, msg.max_concurrent))

    def _whole_running(self) -> int:
        """Non-streaming syntheses running now: what maxConcurrentTasks bounds."""
        return sum(1 for job in self._running if not job.streaming)

    def _start_waiting(self) -> None:
        while self._waiting:
            job, limit = self._waiting[0]
            if self._whole_running() >= max(1, limit):
                return
            self._waiting.popleft()
            self._run(job)

    def _run(self, job: _Job) -> None:
        self._running.add(job)
        job.task = asyncio.get_running_loop().create_task(self._synthesize(job), name="tts-synthesis")
        finished = self.outside(self._job_done)

        def done(task: asyncio.Task[None]) -> None:
            finished(job, None if task.cancelled() else task.exception())

        job.task.add_done_callback(done)

    async def _synthesize(self, job: _Job) -> None:
        feed = job.feed
        resampler: list[Resampler | None] = [None]
        try:
            while job.pieces and not (feed.closed or feed.finished):
                request, raw = job.pieces.popleft()
                if raw is not None:
                    if len(raw) % 2:
                        raw = raw[:-1]
                    if not feed.push(np.frombuffer(raw, dtype="<i2").copy()):
                        break
                    continue
                # A streaming piece continues the word count of the pieces before it; one that
                # starts with punctuation attaches to the word before, as the feed's text does.
                word_base = job.words
                if job.words and _attaches(request.text):
                    word_base -= 1
                job.words = word_base + count_words(request.text)
                job.speaker = job.speaker or request.speaker
                for sentence in split_sentences(request.text):
                    sub = dataclasses.replace(request, text=sentence.text, streaming=job.streaming)
                    if not await self._speak(job, sub, word_base + sentence.first_word, resampler):
                        break
            if job.end_of_stream or feed.closed or feed.finished:
                feed.finish()
                if job.streaming and self._streams.get(job.play_id) is job:
                    del self._streams[job.play_id]
                if job.requests and not feed.failed and not feed.closed:
                    self._report_completed(job)
        except ProviderError as exc:
            feed.finish(error=str(exc))
            self._forget(job)
            self.report(TtsFailed(job.provider, job.play_id, str(exc), exc.code, exc.permanent))
            raise
        except asyncio.CancelledError:
            feed.finish(error="cancelled")
            self._forget(job)
            raise
        except Exception as exc:  # noqa: BLE001 - any provider bug becomes a reported, restartable failure
            feed.finish(error=repr(exc))
            self._forget(job)
            self.report(TtsFailed(job.provider, job.play_id, f"synthesis failed: {exc!r}", 500, False))
            raise ProviderError(repr(exc)) from exc

    async def _speak(self, job: _Job, request: SynthRequest, word_base: int, resampler: list[Resampler | None]) -> bool:
        """One sentence into the job's feed, resumed after transient failures (module docstring).
        False when the feed takes no more (cut, call ending, too far ahead of playback)."""
        feed = job.feed
        delivered = 0            # provider-rate samples of this sentence appended so far
        lost_at: float | None = None
        marked = False
        while True:
            if not job.started:
                job.started = time.monotonic()
            preparing = self._preparing.get(job.provider)
            if preparing is not None:
                # The connection being made at answer: use it (or learn that it was refused).
                await asyncio.shield(preparing)
            provider = self._provider(job.provider)
            job.requests += 1
            skip = delivered
            from_cache = True
            chunks = provider.synthesize(request)
            try:
                async for chunk in chunks:
                    if lost_at is not None:
                        self._report_reconnect(job, provider, lost_at)
                        lost_at = None
                    from_cache = from_cache and chunk.cached
                    pcm, words = _skip(chunk, skip)
                    skip -= len(chunk.pcm) - len(pcm)
                    if not len(pcm) and not words:
                        continue
                    converter = resampler[0]
                    if converter is None or converter.in_rate != chunk.sample_rate:
                        converter = resampler[0] = Resampler(chunk.sample_rate, MEDIA_RATE)
                    out = converter.process(pcm)
                    base = feed.produced
                    ratio = MEDIA_RATE / chunk.sample_rate
                    if not marked and not any(index == 0 for index, _ in words):
                        # The provider gave no mark for the sentence's first word: it starts here.
                        feed.mark_word(word_base, base)
                    marked = True
                    for index, offset in words:
                        feed.mark_word(word_base + index, base + int(offset * ratio))
                    if not feed.push(out):
                        await _aclose(chunks)
                        return False
                    delivered += len(pcm)
                    if len(out):
                        job.last_audio = time.monotonic()
                        if job.first_audio:
                            job.first_audio = False
                            self.report(TtsMetric(job.provider, job.play_id,
                                                  int((job.last_audio - job.started) * 1000)))
                if from_cache:
                    job.cached += 1
                return True
            except ProviderError as exc:
                await _aclose(chunks)
                if exc.permanent:
                    if exc.code in REFUSING_CODES:
                        self._refused[job.provider] = exc
                    raise
                attempts, initial, maximum = getattr(provider, "reconnect", None) or (
                    RESUME_ATTEMPTS, RESUME_BACKOFF.initial, RESUME_BACKOFF.maximum)
                if job.resumes >= attempts:
                    raise
                job.resumes += 1
                lost_at = time.monotonic()
                self.log.warning("tts request failed, resuming", provider=job.provider, error=str(exc),
                                 attempt=job.resumes, delivered=delivered)
                self.report(TtsFailed(job.provider, job.play_id,
                                      f"{exc}; resuming (attempt {job.resumes} of {attempts})",
                                      exc.code or 502, False))
                self._discard(job.provider, provider)
                await asyncio.sleep(Backoff(initial, 2.0, maximum).delay(job.resumes))

    def _report_reconnect(self, job: _Job, provider: TtsProvider, lost_at: float) -> None:
        self.report(ServiceMetric(f"reconnect.tts.{job.provider}", int((time.monotonic() - lost_at) * 1000),
                                  {"playId": job.play_id, "provider": job.provider,
                                   "attempt": job.resumes}))

    def _report_completed(self, job: _Job) -> None:
        duration = int((max(job.last_audio, job.started) - job.started) * 1000)
        self.report(ServiceMetric(f"completed.tts.{job.provider}", duration, {
            "playId": job.play_id, "provider": job.provider, "speaker": job.speaker,
            "length": job.feed.produced * 2, "cached": job.cached == job.requests, "duration": duration,
            "resumed": job.resumes}))

    def _forget(self, job: _Job) -> None:
        if self._streams.get(job.play_id) is job:
            del self._streams[job.play_id]

    def _provider(self, name: str) -> TtsProvider:
        refused = self._refused.get(name)
        if refused is not None:
            raise ProviderError(f"{refused} (not retried)", code=refused.code, permanent=True)
        provider = self._providers.get(name)
        if provider is None:
            provider = self._providers[name] = self._provider_for(name)
        return provider

    def _discard(self, name: str, provider: TtsProvider) -> None:
        """Drop a provider whose connection failed; the next request makes a fresh one."""
        if self._providers.get(name) is provider:
            del self._providers[name]
            task = asyncio.get_running_loop().create_task(self._close(provider), name="tts-provider-close")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close(self, provider: TtsProvider) -> None:
        try:
            await asyncio.wait_for(provider.close(), 2.0)
        except Exception as exc:  # noqa: BLE001 - closing must not stop the rest of cleanup
            self.log.warning("tts provider close failed", error=repr(exc))

    def _prepare(self, name: str) -> None:
        try:
            provider = self._provider(name)
        except Exception as exc:  # noqa: BLE001 - the first request reports what is wrong
            self.log.info("tts provider not prepared", provider=name, error=repr(exc))
            return
        prepare = getattr(provider, "prepare", None)
        if prepare is None:
            return

        async def run() -> None:
            try:
                await prepare()
            except ProviderError as exc:
                if exc.permanent and exc.code in REFUSING_CODES:
                    self._refused.setdefault(name, exc)
                self.log.info("tts provider not prepared", provider=name, error=str(exc))
            except Exception as exc:  # noqa: BLE001 - the first request connects again
                self.log.info("tts provider not prepared", provider=name, error=repr(exc))

        if name in self._preparing:
            return
        task = asyncio.get_running_loop().create_task(run(), name="tts-prepare")
        self._preparing[name] = task
        task.add_done_callback(lambda _: self._preparing.pop(name, None))

    async def _cancel_all(self) -> None:
        for job, _limit in self._waiting:
            job.feed.finish(error="cancelled")
        self._waiting.clear()
        tasks = [job.task for job in self._running if job.task is not None and not job.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()
        self._streams.clear()


def _attaches(piece: str) -> bool:
    """A streamed piece that begins with punctuation and no space joins the word before it."""
    stripped = piece.strip()
    return bool(stripped) and not piece[0].isspace() and unicodedata.category(stripped[0]).startswith("P")


async def _aclose(chunks: Any) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # noqa: BLE001 - a broken stream may fail to close; it is dropped anyway
            pass


def _skip(chunk: SynthChunk, skip: int) -> tuple[Any, tuple[tuple[int, int], ...]]:
    """The chunk's audio and word marks past its first `skip` samples (already delivered)."""
    if skip <= 0:
        return chunk.pcm, chunk.words
    cut = min(skip, len(chunk.pcm))
    words = tuple((index, offset - cut) for index, offset in chunk.words if offset >= cut)
    return chunk.pcm[cut:], words
