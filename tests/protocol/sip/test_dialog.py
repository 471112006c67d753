"""Dialogs: creation, state, route sets and routing, CSeq rules, forks, CANCEL, a full call."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from protocol.errors import ProtocolError
from protocol.sip.dialog import (
    Dialog,
    DialogConfirmed,
    DialogId,
    DialogState,
    DialogTerminated,
    EarlyDialog,
    ForkedAnswer,
    InviteDialogs,
    RetransmittedAnswer,
    build_cancel,
    dialog_id_of,
)
from protocol.sip.message import Request, Response, make_request, make_response, parse_message
from protocol.sip.transaction import (
    AckReceived,
    Event,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    TransactionLayer,
)
from protocol.sip.uri import parse_name_addr

VIA = "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKinv"
ALICE_CONTACT = "<sip:alice@127.0.0.1:5070>"


def invite(
    *,
    uri: str = "sip:bob@example.org",
    extra: Iterable[tuple[str, str]] = (),
    to: str = "Bob <sip:bob@example.org>",
    cseq: int = 1,
) -> Request:
    return make_request(
        "INVITE",
        uri,
        headers=[
            ("Via", VIA),
            ("Max-Forwards", "70"),
            ("Route", "<sip:outbound.example.org;lr>"),
            ("From", "Alice <sip:alice@example.org>;tag=a1"),
            ("To", to),
            ("Call-ID", "call-7@127.0.0.1"),
            ("CSeq", f"{cseq} INVITE"),
            ("Contact", ALICE_CONTACT),
            *extra,
        ],
        body=b"v=0\r\n",
    )


def answer(
    req: Request,
    status: int,
    tag: str | None,
    *,
    contact: str | None = "<sip:bob@127.0.0.1:5080>",
    record_route: Iterable[str] = ("<sip:p2.example.org;lr>", "<sip:p1.example.org;lr>"),
) -> Response:
    headers = [("Record-Route", rr) for rr in record_route]
    if contact is not None:
        headers.append(("Contact", contact))
    return make_response(req, status, to_tag=tag, headers=headers)


def uac_dialog(**kwargs: object) -> tuple[Request, Dialog]:
    req = invite()
    dialogs = InviteDialogs(req)
    outcome = dialogs.receive_response(answer(req, 200, "b1", **kwargs))  # type: ignore[arg-type]
    assert isinstance(outcome, DialogConfirmed)
    return req, outcome.dialog


# -- UAC dialogs ----------------------------------------------------------------------------------


def test_provisional_with_tag_creates_early_dialog() -> None:
    req = invite()
    dialogs = InviteDialogs(req)
    assert dialogs.receive_response(make_response(req, 100)) is None
    assert dialogs.receive_response(make_response(req, 180)) is None  # no To tag: no dialog
    outcome = dialogs.receive_response(answer(req, 180, "b1"))
    assert isinstance(outcome, EarlyDialog) and outcome.created
    d = outcome.dialog
    assert d.state is DialogState.EARLY and d.is_uac
    assert d.id == DialogId("call-7@127.0.0.1", "a1", "b1")
    # Route set: Record-Route reversed for the UAC (§12.1.2).
    assert [str(r.uri) for r in d.route_set] == ["sip:p1.example.org;lr", "sip:p2.example.org;lr"]
    assert str(d.remote_target) == "sip:bob@127.0.0.1:5080"
    assert d.local_cseq == 1 and d.remote_cseq is None
    assert str(d.local_contact) == ALICE_CONTACT
    again = dialogs.receive_response(answer(req, 183, "b1", contact="<sip:bob@10.0.0.9>"))
    assert isinstance(again, EarlyDialog) and not again.created and again.dialog is d
    assert str(d.remote_target) == "sip:bob@10.0.0.9"


def test_2xx_confirms_early_dialog_and_recomputes_route_set() -> None:
    req = invite()
    dialogs = InviteDialogs(req)
    early = dialogs.receive_response(answer(req, 180, "b1"))
    assert isinstance(early, EarlyDialog)
    ok = answer(req, 200, "b1", contact="<sip:bob@127.0.0.1:5090>", record_route=["<sip:p9;lr>"])
    outcome = dialogs.receive_response(ok)
    assert isinstance(outcome, DialogConfirmed) and outcome.dialog is early.dialog
    d = outcome.dialog
    assert d.state is DialogState.CONFIRMED
    assert [str(r.uri) for r in d.route_set] == ["sip:p9;lr"]
    assert str(d.remote_target) == "sip:bob@127.0.0.1:5090"
    assert dialogs.accepted is d


def test_ack_for_2xx_and_its_retransmission() -> None:
    req = invite()
    dialogs = InviteDialogs(req)
    ok = answer(req, 200, "b1")
    confirmed = dialogs.receive_response(ok)
    assert isinstance(confirmed, DialogConfirmed)
    d = confirmed.dialog
    ack = d.create_ack(ok, via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKack1")
    assert ack.method == "ACK"
    assert (ack.cseq.number, ack.cseq.method) == (1, "ACK")  # the INVITE's CSeq number
    assert str(ack.uri) == "sip:bob@127.0.0.1:5080"  # loose routing: remote target
    assert ack.get_all("Route") == ["<sip:p1.example.org;lr>", "<sip:p2.example.org;lr>"]
    assert ack.from_.tag == "a1" and ack.to.tag == "b1"
    assert ack.call_id == req.call_id
    assert ack.via[0].branch == "z9hG4bKack1"
    assert ack.get("Contact") is None
    assert d.local_cseq == 1  # an ACK does not advance the CSeq
    retransmitted = dialogs.receive_response(ok)
    assert isinstance(retransmitted, RetransmittedAnswer) and retransmitted.dialog is d
    assert d.create_ack(ok, via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKother") is ack
    with pytest.raises(ValueError):
        d.create_ack(answer(req, 180, "b1"), via=VIA)


def test_forked_2xx_makes_a_second_dialog_to_ack_and_bye() -> None:
    req = invite()
    dialogs = InviteDialogs(req)
    first = dialogs.receive_response(answer(req, 200, "b1"))
    assert isinstance(first, DialogConfirmed)
    ok2 = answer(req, 200, "b2", contact="<sip:bob@127.0.0.1:6000>", record_route=())
    forked = dialogs.receive_response(ok2)
    assert isinstance(forked, ForkedAnswer)
    extra = forked.dialog
    assert extra is not first.dialog and extra.remote_tag == "b2"
    assert dialogs.accepted is first.dialog
    assert set(dialogs.dialogs) == {"b1", "b2"}
    ack = extra.create_ack(ok2, via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKack2")
    assert ack.to.tag == "b2" and str(ack.uri) == "sip:bob@127.0.0.1:6000"
    assert "Route" not in ack
    bye = extra.create_request("BYE", via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKbye2")
    assert (bye.cseq.number, bye.cseq.method) == (2, "BYE")
    assert bye.to.tag == "b2"
    assert extra.terminated
    assert first.dialog.state is DialogState.CONFIRMED


def test_non_2xx_final_ends_early_dialogs() -> None:
    req = invite()
    dialogs = InviteDialogs(req)
    e1 = dialogs.receive_response(answer(req, 180, "b1"))
    e2 = dialogs.receive_response(answer(req, 183, "b2"))
    assert isinstance(e1, EarlyDialog) and isinstance(e2, EarlyDialog)
    outcome = dialogs.receive_response(make_response(req, 486, to_tag="b3"))
    assert isinstance(outcome, DialogTerminated)
    assert set(outcome.dialogs) == {e1.dialog, e2.dialog}
    assert e1.dialog.terminated and e2.dialog.terminated


def test_invite_timeout_ends_early_dialogs() -> None:
    req = invite()
    dialogs = InviteDialogs(req)
    early = dialogs.receive_response(answer(req, 180, "b1"))
    assert isinstance(early, EarlyDialog)
    assert dialogs.timed_out() == (early.dialog,)
    assert early.dialog.terminated


def test_invite_dialogs_checks_the_response() -> None:
    req = invite()
    dialogs = InviteDialogs(req)
    with pytest.raises(ValueError):
        dialogs.receive_response(make_response(invite(cseq=2), 200, to_tag="x"))
    with pytest.raises(ValueError):
        InviteDialogs(make_request("BYE", "sip:a@b", headers=[("CSeq", "1 BYE")]))


def test_dialog_uac_checks() -> None:
    req = invite()
    with pytest.raises(ValueError):
        Dialog.uac(req, make_response(req, 100, to_tag="x"))
    with pytest.raises(ValueError):
        Dialog.uac(req, make_response(req, 486, to_tag="x"))
    with pytest.raises(ProtocolError):
        Dialog.uac(req, make_response(req, 200))  # no To tag


def test_2xx_without_contact_falls_back_to_request_uri() -> None:
    req, d = uac_dialog(contact=None)
    assert d.remote_target == req.uri


def test_sips_request_makes_secure_dialog() -> None:
    req = invite(uri="sips:bob@example.org")
    d = Dialog.uac(req, answer(req, 200, "b1"))
    assert d.secure


# -- requests inside a dialog ---------------------------------------------------------------------


def test_in_dialog_requests_increment_cseq_and_carry_contact_where_needed() -> None:
    _, d = uac_dialog()
    built = {}
    for method in ("INVITE", "UPDATE", "INFO", "REFER", "NOTIFY"):
        built[method] = d.create_request(
            method, via=f"SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{method.lower()}"
        )
    assert [r.cseq.number for r in built.values()] == [2, 3, 4, 5, 6]
    assert [r.cseq.method for r in built.values()] == ["INVITE", "UPDATE", "INFO", "REFER", "NOTIFY"]
    assert built["INVITE"].get("Contact") == ALICE_CONTACT
    assert built["UPDATE"].get("Contact") == ALICE_CONTACT
    assert built["REFER"].get("Contact") == ALICE_CONTACT
    assert built["INFO"].get("Contact") is None
    req = built["INFO"]
    # From and To echo the texts of the INVITE and of the 2xx.
    assert req.get("From") == "Alice <sip:alice@example.org>;tag=a1"
    assert req.get("To") == "Bob <sip:bob@example.org>;tag=b1"
    assert req.call_id == "call-7@127.0.0.1"
    assert req.max_forwards == 70
    refer = d.create_request(
        "REFER",
        via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKr2",
        headers=[("Refer-To", "<sip:carol@example.org>")],
    )
    assert refer.get("Refer-To") == "<sip:carol@example.org>"
    info = d.create_request(
        "INFO",
        via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKi2",
        headers=[("Content-Type", "application/dtmf-relay")],
        body=b"Signal=5\r\nDuration=160\r\n",
    )
    assert info.body == b"Signal=5\r\nDuration=160\r\n"
    assert info.content_length == len(info.body)


def test_loose_routing() -> None:
    _, d = uac_dialog()
    bye = d.create_request("BYE", via=VIA)
    assert str(bye.uri) == "sip:bob@127.0.0.1:5080"
    assert [str(r.uri) for r in bye.route] == ["sip:p1.example.org;lr", "sip:p2.example.org;lr"]
    assert d.terminated  # sending BYE ends the dialog


def test_strict_routing_puts_the_first_route_in_the_request_uri() -> None:
    _, d = uac_dialog(
        record_route=["<sip:p2.example.org;lr>", "<sip:strict.example.org;method=INVITE?h=v>"]
    )
    req = d.create_request("INFO", via=VIA)
    # §12.2.1.1: Request-URI = first route (stripped of what a Request-URI may not carry);
    # Route = the rest, then the remote target.
    assert str(req.uri) == "sip:strict.example.org"
    assert req.get_all("Route") == ["<sip:p2.example.org;lr>", "<sip:bob@127.0.0.1:5080>"]
    parse_message(bytes(req))  # and it is a valid message


def test_no_route_set() -> None:
    _, d = uac_dialog(record_route=())
    req = d.create_request("OPTIONS", via=VIA)
    assert str(req.uri) == "sip:bob@127.0.0.1:5080" and "Route" not in req


def test_create_request_refusals() -> None:
    _, d = uac_dialog()
    with pytest.raises(ValueError):
        d.create_request("ACK", via=VIA)
    with pytest.raises(ValueError):
        d.create_request("CANCEL", via=VIA)
    d.create_request("BYE", via=VIA)
    with pytest.raises(ValueError):
        d.create_request("INFO", via=VIA)


# -- responses to our in-dialog requests ----------------------------------------------------------


@pytest.mark.parametrize("status", [481, 408])
def test_481_and_408_end_the_dialog(status: int) -> None:
    _, d = uac_dialog()
    info = d.create_request("INFO", via=VIA)
    d.receive_response(info, make_response(info, status))
    assert d.terminated


def test_transaction_timeout_ends_the_dialog() -> None:
    _, d = uac_dialog()
    d.request_timed_out()
    assert d.state is DialogState.TERMINATED


def test_2xx_to_target_refresh_updates_remote_target() -> None:
    _, d = uac_dialog()
    reinvite = d.create_request("INVITE", via=VIA)
    d.receive_response(reinvite, make_response(reinvite, 200, headers=[("Contact", "<sip:bob@10.1.1.1>")]))
    assert str(d.remote_target) == "sip:bob@10.1.1.1"
    info = d.create_request("INFO", via=VIA)
    d.receive_response(info, make_response(info, 200, headers=[("Contact", "<sip:bob@10.9.9.9>")]))
    assert str(d.remote_target) == "sip:bob@10.1.1.1"  # INFO is not a target refresh
    update = d.create_request("UPDATE", via=VIA)
    d.receive_response(update, make_response(update, 491))
    assert d.state is DialogState.CONFIRMED  # other failures leave the dialog alone


def test_non_2xx_to_invite_of_early_dialog_ends_it() -> None:
    req = invite()
    d = Dialog.uac(req, answer(req, 180, "b1"))
    d.receive_response(req, make_response(req, 487, to_tag="b1"))
    assert d.terminated


# -- UAS dialogs ----------------------------------------------------------------------------------


def incoming_invite() -> Request:
    return make_request(
        "INVITE",
        "sip:gateway@127.0.0.1:5060",
        headers=[
            ("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKin1"),
            ("Record-Route", "<sip:p1.example.org;lr>, <sip:p2.example.org;lr>"),
            ("From", "<sip:alice@example.org>;tag=a9"),
            ("To", "<sip:gateway@example.org>"),
            ("Call-ID", "in-1"),
            ("CSeq", "101 INVITE"),
            ("Contact", "<sip:alice@127.0.0.1:5070>"),
        ],
    )


def uas_dialog() -> tuple[Request, Dialog]:
    req = incoming_invite()
    return req, Dialog.uas(req, "g1", local_contact=parse_name_addr("<sip:gw@127.0.0.1:5060>"))


def test_uas_dialog_from_request() -> None:
    req, d = uas_dialog()
    assert not d.is_uac and d.state is DialogState.EARLY
    assert d.id == DialogId("in-1", "g1", "a9")
    # The UAS keeps Record-Route in order (§12.1.1).
    assert [str(r.uri) for r in d.route_set] == ["sip:p1.example.org;lr", "sip:p2.example.org;lr"]
    assert str(d.remote_target) == "sip:alice@127.0.0.1:5070"
    assert d.remote_cseq == 101 and d.local_cseq is None
    assert d.local_uri.tag == "g1" and d.remote_uri.tag == "a9"


def test_uas_responses_carry_tag_and_contact_and_move_state() -> None:
    req, d = uas_dialog()
    ringing = d.create_response(req, 180)
    assert ringing.to.tag == "g1"
    assert ringing.get("Contact") == "<sip:gw@127.0.0.1:5060>"
    assert d.state is DialogState.EARLY
    ok = d.create_response(req, 200, headers=[("Content-Type", "application/sdp")], body=b"v=0\r\n")
    assert ok.status == 200 and ok.to.tag == "g1" and ok.body == b"v=0\r\n"
    assert d.state is DialogState.CONFIRMED


def test_uas_rejection_ends_early_dialog() -> None:
    req, d = uas_dialog()
    d.create_response(req, 180)
    busy = d.create_response(req, 486)
    assert busy.get("Contact") is None and busy.to.tag == "g1"
    assert d.terminated


def test_uas_requests_start_their_own_cseq_and_swap_uris() -> None:
    req, d = uas_dialog()
    d.create_response(req, 200)
    bye = d.create_request("BYE", via="SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKbye")
    assert (bye.cseq.number, bye.cseq.method) == (1, "BYE")
    assert bye.get("From") == "<sip:gateway@example.org>;tag=g1"
    assert bye.get("To") == "<sip:alice@example.org>;tag=a9"
    assert str(bye.uri) == "sip:alice@127.0.0.1:5070"
    assert bye.get_all("Route") == ["<sip:p1.example.org;lr>", "<sip:p2.example.org;lr>"]


def test_uas_local_cseq_start_can_be_given() -> None:
    req = incoming_invite()
    d = Dialog.uas(req, "g1", local_cseq=500, confirmed=True)
    assert d.state is DialogState.CONFIRMED
    assert d.create_request("INFO", via=VIA).cseq.number == 501


def test_uas_without_contact_targets_from_uri() -> None:
    req = incoming_invite()
    req.remove("Contact")
    assert str(Dialog.uas(req, "g1").remote_target) == "sip:alice@example.org"


# -- requests received in a dialog ----------------------------------------------------------------


def in_dialog(method: str, cseq: int, *, contact: str | None = None) -> Request:
    headers = [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK" + method.lower() + str(cseq)),
        ("From", "<sip:alice@example.org>;tag=a9"),
        ("To", "<sip:gateway@example.org>;tag=g1"),
        ("Call-ID", "in-1"),
        ("CSeq", f"{cseq} {method}"),
    ]
    if contact:
        headers.append(("Contact", contact))
    return make_request(method, "sip:gw@127.0.0.1:5060", headers=headers)


def test_remote_cseq_rules() -> None:
    req, d = uas_dialog()
    d.create_response(req, 200)
    assert d.receive_request(in_dialog("ACK", 101)) is None
    assert d.receive_request(in_dialog("INFO", 102)) is None
    assert d.remote_cseq == 102
    assert d.receive_request(in_dialog("INFO", 101)) == 500  # lower than the last: out of order
    assert d.remote_cseq == 102
    assert d.receive_request(in_dialog("UPDATE", 102)) is None  # equal is not lower
    assert d.receive_request(in_dialog("CANCEL", 50)) is None  # CANCEL reuses an old CSeq
    assert d.remote_cseq == 102
    assert d.receive_request(in_dialog("INFO", 200)) is None
    assert d.remote_cseq == 200


def test_received_target_refresh_and_bye() -> None:
    req, d = uas_dialog()
    d.create_response(req, 200)
    d.receive_request(in_dialog("INFO", 102, contact="<sip:alice@10.0.0.5>"))
    assert str(d.remote_target) == "sip:alice@127.0.0.1:5070"  # INFO refreshes nothing
    d.receive_request(in_dialog("INVITE", 103, contact="<sip:alice@10.0.0.5>"))
    assert str(d.remote_target) == "sip:alice@10.0.0.5"
    assert d.receive_request(in_dialog("BYE", 104)) is None
    assert d.terminated
    assert d.receive_request(in_dialog("INFO", 105)) == 481
    assert d.receive_request(in_dialog("ACK", 103)) is None


def test_uac_dialog_first_remote_request_sets_remote_cseq() -> None:
    _, d = uac_dialog()
    bye = make_request(
        "BYE",
        "sip:alice@127.0.0.1:5070",
        headers=[
            ("Via", "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKb"),
            ("From", "<sip:bob@example.org>;tag=b1"),
            ("To", "<sip:alice@example.org>;tag=a1"),
            ("Call-ID", "call-7@127.0.0.1"),
            ("CSeq", "7 BYE"),
        ],
    )
    assert dialog_id_of(bye) == d.id
    assert d.receive_request(bye) is None
    assert d.remote_cseq == 7 and d.terminated


# -- ids and CANCEL -------------------------------------------------------------------------------


def test_dialog_id_of() -> None:
    req = invite()
    ok = answer(req, 200, "b1")
    assert dialog_id_of(ok) == DialogId("call-7@127.0.0.1", "a1", "b1")
    assert dialog_id_of(req) is None  # no To tag yet
    incoming = in_dialog("INFO", 5)
    assert dialog_id_of(incoming) == DialogId("in-1", "g1", "a9")
    assert dialog_id_of(incoming, uac=True) == DialogId("in-1", "a9", "g1")


def test_build_cancel_per_9_1() -> None:
    req = invite()
    cancel = build_cancel(req)
    assert cancel.method == "CANCEL"
    assert cancel.uri == req.uri
    assert cancel.call_id == req.call_id
    assert cancel.get("From") == req.get("From")
    assert cancel.get("To") == req.get("To") and cancel.to.tag is None
    assert (cancel.cseq.number, cancel.cseq.method) == (1, "CANCEL")
    assert cancel.get_all("Via") == [VIA]  # one Via: the INVITE's top Via, same branch
    assert cancel.get_all("Route") == ["<sip:outbound.example.org;lr>"]
    assert cancel.body == b"" and cancel.max_forwards == 70
    with pytest.raises(ValueError):
        build_cancel(in_dialog("INFO", 1))


# -- a whole call over two transaction layers -----------------------------------------------------


def pump(a: TransactionLayer, b: TransactionLayer, now: float) -> tuple[list[Event], list[Event]]:
    """Carry the messages each layer sends to the other (as bytes) until both are quiet; return
    the events each layer produced for its TU (SendMessage excluded)."""
    for_a: list[Event] = []
    for_b: list[Event] = []
    for _ in range(20):
        moved = False
        for src, dst, seen in ((a, b, for_a), (b, a, for_b)):
            for event in src.events():
                if isinstance(event, SendMessage):
                    dst.receive(bytes(event.message), now)
                    moved = True
                else:
                    seen.append(event)
        if not moved:
            return for_a, for_b
    raise AssertionError("layers did not settle")


def test_full_call_invite_ringing_answer_ack_bye() -> None:
    counter = iter(range(100))
    uac = TransactionLayer(random_bytes=lambda n: next(counter).to_bytes(n, "big"))
    uas = TransactionLayer(random_bytes=lambda n: (1000 + next(counter)).to_bytes(n, "big"))
    via = lambda layer: f"SIP/2.0/UDP 127.0.0.1:5070;branch={layer.new_branch()}"  # noqa: E731

    offer = make_request(
        "INVITE",
        "sip:gateway@127.0.0.1:5060",
        headers=[
            ("Via", via(uac)),
            ("Max-Forwards", "70"),
            ("From", "<sip:alice@127.0.0.1>;tag=a1"),
            ("To", "<sip:gateway@127.0.0.1>"),
            ("Call-ID", "flow-1"),
            ("CSeq", "1 INVITE"),
            ("Contact", "<sip:alice@127.0.0.1:5070>"),
        ],
        body=b"v=0\r\n",
    )
    uac.send_request(offer, 0.0)
    calls = InviteDialogs(offer)
    _, at_uas = pump(uac, uas, 0.0)
    [incoming] = at_uas
    assert isinstance(incoming, RequestReceived)

    # UAS: ring, then answer; the 200 is retransmitted until the ACK arrives.
    server_dialog = Dialog.uas(
        incoming.request, "g1", local_contact=parse_name_addr("<sip:gw@127.0.0.1:5060>")
    )
    uas.send_response(server_dialog.create_response(incoming.request, 180), 0.05)
    at_uac, _ = pump(uac, uas, 0.05)
    [ringing] = at_uac
    assert isinstance(ringing, ResponseReceived)
    early = calls.receive_response(ringing.response)
    assert isinstance(early, EarlyDialog) and early.created

    uas.send_response(server_dialog.create_response(incoming.request, 200, body=b"v=0\r\n"), 1.0)
    at_uac, _ = pump(uac, uas, 1.0)
    [answered] = at_uac
    assert isinstance(answered, ResponseReceived) and answered.response.status == 200
    confirmed = calls.receive_response(answered.response)
    assert isinstance(confirmed, DialogConfirmed) and confirmed.dialog is early.dialog
    client_dialog = confirmed.dialog
    assert client_dialog.id == DialogId("flow-1", "a1", "g1")
    assert server_dialog.id == DialogId("flow-1", "g1", "a1")

    # The ACK goes outside any client transaction and reaches the Accepted server transaction.
    ack = client_dialog.create_ack(answered.response, via=via(uac))
    uac.send_stateless(ack)
    _, at_uas = pump(uac, uas, 1.1)
    [acked] = at_uas
    assert isinstance(acked, AckReceived) and acked.key == incoming.key
    assert server_dialog.receive_request(acked.request) is None

    # The 2xx is not retransmitted after the ACK.
    uas.handle_timer(5.0)
    assert [e for e in uas.events() if isinstance(e, SendMessage)] == []

    # UAC hangs up.
    bye = client_dialog.create_request("BYE", via=via(uac))
    assert client_dialog.terminated
    uac.send_request(bye, 10.0)
    _, at_uas = pump(uac, uas, 10.0)
    [bye_in] = at_uas
    assert isinstance(bye_in, RequestReceived) and bye_in.request.method == "BYE"
    assert server_dialog.receive_request(bye_in.request) is None
    assert server_dialog.terminated
    uas.send_response(make_response(bye_in.request, 200), 10.01)
    at_uac, _ = pump(uac, uas, 10.01)
    assert [type(e) for e in at_uac] == [ResponseReceived]
    assert at_uac[0].response.status == 200  # type: ignore[union-attr]

    # Let every timer run out: both layers end empty, nothing stray, nothing malformed.
    for tl in (uac, uas):
        tl.handle_timer(100.0)
        list(tl.events())
        assert len(tl) == 0
        assert tl.stats.malformed == 0 and tl.stats.stray_responses == 0
