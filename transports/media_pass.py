"""mediaPass: a call's audio carried to an external WebSocket, and that socket's audio played back.

The link is two tasks. The pump pops the caller's 20 ms frames, resamples them to the peer's
rate and sends them in binary messages of exactly `packet_size` bytes (s16le mono); while there
is no connection it keeps popping and drops what it pops, so a dead peer never queues audio. The
connection task connects, turns every binary message it receives into MEDIA_RATE PCM appended to
the playback item, and, when the socket refuses or drops, reports it and tries again after an
exponential backoff. Each connection starts with fresh resamplers and buffers: the stream the
peer sees after a reconnect is a new one, not the tail of the old.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np
import structlog
from yarl import URL

from actors.pipes import AudioPipe, PipeClosed
from actors.playout import PlayFeed
from protocol.api import MediaPassOption
from protocol.codecs import MEDIA_RATE, Resampler
from protocol.errors import ProtocolError

from .fetch_policy import FetchPolicy, FetchRefused

__all__ = ["MediaPassLink"]

log = structlog.get_logger("media_pass")

# A peer that stops answering without closing its TCP connection would otherwise hold the link
# "connected" forever while our sends pile up in the kernel: pings find it.
HEARTBEAT = 15.0
# Bounds the close handshake, so close() never waits long on a peer that does not answer it.
CLOSE_TIMEOUT = 1.0
# Handshake answers that another attempt will not change; anything else (5xx, 408, 429, network
# errors) may heal and is retried with backoff.
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 426})
SCHEMES = ("ws", "wss", "http", "https")
# One text for refused, reset, unreachable, unknown name and connect timeout alike: telling them
# apart would make mediaPass a port scanner.
UNREACHABLE = "connect failed: the server could not be reached"


class _Connection:
    """One established socket with the per-connection stream state."""

    __slots__ = ("ws", "to_peer", "from_peer", "outgoing", "carry")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, media_rate: int, option: MediaPassOption) -> None:
        self.ws = ws
        self.to_peer = Resampler(media_rate, option.output_sample_rate)
        self.from_peer = Resampler(option.input_sample_rate, media_rate)
        self.outgoing = bytearray()   # resampled caller audio not yet a whole packet
        self.carry = b""              # odd trailing byte of the last received message


class MediaPassLink:
    """Caller audio -> external WebSocket -> `playback`, with reconnects, until `close()`.

    `on_error` receives ``"mediaPass: <url>: <reason>"`` for every failed connect and every lost
    connection; it is called from the link's tasks and must only enqueue. The link is the
    producer of `playback`: it finishes the item when it ends (closed, caller pipe closed, or a
    handshake refused for good).
    """

    def __init__(self, option: MediaPassOption, caller_audio: AudioPipe[np.ndarray], playback: PlayFeed,
                 on_error: Callable[[str], None], *, media_rate: int = MEDIA_RATE,
                 backoff_initial: float = 0.2, backoff_max: float = 5.0, connect_timeout: float = 5.0,
                 policy: FetchPolicy | None = None) -> None:
        url = URL(option.url)
        if url.scheme not in SCHEMES or not url.host:
            raise ProtocolError(f"mediaPass: url must be ws:// or wss:// with a host, got {option.url!r}")
        if url.raw_user is not None or url.raw_password is not None:
            raise ProtocolError("mediaPass: credentials in the url (user:password@) are not sent; refused")
        self._policy = policy if policy is not None else FetchPolicy()
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError(f"backoff must satisfy 0 < initial <= max, got {backoff_initial}, {backoff_max}")
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be positive, got {connect_timeout}")
        # Built once here so that a rate pair the resampler cannot serve fails before any I/O.
        Resampler(media_rate, option.output_sample_rate)
        Resampler(option.input_sample_rate, media_rate)
        self.option = option
        self._url = url
        # Userinfo and query often carry credentials; error texts travel to the application and logs.
        self._shown_url = str(url.with_user(None).with_query(None).with_fragment(None))
        self._caller = caller_audio
        self._playback = playback
        self._on_error = on_error
        self._media_rate = media_rate
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._connect_timeout = connect_timeout
        self._conn: _Connection | None = None
        self._link_task: asyncio.Task[None] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._closing = False
        self._connections = 0
        self._connect_failures = 0
        self._disconnects = 0
        self._bytes_sent = 0
        self._packets_sent = 0
        self._send_failures = 0
        self._bytes_received = 0
        self._packets_received = 0
        self._text_received = 0
        self._dropped_frames = 0

    def __repr__(self) -> str:
        state = "connected" if self._conn is not None else "disconnected"
        return f"<MediaPassLink {self._shown_url} {state}>"

    def start(self) -> None:
        if self._link_task is not None or self._closing:
            raise RuntimeError("MediaPassLink can be started only once")
        loop = asyncio.get_running_loop()
        self._link_task = loop.create_task(self._run_connection(), name=f"media-pass {self._shown_url}")
        self._pump_task = loop.create_task(self._run_pump(), name=f"media-pass-pump {self._shown_url}")

    async def close(self) -> None:
        self._closing = True
        tasks = [t for t in (self._link_task, self._pump_task) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._finish(None)

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self._conn is not None,
            "connections": self._connections,
            "reconnects": max(0, self._connections - 1),
            "connect_failures": self._connect_failures,
            "disconnects": self._disconnects,
            "bytes_sent": self._bytes_sent,
            "packets_sent": self._packets_sent,
            "send_failures": self._send_failures,
            "bytes_received": self._bytes_received,
            "packets_received": self._packets_received,
            "text_received": self._text_received,
            "dropped_frames": self._dropped_frames,
        }

    # --- connection task ---------------------------------------------------------------------

    async def _run_connection(self) -> None:
        loop = asyncio.get_running_loop()
        session = aiohttp.ClientSession()
        delay = self._backoff_initial
        try:
            while True:
                ws, reason, permanent = await self._connect(session)
                if ws is not None:
                    connected_at = loop.time()
                    reason = await self._serve(ws)
                    self._disconnects += 1
                    # Only a connection that stayed up a while proves the peer healthy again; one
                    # that accepts and drops at once keeps the delays growing.
                    if loop.time() - connected_at >= self._backoff_max:
                        delay = self._backoff_initial
                else:
                    self._connect_failures += 1
                self._report(reason)
                if permanent:
                    self._finish(reason)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max)
        except Exception as exc:  # a defect here must end the link loudly, not kill it silently
            log.exception("media pass connection task failed", url=self._shown_url)
            self._report(f"internal error: {exc!r}")
            self._finish(f"internal error: {exc!r}")
        finally:
            await session.close()

    async def _connect(self, session: aiohttp.ClientSession
                       ) -> tuple[aiohttp.ClientWebSocketResponse | None, str, bool]:
        """(socket, "", False) or (None, why it failed, whether retrying is pointless)."""
        try:
            # Checked at every connect: the name may resolve elsewhere by the next reconnect.
            await self._policy.check(self._url, SCHEMES)
        except FetchRefused as exc:
            return None, str(exc), True
        except OSError:
            return None, UNREACHABLE, False
        try:
            async with asyncio.timeout(self._connect_timeout):
                ws = await session.ws_connect(self._url, heartbeat=HEARTBEAT,
                                              timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT))
        except TimeoutError:
            return None, UNREACHABLE, False
        except aiohttp.WSServerHandshakeError as exc:
            return None, f"handshake refused: HTTP {_status_text(exc.status)}", exc.status in PERMANENT_STATUSES
        except aiohttp.InvalidURL as exc:
            return None, f"invalid url: {exc}", True
        except (aiohttp.ClientConnectorError, OSError):
            return None, UNREACHABLE, False
        except aiohttp.ClientError as exc:
            return None, f"connect failed: {type(exc).__name__}", False
        return ws, "", False

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """Read the socket until it ends; returns why it ended."""
        conn = _Connection(ws, self._media_rate, self.option)
        self._connections += 1
        self._conn = conn
        log.debug("media pass connected", url=self._shown_url, connections=self._connections)
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    self._receive(conn, msg.data)
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    self._text_received += 1
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    return f"connection lost: {msg.data!r}"
        finally:
            self._conn = None
            if not ws.closed:
                await ws.close()
        exc = ws.exception()
        if exc is not None:
            return f"connection lost: {exc!r} (code {ws.close_code})"
        return f"connection closed by peer (code {ws.close_code})"

    def _receive(self, conn: _Connection, data: bytes) -> None:
        self._packets_received += 1
        self._bytes_received += len(data)
        if conn.carry:
            data = conn.carry + data
        whole = len(data) & ~1
        conn.carry = data[whole:]
        if not whole:
            return
        pcm = conn.from_peer.process(np.frombuffer(data, dtype="<i2", count=whole // 2))
        if len(pcm):
            self._playback.push(pcm.astype(np.int16, copy=False))

    # --- pump task ---------------------------------------------------------------------------

    async def _run_pump(self) -> None:
        packet_size = self.option.packet_size
        try:
            while True:
                frame = await self._caller.pop()
                conn = self._conn
                if conn is None or conn.ws.closed:
                    self._dropped_frames += 1
                    continue
                pcm = conn.to_peer.process(frame)
                conn.outgoing += pcm.astype("<i2", copy=False).tobytes()
                while len(conn.outgoing) >= packet_size:
                    packet = bytes(conn.outgoing[:packet_size])
                    del conn.outgoing[:packet_size]
                    try:
                        await conn.ws.send_bytes(packet)
                    except (ConnectionError, aiohttp.ClientError, RuntimeError):
                        # The reading side sees the same loss and reports it; this audio is gone.
                        self._send_failures += 1
                        break
                    self._packets_sent += 1
                    self._bytes_sent += packet_size
        except PipeClosed:
            # The call's audio has ended: so has the link. The connection task closes the socket.
            self._closing = True
            if self._link_task is not None:
                self._link_task.cancel()
            self._finish(None)
        except Exception as exc:
            log.exception("media pass pump failed", url=self._shown_url)
            self._report(f"internal error: {exc!r}")
            self._finish(f"internal error: {exc!r}")

    # --- helpers -----------------------------------------------------------------------------

    def _report(self, reason: str) -> None:
        if self._closing:
            return
        message = f"mediaPass: {self._shown_url}: {reason}"
        log.info("media pass error", error=message)
        try:
            self._on_error(message)
        except Exception:
            log.exception("media pass on_error callback failed", url=self._shown_url)

    def _finish(self, error: str | None) -> None:
        if not self._playback.finished:
            self._playback.finish(error)


def _status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)
