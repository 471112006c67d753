"""SIP/SIPS/tel URIs and name-addr values: parsing, serialising, RFC 3261 §19.1.4 comparison."""

from __future__ import annotations

import dataclasses

import pytest

from protocol.errors import ProtocolError
from protocol.sip import NameAddr, SipUri, UnsupportedUriScheme, parse_name_addr, parse_uri


def test_full_sip_uri():
    uri = parse_uri("sip:alice:secretword@atlanta.com:5061;transport=tcp;lr?subject=project%20x&priority=urgent")
    assert uri == SipUri(
        "sip",
        "alice",
        "secretword",
        "atlanta.com",
        5061,
        (("transport", "tcp"), ("lr", None)),
        (("subject", "project x"), ("priority", "urgent")),
    )
    assert uri.param("Transport") == "tcp" and uri.has_param("lr") and uri.param("lr") is None
    assert not uri.has_param("maddr") and uri.param("maddr") is None
    assert uri.host_port == "atlanta.com:5061"


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("sip:bob@192.0.2.4", "192.0.2.4", None),
        ("sip:bob@[2001:db8::10]", "[2001:db8::10]", None),
        ("sip:[2001:db8::10]:5070;transport=tcp", "[2001:db8::10]", 5070),
        ("sips:[::1]:05061", "[::1]", 5061),
        ("sip:host.example.com.:0", "host.example.com.", 0),
        ("sip:under_score.example.com", "under_score.example.com", None),
    ],
)
def test_hosts_and_ports(text, host, port):
    uri = parse_uri(text)
    assert (uri.host, uri.port) == (host, port)
    assert str(uri) == text


def test_integers_with_leading_zeros():
    assert parse_uri("sip:a@b:" + "0" * 5000 + "1").port == 1


def test_scheme_is_case_insensitive_and_stored_lowercase():
    assert parse_uri("SIP:ALICE@AtLanTa.CoM;Transport=udp").scheme == "sip"
    assert parse_uri("SiPs:a@b").scheme == "sips"


def test_escapes_are_decoded_per_component():
    uri = parse_uri("sip:%61lice%20b:p%61ss@example.com;n%61me=v%61lue%25%34%31?h%41=x%3Cy%3E")
    assert uri.user == "alice b" and uri.password == "pass"
    assert uri.params == (("name", "value%41"),)
    assert uri.headers == (("hA", "x<y>"),)
    # Escaped bytes that are not UTF-8 survive a round trip through the decoded form.
    odd = parse_uri("sip:%FF%00@example.com")
    assert odd.user == "\udcff\x00"
    assert parse_uri(str(dataclasses.replace(odd, port=5060))).user == odd.user


def test_parsed_uri_serialises_to_its_own_text():
    for text in (
        "sip:%61lice@atlanta.com;transport=TCP",
        "sip:user;par=u%40example.net@example.com",
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "tel:+1-201-555-0123;phone-context=example.com",
        "SIP:ALICE@AtLanTa.CoM;Transport=udp",
    ):
        assert str(parse_uri(text)) == text


def test_uri_built_in_code_is_escaped_where_needed():
    uri = SipUri("sip", "alice smith", "p@ss", "example.com", 5060, (("x", "a b"),), (("Subject", "hi there"),))
    assert str(uri) == "sip:alice%20smith:p%40ss@example.com:5060;x=a%20b?Subject=hi%20there"
    assert parse_uri(str(uri)) == uri
    assert str(SipUri("sip", None, host="::1", port=5060)) == "sip:[::1]:5060"
    assert str(SipUri("sips", "bob", host="example.com")) == "sips:bob@example.com"
    # replace() drops the remembered text, so the new value is what gets written.
    moved = dataclasses.replace(parse_uri("sip:bob@example.com;lr"), port=5080)
    assert str(moved) == "sip:bob@example.com:5080;lr"


def test_user_part_may_hold_reserved_characters():
    uri = parse_uri("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com")
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.params == () and uri.headers == ()


def test_tel_uri():
    uri = parse_uri("tel:+1-201-555-0123;phone-context=example.com;ext=22")
    assert (uri.scheme, uri.user, uri.host, uri.port) == ("tel", "+1-201-555-0123", "", None)
    assert uri.param("phone-context") == "example.com" and uri.param("ext") == "22"
    assert parse_uri("tel:7042;phone-context=example.com").user == "7042"


# RFC 3261 §19.1.4
EQUIVALENT = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    (
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ),
    ("sip:bob@[2001:db8::10]:5070", "sip:bob@[2001:DB8:0:0::10]:5070"),
    ("sip:bob@example.com;lr", "sip:bob@EXAMPLE.com;LR"),
    ("tel:+1-201-555-0123", "tel:+12015550123"),
    ("tel:7042;phone-context=Example.com", "tel:7042;phone-context=example.com"),
]

DIFFERENT = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
    ("sip:bob@biloxi.com", "sips:bob@biloxi.com"),
    ("sip:bob@biloxi.com;user=phone", "sip:bob@biloxi.com"),
    ("sip:bob@biloxi.com;ttl=1", "sip:bob@biloxi.com"),
    ("sip:bob@biloxi.com;method=INVITE", "sip:bob@biloxi.com"),
    ("sip:bob@biloxi.com;maddr=239.255.255.1", "sip:bob@biloxi.com"),
    ("sip:bob:x@biloxi.com", "sip:bob@biloxi.com"),
    ("sip:a%00b@h", "sip:a%00%00b@h"),
    ("tel:+12015550123", "tel:+12015550124"),
    ("tel:7042;phone-context=example.com", "tel:7042"),
]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_equivalent_uris_match(a, b):
    assert parse_uri(a).matches(parse_uri(b)) and parse_uri(b).matches(parse_uri(a))


@pytest.mark.parametrize(("a", "b"), DIFFERENT)
def test_different_uris_do_not_match(a, b):
    assert not parse_uri(a).matches(parse_uri(b)) and not parse_uri(b).matches(parse_uri(a))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "without a scheme"),
        ("nocolon", "without a scheme"),
        (":x", "without a scheme"),
        ("1sip:x", "bad URI scheme"),
        ("sip:", "bad host ''"),
        ("sip:alice@", "bad host ''"),
        ("sip:alice@host:99999", "bad port '99999'"),
        ("sip:alice@host:", "bad port ''"),
        ("sip:alice@host:5060x", "bad port"),
        ("sip:[::1", "unterminated IPv6"),
        ("sip:[::g]", "bad IPv6 address"),
        ("sip:[::1]x", "unexpected 'x'"),
        ("sip:a@b;;", "bad URI parameter ''"),
        ("sip:a@b;x=", "bad URI parameter 'x='"),
        ("sip:a@b?x", "bad URI header 'x'"),
        ("sip:%zz@b", "bad %-escape"),
        ("sip:a b@c", "bad user part"),
        ("sip:a@b c", "bad host"),
        ("sip:a@<b>", "bad host"),
        ("sip:a:p w@b", "bad password"),
        ("tel:abc-xyz", "bad telephone number"),
        ("tel:+1+2", "bad telephone number"),
        ("sip:a@b:" + "9" * 5000, "bad port"),
    ],
)
def test_bad_uris(text, words):
    with pytest.raises(ProtocolError) as info:
        parse_uri(text)
    assert info.value.status == 400 and words in info.value.message


@pytest.mark.parametrize("text", ["http://example.com/", "mailto:a@b", "urn:uuid:1234", "isbn:2983792873"])
def test_other_schemes_are_416(text):
    with pytest.raises(UnsupportedUriScheme) as info:
        parse_uri(text)
    assert info.value.status == 416 and isinstance(info.value, ProtocolError)


# -- name-addr ------------------------------------------------------------------------------


def test_name_addr_forms():
    a = parse_name_addr('"Alice \\"A\\" Smith" <sip:alice@atlanta.com;transport=tcp>;tag=88sja8x;x="a b"')
    assert a.display_name == 'Alice "A" Smith' and a.tag == "88sja8x" and a.param("x") == "a b"
    assert a.uri.param("transport") == "tcp"
    b = parse_name_addr("Alice Smith <sip:alice@atlanta.com>")
    assert b.display_name == "Alice Smith" and b.params == ()
    c = parse_name_addr("<sip:alice@atlanta.com>")
    assert c.display_name is None
    d = parse_name_addr("sip:alice@atlanta.com;tag=1;lr")
    assert d.display_name is None and d.uri.params == () and d.params == (("tag", "1"), ("lr", None))
    e = parse_name_addr('"" <tel:+123>')
    assert e.display_name == "" and e.uri.scheme == "tel"
    f = parse_name_addr("  <sip:a@b>  ;  Tag  =  X1  ")
    assert f.tag == "X1"


def test_name_addr_serialises_and_reparses():
    for text in (
        '"Alice \\"A\\" Smith" <sip:alice@atlanta.com;transport=tcp>;tag=88sja8x;x="a b"',
        "Bob <sips:bob@biloxi.com>;tag=a6c85cf",
        "sip:carol@chicago.com;tag=1;received=[2001:db8::1]",
        "<sip:[::1]:5060;lr>",
    ):
        value = parse_name_addr(text)
        assert parse_name_addr(str(value)) == value
    assert str(NameAddr(SipUri("sip", "a", host="b"), 'say "hi"', (("tag", "t"),))) == '"say \\"hi\\"" <sip:a@b>;tag=t'


def test_with_param():
    a = parse_name_addr("<sip:a@b>;x=1")
    assert a.with_param("tag", "t9").params == (("x", "1"), ("tag", "t9"))
    assert a.with_param("X", "2").params == (("x", "2"),)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty address"),
        ('"unterminated <sip:a@b>', "unterminated quoted string"),
        ('"a" sip:a@b', "not followed by <URI>"),
        ('"a" junk <sip:a@b>', "not followed by <URI>"),
        ("<sip:a@b", "'<' without '>'"),
        ("Bell, Alexander <sip:a@b>", "must be quoted"),
        ("< sip:a@b >", "spaces around the URI"),
        ("sip:a@b?Route=x", "must be enclosed in <>"),
        ("<sip:a@b>;;", "bad parameter name ''"),
        ("<sip:a@b> x", "unexpected 'x'"),
        ('<sip:a@b>;x="a"b', "text after quoted value"),
        ("<sip:a@b>;x=a b", "bad value 'a b'"),
        ("<sip:a@b>;x=\"a", "unterminated quoted string"),
    ],
)
def test_bad_name_addrs(text, words):
    with pytest.raises(ProtocolError) as info:
        parse_name_addr(text)
    assert info.value.status == 400 and words in info.value.message


def test_name_addr_with_other_scheme_is_416():
    with pytest.raises(ProtocolError) as info:
        parse_name_addr("<http://www.example.com>;tag=1")
    assert info.value.status == 416
