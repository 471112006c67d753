"""The supervisor of all calls: one temporary child per session id, behind an admission limit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from actors.ref import ActorRef, ReplyError
from actors.supervisor import (
    ChildSpec,
    ChildStartFailed,
    DuplicateChild,
    Restart,
    Strategy,
    Supervisor,
)

__all__ = [
    "AdmissionRefused",
    "CallStartFailed",
    "CallSupervisor",
    "DuplicateSession",
    "GetCall",
    "ListCalls",
    "StartCall",
]


class AdmissionRefused(ReplyError):
    """No slot left: the message names the limit, e.g. "max_calls (400) reached"."""


class DuplicateSession(DuplicateChild):
    """A call with this session id is already running."""


class CallStartFailed(ChildStartFailed):
    """The call's start function raised; the supervisor itself goes on. The cause is chained."""


@dataclass(frozen=True, slots=True)
class StartCall:
    """Ask: start a call under this session id; answers its ``ActorRef``.

    ``start`` gets the supervisor's ref to pass as ``parent=``. ``shutdown`` is how long a drain
    waits for this call's stop (hangup, recording finalised) before cancelling it.
    """

    session_id: str
    start: Callable[[ActorRef], ActorRef]
    shutdown: float = 5.0


@dataclass(frozen=True, slots=True)
class ListCalls:
    """Ask: the session ids of the running calls, in start order (``list[str]``)."""


@dataclass(frozen=True, slots=True)
class GetCall:
    """Ask: the ``ActorRef`` of a running call, or ``None``."""

    session_id: str


class CallSupervisor(Supervisor):
    """Calls are temporary children: a crashed call is not restarted (it has hung up and said why).

    A call that ends, for any reason, is removed as soon as its ``ChildExited`` arrives (a system
    message, so ahead of queued ``StartCall``\\s), which frees its admission slot. To end one call,
    stop its ref (from ``GetCall``) directly: that does not hold up this supervisor's mailbox.
    """

    def __init__(self, max_calls: int) -> None:
        if max_calls < 0:
            raise ValueError("max_calls cannot be negative")
        super().__init__((), strategy=Strategy.ONE_FOR_ONE)
        self.max_calls = max_calls

    async def on_receive(self, message: object) -> object:
        if isinstance(message, StartCall):
            return await self._start_call(message)
        if isinstance(message, ListCalls):
            return self.child_ids()
        if isinstance(message, GetCall):
            return self.child(message.session_id)
        return await super().on_receive(message)

    async def _start_call(self, message: StartCall) -> ActorRef:
        if self.child(message.session_id) is not None:
            raise DuplicateSession(f"session {message.session_id!r} already exists")
        if self.child_count() >= self.max_calls:
            raise AdmissionRefused(f"max_calls ({self.max_calls}) reached")
        spec = ChildSpec(
            id=message.session_id,
            start=message.start,
            restart=Restart.TEMPORARY,
            shutdown=message.shutdown,
        )
        try:
            return await self.start_child(spec)
        except Exception as exc:
            raise CallStartFailed(
                f"session {message.session_id!r} failed to start: {exc!r}"
            ) from exc

    async def shutdown_children(self) -> None:
        """Stop every call at once, each within its own shutdown timeout: a drain of N calls takes
        about the slowest call's time, not the sum."""
        self._cancel_timers()
        calls = []
        for id in self.child_ids():
            ref = self.child(id)
            if ref is not None:
                self._set_ref(id, None)
                calls.append((self._specs[id], ref))
        await asyncio.gather(*(self._stop_child(spec, ref) for spec, ref in calls))
