"""The front's side of a WebRTC call that runs in a worker process (docs/architecture.md).

The application's WebSocket stays on the front; the front opens the same WebSocket (`?id=` and the
other query parameters, the owner the token stands for) on the worker the pool chose, and relays
text frames both ways: commands and events only, since the media goes between the browser and the
worker's own ICE candidates. Events towards the client go through the connection's Outbox, so its
limits are the same as for a call in this process (a client that does not read them is cut with
the same close reason, and the call hangs up `client_too_slow`); commands towards the worker are
sent one at a time, each waiting for the socket to take it.

The call's session id is held in the front's CallSupervisor by a `RelayedCall` for as long as the
connection lasts: ids stay unique across processes, max_calls counts every call, and a REST kill or
the drain reaches the call through it. A worker that dies takes its calls with it: their clients
get an `error` event and a `hangup` (reason `media_failure`) from the front.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

import aiohttp
import structlog
from aiohttp import WSMsgType, web

from actors.base import Actor
from actors.call import iso8601, now_ms
from actors.messages import CallInfo, Describe, Detach, Kill, Owner
from protocol import api

from .auth import owner_headers
from .worker_pool import WORKER_ORIGIN, WorkerAddress, worker_session

log = structlog.get_logger("relay")

REASON_HEADER = "X-Active-Call-Reason"   # the reason a kill from the front gives (drain: shutdown)
WORKER_TIMEOUT = 2.0                     # seconds for a REST request to a worker
# A close without a close frame: the worker's socket went away under the call.
LOST = (None, 1006)


class RelayedCall(Actor):
    """A call of a worker process as the front's CallSupervisor knows it."""

    def __init__(self, session_id: str, worker: WorkerAddress, created_at: str,
                 kill: Callable[[str], Awaitable[None]]) -> None:
        self.session_id = session_id
        self.worker = worker
        self.created_at = created_at
        self.kill = kill

    async def on_receive(self, message: object) -> object:
        if isinstance(message, Describe):
            return CallInfo(self.session_id, "webrtc", self.created_at, None, f"on worker {self.worker.index}")
        if isinstance(message, Kill):
            await self.kill(message.reason)
            return None
        if isinstance(message, Detach):
            self.stop()
            return None
        return await super().on_receive(message)


async def kill_on_worker(worker: WorkerAddress, session_id: str, reason: str) -> None:
    """Ask the worker to end one of its calls with `reason` (its front has checked who may)."""
    try:
        async with worker_session(worker.path) as session:
            async with session.post(f"{WORKER_ORIGIN}/call/kill/{session_id}", headers={REASON_HEADER: reason},
                                    timeout=aiohttp.ClientTimeout(total=WORKER_TIMEOUT)) as resp:
                if resp.status not in (200, 404):
                    log.warning("worker refused a kill", worker=worker.index, session_id=session_id,
                                status=resp.status)
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        # The worker is gone or stuck: its calls end with it (the relay closes them).
        log.warning("kill not delivered to worker", worker=worker.index, session_id=session_id, error=repr(exc))


async def worker_get(worker: WorkerAddress, path: str, owner: Owner | None) -> object:
    """A worker's JSON answer to GET `path`, as the front's `owner` may see it."""
    async with worker_session(worker.path) as session:
        async with session.get(f"{WORKER_ORIGIN}{path}", headers=owner_headers(owner),
                               timeout=aiohttp.ClientTimeout(total=WORKER_TIMEOUT)) as resp:
            resp.raise_for_status()
            return await resp.json()


def worker_url(path: str, query: dict[str, str]) -> str:
    forwarded = {k: v for k, v in query.items() if k != "token"}   # the front checked it; never passed on
    return f"{WORKER_ORIGIN}{path}" + (f"?{urlencode(forwarded)}" if forwarded else "")


class Relay:
    """One relayed connection: the client's WebSocket (through its Outbox) and the worker's."""

    def __init__(self, session_id: str, worker: WorkerAddress, outbox: object, emit: Callable[[object], None],
                 created_at: str, on_binary: Callable[[], None], shutdown_timeout: float = 5.0) -> None:
        self.session_id = session_id
        self.shutdown_timeout = shutdown_timeout
        self.client_left = False
        self.lost_worker = False     # the worker died under the call
        self.worker = worker
        self.outbox = outbox
        self.emit = emit
        self.created_at = created_at
        self.on_binary = on_binary
        self.saw_hangup = False
        self.upstream: aiohttp.ClientWebSocketResponse | None = None

    async def run(self, ws: web.WebSocketResponse, session: aiohttp.ClientSession, url: str,
                  headers: dict[str, str], max_msg_size: int) -> None:
        upstream = await session.ws_connect(url, headers=headers, max_msg_size=max_msg_size, autoping=True)
        self.upstream = upstream
        down = asyncio.create_task(self._to_worker(ws, upstream), name=f"relay-down {self.session_id}")
        up = asyncio.create_task(self._to_client(upstream), name=f"relay-up {self.session_id}")
        try:
            await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
            if not up.done():
                self.client_left = True
                if self.outbox.too_slow:  # type: ignore[attr-defined]
                    # Cut for not reading: the call is being killed (client_too_slow) on the worker,
                    # which closes its socket once the call has hung up.
                    await asyncio.wait({up}, timeout=self.shutdown_timeout)
                # The client left: closing the worker's socket is its Detach there (the call hangs up).
                await upstream.close()
                await asyncio.wait({up}, timeout=WORKER_TIMEOUT)
        finally:
            for task in (down, up):
                task.cancel()
            await asyncio.gather(down, up, return_exceptions=True)
            if not upstream.closed:
                await upstream.close()

    async def _to_worker(self, ws: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                try:
                    # Bytes as they came (the client's socket does not decode text): the worker
                    # reads them as it reads its own clients', invalid UTF-8 included.
                    await upstream.send_frame(msg.data, WSMsgType.TEXT)
                except (ConnectionError, RuntimeError):
                    return
            elif msg.type == WSMsgType.BINARY:
                self.on_binary()   # a WebRTC call takes its audio over ICE, not this socket
            elif msg.type == WSMsgType.ERROR:
                return

    async def _to_client(self, upstream: aiohttp.ClientWebSocketResponse) -> None:
        outbox = self.outbox
        reason = ""
        while True:
            msg = await upstream.receive()
            if msg.type == WSMsgType.TEXT:
                if not self.saw_hangup and '"hangup"' in msg.data and api_event_name(msg.data) == "hangup":
                    self.saw_hangup = True
                outbox.event(msg.data)  # type: ignore[attr-defined]
            elif msg.type == WSMsgType.BINARY:
                outbox.audio(msg.data)  # type: ignore[attr-defined]
            elif msg.type == WSMsgType.CLOSE:
                # The worker's reason is the client's (e.g. "client too slow: ..." when the front
                # itself fell behind reading the worker's events).
                reason = str(msg.extra or "")
                break
            elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
        code = upstream.close_code
        if code in LOST and not self.saw_hangup and not self.client_left:
            self.lost()
            outbox.close()  # type: ignore[attr-defined]
        else:
            outbox.close(code=code or 1000, reason=reason)  # type: ignore[attr-defined]

    def lost(self) -> None:
        """The worker went away mid-call: say so, and end the call as a lost leg ends one."""
        w = self.worker
        self.lost_worker = True
        log.error("worker lost a call", worker=w.index, pid=w.pid, session_id=self.session_id)
        self.emit(api.ErrorEvent(track_id=self.session_id, timestamp=now_ms(), sender="server",
                                 error=f"the worker process running this call ended (worker {w.index}, pid {w.pid})",
                                 code=500))
        self.emit(api.HangupEvent(track_id=self.session_id, timestamp=now_ms(), start_time=self.created_at,
                                  hangup_time=iso8601(time.time()), reason="media_failure", initiator="system"))
        self.saw_hangup = True


def api_event_name(text: str) -> str | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj.get("event") if isinstance(obj, dict) else None
