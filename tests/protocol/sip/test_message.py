"""SIP messages: header access, typed views, limits and errors, building, stream framing."""

from __future__ import annotations

import pytest

from protocol.errors import ProtocolError
from protocol.sip import (
    Contact,
    CSeq,
    Headers,
    NameAddr,
    Request,
    Response,
    SipParseError,
    StreamParser,
    Via,
    make_error_response,
    make_request,
    make_response,
    parse_message,
    parse_uri,
)
from protocol.sip.message import MAX_HEADERS, MAX_LINE_LENGTH, MAX_MESSAGE_SIZE

HEAD = (
    "INVITE sip:service@127.0.0.1:5070 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK776asdhds;rport\r\n"
    "Max-Forwards: 70\r\n"
    'From: "Alice" <sip:alice@127.0.0.1>;tag=1928301774\r\n'
    "To: <sip:service@127.0.0.1:5070>\r\n"
    "Call-ID: a84b4c76e66710@pc33\r\n"
    "CSeq: 314159 INVITE\r\n"
    "Contact: <sip:alice@127.0.0.1:5060>\r\n"
)


def msg(extra: str = "", body: bytes = b"", head: str = HEAD, length: bool = True) -> bytes:
    cl = f"Content-Length: {len(body)}\r\n" if length else ""
    return (head + extra + cl + "\r\n").encode() + body


def error_of(data: bytes) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    return info.value


# -- header access --------------------------------------------------------------------------


def test_compact_forms_resolve_to_full_names():
    compact = {
        "i": ("Call-ID", None),
        "m": ("Contact", None),
        "f": ("From", None),
        "t": ("To", None),
        "v": ("Via", None),
        "l": ("Content-Length", None),
        "c": ("Content-Type", "application/sdp"),
        "k": ("Supported", "timer"),
        "s": ("Subject", "lunch"),
        "e": ("Content-Encoding", "gzip"),
        "o": ("Event", "refer"),
        "r": ("Refer-To", "<sip:carol@example.com>"),
        "b": ("Referred-By", "<sip:alice@example.com>"),
        "u": ("Allow-Events", "talk"),
        "x": ("Session-Expires", "1800;refresher=uac"),
        "y": ("Identity", "abc"),
        "a": ("Accept-Contact", "*;audio"),
    }
    head = (
        "OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:a@b>;tag=1\r\n"
        "t: <sip:c@d>\r\ni: cid\r\nCSeq: 1 OPTIONS\r\nm: <sip:a@h>\r\n"
    )
    extra = "".join(f"{letter}: {value}\r\n" for letter, (_, value) in compact.items() if value)
    m = parse_message(msg(extra, head=head, length=False) .replace(b"\r\n\r\n", b"\r\nl: 0\r\n\r\n"))
    for letter, (full, value) in compact.items():
        assert letter.upper() in m and full in m and full.upper() in m, letter
        assert m.get(letter) == m.get(full) == m.get(full.lower()), letter
        if value is not None:
            assert m.get(full) == value
    assert m.call_id == "cid" and m.content_length == 0 and m.via[0].host == "h"


def test_names_are_case_insensitive_and_kept_as_written():
    m = parse_message(msg("x-CUSTOM-header: one\r\nX-Custom-Header: two\r\n"))
    assert m.get_all("X-Custom-Header") == ["one", "two"] and m.get("x-custom-HEADER") == "one"
    assert b"x-CUSTOM-header: one\r\n" in bytes(m)
    assert m.get("Absent") is None and m.get_all("Absent") == [] and "Absent" not in m
    assert 42 not in m


def test_folding_is_unfolded_to_single_spaces():
    m = parse_message(msg("Subject: first\r\n  second\r\n\tthird\r\nX-Empty:\r\n later\r\n"))
    assert m.get("Subject") == "first second third"
    assert m.get("X-Empty") == "later"


def test_list_headers_split_outside_quotes_and_brackets():
    extra = (
        'Route: <sip:p1.example.com;lr>, "Proxy, Two" <sip:p2.example.com;lr>\r\n'
        "Route: <sip:p3.example.com;lr>\r\n"
        "Allow: INVITE, ACK,CANCEL , BYE\r\n"
        'WWW-Authenticate: Digest realm="a, b", nonce="n", qop="auth,auth-int"\r\n'
        "Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n"
        'Contact: "Doe, John" <sip:j@x;a=b>;q=0.5, <sip:k@y>;expires=60\r\n'
        "Supported: ,timer,, 100rel\r\n"
    )
    m = parse_message(msg(extra, head=HEAD.replace("Contact: <sip:alice@127.0.0.1:5060>\r\n", "")))
    assert [r.uri.host for r in m.route] == ["p1.example.com", "p2.example.com", "p3.example.com"]
    assert m.route[1].display_name == "Proxy, Two"
    assert m.get("Route") == "<sip:p1.example.com;lr>"
    assert m.get_all("Allow") == ["INVITE", "ACK", "CANCEL", "BYE"]
    assert m.get_all("WWW-Authenticate") == ['Digest realm="a, b", nonce="n", qop="auth,auth-int"']
    assert m.get_all("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]
    assert [(c.address.display_name, c.q, c.expires) for c in m.contact] == [
        ("Doe, John", 0.5, None),
        (None, None, 60),
    ]
    assert m.get("Supported") == "timer" and m.get_all("Supported") == ["timer", "100rel"]


def test_via_comma_joined_and_separate():
    extra = "Via: SIP/2.0/TCP [2001:db8::9]:5061;branch=z9hG4bK2;received=2001:db8::1;rport=5062 , SIP/2.0/UDP h3;branch=z9hG4bK3;ttl=16;maddr=239.1.1.1\r\n"
    m = parse_message(msg(extra))
    assert [v.sent_by for v in m.via] == ["127.0.0.1:5060", "[2001:db8::9]:5061", "h3"]
    top, second, third = m.via
    assert top == Via("UDP", "127.0.0.1", 5060, "z9hG4bK776asdhds", None, True, ())
    assert (second.received, second.rport, second.port) == ("2001:db8::1", 5062, 5061)
    assert third.params == (("ttl", "16"), ("maddr", "239.1.1.1")) and third.param("TTL") == "16"
    assert second.param("rport") == "5062" and top.param("rport") is None and top.param("branch") == top.branch
    for via in m.via:
        assert str(via) and Via.__module__  # printable
    assert str(second) == "SIP/2.0/TCP [2001:db8::9]:5061;branch=z9hG4bK2;received=2001:db8::1;rport=5062"


def test_via_built_in_code_is_checked_when_written():
    assert str(Via("TCP", "::1", 5061, "z9hG4bK1", "::2", 5062)) == (
        "SIP/2.0/TCP [::1]:5061;branch=z9hG4bK1;received=::2;rport=5062"
    )
    for bad in (
        Via("UDP", "h", branch="z9hG4bK bad"),
        Via("UDP", "h", received="a b"),
        Via("U DP", "h"),
        Via("UDP", "bad host"),
    ):
        with pytest.raises(ProtocolError, match="bad"):
            str(bad)


def test_integers_with_leading_zeros():
    m = parse_message(
        msg(head=HEAD.replace("CSeq: 314159", "CSeq: 000314159").replace("Max-Forwards: 70", "Max-Forwards: 0070"))
        .replace(b"Content-Length: 0", b"Content-Length: 0000")
    )
    assert m.cseq == CSeq(314159, "INVITE") and m.max_forwards == 70 and m.content_length == 0


def test_typed_views_of_absent_and_bad_optional_headers():
    m = parse_message(msg(head=HEAD.replace("Max-Forwards: 70\r\n", "")))
    assert m.max_forwards is None and m.route == [] and m.record_route == [] and m.content_type is None
    bad = parse_message(msg(head=HEAD.replace("Max-Forwards: 70", "Max-Forwards: 300")))
    with pytest.raises(ProtocolError, match="Max-Forwards"):
        _ = bad.max_forwards
    m = parse_message(msg("Content-Type: Application/SDP ; charset=utf-8\r\n"))
    assert m.content_type == "application/sdp"


def test_contact_star_expires_and_q():
    star = parse_message(msg(head=HEAD.replace("<sip:alice@127.0.0.1:5060>", "*")))
    assert star.contact == [Contact(None, None, None, True)] and str(star.contact[0]) == "*"
    big = parse_message(msg(head=HEAD.replace("5060>", "5060>;expires=280297596632815;q=1.000")))
    assert big.contact[0].expires == 2**32 - 1 and big.contact[0].q == 1.0
    for bad in (";q=1.5", ";q=abc", ";expires=soon", ";expires"):
        with pytest.raises(SipParseError, match="Contact"):
            parse_message(msg(head=HEAD.replace("5060>", "5060>" + bad)))
    with pytest.raises(SipParseError, match=r"'\*' must be the only"):
        parse_message(msg(head=HEAD.replace("<sip:alice@127.0.0.1:5060>", "*, <sip:a@b>")))


# -- mutation ----------------------------------------------------------------------------------


def test_set_add_remove_and_cached_views_follow_changes():
    m = parse_message(msg())
    assert len(m.via) == 1
    m.add("Via", "SIP/2.0/TCP proxy.example.com;branch=z9hG4bKnew", first=True)
    assert [v.host for v in m.via] == ["proxy.example.com", "127.0.0.1"]
    m.add("Record-Route", "<sip:proxy.example.com;lr>", first=True)
    assert bytes(m).index(b"Record-Route") < bytes(m).index(b"Via: SIP/2.0/TCP")
    m.add("X-A", "1")
    m.add("X-B", "2")
    m.add("X-A", "3")
    assert [n for n, _ in m.headers][-3:] == ["X-A", "X-A", "X-B"]
    m.set("To", m.get("To") + ";tag=xyz")
    assert m.to.tag == "xyz"
    m.set("X-A", "only")
    assert m.get_all("X-A") == ["only"]
    m.set("X-New", "appended")
    assert list(m.headers)[-1] == ("X-New", "appended")
    assert m.remove("x-a") == 1 and m.remove("X-A") == 0
    assert m.remove("v") == 2
    assert m.via == []
    with pytest.raises(SipParseError, match=r"missing mandatory header\(s\): via"):
        parse_message(bytes(m))


def test_set_top_via_records_received_and_rport():
    m = parse_message(msg(head=HEAD.replace(";rport\r\n", ";rport, SIP/2.0/TCP h2;branch=z9hG4bK2\r\n")))
    top = m.via[0]
    m.set_top_via(Via(top.transport, top.host, top.port, top.branch, "192.0.2.7", 40123, top.params))
    assert [(v.host, v.received, v.rport) for v in m.via] == [
        ("127.0.0.1", "192.0.2.7", 40123),
        ("h2", None, None),
    ]
    assert b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK776asdhds;received=192.0.2.7;rport=40123\r\n" in bytes(m)
    assert parse_message(bytes(m)).via == m.via
    with pytest.raises(ProtocolError, match="no Via"):
        make_request("OPTIONS", "sip:a@b").set_top_via("SIP/2.0/UDP h")


@pytest.mark.parametrize("value", ["a\r\nInjected: yes", "a\nb", "a\rb"])
def test_header_values_cannot_inject_lines(value):
    m = parse_message(msg())
    with pytest.raises(ProtocolError, match="CR or LF"):
        m.set("Subject", value)
    with pytest.raises(ProtocolError):
        m.add("Subject", value)


def test_values_built_in_code_parse_back():
    m = parse_message(msg())
    with pytest.raises(ProtocolError, match="control character"):
        m.set("Subject", "bell\x07")
    caller = NameAddr(parse_uri("sip:bob@example.com"), 'Bob "B" \\ \x00\x07 line\r\nbreak', (("tag", "t 1"),))
    m.set("From", str(caller))
    again = parse_message(bytes(m))
    assert again.from_.display_name == 'Bob "B" \\ \x00\x07 line  break'
    assert again.from_.tag == "t 1"


def test_bad_header_names_are_refused():
    m = parse_message(msg())
    for name in ("Bad Name", "", "X:Y", "Ünï"):
        with pytest.raises(ProtocolError, match="bad header name"):
            m.set(name, "v")


def test_body_setter_keeps_content_length_in_step():
    m = parse_message(msg())
    m.body = b"v=0\r\n"
    assert m.get("Content-Length") == "5" and m.content_length == 5
    assert parse_message(bytes(m)).body == b"v=0\r\n"


def test_copy_is_independent():
    m = parse_message(msg())
    c = m.copy()
    c.set("CSeq", "314160 INVITE")
    assert m.cseq.number == 314159 and c.cseq.number == 314160 and m != c


def test_equality_is_structural():
    a = parse_message(msg(body=b"x"))
    b = parse_message(msg(body=b"x").replace(b"Call-ID:", b"i:").replace(b"Max-Forwards: 70", b"max-forwards:70"))
    assert a == b and bytes(a) != bytes(b)
    assert a != parse_message(msg(body=b"y"))
    assert a != parse_message(msg(body=b"x").replace(b"sip:service@", b"sip:Service@"))
    assert (a == "INVITE") is False


# -- start lines ---------------------------------------------------------------------------------


def test_response_start_lines():
    head = HEAD.split("\r\n", 1)[1]
    ok = parse_message(msg(head="SIP/2.0 200 OK\r\n" + head))
    assert isinstance(ok, Response) and (ok.status, ok.reason, ok.version) == (200, "OK", "SIP/2.0")
    bare = parse_message(msg(head="SIP/2.0 180\r\n" + head))
    assert (bare.status, bare.reason) == (180, "")
    spaced = parse_message(msg(head="sip/2.0 486 Busy  Here \r\n" + head))
    assert spaced.reason == "Busy  Here " and bytes(spaced).startswith(b"SIP/2.0 486 Busy  Here \r\n")
    for line, status in (("SIP/2.0 20 OK", 400), ("SIP/2.0 700 Odd", 400), ("SIP/2.0 099 X", 400),
                         ("SIP/3.0 200 OK", 505), ("SIP/2.0x 200 OK", 400), ("SIP/2.0 2OO OK", 400)):
        assert error_of(msg(head=line + "\r\n" + head)).status == status, line


def test_request_uris_of_every_scheme():
    for uri in ("sips:service@example.com", "tel:+15551234;phone-context=example.com", "sip:[::1]:5060"):
        m = parse_message(msg(head=HEAD.replace("sip:service@127.0.0.1:5070", uri, 1)))
        assert str(m.uri) == uri and m.uri == parse_uri(uri)


def test_bad_request_lines():
    for line, status, words in (
        ("INVITE sip:a@b SIP/2.0 extra", 400, "bad request line"),
        ("INVITE\tsip:a@b\tSIP/2.0", 400, "bad request line"),
        ("INVITE sip:a@b", 400, "bad request line"),
        ("IN VITE sip:a@b SIP/2.0", 400, "bad request line"),
        ("INV(ITE sip:a@b SIP/2.0", 400, "bad method"),
        ("INVITE sip:a@b HTTP/1.1", 400, "bad SIP version"),
        ("INVITE sip:a@b SIP/2.1", 505, "not supported"),
        ("INVITE mailto:a@b SIP/2.0", 416, "unsupported URI scheme"),
        ("INVITE sip:a@b?x=y SIP/2.0", 400, "must not carry headers"),
    ):
        e = error_of(msg(head=HEAD.replace("INVITE sip:service@127.0.0.1:5070 SIP/2.0", line)))
        assert (e.status, words in e.message) == (status, True), line


# -- errors and limits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty message"),
        (b"\r\n\r\n", 400, "empty message"),
        (HEAD.encode(), 400, "no empty line ends the header section"),
        (msg().replace(b"Call-ID", b"Call ID"), 400, "bad header name 'Call ID'"),
        (msg().replace(b"Call-ID:", b"Call-ID"), 400, "header line without a name and colon"),
        (msg().replace(b"Max-Forwards:", b"Max Forwards:"), 400, "bad header name 'Max Forwards'"),
        (msg().replace(b"Max-Forwards:", b": 70\r\nMax-Forwards:"), 400, "without a name and colon"),
        (msg().replace(b"INVITE\r\n", b"INVITE\r\n\xff\xfe: x\r\n"), 400, "not UTF-8"),
        (msg().replace(b"a84b4c", b"a8\rb4c"), 400, "bare CR"),
        (msg().replace(b"a84b4c", b"a8\x01b4c"), 400, "control character"),
        (msg().replace(b"SIP/2.0\r\n", b"SIP/2.0\r\n continued\r\n"), 400, "continuation line before"),
        (msg().replace(b"Call-ID: a84b4c76e66710@pc33\r\n", b""), 400, "missing mandatory header(s): call-id"),
        (msg().replace(b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK776asdhds;rport\r\n", b""), 400, "missing mandatory header(s): via"),
        (msg("To: <sip:x@y>\r\n"), 400, "more than one to header"),
        (msg("Content-Length: 1\r\n"), 400, "conflicting Content-Length"),
        (msg().replace(b"Content-Length: 0", b"Content-Length: five"), 400, "bad Content-Length 'five'"),
        (msg().replace(b"Content-Length: 0", b"Content-Length: 9999999999"), 413, "too large"),
        (msg().replace(b"Call-ID: a84b4c76e66710@pc33", b"Call-ID: a b"), 400, "bad Call-ID"),
        (msg().replace(b"Call-ID: a84b4c76e66710@pc33", b"Call-ID:"), 400, "bad Call-ID"),
        (msg().replace(b"CSeq: 314159 INVITE", b"CSeq: 2147483648 INVITE"), 400, "not below 2**31"),
        (msg().replace(b"CSeq: 314159 INVITE", b"CSeq: -1 INVITE"), 400, "bad CSeq number"),
        (msg().replace(b"CSeq: 314159 INVITE", b"CSeq: 1"), 400, "bad CSeq"),
        (msg().replace(b"CSeq: 314159 INVITE", b"CSeq: 1 BYE"), 400, "does not match request method"),
        (msg().replace(b"SIP/2.0/UDP 127.0.0.1:5060", b"SIP/2.0/UDP"), 400, "lacks a transport or sent-by"),
        (msg().replace(b"SIP/2.0/UDP 127.0.0.1:5060", b"SIP/3.0/UDP 127.0.0.1:5060"), 400, "is not SIP/2.0"),
        (msg().replace(b"SIP/2.0/UDP 127.0.0.1:5060", b"SIP/2.0/UDP 127.0.0.1:99999"), 400, "bad port"),
        (msg().replace(b";rport\r\n", b";rport=x\r\n"), 400, "bad Via rport"),
        (msg().replace(b";rport\r\n", b";branch\r\n"), 400, "branch parameter without a value"),
        (msg().replace(b";rport\r\n", b", \r\n"), 400, "empty element in Via"),
        (msg().replace(b"tag=1928301774", b'tag="1928'), 400, "unterminated quoted string"),
    ],
)
def test_malformed_messages(data, status, words):
    e = error_of(data)
    assert e.status == status and words in e.message


def test_lf_only_and_leading_crlf_are_accepted():
    crlf = msg(body=b"v=0\r\n")
    m = parse_message(crlf)
    lf = parse_message(crlf[: crlf.index(b"\r\n\r\n")].replace(b"\r\n", b"\n") + b"\n\nv=0\r\n")
    assert lf == m
    assert parse_message(b"\r\n\r\n" + crlf) == m


def test_datagram_body_rules():
    body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
    extra_octets = parse_message(msg(body=body) + b"garbage after the body")
    assert extra_octets.body == body
    no_length = parse_message(msg(body=body, length=False))
    assert no_length.body == body and no_length.content_length == len(body)
    short = error_of(msg(body=body)[:-3])
    assert short.status == 400 and "exceeds the" in short.message


def test_size_limits():
    big = error_of(msg(body=b"x" * MAX_MESSAGE_SIZE))
    assert big.status == 513 and "byte limit" in big.message
    # The request's headers are kept, so the UAS can answer 513 Message Too Large.
    answer = make_error_response(big)
    assert answer is not None and answer.status == 513 and answer.call_id == big.headers.get("Call-ID")
    oversize_response = error_of(b"SIP/2.0 200 OK\r\n" + msg(body=b"x" * MAX_MESSAGE_SIZE).split(b"\r\n", 1)[1])
    assert oversize_response.status == 513 and make_error_response(oversize_response) is None
    endless_head = error_of(b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"y" * MAX_MESSAGE_SIZE)
    assert endless_head.status == 513 and make_error_response(endless_head) is None
    many = "".join(f"X-H{i}: {i}\r\n" for i in range(MAX_HEADERS))
    assert error_of(msg(many)).status == 413
    folded = "X-Fold: a\r\n" + " b\r\n" * (4 * MAX_HEADERS)
    assert error_of(msg(folded)).status == 413
    long_line = error_of(msg("X-Long: " + "a" * MAX_LINE_LENGTH + "\r\n"))
    assert long_line.status == 413 and "longer than" in long_line.message
    assert parse_message(msg("X-Long: " + "a" * (MAX_LINE_LENGTH - 8) + "\r\n")).get("X-Long")
    assert parse_message(msg(body=b"x" * 1000), max_size=2000).body == b"x" * 1000
    assert error_of(msg(body=b"x" * 1000)[:-10]).status == 400


def test_every_single_byte_edit_gives_a_message_or_a_protocol_error():
    data = msg(body=b"v=0\r\n")
    outcomes = {"parsed": 0, "rejected": 0}
    for i in range(len(data)):
        for replacement in (b"", b"\x00", b":", b" ", b"\r\n", b";", b"\xff", b'"', b"<"):
            try:
                parse_message(data[:i] + replacement + data[i + 1 :])
                outcomes["parsed"] += 1
            except ProtocolError as e:
                assert e.message and 400 <= e.status < 600
                outcomes["rejected"] += 1
    assert outcomes["parsed"] > 100 and outcomes["rejected"] > 1000


# -- building ---------------------------------------------------------------------------------


def test_make_request():
    r = make_request(
        "OPTIONS",
        "sip:service@127.0.0.1:5070",
        headers=[("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1"), ("Max-Forwards", "70"),
                 ("From", "<sip:a@127.0.0.1>;tag=1"), ("To", "<sip:service@127.0.0.1:5070>"),
                 ("Call-ID", "c1"), ("CSeq", "1 OPTIONS")],
        body=b"hello",
    )
    assert isinstance(r, Request) and r.method == "OPTIONS" and r.uri.port == 5070
    assert r.get("Content-Length") == "5" and r.body == b"hello"
    data = bytes(r)
    assert data.startswith(b"OPTIONS sip:service@127.0.0.1:5070 SIP/2.0\r\nVia: ")
    assert data.endswith(b"\r\nContent-Length: 5\r\n\r\nhello")
    assert parse_message(data) == r
    with pytest.raises(ProtocolError):
        make_request("BAD METHOD", "sip:a@b")
    with pytest.raises(ProtocolError):
        make_request("INVITE", "http://x")
    built = make_request("BYE", parse_uri("sip:b@c"), headers=[("Content-Length", "99")])
    assert built.get_all("Content-Length") == ["0"]


def test_make_response_copies_what_rfc3261_8_2_6_says():
    request = parse_message(msg("Via: SIP/2.0/UDP proxy;branch=z9hG4bK2\r\nTimestamp: 54\r\nSubject: x\r\n"))
    trying = make_response(request, 100)
    assert (trying.status, trying.reason) == (100, "Trying")
    assert [str(v) for v in trying.via] == [str(v) for v in request.via]
    assert trying.get("Timestamp") == "54" and trying.to.tag is None and "Subject" not in trying
    ok = make_response(request, 200, to_tag="as83kd9bs", headers=[("Contact", "<sip:svc@127.0.0.1:5070>")],
                       body=b"v=0\r\n")
    assert ok.to.tag == "as83kd9bs" and ok.from_ == request.from_ and ok.call_id == request.call_id
    assert ok.cseq == request.cseq and ok.get("Content-Length") == "5" and "Timestamp" not in ok
    assert [n for n, _ in ok.headers] == ["Via", "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Length"]
    assert parse_message(bytes(ok)) == ok
    tagged = parse_message(bytes(ok))
    again = make_response(tagged, 200, "Fine", to_tag="other")
    assert again.to.tag == "as83kd9bs" and again.reason == "Fine"
    assert make_response(request, 299).reason == ""
    for status in (99, 700, "200"):
        with pytest.raises(ProtocolError):
            make_response(request, status)
    with pytest.raises(ProtocolError):
        make_response(request, 200, "a\r\nb")
    with pytest.raises(ProtocolError, match="bad To tag"):
        make_response(request, 200, to_tag="a;b")
    replaced = make_response(request, 200, headers=[("Content-Length", "99"), ("X-A", "1")], body=b"ab")
    assert replaced.get_all("Content-Length") == ["2"] and replaced.get("X-A") == "1"


def test_make_error_response():
    e = error_of(msg().replace(b"CSeq: 314159 INVITE", b"CSeq: 1 BYE"))
    answer = make_error_response(e, to_tag="t1")
    assert answer.status == 400 and answer.to.tag == "t1" and answer.cseq == CSeq(1, "BYE")
    assert answer.reason == "CSeq method 'BYE' does not match request method 'INVITE'"
    assert make_error_response(e, reason="Bad Request").reason == "Bad Request"
    assert make_error_response(ProtocolError("x")) is None
    assert make_error_response(error_of(b"garbage\r\n\r\n")) is None


def test_headers_container():
    h = Headers([("Via", "a"), ("v", "b"), ("To", "c")])
    assert len(h) == 3 and h.keys() == ["via", "via", "to"] and h.lines("VIA") == ["a", "b"]
    assert h.elements("via") == ["a", "b"] and list(h) == [("Via", "a"), ("v", "b"), ("To", "c")]
    assert h == Headers([("VIA", "a"), ("Via", "b"), ("t", "c")]) and h != Headers()
    assert "Headers(" in repr(h) and (h == 1) is False


# -- streams ------------------------------------------------------------------------------------


def test_stream_framing_byte_by_byte():
    one = msg(body=b"v=0\r\n")
    two = msg(body=b"").replace(b"314159", b"314160")
    stream = b"\r\n\r\n" + one + b"\r\n" + two + b"\r\n\r\n"
    parser = StreamParser()
    got = []
    for i in range(len(stream)):
        got += parser.feed(stream[i : i + 1])
    assert [bytes(m) for m in got] == [one, two]
    assert parser.pings == 2


def test_stream_body_split_across_feeds():
    data = msg(body=b"x" * 3000)
    parser = StreamParser()
    assert parser.feed(data[:-2000]) == []
    assert parser.feed(data[-2000:-1]) == []
    (m,) = parser.feed(data[-1:] + data[:10])
    assert m.body == b"x" * 3000
    assert len(parser.feed(data[10:])) == 1


def test_stream_malformed_message_is_dropped_and_reported():
    bad = msg().replace(b"CSeq: 314159 INVITE", b"CSeq: 1 BYE")
    good = msg()
    parser = StreamParser()
    assert parser.feed(bad + good) == [parse_message(good)]
    (error,) = parser.take_errors()
    assert "does not match" in error.message and make_error_response(error).status == 400
    assert parser.take_errors() == []


def test_stream_framing_errors_are_fatal():
    parser = StreamParser()
    with pytest.raises(SipParseError, match="Content-Length is required"):
        parser.feed(msg(length=False))
    with pytest.raises(SipParseError, match="Content-Length is required"):
        parser.feed(msg())
    parser = StreamParser(max_message_size=1000)
    with pytest.raises(SipParseError) as info:
        parser.feed(msg(body=b"x" * 1000))
    assert info.value.status == 513
    answer = make_error_response(info.value)
    assert answer is not None and answer.status == 513
    parser = StreamParser(max_message_size=1000)
    with pytest.raises(SipParseError) as info:
        for _ in range(20):
            parser.feed(b"X-Endless: " + b"a" * 100)
    assert info.value.status == 513 and make_error_response(info.value) is None
    with pytest.raises(SipParseError, match="bare CR"):
        StreamParser().feed(b"\r\r\n")
    assert StreamParser().feed(b"\r") == []
