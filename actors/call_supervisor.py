"""The supervisor of all calls: one temporary child per session id, behind an admission limit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from actors.messages import Owner
from actors.ref import ActorRef, ChildExited, ReplyError
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
    "Admit",
    "GetAdmissions",
    "GetCall",
    "ListCalls",
    "NotYourCall",
    "StartCall",
]


class AdmissionRefused(ReplyError):
    """No slot left: the message names the limit, e.g. "max_calls (400) reached"."""


class DuplicateSession(DuplicateChild):
    """A call with this session id is already running."""


class CallStartFailed(ChildStartFailed):
    """The call's start function raised; the supervisor itself goes on. The cause is chained."""


class NotYourCall(ReplyError):
    """The call exists but belongs to another API token, and the asker is not an admin."""


@dataclass(frozen=True, slots=True)
class StartCall:
    """Ask: start a call under this session id; answers its ``ActorRef``.

    ``start`` gets the supervisor's ref to pass as ``parent=``. ``shutdown`` is how long a drain
    waits for this call's stop (hangup, recording finalised) before cancelling it.
    """

    session_id: str
    start: Callable[[ActorRef], ActorRef]
    shutdown: float = 5.0
    owner: Owner | None = None      # None: the gateway has no API tokens
    # False: the session id is held but no call slot is taken until the call asks (`Admit`) when it
    # is placed; until then it counts against max_pending instead (idle connections).
    admitted: bool = True


@dataclass(frozen=True, slots=True)
class ListCalls:
    """Ask: the session ids of the running calls, in start order (``list[str]``); with an ``owner``
    that is not an admin, only that owner's calls."""

    owner: Owner | None = None


@dataclass(frozen=True, slots=True)
class Admit:
    """Ask, from a call that was started unadmitted (a connection that had not placed a call yet):
    take a slot under max_calls now. Answers True, or raises ``AdmissionRefused``."""

    session_id: str


@dataclass(frozen=True, slots=True)
class GetAdmissions:
    """Ask: ``{"running": n, "max_calls": n, "refused": n}`` (refused: since this supervisor started)."""


@dataclass(frozen=True, slots=True)
class GetCall:
    """Ask: the ``ActorRef`` of a running call, or ``None``. Raises ``NotYourCall`` when the asker
    (``owner``, or the owner of the call ``for_call``) may not reach it. With ``claim``, a call
    nobody owns yet (made by the gateway, e.g. an incoming call) becomes ``owner``'s."""

    session_id: str
    owner: Owner | None = None
    for_call: str | None = None
    claim: bool = False


class CallSupervisor(Supervisor):
    """Calls are temporary children: a crashed call is not restarted (it has hung up and said why).

    A call that ends, for any reason, is removed as soon as its ``ChildExited`` arrives (a system
    message, so ahead of queued ``StartCall``\\s), which frees its admission slot. To end one call,
    stop its ref (from ``GetCall``) directly: that does not hold up this supervisor's mailbox.
    """

    def __init__(self, max_calls: int, on_exit: Callable[[str], None] | None = None,
                 max_pending: int | None = None) -> None:
        if max_calls < 0:
            raise ValueError("max_calls cannot be negative")
        super().__init__((), strategy=Strategy.ONE_FOR_ONE)
        self.max_calls = max_calls
        self.max_pending = max_calls if max_pending is None else max_pending
        self._admitted: set[str] = set()
        self._owners: dict[str, Owner | None] = {}
        self._on_exit = on_exit       # told each ended session id (its recording path is freed)
        self.refused = 0              # admissions refused at max_calls

    async def on_receive(self, message: object) -> object:
        if isinstance(message, StartCall):
            return await self._start_call(message)
        if isinstance(message, ListCalls):
            owner = message.owner
            if owner is None or owner.admin:
                return self.child_ids()
            return [id for id in self.child_ids() if owner.may_reach(self._owners.get(id))]
        if isinstance(message, GetCall):
            return self._get_call(message)
        if isinstance(message, Admit):
            return self._admit(message.session_id)
        if isinstance(message, GetAdmissions):
            return {"running": len(self._admitted), "pending": self.child_count() - len(self._admitted),
                    "max_calls": self.max_calls, "refused": self.refused}
        return await super().on_receive(message)

    def _get_call(self, message: GetCall) -> ActorRef | None:
        ref = self.child(message.session_id)
        asker = message.owner if message.for_call is None else self._owners.get(message.for_call)
        if ref is not None and message.claim and asker is not None and self._owners.get(message.session_id) is None:
            self._owners[message.session_id] = asker
        if ref is not None and asker is not None and not asker.may_reach(self._owners.get(message.session_id)):
            raise NotYourCall(f"call {message.session_id!r} belongs to another API token")
        return ref

    async def on_child_exited(self, spec: ChildSpec, exit: ChildExited) -> None:
        self._ended(spec.id)

    def _admit(self, session_id: str) -> bool:
        if session_id in self._admitted or self.child(session_id) is None:
            return session_id in self._admitted
        if len(self._admitted) >= self.max_calls:
            self.refused += 1
            raise AdmissionRefused(f"max_calls ({self.max_calls}) reached")
        self._admitted.add(session_id)
        return True

    def _ended(self, session_id: str) -> None:
        self._admitted.discard(session_id)
        self._owners.pop(session_id, None)
        if self._on_exit is not None:
            self._on_exit(session_id)

    async def _start_call(self, message: StartCall) -> ActorRef:
        if self.child(message.session_id) is not None:
            raise DuplicateSession(f"session {message.session_id!r} already exists")
        if message.admitted and len(self._admitted) >= self.max_calls:
            self.refused += 1
            raise AdmissionRefused(f"max_calls ({self.max_calls}) reached")
        if not message.admitted and self.child_count() - len(self._admitted) >= self.max_pending:
            self.refused += 1
            raise AdmissionRefused(f"max_pending_calls ({self.max_pending}) reached: too many connections "
                                   "that have not placed a call yet")
        spec = ChildSpec(
            id=message.session_id,
            start=message.start,
            restart=Restart.TEMPORARY,
            shutdown=message.shutdown,
        )
        try:
            ref = await self.start_child(spec)
        except Exception as exc:
            raise CallStartFailed(
                f"session {message.session_id!r} failed to start: {exc!r}"
            ) from exc
        self._owners[message.session_id] = message.owner
        if message.admitted:
            self._admitted.add(message.session_id)
        return ref

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
        for spec, _ref in calls:
            self._ended(spec.id)
