"""The reading side of a recognition stream: its results wait in an asyncio queue that the stream's
own task fills, a `ProviderError` in it fails the reader, and `END` after the last one ends it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from actors.services import ProviderError

END = object()


async def read_results(queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    while True:
        item = await queue.get()
        if item is END:
            queue.put_nowait(END)      # any later reader ends too
            return
        if isinstance(item, ProviderError):
            raise item
        yield item
