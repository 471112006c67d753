"""Per-connection plumbing of an API WebSocket: the ordered outbox and the event dump.

The outbox keeps control events and audio apart but in order: events are never dropped, audio is a
bounded ring that drops its oldest frame when the client reads too slowly, so a stalled client
costs a fixed amount of memory and never stalls the call. A sequence number on every item keeps
the order they were produced in (a trackEnd never overtakes the last frame of its playback).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from pathlib import Path
from typing import IO

import structlog
from aiohttp import web

from protocol.redact import redact_json_text

from .recording_paths import safe_session_id

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


class EventDump:
    """`<dump_root>/<id>.events.jsonl`: every command and event of a session, one JSON line each,
    `{"type": "command"|"event", "timestamp": ms, "content": "<the JSON text>"}` as the original
    active-call writes them. Binary audio is not dumped."""

    def __init__(self, root: str, session_id: str) -> None:
        # A session id comes from a query string: never let it name a path outside dump_root.
        self.path = Path(root) / f"{safe_session_id(session_id)}.events.jsonl"
        self._fh: IO[str] | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8", buffering=1)  # line-buffered: a crash keeps lines
        except OSError as exc:
            log.warning("event dump disabled", path=str(self.path), error=str(exc))

    def command(self, text: str) -> None:
        self._write("command", text)

    def event(self, text: str) -> None:
        self._write("event", text)

    def _write(self, kind: str, text: str) -> None:
        if self._fh is not None:
            # Commands carry provider keys and SIP passwords; a dump is read by more people than the API.
            text = redact_json_text(text)
            self._fh.write(json.dumps({"type": kind, "timestamp": int(time.time() * 1000), "content": text},
                                      ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def session_id_ok(session_id: str) -> bool:
    return 0 < len(session_id) <= 128 and os.sep not in session_id and "\x00" not in session_id
