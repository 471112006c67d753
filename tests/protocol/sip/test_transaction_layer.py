"""TransactionLayer: matching (§17.1.3, §17.2.3, RFC 2543), stray and malformed input, timers."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from protocol.sip.message import Request, Response, make_request, make_response
from protocol.sip.timers import TimerConfig
from protocol.sip.transaction import (
    AckReceived,
    Event,
    InviteServerTransaction,
    NonInviteServerTransaction,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    Terminated,
    Timeout,
    TransactionKey,
    TransactionLayer,
    TransactionState,
    TransportError,
    server_key,
)


def request(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bKlay1",
    sent_by: str = "127.0.0.1:5070",
    transport: str = "UDP",
    cseq: int = 1,
    to_tag: str | None = None,
    from_tag: str = "a1",
    call_id: str = "call-1@127.0.0.1",
    uri: str = "sip:bob@127.0.0.1:5060",
    extra: Iterable[tuple[str, str]] = (),
) -> Request:
    via = f"SIP/2.0/{transport} {sent_by}" + (f";branch={branch}" if branch else "")
    return make_request(
        method,
        uri,
        headers=[
            ("Via", via),
            ("Max-Forwards", "70"),
            ("From", f"<sip:alice@127.0.0.1>;tag={from_tag}"),
            ("To", "<sip:bob@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"),
            *extra,
        ],
    )


def counting_random() -> object:
    counter = iter(range(1000))

    def random_bytes(n: int) -> bytes:
        start = next(counter) * n
        return bytes((start + i) % 256 for i in range(n))

    return random_bytes


def layer(**kwargs: object) -> TransactionLayer:
    return TransactionLayer(random_bytes=counting_random(), **kwargs)  # type: ignore[arg-type]


def events(layer: TransactionLayer) -> list[Event]:
    return list(layer.events())


def kinds(evs: list[Event]) -> list[str]:
    out = []
    for e in evs:
        match e:
            case SendMessage(message=Request() as m):
                out.append(f"send {m.method}")
            case SendMessage(message=Response() as m):
                out.append(f"send {m.status}")
            case ResponseReceived(response=r):
                out.append(f"tu {r.status}")
            case RequestReceived(request=r):
                out.append(f"tu {r.method}")
            case AckReceived(key=k):
                out.append("tu ACK" if k is not None else "tu stray ACK")
            case Timeout(timer=n):
                out.append(f"timeout {n}")
            case TransportError():
                out.append("transport error")
            case Terminated():
                out.append("terminated")
    return out


# -- client side ----------------------------------------------------------------------------------


def test_new_branch_uses_the_injected_random_source() -> None:
    tl = layer()
    assert tl.new_branch() == "z9hG4bK0001020304050607"
    assert tl.new_branch() == "z9hG4bK08090a0b0c0d0e0f"


def test_responses_match_by_branch_and_cseq_method() -> None:
    tl = layer()
    invite = request()
    invite_key = tl.send_request(invite, 0.0, addr=("127.0.0.1", 5060))
    first = events(tl)
    assert kinds(first) == ["send INVITE"]
    assert first[0].addr == ("127.0.0.1", 5060)
    # CANCEL shares the INVITE's branch but is its own transaction (§9.1, §17.1.3).
    cancel = request("CANCEL")
    cancel_key = tl.send_request(cancel, 0.1)
    assert cancel_key != invite_key
    assert len(tl) == 2
    tl.receive(make_response(cancel, 200), 0.2)
    tl.receive(make_response(invite, 487, to_tag="b1"), 0.3)
    evs = events(tl)
    assert kinds(evs) == ["send CANCEL", "tu 200", "send ACK", "tu 487"]
    assert [e.key for e in evs if isinstance(e, ResponseReceived)] == [cancel_key, invite_key]
    assert tl.stats.responses == 2 and tl.stats.stray_responses == 0


def test_stray_responses_are_dropped_and_counted() -> None:
    tl = layer()
    tl.send_request(request("OPTIONS"), 0.0)
    events(tl)
    tl.receive(make_response(request("OPTIONS", branch="z9hG4bKother"), 200), 0.1)
    tl.receive(make_response(request("INFO"), 200), 0.1)  # same branch, other method
    assert events(tl) == []
    assert tl.stats.stray_responses == 2


@pytest.mark.parametrize(
    "data",
    [
        b"garbage\r\n\r\n",
        b"",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",  # mandatory headers missing
        bytes(request("OPTIONS")).replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INFO"),
    ],
)
def test_malformed_input_is_dropped_and_counted(data: bytes) -> None:
    tl = layer()
    tl.receive(data, 0.0)
    assert events(tl) == []
    assert tl.stats.malformed == 1
    assert tl.stats.last_error


def test_malformed_parsed_message_is_dropped() -> None:
    tl = layer()
    req = request("OPTIONS")
    req.set("CSeq", "1 INFO")  # mismatch introduced after parsing
    tl.receive(req, 0.0)
    assert tl.stats.malformed == 1 and len(tl) == 0


def test_client_retransmission_schedule_through_the_layer() -> None:
    tl = layer()
    tl.send_request(request("REGISTER"), 0.0)
    events(tl)
    sent = []
    for _ in range(50):
        deadline = tl.get_timer()
        if deadline is None:
            break
        tl.handle_timer(deadline)
        sent.extend((deadline, k) for k in kinds(events(tl)))
    assert [t for t, k in sent if k == "send REGISTER"] == [
        0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5,
    ]
    assert sent[-2:] == [(32.0, "timeout F"), (32.0, "terminated")]
    assert len(tl) == 0  # forgotten once terminated


def test_layer_timers_interleave_transactions() -> None:
    tl = layer()
    tl.send_request(request("OPTIONS", branch="z9hG4bKa"), 0.0)
    tl.send_request(request("OPTIONS", branch="z9hG4bKb"), 0.2)
    events(tl)
    assert tl.get_timer() == 0.5
    tl.handle_timer(0.5)
    assert tl.get_timer() == 0.7
    tl.handle_timer(0.8)
    assert tl.get_timer() == 1.5
    assert kinds(events(tl)) == ["send OPTIONS", "send OPTIONS"]


def test_transport_error_through_the_layer() -> None:
    tl = layer()
    key = tl.send_request(request("BYE", to_tag="b1"), 0.0)
    events(tl)
    tl.transport_error(key, 0.1)
    assert kinds(events(tl)) == ["transport error", "terminated"]
    assert tl.get(key) is None
    tl.transport_error(key, 0.2)  # already gone: nothing happens
    assert events(tl) == []


def test_send_request_rejects_duplicate_branch() -> None:
    tl = layer()
    tl.send_request(request("OPTIONS"), 0.0)
    with pytest.raises(ValueError):
        tl.send_request(request("OPTIONS"), 0.1)


def test_send_stateless() -> None:
    tl = layer()
    ack = request("ACK", branch="z9hG4bKack", to_tag="b1")
    tl.send_stateless(ack, addr=("127.0.0.1", 5060))
    [event] = events(tl)
    assert event == SendMessage(ack, ("127.0.0.1", 5060), None)


# -- server side ----------------------------------------------------------------------------------


def test_new_request_creates_server_transaction_and_retransmission_matches_it() -> None:
    tl = layer()
    invite = request()
    tl.receive(bytes(invite), 0.0, ("127.0.0.1", 5070))
    [received] = events(tl)
    assert isinstance(received, RequestReceived)
    assert received.addr == ("127.0.0.1", 5070)
    assert received.key == TransactionKey("z9hg4bklay1", "INVITE", "127.0.0.1:5070", server=True)
    assert isinstance(tl.get(received.key), InviteServerTransaction)
    tl.receive(bytes(invite), 0.1)
    assert events(tl) == []
    assert tl.stats.retransmissions_absorbed == 1
    # Same branch from another sent-by is another transaction (§17.2.3).
    tl.receive(bytes(request(sent_by="127.0.0.2:5070")), 0.1)
    assert kinds(events(tl)) == ["tu INVITE"]
    assert len(tl) == 2


def test_server_trying_timer_through_the_layer() -> None:
    tl = layer()
    tl.receive(request(), 0.0)
    events(tl)
    assert tl.get_timer() == pytest.approx(0.2)
    tl.handle_timer(0.25)
    assert kinds(events(tl)) == ["send 100"]


def test_cancel_is_its_own_transaction_and_finds_the_invite() -> None:
    tl = layer()
    invite = request()
    tl.receive(invite, 0.0)
    [invited] = events(tl)
    cancel = request("CANCEL")
    tl.receive(cancel, 0.1)
    [cancelled] = events(tl)
    assert isinstance(cancelled, RequestReceived) and cancelled.key.method == "CANCEL"
    assert isinstance(tl.get(cancelled.key), NonInviteServerTransaction)
    target = tl.find_cancelled(cancel)
    assert target is not None and target.key == invited.key
    assert tl.find_cancelled(request("CANCEL", branch="z9hG4bKnone")) is None
    tl.send_response(make_response(cancel, 200), 0.2)
    tl.send_response(make_response(invite, 487, to_tag="b1"), 0.2)
    assert kinds(events(tl)) == ["send 200", "send 487"]


def test_ack_for_non_2xx_matches_the_invite_server_transaction() -> None:
    tl = layer()
    invite = request()
    tl.receive(invite, 0.0)
    [received] = events(tl)
    tl.send_response(make_response(invite, 486, to_tag="b1"), 0.1)
    events(tl)
    tl.receive(request("ACK", to_tag="b1"), 0.2)
    assert events(tl) == []  # absorbed by the transaction
    transaction = tl.get(received.key)
    assert transaction is not None and transaction.state is TransactionState.CONFIRMED


def test_ack_for_2xx_matches_accepted_transaction_by_dialog() -> None:
    tl = layer()
    invite = request()
    tl.receive(invite, 0.0)
    [received] = events(tl)
    tl.send_response(make_response(invite, 200, to_tag="b1"), 0.1)
    assert kinds(events(tl)) == ["send 200"]
    tl.handle_timer(0.6)
    assert kinds(events(tl)) == ["send 200"]  # 2xx retransmission
    ack = request("ACK", branch="z9hG4bKnewbranch", to_tag="b1")
    tl.receive(ack, 0.7)
    [acked] = events(tl)
    assert isinstance(acked, AckReceived) and acked.key == received.key and acked.request is ack
    transaction = tl.get(received.key)
    assert transaction is not None and transaction.timer_deadline("G") is None
    # An ACK for another dialog (other To tag) is passed up unmatched.
    tl.receive(request("ACK", branch="z9hG4bKx", to_tag="zz"), 0.8)
    assert kinds(events(tl)) == ["tu stray ACK"]
    tl.handle_timer(40.0)
    assert kinds(events(tl)) == ["terminated"]
    # After Timer L the ACK is still delivered, just without a transaction.
    tl.receive(ack, 41.0)
    assert kinds(events(tl)) == ["tu stray ACK"]


def test_send_response_lookup() -> None:
    tl = layer()
    with pytest.raises(LookupError):
        tl.send_response(make_response(request("OPTIONS"), 200), 0.0)
    tl.receive(request("OPTIONS"), 0.0)
    [received] = events(tl)
    tl.send_response(make_response(request("OPTIONS"), 200), 0.1, key=received.key)
    assert kinds(events(tl)) == ["send 200"]


def test_reliable_flag_from_transport_argument() -> None:
    tl = layer()
    tl.receive(request("OPTIONS"), 0.0, reliable=True)
    [received] = events(tl)
    tl.send_response(make_response(request("OPTIONS"), 200), 0.1)
    assert kinds(events(tl)) == ["send 200", "terminated"]  # J = 0 over a reliable transport
    assert tl.get(received.key) is None


# -- RFC 2543 fallback ----------------------------------------------------------------------------


def test_rfc2543_request_without_cookie_matches_by_fields() -> None:
    tl = layer()
    invite = request(branch="1234")
    tl.receive(invite, 0.0)
    [received] = events(tl)
    assert received.key.branch == "" and received.key.legacy is not None
    tl.receive(request(branch="1234"), 0.1)  # retransmission
    assert events(tl) == []
    # A different CSeq is a different transaction.
    tl.receive(request(branch="1234", cseq=2), 0.2)
    assert kinds(events(tl)) == ["tu INVITE"]
    # No branch at all works the same way.
    tl.receive(request(branch=None, call_id="other"), 0.3)
    tl.receive(request(branch=None, call_id="other"), 0.4)
    assert kinds(events(tl)) == ["tu INVITE"]


def test_rfc2543_ack_needs_the_to_tag_of_the_response() -> None:
    tl = layer()
    invite = request(branch="1234")
    tl.receive(invite, 0.0)
    [received] = events(tl)
    tl.send_response(make_response(invite, 404, to_tag="t9"), 0.1, key=received.key)
    events(tl)
    tl.receive(request("ACK", branch="1234", to_tag="wrong"), 0.2)
    assert kinds(events(tl)) == ["tu stray ACK"]
    tl.receive(request("ACK", branch="1234", to_tag="t9"), 0.3)
    assert events(tl) == []
    transaction = tl.get(received.key)
    assert transaction is not None and transaction.state is TransactionState.CONFIRMED
    tl.handle_timer(100.0)
    assert kinds(events(tl)) == ["terminated"]
    assert len(tl) == 0


def test_rfc2543_cancel_finds_invite() -> None:
    tl = layer()
    tl.receive(request(branch="77"), 0.0)
    [received] = events(tl)
    found = tl.find_cancelled(request("CANCEL", branch="77"))
    assert found is not None and found.key == received.key


def test_server_key_rules() -> None:
    invite = request(branch="z9hG4bKAbC")
    ack = request("ACK", branch="z9hG4bKabc", to_tag="x")
    assert server_key(invite) == server_key(ack)  # branch case-insensitive; ACK -> INVITE
    assert server_key(request("CANCEL", branch="z9hG4bKabc")).method == "CANCEL"


# -- two layers talking ---------------------------------------------------------------------------


def pump(a: TransactionLayer, b: TransactionLayer, now: float) -> tuple[list[Event], list[Event]]:
    """Deliver every SendMessage of one layer to the other as bytes, until both are quiet."""
    seen_a: list[Event] = []
    seen_b: list[Event] = []
    for _ in range(20):
        moved = False
        for src, dst, seen in ((a, b, seen_a), (b, a, seen_b)):
            for event in src.events():
                seen.append(event)
                if isinstance(event, SendMessage):
                    dst.receive(bytes(event.message), now)
                    moved = True
        if not moved:
            return seen_a, seen_b
    raise AssertionError("layers did not settle")


def test_invite_rejected_between_two_layers_over_udp() -> None:
    uac, uas = layer(), layer()
    invite = request(branch=uac.new_branch())
    uac.send_request(invite, 0.0)
    seen_uac, seen_uas = pump(uac, uas, 0.0)
    assert kinds(seen_uac) == ["send INVITE"]
    assert kinds(seen_uas) == ["tu INVITE"]
    received = seen_uas[0]
    assert isinstance(received, RequestReceived)
    server = uas.get(received.key)
    assert server is not None
    uas.send_response(make_response(received.request, 486, to_tag="b1"), 0.05)
    seen_uac, seen_uas = pump(uac, uas, 0.05)
    assert kinds(seen_uas) == ["send 486"]
    assert kinds(seen_uac) == ["send ACK", "tu 486"]
    assert server.state is TransactionState.CONFIRMED
    assert uas.get_timer() == pytest.approx(5.05)  # Timer I
    assert uac.get_timer() == pytest.approx(32.05)  # Timer D


def test_config_is_shared_by_the_layer() -> None:
    tl = layer(config=TimerConfig(t1=0.25, t2=2.0, t4=2.5))
    tl.send_request(request("OPTIONS"), 0.0)
    assert tl.get_timer() == 0.25
