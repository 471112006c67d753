"""RFC 4028 negotiation as the UAS and as the UAC, on parsed messages."""

from __future__ import annotations

import pytest

from protocol.errors import ProtocolError
from protocol.sip.message import parse_message
from protocol.sip.session_timer import (
    SessionTimer,
    TooSmall,
    expiry_margin,
    from_response,
    negotiate_uas,
    parse_session_expires,
)


def invite(*headers: str) -> object:
    lines = ["INVITE sip:gw@127.0.0.1 SIP/2.0", "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1",
             "From: <sip:a@127.0.0.1>;tag=1", "To: <sip:gw@127.0.0.1>", "Call-ID: st", "CSeq: 1 INVITE",
             "Max-Forwards: 70", *headers, "Content-Length: 0", "", ""]
    return parse_message("\r\n".join(lines).encode())


@pytest.mark.parametrize(("headers", "expected"), [
    ((), None),
    (("Session-Expires: 1800;refresher=uac", "Supported: timer"), SessionTimer(1800, "uac")),
    (("Session-Expires: 1800", "Supported: timer"), SessionTimer(1800, "uac")),
    (("Session-Expires: 1800",), SessionTimer(1800, "uas")),                  # no support: we refresh
    (("Session-Expires: 1800;refresher=uac",), SessionTimer(1800, "uas")),    # cannot refresh without it
    (("x: 600;refresher=uas", "k: timer"), SessionTimer(600, "uas")),          # compact forms
    (("Session-Expires: 7200", "Supported: timer"), SessionTimer(3600, "uac")),  # lowered to ours
    (("Session-Expires: 7200", "Min-SE: 5000", "Require: timer"), SessionTimer(5000, "uac")),  # not below Min-SE
    (("Session-Expires: 60", "Supported: timer"), TooSmall(90)),
])
def test_the_uas_answer(headers, expected):
    assert negotiate_uas(invite(*headers), our_max=3600, our_min=90) == expected


def test_bad_values_are_errors():
    with pytest.raises(ProtocolError, match="delta-seconds"):
        negotiate_uas(invite("Session-Expires: soon"), our_max=3600, our_min=90)
    with pytest.raises(ProtocolError, match="refresher must be uac or uas"):
        parse_session_expires("1800;refresher=me")


def test_the_uac_reads_the_2xx_and_the_margin():
    ok = parse_message(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\n"
                       b"To: <sip:b@h>;tag=2\r\nCall-ID: st\r\nCSeq: 1 INVITE\r\nSession-Expires: 90;refresher=uas\r\n"
                       b"Content-Length: 0\r\n\r\n")
    assert from_response(ok) == SessionTimer(90, "uas")
    assert SessionTimer(90, "uac").header() == "90;refresher=uac"
    assert expiry_margin(90) == 30 and expiry_margin(1800) == 32
