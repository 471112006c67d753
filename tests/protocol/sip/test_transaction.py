"""The four transaction state machines, driven by hand: exact timer schedules and transitions."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from protocol.sip.message import Request, Response, make_request, make_response
from protocol.sip.timers import TimerConfig, Timers
from protocol.sip.transaction import (
    AckReceived,
    Event,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    Terminated,
    Timeout,
    Transaction,
    TransactionState,
    TransportError,
)

FROM = "Alice <sip:alice@127.0.0.1>;tag=a1"
TO = "<sip:bob@127.0.0.1>"


def request(
    method: str = "INVITE",
    *,
    branch: str = "z9hG4bKtx1",
    transport: str = "UDP",
    cseq: int = 1,
    to_tag: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
) -> Request:
    return make_request(
        method,
        "sip:bob@127.0.0.1:5060",
        headers=[
            ("Via", f"SIP/2.0/{transport} 127.0.0.1:5070;branch={branch}"),
            ("Max-Forwards", "70"),
            ("From", FROM),
            ("To", TO + (f";tag={to_tag}" if to_tag else "")),
            ("Call-ID", "call-1@127.0.0.1"),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", "<sip:alice@127.0.0.1:5070>"),
            *extra,
        ],
    )


def describe(event: Event) -> str:
    match event:
        case SendMessage(message=Request() as m, retransmission=r):
            return f"{'resend' if r else 'send'} {m.method}"
        case SendMessage(message=Response() as m, retransmission=r):
            return f"{'resend' if r else 'send'} {m.status}"
        case ResponseReceived(response=resp):
            return f"tu {resp.status}"
        case RequestReceived(request=req):
            return f"tu {req.method}"
        case AckReceived():
            return "tu ACK"
        case Timeout(timer=name):
            return f"timeout {name}"
        case TransportError():
            return "transport error"
        case Terminated():
            return "terminated"
    raise AssertionError(event)


def drain(t: Transaction) -> list[str]:
    return [describe(e) for e in t.events()]


def run_timers(t: Transaction, until: float, limit: int = 200) -> list[tuple[float, str]]:
    """Fire every timer up to ``until`` exactly at its deadline; (time, event) in order."""
    out: list[tuple[float, str]] = []
    for _ in range(limit):
        deadline = t.get_timer()
        if deadline is None or deadline > until:
            return out
        t.handle_timer(deadline)
        out.extend((deadline, describe(e)) for e in t.events())
    raise AssertionError("timers did not settle")


def times_of(schedule: list[tuple[float, str]], what: str) -> list[float]:
    return [at for at, name in schedule if name == what]


# -- INVITE client --------------------------------------------------------------------------------


def started_invite_client(**kwargs: object) -> InviteClientTransaction:
    req = request()
    t = InviteClientTransaction(req, **kwargs)  # type: ignore[arg-type]
    t.send(req, 0.0)
    assert drain(t) == ["send INVITE"]
    return t


def test_invite_client_udp_retransmits_doubling_without_cap_then_timer_b() -> None:
    t = started_invite_client()
    schedule = run_timers(t, 100.0)
    assert times_of(schedule, "resend INVITE") == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert schedule[-2:] == [(32.0, "timeout B"), (32.0, "terminated")]
    assert t.state is TransactionState.TERMINATED
    assert t.retransmissions == 6
    assert t.get_timer() is None


def test_invite_client_late_timer_keeps_schedule() -> None:
    t = started_invite_client()
    t.handle_timer(0.8)  # the loop woke up 300 ms late
    assert drain(t) == ["resend INVITE"]
    assert t.get_timer() == 1.5
    t.handle_timer(0.9)
    assert drain(t) == []


def test_invite_client_timers_follow_t1() -> None:
    t = started_invite_client(config=TimerConfig(t1=0.1))
    schedule = run_timers(t, 100.0)
    assert times_of(schedule, "resend INVITE") == pytest.approx([0.1, 0.3, 0.7, 1.5, 3.1, 6.3])
    assert times_of(schedule, "timeout B") == pytest.approx([6.4])


def test_invite_client_provisional_stops_retransmissions_and_b() -> None:
    t = started_invite_client()
    t.handle_timer(0.5)
    drain(t)
    assert not t.cancellable  # §9.1: no CANCEL before a provisional response
    t.receive(make_response(t.request, 180, to_tag="b1"), 0.7)
    assert t.cancellable
    assert drain(t) == ["tu 180"]
    assert t.state is TransactionState.PROCEEDING
    assert t.get_timer() is None
    t.receive(make_response(t.request, 183, to_tag="b1"), 2.0)
    assert drain(t) == ["tu 183"]


def test_invite_client_non_2xx_acks_and_waits_timer_d() -> None:
    route = ("Route", "<sip:proxy.example.org;lr>")
    req = request(extra=[route])
    t = InviteClientTransaction(req)
    t.send(req, 0.0)
    drain(t)
    busy = make_response(req, 486, to_tag="b1")
    t.receive(busy, 1.0)
    events = list(t.events())
    assert [describe(e) for e in events] == ["send ACK", "tu 486"]
    ack = events[0].message
    assert isinstance(ack, Request) and ack is t.ack
    # §17.1.1.3: Request-URI, Call-ID, From, CSeq number, top Via and Route of the INVITE;
    # To of the response; no body.
    assert ack.uri == req.uri
    assert ack.get("Via") == req.get("Via")
    assert len(ack.via) == 1
    assert ack.get("From") == req.get("From")
    assert ack.to.tag == "b1"
    assert ack.call_id == req.call_id
    assert (ack.cseq.number, ack.cseq.method) == (1, "ACK")
    assert ack.get_all("Route") == ["<sip:proxy.example.org;lr>"]
    assert ack.body == b"" and ack.get("Content-Length") == "0"
    assert t.state is TransactionState.COMPLETED
    assert t.timer_deadline("D") == 33.0  # 32 s over UDP
    # A retransmitted 486 is answered with the same ACK and not passed up.
    t.receive(busy, 2.0)
    resent = list(t.events())
    assert [describe(e) for e in resent] == ["resend ACK"]
    assert resent[0].message is ack
    assert run_timers(t, 100.0) == [(33.0, "terminated")]


def test_invite_client_over_tcp() -> None:
    req = request(transport="TCP")
    t = InviteClientTransaction(req)
    assert t.reliable
    t.send(req, 0.0)
    drain(t)
    assert t.timer_deadline("A") is None
    assert t.timer_deadline("B") == 32.0
    t.receive(make_response(req, 603, to_tag="x"), 3.0)
    assert drain(t) == ["send ACK", "tu 603", "terminated"]  # D = 0 over TCP


def test_invite_client_reliable_flag_overrides_via() -> None:
    req = request()
    t = InviteClientTransaction(req, reliable=True)
    t.send(req, 0.0)
    assert t.get_timer() == 32.0


def test_invite_client_2xx_goes_to_accepted_and_passes_every_2xx() -> None:
    t = started_invite_client()
    ok = make_response(t.request, 200, to_tag="b1")
    t.receive(ok, 2.0)
    assert drain(t) == ["tu 200"]  # no ACK from the transaction for a 2xx
    assert t.state is TransactionState.ACCEPTED
    assert t.timer_deadline("M") == 34.0  # 64*T1
    t.receive(ok, 2.5)  # retransmission
    t.receive(make_response(t.request, 200, to_tag="b2"), 3.0)  # another fork
    t.receive(make_response(t.request, 180, to_tag="b3"), 3.1)  # late provisional: absorbed
    assert drain(t) == ["tu 200", "tu 200"]
    assert run_timers(t, 100.0) == [(34.0, "terminated")]


def test_invite_client_transport_error() -> None:
    t = started_invite_client()
    t.transport_error(0.1)
    assert drain(t) == ["transport error", "terminated"]


def test_client_send_rules() -> None:
    req = request()
    t = InviteClientTransaction(req)
    with pytest.raises(ValueError):
        t.send(request(), 0.0)  # not the request it was created for
    t.send(req, 0.0)
    with pytest.raises(ValueError):
        t.send(req, 0.1)
    with pytest.raises(ValueError):
        InviteClientTransaction(request("OPTIONS"))
    with pytest.raises(ValueError):
        InviteClientTransaction(request(branch="1234"))  # no magic cookie on our own requests
    with pytest.raises(ValueError):
        NonInviteClientTransaction(request("ACK"))
    with pytest.raises(ValueError):
        NonInviteClientTransaction(request())


# -- non-INVITE client ----------------------------------------------------------------------------


def started_non_invite_client(method: str = "OPTIONS", **kwargs: object) -> NonInviteClientTransaction:
    req = request(method)
    t = NonInviteClientTransaction(req, **kwargs)  # type: ignore[arg-type]
    t.send(req, 0.0)
    assert drain(t) == [f"send {method}"]
    return t


def test_non_invite_client_udp_e_doubles_capped_at_t2_then_f() -> None:
    t = started_non_invite_client()
    schedule = run_timers(t, 100.0)
    resends = times_of(schedule, "resend OPTIONS")
    assert resends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    intervals = [b - a for a, b in zip([0.0, *resends], resends, strict=False)]
    assert intervals == [0.5, 1, 2, 4, 4, 4, 4, 4, 4, 4]
    assert schedule[-2:] == [(32.0, "timeout F"), (32.0, "terminated")]


def test_non_invite_client_e_switches_to_t2_after_provisional() -> None:
    t = started_non_invite_client("REGISTER")
    assert run_timers(t, 0.5) == [(0.5, "resend REGISTER")]
    t.receive(make_response(t.request, 100), 0.6)
    assert drain(t) == ["tu 100"]
    assert t.state is TransactionState.PROCEEDING
    schedule = run_timers(t, 100.0)
    # The pending E (1.5) fires, then every T2; F still ends it at 32.
    assert times_of(schedule, "resend REGISTER") == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert schedule[-2:] == [(32.0, "timeout F"), (32.0, "terminated")]


def test_non_invite_client_final_then_timer_k() -> None:
    t = started_non_invite_client()
    ok = make_response(t.request, 200)
    t.receive(make_response(t.request, 180), 0.2)
    t.receive(ok, 0.3)
    assert drain(t) == ["tu 180", "tu 200"]
    assert t.state is TransactionState.COMPLETED
    t.receive(ok, 0.4)  # absorbed
    t.receive(make_response(t.request, 500), 0.5)  # absorbed
    assert drain(t) == []
    assert t.absorbed == 2
    assert run_timers(t, 100.0) == [(5.3, "terminated")]  # K = T4


def test_non_invite_client_over_tcp() -> None:
    req = request("BYE", transport="TCP")
    t = NonInviteClientTransaction(req)
    t.send(req, 0.0)
    drain(t)
    assert t.timer_deadline("E") is None
    assert t.get_timer() == 32.0
    t.receive(make_response(req, 481), 0.1)
    assert drain(t) == ["tu 481", "terminated"]  # K = 0


def test_non_invite_client_transport_error() -> None:
    t = started_non_invite_client()
    t.transport_error(1.0)
    assert drain(t) == ["transport error", "terminated"]


# -- INVITE server --------------------------------------------------------------------------------


def invite_server(*, transport: str = "UDP", **kwargs: object) -> InviteServerTransaction:
    t = InviteServerTransaction(request(transport=transport), 0.0, **kwargs)  # type: ignore[arg-type]
    assert drain(t) == ["tu INVITE"]
    return t


def test_invite_server_sends_trying_after_200ms_of_silence() -> None:
    req = request(extra=[("Timestamp", "54")])
    t = InviteServerTransaction(req, 10.0, addr=("127.0.0.1", 5070))
    assert drain(t) == ["tu INVITE"]
    assert t.get_timer() == pytest.approx(10.2)
    t.handle_timer(10.2)
    events = list(t.events())
    assert [describe(e) for e in events] == ["send 100"]
    trying = events[0].message
    assert isinstance(trying, Response)
    assert trying.reason == "Trying"
    assert trying.to.tag is None
    assert trying.get("Timestamp") == "54"
    assert events[0].addr == ("127.0.0.1", 5070)
    # A retransmitted INVITE is answered with the last provisional and not passed up.
    t.receive(req, 10.5)
    assert drain(t) == ["resend 100"]


def test_invite_server_no_trying_when_tu_answers_in_time() -> None:
    t = invite_server()
    t.send(make_response(t.request, 180, to_tag="b1"), 0.1)
    assert drain(t) == ["send 180"]
    assert t.timer_deadline("Trying") is None
    assert t.get_timer() is None


@pytest.mark.parametrize(("delay", "expected"), [(0.0, ["tu INVITE", "send 100"]), (None, ["tu INVITE"])])
def test_invite_server_trying_delay_choices(delay: float | None, expected: list[str]) -> None:
    t = InviteServerTransaction(request(), 0.0, config=TimerConfig(trying_delay=delay))
    assert drain(t) == expected
    assert t.get_timer() is None


def test_invite_server_retransmitted_invite_before_any_response_is_absorbed() -> None:
    t = InviteServerTransaction(request(), 0.0, config=TimerConfig(trying_delay=None))
    drain(t)
    t.receive(t.request, 0.1)
    assert drain(t) == []
    assert t.absorbed == 1


def test_invite_server_non_2xx_g_doubles_capped_at_t2_until_h() -> None:
    t = invite_server()
    busy = make_response(t.request, 486, to_tag="b1")
    t.send(busy, 0.0)
    assert drain(t) == ["send 486"]
    assert t.state is TransactionState.COMPLETED
    schedule = run_timers(t, 100.0)
    resends = times_of(schedule, "resend 486")
    assert resends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert schedule[-2:] == [(32.0, "timeout H"), (32.0, "terminated")]


def test_invite_server_ack_confirms_then_timer_i() -> None:
    t = invite_server()
    busy = make_response(t.request, 486, to_tag="b1")
    t.send(busy, 1.0)
    drain(t)
    t.receive(t.request, 1.2)  # retransmitted INVITE: the final again
    assert drain(t) == ["resend 486"]
    ack = request("ACK", cseq=1, to_tag="b1")
    t.receive(ack, 2.0)
    assert drain(t) == []  # the ACK of a non-2xx stays in the transaction
    assert t.state is TransactionState.CONFIRMED and t.acked
    assert t.timer_deadline("G") is None and t.timer_deadline("H") is None
    t.receive(ack, 2.5)
    t.receive(t.request, 2.6)
    assert drain(t) == []
    assert run_timers(t, 100.0) == [(7.0, "terminated")]  # I = T4


def test_invite_server_completed_discards_other_finals() -> None:
    t = invite_server()
    t.send(make_response(t.request, 486, to_tag="b1"), 0.0)
    drain(t)
    t.send(make_response(t.request, 200, to_tag="b1"), 0.1)
    assert drain(t) == []
    assert t.final is not None and t.final.status == 486


def test_invite_server_over_tcp() -> None:
    t = invite_server(transport="TCP")
    t.send(make_response(t.request, 480, to_tag="b1"), 0.0)
    drain(t)
    assert t.timer_deadline("G") is None
    assert t.timer_deadline("H") == 32.0
    t.receive(request("ACK", transport="TCP", to_tag="b1"), 0.1)
    assert drain(t) == ["terminated"]  # I = 0


def test_invite_server_accepted_retransmits_2xx_until_ack() -> None:
    t = invite_server()
    ok = make_response(t.request, 200, to_tag="b1")
    t.send(ok, 1.0)
    assert drain(t) == ["send 200"]
    assert t.state is TransactionState.ACCEPTED
    assert t.timer_deadline("L") == 33.0
    assert run_timers(t, 4.0) == [(1.5, "resend 200"), (2.5, "resend 200")]
    t.receive(t.request, 3.0)  # retransmitted INVITE: absorbed in Accepted
    assert drain(t) == []
    ack = request("ACK", branch="z9hG4bKack1", to_tag="b1")
    t.receive(ack, 3.2)
    events = list(t.events())
    assert [describe(e) for e in events] == ["tu ACK"]
    assert isinstance(events[0], AckReceived) and events[0].request is ack
    assert t.timer_deadline("G") is None
    t.receive(ack, 3.3)  # ACK retransmissions keep going up (RFC 6026: ACK -> TU)
    assert drain(t) == ["tu ACK"]
    assert run_timers(t, 100.0) == [(33.0, "terminated")]


def test_invite_server_accepted_without_ack_reports_timer_l() -> None:
    t = invite_server()
    t.send(make_response(t.request, 200, to_tag="b1"), 0.0)
    drain(t)
    schedule = run_timers(t, 100.0)
    assert times_of(schedule, "resend 200") == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert schedule[-2:] == [(32.0, "timeout L"), (32.0, "terminated")]


def test_invite_server_accepted_sends_tu_2xx_and_survives_transport_error() -> None:
    t = invite_server(transport="TCP")
    ok = make_response(t.request, 200, to_tag="b1")
    t.send(ok, 0.0)
    drain(t)
    t.send(ok, 0.2)
    assert drain(t) == ["send 200"]
    t.transport_error(0.3)
    assert drain(t) == ["transport error"]
    assert t.state is TransactionState.ACCEPTED


def test_invite_server_transport_error_in_proceeding() -> None:
    t = invite_server()
    t.transport_error(0.0)
    assert drain(t) == ["transport error", "terminated"]


def test_server_send_checks() -> None:
    t = invite_server()
    with pytest.raises(TypeError):
        t.send(t.request, 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        t.send(make_response(request("BYE"), 200), 0.0)
    with pytest.raises(TypeError):
        t.receive(make_response(t.request, 200), 0.0)
    with pytest.raises(ValueError):
        InviteServerTransaction(request("BYE"), 0.0)
    with pytest.raises(ValueError):
        NonInviteServerTransaction(request("ACK"), 0.0)


# -- non-INVITE server ----------------------------------------------------------------------------


def test_non_invite_server_udp() -> None:
    t = NonInviteServerTransaction(request("BYE", to_tag="b1"), 0.0)
    assert drain(t) == ["tu BYE"]
    assert t.get_timer() is None  # no 100 Trying for non-INVITE
    t.receive(t.request, 0.1)  # retransmission in Trying: absorbed
    assert drain(t) == []
    t.send(make_response(t.request, 100), 0.2)
    t.receive(t.request, 0.3)  # in Proceeding: the provisional again
    assert drain(t) == ["send 100", "resend 100"]
    ok = make_response(t.request, 200)
    t.send(ok, 1.0)
    assert drain(t) == ["send 200"]
    assert t.state is TransactionState.COMPLETED
    t.receive(t.request, 2.0)
    assert drain(t) == ["resend 200"]
    t.send(make_response(t.request, 500), 2.1)  # discarded
    assert drain(t) == []
    assert run_timers(t, 100.0) == [(33.0, "terminated")]  # J = 64*T1


def test_non_invite_server_over_tcp() -> None:
    t = NonInviteServerTransaction(request("OPTIONS", transport="TCP"), 0.0)
    drain(t)
    t.send(make_response(t.request, 200), 0.5)
    assert drain(t) == ["send 200", "terminated"]  # J = 0


def test_non_invite_server_transport_error() -> None:
    t = NonInviteServerTransaction(request("INFO", to_tag="b1"), 0.0)
    drain(t)
    t.transport_error(0.1)
    assert drain(t) == ["transport error", "terminated"]


# -- tables and timers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls",
    [InviteClientTransaction, NonInviteClientTransaction, InviteServerTransaction,
     NonInviteServerTransaction],
)
def test_every_transition_names_a_handler(cls: type[Transaction]) -> None:
    for (state, _input), handler in cls.TRANSITIONS.items():
        assert state is not TransactionState.TERMINATED
        assert callable(getattr(cls, handler))


def test_timer_config() -> None:
    config = TimerConfig()
    assert (config.t1, config.t2, config.t4, config.transaction_timeout) == (0.5, 4.0, 5.0, 32.0)
    assert (config.d(False), config.d(True)) == (32.0, 0.0)
    assert (config.i(False), config.i(True)) == (5.0, 0.0)
    assert (config.j(False), config.j(True)) == (32.0, 0.0)
    assert (config.k(False), config.k(True)) == (5.0, 0.0)
    with pytest.raises(ValueError):
        TimerConfig(t1=1.0, t2=0.5)
    with pytest.raises(ValueError):
        TimerConfig(trying_delay=-1)


def test_timers_registry() -> None:
    timers = Timers()
    assert timers.earliest() is None and timers.pop_due(10) is None
    timers.arm("B", 32.0)
    timers.arm("A", 0.5)
    assert timers.earliest() == 0.5 and "A" in timers
    assert timers.pop_due(0.4) is None
    assert timers.pop_due(40) == ("A", 0.5)
    timers.cancel("B", "missing")
    assert timers.earliest() is None
