"""SIP transactions, sans-I/O (RFC 3261 §17 as corrected by RFC 6026).

Four state machines — INVITE client, non-INVITE client, INVITE server, non-INVITE server — each
driven by ``receive(message, now)`` (from the network), ``send(message, now)`` (from the TU),
``handle_timer(now)`` and ``transport_error(now)``, and read with ``next_event()`` and
``get_timer()``. Every transition is listed in the class's ``TRANSITIONS`` table
(``(state, input) -> handler``); an input with no entry is absorbed and counted, which is how
retransmissions are swallowed. :class:`TransactionLayer` owns many transactions, routes
messages to them by the §17.1.3/§17.2.3 matching rules and drops (and counts) what matches nothing.

Timer inputs act at the deadline they were armed for, not at the (possibly later) ``now`` they are
handled at, so retransmission schedules stay exact however late the caller's loop wakes up.

Choices where RFC 3261 leaves room:

- The INVITE server transaction sends 100 Trying itself when the TU has not responded within
  ``TimerConfig.trying_delay`` (200 ms; 0 = at once; None = never).
- In the RFC 6026 Accepted state the INVITE server transaction also performs the UAS core's 2xx
  retransmission (§13.3.1.4: T1 doubling to T2, on every transport, timer "G") until the ACK
  arrives. The ACK for a 2xx carries a new branch, so the layer matches it to the transaction by
  Call-ID, CSeq number, From tag and the 2xx's To tag. If Timer L fires before any ACK,
  ``Timeout("L")`` tells the TU to end the session with BYE (§13.3.1.4).
- After a provisional response the INVITE client transaction stops Timer B as well as A (Figure 5:
  B only runs in Calling); the TU bounds ringing with its own timer and CANCEL.
"""

from __future__ import annotations

import abc
import enum
import heapq
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, TypeAlias

from protocol.errors import ProtocolError
from protocol.sip.headers import Via
from protocol.sip.message import Request, Response, make_request, make_response, parse_message
from protocol.sip.timers import TimerConfig, Timers

__all__ = [
    "MAGIC_COOKIE",
    "AckReceived",
    "Address",
    "Event",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "LayerStats",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "RequestReceived",
    "ResponseReceived",
    "SendMessage",
    "Terminated",
    "Timeout",
    "Transaction",
    "TransactionKey",
    "TransactionLayer",
    "TransactionState",
    "TransportError",
    "build_non2xx_ack",
    "client_key",
    "server_key",
]

MAGIC_COOKIE = "z9hG4bK"

Address: TypeAlias = tuple[str, int]
Message: TypeAlias = Request | Response


class TransactionState(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


CALLING = TransactionState.CALLING
TRYING = TransactionState.TRYING
PROCEEDING = TransactionState.PROCEEDING
COMPLETED = TransactionState.COMPLETED
CONFIRMED = TransactionState.CONFIRMED
ACCEPTED = TransactionState.ACCEPTED
TERMINATED = TransactionState.TERMINATED


@dataclass(frozen=True, slots=True)
class TransactionKey:
    """What identifies a transaction.

    RFC 3261 branches: ``branch`` (lowercased) and ``method`` (INVITE for an ACK), plus the top
    Via's ``sent_by`` on the server side. RFC 2543 requests (no magic cookie) get ``branch=""``
    and ``legacy`` = (Request-URI, To tag, From tag, Call-ID, CSeq number, top Via).
    """

    branch: str
    method: str
    sent_by: str | None = None
    legacy: tuple[str, ...] | None = None
    server: bool = False


# -- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Put ``message`` on the wire (to ``addr`` when known; else by the RFC 3261 §18 rules)."""

    message: Request | Response
    addr: Address | None = None
    key: TransactionKey | None = None
    retransmission: bool = False


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    response: Response
    key: TransactionKey


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request for the TU (never a retransmission, never an ACK)."""

    request: Request
    key: TransactionKey
    addr: Address | None = None


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK the TU must see: one for a 2xx (``key`` is the Accepted INVITE server transaction it
    matched, or None when it matched none)."""

    request: Request
    key: TransactionKey | None
    addr: Address | None = None


@dataclass(frozen=True, slots=True)
class Timeout:
    """Timer ``timer`` expired: B/F (no final response), H (no ACK for a non-2xx), L (no ACK for
    a 2xx)."""

    timer: str
    key: TransactionKey


@dataclass(frozen=True, slots=True)
class TransportError:
    key: TransactionKey


@dataclass(frozen=True, slots=True)
class Terminated:
    key: TransactionKey


Event: TypeAlias = (
    SendMessage | ResponseReceived | RequestReceived | AckReceived | Timeout | TransportError
    | Terminated
)


# -- keys -----------------------------------------------------------------------------------------


def _top_via(message: Message) -> Via:
    vias = message.via
    if not vias:
        raise ProtocolError("message without Via")
    return vias[0]


def _is_rfc3261_branch(branch: str | None) -> bool:
    return branch is not None and branch.lower().startswith(MAGIC_COOKIE.lower())


def _sent_by(via: Via) -> str:
    host = via.host.lower()
    return host if via.port is None else f"{host}:{via.port}"


def client_key(message: Message) -> TransactionKey:
    """§17.1.3: the top Via branch and the CSeq method identify a client transaction."""
    via = _top_via(message)
    if not via.branch:
        raise ProtocolError("top Via without branch")
    return TransactionKey(via.branch.lower(), message.cseq.method)


def server_key(request: Request, *, to_tag: str | None = None) -> TransactionKey:
    """§17.2.3 key of the server transaction a request belongs to (ACK maps to INVITE).

    ``to_tag`` overrides the request's To tag in an RFC 2543 key: an ACK to a non-2xx carries
    the tag of the response, the INVITE it acknowledges did not.
    """
    via = _top_via(request)
    method = "INVITE" if request.method == "ACK" else request.method
    if _is_rfc3261_branch(via.branch):
        return TransactionKey(via.branch.lower(), method, _sent_by(via), server=True)
    tag = request.to.tag if to_tag is None else to_tag
    legacy = (
        str(request.uri),
        tag or "",
        request.from_.tag or "",
        request.call_id,
        str(request.cseq.number),
        str(via),
    )
    return TransactionKey("", method, _sent_by(via), legacy, server=True)


def _reliable_transport(message: Message) -> bool:
    """Every SIP transport but UDP (TCP, TLS, SCTP, WS, WSS) delivers reliably."""
    return _top_via(message).transport.upper() != "UDP"


def build_non2xx_ack(request: Request, response: Response) -> Request:
    """The ACK an INVITE client transaction sends for a 300-699 (§17.1.1.3): Request-URI, Call-ID,
    From, CSeq number, top Via and Route of the INVITE; To of the response."""
    top_via = request.get("Via")
    if top_via is None:
        raise ProtocolError("INVITE without Via")
    # The header texts are copied as received so the ACK echoes them byte for byte.
    headers: list[tuple[str, str]] = [
        ("Via", top_via),
        ("Max-Forwards", "70"),
        ("From", request.get("From") or str(request.from_)),
        ("To", response.get("To") or str(response.to)),
        ("Call-ID", request.call_id),
        ("CSeq", f"{request.cseq.number} ACK"),
    ]
    headers.extend(("Route", value) for value in request.get_all("Route"))
    return make_request("ACK", request.uri, headers=headers)


def _response_input(status: int) -> str:
    if status < 200:
        return "1xx"
    if status < 300:
        return "2xx"
    return "300-699"


# -- the state machines ---------------------------------------------------------------------------


class Transaction(abc.ABC):
    """Common machinery: events, timers, the transition table dispatch."""

    TRANSITIONS: ClassVar[Mapping[tuple[TransactionState, str], str]] = {}
    INITIAL: ClassVar[TransactionState]

    __slots__ = (
        "key",
        "request",
        "reliable",
        "addr",
        "state",
        "config",
        "retransmissions",
        "absorbed",
        "_timers",
        "_intervals",
        "_events",
    )

    def __init__(
        self,
        request: Request,
        key: TransactionKey,
        *,
        reliable: bool,
        config: TimerConfig,
        addr: Address | None,
    ) -> None:
        self.key = key
        self.request = request
        self.reliable = reliable
        self.addr = addr
        self.state = self.INITIAL
        self.config = config
        self.retransmissions = 0
        self.absorbed = 0
        self._timers = Timers()
        self._intervals: dict[str, float] = {}
        self._events: deque[Event] = deque()

    # -- public surface ---------------------------------------------------------------------------

    @property
    def terminated(self) -> bool:
        return self.state is TERMINATED

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[Event]:
        """Drain the pending events."""
        while self._events:
            yield self._events.popleft()

    def get_timer(self) -> float | None:
        return self._timers.earliest()

    def timer_deadline(self, name: str) -> float | None:
        return self._timers.deadline(name)

    def handle_timer(self, now: float) -> None:
        while self.state is not TERMINATED:
            due = self._timers.pop_due(now)
            if due is None:
                return
            name, deadline = due
            self._input(f"timer {name}", deadline, None)

    def transport_error(self, now: float) -> None:
        self._input("transport error", now, None)

    @abc.abstractmethod
    def receive(self, message: Message, now: float) -> None:
        """A message from the network that matched this transaction."""

    @abc.abstractmethod
    def send(self, message: Message, now: float) -> None:
        """A message from the TU."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key.method} {self.key.branch!r}, {self.state.value})"

    # -- helpers for the handlers -----------------------------------------------------------------

    def _input(self, name: str, now: float, message: Message | None) -> bool:
        handler = self.TRANSITIONS.get((self.state, name))
        if handler is None:
            self.absorbed += 1
            return False
        getattr(self, handler)(now, message)
        return True

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _transmit(self, message: Message, *, retransmission: bool = False) -> None:
        if retransmission:
            self.retransmissions += 1
        self._emit(SendMessage(message, self.addr, self.key, retransmission))

    def _arm_retransmit(self, name: str, now: float, interval: float) -> None:
        self._intervals[name] = interval
        self._timers.arm(name, now + interval)

    def _doubled(self, name: str) -> float:
        return self._intervals[name] * 2

    def _linger(self, name: str, now: float, delay: float) -> None:
        """Arm the wait-in-Completed/Confirmed timer; a zero wait terminates at once."""
        if delay <= 0:
            self._terminate(now, None)
        else:
            self._timers.arm(name, now + delay)

    def _terminate(self, now: float, message: Message | None) -> None:
        self._timers.clear()
        self.state = TERMINATED
        self._emit(Terminated(self.key))

    def _transport_failed(self, now: float, message: Message | None) -> None:
        self._emit(TransportError(self.key))
        self._terminate(now, None)


class _ClientTransaction(Transaction):
    __slots__ = ("_started",)

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool | None = None,
        config: TimerConfig | None = None,
        addr: Address | None = None,
    ) -> None:
        if request.method == "ACK":
            raise ValueError("ACK does not start a client transaction")
        if not _is_rfc3261_branch(_top_via(request).branch):
            raise ValueError("a client transaction needs a top Via branch with the magic cookie")
        super().__init__(
            request,
            client_key(request),
            reliable=_reliable_transport(request) if reliable is None else reliable,
            config=config or TimerConfig(),
            addr=addr,
        )
        self._started = False

    def send(self, message: Message, now: float) -> None:
        """Start the transaction: ``message`` is the request it was created for."""
        if message is not self.request:
            raise ValueError("a client transaction sends only the request it was created for")
        if self._started:
            raise ValueError("request already sent")
        self._started = True
        self._input("send", now, message)

    def receive(self, message: Message, now: float) -> None:
        if not isinstance(message, Response):
            raise TypeError("client transactions receive responses")
        self._input(_response_input(message.status), now, message)

    def _pass_response(self, now: float, message: Message | None) -> None:
        assert isinstance(message, Response)
        self._emit(ResponseReceived(message, self.key))


class InviteClientTransaction(_ClientTransaction):
    """Figure 5 of RFC 3261 with the Accepted state of RFC 6026 §7.2."""

    INITIAL = CALLING
    TRANSITIONS = {
        (CALLING, "send"): "_start",
        (CALLING, "timer A"): "_retransmit",
        (CALLING, "timer B"): "_timeout",
        (CALLING, "1xx"): "_provisional",
        (PROCEEDING, "1xx"): "_provisional",
        (CALLING, "2xx"): "_accept",
        (PROCEEDING, "2xx"): "_accept",
        (CALLING, "300-699"): "_reject",
        (PROCEEDING, "300-699"): "_reject",
        (COMPLETED, "300-699"): "_resend_ack",
        (COMPLETED, "timer D"): "_terminate",
        (ACCEPTED, "2xx"): "_pass_response",
        (ACCEPTED, "timer M"): "_terminate",
        (CALLING, "transport error"): "_transport_failed",
        (PROCEEDING, "transport error"): "_transport_failed",
        (COMPLETED, "transport error"): "_transport_failed",
    }
    __slots__ = ("ack",)

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool | None = None,
        config: TimerConfig | None = None,
        addr: Address | None = None,
    ) -> None:
        if request.method != "INVITE":
            raise ValueError("InviteClientTransaction is for INVITE")
        super().__init__(request, reliable=reliable, config=config, addr=addr)
        self.ack: Request | None = None

    @property
    def cancellable(self) -> bool:
        """Whether a CANCEL may go out now: §9.1 waits for a provisional response first."""
        return self.state is PROCEEDING

    def _start(self, now: float, message: Message | None) -> None:
        self._transmit(self.request)
        if not self.reliable:
            self._arm_retransmit("A", now, self.config.t1)
        self._timers.arm("B", now + self.config.transaction_timeout)

    def _retransmit(self, now: float, message: Message | None) -> None:
        self._transmit(self.request, retransmission=True)
        self._arm_retransmit("A", now, self._doubled("A"))

    def _timeout(self, now: float, message: Message | None) -> None:
        self._emit(Timeout("B", self.key))
        self._terminate(now, None)

    def _provisional(self, now: float, message: Message | None) -> None:
        self._timers.cancel("A", "B")
        self.state = PROCEEDING
        self._pass_response(now, message)

    def _accept(self, now: float, message: Message | None) -> None:
        self._timers.cancel("A", "B")
        self.state = ACCEPTED
        self._timers.arm("M", now + self.config.transaction_timeout)
        self._pass_response(now, message)

    def _reject(self, now: float, message: Message | None) -> None:
        assert isinstance(message, Response)
        self._timers.cancel("A", "B")
        self.state = COMPLETED
        self.ack = build_non2xx_ack(self.request, message)
        self._transmit(self.ack)
        self._pass_response(now, message)
        self._linger("D", now, self.config.d(self.reliable))

    def _resend_ack(self, now: float, message: Message | None) -> None:
        assert self.ack is not None
        self._transmit(self.ack, retransmission=True)


class NonInviteClientTransaction(_ClientTransaction):
    """Figure 6 of RFC 3261."""

    INITIAL = TRYING
    TRANSITIONS = {
        (TRYING, "send"): "_start",
        (TRYING, "timer E"): "_retransmit_trying",
        (PROCEEDING, "timer E"): "_retransmit_proceeding",
        (TRYING, "timer F"): "_timeout",
        (PROCEEDING, "timer F"): "_timeout",
        (TRYING, "1xx"): "_provisional",
        (PROCEEDING, "1xx"): "_provisional",
        (TRYING, "2xx"): "_final",
        (PROCEEDING, "2xx"): "_final",
        (TRYING, "300-699"): "_final",
        (PROCEEDING, "300-699"): "_final",
        (COMPLETED, "timer K"): "_terminate",
        (TRYING, "transport error"): "_transport_failed",
        (PROCEEDING, "transport error"): "_transport_failed",
    }
    __slots__ = ()

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool | None = None,
        config: TimerConfig | None = None,
        addr: Address | None = None,
    ) -> None:
        if request.method == "INVITE":
            raise ValueError("NonInviteClientTransaction is not for INVITE")
        super().__init__(request, reliable=reliable, config=config, addr=addr)

    def _start(self, now: float, message: Message | None) -> None:
        self._transmit(self.request)
        if not self.reliable:
            self._arm_retransmit("E", now, self.config.t1)
        self._timers.arm("F", now + self.config.transaction_timeout)

    def _retransmit_trying(self, now: float, message: Message | None) -> None:
        self._transmit(self.request, retransmission=True)
        self._arm_retransmit("E", now, min(self._doubled("E"), self.config.t2))

    def _retransmit_proceeding(self, now: float, message: Message | None) -> None:
        self._transmit(self.request, retransmission=True)
        self._arm_retransmit("E", now, self.config.t2)

    def _timeout(self, now: float, message: Message | None) -> None:
        self._emit(Timeout("F", self.key))
        self._terminate(now, None)

    def _provisional(self, now: float, message: Message | None) -> None:
        self.state = PROCEEDING
        self._pass_response(now, message)

    def _final(self, now: float, message: Message | None) -> None:
        self._timers.cancel("E", "F")
        self.state = COMPLETED
        self._pass_response(now, message)
        self._linger("K", now, self.config.k(self.reliable))


class _ServerTransaction(Transaction):
    __slots__ = ("last_provisional", "final")

    def __init__(
        self,
        request: Request,
        now: float,
        *,
        key: TransactionKey | None = None,
        reliable: bool | None = None,
        config: TimerConfig | None = None,
        addr: Address | None = None,
    ) -> None:
        super().__init__(
            request,
            server_key(request) if key is None else key,
            reliable=_reliable_transport(request) if reliable is None else reliable,
            config=config or TimerConfig(),
            addr=addr,
        )
        self.last_provisional: Response | None = None
        self.final: Response | None = None
        self._emit(RequestReceived(request, self.key, addr))

    def receive(self, message: Message, now: float) -> None:
        if not isinstance(message, Request):
            raise TypeError("server transactions receive requests")
        self._input("ACK" if message.method == "ACK" else "request", now, message)

    def send(self, message: Message, now: float) -> None:
        """Send a response from the TU. Responses the state no longer accepts are discarded
        (§17.2.1: "any other final responses passed by the TU ... MUST be discarded")."""
        if not isinstance(message, Response):
            raise TypeError("server transactions send responses")
        if message.cseq.method != self.request.method:
            raise ValueError(
                f"response for {message.cseq.method} sent to a {self.request.method} transaction"
            )
        self._input("tu " + _response_input(message.status), now, message)

    def _resend_provisional(self, now: float, message: Message | None) -> None:
        if self.last_provisional is not None:
            self._transmit(self.last_provisional, retransmission=True)
        else:
            self.absorbed += 1

    def _resend_final(self, now: float, message: Message | None) -> None:
        assert self.final is not None
        self._transmit(self.final, retransmission=True)

    def _absorb(self, now: float, message: Message | None) -> None:
        self.absorbed += 1


class InviteServerTransaction(_ServerTransaction):
    """Figure 7 of RFC 3261 with the Accepted state of RFC 6026 §7.1."""

    INITIAL = PROCEEDING
    TRANSITIONS = {
        (PROCEEDING, "timer Trying"): "_send_trying",
        (PROCEEDING, "request"): "_resend_provisional",
        (PROCEEDING, "tu 1xx"): "_provisional",
        (PROCEEDING, "tu 2xx"): "_accept",
        (PROCEEDING, "tu 300-699"): "_reject",
        (PROCEEDING, "transport error"): "_transport_failed",
        (COMPLETED, "request"): "_resend_final",
        (COMPLETED, "timer G"): "_retransmit_final",
        (COMPLETED, "ACK"): "_confirm",
        (COMPLETED, "timer H"): "_timeout",
        (COMPLETED, "transport error"): "_transport_failed",
        (CONFIRMED, "ACK"): "_absorb",
        (CONFIRMED, "request"): "_absorb",
        (CONFIRMED, "timer I"): "_terminate",
        (ACCEPTED, "request"): "_absorb",
        (ACCEPTED, "ACK"): "_ack_2xx",
        (ACCEPTED, "tu 2xx"): "_send_2xx",
        (ACCEPTED, "timer G"): "_retransmit_final",
        (ACCEPTED, "timer L"): "_accepted_over",
        (ACCEPTED, "transport error"): "_report_transport_error",
    }
    __slots__ = ("acked",)

    def __init__(
        self,
        request: Request,
        now: float,
        *,
        key: TransactionKey | None = None,
        reliable: bool | None = None,
        config: TimerConfig | None = None,
        addr: Address | None = None,
    ) -> None:
        if request.method != "INVITE":
            raise ValueError("InviteServerTransaction is for INVITE")
        super().__init__(request, now, key=key, reliable=reliable, config=config, addr=addr)
        self.acked = False
        delay = self.config.trying_delay
        if delay == 0:
            self._send_trying(now, None)
        elif delay is not None:
            self._timers.arm("Trying", now + delay)

    def _send_trying(self, now: float, message: Message | None) -> None:
        trying = make_response(self.request, 100, "Trying")
        self.last_provisional = trying
        self._transmit(trying)

    def _provisional(self, now: float, message: Message | None) -> None:
        assert isinstance(message, Response)
        self._timers.cancel("Trying")
        self.last_provisional = message
        self._transmit(message)

    def _accept(self, now: float, message: Message | None) -> None:
        assert isinstance(message, Response)
        self._timers.cancel("Trying")
        self.state = ACCEPTED
        self.final = message
        self._transmit(message)
        self._arm_retransmit("G", now, self.config.t1)
        self._timers.arm("L", now + self.config.transaction_timeout)

    def _reject(self, now: float, message: Message | None) -> None:
        assert isinstance(message, Response)
        self._timers.cancel("Trying")
        self.state = COMPLETED
        self.final = message
        self._transmit(message)
        if not self.reliable:
            self._arm_retransmit("G", now, self.config.t1)
        self._timers.arm("H", now + self.config.transaction_timeout)

    def _retransmit_final(self, now: float, message: Message | None) -> None:
        assert self.final is not None
        self._transmit(self.final, retransmission=True)
        self._arm_retransmit("G", now, min(self._doubled("G"), self.config.t2))

    def _confirm(self, now: float, message: Message | None) -> None:
        self._timers.cancel("G", "H")
        self.state = CONFIRMED
        self.acked = True
        self._linger("I", now, self.config.i(self.reliable))

    def _timeout(self, now: float, message: Message | None) -> None:
        self._emit(Timeout("H", self.key))
        self._terminate(now, None)

    def _ack_2xx(self, now: float, message: Message | None) -> None:
        assert isinstance(message, Request)
        self._timers.cancel("G")
        self.acked = True
        self._emit(AckReceived(message, self.key, self.addr))

    def _send_2xx(self, now: float, message: Message | None) -> None:
        assert isinstance(message, Response)
        self.final = message
        self._transmit(message)

    def _accepted_over(self, now: float, message: Message | None) -> None:
        if not self.acked:
            self._emit(Timeout("L", self.key))
        self._terminate(now, None)

    def _report_transport_error(self, now: float, message: Message | None) -> None:
        # The 2xx is retransmitted until Timer L; one failed send does not end the transaction.
        self._emit(TransportError(self.key))


class NonInviteServerTransaction(_ServerTransaction):
    """Figure 8 of RFC 3261."""

    INITIAL = TRYING
    TRANSITIONS = {
        (TRYING, "request"): "_absorb",
        (TRYING, "tu 1xx"): "_provisional",
        (PROCEEDING, "tu 1xx"): "_provisional",
        (TRYING, "tu 2xx"): "_final",
        (TRYING, "tu 300-699"): "_final",
        (PROCEEDING, "tu 2xx"): "_final",
        (PROCEEDING, "tu 300-699"): "_final",
        (PROCEEDING, "request"): "_resend_provisional",
        (COMPLETED, "request"): "_resend_final",
        (COMPLETED, "timer J"): "_terminate",
        (TRYING, "transport error"): "_transport_failed",
        (PROCEEDING, "transport error"): "_transport_failed",
        (COMPLETED, "transport error"): "_transport_failed",
    }
    __slots__ = ()

    def __init__(
        self,
        request: Request,
        now: float,
        *,
        key: TransactionKey | None = None,
        reliable: bool | None = None,
        config: TimerConfig | None = None,
        addr: Address | None = None,
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise ValueError(f"NonInviteServerTransaction is not for {request.method}")
        super().__init__(request, now, key=key, reliable=reliable, config=config, addr=addr)

    def _provisional(self, now: float, message: Message | None) -> None:
        assert isinstance(message, Response)
        self.state = PROCEEDING
        self.last_provisional = message
        self._transmit(message)

    def _final(self, now: float, message: Message | None) -> None:
        assert isinstance(message, Response)
        self.state = COMPLETED
        self.final = message
        self._transmit(message)
        self._linger("J", now, self.config.j(self.reliable))


# -- the layer ------------------------------------------------------------------------------------


@dataclass(slots=True)
class LayerStats:
    """Counters of what the layer received and what it dropped."""

    requests: int = 0
    responses: int = 0
    malformed: int = 0
    stray_responses: int = 0
    retransmissions_absorbed: int = 0
    last_error: str | None = field(default=None, repr=False)


def _default_random(n: int) -> bytes:
    return os.urandom(n)


class TransactionLayer:
    """Many transactions behind one sans-I/O surface.

    ``receive`` takes bytes (parsed here; datagram transports) or a parsed message (stream
    transports parse with ``StreamParser``); malformed input and responses that match no
    client transaction (RFC 6026 §8.4) are dropped and counted in ``stats``. Events of every
    transaction come out of ``next_event`` in order; terminated transactions are forgotten.
    """

    __slots__ = (
        "config",
        "stats",
        "_random",
        "_transactions",
        "_legacy",
        "_accepted",
        "_accepted_ids",
        "_events",
        "_heap",
        "_seq",
    )

    def __init__(
        self,
        *,
        config: TimerConfig | None = None,
        random_bytes: Callable[[int], bytes] = _default_random,
    ) -> None:
        self.config = config or TimerConfig()
        self.stats = LayerStats()
        self._random = random_bytes
        self._transactions: dict[TransactionKey, Transaction] = {}
        # RFC 2543 INVITE server transactions by (Call-ID, CSeq number, From tag), for the ACK
        # whose To tag differs from the INVITE's.
        self._legacy: dict[tuple[str, int, str], list[TransactionKey]] = {}
        # Accepted INVITE server transactions by (Call-ID, CSeq number, From tag, To tag of 2xx).
        self._accepted: dict[tuple[str, int, str, str], TransactionKey] = {}
        self._accepted_ids: dict[TransactionKey, set[tuple[str, int, str, str]]] = {}
        self._events: deque[Event] = deque()
        self._heap: list[tuple[float, int, TransactionKey]] = []
        self._seq = itertools.count()

    # -- TU side ----------------------------------------------------------------------------------

    def new_branch(self) -> str:
        """A fresh RFC 3261 branch: the magic cookie and 64 random bits."""
        return MAGIC_COOKIE + self._random(8).hex()

    def send_request(
        self,
        request: Request,
        now: float,
        *,
        addr: Address | None = None,
        reliable: bool | None = None,
    ) -> TransactionKey:
        """Start a client transaction for ``request`` (its top Via must carry a fresh branch)."""
        cls = InviteClientTransaction if request.method == "INVITE" else NonInviteClientTransaction
        transaction = cls(request, reliable=reliable, config=self.config, addr=addr)
        if transaction.key in self._transactions:
            raise ValueError(f"a transaction with branch {transaction.key.branch} exists")
        self._transactions[transaction.key] = transaction
        transaction.send(request, now)
        self._collect(transaction)
        return transaction.key

    def send_response(
        self, response: Response, now: float, *, key: TransactionKey | None = None
    ) -> None:
        """Hand a response to its server transaction (found from ``key``, or from the response's
        Via and CSeq, which §8.2.6 copies from the request). LookupError when none exists."""
        if key is None:
            via = _top_via(response)
            if not _is_rfc3261_branch(via.branch):
                raise LookupError("responses to RFC 2543 requests need the transaction key")
            key = TransactionKey(
                via.branch.lower(), response.cseq.method, _sent_by(via), server=True
            )
        transaction = self._transactions.get(key)
        if transaction is None:
            raise LookupError(f"no server transaction {key}")
        transaction.send(response, now)
        if (
            isinstance(transaction, InviteServerTransaction)
            and transaction.state is ACCEPTED
            and 200 <= response.status < 300
        ):
            request = transaction.request
            dialog_id = (
                request.call_id, request.cseq.number, request.from_.tag or "",
                response.to.tag or "",
            )
            self._accepted[dialog_id] = key
            self._accepted_ids.setdefault(key, set()).add(dialog_id)
        self._collect(transaction)

    def send_stateless(self, message: Message, *, addr: Address | None = None) -> None:
        """Pass a message straight to the transport (the ACK for a 2xx, §13.2.2.4)."""
        self._events.append(SendMessage(message, addr))

    def transport_error(self, key: TransactionKey, now: float) -> None:
        transaction = self._transactions.get(key)
        if transaction is not None:
            transaction.transport_error(now)
            self._collect(transaction)

    def get(self, key: TransactionKey) -> Transaction | None:
        return self._transactions.get(key)

    def find_cancelled(self, cancel: Request) -> InviteServerTransaction | None:
        """The INVITE server transaction a CANCEL targets (§9.2: §17.2.3 matching, as INVITE)."""
        try:
            via = _top_via(cancel)
            if _is_rfc3261_branch(via.branch):
                key = TransactionKey(via.branch.lower(), "INVITE", _sent_by(via), server=True)
            else:
                key = server_key(cancel)
                key = TransactionKey("", "INVITE", key.sent_by, key.legacy, server=True)
        except ProtocolError:
            return None
        transaction = self._transactions.get(key)
        return transaction if isinstance(transaction, InviteServerTransaction) else None

    def __len__(self) -> int:
        return len(self._transactions)

    def __iter__(self) -> Iterator[Transaction]:
        return iter(list(self._transactions.values()))

    # -- network side -----------------------------------------------------------------------------

    def receive(
        self,
        data: bytes | Request | Response,
        now: float,
        addr: Address | None = None,
        *,
        reliable: bool | None = None,
    ) -> None:
        if isinstance(data, (bytes, bytearray, memoryview)):
            try:
                message = parse_message(bytes(data))
            except ProtocolError as exc:
                self._malformed(exc)
                return
        else:
            message = data
        try:
            if isinstance(message, Response):
                self._receive_response(message, now)
            else:
                self._receive_request(message, now, addr, reliable)
        except ProtocolError as exc:
            self._malformed(exc)

    def _malformed(self, exc: ProtocolError) -> None:
        self.stats.malformed += 1
        self.stats.last_error = exc.message

    @staticmethod
    def _check(message: Message) -> None:
        """The headers transactions and dialogs rely on; the typed views raise on bad values."""
        _top_via(message)
        cseq = message.cseq
        message.call_id  # noqa: B018 - parsing is the check
        message.from_  # noqa: B018
        message.to  # noqa: B018
        if isinstance(message, Request) and cseq.method != message.method:
            raise ProtocolError(f"CSeq method {cseq.method} does not match {message.method}")

    def _receive_response(self, response: Response, now: float) -> None:
        self._check(response)
        self.stats.responses += 1
        transaction = self._transactions.get(client_key(response))
        if transaction is None:
            self.stats.stray_responses += 1
            return
        transaction.receive(response, now)
        self._collect(transaction)

    def _receive_request(
        self, request: Request, now: float, addr: Address | None, reliable: bool | None
    ) -> None:
        self._check(request)
        self.stats.requests += 1
        if request.method == "ACK":
            self._receive_ack(request, now, addr)
            return
        key = server_key(request)
        transaction = self._transactions.get(key)
        if transaction is not None:
            absorbed = transaction.absorbed
            transaction.receive(request, now)
            self.stats.retransmissions_absorbed += transaction.absorbed - absorbed
            self._collect(transaction)
            return
        cls = InviteServerTransaction if request.method == "INVITE" else NonInviteServerTransaction
        transaction = cls(request, now, key=key, reliable=reliable, config=self.config, addr=addr)
        self._transactions[key] = transaction
        if key.legacy is not None and request.method == "INVITE":
            index = (request.call_id, request.cseq.number, request.from_.tag or "")
            self._legacy.setdefault(index, []).append(key)
        self._collect(transaction)

    def _receive_ack(self, ack: Request, now: float, addr: Address | None) -> None:
        transaction = self._match_ack(ack)
        if transaction is None:
            self._events.append(AckReceived(ack, None, addr))
            return
        absorbed = transaction.absorbed
        transaction.receive(ack, now)
        self.stats.retransmissions_absorbed += transaction.absorbed - absorbed
        self._collect(transaction)

    def _match_ack(self, ack: Request) -> Transaction | None:
        key = server_key(ack)
        if key.legacy is None:
            found = self._transactions.get(key)
            if found is not None:
                return found
        else:
            # §17.2.3 for RFC 2543: everything of the INVITE but the To tag, which must be the
            # one of the response the transaction sent.
            index = (ack.call_id, ack.cseq.number, ack.from_.tag or "")
            for candidate_key in self._legacy.get(index, ()):
                candidate = self._transactions.get(candidate_key)
                if not isinstance(candidate, InviteServerTransaction):
                    continue
                invite_key = server_key(ack, to_tag=candidate.request.to.tag or "")
                if invite_key != candidate_key:
                    continue
                sent = candidate.final
                if sent is not None and (sent.to.tag or "") == (ack.to.tag or ""):
                    return candidate
        accepted = self._accepted.get(
            (ack.call_id, ack.cseq.number, ack.from_.tag or "", ack.to.tag or "")
        )
        return self._transactions.get(accepted) if accepted is not None else None

    # -- events and timers ------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[Event]:
        while self._events:
            yield self._events.popleft()

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap:
            deadline, _, key = heap[0]
            transaction = self._transactions.get(key)
            if transaction is not None and transaction.get_timer() == deadline:
                return deadline
            heapq.heappop(heap)  # stale entry: the transaction moved on or is gone
        return None

    def handle_timer(self, now: float) -> None:
        while True:
            deadline = self.get_timer()
            if deadline is None or deadline > now:
                return
            _, _, key = heapq.heappop(self._heap)
            transaction = self._transactions[key]
            transaction.handle_timer(now)
            self._collect(transaction)

    def _collect(self, transaction: Transaction) -> None:
        self._events.extend(transaction.events())
        if transaction.terminated:
            self._forget(transaction)
            return
        deadline = transaction.get_timer()
        if deadline is not None:
            heapq.heappush(self._heap, (deadline, next(self._seq), transaction.key))

    def _forget(self, transaction: Transaction) -> None:
        key = transaction.key
        self._transactions.pop(key, None)
        if key.legacy is not None:
            request = transaction.request
            index = (request.call_id, request.cseq.number, request.from_.tag or "")
            keys = self._legacy.get(index)
            if keys is not None and key in keys:
                keys.remove(key)
                if not keys:
                    del self._legacy[index]
        for dialog_id in self._accepted_ids.pop(key, ()):
            self._accepted.pop(dialog_id, None)
