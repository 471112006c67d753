"""RFC 4028 session timers, the parts a user agent decides: reading `Session-Expires` and
`Min-SE`, choosing the interval and refresher of a session, and when to refresh or give up.

Pure: headers in, decisions out; the caller keeps the clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ProtocolError
from .message import Message

__all__ = [
    "SessionTimer",
    "TooSmall",
    "expiry_margin",
    "negotiate_uas",
    "parse_session_expires",
    "from_response",
    "supports_timer",
]

_DELTA = re.compile(r"^\s*(\d{1,10})\s*(?:;(.*))?$")
# RFC 4028 §4: the smallest Session-Expires a UA may ask for.
RFC_MIN_SE = 90


@dataclass(frozen=True, slots=True)
class SessionTimer:
    """A negotiated session: ``interval`` seconds, refreshed by ``refresher`` ("uac" or "uas")."""

    interval: int
    refresher: str

    def we_refresh(self, our_role: str) -> bool:
        return self.refresher == our_role

    def header(self) -> str:
        return f"{self.interval};refresher={self.refresher}"


@dataclass(frozen=True, slots=True)
class TooSmall:
    """The interval asked for is below our minimum: answer 422 with ``Min-SE: min_se``."""

    min_se: int


def _tokens(message: Message, name: str) -> set[str]:
    return {token.strip().lower() for value in message.get_all(name) for token in value.split(",") if token.strip()}


def supports_timer(message: Message) -> bool:
    """Whether the message says it supports (or requires) the timer extension."""
    return "timer" in _tokens(message, "Supported") or "timer" in _tokens(message, "Require")


def parse_session_expires(value: str) -> tuple[int, str | None]:
    """`Session-Expires: 1800;refresher=uac` as (1800, "uac"); refresher None when absent."""
    match = _DELTA.match(value)
    if match is None:
        raise ProtocolError(f"Session-Expires: expected delta-seconds, got {value!r}", status=400)
    refresher = None
    for param in (match.group(2) or "").split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "refresher":
            refresher = val.strip().lower()
            if refresher not in ("uac", "uas"):
                raise ProtocolError(f"Session-Expires: refresher must be uac or uas, got {val.strip()!r}",
                                    status=400)
    return int(match.group(1)), refresher


def _min_se(message: Message) -> int | None:
    value = message.get("Min-SE")
    if value is None:
        return None
    match = _DELTA.match(value)
    if match is None:
        raise ProtocolError(f"Min-SE: expected delta-seconds, got {value!r}", status=400)
    return int(match.group(1))


def negotiate_uas(request: Message, *, our_max: int, our_min: int) -> SessionTimer | TooSmall | None:
    """What we (the UAS) answer to an INVITE or refresh (RFC 4028 §9).

    No Session-Expires: no session timer (we do not impose one). Below ``our_min``: 422. Else the
    interval is the one asked for, lowered to ``our_max`` but never below the request's Min-SE;
    the refresher is the one asked for, else the UAC if it supports timers, else us.
    """
    value = request.get("Session-Expires")       # or its compact form "x"
    if value is None:
        return None
    asked, refresher = parse_session_expires(value)
    if asked < our_min:
        return TooSmall(our_min)
    floor = _min_se(request) or 0
    interval = max(min(asked, our_max), floor, our_min)
    if refresher is None:
        refresher = "uac" if supports_timer(request) else "uas"
    elif refresher == "uac" and not supports_timer(request):
        refresher = "uas"           # a UAC without the extension cannot be the refresher
    return SessionTimer(interval, refresher)


def from_response(response: Message) -> SessionTimer | None:
    """The session a 2xx (to our INVITE or refresh) settles on, as the UAC; None without one."""
    value = response.get("Session-Expires")
    if value is None:
        return None
    interval, refresher = parse_session_expires(value)
    return SessionTimer(interval, refresher or "uac")


def expiry_margin(interval: float) -> float:
    """How long before the session's end the side that does not refresh sends BYE (§10: the
    lesser of 32 seconds and a third of the interval)."""
    return min(32.0, interval / 3)
