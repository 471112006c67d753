"""Per-connection plumbing of an API WebSocket: the ordered outbox (the dump: event_dump.py).

The outbox keeps control events and audio apart but in order: events are never dropped, audio is a
bounded ring that drops its oldest frame when the client reads too slowly, so a stalled client
costs a fixed amount of memory and never stalls the call. A sequence number on every item keeps
the order they were produced in (a trackEnd never overtakes the last frame of its playback).
"""

from __future__ import annotations

import asyncio
import os
from collections import deque

import structlog
from aiohttp import web


log = structlog.get_logger("ws")


class Outbox:
    def __init__(self, ws: web.WebSocketResponse, audio_capacity: int = 50) -> None:
        self.ws = ws
        self._events: deque[tuple[int, str]] = deque()
        self._audio: deque[tuple[int, bytes]] = deque(maxlen=audio_capacity)
        self._seq = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._close_code = 1000
        self.audio_dropped = 0
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ws-outbox")

    def event(self, text: str) -> None:
        if not self._closing:
            self._seq += 1
            self._events.append((self._seq, text))
            self._wake.set()

    def audio(self, payload: bytes) -> None:
        if self._closing:
            return
        if len(self._audio) == self._audio.maxlen:
            self.audio_dropped += 1
        self._seq += 1
        self._audio.append((self._seq, payload))
        self._wake.set()

    def close(self, code: int = 1000) -> None:
        """Send what is queued, then close the WebSocket."""
        if not self._closing:
            self._closing = True
            self._close_code = code
            self._wake.set()

    async def wait_closed(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._task.cancel()

    async def _run(self) -> None:
        ws = self.ws
        try:
            while True:
                while self._events or self._audio:
                    if ws.closed:
                        return
                    if self._events and (not self._audio or self._events[0][0] < self._audio[0][0]):
                        await ws.send_str(self._events.popleft()[1])
                    else:
                        await ws.send_bytes(self._audio.popleft()[1])
                if self._closing:
                    break
                self._wake.clear()
                await self._wake.wait()
        except (ConnectionError, RuntimeError) as exc:
            # The peer went away mid-send; the reader side sees the close and ends the call.
            log.debug("outbox send failed", error=repr(exc))
            return
        if self.audio_dropped:
            log.info("client read audio too slowly; oldest frames dropped", frames=self.audio_dropped)
        if not ws.closed:
            await ws.close(code=self._close_code)


def session_id_ok(session_id: str) -> bool:
    return 0 < len(session_id) <= 128 and os.sep not in session_id and "\x00" not in session_id
