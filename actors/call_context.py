"""What a Call offers the parts that run in its task (`Playback`, `Listening`, `Bridges`).

The parts depend on this interface, not on the Call class: they never import `call.py`, and what
they may touch of the call is listed here, in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from protocol import api

from .clock import MediaClock
from .ref import ActorRef
from .services import CallServices


class ChildUnavailable(Exception):
    """A child the call asked is gone or did not answer in time. Raised by ``ask_child``; the Call
    turns it into a refusal of the command (a service child) or a media-failure hangup (the track),
    never into a crash of the call."""

    def __init__(self, child: str, cause: str) -> None:
        super().__init__(f"{child}: {cause}")
        self.child = child
        self.cause = cause


class CallContext(Protocol):
    session_id: str
    services: CallServices
    clock: MediaClock
    ssrc: int                          # the leg's synchronisation source, reported in trackEnd
    answer_at: float | None
    log: Any

    @property
    def settings(self) -> Any: ...

    @property
    def option(self) -> api.CallOption | None: ...

    @property
    def ended(self) -> bool: ...

    @property
    def answered(self) -> bool: ...

    @property
    def actor_ref(self) -> ActorRef: ...

    # events to the application
    def emit(self, event: Any) -> None: ...

    def emit_error(self, sender: str, error: str, code: int | None, *, track_id: str | None = None) -> None: ...

    def refuse(self, sender: str, error: str, code: int | None) -> None: ...

    # children
    def child(self, id: str) -> ActorRef | None: ...

    def child_ids(self) -> list[str]: ...

    def need_track(self, name: str) -> ActorRef | None: ...

    async def ask_child(self, id: str, message: object, timeout: float = 1.0) -> Any: ...

    async def start_service(self, id: str, start: Callable[[ActorRef], ActorRef]) -> ActorRef: ...

    # time and the end
    def arm(self, key: str, delay: float, message: object) -> None: ...

    def disarm(self, key: str) -> None: ...

    def caller_input(self) -> None: ...

    def hangup(self, reason: str, initiator: str) -> None: ...
