"""Native engines that must own a thread (espeak-ng, pocketsphinx, onnx sessions), hosted on pykka
ThreadingActors and reached from asyncio without ever blocking the event loop.

Each registered engine gets ONE OS thread, started on first use. The engine object is built on
that thread, every one of its methods runs there, and its ``close()`` runs there when the host
stops: a library that is process-global or not re-entrant sees a single caller. Jobs for one
engine run one at a time in arrival order, whichever call or task submitted them; a job still
queued when its asyncio caller gives up is skipped, not run.

Answers travel back with ``loop.call_soon_threadsafe``. Nothing on the loop waits on a pykka
future: ``await`` on one is a blocking ``get()`` under the hood.

Two forms:

- ``await host.call(engine, method, *args)`` runs ``engine.method(*args)`` and returns its result.
- ``host.stream(engine, method, *args)`` is an async iterator; the engine runs
  ``engine.method(emitter, *args)`` and hands items to ``emitter.emit(item)``. At most
  ``max_in_flight`` items wait unread on the loop side: past that, ``emit`` blocks the engine
  thread until the consumer takes one. A consumer that stops iterating (``aclose``, task
  cancelled, iterator dropped) sets ``emitter.cancelled`` and makes ``emit`` return False, which
  the engine takes as "stop now". A consumer that neither reads nor closes for ``stall_timeout``
  seconds loses its stream (``EngineStalled``) so that it cannot hold the engine away from
  everybody else.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar

import pykka

from .base import Actor

__all__ = [
    "EngineBusy",
    "EngineGaveUp",
    "EngineHostActor",
    "Emitter",
    "EngineError",
    "EngineHost",
    "EngineStalled",
    "EngineStartError",
    "EngineStats",
    "EngineStopped",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

EngineFactory = Callable[[], Any]


class EngineError(Exception):
    """A job could not be run by its engine."""


class EngineStopped(EngineError):
    """The host is stopping or stopped; the job did not run, or did not finish."""


class EngineStartError(EngineError):
    """The engine's factory raised on the engine thread; ``__cause__`` is its exception."""


class _EngineDied(Exception):
    """What ends an engine's thread when a job raised a BaseException."""


class EngineBusy(EngineError):
    """A bounded submission found the engine's queue full: the job was refused, not queued (and
    counted in ``EngineStats.refused``)."""


class EngineStalled(EngineError):
    """A stream's consumer left its in-flight items unread for longer than the stall timeout."""


class Emitter(Protocol[T]):
    """What a streaming engine method receives as its first argument (used on the engine thread)."""

    @property
    def cancelled(self) -> bool:
        """True once the consumer has gone: stop producing."""

    def emit(self, item: T) -> bool:
        """Hand one item to the consumer; False means it has gone and the item was dropped."""


@dataclass(frozen=True, slots=True)
class EngineStats:
    name: str
    running: bool
    submitted: int
    completed: int
    cancelled: int            # skipped while queued, or stopped early by its consumer
    failed: int
    busy_seconds: float       # engine-thread time spent in jobs
    restarts: int = 0         # times its thread died and was started again
    refused: int = 0          # bounded submissions turned away because the queue was full

    @property
    def queued(self) -> int:
        """Jobs submitted and not yet finished, the running one included."""
        return self.submitted - self.completed - self.cancelled - self.failed


class _Counters:
    # `submitted` is written by the loop thread, the rest by the engine thread only.
    __slots__ = ("submitted", "completed", "cancelled", "failed", "busy_seconds", "thread", "refused")

    def __init__(self) -> None:
        self.refused = 0        # written by the loop thread
        self.submitted = 0
        self.completed = 0
        self.cancelled = 0
        self.failed = 0
        self.busy_seconds = 0.0
        self.thread: threading.Thread | None = None


# --- tickets: one per job, shared by the loop thread and the engine thread ---------------------

class _Ticket:
    __slots__ = ("loop", "cancelled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # A plain flag: written by the loop thread, only read by the engine thread.
        self.cancelled = False

    def post(self, fn: Callable[..., object], *args: object) -> bool:
        """Run ``fn(*args)`` on the loop; False if the loop has closed (the job is then moot)."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            self.cancelled = True
            return False
        return True


def _settle(future: asyncio.Future[Any], value: object, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class _CallTicket(_Ticket):
    __slots__ = ("future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.future: asyncio.Future[Any] = loop.create_future()

    def succeed(self, value: object) -> None:
        self.post(_settle, self.future, value, None)

    def fail(self, error: BaseException) -> None:
        self.post(_settle, self.future, None, error)

    def abort(self, error: BaseException) -> None:
        self.cancelled = True
        _settle(self.future, None, error)


_ITEM, _END, _ERROR = 0, 1, 2


class _StreamTicket(_Ticket):
    __slots__ = ("queue", "credit", "stall_timeout", "stalled")

    def __init__(self, loop: asyncio.AbstractEventLoop, max_in_flight: int, stall_timeout: float) -> None:
        super().__init__(loop)
        self.queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        # Free slots for unread items: the engine thread takes one per item and must be able to
        # sleep when none is left, so this is a real cross-thread primitive.
        self.credit = threading.Semaphore(max_in_flight)
        self.stall_timeout = stall_timeout
        self.stalled = False

    # the Emitter the engine method sees
    def emit(self, item: Any) -> bool:
        if self.cancelled:
            return False
        if not self.credit.acquire(timeout=self.stall_timeout):
            self.stalled = not self.cancelled
            self.cancelled = True
            return False
        if self.cancelled:      # woken by the consumer leaving, not by a read
            return False
        return self.post(self.queue.put_nowait, (_ITEM, item))

    def succeed(self, value: object) -> None:
        self.post(self.queue.put_nowait, (_END, None))

    def fail(self, error: BaseException) -> None:
        self.post(self.queue.put_nowait, (_ERROR, error))

    # loop side
    def leave(self) -> None:
        self.cancelled = True
        self.credit.release()   # wake an engine thread waiting for a slot

    def abort(self, error: BaseException) -> None:
        self.queue.put_nowait((_ERROR, error))
        self.leave()


@dataclass(frozen=True, slots=True)
class _Job:
    method: str | None              # None: only make sure the engine is built
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    ticket: _CallTicket | _StreamTicket


# --- the engine thread -----------------------------------------------------------------------

class EngineActor(pykka.ThreadingActor):
    """Owns one engine object on its own thread and runs the jobs sent to it, one at a time."""

    # A host that is never stopped (a crash in the owner) must not keep the process alive at
    # exit; the normal path is EngineHost.stop(), which closes the engine on this thread.
    use_daemon_thread = True

    def __init__(self, name: str, factory: EngineFactory, counters: _Counters,
                 on_died: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._name = name
        self._factory = factory
        self._counters = counters
        self._on_died = on_died
        self._engine: Any = None

    def on_start(self) -> None:
        thread = threading.current_thread()
        thread.name = f"engine-{self._name}"
        self._counters.thread = thread

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Job):
            started = time.perf_counter()
            try:
                self._run(message)
            finally:
                self._counters.busy_seconds += time.perf_counter() - started
            return None
        return super().on_receive(message)

    def on_stop(self) -> None:
        self._close()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._close()
        # Jobs queued behind the one that killed the thread will never run: answer them now.
        while True:
            try:
                envelope = self.actor_inbox.get_nowait()
            except queue.Empty:
                break
            message = getattr(envelope, "message", None)
            if isinstance(message, _Job):
                message.ticket.fail(EngineStopped(f"engine {self._name!r} died before this job ran"))
        if self._on_died is not None:
            self._on_died()

    def _run(self, job: _Job) -> None:
        counters = self._counters
        ticket = job.ticket
        if ticket.cancelled:
            counters.cancelled += 1
            return
        if self._engine is None:
            try:
                self._engine = self._factory()
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
                error = EngineStartError(f"engine {self._name!r} failed to start: {exc}")
                error.__cause__ = exc
                counters.failed += 1
                ticket.fail(error)
                return
        result: Any = None
        try:
            if job.method is not None:
                method = getattr(self._engine, job.method)
                if isinstance(ticket, _StreamTicket):
                    method(ticket, *job.args, **job.kwargs)
                else:
                    result = method(*job.args, **job.kwargs)
        except Exception as exc:  # noqa: BLE001
            counters.failed += 1
            ticket.fail(exc)
            return
        except BaseException as exc:
            # This kills the engine's thread; its caller must not wait for an answer forever.
            # Raised on as an Exception: pykka answers a BaseException by stopping every actor
            # of the process, and one engine's death must not take the others with it.
            counters.failed += 1
            ticket.fail(EngineStopped(f"engine {self._name!r} died: {exc!r}"))
            raise _EngineDied(f"engine {self._name!r} died: {exc!r}") from exc
        if isinstance(ticket, _StreamTicket) and ticket.stalled:
            counters.failed += 1
            ticket.fail(EngineStalled(
                f"engine {self._name!r}: stream consumer read nothing for {ticket.stall_timeout:g} s"))
        elif ticket.cancelled:
            counters.cancelled += 1
        else:
            counters.completed += 1
            ticket.succeed(result)

    def _close(self) -> None:
        engine, self._engine = self._engine, None
        close = getattr(engine, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception:
            log.exception("engine %r failed to close", self._name)


# --- the loop side ---------------------------------------------------------------------------

class EngineHost:
    """Registry of engine factories and the threads running them; use from one event loop."""

    def __init__(self, *, max_in_flight: int = 64, stall_timeout: float = 5.0, restart_intensity: int = 3,
                 restart_period: float = 30.0) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if stall_timeout <= 0:
            raise ValueError("stall_timeout must be positive")
        if restart_intensity < 0 or restart_period <= 0:
            raise ValueError("restart_intensity must be >= 0 and restart_period > 0")
        self.max_in_flight = max_in_flight
        self.stall_timeout = stall_timeout
        # An engine whose thread dies is started again, at most `restart_intensity` times within
        # `restart_period` seconds (as a supervisor counts); past that it is given up and
        # `on_gave_up(name, why)` is called: the EngineHost's actor fails with it, and its
        # supervisor decides.
        self.restart_intensity = restart_intensity
        self.restart_period = restart_period
        self.on_gave_up: Callable[[str, str], None] | None = None
        self._deaths: dict[str, deque[float]] = {}
        self._given_up: dict[str, str] = {}
        self.restarts: dict[str, int] = {}
        self._factories: dict[str, EngineFactory] = {}
        self._refs: dict[str, pykka.ActorRef[EngineActor]] = {}
        self._counters: dict[str, _Counters] = {}
        self._tickets: set[_CallTicket | _StreamTicket] = set()
        self._stopped = False

    def register(self, name: str, factory: EngineFactory) -> None:
        """Declare engine ``name``, built by ``factory()`` on its own thread at first use.

        Registering the same factory again is a no-op; a different one under a taken name is an error.
        """
        known = self._factories.get(name)
        if known is not None:
            if known != factory:
                raise ValueError(f"engine {name!r} is already registered with another factory")
            return
        self._factories[name] = factory
        self._counters[name] = _Counters()

    def is_registered(self, name: str) -> bool:
        return name in self._factories

    def open(self) -> None:
        """Accept jobs again after ``stop()`` (a restarted owner), with a clean restart record."""
        self._stopped = False
        self._deaths.clear()
        self._given_up.clear()

    def given_up(self, name: str) -> str | None:
        """Why engine ``name`` was given up, or None while it may still be started."""
        return self._given_up.get(name)

    def submit(self, name: str, method: str, /, *args: Any, max_queued: int | None = None) -> asyncio.Future[Any]:
        """``engine.method(*args)`` on the engine's thread, as a future for callback-style callers
        (a media-clock tick cannot await). Cancelling the future skips a job still queued.

        With ``max_queued``, a job that would find that many jobs of this engine already queued
        (the running one included) is refused with ``EngineBusy`` and counted in ``refused``:
        a caller that must not wait behind an overloaded engine learns it at once."""
        if max_queued is not None:
            self.check_room(name, max_queued)
        ticket = _CallTicket(asyncio.get_running_loop())
        self._submit(name, _Job(method, args, {}, ticket))

        def done(_future: asyncio.Future[Any]) -> None:
            ticket.cancelled = True
            self._tickets.discard(ticket)

        ticket.future.add_done_callback(done)
        return ticket.future

    def check_room(self, name: str, max_queued: int) -> None:
        """Raise ``EngineBusy`` (and count it) if ``name`` has ``max_queued`` or more jobs queued."""
        counters = self._counters.get(name)
        if counters is None:
            raise EngineError(f"no engine named {name!r}")
        queued = counters.submitted - counters.completed - counters.cancelled - counters.failed
        if queued >= max_queued:
            counters.refused += 1
            raise EngineBusy(f"engine {name!r} has {queued} jobs queued (limit {max_queued})")

    def is_running(self, name: str) -> bool:
        ref = self._refs.get(name)
        return ref is not None and ref.is_alive()

    def threads(self) -> list[threading.Thread]:
        """The engine threads started so far that are still alive."""
        return [c.thread for c in self._counters.values() if c.thread is not None and c.thread.is_alive()]

    def names(self) -> list[str]:
        """The registered engines, in registration order."""
        return list(self._factories)

    def stats(self, name: str) -> EngineStats:
        counters = self._counters[name]
        return EngineStats(
            name=name,
            running=self.is_running(name),
            submitted=counters.submitted,
            completed=counters.completed,
            cancelled=counters.cancelled,
            failed=counters.failed,
            busy_seconds=counters.busy_seconds,
            restarts=self.restarts.get(name, 0),
            refused=counters.refused,
        )

    async def start(self, name: str) -> None:
        """Start engine ``name`` now rather than at its first job (builds it on its thread)."""
        await self._call(name, None, (), {})

    async def call(self, name: str, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """``engine.method(*args, **kwargs)`` on the engine's thread; its result or its exception."""
        return await self._call(name, method, args, kwargs)

    async def _call(self, name: str, method: str | None, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        ticket = _CallTicket(asyncio.get_running_loop())
        self._submit(name, _Job(method, args, kwargs, ticket))
        try:
            return await ticket.future
        finally:
            ticket.cancelled = True     # if still queued, the engine skips it
            self._tickets.discard(ticket)

    async def stream(self, name: str, method: str, /, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Items ``engine.method(emitter, *args, **kwargs)`` emits, as the engine produces them."""
        ticket = _StreamTicket(asyncio.get_running_loop(), self.max_in_flight, self.stall_timeout)
        self._submit(name, _Job(method, args, kwargs, ticket))
        try:
            while True:
                if ticket.queue.empty():
                    kind, value = await ticket.queue.get()
                else:
                    # Items already waiting would otherwise be handed over without ever
                    # suspending: a consumer slower than its engine would hold the loop for
                    # the whole stream.
                    await asyncio.sleep(0)
                    kind, value = ticket.queue.get_nowait()
                if kind == _ITEM:
                    ticket.credit.release()
                    yield value
                elif kind == _END:
                    return
                else:
                    raise value
        finally:
            ticket.leave()
            self._tickets.discard(ticket)

    def _submit(self, name: str, job: _Job) -> None:
        if self._stopped:
            raise EngineStopped("engine host is stopped")
        factory = self._factories.get(name)
        if factory is None:
            raise EngineError(f"no engine named {name!r}")
        ref = self._refs.get(name)
        if ref is not None and not ref.is_alive():
            # Died, and its notice has not reached the loop yet: count it now.
            self._died(name, ref)
            ref = self._refs.get(name)
        why = self._given_up.get(name)
        if why is not None:
            raise EngineStopped(f"engine {name!r} gave up: {why}")
        if ref is None:
            ref = self._start_engine(name)
        counters = self._counters[name]
        counters.submitted += 1         # before the engine can count the job as done
        try:
            ref.tell(job)
        except pykka.ActorDeadError:
            counters.submitted -= 1
            raise EngineStopped(f"engine {name!r} has stopped") from None
        self._tickets.add(job.ticket)

    def _start_engine(self, name: str) -> pykka.ActorRef[EngineActor]:
        loop = asyncio.get_running_loop()
        holder: list[pykka.ActorRef[EngineActor]] = []

        def on_died() -> None:
            # On the engine's own thread, as it dies: the decision is taken on the loop.
            try:
                loop.call_soon_threadsafe(lambda: self._died(name, holder[0]) if holder else None)
            except RuntimeError:
                pass  # the loop has closed; nobody is left to restart anything

        ref = EngineActor.start(name, self._factories[name], self._counters[name], on_died)
        holder.append(ref)
        self._refs[name] = ref
        return ref

    def _died(self, name: str, ref: pykka.ActorRef[EngineActor]) -> None:
        """An engine thread died (only a BaseException gets past a job): start it again within the
        restart limits, or give the engine up."""
        if self._refs.get(name) is not ref or self._stopped:
            return  # already handled, or the host is stopping anyway
        del self._refs[name]
        now = time.monotonic()
        deaths = self._deaths.setdefault(name, deque())
        while deaths and deaths[0] <= now - self.restart_period:
            deaths.popleft()
        deaths.append(now)
        if len(deaths) > self.restart_intensity:
            why = f"its thread died {len(deaths)} times within {self.restart_period:g} s"
            self._given_up[name] = why
            log.error("engine %r given up: %s", name, why)
            if self.on_gave_up is not None:
                self.on_gave_up(name, why)
            return
        self.restarts[name] = self.restarts.get(name, 0) + 1
        log.warning("engine %r died; starting it again (%d in %g s)", name, len(deaths), self.restart_period)
        self._start_engine(name)

    async def stop(self, timeout: float = 5.0) -> bool:
        """Fail pending jobs with ``EngineStopped``, close every engine on its own thread and wait
        (without blocking the loop) until those threads have exited. True if all did in time."""
        self._stopped = True
        for ticket in list(self._tickets):
            ticket.abort(EngineStopped("engine host stopped"))
        self._tickets.clear()
        for ref in self._refs.values():
            ref.stop(block=False)
        deadline = time.monotonic() + timeout
        pending = list(self._refs)
        while pending:
            pending = [name for name in pending if not self._exited(name)]
            if not pending:
                break
            if time.monotonic() >= deadline:
                log.warning("engine threads still running after %.1f s: %s", timeout, ", ".join(pending))
                return False
            await asyncio.sleep(0.002)
        self._refs.clear()
        return True

    def _exited(self, name: str) -> bool:
        thread = self._counters[name].thread
        # on_start records the thread first thing; until then it has not even begun.
        return thread is not None and not thread.is_alive()

    async def __aenter__(self) -> EngineHost:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


class EngineGaveUp(Exception):
    """An engine went past its restart limit; the EngineHost's actor fails with this."""


class EngineHostActor(Actor):
    """The EngineHost in the supervision tree: it opens the host when it starts, stops every
    engine thread when it stops, and fails when an engine is given up, so that its supervisor
    restarts the host (with a clean restart record) or, past its own limit, escalates."""

    def __init__(self, host: EngineHost) -> None:
        self.host = host

    async def on_start(self) -> None:
        self.host.open()
        self.host.on_gave_up = self.outside(_gave_up)

    async def on_stop(self) -> None:
        self.host.on_gave_up = None
        await self.host.stop()

    async def on_failure(self, error: BaseException) -> None:
        self.host.on_gave_up = None
        await self.host.stop()


def _gave_up(name: str, why: str) -> None:
    raise EngineGaveUp(f"engine {name!r} gave up: {why}")
