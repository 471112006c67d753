"""What a Call tells itself (timers, media-plane callbacks, its own tasks) and what two Calls tell
each other while bridging. Private to the Call and its parts.

Media-plane callbacks and timers run outside the Call's task, so they never touch its state: they
post one of these to its mailbox and the Call acts on it in turn.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .playout import PlaySpec
from .ref import ActorRef


def now_ms() -> int:
    """The wall-clock time in ms that stamps every event the Call emits."""
    return int(time.time() * 1000)


# --- bridging: the offering call, then the wiring call's answer ---------------------------------

@dataclass(frozen=True, slots=True)
class BridgeOffer:
    call_id: str
    call: ActorRef
    track: ActorRef


@dataclass(frozen=True, slots=True)
class BridgeMade:
    call_id: str
    call: ActorRef
    track: ActorRef
    in_peer: PlaySpec
    in_mine: PlaySpec


@dataclass(frozen=True, slots=True)
class BridgeFailed:
    call_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class BridgeGone:
    call_id: str


# --- listening ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str
    at_ms: int
    source: str          # "inband" | "rfc4733" | "info"


@dataclass(frozen=True, slots=True)
class Vad:
    event: Any


@dataclass(frozen=True, slots=True)
class VadSkipped:
    """The VAD dropped audio it could not keep up with (its backlog bound)."""

    windows: int
    ms: float


@dataclass(frozen=True, slots=True)
class WaitInputExpired:
    since_ms: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class CheckInactivity:
    pass


@dataclass(frozen=True, slots=True)
class AcceptTimeout:
    """An incoming call's accept_timeout expired."""


@dataclass(frozen=True, slots=True)
class HandshakeTimeout:
    """A connection's handshake_timeout expired (it may have placed its call meanwhile)."""


# --- services -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ServiceError:
    sender: str
    error: str
    code: int | None


@dataclass(frozen=True, slots=True)
class PlayFailed:
    url: str
    error: str
    code: int
