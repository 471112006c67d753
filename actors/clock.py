"""The media clock: one timer that drives every call's paced playout.

Each call's output is paced by the clock, never by its producers: at every tick a track sends
exactly one frame (silence when nothing plays). One process-wide ticker instead of one timer per
call keeps the per-call cost of pacing to a function call, which is what lets one core carry
hundreds of calls; every track still has its own schedule state and jitter figures.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import structlog

from .base import Actor

log = structlog.get_logger("clock")


class MediaClock:
    """Calls every registered tick callback once per `ptime_ms`, on absolute deadlines.

    Callbacks are synchronous and must be quick (decode, encode, hand bytes to a transport
    buffer). A callback that raises is unregistered and its `on_error` is called, so one broken
    track cannot stop the others.
    """

    def __init__(self, ptime_ms: int = 20, *, max_catch_up: int = 5) -> None:
        self.ptime = ptime_ms / 1000.0
        self.max_catch_up = max_catch_up
        self._subs: dict[int, tuple[Callable[[float], None], Callable[[BaseException], None]]] = {}
        self._next_id = 0
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.skipped = 0
        self.late_ticks = 0
        self._lateness: deque[float] = deque(maxlen=3000)  # seconds each tick ran after its deadline
        # Work that must follow every track's tick (one batched VAD inference for all calls).
        self._after: dict[str, Callable[[], object]] = {}
        # Told when the ticker itself fails (not a track's tick: those are isolated); set by the
        # clock's actor, whose supervisor restarts the ticker.
        self.on_crash: Callable[[BaseException], None] | None = None

    def register(self, tick: Callable[[float], None], on_error: Callable[[BaseException], None]) -> int:
        self._next_id += 1
        self._subs[self._next_id] = (tick, on_error)
        self.resume()
        return self._next_id

    def resume(self) -> None:
        """Run the ticker if anything is registered and it is not running (after a restart)."""
        if self._subs and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._guarded(), name="media-clock")

    def after_tick(self, key: str, fn: Callable[[], object]) -> None:
        """Run `fn` once per tick after all tracks (idempotent per key)."""
        self._after.setdefault(key, fn)

    def unregister(self, handle: int) -> None:
        self._subs.pop(handle, None)

    def __len__(self) -> int:
        return len(self._subs)

    def stats(self) -> dict[str, float | int]:
        """Tick figures: how late ticks ran after their deadline (ms) over the last ~60 s."""
        late = sorted(self._lateness)

        def pct(p: float) -> float:
            return round(late[min(len(late) - 1, int(p * len(late)))] * 1000, 3) if late else 0.0

        return {"tracks": len(self._subs), "ticks": self.ticks, "late_ticks": self.late_ticks,
                "skipped": self.skipped, "lateness_ms_p50": pct(0.50), "lateness_ms_p99": pct(0.99),
                "lateness_ms_max": round(late[-1] * 1000, 3) if late else 0.0}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _guarded(self) -> None:
        try:
            await self._run()
        except Exception as exc:  # noqa: BLE001 - the ticker's own defect: its actor is restarted
            log.error("media clock failed", error=repr(exc))
            self._task = None
            if self.on_crash is not None:
                self.on_crash(exc)

    async def _run(self) -> None:
        deadline = time.monotonic()
        while self._subs:
            deadline += self.ptime
            now = time.monotonic()
            if now - deadline > self.ptime * self.max_catch_up:
                # Far behind (a stalled loop): resynchronise instead of bursting frames at the peer.
                missed = int((now - deadline) / self.ptime)
                self.skipped += missed
                deadline += missed * self.ptime
            delay = deadline - now
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.late_ticks += 1
            self.ticks += 1
            tick_time = time.monotonic()
            self._lateness.append(tick_time - deadline)
            for handle, (tick, on_error) in list(self._subs.items()):
                try:
                    tick(tick_time)
                except Exception as exc:  # noqa: BLE001 - isolate one track's failure from the rest
                    self._subs.pop(handle, None)
                    log.error("tick failed", error=repr(exc))
                    try:
                        on_error(exc)
                    except Exception:  # noqa: BLE001
                        log.exception("tick error handler failed")
            for key, fn in list(self._after.items()):
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001 - a failing batch must not stop the clock
                    log.error("after-tick work failed", key=key, error=repr(exc))
        self._task = None


class MediaClockActor(Actor):
    """The media clock in the supervision tree. The clock object (and every track registered on it)
    outlives this actor; the actor owns the ticker: it resumes it when it starts, stops it when it
    stops, and fails when the ticker fails, so that its supervisor starts the ticker again."""

    def __init__(self, clock: MediaClock) -> None:
        self.clock = clock

    async def on_start(self) -> None:
        self.clock.on_crash = self.outside(_raise)
        self.clock.resume()

    async def on_stop(self) -> None:
        self.clock.on_crash = None
        await self.clock.stop()

    async def on_failure(self, error: BaseException) -> None:
        self.clock.on_crash = None
        await self.clock.stop()


def _raise(error: BaseException) -> None:
    raise error
