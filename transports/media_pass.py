"""mediaPass: a call's audio carried to an external WebSocket, and that socket's audio played back.

`MediaPass` is a child actor of its call, and reconnecting is its supervisor's business: each
instance owns one `MediaPassLink`, which makes one connection and reports its end. A connection
that fails or drops fails the actor, and the call's ChildSpec restarts it after its backoff, within
its restart limit (past which the call is told with an `error` event); a handshake refused for good
(401, 403, 404...), a peer the fetch policy refuses, or the end of the caller's audio stops it
normally, and it stays down.

A link is two tasks. The pump pops the caller's 20 ms frames, resamples them to the peer's rate
and sends them in binary messages of exactly `packet_size` bytes (s16le mono); while there is no
connection it keeps popping and drops what it pops, so a dead peer never queues audio (between
instances the caller's tap is a bounded ring, dropping its oldest frames). The connection task
connects and turns every binary message it receives into MEDIA_RATE PCM pushed into the playback
feed. Each connection starts with fresh resamplers and buffers: the stream the peer sees after a
reconnect is a new one, not the tail of the old. The counters live in a `LinkCounters` shared by
every instance of one call's mediaPass.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import structlog
from yarl import URL

from actors.base import Actor
from actors.pipes import AudioPipe, PipeClosed
from actors.playout import PlayFeed
from actors.ref import ActorRef
from protocol.api import MediaPassOption
from protocol.codecs import MEDIA_RATE, Resampler
from protocol.errors import ProtocolError
from protocol.pcm16 import Pcm16Assembler

from .fetch_policy import FetchPolicy, FetchRefused

__all__ = ["LinkCounters", "MediaPass", "MediaPassLink", "MediaPassLost", "media_pass_starter"]

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

    __slots__ = ("ws", "to_peer", "from_peer", "outgoing", "samples")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, media_rate: int, option: MediaPassOption) -> None:
        self.ws = ws
        self.to_peer = Resampler(media_rate, option.output_sample_rate)
        self.from_peer = Resampler(option.input_sample_rate, media_rate)
        self.outgoing = bytearray()   # resampled caller audio not yet a whole packet
        self.samples = Pcm16Assembler()


@dataclass
class LinkCounters:
    """What every connection of one call's mediaPass did, across restarts."""

    connections: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    bytes_sent: int = 0
    packets_sent: int = 0
    send_failures: int = 0
    bytes_received: int = 0
    packets_received: int = 0
    text_received: int = 0
    dropped_frames: int = 0
    connected: bool = False

    def snapshot(self) -> dict[str, Any]:
        return {"connected": self.connected, "connections": self.connections,
                "reconnects": max(0, self.connections - 1), "connect_failures": self.connect_failures,
                "disconnects": self.disconnects, "bytes_sent": self.bytes_sent, "packets_sent": self.packets_sent,
                "send_failures": self.send_failures, "bytes_received": self.bytes_received,
                "packets_received": self.packets_received, "text_received": self.text_received,
                "dropped_frames": self.dropped_frames}


OnEnd = Callable[[str, bool], None]
"""(why the link ended, whether another connection would be pointless)."""


def check_option(option: MediaPassOption, media_rate: int = MEDIA_RATE) -> URL:
    """What can never work is refused before any I/O (ProtocolError)."""
    url = URL(option.url)
    if url.scheme not in SCHEMES or not url.host:
        raise ProtocolError(f"mediaPass: url must be ws:// or wss:// with a host, got {option.url!r}")
    if url.raw_user is not None or url.raw_password is not None:
        raise ProtocolError("mediaPass: credentials in the url (user:password@) are not sent; refused")
    Resampler(media_rate, option.output_sample_rate)
    Resampler(option.input_sample_rate, media_rate)
    return url


class MediaPassLink:
    """Caller audio -> external WebSocket -> `playback`, for ONE connection, until `close()`.

    `on_error` receives ``"mediaPass: <url>: <reason>"`` for a failed connect and a lost
    connection; `on_end(reason, permanent)` is called once when the link is over (not after
    `close()`). Both are called from the link's tasks and must only enqueue. The link finishes the
    playback feed only when nothing more can come: the caller's audio ended, or the end is permanent.
    """

    def __init__(self, option: MediaPassOption, caller_audio: AudioPipe[np.ndarray], playback: PlayFeed,
                 on_error: Callable[[str], None], on_end: OnEnd, *, counters: LinkCounters | None = None,
                 media_rate: int = MEDIA_RATE, connect_timeout: float = 5.0,
                 policy: FetchPolicy | None = None) -> None:
        url = check_option(option, media_rate)
        self._policy = policy if policy is not None else FetchPolicy()
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be positive, got {connect_timeout}")
        self.option = option
        self._url = url
        # Userinfo and query often carry credentials; error texts travel to the application and logs.
        self._shown_url = str(url.with_user(None).with_query(None).with_fragment(None))
        self._caller = caller_audio
        self._playback = playback
        self._on_error = on_error
        self._on_end = on_end
        self.counters = counters if counters is not None else LinkCounters()
        self._media_rate = media_rate
        self._connect_timeout = connect_timeout
        self._conn: _Connection | None = None
        self._link_task: asyncio.Task[None] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._closing = False
        self._ended = False

    def __repr__(self) -> str:
        state = "connected" if self._conn is not None else "disconnected"
        return f"<MediaPassLink {self._shown_url} {state}>"

    def start(self) -> None:
        if self._link_task is not None or self._closing:
            raise RuntimeError("MediaPassLink can be started only once")
        loop = asyncio.get_running_loop()
        self._link_task = loop.create_task(self._run_connection(), name=f"media-pass {self._shown_url}")
        self._pump_task = loop.create_task(self._run_pump(), name=f"media-pass-pump {self._shown_url}")

    async def close(self, *, finish: bool = True) -> None:
        """Stop both tasks and close the socket. `finish`: nothing more will be played from this
        mediaPass (the call is going); a link closed to be replaced leaves the feed open."""
        self._closing = True
        tasks = [t for t in (self._link_task, self._pump_task) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if finish:
            self._finish(None)

    def stats(self) -> dict[str, Any]:
        return self.counters.snapshot()

    # --- connection task ---------------------------------------------------------------------

    async def _run_connection(self) -> None:
        session = aiohttp.ClientSession()
        try:
            ws, reason, permanent = await self._connect(session)
            if ws is not None:
                reason = await self._serve(ws)
                self.counters.disconnects += 1
            else:
                self.counters.connect_failures += 1
            self._report(reason)
            if permanent:
                self._finish(reason)
            self._end(reason, permanent)
        except Exception as exc:  # a defect here must end the link loudly, not kill it silently
            log.exception("media pass connection task failed", url=self._shown_url)
            self._report(f"internal error: {exc!r}")
            self._end(f"internal error: {exc!r}", False)
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
        self.counters.connections += 1
        self.counters.connected = True
        self._conn = conn
        log.debug("media pass connected", url=self._shown_url, connections=self.counters.connections)
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    self._receive(conn, msg.data)
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    self.counters.text_received += 1
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    return f"connection lost: {msg.data!r}"
        finally:
            self._conn = None
            self.counters.connected = False
            if not ws.closed:
                await ws.close()
        exc = ws.exception()
        if exc is not None:
            return f"connection lost: {exc!r} (code {ws.close_code})"
        return f"connection closed by peer (code {ws.close_code})"

    def _receive(self, conn: _Connection, data: bytes) -> None:
        self.counters.packets_received += 1
        self.counters.bytes_received += len(data)
        samples = conn.samples.push(data)
        if not len(samples):
            return
        pcm = conn.from_peer.process(samples)
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
                    self.counters.dropped_frames += 1
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
                        self.counters.send_failures += 1
                        break
                    self.counters.packets_sent += 1
                    self.counters.bytes_sent += packet_size
        except PipeClosed:
            # The call's audio has ended: so has the link, for good.
            self._finish(None)
            self._end("the caller's audio ended", True)
            self._closing = True
            if self._link_task is not None:
                self._link_task.cancel()
        except Exception as exc:
            log.exception("media pass pump failed", url=self._shown_url)
            self._report(f"internal error: {exc!r}")
            self._end(f"internal error: {exc!r}", False)

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

    def _end(self, reason: str, permanent: bool) -> None:
        if self._ended or self._closing:
            return
        self._ended = True
        try:
            self._on_end(reason, permanent)
        except Exception:
            log.exception("media pass on_end callback failed", url=self._shown_url)


class MediaPassLost(Exception):
    """A mediaPass connection failed or dropped; the actor's supervisor connects again after its
    backoff."""


class MediaPass(Actor):
    """One connection's lifetime of a call's mediaPass (see the module docstring)."""

    def __init__(self, make_link: Callable[[OnEnd], MediaPassLink]) -> None:
        self._make_link = make_link
        self.link: MediaPassLink | None = None

    async def on_start(self) -> None:
        self.link = self._make_link(self.outside(self._ended))
        self.link.start()

    def _ended(self, reason: str, permanent: bool) -> None:
        if permanent:
            self.stop()                 # stays down: the call's spec restarts only failures
            return
        raise MediaPassLost(reason)

    async def on_stop(self) -> None:
        if self.link is not None:
            await self.link.close(finish=True)

    async def on_failure(self, error: BaseException) -> None:
        if self.link is not None:
            await self.link.close(finish=False)   # the next instance plays into the same feed


def media_pass_starter(option: MediaPassOption, caller_audio: AudioPipe[np.ndarray], playback: PlayFeed,
                       on_error: Callable[[str], None], *, counters: LinkCounters | None = None,
                       media_rate: int = MEDIA_RATE, connect_timeout: float = 5.0,
                       policy: FetchPolicy | None = None) -> Callable[[ActorRef], ActorRef]:
    """The start function of a call's mediaPass child: every (re)start gets a new link on the same
    caller tap, feed and counters. Raises ProtocolError for an option that can never work."""
    check_option(option, media_rate)
    shared = counters if counters is not None else LinkCounters()

    def make_link(on_end: OnEnd) -> MediaPassLink:
        return MediaPassLink(option, caller_audio, playback, on_error, on_end, counters=shared,
                             media_rate=media_rate, connect_timeout=connect_timeout, policy=policy)

    def start(parent: ActorRef) -> ActorRef:
        return MediaPass.start(make_link, parent=parent, name="mediaPass")

    return start


def _status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)
