"""What a transport offers the HTTP server for one API connection of its call type.

The HTTP server picks a `LegProvider` by path (`/call`, `/call/sip`, `/call/webrtc`) and asks it,
per connection, for a `LegMaker`: the factory of the call's leg, where the connection's binary
frames go, and the hooks for the commands addressed to the leg rather than to the call
(`protocol.api.LEG_COMMANDS`, such as WebRTC's `addIceCandidate`). The Call never sees those; it
has no branch on the kind of leg.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from actors.leg import LegFactory

from .ws_session import Outbox

__all__ = ["LegCommandHook", "LegMaker", "LegProvider"]

LegCommandHook = Callable[[Any], None]
"""Takes one leg command; returns at once (the connection's reader must not wait) and raises
`actors.leg.LegRefused` when the command is refused, which the connection reports as an `error`."""


@dataclass(frozen=True, slots=True)
class LegMaker:
    """One connection's leg: its factory; where the connection's binary frames go (None: they are
    not this leg's media, and are counted and dropped); the hooks of its leg commands by type (a
    leg command without a hook is refused with an `error` event)."""

    factory: LegFactory
    binary: Callable[[bytes], None] | None = None
    commands: Mapping[type, LegCommandHook] = field(default_factory=dict)


LegProvider = Callable[[str, Outbox], LegMaker]
"""(session id, the connection's outbox) -> the LegMaker for a new call of one call type."""
