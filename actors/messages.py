"""Control-plane messages between transports, calls and their children.

Anything that must not wait behind ordinary work (hangup, kill, interrupt, the client going away)
is a SystemMessage and rides the system lane of the mailbox.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .mailbox import SystemMessage
from .ref import ReplyError


# --- transport -> Call -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ClientCommand:
    """A parsed API command from the application's WebSocket."""

    command: Any  # one of protocol.api's command dataclasses


@dataclass(frozen=True, slots=True)
class UrgentCommand(SystemMessage):
    """A command that jumps the queue (interrupt, hangup): it must act within a frame of arrival."""

    command: Any


@dataclass(frozen=True, slots=True)
class BadCommand:
    """A command that did not parse; the call answers with an `error` event and goes on."""

    error: str
    code: int = 400


@dataclass(frozen=True, slots=True)
class AppConnection:
    """The application's side of a call: where its events go, and how to close it (after the
    events queued so far, with a WebSocket close code). Both are non-blocking and called from the
    Call's task."""

    emit: Callable[[Any], None]
    close: Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Attach:
    """Ask a call to send its events to this connection (answers None, or AttachRefused)."""

    connection: AppConnection


class AttachRefused(ReplyError):
    """The call has a connection already, or has ended."""


@dataclass(frozen=True, slots=True)
class Detach(SystemMessage):
    """The application's connection closed; the call decides what that means for the leg."""


@dataclass(frozen=True, slots=True)
class Kill(SystemMessage):
    """End the call from outside (REST kill, gateway drain)."""

    reason: str = "killed"
    initiator: str = "system"


@dataclass(frozen=True, slots=True)
class Drained:
    """Answered (None) once the call has handled everything queued before it: a connection's
    reader waits on it so that it never reads commands far ahead of its call."""


@dataclass(frozen=True, slots=True)
class Describe:
    """Ask a call for its CallInfo (REST listing)."""


@dataclass(frozen=True, slots=True)
class Owner:
    """Who started a call: the API token's id (never the token itself). An admin may reach every
    call; any other owner only its own."""

    id: str
    admin: bool = False

    def may_reach(self, owner: Owner | None) -> bool:
        return self.admin or (owner is not None and owner.id == self.id)


@dataclass(frozen=True, slots=True)
class CallInfo:
    id: str
    call_type: str
    created_at: str          # ISO 8601
    option: dict[str, Any] | None
    state: str


# --- Call <-> Track --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SetMute(SystemMessage):
    """Replace a direction's audio with silence. inbound: what the leg hears from its peer;
    outbound: what the gateway sends to the peer."""

    inbound: bool | None = None
    outbound: bool | None = None


@dataclass(frozen=True, slots=True)
class TrackStats:
    track_id: str
    frames_in: int
    frames_out: int
    bytes_in: int
    bad_frames: int
    jitter_ms_p50: float
    jitter_ms_p99: float
    last_input_at: float | None


@dataclass(frozen=True, slots=True)
class GetTrackStats:
    pass


@dataclass(frozen=True, slots=True)
class MediaError:
    """A leg reported bad media it could not decode (counted; the first few become error events)."""

    track_id: str
    error: str
