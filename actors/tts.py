"""The Tts actor: one per call, permanent, restarted with backoff by its Call.

It turns `tts` commands into audio in PlayFeeds: one cancellable synthesis subtask per feed, at
most `maxConcurrentTasks` non-streaming syntheses at once (later ones wait their turn; the
playlist plays items in command order whatever finishes first), streaming pieces of one playId
synthesised in order into the same item. Provider output is resampled to the media rate here.

A provider failure finishes the item it was working on (reported as an `error` event by the
Call); a failure that is not permanent also fails this actor so the Call restarts it with backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import structlog

from protocol.codecs import MEDIA_RATE, Resampler

from .base import Actor
from .mailbox import SystemMessage
from .playout import PlayFeed
from .services import ProviderError, SynthRequest, TtsProvider


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


class Tts(Actor):
    def __init__(self, providers: Callable[[str], TtsProvider], *, report: Callable[[object], None],
                 session_id: str = "") -> None:
        self._provider_for = providers       # name -> a provider (created once per name per actor)
        self._providers: dict[str, TtsProvider] = {}
        self.report = report
        self.log = structlog.get_logger("tts").bind(session_id=session_id)
        self._running: set[_Job] = set()
        self._waiting: deque[tuple[_Job, int]] = deque()
        self._streams: dict[str | None, _Job] = {}   # playId -> open streaming job

    async def on_stop(self) -> None:
        await self._cancel_all()
        for provider in self._providers.values():
            try:
                await asyncio.wait_for(provider.close(), 2.0)
            except Exception as exc:  # noqa: BLE001 - closing must not stop the rest of cleanup
                self.log.warning("tts provider close failed", error=repr(exc))

    async def on_failure(self, error: BaseException) -> None:
        await self.on_stop()

    async def on_receive(self, message: object) -> object:
        if isinstance(message, Synthesize):
            self._submit(message)
            return None
        if isinstance(message, CancelSynthesis):
            await self._cancel_all()
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
        resampler: Resampler | None = None
        try:
            while job.pieces:
                request, raw = job.pieces.popleft()
                if raw is not None:
                    if len(raw) % 2:
                        raw = raw[:-1]
                    if not feed.push(np.frombuffer(raw, dtype="<i2").copy()):
                        break
                    continue
                provider = self._provider(job.provider)
                started = time.monotonic()
                first = True
                word_base = len(feed.words) and feed.words[-1].index + 1
                async for chunk in provider.synthesize(request):
                    if resampler is None or resampler.in_rate != chunk.sample_rate:
                        resampler = Resampler(chunk.sample_rate, MEDIA_RATE)
                    pcm = resampler.process(chunk.pcm)
                    base = feed.produced
                    ratio = MEDIA_RATE / chunk.sample_rate
                    for index, offset in chunk.words:
                        feed.mark_word(word_base + index, base + int(offset * ratio))
                    if not feed.push(pcm):
                        break       # nobody will play it (cut, call ending) or too much ahead: stop
                    if first and len(pcm):
                        first = False
                        self.report(TtsMetric(job.provider, job.play_id,
                                              int((time.monotonic() - started) * 1000)))
                if feed.closed or feed.finished:
                    break
            if job.end_of_stream or feed.closed or feed.finished:
                feed.finish()
                if job.streaming and self._streams.get(job.play_id) is job:
                    del self._streams[job.play_id]
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

    def _forget(self, job: _Job) -> None:
        if self._streams.get(job.play_id) is job:
            del self._streams[job.play_id]

    def _provider(self, name: str) -> TtsProvider:
        provider = self._providers.get(name)
        if provider is None:
            provider = self._providers[name] = self._provider_for(name)
        return provider

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
