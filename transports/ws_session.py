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
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import WSCloseCode, web


log = structlog.get_logger("ws")


def close_message(reason: str) -> bytes:
    """A close frame's reason: its payload holds at most 125 bytes, two of them the code."""
    return reason.encode()[:120]


class Outbox:
    """``event_budget`` bounds the bytes of events queued for a client that does not read them.
    Events are never dropped one by one: past the budget the client is too slow to be served, its
    connection is closed (1008, "client too slow: ...") and ``on_too_slow`` is called once, so that
    the call hangs up (reason ``client_too_slow``). A send that the client's full TCP window holds
    up is not waited for: the transport is aborted after ``CLOSE_WAIT`` seconds."""

    CLOSE_WAIT = 1.0

    def __init__(self, ws: web.WebSocketResponse, audio_capacity: int = 50, *, event_budget: int = 16 << 20,
                 on_too_slow: Callable[[str], None] | None = None) -> None:
        self.ws = ws
        self._events: deque[tuple[int, str]] = deque()
        self._audio: deque[tuple[int, bytes]] = deque(maxlen=audio_capacity)
        self._seq = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._close_code = 1000
        self._close_reason = ""
        self.audio_dropped = 0
        self.event_budget = event_budget
        self.queued_bytes = 0
        self.too_slow = False
        self.on_too_slow = on_too_slow
        self._sent_seq = 0
        self._progress = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ws-outbox")

    def event(self, text: str) -> None:
        if self._closing:
            return
        self._seq += 1
        self._events.append((self._seq, text))
        self.queued_bytes += len(text)
        if self.queued_bytes > self.event_budget:
            self._overflow()
            return
        self._wake.set()

    def _overflow(self) -> None:
        reason = f"client too slow: more than {self.event_budget} bytes of events unread"
        log.warning("client too slow; closing", queued_bytes=self.queued_bytes, budget=self.event_budget)
        self.too_slow = True
        self._closing = True
        self._events.clear()
        self._audio.clear()
        self.queued_bytes = 0
        self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._close_now(1008, reason), name="ws-outbox-close")
        if self.on_too_slow is not None:
            self.on_too_slow(reason)

    async def _close_now(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=close_message(reason)), self.CLOSE_WAIT)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            # The client's window is full and a send is stuck behind it: drop the connection.
            self._abort()

    def audio(self, payload: bytes) -> None:
        if self._closing:
            return
        if len(self._audio) == self._audio.maxlen:
            self.audio_dropped += 1
        self._seq += 1
        self._audio.append((self._seq, payload))
        self._wake.set()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send what is queued, then close the WebSocket."""
        if not self._closing:
            self._closing = True
            self._close_code = code
            self._close_reason = reason
            self._wake.set()

    async def flush(self, timeout: float) -> None:
        """Until everything queued so far is sent, the outbox stops, or `timeout` passes."""
        target = self._seq

        async def until() -> None:
            while self._sent_seq < target and not self._task.done():
                self._progress.clear()
                await self._progress.wait()

        try:
            await asyncio.wait_for(until(), timeout)
        except asyncio.TimeoutError:
            pass

    async def wait_closed(self, timeout: float) -> None:
        """Until what was queued is sent and the socket closed; a client that does not take it
        within `timeout` (its window full) has its connection dropped, so that nobody (a shutdown
        least of all) waits on a peer that does not read."""
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._task.cancel()
            self._abort()

    def _abort(self) -> None:
        transport = self.ws._req.transport if self.ws._req is not None else None  # noqa: SLF001
        if transport is not None and not transport.is_closing():
            transport.abort()

    async def _run(self) -> None:
        ws = self.ws
        try:
            while True:
                while self._events or self._audio:
                    if ws.closed:
                        return
                    if self._events and (not self._audio or self._events[0][0] < self._audio[0][0]):
                        seq, text = self._events.popleft()
                        await ws.send_str(text)
                        self.queued_bytes -= len(text)
                    else:
                        seq, payload = self._audio.popleft()
                        await ws.send_bytes(payload)
                    self._sent_seq = seq
                    self._progress.set()
                if self._closing:
                    break
                self._wake.clear()
                await self._wake.wait()
        except (ConnectionError, RuntimeError) as exc:
            # The peer went away mid-send; the reader side sees the close and ends the call.
            log.debug("outbox send failed", error=repr(exc))
            return
        finally:
            self._progress.set()   # a flush waiting on a stopped outbox returns
        if self.audio_dropped:
            log.info("client read audio too slowly; oldest frames dropped", frames=self.audio_dropped)
        if not ws.closed:
            await ws.close(code=self._close_code, message=close_message(self._close_reason))


class ApiWebSocket(web.WebSocketResponse):
    """The server side of an API WebSocket. aiohttp refuses a frame over its size limit (1009) or
    a malformed frame (1002) inside `receive()` and closes the socket before the handler sees
    anything; `before_refusal` runs first, so the client reads an `error` saying which limit (and
    which config key) it crossed, and the close carries the same reason."""

    REFUSALS = frozenset({WSCloseCode.MESSAGE_TOO_BIG, WSCloseCode.PROTOCOL_ERROR, WSCloseCode.INVALID_TEXT})

    def __init__(self, *, before_refusal: Callable[[int], Awaitable[str]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.before_refusal = before_refusal

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        hook, self.before_refusal = self.before_refusal, None
        if hook is not None and code in self.REFUSALS and not self.closed:
            reason = await hook(code)
            if not message:
                message = close_message(reason)
        return await super().close(code=code, message=message, drain=drain)


def session_id_ok(session_id: str) -> bool:
    return 0 < len(session_id) <= 128 and os.sep not in session_id and "\x00" not in session_id
