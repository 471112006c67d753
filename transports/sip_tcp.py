"""SIP over TCP: one connection per peer address, messages framed by ``StreamParser``.

A connection is either accepted by the listener or opened towards a peer when a message has to go
there and none is open (RFC 3261 §18.1.1, §18.2.2). Both kinds serve both directions and are
found again by the peer's address. Every connection is bounded: the parser's message size, a write
buffer limit (a peer that stops reading is dropped, not buffered forever) and an idle timeout.
Everything here runs in loop callbacks and hands complete messages to a sink; nothing blocks.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

import structlog

from protocol.errors import ProtocolError
from protocol.sip.message import Request, Response, SipParseError, StreamParser

log = structlog.get_logger("sip.tcp")

Address = tuple[str, int]


class TcpSink(Protocol):
    """What a connection reports to (the SIP endpoint)."""

    def on_stream_message(self, message: Request | Response, conn: TcpConnection) -> None: ...
    def on_stream_error(self, error: SipParseError, conn: TcpConnection, fatal: bool) -> None: ...
    def on_stream_ping(self, conn: TcpConnection) -> None: ...
    def on_connection_closed(self, conn: TcpConnection, reason: str, unsent: list[object]) -> None: ...


@dataclass(frozen=True, slots=True)
class TcpLimits:
    max_message_size: int
    max_connections: int
    idle_timeout: float
    connect_timeout: float
    write_buffer: int


class TcpConnection(asyncio.Protocol):
    """One TCP connection carrying SIP, in either direction."""

    def __init__(self, pool: TcpPool, peer: Address | None, *, outbound: bool) -> None:
        self.pool = pool
        self.peer = peer
        self.outbound = outbound
        self.parser = StreamParser(max_message_size=pool.limits.max_message_size)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.close_reason: str | None = None
        self._pending: list[bytes] = []  # written before the connection was established
        self._pending_tags: list[object] = []
        self._pending_bytes = 0
        self._pings = 0
        self._last_activity = time.monotonic()
        self._idle: asyncio.TimerHandle | None = None

    @property
    def connected(self) -> bool:
        return self.transport is not None and not self.closed

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self.closed:  # given up (timeout, shutdown) while the connect was under way
            transport.abort()
            return
        self.transport = transport
        if self.peer is None:
            peer = transport.get_extra_info("peername")
            self.peer = (peer[0], peer[1]) if peer else ("", 0)
        if not self.pool.admit(self):
            self.close("limit")
            return
        self._arm_idle()
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        self._pending_tags = []
        for data in pending:
            self.write(data)

    def data_received(self, data: bytes) -> None:
        self._last_activity = time.monotonic()
        try:
            messages = self.parser.feed(data)
        except SipParseError as error:
            # Framing is lost: nothing after this point can be trusted to start a message.
            self.pool.sink.on_stream_error(error, self, True)
            self.close("framing")
            return
        except ProtocolError as error:
            self.pool.sink.on_stream_error(SipParseError(error.message, error.status), self, True)
            self.close("framing")
            return
        sink = self.pool.sink
        while self._pings < self.parser.pings:
            self._pings += 1
            sink.on_stream_ping(self)
        for error in self.parser.take_errors():
            sink.on_stream_error(error, self, False)
        for message in messages:
            if self.closed:
                return
            sink.on_stream_message(message, self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed(self.close_reason or ("error" if exc is not None else "peer"))

    # -- sending ----------------------------------------------------------------------------------

    def write(self, data: bytes, tag: object | None = None) -> bool:
        """Queue ``data``; False when the connection is closed or was closed for not reading.
        ``tag`` names what is waiting for a connection still being opened: if it never opens,
        the sink is given the tags of what was not sent."""
        if self.closed:
            return False
        self._last_activity = time.monotonic()
        if self.transport is None:
            self._pending.append(data)
            if tag is not None:
                self._pending_tags.append(tag)
            self._pending_bytes += len(data)
            if self._pending_bytes > self.pool.limits.write_buffer:
                self.close("slow")
                return False
            return True
        self.transport.write(data)
        if self.transport.get_write_buffer_size() > self.pool.limits.write_buffer:
            self.close("slow")
            return False
        return True

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.close_reason = reason
        if self.transport is not None:
            # A peer that does not read or broke framing gets no graceful drain: abort.
            if reason in ("slow", "limit"):
                self.transport.abort()
            else:
                self.transport.close()
        else:
            self._closed(reason)

    def _closed(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._pending.clear()
        unsent, self._pending_tags = self._pending_tags, []
        self.pool.forget(self, reason, unsent)

    # -- idle timeout ---------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        loop = asyncio.get_running_loop()
        due = self._last_activity + self.pool.limits.idle_timeout
        self._idle = loop.call_later(max(0.0, due - time.monotonic()), self._check_idle)

    def _check_idle(self) -> None:
        self._idle = None
        if self.closed:
            return
        if time.monotonic() - self._last_activity >= self.pool.limits.idle_timeout:
            self.close("idle")
        else:
            self._arm_idle()

    def __repr__(self) -> str:
        direction = "to" if self.outbound else "from"
        return f"<TcpConnection {direction} {self.peer} {'closed' if self.closed else 'open'}>"


class TcpPool:
    """The listener and every connection, found by peer address."""

    def __init__(self, sink: TcpSink, limits: TcpLimits) -> None:
        self.sink = sink
        self.limits = limits
        self.server: asyncio.AbstractServer | None = None
        self.connections: dict[Address, TcpConnection] = {}
        self._connecting: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.opened = 0
        self.refused = 0
        self.closed_by_reason: dict[str, int] = {}

    async def listen(self, host: str, port: int) -> Address:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: TcpConnection(self, None, outbound=False), host, port, reuse_address=True
        )
        sockname = self.server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    def admit(self, conn: TcpConnection) -> bool:
        """Called when a connection is established: count it, or refuse it past the limit."""
        assert conn.peer is not None
        if not conn.outbound:
            if len(self.connections) >= self.limits.max_connections:
                self.refused += 1
                return False
            self.accepted += 1
        old = self.connections.get(conn.peer)
        if old is not None and old is not conn:
            old.close("replaced")
        self.connections[conn.peer] = conn
        return True

    def forget(self, conn: TcpConnection, reason: str, unsent: list[object]) -> None:
        if conn.peer is not None and self.connections.get(conn.peer) is conn:
            del self.connections[conn.peer]
        self.closed_by_reason[reason] = self.closed_by_reason.get(reason, 0) + 1
        self.sink.on_connection_closed(conn, reason, unsent)

    def connection_to(self, peer: Address) -> TcpConnection | None:
        """An open (or opening) connection to ``peer``, or a new outbound one; None past the limit."""
        conn = self.connections.get(peer)
        if conn is not None and not conn.closed:
            return conn
        if len(self.connections) >= self.limits.max_connections:
            self.refused += 1
            return None
        conn = TcpConnection(self, peer, outbound=True)
        self.connections[peer] = conn
        self.opened += 1
        task = asyncio.get_running_loop().create_task(self._connect(conn, peer), name=f"sip-tcp-connect {peer}")
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        return conn

    async def _connect(self, conn: TcpConnection, peer: Address) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: conn, peer[0], peer[1]), self.limits.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            log.info("sip tcp connect failed", peer=f"{peer[0]}:{peer[1]}", error=repr(exc))
            conn.close("connect")

    async def close(self) -> None:
        for task in list(self._connecting):
            task.cancel()
        for task in list(self._connecting):
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections.values()):
            conn.close("shutdown")
            if conn.transport is not None:
                conn.transport.abort()
        self.connections.clear()
        if self.server is not None:
            try:
                await asyncio.wait_for(self.server.wait_closed(), 2.0)
            except TimeoutError:
                log.warning("sip tcp listener did not close within 2 s")
            self.server = None

