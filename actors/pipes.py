"""Bounded audio pipes: the media plane between a call's children, outside any mailbox.

A pipe is a ring: when the consumer falls behind, the oldest frame is dropped (and counted), because
for live audio a late frame is worth less than the next one, and an unbounded queue of frames is how
media servers leak memory. One producer and one consumer per pipe, on one loop; no locks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["AudioPipe", "PipeClosed", "PipeStats"]

T = TypeVar("T")


class PipeClosed(Exception):
    """The pipe is closed and has nothing left to pop."""


@dataclass(frozen=True, slots=True)
class PipeStats:
    """``pushed == popped + dropped + depth`` (drained items count as popped)."""

    depth: int
    capacity: int
    pushed: int
    popped: int
    dropped: int
    high_water: int


class AudioPipe(Generic[T]):
    __slots__ = (
        "name",
        "_items",
        "_capacity",
        "_waiter",
        "_closed",
        "_pushed",
        "_popped",
        "_dropped",
        "_high_water",
    )

    def __init__(self, capacity: int, name: str = "") -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.name = name
        self._capacity = capacity
        self._items: deque[T] = deque(maxlen=capacity)
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._pushed = 0
        self._popped = 0
        self._dropped = 0
        self._high_water = 0

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<AudioPipe {self.name!r} {len(self._items)}/{self._capacity}{state}>"

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, item: T) -> None:
        """Append without ever blocking. Full: the oldest item is dropped. Closed: ``item`` is dropped."""
        self._pushed += 1
        if self._closed:
            self._dropped += 1
            return
        items = self._items
        if len(items) == self._capacity:
            self._dropped += 1  # deque(maxlen) evicts the oldest on append
        items.append(item)
        if len(items) > self._high_water:
            self._high_water = len(items)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pop_nowait(self) -> T | None:
        if self._items:
            self._popped += 1
            return self._items.popleft()
        return None

    async def pop(self) -> T:
        """The oldest item, waiting for one if need be. Raises ``PipeClosed`` once closed and empty."""
        while True:
            if self._items:
                self._popped += 1
                return self._items.popleft()
            if self._closed:
                raise PipeClosed(f"pipe {self.name!r} is closed")
            if self._waiter is not None:
                raise RuntimeError(f"pipe {self.name!r} already has a consumer waiting")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def drain(self) -> list[T]:
        """Take everything queued at once (a flush on interruption); counted as popped."""
        items = list(self._items)
        self._items.clear()
        self._popped += len(items)
        return items

    def close(self) -> None:
        """No more items: a waiting ``pop`` wakes; what is queued can still be popped or drained."""
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def stats(self) -> PipeStats:
        return PipeStats(
            depth=len(self._items),
            capacity=self._capacity,
            pushed=self._pushed,
            popped=self._popped,
            dropped=self._dropped,
            high_water=self._high_water,
        )

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            try:
                yield await self.pop()
            except PipeClosed:
                return
