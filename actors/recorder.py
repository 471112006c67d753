"""The call recorder: both directions of a call into one two-channel WAV, flushed every ptime.

Left is the caller (the track's "in" tap), right is everything the gateway sends to the caller (the
"out" tap). The recorder is a transient child of its call: if it fails (a full disk, a file past
the format's size limit), its supervisor starts it again and the new instance continues in the next
segment file, while the previous file stays a valid WAV because the sink keeps its header current
after every write.

Segments: ``open_sink()`` takes no argument and opens the next segment each time it is called.
The counter therefore lives with whoever holds the child spec (see ``segment_opener``), not in a
Recorder instance, which a restart replaces.

Alignment: the two taps do not deliver in lock-step. The outbound tap is paced by the media clock,
the inbound one follows the network, so one 200 ms flush may see 9 caller frames and 11 output
frames, and the next one the reverse. Padding each flush's shorter side and writing everything
would insert 20 ms of silence into both channels each time that happens, and the file would drift
longer than the call. Instead each flush writes what the wall clock says is due since the start,
less ``LATE_MS`` (the same count on both sides): a side that delivered less is padded with
silence, a side that delivered more keeps the excess for the next flush. The allowance keeps
frame-sized arrivals and timer jitter from ever being padded (a few samples of silence inside a
tone are clicks); a side that comes later than that gets silence once, and the audio that then
arrives is carried, so the silence is not inserted again for the same lateness. A side more than
``MAX_LEAD_MS`` ahead of the clock (a peer sending faster than real time) loses its oldest excess,
counted in ``dropped_samples``, as the audio pipes themselves do. At stop, everything held is
written.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from protocol.codecs import MEDIA_RATE, PTIME_MS, Resampler

from .base import Actor
from .pipes import AudioPipe
from .services import OpenRecording, RecordingSink

__all__ = [
    "GetRecorderStats",
    "LATE_MS",
    "MAX_LEAD_MS",
    "MIN_FLUSH_MS",
    "Recorder",
    "RecorderStats",
    "StereoAligner",
    "segment_opener",
]

log = structlog.get_logger("recorder")

LATE_MS = 100            # how late a side's audio may be before silence is written in its place
MAX_LEAD_MS = 1000       # how far a side may run ahead of the wall clock before its oldest audio goes
MIN_FLUSH_MS = PTIME_MS  # flushing more often than once per media frame only costs CPU
WRITE_TIMEOUT = 5.0      # how long a stopping recorder waits for its file to be completed on disk

_EMPTY = np.zeros(0, dtype=np.int16)


def segment_opener(open_recording: OpenRecording, path: str, samplerate: int) -> Callable[[], RecordingSink]:
    """An ``open_sink`` for a Recorder: each call opens the next segment (0, 1, 2, ...) of ``path``.

    Build it once per recording and hand the same one to every Recorder started for it, so that a
    restarted recorder writes a new file instead of truncating the one its predecessor left.
    """
    segments = itertools.count()

    def open_sink() -> RecordingSink:
        return open_recording(path, samplerate, next(segments))

    return open_sink


class StereoAligner:
    """Two streams of int16 PCM lined up against a sample count (pure; no clock of its own)."""

    __slots__ = ("max_lead", "dropped", "_left", "_right")

    def __init__(self, max_lead: int) -> None:
        if max_lead < 0:
            raise ValueError("max_lead cannot be negative")
        self.max_lead = max_lead
        self.dropped = 0  # samples, both sides together
        self._left = _EMPTY
        self._right = _EMPTY

    @property
    def held(self) -> tuple[int, int]:
        """Samples waiting on the left and on the right."""
        return len(self._left), len(self._right)

    def push(self, left: Sequence[np.ndarray], right: Sequence[np.ndarray]) -> None:
        self._left = _join(self._left, left)
        self._right = _join(self._right, right)

    def take(self, due: int) -> tuple[np.ndarray, np.ndarray]:
        """Exactly ``due`` samples per side: short sides padded with silence, the rest kept."""
        due = max(0, due)
        limit = due + self.max_lead
        if len(self._left) > limit:
            self.dropped += len(self._left) - limit
            self._left = self._left[len(self._left) - limit:]
        if len(self._right) > limit:
            self.dropped += len(self._right) - limit
            self._right = self._right[len(self._right) - limit:]
        left, self._left = _split(self._left, due)
        right, self._right = _split(self._right, due)
        return left, right

    def take_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Everything held, the shorter side padded to the longer."""
        return self.take(max(len(self._left), len(self._right)))


def _join(held: np.ndarray, frames: Sequence[np.ndarray]) -> np.ndarray:
    if not frames:
        return held
    parts = [f if f.dtype == np.int16 else f.astype(np.int16) for f in frames]
    if len(held):
        parts.insert(0, held)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _split(held: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    if len(held) >= n:
        return held[:n], held[n:]
    out = np.zeros(n, dtype=np.int16)
    out[: len(held)] = held
    return out, _EMPTY


@dataclass(frozen=True, slots=True)
class GetRecorderStats:
    """Ask a Recorder for its ``RecorderStats``."""


@dataclass(frozen=True, slots=True)
class RecorderStats:
    """Figures of one Recorder instance (one segment)."""

    path: str
    samplerate: int
    flush_ms: int
    flushes: int
    samples_written: int     # per channel, at `samplerate`
    bytes_written: int       # audio data written by this instance (the header not included)
    dropped_samples: int     # media-rate samples lost because a side ran too far ahead
    cpu_us_per_flush: float  # mean thread CPU time of a flush (drain, align, resample, write)


class Recorder(Actor):
    """Drains the two taps every ``ptime_ms`` into ``open_sink()``'s sink; closes it when it ends.

    ``inbound``/``outbound`` carry 20 ms frames of int16 PCM at ``media_rate``; the file is written
    at ``samplerate`` (one stateful resampler per channel). The flush interval is ``ptime_ms``
    clamped to at least ``MIN_FLUSH_MS`` and to at most half of what the smaller pipe can hold, so
    that the taps are drained before their rings start dropping audio.
    """

    def __init__(
        self,
        inbound: AudioPipe[np.ndarray],
        outbound: AudioPipe[np.ndarray],
        open_sink: Callable[[], RecordingSink],
        *,
        samplerate: int = 16000,
        ptime_ms: int = 200,
        media_rate: int = MEDIA_RATE,
    ) -> None:
        if samplerate <= 0 or media_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {samplerate} and {media_rate}")
        self.inbound = inbound
        self.outbound = outbound
        self.samplerate = samplerate
        self.media_rate = media_rate
        capacity = min(inbound.stats().capacity, outbound.stats().capacity)
        self.flush_ms = max(MIN_FLUSH_MS, min(ptime_ms, capacity * PTIME_MS // 2))
        self._open_sink = open_sink
        # Built here, not in on_start, so that an unsupported rate fails the start of the child.
        self._resample_left = Resampler(media_rate, samplerate)
        self._resample_right = Resampler(media_rate, samplerate)
        self._aligner = StereoAligner(media_rate * MAX_LEAD_MS // 1000)
        self._sink: RecordingSink | None = None
        self._path = ""
        self._timer: asyncio.TimerHandle | None = None
        self._started_at = 0.0
        self._deadline = 0.0
        self._consumed = 0          # media-rate samples per side taken from the aligner
        self.flushes = 0
        self.samples_written = 0
        self._cpu_ns = 0

    # --- lifecycle ---------------------------------------------------------------------------

    async def on_start(self) -> None:
        self._sink = self._open_sink()
        self._path = self._sink.path
        # A cancelled actor (a stop that timed out, a loop shutting down) runs neither on_stop nor
        # on_failure; its watchers are still called, and the file must still be completed and closed.
        self.actor_ref.add_watcher(self._ended)
        self._fail = self.outside(_raise)
        loop = asyncio.get_running_loop()
        self._started_at = loop.time()
        self._deadline = self._started_at + self.flush_ms / 1000.0
        self._timer = loop.call_at(self._deadline, self._on_timer)
        log.info("recording", path=self._path, samplerate=self.samplerate, flush_ms=self.flush_ms)

    async def on_stop(self) -> None:
        sink = self._sink
        self._finish(drain=True)
        await self._until_written(sink)

    async def on_failure(self, error: BaseException) -> None:
        # What is still in the pipes is left there for the next instance's segment: the sink that
        # just failed may fail again, and audio drained into it would be lost.
        sink = self._sink
        self._finish(drain=False)
        await self._until_written(sink)

    async def _until_written(self, sink: RecordingSink | None) -> None:
        """A sink that writes off the loop completes its file after `close`: the recording is done
        (and its segment free for the next instance) only once that happened."""
        wait = getattr(sink, "wait_closed", None)
        if wait is not None:
            try:
                await asyncio.wait_for(wait(), WRITE_TIMEOUT)
            except TimeoutError:
                log.warning("recording not completed on disk in time", path=self._path, timeout=WRITE_TIMEOUT)

    async def on_receive(self, message: object) -> object:
        if isinstance(message, GetRecorderStats):
            return self.stats()
        return await super().on_receive(message)

    def stats(self) -> RecorderStats:
        return RecorderStats(
            path=self._path,
            samplerate=self.samplerate,
            flush_ms=self.flush_ms,
            flushes=self.flushes,
            samples_written=self.samples_written,
            bytes_written=self.samples_written * 4,
            dropped_samples=self._aligner.dropped,
            cpu_us_per_flush=self._cpu_ns / self.flushes / 1000.0 if self.flushes else 0.0,
        )

    # --- flushing ----------------------------------------------------------------------------

    def _ended(self, exit: object) -> None:
        if self._sink is not None:
            self._finish(drain=True)

    def _on_timer(self) -> None:
        # A loop callback, outside the actor's task: a failure is handed to the task as a message
        # so that the actor fails there and its supervisor restarts it.
        self._timer = None
        if self._sink is None:
            return
        try:
            self._flush(final=False, drain=True)
        except Exception as exc:  # noqa: BLE001 - reported to the actor, which fails with it
            self._fail(exc)
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._deadline += self.flush_ms / 1000.0
        if self._deadline <= now:
            # The loop stalled past a whole interval: catch up in one flush, not in a burst.
            self._deadline = now + self.flush_ms / 1000.0
        self._timer = loop.call_at(self._deadline, self._on_timer)

    def _finish(self, *, drain: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sink is None:
            return
        try:
            self._flush(final=True, drain=drain)
        finally:
            sink, self._sink = self._sink, None
            sink.close()
            log.info(
                "recording closed", path=self._path, seconds=round(self.samples_written / self.samplerate, 3),
                dropped_samples=self._aligner.dropped,
            )

    def _flush(self, *, final: bool, drain: bool) -> None:
        assert self._sink is not None
        started = time.thread_time_ns()
        if drain:
            self._aligner.push(self.inbound.drain(), self.outbound.drain())
        if final:
            left, right = self._aligner.take_all()
        else:
            elapsed = asyncio.get_running_loop().time() - self._started_at - LATE_MS / 1000.0
            left, right = self._aligner.take(int(elapsed * self.media_rate) - self._consumed)
        self._consumed += len(left)
        if len(left):
            left = self._resample_left.process(left)
            right = self._resample_right.process(right)
            self._sink.write(left, right)
            self.samples_written += len(left)
        self.flushes += 1
        self._cpu_ns += time.thread_time_ns() - started


def _raise(error: BaseException) -> None:
    raise error
