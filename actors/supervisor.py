"""Supervision after Erlang/OTP: child specs, restart types, strategies, intensity and shutdown.

A ``Supervisor`` is an actor that starts its children in order, watches them through the
``ChildExited`` messages they send to their parent, restarts them according to their ``Restart``
type and the supervisor's ``Strategy``, and stops them in reverse order. Subclasses (a call, the
gateway) handle their own messages and pass the rest to ``await super().on_receive(message)``.

Restart intensity: more than ``intensity`` restarts within ``period`` seconds (a sliding window over
all children, as OTP counts it) means the restarts are not helping. A child whose spec sets its own
``intensity``/``period`` is counted in a window of its own instead, so that a flapping helper does
not use up its siblings' budget. Past the limit, ``ChildSpec.escalate`` decides: the supervisor
fails (and its own parent decides), or the child is left down and ``on_child_gave_up`` is called.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from actors.base import Actor
from actors.mailbox import SystemMessage
from actors.ref import ActorDeadError, ActorRef, ChildExited, ExitReason, ReplyError, Stop

__all__ = [
    "Backoff",
    "ChildSpec",
    "ChildStartFailed",
    "DuplicateChild",
    "GetChild",
    "GetChildren",
    "GetRestartCounts",
    "Restart",
    "RestartLimitExceeded",
    "StartChild",
    "Strategy",
    "Supervisor",
    "TerminateChild",
]

log = logging.getLogger(__name__)


class Restart(enum.Enum):
    PERMANENT = "permanent"  # always restarted
    TRANSIENT = "transient"  # restarted only after a failure
    TEMPORARY = "temporary"  # never restarted; removed when it ends


class Strategy(enum.Enum):
    ONE_FOR_ONE = "one_for_one"  # restart the child that ended
    REST_FOR_ONE = "rest_for_one"  # ...and every child started after it (they may depend on it)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before the n-th consecutive restart of a child: ``min(maximum, initial * factor**(n-1))``.

    Restarts are consecutive while they fall within the child's intensity period (its own, or the
    supervisor's): a child that stayed up longer than that starts again from ``initial``.
    """

    initial: float = 0.1
    factor: float = 2.0
    maximum: float = 5.0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < 0:
            raise ValueError("backoff delays cannot be negative")
        if self.factor < 1:
            raise ValueError("backoff factor must be >= 1")

    def delay(self, n: int) -> float:
        return min(self.maximum, self.initial * self.factor ** max(0, n - 1))


@dataclass(frozen=True, slots=True)
class ChildSpec:
    id: str
    start: Callable[[ActorRef], ActorRef]  # given the supervisor's ref, to pass as parent=
    restart: Restart = Restart.PERMANENT
    shutdown: float = 5.0  # seconds to wait for the child's stop before cancelling it
    backoff: Backoff | None = None  # None: restart at once
    escalate: bool = True  # past the restart limit: fail the supervisor, or give the child up
    intensity: int | None = None  # a restart limit of the child's own (see the module docstring)
    period: float | None = None


class RestartLimitExceeded(Exception):
    """The supervisor's failure when a child with ``escalate=True`` goes past the restart limit."""


class DuplicateChild(ReplyError):
    """``start_child`` with the id of a child that is running or about to be restarted."""


class ChildStartFailed(ReplyError):
    """A ``StartChild`` whose ``spec.start`` raised; the supervisor goes on. The cause is chained."""


@dataclass(frozen=True, slots=True)
class StartChild:
    """Ask a supervisor to add and start a child; answers its ``ActorRef``."""

    spec: ChildSpec


@dataclass(frozen=True, slots=True)
class TerminateChild:
    """Ask a supervisor to stop a child and forget it (answers once it has stopped)."""

    id: str


@dataclass(frozen=True, slots=True)
class GetChild:
    """Ask a supervisor for the current ref of a child (``None`` if it is down or unknown)."""

    id: str


@dataclass(frozen=True, slots=True)
class GetRestartCounts:
    """Ask a supervisor for ``restart_counts()``."""


@dataclass(frozen=True, slots=True)
class GetChildren:
    """Ask a supervisor for its children in start order: ``[(id, ref or None), ...]``."""


@dataclass(frozen=True, slots=True)
class _RestartDue(SystemMessage):
    """A backoff delay elapsed: restart ``ids`` if they are still waiting under ``token``."""

    ids: tuple[str, ...]
    token: int


class Supervisor(Actor):
    def __init__(
        self,
        children: Sequence[ChildSpec] = (),
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: int = 3,
        period: float = 5.0,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        if intensity < 0 or period <= 0:
            raise ValueError("intensity must be >= 0 and period > 0")
        ids = [spec.id for spec in children]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate child ids in {ids}")
        self.strategy = strategy
        self.intensity = intensity
        self.period = period
        self.on_restart = on_restart    # told the id of every child started again (a counter)
        self._initial: tuple[ChildSpec, ...] = tuple(children)
        # Start order: a dict keeps insertion order, and shutdown walks it backwards.
        self._specs: dict[str, ChildSpec] = {}
        self._refs: dict[str, ActorRef | None] = {}
        self._ids_by_ref: dict[ActorRef, str] = {}
        self._restarts: dict[str, int] = {}
        self._window: deque[float] = deque()
        self._child_windows: dict[str, deque[float]] = {}
        self._pending: dict[str, int] = {}  # child id -> token of the restart it waits for
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._tokens = itertools.count(1)

    # -- queries ---------------------------------------------------------------------------

    def child(self, id: str) -> ActorRef | None:
        """The current ref of a child: it changes at every restart, so look it up each time."""
        return self._refs.get(id)

    def child_ids(self) -> list[str]:
        """Ids of the children in start order, running or not."""
        return list(self._specs)

    def child_count(self) -> int:
        """How many children are listed, running or not."""
        return len(self._specs)

    def restart_counts(self) -> dict[str, int]:
        """How many times each current child has been started again after its first start."""
        return {id: self._restarts.get(id, 0) for id in self._specs}

    # -- lifecycle -------------------------------------------------------------------------

    async def on_start(self) -> None:
        for spec in self._initial:
            self._add(spec)
            self._set_ref(spec.id, self._start_spec(spec))

    async def on_stop(self) -> None:
        await self.shutdown_children()

    async def on_failure(self, error: BaseException) -> None:
        await self.shutdown_children()

    async def on_receive(self, message: object) -> object:
        if isinstance(message, ChildExited):
            await self._handle_exit(message)
            return None
        if isinstance(message, _RestartDue):
            self._timers.pop(message.token, None)
            due = [id for id in message.ids if self._pending.get(id) == message.token]
            await self._restart_group(due)
            return None
        if isinstance(message, GetChild):
            return self.child(message.id)
        if isinstance(message, GetRestartCounts):
            return self.restart_counts()
        if isinstance(message, GetChildren):
            return [(id, self._refs.get(id)) for id in self._specs]
        if isinstance(message, StartChild):
            try:
                return await self.start_child(message.spec)
            except DuplicateChild:
                raise
            except Exception as exc:
                raise ChildStartFailed(
                    f"child {message.spec.id!r} failed to start: {exc!r}"
                ) from exc
        if isinstance(message, TerminateChild):
            await self.terminate_child(message.id)
            return None
        return await super().on_receive(message)

    # -- dynamic children ------------------------------------------------------------------

    async def start_child(self, spec: ChildSpec) -> ActorRef:
        """Add a child at the end of the start order and start it.

        A child of the same id that is down for good (gave up, or a transient that ended) is
        replaced; one that is running or waiting for a restart raises ``DuplicateChild``. If
        ``spec.start`` raises, the child is not added and the exception propagates.
        """
        if spec.id in self._specs:
            if self._refs.get(spec.id) is not None or spec.id in self._pending:
                raise DuplicateChild(f"child {spec.id!r} already exists")
            self._remove(spec.id)
        ref = self._start_spec(spec)
        self._add(spec)
        self._set_ref(spec.id, ref)
        return ref

    async def terminate_child(self, id: str) -> None:
        """Stop a child (within its shutdown timeout) and forget it; unknown ids are ignored."""
        spec = self._specs.get(id)
        if spec is None:
            return
        ref = self._refs.get(id)
        self._remove(id)
        if ref is not None:
            await self._stop_child(spec, ref)

    async def shutdown_children(self) -> None:
        """Stop every child in reverse start order, each within its own shutdown timeout."""
        self._cancel_timers()
        for id in reversed(list(self._specs)):
            ref = self._refs.get(id)
            if ref is not None:
                self._set_ref(id, None)
                await self._stop_child(self._specs[id], ref)

    # -- hooks -----------------------------------------------------------------------------

    async def on_child_exited(self, spec: ChildSpec, exit: ChildExited) -> None:
        """Called for every exit of a current child, before the restart decision."""

    async def on_child_restarted(self, spec: ChildSpec, ref: ActorRef) -> None:
        """Called after a child was started again; ``ref`` is its new ref."""

    async def on_child_gave_up(self, spec: ChildSpec, error: BaseException | None) -> None:
        """Called when a child with ``escalate=False`` went past the restart limit and stays down."""

    # -- internals -------------------------------------------------------------------------

    def _add(self, spec: ChildSpec) -> None:
        self._specs[spec.id] = spec
        self._refs[spec.id] = None
        self._restarts.setdefault(spec.id, 0)

    def _remove(self, id: str) -> None:
        self._set_ref(id, None)
        self._specs.pop(id, None)
        self._refs.pop(id, None)
        self._restarts.pop(id, None)
        self._child_windows.pop(id, None)
        self._pending.pop(id, None)

    def _start_spec(self, spec: ChildSpec) -> ActorRef:
        ref = spec.start(self.actor_ref)
        if ref.parent is not self.actor_ref:
            # Without the parent link no ChildExited ever arrives: the child would never be
            # restarted, and it would outlive its supervisor.
            if ref.is_alive():
                ref.tell(Stop())
            raise ValueError(f"child {spec.id!r} must be started with parent= the ref given to it")
        return ref

    def _set_ref(self, id: str, ref: ActorRef | None) -> None:
        old = self._refs.get(id)
        if old is not None:
            self._ids_by_ref.pop(old, None)
        self._refs[id] = ref
        if ref is not None:
            self._ids_by_ref[ref] = id

    async def _stop_child(self, spec: ChildSpec, ref: ActorRef) -> None:
        if not await ref.stop(timeout=spec.shutdown):
            log.warning(
                "%r: child %r did not stop within %s s and was cancelled",
                self.actor_ref,
                spec.id,
                spec.shutdown,
            )

    def _cancel_timers(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._pending.clear()

    async def _handle_exit(self, exit: ChildExited) -> None:
        id = self._ids_by_ref.get(exit.ref)
        if id is None or self._refs.get(id) is not exit.ref:
            return  # a child this supervisor stopped or replaced itself: nothing to decide
        spec = self._specs[id]
        self._set_ref(id, None)
        await self.on_child_exited(spec, exit)
        await self._child_ended(spec, exit.reason, exit.error)

    async def _child_ended(
        self, spec: ChildSpec, reason: ExitReason, error: BaseException | None
    ) -> None:
        if spec.id not in self._specs:
            return  # removed by on_child_exited
        if spec.restart is Restart.TEMPORARY:
            self._remove(spec.id)
            return
        if spec.restart is Restart.TRANSIENT and reason != "failure":
            return  # stays listed, down
        n, exceeded = self._count_restart(spec)
        if exceeded:
            if spec.escalate:
                limit = spec.intensity if spec.intensity is not None else self.intensity
                period = spec.period if spec.period is not None else self.period
                raise RestartLimitExceeded(
                    f"child {spec.id!r} went past {limit} restarts in {period} s"
                    + (f" (last error: {error!r})" if error is not None else "")
                ) from error
            log.warning("%r: giving up child %r after its restart limit", self.actor_ref, spec.id)
            await self.on_child_gave_up(spec, error)
            return
        group = [spec.id]
        if self.strategy is Strategy.REST_FOR_ONE:
            ids = list(self._specs)
            group = ids[ids.index(spec.id) :]
            for sibling in reversed(group[1:]):
                ref = self._refs.get(sibling)
                if ref is not None:
                    self._set_ref(sibling, None)
                    await self._stop_child(self._specs[sibling], ref)
            for sibling in group[1:]:
                if self._specs[sibling].restart is Restart.TEMPORARY:
                    self._remove(sibling)
            group = [id for id in group if id in self._specs]
        token = next(self._tokens)
        for id in group:
            self._pending[id] = token
        delay = spec.backoff.delay(n) if spec.backoff is not None else 0.0
        if delay > 0:
            self._timers[token] = asyncio.get_running_loop().call_later(
                delay, self._restart_due, tuple(group), token
            )
        else:
            await self._restart_group(group)

    def _count_restart(self, spec: ChildSpec) -> tuple[int, bool]:
        """Record a restart now; return how many in a row this child has had, and whether that is
        one too many."""
        now = asyncio.get_running_loop().time()
        own = self._child_windows.setdefault(spec.id, deque())
        _slide(own, now, spec.period if spec.period is not None else self.period)
        own.append(now)
        if spec.intensity is not None:
            exceeded = len(own) > spec.intensity
        else:
            _slide(self._window, now, self.period)
            self._window.append(now)
            exceeded = len(self._window) > self.intensity
            if exceeded:
                self._window.pop()  # not restarted, so it does not count against the siblings
        return len(own), exceeded

    def _restart_due(self, ids: tuple[str, ...], token: int) -> None:
        try:
            self.actor_ref.tell(_RestartDue(ids, token))
        except ActorDeadError:
            pass  # the supervisor ended during the backoff; its children are stopped already

    async def _restart_group(self, ids: list[str]) -> None:
        for id in ids:
            spec = self._specs.get(id)
            if spec is None or self._refs.get(id) is not None:
                continue
            self._pending.pop(id, None)
            self._restarts[id] = self._restarts.get(id, 0) + 1
            try:
                ref = self._start_spec(spec)
            except Exception as exc:
                log.exception("%r: restarting child %r raised", self.actor_ref, id)
                await self._child_ended(spec, "failure", exc)
                if self.strategy is Strategy.REST_FOR_ONE:
                    return  # that failure restarts the rest of the group with it
                continue
            self._set_ref(id, ref)
            if self.on_restart is not None:
                self.on_restart(id)
            await self.on_child_restarted(spec, ref)


def _slide(window: deque[float], now: float, period: float) -> None:
    while window and window[0] <= now - period:
        window.popleft()
