"""The seam between a Call and its leg: the one interface every call type implements.

A leg is the call's connection to the far party: WebSocket audio frames, SIP signalling with RTP,
WebRTC. Transports implement it and hand the Call a ``LegFactory``; the Call never knows which kind
it has. Two planes meet here:

- the media plane: the call's Track calls ``pull()`` (payloads from the peer, drained on every tick
  of the media clock: a pipe for WebSocket audio, a jitter buffer for RTP) and ``send(payload)``
  (one encoded frame per tick). Both are synchronous and must never block.
- the control plane: the Call awaits ``dial``/``ring``/``answer``/``reject``/``send_dtmf``/
  ``transfer``/``hangup``/``close`` from its own task. Each returns promptly (a SIP leg sends its
  request and returns; the answer comes later as an event). A leg that cannot do what is asked
  raises ``LegRefused`` with a status: the command is refused and the call goes on.

What happens on the leg by itself (the remote party answers, rings, hangs up, presses a key, puts
the call on hold, asks for a transfer) comes up as one of the ``Leg*`` events below, through the
``report`` callable the factory was given. ``report`` only posts to the Call's mailbox; it may be
called from any callback on the Call's event loop.

A leg may also offer ``metrics(timestamp) -> list[api.MetricsEvent]``: its own figures (an RTP
leg's loss, jitter and RTCP view), which the Call asks for, synchronously, just before it emits
its hangup event. A leg without it has none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from protocol import api
from protocol.codecs import CodecInfo

__all__ = [
    "Leg",
    "LegAnswered",
    "LegContext",
    "LegDtmf",
    "LegEvent",
    "LegFactory",
    "LegFailed",
    "LegHangup",
    "LegHold",
    "LegMedia",
    "LegOffer",
    "LegRefused",
    "LegRejected",
    "LegRinging",
    "LegTransferBridged",
    "LegTransferFailed",
    "LegTransferProgress",
    "LegTransferRequest",
    "LegTransferred",
]


@dataclass(frozen=True, slots=True)
class LegMedia:
    """What the leg negotiated: the codec its payloads are in and the SDP it sent (or "")."""

    codec: CodecInfo
    sdp: str = ""


@dataclass(frozen=True, slots=True)
class LegOffer:
    """An incoming call as the leg received it (the `incoming` event and the webhook carry it)."""

    caller: str
    callee: str
    sdp: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


class LegRefused(Exception):
    """The leg cannot do what it was asked (no such codec, no transfer on this kind of leg)."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# --- events: what the leg reports up to its Call ---------------------------------------------

@dataclass(frozen=True, slots=True)
class LegRinging:
    """The far party is ringing (180), or sends early media (183 with SDP: ``media`` is set)."""

    media: LegMedia | None = None

    @property
    def early_media(self) -> bool:
        return self.media is not None


@dataclass(frozen=True, slots=True)
class LegAnswered:
    media: LegMedia


@dataclass(frozen=True, slots=True)
class LegRejected:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class LegHangup:
    """The far party ended the call (BYE, CANCEL, the peer connection closed)."""

    reason: str
    initiator: str = "callee"


@dataclass(frozen=True, slots=True)
class LegFailed:
    """The leg broke (a socket error, ICE failure, no ACK): the call ends with a media failure."""

    error: str


@dataclass(frozen=True, slots=True)
class LegDtmf:
    digit: str
    at_ms: int
    source: str          # "rfc4733" | "info" (in-band DTMF is found by the call itself)


@dataclass(frozen=True, slots=True)
class LegHold:
    held: bool           # True: put on hold (sendonly/inactive); False: resumed


@dataclass(frozen=True, slots=True)
class LegTransferRequest:
    """The far party asks the gateway to transfer the call (an incoming REFER)."""

    target: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LegTransferred:
    """A `refer` the gateway sent succeeded: the call now belongs to the transfer target."""


@dataclass(frozen=True, slots=True)
class LegTransferFailed:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class LegTransferProgress:
    """A `refer` is under way: a NOTIFY's sipfrag 1xx, or the transfer target's 1xx when the
    gateway calls it itself (the peer refused REFER)."""

    code: int
    reason: str
    source: str          # "notify" | "fallback" (REFER refused, the target is called) | "invite" (its 1xx)


@dataclass(frozen=True, slots=True)
class LegTransferBridged:
    """The peer refused REFER, the gateway called the target itself and it answered: the caller
    and the target now hear each other through this leg; the call goes on."""

    sdp: str


LegEvent = (LegRinging | LegAnswered | LegRejected | LegHangup | LegFailed | LegDtmf | LegHold
            | LegTransferRequest | LegTransferred | LegTransferFailed | LegTransferProgress
            | LegTransferBridged)


class Leg(Protocol):
    kind: str                      # "websocket" | "sip" | "webrtc" | ...: for listings and logs

    # media plane: called on the media clock's tick
    def pull(self) -> bytes | None:
        """The next payload from the peer, or None when there is none this tick."""

    def send(self, payload: bytes) -> None:
        """One encoded frame to the peer; must not block (a slow peer loses frames, counted)."""

    # control plane: awaited by the Call, each returns promptly
    async def dial(self, option: api.CallOption) -> LegEvent | None:
        """Place the call (`invite`). A leg that knows the outcome at once returns it (a
        WebSocket leg answers immediately); otherwise the outcome is reported later."""

    async def ring(self, command: api.Ringing) -> LegMedia | None:
        """Tell an incoming caller it rings (180), or open early media (183: returns the media)."""

    async def answer(self, option: api.CallOption) -> LegMedia:
        """Answer an incoming call (`accept`, 200 OK)."""

    async def reject(self, code: int, reason: str) -> None:
        """Turn an incoming call down with a final status."""

    async def send_dtmf(self, digits: str, duration_ms: int) -> None:
        ...

    async def transfer(self, command: api.Refer) -> None:
        """Ask the far party to call ``command.callee`` (REFER); the outcome is reported."""

    async def hangup(self, reason: str, headers: Mapping[str, str] | None = None) -> None:
        """End the call from this side, as the leg's state requires (BYE, CANCEL, nothing)."""

    async def close(self) -> None:
        """Release sockets and buffers; the last call on a leg."""


@dataclass(frozen=True, slots=True)
class LegContext:
    session_id: str
    report: Callable[[Any], None]      # posts a Leg* event to the Call


LegFactory = Callable[[LegContext], Leg]
