"""RFC 4475 torture messages: what the parser makes of each, message by message.

Valid messages (§3.1.1) parse with the values asserted below and round-trip; invalid ones
(§3.1.2) raise SipParseError with a status hint. For the §3.2-3.4 messages the parser's share is
stated per message: some it rejects with the status a UAS answers (416, 400), the others it
accepts so the layer above can answer (420, 415, 501...) or drop them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from protocol.errors import ProtocolError
from protocol.sip import (
    Request,
    Response,
    SipParseError,
    make_error_response,
    make_response,
    parse_message,
    parse_uri,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sip" / "rfc4475"


def load(name: str) -> bytes:
    return (FIXTURES / f"{name}.dat").read_bytes()


def parse(name: str) -> Request | Response:
    msg = parse_message(load(name))
    assert parse_message(bytes(msg)) == msg
    return msg


def test_fixtures_are_the_pinned_bytes():
    sums = {}
    for line in (FIXTURES / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    assert len(sums) == 49
    assert sorted(sums) == sorted(p.name for p in FIXTURES.glob("*.dat"))
    for name, digest in sums.items():
        assert hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest() == digest, name


# -- 3.1.1 valid messages -------------------------------------------------------------------


def test_3_1_1_1_wsinv_short_tortuous_invite():
    m = parse("wsinv")
    assert isinstance(m, Request) and m.method == "INVITE"
    assert (m.uri.user, m.uri.host, m.uri.params) == (
        "vivekg",
        "chair-dnrc.example.com",
        (("unknownparam", None),),
    )
    assert m.to.uri.user == "vivekg" and m.to.tag == "1918181833n" and m.to.display_name is None
    assert m.from_.display_name == 'J Rosenberg \\"'
    assert m.from_.uri.user == "jdrosen" and m.from_.tag == "98asjd8"
    assert m.max_forwards == 68
    assert m.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert m.content_length == 150 and len(m.body) == 150 and m.body.startswith(b"v=0\r\n")
    assert (m.cseq.number, m.cseq.method) == (9, "INVITE")
    assert [(v.transport, v.host, v.port, v.branch) for v in m.via] == [
        ("UDP", "192.0.2.2", None, "390skdjuw"),
        ("TCP", "spindle.example.com", None, "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", None, "z9hG4bK30239"),
    ]
    assert m.get("Subject") == "" and m.get("s") == ""
    assert m.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert m.get_all("UnknownHeaderWithUnusualValue") == [";;,,;;,;"]
    assert m.content_type == "application/sdp"
    (route,) = m.route
    assert route.uri.host == "services.example.com"
    assert route.uri.params == (("lr", None), ("unknownwith", "value"), ("unknown-no-value", None))
    (contact,) = m.contact
    assert contact.address.display_name == 'Quoted string ""'
    assert contact.address.uri.user == "jdrosen"
    assert contact.address.param("newparam") == "newvalue"
    assert contact.address.has_param("secondparam") and contact.address.param("secondparam") is None
    assert contact.q == 0.33


def test_3_1_1_2_intmeth_wide_range_of_valid_characters():
    m = parse("intmeth")
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.method == method and m.cseq.method == method and m.cseq.number == 139122385
    assert m.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert m.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.uri.host == "example.com"
    assert m.via[0].branch == "z9hG4bK-.!%66*_+`'~"
    assert m.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.to.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert m.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert m.from_.tag == "_token~1'+`*%!-."
    assert m.from_.param("fromParam''~+*_!.-%") == "работающий"
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.max_forwards == 255
    assert m.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    # Its quoted NUL, BEL and DEL survive being echoed into a response.
    answer = make_response(m, 501, to_tag="t")
    assert answer.to.display_name == m.to.display_name and parse_message(bytes(answer)) == answer


def test_3_1_1_3_esc01_escaped_characters():
    m = parse("esc01")
    assert m.uri.user == "sips:user@example.com" and m.uri.host == "example.net"
    assert m.to.uri.user == "user"
    assert m.to.uri.matches(parse_uri("sip:user@example.com"))
    assert m.from_.uri.user == "I have spaces"
    assert m.call_id == "esc01.239409asdfakjkn23onasd0-3234"
    assert m.content_type == "application/sdp"
    (contact,) = m.contact
    assert contact.address.uri.user == "caller"
    # %25%34%31 decodes once, to "%41": unescaping is never recursive.
    assert contact.address.uri.params == (("lr", None), ("name", "value%41"))


def test_3_1_1_4_escnull_nulls_in_user_parts():
    m = parse("escnull")
    assert m.method == "REGISTER" and m.cseq.number == 14398234
    assert m.to.uri.user == "null-\x00-null" and m.from_.uri.user == "null-\x00-null"
    users = [c.address.uri.user for c in m.contact]
    assert users == ["\x00", "\x00\x00"]
    assert not m.contact[0].address.uri.matches(m.contact[1].address.uri)
    assert m.content_length == 0


def test_3_1_1_5_esc02_percent_is_not_an_escape_outside_uris():
    m = parse("esc02")
    assert m.method == "RE%47IST%45R" and m.cseq.method == "RE%47IST%45R"
    assert m.to.display_name == "%Z%45" and m.from_.display_name == "%Z%45"
    assert m.via[0].branch == "z9hG4bK209%fzsnel234"
    assert [c.address.uri.user for c in m.contact] == ["alias1", "alias3"]
    assert m.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_3_1_1_6_lwsdisp_no_space_before_angle_bracket():
    m = parse("lwsdisp")
    assert m.from_.display_name == "caller" and m.from_.tag == "323"
    assert m.call_id == "lwsdisp.1234abcd@funky.example.com"


def test_3_1_1_7_longreq_long_values():
    m = parse("longreq")
    assert m.to.display_name == "I have a user name of " + "extreme" * 10 + " proportion"
    assert m.to.uri.port == 6000
    assert m.to.uri.param("unknownparam1") == "very" + "long" * 20 + "value"
    assert len(m.from_.tag) == 155 and m.from_.tag.startswith("1298298")
    assert len(m.call_id) == 141 and m.call_id.endswith("longcallid")
    assert m.cseq.number == 3882340
    assert len(m.via) == 34
    assert [v.host for v in m.via[:3]] == ["sip33.example.com", "sip32.example.com", "sip31.example.com"]
    assert m.via[-1].received == "192.0.2.5" and m.via[-1].branch.endswith("branchvalue")
    name = "Unknown-" + "Long" * 20 + "-Name"
    assert m.get(name).startswith("unknown-" + "long" * 20 + "-value;")
    assert len(m.body) == 150


def test_3_1_1_8_dblreq_extra_octets_after_the_message_are_ignored():
    m = parse("dblreq")
    assert m.method == "REGISTER"
    assert m.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"
    assert m.body == b"" and m.content_length == 0
    assert b"INVITE" not in bytes(m)


def test_3_1_1_9_semiuri_semicolon_in_user_part():
    m = parse("semiuri")
    assert m.uri.user == "user;par=u@example.net" and m.uri.host == "example.com"
    assert m.uri.params == ()
    assert m.get_all("Accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


def test_3_1_1_10_transports():
    m = parse("transports")
    assert [v.transport for v in m.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert m.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_3_1_1_11_mpart01_multipart_body_with_nulls():
    m = parse("mpart01")
    assert m.method == "MESSAGE" and m.cseq.method == "MESSAGE"
    assert m.call_id == "3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA.."
    assert m.content_type == "multipart/mixed"
    assert m.get("Content-Type") == "multipart/mixed;boundary=7a9cbec02ceef655"
    assert len(m.body) == 553 and b"\x00" in m.body
    assert m.body.endswith(b"--7a9cbec02ceef655--\r\n")
    assert bytes(m) == load("mpart01")


def test_3_1_1_12_unreason_unusual_reason_phrase():
    m = parse("unreason")
    assert isinstance(m, Response) and m.status == 200
    assert m.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert m.call_id == "unreason.1234ksdfak3j2erwedfsASdf"
    assert (m.cseq.number, m.cseq.method) == (35, "INVITE")
    assert len(m.body) == 154


def test_3_1_1_13_noreason_empty_reason_phrase():
    m = parse("noreason")
    assert isinstance(m, Response) and (m.status, m.reason) == (100, "")
    assert m.to.tag == "902jndnke3"
    assert bytes(m) == load("noreason")


# -- 3.1.2 invalid messages -----------------------------------------------------------------

INVALID = [
    # (section, name, status hint, words the error names)
    ("3.1.2.1", "badinv01", 400, "parameter name '' in Via"),
    ("3.1.2.2", "clerr", 400, "Content-Length 9999 exceeds the 154 body bytes"),
    ("3.1.2.3", "ncl", 400, "bad Content-Length '-999'"),
    ("3.1.2.4", "scalar02", 400, "CSeq number 36893488147419103232"),
    ("3.1.2.5", "scalarlg", 400, "CSeq number 9292394834772304023312"),
    ("3.1.2.6", "quotbal", 400, "unterminated quoted string"),
    ("3.1.2.7", "ltgtruri", 400, "Request-URI"),
    ("3.1.2.8", "lwsruri", 400, "bad request line"),
    ("3.1.2.9", "lwsstart", 400, "bad request line"),
    ("3.1.2.10", "trws", 400, "bad request line"),
    ("3.1.2.11", "escruri", 400, "must not carry headers"),
    ("3.1.2.13", "regbadct", 400, "must be enclosed in <>"),
    ("3.1.2.14", "badaspec", 400, "spaces around the URI inside <>"),
    ("3.1.2.16", "badvers", 505, "SIP version 'SIP/7.0' is not supported"),
    ("3.1.2.17", "mismatch01", 400, "CSeq method 'INVITE' does not match request method 'OPTIONS'"),
    ("3.1.2.18", "mismatch02", 400, "CSeq method 'INVITE' does not match request method 'NEWMETHOD'"),
    ("3.1.2.19", "bigcode", 400, "bad status code '4294967301'"),
]


@pytest.mark.parametrize(("section", "name", "status", "words"), INVALID, ids=[i[1] for i in INVALID])
def test_3_1_2_invalid_messages_are_rejected(section, name, status, words):
    with pytest.raises(SipParseError) as info:
        parse_message(load(name))
    assert info.value.status == status
    assert words in info.value.message


def test_3_1_2_12_baddate_is_accepted_because_date_is_not_interpreted():
    # RFC 4475: rejecting it is acceptable only if the Date mattered; nothing here reads Date,
    # so the value is carried verbatim.
    m = parse("baddate")
    assert m.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"
    assert m.call_id == "baddate.239423mnsadf3j23lj42--sedfnm234"


def test_3_1_2_15_baddn_unquoted_display_name_with_non_token_characters():
    data = load("baddn")
    # The archived message stops after "l: 0" CRLF: no empty line closes its header section.
    with pytest.raises(SipParseError, match="no empty line ends the header section"):
        parse_message(data)
    with pytest.raises(SipParseError) as info:
        parse_message(data + b"\r\n")
    assert info.value.status == 400
    assert "display name 'Bell, Alexander' must be quoted" in info.value.message


def test_rejected_requests_can_still_be_answered():
    response = make_error_response(_error("mismatch01"), to_tag="x1")
    assert response is not None and response.status == 400
    assert response.call_id == "mismatch01.dj0234sxdfl3"
    assert response.to.tag == "x1" and response.cseq.number == 8
    assert response.reason.startswith("CSeq method")
    version = make_error_response(_error("badvers"))
    assert version is not None and (version.status, version.reason) == (505, "SIP version 'SIP/7.0' is not supported")
    # A response that fails to parse is dropped, never answered.
    assert make_error_response(_error("bigcode")) is None


def _error(name: str) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_message(load(name))
    return info.value


# -- 3.2 transaction layer ------------------------------------------------------------------


def test_3_2_1_badbranch_is_parsed_and_left_to_the_transaction_layer():
    m = parse("badbranch")
    assert m.via[0].branch == "z9hG4bK"  # the magic cookie with no identifier after it


# -- 3.3 application layer ------------------------------------------------------------------


def test_3_3_1_insuf_missing_headers():
    error = _error("insuf")
    assert error.status == 400
    assert error.message == "missing mandatory header(s): from, to, call-id"
    # Without From, To and Call-ID there is no valid response to send.
    assert make_error_response(error) is None


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("unkscm", "unsupported URI scheme 'nobodyknowsthisscheme'"),
        ("novelsc", "unsupported URI scheme 'soap.beep'"),
    ],
)
def test_3_3_2_and_3_3_3_request_uri_scheme_not_handled_gives_416(name, words):
    error = _error(name)
    assert error.status == 416 and words in error.message
    response = make_error_response(error, to_tag="t")
    assert response is not None and response.status == 416
    assert response.cseq.method == "OPTIONS" and response.via[0].host == "host9.example.com"
    assert bytes(response).startswith(b"SIP/2.0 416 ")


def test_3_3_4_unksm2_unknown_schemes_in_headers_give_416():
    error = _error("unksm2")
    assert error.status == 416 and "'http'" in error.message
    assert make_error_response(error).status == 416


def test_3_3_5_bext01_unknown_extensions_are_left_to_the_ua():
    m = parse("bext01")
    assert m.get_all("Require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert m.get_all("Proxy-Require") == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
    assert m.via[0].transport == "TLS"


def test_3_3_6_invut_unknown_content_type_is_accepted_for_a_415():
    m = parse("invut")
    assert m.content_type == "application/unknownformat"
    assert m.body == b'<audio>\r\n <pcmu port="443"/>\r\n</audio>\r\n'


def test_3_3_7_regaut01_unknown_authorization_scheme_is_not_split():
    m = parse("regaut01")
    assert m.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"
    assert m.content_length == 0


def test_3_3_8_multi01_multiple_values_in_single_value_headers():
    error = _error("multi01")
    assert error.status == 400 and error.message.startswith("more than one ")


def test_3_3_9_mcl01_multiple_content_length_values():
    error = _error("mcl01")
    assert error.status == 400 and "conflicting Content-Length values 13 and 5" in error.message


def test_3_3_10_bcast_broadcast_via_is_parsed_for_the_transport_to_drop():
    m = parse("bcast")
    assert m.status == 200 and [v.host for v in m.via] == ["192.0.2.198", "255.255.255.255"]


def test_3_3_11_zeromf_max_forwards_zero():
    m = parse("zeromf")
    assert m.max_forwards == 0 and m.method == "OPTIONS"


def test_3_3_12_cparam01_contact_parameter_outside_brackets_belongs_to_the_header():
    (contact,) = parse("cparam01").contact
    assert contact.address.params == (("unknownparam", None),)
    assert contact.address.uri.params == () and contact.address.uri.user == "+19725552222"


def test_3_3_13_cparam02_parameter_inside_brackets_belongs_to_the_uri():
    (contact,) = parse("cparam02").contact
    assert contact.address.uri.params == (("unknownparam", None),)
    assert contact.address.params == ()


def test_3_3_14_regescrt_escaped_header_in_bracketed_contact():
    m = parse("regescrt")
    (contact,) = m.contact
    assert contact.address.uri.headers == (("Route", "<sip:sip.example.com>"),)
    assert m.content_length == 0


def test_3_3_15_sdp01_unacceptable_accept_is_left_to_the_ua():
    m = parse("sdp01")
    assert m.get_all("Accept") == ["text/nobodyKnowsThis"] and m.content_type == "application/sdp"


# -- 3.4 backward compatibility -------------------------------------------------------------


def test_3_4_1_inv2543_rfc2543_syntax_is_accepted():
    m = parse("inv2543")
    assert m.via[0].branch is None and m.from_.tag is None
    assert m.max_forwards is None and "Content-Length" not in m
    assert m.content_length == len(m.body) == 105  # no Content-Length: the rest of the datagram
    # Unbracketed, ";user=phone" belongs to the To header field (RFC 3261 §20), not the URI.
    assert m.to.param("user") == "phone" and m.to.uri.params == ()
    assert m.from_.uri.param("user") == "phone"
    (rr,) = m.record_route
    assert rr.uri.param("maddr") == "ss1.example.com"


def test_accepted_messages_serialise_to_the_bytes_received():
    for path in sorted(FIXTURES.glob("*.dat")):
        data = path.read_bytes()
        try:
            msg = parse_message(data)
        except ProtocolError:
            continue
        if path.stem == "dblreq":
            assert bytes(msg) == data[: data.index(b"\r\n\r\n") + 4]  # the spurious INVITE dropped
        else:
            assert bytes(msg) == data, path.stem


def test_every_message_parses_or_raises_a_protocol_error():
    outcomes = {}
    for path in sorted(FIXTURES.glob("*.dat")):
        try:
            parse_message(path.read_bytes())
            outcomes[path.stem] = "ok"
        except ProtocolError as e:
            outcomes[path.stem] = e.status
    assert len(outcomes) == 49
    assert sorted(k for k, v in outcomes.items() if v == "ok") == sorted(
        "wsinv intmeth esc01 escnull esc02 lwsdisp longreq dblreq semiuri transports mpart01 "
        "unreason noreason baddate badbranch bext01 invut regaut01 bcast zeromf cparam01 "
        "cparam02 regescrt sdp01 inv2543".split()
    )
