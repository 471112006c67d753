"""An actor's mailbox: a system lane served before a normal lane.

Control messages only: audio frames never travel through a mailbox (see ``actors.pipes``), so the
normal lane may be unbounded. Its high-water mark is recorded so that a backlog shows up in metrics
instead of hiding in memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass


class SystemMessage:
    """Marker base: any message that is an instance of it travels in the system lane.

    A plain class (no fields, no slots of its own) so that frozen, slotted dataclasses can subclass it.
    """

    __slots__ = ()


class ActorDeadError(Exception):
    """Raised by tell/ask to a dead actor, and given to the asks still pending when it dies."""


@dataclass(slots=True)
class Envelope:
    """A message and, for an ask, the future its answer goes to."""

    message: object
    reply: asyncio.Future[object] | None = None


@dataclass(frozen=True, slots=True)
class MailboxStats:
    system_depth: int
    normal_depth: int
    system_high_water: int
    normal_high_water: int
    received: int
    dropped_tells: int
    failed_asks: int


class Mailbox:
    """Two FIFO lanes and at most one waiting reader (the actor's own task).

    ``close`` ends intake and hands back what was still queued, so that the owner can fail the asks
    and count the tells; nothing is silently discarded.
    """

    __slots__ = (
        "_system",
        "_normal",
        "_waiter",
        "_closed",
        "_system_high_water",
        "_normal_high_water",
        "_received",
        "_dropped_tells",
        "_failed_asks",
    )

    def __init__(self) -> None:
        self._system: deque[Envelope] = deque()
        self._normal: deque[Envelope] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._system_high_water = 0
        self._normal_high_water = 0
        self._received = 0
        self._dropped_tells = 0
        self._failed_asks = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, envelope: Envelope) -> None:
        """Queue an envelope; never blocks. Raises ``ActorDeadError`` once the mailbox is closed."""
        if self._closed:
            raise ActorDeadError("mailbox is closed")
        if isinstance(envelope.message, SystemMessage):
            lane = self._system
            lane.append(envelope)
            if len(lane) > self._system_high_water:
                self._system_high_water = len(lane)
        else:
            lane = self._normal
            lane.append(envelope)
            if len(lane) > self._normal_high_water:
                self._normal_high_water = len(lane)
        self._received += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> Envelope | None:
        if self._system:
            return self._system.popleft()
        if self._normal:
            return self._normal.popleft()
        return None

    async def wait(self) -> None:
        """Wait until something is queued, the mailbox is closed, or ``wake`` is called."""
        if self._system or self._normal or self._closed:
            return
        if self._waiter is not None:
            raise RuntimeError("a mailbox has a single reader")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def wake(self) -> None:
        """Release the reader without a message, so that it re-checks its own state (a stop request)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self, reason: str = "actor is dead") -> None:
        """Stop intake, fail every queued ask with ``ActorDeadError`` and count the dropped tells."""
        self._closed = True
        for lane in (self._system, self._normal):
            while lane:
                envelope = lane.popleft()
                if envelope.reply is None:
                    self._dropped_tells += 1
                else:
                    self._failed_asks += 1
                    if not envelope.reply.done():
                        envelope.reply.set_exception(ActorDeadError(reason))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __len__(self) -> int:
        return len(self._system) + len(self._normal)

    def stats(self) -> MailboxStats:
        return MailboxStats(
            system_depth=len(self._system),
            normal_depth=len(self._normal),
            system_high_water=self._system_high_water,
            normal_high_water=self._normal_high_water,
            received=self._received,
            dropped_tells=self._dropped_tells,
            failed_asks=self._failed_asks,
        )
