"""Digest authentication: published vectors, client/server round trips, malformed input."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from protocol.errors import ProtocolError
from protocol.sip import auth
from protocol.sip.auth import (
    Challenge,
    Credentials,
    DigestClient,
    compute_ha1,
    compute_response,
    hash_username,
    make_challenge,
    parse_authorization,
    parse_challenge,
    parse_challenges,
    select_challenge,
    verify,
)
from protocol.sip.message import make_request, parse_message


class FakeResponse:
    """Just the header access DigestClient.respond uses."""

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def fixed(*values: str) -> Iterator[str]:
    yield from values


# -- RFC 2617 §3.5 --------------------------------------------------------------------------------

RFC2617_CHALLENGE = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
RFC2617_AUTHORIZATION = (
    'Digest username="Mufasa", realm="testrealm@host.com", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, '
    'cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", '
    'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)


def test_rfc2617_vector_compute_response() -> None:
    assert (
        compute_response(
            algorithm="MD5",
            username="Mufasa",
            realm="testrealm@host.com",
            password="Circle Of Life",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            method="GET",
            uri="/dir/index.html",
            qop="auth",
            nc=1,
            cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


def test_rfc2617_vector_through_client() -> None:
    challenge = parse_challenge(RFC2617_CHALLENGE)
    assert challenge.qop == ("auth", "auth-int")
    assert challenge.algorithm == "MD5"  # absent means MD5
    client = DigestClient(Credentials("Mufasa", "Circle Of Life"), cnonce_source=lambda: "0a4f113b")
    value = client.authorization(challenge, "GET", "/dir/index.html")
    parsed = parse_authorization(value)
    assert parsed.response == "6629fae49393a05397450978507c4ef1"
    assert parsed.qop == "auth"  # auth preferred over auth-int
    assert parsed.nc == 1 and "nc=00000001" in value
    assert parsed.opaque == "5ccc069c403ebaf9f0171e9517f40e41"  # echoed
    assert parsed.cnonce == "0a4f113b"


def test_rfc2617_vector_verifies_on_server() -> None:
    assert verify(RFC2617_AUTHORIZATION, "GET", "Circle Of Life")
    assert not verify(RFC2617_AUTHORIZATION, "GET", "Circle of Life")
    assert not verify(RFC2617_AUTHORIZATION, "POST", "Circle Of Life")
    assert verify(RFC2617_AUTHORIZATION, "GET", "Circle Of Life", realm="testrealm@host.com")
    assert not verify(RFC2617_AUTHORIZATION, "GET", "Circle Of Life", realm="other")
    assert not verify(RFC2617_AUTHORIZATION, "GET", "Circle Of Life", nonce="other")
    assert not verify(RFC2617_AUTHORIZATION, "GET", "Circle Of Life", username="Simba")


# -- RFC 7616 §3.9.1 ------------------------------------------------------------------------------

RFC7616_SHA256 = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_MD5 = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (RFC7616_MD5, "8ca523f5e9506fed4657c9700eebdbec"),
        (RFC7616_SHA256, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_vectors(header: str, expected: str) -> None:
    client = DigestClient(Credentials("Mufasa", "Circle of Life"), cnonce_source=lambda: RFC7616_CNONCE)
    value = client.authorization(parse_challenge(header), "GET", "/dir/index.html")
    creds = parse_authorization(value)
    assert creds.response == expected
    assert verify(value, "GET", "Circle of Life")


def test_rfc7616_client_picks_sha256_of_both_challenges() -> None:
    # The server's preferred order lists SHA-256 first; order must not matter to the choice.
    response = FakeResponse([("WWW-Authenticate", RFC7616_MD5), ("WWW-Authenticate", RFC7616_SHA256)])
    client = DigestClient(Credentials("Mufasa", "Circle of Life"), cnonce_source=lambda: RFC7616_CNONCE)
    headers = client.respond(response, "GET", "/dir/index.html")
    assert len(headers) == 1
    name, value = headers[0]
    assert name == "Authorization"
    creds = parse_authorization(value)
    assert creds.algorithm == "SHA-256"
    assert creds.response == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


def test_rfc7616_userhash_sha512_256_per_erratum_4897() -> None:
    # The values printed in RFC 7616 §3.9.2 were computed with a pre-standard SHA-512/256;
    # erratum 4897 gives the FIPS 180-4 results used here.
    header = (
        'Digest realm="api@example.org", qop="auth", algorithm=SHA-512-256, '
        'nonce="5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK", '
        'opaque="HRPCssKJSGjCrkzDg8OhwpzCiGPChXYjwrI2QmXDnsOS", charset=UTF-8, userhash=true'
    )
    challenge = parse_challenge(header)
    assert challenge.userhash and challenge.charset == "UTF-8"
    client = DigestClient(
        Credentials("J\u00e4s\u00f8n Doe", "Secret, or not?"),
        cnonce_source=lambda: "NTg6RKcb9boFIAS3KrFK9BGeh+iDa/sm6jUMp2wds69v",
    )
    value = client.authorization(challenge, "GET", "/doe.json")
    creds = parse_authorization(value)
    assert creds.username == "793263caabb707a56211940d90411ea4a575adeccb7e360aeb624ed06ece9b0b"
    assert creds.userhash
    assert creds.response == "3798d4131c277846293534c3edc11bd8a5e4cdcbff78b05db9d95eeb1cec68a5"
    assert verify(value, "GET", "Secret, or not?", username="J\u00e4s\u00f8n Doe")
    assert not verify(value, "GET", "Secret, or not?", username="Jason Doe")
    with pytest.raises(ValueError):
        verify(value, "GET", "Secret, or not?")  # the password alone cannot undo the hash


def test_username_star_is_decoded() -> None:
    value = (
        "Digest username*=UTF-8''J%C3%A4s%C3%B8n%20Doe, realm=\"api@example.org\", "
        'uri="/doe.json", algorithm=SHA-512-256, nonce="5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK", '
        'nc=00000001, cnonce="NTg6RKcb9boFIAS3KrFK9BGeh+iDa/sm6jUMp2wds69v", qop=auth, '
        'response="3798d4131c277846293534c3edc11bd8a5e4cdcbff78b05db9d95eeb1cec68a5", '
        'opaque="HRPCssKJSGjCrkzDg8OhwpzCiGPChXYjwrI2QmXDnsOS", userhash=false'
    )
    creds = parse_authorization(value)
    assert creds.username == "J\u00e4s\u00f8n Doe"
    assert verify(creds, "GET", "Secret, or not?")


# -- nonce reuse, sessions, qop variants ----------------------------------------------------------


def test_nc_counts_reuses_of_a_nonce_and_keeps_the_cnonce() -> None:
    cnonces = fixed("c1", "c2")
    client = DigestClient(Credentials("alice", "pw"), cnonce_source=lambda: next(cnonces))
    first = parse_challenge(make_challenge("example.org", "n1", algorithm="SHA-256"))
    a1 = parse_authorization(client.authorization(first, "REGISTER", "sip:example.org"))
    a2 = parse_authorization(client.authorization(first, "REGISTER", "sip:example.org"))
    assert (a1.nc, a1.cnonce) == (1, "c1")
    assert (a2.nc, a2.cnonce) == (2, "c1")
    assert a1.response != a2.response
    second = parse_challenge(make_challenge("example.org", "n2", algorithm="SHA-256", stale=True))
    assert second.stale
    a3 = parse_authorization(client.authorization(second, "REGISTER", "sip:example.org"))
    assert (a3.nc, a3.cnonce) == (1, "c2")
    for creds in (a1, a2, a3):
        assert verify(creds, "REGISTER", "pw")


def test_preemptive_reuses_the_last_nonce() -> None:
    client = DigestClient(Credentials("alice", "pw"), cnonce_source=lambda: "cc")
    resp = FakeResponse([("WWW-Authenticate", make_challenge("example.org", "n1"))])
    [(_, first)] = client.respond(resp, "REGISTER", "sip:example.org")
    [(name, again)] = client.preemptive("REGISTER", "sip:example.org")
    assert name == "Authorization"
    assert parse_authorization(first).nc == 1
    assert parse_authorization(again).nc == 2
    assert verify(again, "REGISTER", "pw", nonce="n1")
    client.forget("example.org")
    assert client.preemptive("REGISTER", "sip:example.org") == []


@pytest.mark.parametrize("algorithm", ["MD5-sess", "SHA-256-sess", "SHA-512-256-sess"])
def test_session_variants_bind_ha1_to_nonce_and_cnonce(algorithm: str) -> None:
    hash_name = {"MD5-sess": "md5", "SHA-256-sess": "sha256", "SHA-512-256-sess": "sha512_256"}[
        algorithm
    ]

    def h(text: str) -> str:
        return hashlib.new(hash_name, text.encode()).hexdigest()

    client = DigestClient(Credentials("bob", "s3cret"), cnonce_source=lambda: "abcd")
    challenge = parse_challenge(make_challenge("pbx", "NONCE", algorithm=algorithm))
    creds = parse_authorization(client.authorization(challenge, "INVITE", "sip:100@pbx"))
    ha1 = h(f"{h('bob:pbx:s3cret')}:NONCE:abcd")
    expected = h(f"{ha1}:NONCE:00000001:abcd:auth:{h('INVITE:sip:100@pbx')}")
    assert creds.algorithm == algorithm
    assert creds.response == expected
    assert verify(creds, "INVITE", "s3cret")
    stored = h("bob:pbx:s3cret")
    assert verify(creds, "INVITE", ha1_lookup=lambda c: stored if c.username == "bob" else None)
    assert not verify(creds, "INVITE", ha1_lookup=lambda c: None)


def test_auth_int_covers_the_body() -> None:
    client = DigestClient(Credentials("bob", "pw"), cnonce_source=lambda: "x")
    challenge = parse_challenge(make_challenge("pbx", "n", qop="auth-int"))
    body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
    value = client.authorization(challenge, "INVITE", "sip:1@pbx", body)
    assert parse_authorization(value).qop == "auth-int"
    assert verify(value, "INVITE", "pw", body=body)
    assert not verify(value, "INVITE", "pw", body=body + b"a=sendonly\r\n")


def test_rfc2069_challenge_without_qop() -> None:
    client = DigestClient(Credentials("bob", "pw"), cnonce_source=lambda: "unused")
    challenge = parse_challenge(make_challenge("pbx", "n", qop=None))
    assert challenge.qop == ()
    value = client.authorization(challenge, "BYE", "sip:1@pbx")
    creds = parse_authorization(value)
    assert creds.qop is None and creds.nc is None and creds.cnonce is None
    assert "nc=" not in value and "cnonce" not in value
    md5 = lambda t: hashlib.md5(t.encode()).hexdigest()  # noqa: E731
    assert creds.response == md5(f"{md5('bob:pbx:pw')}:n:{md5('BYE:sip:1@pbx')}")
    assert verify(value, "BYE", "pw")


def test_stored_ha1_credentials() -> None:
    stored = compute_ha1("SHA-256", "carol", "pbx", "pw")
    client = DigestClient(Credentials("carol", ha1=stored, ha1_algorithm="SHA-256"))
    sha = parse_challenge(make_challenge("pbx", "n", algorithm="SHA-256-sess"))
    assert verify(client.authorization(sha, "REGISTER", "sip:pbx"), "REGISTER", "pw")
    md5 = parse_challenge(make_challenge("pbx", "n", algorithm="MD5"))
    with pytest.raises(ProtocolError):
        client.authorization(md5, "REGISTER", "sip:pbx")


def test_hash_username() -> None:
    assert hash_username("SHA-256", "a", "r") == hashlib.sha256(b"a:r").hexdigest()


# -- choosing among challenges --------------------------------------------------------------------


def test_select_prefers_stronger_hash_then_qop() -> None:
    md5 = Challenge(realm="r", nonce="1", algorithm="MD5", qop=("auth",))
    sha_noqop = Challenge(realm="r", nonce="2", algorithm="SHA-256")
    sha = Challenge(realm="r", nonce="3", algorithm="SHA-256", qop=("auth",))
    sha_sess = Challenge(realm="r", nonce="4", algorithm="SHA-256-sess", qop=("auth",))
    unknown = Challenge(realm="r", nonce="5", algorithm="SHA-1", qop=("auth",))
    weird_qop = Challenge(realm="r", nonce="6", algorithm="SHA-512-256", qop=("auth-conf",))
    assert select_challenge([md5, sha_noqop]) is sha_noqop
    assert select_challenge([md5, sha_noqop, sha]) is sha
    assert select_challenge([sha, sha_sess]) is sha  # equal strength: the server's order wins
    assert select_challenge([unknown, weird_qop, md5]) is md5
    assert select_challenge([unknown]) is None
    assert not unknown.supported


def test_unsupported_challenge_cannot_be_answered() -> None:
    client = DigestClient(Credentials("a", "b"))
    with pytest.raises(ProtocolError):
        client.authorization(Challenge(realm="r", nonce="n", algorithm="SHA-1"), "X", "sip:x")


def test_several_challenges_in_one_value_and_other_schemes_skipped() -> None:
    value = (
        'Basic realm="legacy", Digest realm="a", nonce="1", algorithm=MD5, '
        'Bearer abc.def==, Digest realm="a", nonce="2", algorithm=SHA-256, qop=auth'
    )
    challenges = parse_challenges(value)
    assert [(c.nonce, c.algorithm, c.qop) for c in challenges] == [
        ("1", "MD5", ()),
        ("2", "SHA-256", ("auth",)),
    ]


def test_respond_answers_each_realm_and_proxy_separately() -> None:
    response = FakeResponse(
        [
            ("Proxy-Authenticate", make_challenge("proxy1", "p1", algorithm="MD5")),
            ("Proxy-Authenticate", make_challenge("proxy1", "p2", algorithm="SHA-256")),
            ("Proxy-Authenticate", make_challenge("proxy2", "q1")),
            ("WWW-Authenticate", make_challenge("nobody-knows", "z")),
        ]
    )
    client = DigestClient(
        [Credentials("u1", "pw1", realm="proxy1"), Credentials("u2", "pw2", realm="proxy2")],
        cnonce_source=lambda: "c",
    )
    headers = client.respond(response, "INVITE", "sip:b@example.org")
    assert [name for name, _ in headers] == ["Proxy-Authorization", "Proxy-Authorization"]
    first, second = (parse_authorization(v) for _, v in headers)
    assert (first.realm, first.nonce, first.algorithm, first.username) == ("proxy1", "p2", "SHA-256", "u1")
    assert (second.realm, second.username) == ("proxy2", "u2")
    assert verify(first, "INVITE", "pw1") and verify(second, "INVITE", "pw2")


def test_credentials_lookup_callable() -> None:
    client = DigestClient(lambda realm: Credentials("x", "y") if realm == "ok" else None)
    with pytest.raises(LookupError):
        client.authorization(Challenge(realm="nope", nonce="n"), "OPTIONS", "sip:a")
    assert verify(client.authorization(Challenge(realm="ok", nonce="n"), "OPTIONS", "sip:a"),
                  "OPTIONS", "y")


# -- server side ----------------------------------------------------------------------------------


def test_make_challenge_round_trip() -> None:
    value = make_challenge(
        "example.org", 'n"1', algorithm="sha-256", qop=["auth", "auth-int"], opaque="op",
        stale=True, userhash=True, domain="sip:example.org",
    )
    assert value.startswith("Digest ")
    assert 'nonce="n\\"1"' in value
    assert 'qop="auth,auth-int"' in value
    c = parse_challenge(value, proxy=True)
    assert c == Challenge(
        realm="example.org", nonce='n"1', algorithm="SHA-256", qop=("auth", "auth-int"),
        opaque="op", stale=True, domain="sip:example.org", userhash=True, proxy=True,
    )
    assert c.header_name == "Proxy-Authorization"
    with pytest.raises(ValueError):
        make_challenge("r", "n", algorithm="SHA-1")
    with pytest.raises(ValueError):
        make_challenge("r", "n", qop="auth-conf")


def test_verify_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert verify(RFC2617_AUTHORIZATION, "GET", "Circle Of Life")
    assert seen == [(b"6629fae49393a05397450978507c4ef1", b"6629fae49393a05397450978507c4ef1")]


def test_verify_unknown_algorithm_is_false_not_error() -> None:
    value = RFC2617_AUTHORIZATION + ", algorithm=SHA-1"
    assert parse_authorization(value).algorithm == "SHA-1"
    assert not verify(value, "GET", "Circle Of Life")


def test_verify_needs_exactly_one_secret() -> None:
    with pytest.raises(ValueError):
        verify(RFC2617_AUTHORIZATION, "GET")
    with pytest.raises(ValueError):
        verify(RFC2617_AUTHORIZATION, "GET", "pw", ha1_lookup=lambda c: None)


def test_authorization_serialises_tokens_unquoted() -> None:
    creds = parse_authorization(RFC2617_AUTHORIZATION)
    text = str(creds)
    assert "qop=auth," in text and "nc=00000001" in text and "algorithm=MD5" in text
    assert parse_authorization(text) == creds


# -- malformed input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        'Digest realm="r", nonce="unterminated',
        'realm="r", nonce="n"',  # no scheme
        'Digest realm="r"',  # no nonce
        'Digest nonce="n"',  # no realm
        'Digest realm="r", realm="s", nonce="n"',  # duplicate
        'Digest realm="r" nonce="n"',  # missing comma
        'Digest realm="r", nonce="n", stale=maybe',
        'Digest realm="r", nonce=',
        'Digest realm="r", nonce="n", @',
    ],
)
def test_malformed_challenges_raise_400(value: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_challenge(value)
    assert info.value.status == 400


def test_no_digest_challenge() -> None:
    with pytest.raises(ProtocolError):
        parse_challenge('Basic realm="x"')


@pytest.mark.parametrize(
    "value",
    [
        RFC2617_AUTHORIZATION.replace("nc=00000001", "nc=1"),
        RFC2617_AUTHORIZATION.replace("nc=00000001", "nc=0000000g"),
        RFC2617_AUTHORIZATION.replace(', cnonce="0a4f113b"', ""),
        RFC2617_AUTHORIZATION.replace('response="6629fae49393a05397450978507c4ef1", ', ""),
        RFC2617_AUTHORIZATION + ", " + RFC2617_AUTHORIZATION,
        RFC2617_AUTHORIZATION.replace('username="Mufasa"', "username*=KOI9''x"),
        RFC2617_AUTHORIZATION + ", username*=UTF-8''x",
        RFC2617_AUTHORIZATION.replace("Digest", "Basic"),
    ],
)
def test_malformed_credentials_raise_400(value: str) -> None:
    with pytest.raises(ProtocolError) as info:
        verify(value, "GET", "Circle Of Life")
    assert info.value.status == 400


def test_session_algorithm_without_cnonce_is_rejected() -> None:
    value = (
        'Digest username="a", realm="r", nonce="n", uri="sip:x", response="00", '
        "algorithm=MD5-sess"
    )
    with pytest.raises(ProtocolError):
        verify(value, "INVITE", "pw")


# -- with real SIP messages -----------------------------------------------------------------------


def test_parsed_401_answered_and_verified_after_a_round_trip() -> None:
    raw = (
        b"SIP/2.0 401 Unauthorized\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
        b"From: <sip:alice@example.org>;tag=a1\r\n"
        b"To: <sip:alice@example.org>;tag=s1\r\n"
        b"Call-ID: reg-1\r\n"
        b"CSeq: 1 REGISTER\r\n"
        b'WWW-Authenticate: Digest realm="example.org", nonce="n-md5", algorithm=MD5, qop="auth"\r\n'
        b'WWW-Authenticate: Digest realm="example.org", nonce="n-sha", algorithm=SHA-256, '
        b'qop="auth,auth-int", opaque="o,1"\r\n'
        b"Content-Length: 0\r\n\r\n"
    )
    response = parse_message(raw)
    client = DigestClient(Credentials("alice", "pw"), cnonce_source=lambda: "c0ffee")
    [(name, value)] = client.respond(response, "REGISTER", "sip:example.org")
    retry = make_request(
        "REGISTER",
        "sip:example.org",
        headers=[
            ("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK2"),
            ("From", "<sip:alice@example.org>;tag=a1"),
            ("To", "<sip:alice@example.org>"),
            ("Call-ID", "reg-1"),
            ("CSeq", "2 REGISTER"),
            (name, value),
        ],
    )
    received = parse_message(bytes(retry))
    header = received.get("Authorization")
    assert header is not None
    creds = parse_authorization(header)
    assert (creds.algorithm, creds.nonce, creds.opaque) == ("SHA-256", "n-sha", "o,1")
    assert verify(header, received.method, "pw", realm="example.org", nonce="n-sha")
