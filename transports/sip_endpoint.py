"""The SIP endpoint: UDP and TCP listeners feeding one transaction layer; requests, responses and
transaction events routed to the handler registered for their Call-ID.

What arrives, in order:

1. UDP datagrams are parsed with ``parse_message``, TCP streams framed with ``StreamParser``.
   A request that fails to parse but whose headers could be read is answered with
   ``make_error_response`` (400, 416, 505, 513...); anything else is dropped and counted.
   CRLF keep-alives are counted (and answered with one CRLF on TCP, RFC 5626 §4.4.1).
2. The top Via of a request gets ``received`` (RFC 3261 §18.2.1) and, when it asked for it,
   ``rport`` (RFC 3581), so responses and their retransmissions go back where the request came
   from, through any NAT.
3. The transaction layer (``protocol.sip.transaction``, RFC 3261 §17 with RFC 6026) absorbs
   retransmissions and runs the timers; its deadlines are scheduled on the event loop.
4. Its events go to the dialog handler registered for the message's Call-ID. A new INVITE (no To
   tag) for an unknown Call-ID goes to ``on_new_call``, which returns the handler for the call
   (or None: 503). OPTIONS is answered here (keep-alives, health probes); CANCEL is answered
   here (200, or 481 when it matches no INVITE) and passed on so the call leg can send 487;
   other requests nobody handles get 481, 405 or 501.

Everything runs synchronously in loop callbacks: a handler is called from the datagram or stream
callback that received the message and must not block (it typically tells an actor). The public
methods (``register``, ``send_request``, ``send_response``, ``send_ack``...) are called by the
call legs on the same loop; a handler calling them re-enters nothing, since events are queued
and delivered in order after the current one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TypeAlias

import structlog

from protocol.errors import ProtocolError
from protocol.sip.headers import Via
from protocol.sip.message import (
    Request,
    Response,
    SipParseError,
    make_error_response,
    make_response,
    parse_message,
)
from protocol.sip.timers import TimerConfig
from protocol.sip.transaction import (
    AckReceived,
    InviteServerTransaction,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    Terminated,
    Timeout,
    Transaction,
    TransactionKey,
    TransactionLayer,
    TransportError,
    client_key,
    server_key,
)
from protocol.sip.uri import NameAddr, SipUri, parse_name_addr

from .config import Config, SipConfig
from .sip_tcp import TcpConnection, TcpLimits, TcpPool

log = structlog.get_logger("sip")

Address: TypeAlias = tuple[str, int]
SipEvent: TypeAlias = RequestReceived | ResponseReceived | AckReceived | Timeout | TransportError | Terminated
DialogHandler: TypeAlias = Callable[[SipEvent], None]
NewCallHandler: TypeAlias = Callable[[RequestReceived], "DialogHandler | None"]

TRANSPORTS = ("udp", "tcp")
DEFAULT_PORT = 5060
# What this gateway does as a user agent; the SIP call leg answers the in-dialog ones.
ALLOW = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "REFER", "NOTIFY")
ACCEPT = ("application/sdp", "application/dtmf-relay", "application/dtmf", "message/sipfrag")
# Methods some SIP element implements: asked of us they get 405 with Allow rather than 501.
KNOWN_METHODS = frozenset(ALLOW) | {"REGISTER", "SUBSCRIBE", "PUBLISH", "MESSAGE", "PRACK", "UPDATE"}
USER_AGENT = "active-call"
_ROUTE_CACHE = 1024


class EndpointClosed(RuntimeError):
    """The endpoint was closed (stopped or restarted); the call using it cannot go on."""


@dataclass(frozen=True, slots=True)
class SipTarget:
    """Where a request goes: an IP address (see ``SipEndpoint.resolve`` for names), port, transport."""

    host: str
    port: int = DEFAULT_PORT
    transport: str = "udp"

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"SIP transport must be one of {TRANSPORTS}, not {self.transport!r}")
        if not 0 < self.port <= 65535:
            raise ValueError(f"bad SIP port {self.port}")

    @property
    def address(self) -> Address:
        return self.host, self.port

    @property
    def is_resolved(self) -> bool:
        return _is_ip(self.host)


def target_for_uri(uri: SipUri | str, *, transport: str | None = None) -> SipTarget:
    """The next hop for a request to ``uri`` (RFC 3263 without NAPTR/SRV: the URI's host, its port
    or 5060, its ``transport`` parameter or UDP). A host name still needs ``SipEndpoint.resolve``."""
    if isinstance(uri, str):
        from protocol.sip.uri import parse_uri

        uri = parse_uri(uri)
    if uri.scheme != "sip":
        raise ValueError(f"cannot send to a {uri.scheme}: URI ({uri}); only sip: over UDP or TCP")
    chosen = (transport or uri.param("transport") or "udp").lower()
    maddr = uri.param("maddr")
    host = (maddr or uri.host).strip("[]")
    return SipTarget(host, uri.port or DEFAULT_PORT, chosen)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return False


def _bare_host(host: str) -> str:
    return host.strip("[]").lower()


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass(slots=True)
class _Route:
    """How a transaction's messages reach the peer."""

    call_id: str
    transport: str
    addr: Address
    conn: TcpConnection | None = None
    reconnect: Address | None = None  # TCP: where to open a new connection if this one is gone


@dataclass(frozen=True, slots=True)
class SipStats:
    """Counters of the endpoint since it started."""

    udp_datagrams: int = 0
    tcp_messages: int = 0
    requests: int = 0
    responses: int = 0
    sent: int = 0
    retransmissions: int = 0
    retransmissions_absorbed: int = 0
    stray_responses: int = 0
    foreign_via_responses: int = 0              # responses whose top Via sent-by is not ours (dropped)
    options_answered: int = 0
    malformed_answered: int = 0                 # requests that failed to parse, answered with their status
    malformed_by_status: dict[int, int] = field(default_factory=dict)
    garbage_dropped: int = 0                    # input that could not be answered (not SIP, a broken response...)
    keepalives: int = 0                         # CRLF keep-alives (UDP datagrams, TCP double-CRLF pings)
    unroutable: int = 0                         # requests/ACKs/responses for a Call-ID nobody handles
    new_calls: int = 0
    new_calls_refused: int = 0                  # INVITEs answered 503: no handler, or the handler declined
    overloaded: int = 0                         # requests answered 503 past sip.max_transactions
    handler_errors: int = 0
    transport_errors: int = 0
    udp_errors: int = 0
    tcp_connections: int = 0                    # open now
    tcp_accepted: int = 0
    tcp_opened: int = 0
    tcp_refused: int = 0                        # past sip.tcp_max_connections
    tcp_closed: dict[str, int] = field(default_factory=dict)  # by reason: peer, idle, slow, framing...
    dialogs: int = 0                            # Call-IDs with a registered handler now
    transactions: int = 0                       # live transactions now
    last_error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class _Counters:
    __slots__ = tuple(n for n in SipStats.__dataclass_fields__ if n not in (
        "retransmissions_absorbed", "stray_responses", "tcp_connections", "tcp_accepted", "tcp_opened",
        "tcp_refused", "tcp_closed", "dialogs", "transactions", "requests", "responses"))

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)
        self.malformed_by_status: dict[int, int] = {}
        self.last_error: str | None = None


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.endpoint._on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors of earlier sends (port unreachable...): nothing to retry, but visible.
        self.endpoint._count_udp_error(exc)


class SipEndpoint:
    """UDP and TCP SIP listeners with one transaction layer and a Call-ID routing table."""

    def __init__(
        self,
        *,
        host: str,
        udp_port: int,
        tcp_port: int | None = None,
        external_ip: str | None = None,
        config: SipConfig | None = None,
        on_new_call: NewCallHandler | None = None,
        allow: Iterable[str] = ALLOW,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.config = config or SipConfig()
        self.host = host
        self.external_ip = external_ip
        self.on_new_call = on_new_call
        self.allow = ", ".join(allow)
        self.user_agent = user_agent
        self._udp_port_wanted = udp_port
        self._tcp_port_wanted = tcp_port
        self._layer = TransactionLayer(config=TimerConfig(
            t1=self.config.t1, t2=self.config.t2, t4=self.config.t4, trying_delay=self.config.trying_delay))
        self._tcp = TcpPool(self, TcpLimits(
            max_message_size=self.config.max_message_size,
            max_connections=self.config.tcp_max_connections,
            idle_timeout=self.config.tcp_idle_timeout,
            connect_timeout=self.config.tcp_connect_timeout,
            write_buffer=self.config.tcp_write_buffer,
        ))
        self._udp: asyncio.DatagramTransport | None = None
        self.udp_address: Address | None = None
        self.tcp_address: Address | None = None
        self._dialogs: dict[str, DialogHandler] = {}
        self._routes: dict[TransactionKey, _Route] = {}
        self._draining = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._counters = _Counters()
        self._local_hosts: OrderedDict[str, str] = OrderedDict()
        # Every sent-by we have written in a Via (our own addresses and ports: a handful).
        self._sent_by: set[tuple[str, int]] = set()
        self.closed = False
        self.started = False

    @classmethod
    def from_config(cls, config: Config, *, on_new_call: NewCallHandler | None = None) -> SipEndpoint:
        return cls(host=config.sip_addr, udp_port=config.udp_port, tcp_port=config.tcp_port,
                   external_ip=config.external_ip, config=config.sip, on_new_call=on_new_call)

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind UDP, then TCP (on the UDP port when ``tcp_port`` is None)."""
        self._loop = asyncio.get_running_loop()
        attempts = 10 if self._udp_port_wanted == 0 and self._tcp_port_wanted is None else 1
        for attempt in range(attempts):
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.host, self._udp_port_wanted))
            sockname = transport.get_extra_info("sockname")
            tcp_port = self._tcp_port_wanted if self._tcp_port_wanted is not None else sockname[1]
            try:
                self.tcp_address = await self._tcp.listen(self.host, tcp_port)
            except OSError:
                transport.close()
                # An ephemeral UDP port whose TCP twin is taken: draw another pair.
                if attempt + 1 < attempts:
                    continue
                raise
            self._udp = transport
            self.udp_address = (sockname[0], sockname[1])
            break
        self.started = True
        log.info("sip listening", udp=f"{self.udp_address[0]}:{self.udp_address[1]}",
                 tcp=f"{self.tcp_address[0]}:{self.tcp_address[1]}", external_ip=self.external_ip)

    async def close(self) -> None:
        """Close the sockets and forget every transaction; later sends raise EndpointClosed."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        await self._tcp.close()
        self._dialogs.clear()
        self._routes.clear()

    # -- what the call legs use ------------------------------------------------------------------

    def register(self, call_id: str, handler: DialogHandler) -> None:
        """Route every event of ``call_id`` to ``handler`` from now on."""
        self._check_open()
        current = self._dialogs.get(call_id)
        if current is not None and current is not handler:
            raise ValueError(f"Call-ID {call_id!r} already has a handler")
        self._dialogs[call_id] = handler

    def unregister(self, call_id: str) -> None:
        """Stop routing ``call_id``; its transactions still finish (retransmissions are answered)."""
        self._dialogs.pop(call_id, None)

    def handler_of(self, call_id: str) -> DialogHandler | None:
        return self._dialogs.get(call_id)

    def new_branch(self) -> str:
        return self._layer.new_branch()

    def advertised_host(self, peer: str | None = None) -> str:
        """The address to put in Via, Contact and SDP: ``external_ip``, else the bound address,
        else (listening on a wildcard) the local address the system routes to ``peer`` from."""
        if self.external_ip:
            return self.external_ip
        bound = self.udp_address[0] if self.udp_address else self.host
        if bound not in ("0.0.0.0", "::", ""):
            return bound
        return self._local_address_towards(peer)

    def port_for(self, transport: str) -> int:
        address = self.udp_address if transport == "udp" else self.tcp_address
        if address is None:
            raise EndpointClosed("the SIP endpoint is not listening")
        return address[1]

    def via(self, target: SipTarget, branch: str | None = None) -> str:
        """A top Via for a request to ``target``: our sent-by for its transport, a fresh branch
        and ``rport`` (RFC 3581), so the response comes back to the port we sent from."""
        host = self.advertised_host(target.host)
        port = self.port_for(target.transport)
        self._sent_by.add((_bare_host(host), port))
        via = Via(target.transport.upper(), host, port, branch or self.new_branch(), rport=True)
        return str(via)

    def contact(self, target: SipTarget, user: str | None = None) -> NameAddr:
        """Our Contact for a dialog with a peer at ``target`` (transport parameter for TCP)."""
        host = _host_text(self.advertised_host(target.host))
        userinfo = f"{user}@" if user else ""
        params = ";transport=tcp" if target.transport == "tcp" else ""
        return parse_name_addr(f"<sip:{userinfo}{host}:{self.port_for(target.transport)}{params}>")

    async def resolve(self, target: SipTarget, *, timeout: float = 5.0) -> SipTarget:
        """``target`` with its host name resolved to an address (A/AAAA; no NAPTR/SRV)."""
        if target.is_resolved:
            return target
        loop = asyncio.get_running_loop()
        kind = socket.SOCK_DGRAM if target.transport == "udp" else socket.SOCK_STREAM
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(target.host, target.port, type=kind), timeout)
        except (OSError, TimeoutError) as exc:
            raise LookupError(f"cannot resolve SIP host {target.host!r}: {exc!r}") from None
        if not infos:
            raise LookupError(f"SIP host {target.host!r} has no address")
        return replace(target, host=infos[0][4][0])

    def send_request(self, request: Request, target: SipTarget) -> TransactionKey:
        """Start a client transaction for ``request`` towards ``target`` (an IP address).

        The request's top Via must carry a fresh branch (``via()`` makes one). Its responses,
        timeouts and transport errors go to the handler registered for its Call-ID."""
        self._check_open()
        if not target.is_resolved:
            raise ValueError(f"target {target.host!r} is not an IP address: resolve it first")
        key = client_key(request)
        if self._layer.get(key) is not None:
            raise ValueError(f"a transaction with branch {key.branch} exists: each request needs a fresh one")
        # The TCP connection is found (or opened) when the first message goes out.
        self._routes[key] = _Route(request.call_id, target.transport, target.address)
        try:
            self._layer.send_request(request, self._now(), addr=target.address,
                                     reliable=target.transport != "udp")
        except Exception:
            self._routes.pop(key, None)
            raise
        self._drain()
        return key

    def send_response(self, response: Response, key: TransactionKey | None = None) -> None:
        """Hand a response to its server transaction (found from ``key`` or the response's Via)."""
        self._check_open()
        self._layer.send_response(response, self._now(), key=key)
        self._drain()

    def send_ack(self, ack: Request, target: SipTarget) -> None:
        """Send the ACK of a 2xx (no transaction, RFC 3261 §13.2.2.4); again for each 2xx resent."""
        self._check_open()
        if not target.is_resolved:
            raise ValueError(f"target {target.host!r} is not an IP address: resolve it first")
        self._transmit(bytes(ack), _Route(ack.call_id, target.transport, target.address), None)

    def transaction(self, key: TransactionKey) -> Transaction | None:
        """The live transaction of ``key`` (e.g. ``.cancellable`` of an INVITE client transaction)."""
        return self._layer.get(key)

    def stats(self) -> SipStats:
        c = self._counters
        layer = self._layer.stats
        values = {name: getattr(c, name) for name in _Counters.__slots__}
        values["malformed_by_status"] = dict(c.malformed_by_status)
        return SipStats(
            **values,
            requests=layer.requests,
            responses=layer.responses,
            retransmissions_absorbed=layer.retransmissions_absorbed,
            stray_responses=layer.stray_responses,
            tcp_connections=sum(1 for conn in self._tcp.connections.values() if conn.connected),
            tcp_accepted=self._tcp.accepted,
            tcp_opened=self._tcp.opened,
            tcp_refused=self._tcp.refused,
            tcp_closed=dict(self._tcp.closed_by_reason),
            dialogs=len(self._dialogs),
            transactions=len(self._layer),
        )

    # -- receiving ---------------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        if self.closed:
            return
        self._counters.udp_datagrams += 1
        if not data.strip(b"\r\n"):
            self._counters.keepalives += 1
            return
        route = _Route("", "udp", addr)
        try:
            message = parse_message(data, max_size=self.config.max_message_size)
        except SipParseError as error:
            self._answer_malformed(error, route)
            return
        except ProtocolError as error:
            self._drop(error.message)
            return
        self._receive(message, route)

    # TcpSink
    def on_stream_message(self, message: Request | Response, conn: TcpConnection) -> None:
        if self.closed:
            return
        self._counters.tcp_messages += 1
        assert conn.peer is not None
        self._receive(message, _Route("", "tcp", conn.peer, conn))

    def on_stream_error(self, error: SipParseError, conn: TcpConnection, fatal: bool) -> None:
        assert conn.peer is not None
        self._answer_malformed(error, _Route("", "tcp", conn.peer, conn))

    def on_stream_ping(self, conn: TcpConnection) -> None:
        self._counters.keepalives += 1
        conn.write(b"\r\n")

    def on_connection_closed(self, conn: TcpConnection, reason: str, unsent: list[object]) -> None:
        if self.closed:
            return
        for key in unsent:
            if isinstance(key, TransactionKey):
                self._counters.transport_errors += 1
                self._layer.transport_error(key, self._now())
        if unsent:
            self._drain()

    def _receive(self, message: Request | Response, route: _Route) -> None:
        now = self._now()
        if isinstance(message, Response):
            if not self._sent_by_us(message):
                # RFC 3261 §18.1.2: a response whose top Via we did not write is not for us.
                self._counters.foreign_via_responses += 1
                self._drain()
                return
            self._layer.receive(message, now)
        elif message.method == "ACK":
            self._layer.receive(message, now, route.addr, reliable=route.transport != "udp")
        elif self._stamp_via(message, route):
            route.call_id = message.call_id
            key = server_key(message)
            if len(self._layer) >= self.config.max_transactions and self._layer.get(key) is None:
                self._overloaded(message, route)
                return
            self._layer.receive(message, now, route.addr, reliable=route.transport != "udp")
            # A new server transaction answers along this route; a retransmission keeps its own.
            if key not in self._routes and self._layer.get(key) is not None:
                self._routes[key] = route
        self._drain()

    def _sent_by_us(self, response: Response) -> bool:
        try:
            via = response.via[0]
        except (ProtocolError, IndexError):
            return True          # malformed: the transaction layer drops and counts it
        port = via.port or (5061 if via.transport.upper() == "TLS" else 5060)
        return (_bare_host(via.host), port) in self._sent_by

    def _stamp_via(self, request: Request, route: _Route) -> bool:
        """RFC 3261 §18.2.1 ``received`` and RFC 3581 ``rport`` on the top Via, and the address
        responses go to (§18.2.2): the source for rport or TCP, else the source IP and the Via port."""
        via = request.via[0]
        source_ip, source_port = route.addr
        received, rport = via.received, via.rport
        if not _same_ip(via.host, source_ip):
            received = source_ip
        if via.rport is True:
            rport, received = source_port, source_ip
        if (received, rport) != (via.received, via.rport):
            try:
                request.set_top_via(replace(via, received=received, rport=rport))
            except ProtocolError as error:
                self._drop(f"cannot stamp the Via: {error.message}")
                return False
        if route.transport == "udp" and via.rport is not True:
            route.addr = (source_ip, via.port or DEFAULT_PORT)
        elif route.transport == "tcp":
            route.reconnect = (source_ip, via.port or DEFAULT_PORT)
        return True

    def _overloaded(self, request: Request, route: _Route) -> None:
        """Past sip.max_transactions: 503 without a transaction (RFC 3261 §21.5.4, Retry-After)."""
        self._counters.overloaded += 1
        self._counters.last_error = f"sip.max_transactions ({self.config.max_transactions}) reached"
        response = make_response(request, 503, to_tag=self._tag(),
                                 headers=[("Retry-After", "5"), ("Server", self.user_agent)])
        self._transmit(bytes(response), route, None)

    def _answer_malformed(self, error: SipParseError, route: _Route) -> None:
        response = None if error.method == "ACK" else make_error_response(error, to_tag=self._tag())
        if response is None:
            self._drop(error.message)
            return
        c = self._counters
        c.malformed_answered += 1
        c.malformed_by_status[response.status] = c.malformed_by_status.get(response.status, 0) + 1
        c.last_error = error.message
        # The Via of a broken request cannot be trusted: the answer goes back where it came from.
        self._transmit(bytes(response), route, None)

    def _drop(self, reason: str) -> None:
        self._counters.garbage_dropped += 1
        self._counters.last_error = reason

    # -- the transaction layer's events ----------------------------------------------------------

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            layer = self._layer
            while (event := layer.next_event()) is not None:
                if isinstance(event, SendMessage):
                    self._send_event(event)
                elif isinstance(event, RequestReceived):
                    self._on_request(event)
                elif isinstance(event, ResponseReceived):
                    self._deliver(event.response.call_id, event)
                elif isinstance(event, AckReceived):
                    self._deliver(event.request.call_id, event)
                else:
                    route = self._routes.get(event.key)
                    if isinstance(event, TransportError):
                        self._counters.transport_errors += 1
                    if isinstance(event, Timeout | TransportError | Terminated) and route is not None:
                        self._deliver(route.call_id, event, count=False)
                    if isinstance(event, Terminated):
                        self._routes.pop(event.key, None)
        finally:
            self._draining = False
        self._rearm()

    def _send_event(self, event: SendMessage) -> None:
        route = self._routes.get(event.key) if event.key is not None else None
        if route is None:
            self._counters.last_error = f"no route for {event.message!r}"
            self._counters.transport_errors += 1
            return
        if event.retransmission:
            self._counters.retransmissions += 1
        self._transmit(bytes(event.message), route, event.key)

    def _on_request(self, event: RequestReceived) -> None:
        request = event.request
        method = request.method
        call_id = request.call_id
        handler = self._dialogs.get(call_id)
        if method == "OPTIONS":
            if request.to.tag is not None and handler is None:
                self._counters.unroutable += 1
                self._respond(event, 481)
            else:
                self._counters.options_answered += 1
                self._respond(event, 200, headers=[("Allow", self.allow), ("Accept", ", ".join(ACCEPT)),
                                                   ("Accept-Encoding", "identity")])
            return
        if method == "CANCEL":
            invite = self._layer.find_cancelled(request)
            if invite is None:
                self._counters.unroutable += 1
                self._respond(event, 481)
                return
            self._respond(event, 200)
            if handler is not None:
                self._deliver(call_id, event)
            elif invite.final is None:
                # Nobody will answer the INVITE: end it here as §9.2 requires.
                self._layer.send_response(make_response(invite.request, 487, to_tag=self._tag()),
                                          self._now(), key=invite.key)
            return
        if handler is not None:
            self._deliver(call_id, event)
            return
        if method == "INVITE" and request.to.tag is None:
            self._new_call(event)
            return
        self._counters.unroutable += 1
        if method in ALLOW:
            self._respond(event, 481)
        elif method in KNOWN_METHODS:
            self._respond(event, 405, headers=[("Allow", self.allow)])
        else:
            self._respond(event, 501, headers=[("Allow", self.allow)])

    def _new_call(self, event: RequestReceived) -> None:
        handler = None
        if self.on_new_call is not None:
            try:
                handler = self.on_new_call(event)
            except Exception as exc:  # noqa: BLE001 - a failing hook refuses the call, not the endpoint
                self._counters.handler_errors += 1
                log.exception("sip new-call handler raised", error=repr(exc))
        if handler is None:
            self._counters.new_calls_refused += 1
            self._respond(event, 503)
            return
        self._counters.new_calls += 1
        self._dialogs[event.request.call_id] = handler
        self._deliver(event.request.call_id, event)

    def _deliver(self, call_id: str, event: SipEvent, *, count: bool = True) -> None:
        handler = self._dialogs.get(call_id)
        if handler is None:
            if count:
                self._counters.unroutable += 1
            return
        try:
            handler(event)
        except Exception as exc:  # noqa: BLE001 - one call's bug must not take the endpoint down
            self._counters.handler_errors += 1
            self._counters.last_error = f"handler of {call_id}: {exc!r}"
            log.exception("sip dialog handler raised", call_id=call_id)

    def _respond(self, event: RequestReceived, status: int, *,
                 headers: list[tuple[str, str]] | None = None) -> None:
        extra = list(headers or ())
        extra.append(("Server", self.user_agent))
        response = make_response(event.request, status, to_tag=self._tag(), headers=extra)
        self._layer.send_response(response, self._now(), key=event.key)

    # -- sending -----------------------------------------------------------------------------------

    def _transmit(self, data: bytes, route: _Route, key: TransactionKey | None) -> None:
        if route.transport == "udp":
            if self._udp is None:
                return
            self._udp.sendto(data, route.addr)
            self._counters.sent += 1
            return
        conn = route.conn
        if conn is None or conn.closed:
            # §18.2.2: the request's connection is gone: open one to its source address at the
            # port of its Via (a client's own requests: to the same target again).
            conn = route.conn = self._tcp.connection_to(route.reconnect or route.addr)
        if conn is None or not conn.write(data, key):
            self._counters.transport_errors += 1
            self._counters.last_error = f"cannot send over TCP to {route.addr}"
            if key is not None:
                self._layer.transport_error(key, self._now())
            return
        self._counters.sent += 1

    # -- timers ------------------------------------------------------------------------------------

    def _now(self) -> float:
        loop = self._loop
        return loop.time() if loop is not None else time.monotonic()

    def _rearm(self) -> None:
        if self.closed or self._loop is None:
            return
        deadline = self._layer.get_timer()
        if deadline == self._timer_deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_deadline = deadline
        self._timer = None if deadline is None else self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        deadline = self._timer_deadline
        self._timer = None
        self._timer_deadline = None
        if self.closed:
            return
        # The handle fires at its deadline (or a hair before, by the loop's clock resolution).
        now = max(self._now(), deadline or 0.0)
        self._layer.handle_timer(now)
        self._drain()

    # -- helpers -----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise EndpointClosed("the SIP endpoint is closed")
        if not self.started:
            raise EndpointClosed("the SIP endpoint is not started")

    @staticmethod
    def _tag() -> str:
        return secrets.token_hex(5)

    def _count_udp_error(self, exc: Exception) -> None:
        self._counters.udp_errors += 1
        self._counters.last_error = f"udp: {exc!r}"

    def _local_address_towards(self, peer: str | None) -> str:
        key = peer or ""
        cached = self._local_hosts.get(key)
        if cached is not None:
            self._local_hosts.move_to_end(key)
            return cached
        # connect() on a UDP socket sends nothing: it only asks the kernel for the route's source.
        probe = peer if peer and _is_ip(peer) else "192.0.2.1"
        family = socket.AF_INET6 if ":" in probe else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                local = s.getsockname()[0]
        except OSError:
            local = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        self._local_hosts[key] = local
        if len(self._local_hosts) > _ROUTE_CACHE:
            self._local_hosts.popitem(last=False)
        return local
