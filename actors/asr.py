"""The Asr actor: one recognition stream per call, restarted with backoff without losing words.

It is fed from the track's bounded "heard" tap (denoised caller audio, 20 ms frames at 16 kHz).
Every frame it sends also goes into a pre-roll ring that lives with the Call, outside any one Asr
instance: when a provider fails and its supervisor starts a new instance, the new stream is first
fed the ring (the audio since the last final result, up to its capacity), so the words of the
utterance that was being recognised when the provider died are recognised again, not lost.

Results are reported to the Call with their times on the wall clock (ms): each stream maps its
audio offsets to the capture time of the first frame it was sent.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from .base import Actor
from .pipes import AudioPipe, PipeClosed
from .services import AsrNotice, AsrProvider, AsrResult, ProviderError, ServiceMetric

FRAME_MS = 20


class PrerollRing:
    """The last `seconds` of audio sent to recognition, with capture times; cleared at each final
    result, since audio before a final result has been recognised for good.

    It outlives each Asr instance, and so also carries what the next instance must know of the
    last one's end: since when the stream has been down (`lost_at`, monotonic seconds) and how many
    times it has been reconnected."""

    def __init__(self, seconds: float = 2.0) -> None:
        self._frames: deque[tuple[float, np.ndarray]] = deque(maxlen=max(1, int(seconds * 1000 / FRAME_MS)))
        self.lost_at: float | None = None
        self.reconnects = 0

    def append(self, at_ms: float, frame: np.ndarray) -> None:
        self._frames.append((at_ms, frame))

    def snapshot(self) -> list[tuple[float, np.ndarray]]:
        return list(self._frames)

    def clear(self) -> None:
        self._frames.clear()

    def __len__(self) -> int:
        return len(self._frames)


@dataclass(frozen=True, slots=True)
class AsrText:
    """A result for the Call: `final` ends an utterance. Times are wall-clock ms."""

    provider: str
    text: str
    final: bool
    start_ms: int | None
    end_ms: int | None
    first_audio_ms: int          # capture time of the utterance's first audio in this stream


@dataclass(frozen=True, slots=True)
class AsrFailed:
    provider: str
    error: str
    code: int | None
    permanent: bool


class Asr(Actor):
    def __init__(self, provider: AsrProvider, option: Any, audio: AudioPipe[np.ndarray], ring: PrerollRing, *,
                 report: Callable[[object], None], session_id: str = "") -> None:
        self.provider = provider
        self.option = option
        self.audio = audio
        self.ring = ring
        self.report = report
        self.log = structlog.get_logger("asr").bind(session_id=session_id, provider=provider.name)
        self._session: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._t0: float | None = None            # capture time (ms) of the stream's first frame
        self._utterance_first: float | None = None

    async def on_start(self) -> None:
        try:
            self._session = await self.provider.open(self.option)
        except ProviderError as exc:
            self.report(AsrFailed(self.provider.name, str(exc), exc.code, exc.permanent))
            if exc.permanent:
                # Not retried: a normal stop of a transient child is not restarted.
                self.stop()
                return
            self._lost()
            raise
        replay = self.ring.snapshot()
        for at_ms, frame in replay:
            await self._send(at_ms, frame)
        if replay:
            self.log.info("asr replayed pre-roll", frames=len(replay))
        self._on_stream_failed = self.outside(self._stream_failed)
        if self.ring.lost_at is not None:
            self.ring.reconnects += 1
            down_ms = int((time.monotonic() - self.ring.lost_at) * 1000)
            self.ring.lost_at = None
            self.report(ServiceMetric(f"reconnect.asr.{self.provider.name}", down_ms, {
                "provider": self.provider.name, "attempt": self.ring.reconnects,
                "replayedMs": len(replay) * FRAME_MS}))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._pump(), name="asr-pump"),
                       loop.create_task(self._results(), name="asr-results")]
        for task in self._tasks:
            task.add_done_callback(self._task_done)

    async def on_stop(self) -> None:
        await self._shutdown(flush=True)

    async def on_failure(self, error: BaseException) -> None:
        self._lost()
        await self._shutdown(flush=False)

    def _lost(self) -> None:
        if self.ring.lost_at is None:
            self.ring.lost_at = time.monotonic()

    def _stream_failed(self, error: BaseException) -> None:
        if isinstance(error, ProviderError):
            self.report(AsrFailed(self.provider.name, str(error), error.code, error.permanent))
            if error.permanent:
                self.stop()
                return
        raise error

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._on_stream_failed(error)

    async def _send(self, at_ms: float, frame: np.ndarray) -> None:
        if self._t0 is None:
            self._t0 = at_ms
        if self._utterance_first is None:
            self._utterance_first = at_ms
        await self._session.send(frame)

    async def _pump(self) -> None:
        while True:
            try:
                frame = await self.audio.pop()
            except PipeClosed:
                return
            at_ms = time.time() * 1000 - FRAME_MS * (len(self.audio) + 1)
            self.ring.append(at_ms, frame)
            await self._send(at_ms, frame)

    async def _results(self) -> None:
        async for result in self._session.results():
            if isinstance(result, AsrNotice):
                self.report(AsrFailed(self.provider.name, result.error, result.code, False))
            else:
                self._deliver(result)

    def _deliver(self, result: AsrResult) -> None:
        t0 = self._t0 or time.time() * 1000
        start = None if result.start_ms is None else int(t0 + result.start_ms)
        end = None if result.end_ms is None else int(t0 + result.end_ms)
        first = int(self._utterance_first if self._utterance_first is not None else t0)
        self.report(AsrText(self.provider.name, result.text, result.final, start, end, first))
        if result.final:
            self.ring.clear()
            self._utterance_first = None

    async def _shutdown(self, flush: bool) -> None:
        pump = self._tasks[0] if self._tasks else None
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            try:
                await asyncio.wait_for(session.close(), 2.0 if flush else 0.5)
            except Exception as exc:  # noqa: BLE001 - closing a broken stream must not stop cleanup
                self.log.warning("asr close failed", error=repr(exc))
        for task in self._tasks[1:]:
            if flush:
                try:
                    await asyncio.wait_for(asyncio.shield(task), 1.0)
                except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - a last final result is best effort
                    pass
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
