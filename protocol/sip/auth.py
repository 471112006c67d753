"""HTTP Digest authentication for SIP (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760).

Pure functions and small state holders: challenge/credentials header values are parsed and built
as strings, hashes computed with :mod:`hashlib`, the client nonce comes from an injected source so
the output is reproducible. Nothing here touches the network or a clock.

Client side::

    client = DigestClient(Credentials("alice", "secret"))
    for name, value in client.respond(response_401, "REGISTER", "sip:example.org"):
        request.add(name, value)

Server side::

    value = make_challenge("example.org", nonce, algorithm="SHA-256")   # -> WWW-Authenticate
    ok = verify(request.get("Authorization"), "REGISTER", password="secret")
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote

from protocol.errors import ProtocolError

__all__ = [
    "ALGORITHMS",
    "Authorization",
    "Challenge",
    "Credentials",
    "DigestClient",
    "challenges_of",
    "compute_ha1",
    "compute_response",
    "hash_username",
    "make_challenge",
    "parse_authorization",
    "parse_challenge",
    "parse_challenges",
    "select_challenge",
    "verify",
]

# Canonical algorithm name -> (hashlib name, session variant, strength rank). The rank orders the
# choice among several offered challenges; "-sess" ranks with its base hash.
ALGORITHMS: Mapping[str, tuple[str, bool, int]] = {
    "MD5": ("md5", False, 1),
    "MD5-sess": ("md5", True, 1),
    "SHA-256": ("sha256", False, 2),
    "SHA-256-sess": ("sha256", True, 2),
    "SHA-512-256": ("sha512_256", False, 3),
    "SHA-512-256-sess": ("sha512_256", True, 3),
}
_CANONICAL = {name.lower(): name for name in ALGORITHMS}
# The non-session algorithm a stored H(username:realm:password) is computed with.
ALGORITHMS_BASE: Mapping[str, str] = {name: name.removesuffix("-sess") for name in ALGORITHMS}

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_HEX = re.compile(r"[0-9A-Fa-f]+")


class _Headers(Protocol):
    def get_all(self, name: str) -> list[str]: ...


def _canonical_algorithm(name: str | None) -> str | None:
    """The canonical spelling of a known algorithm; MD5 when absent (RFC 2617 §3.2.1)."""
    if name is None:
        return "MD5"
    return _CANONICAL.get(name.lower())


def _hasher(algorithm: str) -> Callable[[str], str]:
    try:
        hash_name = ALGORITHMS[algorithm][0]
    except KeyError:
        raise ProtocolError(f"unsupported digest algorithm {algorithm!r}") from None

    def digest(text: str) -> str:
        return hashlib.new(hash_name, text.encode("utf-8")).hexdigest()

    return digest


# -- header value scanner -------------------------------------------------------------------------


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string starting at ``text[pos] == '"'``; returns (unescaped value, next pos)."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        ch = text[pos]
        if ch == "\\":
            if pos + 1 >= len(text):
                break
            out.append(text[pos + 1])
            pos += 2
            continue
        if ch == '"':
            return "".join(out), pos + 1
        out.append(ch)
        pos += 1
    raise ProtocolError("unterminated quoted-string in auth header")


@dataclass(slots=True)
class _RawChallenge:
    scheme: str
    params: list[tuple[str, str]] = field(default_factory=list)
    token68: str | None = None


def _scan(text: str) -> list[_RawChallenge]:
    """Split an auth header value into schemes with their parameters.

    One header value may hold several challenges (``Digest a=1, b=2, Digest a=3``): a token that
    is not followed by ``=`` starts a new scheme.
    """
    result: list[_RawChallenge] = []
    current: _RawChallenge | None = None
    pos = 0
    n = len(text)
    while True:
        pos = _skip_ws(text, pos)
        while pos < n and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        if pos >= n:
            break
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ProtocolError(f"unexpected {text[pos]!r} at {pos} in auth header")
        name = match.group()
        pos = _skip_ws(text, match.end())
        if pos < n and text[pos] == "=":
            if current is None:
                raise ProtocolError("auth parameter before any scheme")
            pos = _skip_ws(text, pos + 1)
            if pos < n and text[pos] == '"':
                value, pos = _read_quoted(text, pos)
            else:
                vmatch = _TOKEN.match(text, pos)
                if vmatch is None:
                    raise ProtocolError(f"missing value for auth parameter {name!r}")
                value, pos = vmatch.group(), vmatch.end()
            current.params.append((name.lower(), value))
            pos = _skip_ws(text, pos)
            if pos < n and text[pos] != ",":
                raise ProtocolError(f"expected ',' after auth parameter {name!r}")
            continue
        current = _RawChallenge(name)
        result.append(current)
        # A token68 credential (``Basic dXNlcg==``) follows the scheme without a name.
        if not _starts_param(text, pos):
            t68 = _TOKEN68.match(text, pos)
            if t68 is not None:
                after = _skip_ws(text, t68.end())
                if after >= n or text[after] == ",":
                    current.token68 = t68.group()
                    pos = after
    return result


def _starts_param(text: str, pos: int) -> bool:
    """Whether ``text[pos:]`` begins ``name=value`` (as opposed to a token68 ending in ``=``)."""
    match = _TOKEN.match(text, pos)
    if match is None:
        return False
    after = _skip_ws(text, match.end())
    if after >= len(text) or text[after] != "=":
        return False
    value_at = _skip_ws(text, after + 1)
    return value_at < len(text) and text[value_at] not in ",="


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _params_dict(raw: _RawChallenge, what: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in raw.params:
        if name in params:
            raise ProtocolError(f"duplicate {name!r} in {what}")
        params[name] = value
    return params


def _bool_param(value: str | None, name: str) -> bool:
    if value is None:
        return False
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise ProtocolError(f"{name} must be true or false, got {value!r}")
    return lowered == "true"


# -- challenges -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    """One Digest challenge (``WWW-Authenticate``/``Proxy-Authenticate`` value).

    ``algorithm`` is the canonical name, or the text as received when it is not one we implement
    (``supported`` is then False). ``qop`` lists the offered options, empty for RFC 2069 servers.
    """

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    domain: str | None = None
    userhash: bool = False
    charset: str | None = None
    # True when the challenge came from Proxy-Authenticate (the answer goes in Proxy-Authorization).
    proxy: bool = False

    @property
    def supported(self) -> bool:
        return self.algorithm in ALGORITHMS

    @property
    def header_name(self) -> str:
        """The request header that answers this challenge."""
        return "Proxy-Authorization" if self.proxy else "Authorization"

    def __str__(self) -> str:
        parts = [f"realm={_quote(self.realm)}"]
        if self.domain is not None:
            parts.append(f"domain={_quote(self.domain)}")
        parts.append(f"nonce={_quote(self.nonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.stale:
            parts.append("stale=TRUE")
        parts.append(f"algorithm={self.algorithm}")
        if self.qop:
            parts.append(f"qop={_quote(','.join(self.qop))}")
        if self.charset is not None:
            parts.append(f"charset={self.charset}")
        if self.userhash:
            parts.append("userhash=true")
        return "Digest " + ", ".join(parts)


def _challenge_from_raw(raw: _RawChallenge, proxy: bool) -> Challenge:
    params = _params_dict(raw, "challenge")
    realm = params.get("realm")
    nonce = params.get("nonce")
    if realm is None:
        raise ProtocolError("Digest challenge without realm")
    if nonce is None:
        raise ProtocolError("Digest challenge without nonce")
    algorithm_text = params.get("algorithm")
    algorithm = _canonical_algorithm(algorithm_text) or (algorithm_text or "MD5")
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    return Challenge(
        realm=realm,
        nonce=nonce,
        algorithm=algorithm,
        qop=qop,
        opaque=params.get("opaque"),
        stale=_bool_param(params.get("stale"), "stale"),
        domain=params.get("domain"),
        userhash=_bool_param(params.get("userhash"), "userhash"),
        charset=params.get("charset"),
        proxy=proxy,
    )


def parse_challenges(value: str, *, proxy: bool = False) -> list[Challenge]:
    """Every Digest challenge in one header value; other schemes (Basic, Bearer...) are skipped."""
    return [
        _challenge_from_raw(raw, proxy)
        for raw in _scan(value)
        if raw.scheme.lower() == "digest"
    ]


def parse_challenge(value: str, *, proxy: bool = False) -> Challenge:
    """The single Digest challenge of a header value; ProtocolError when there is none."""
    challenges = parse_challenges(value, proxy=proxy)
    if not challenges:
        raise ProtocolError("no Digest challenge in header")
    return challenges[0]


def challenges_of(message: _Headers) -> list[Challenge]:
    """All Digest challenges of a 401/407 response, WWW-Authenticate first, in header order."""
    found: list[Challenge] = []
    for header, proxy in (("WWW-Authenticate", False), ("Proxy-Authenticate", True)):
        for value in message.get_all(header):
            found.extend(parse_challenges(value, proxy=proxy))
    return found


def _qop_choice(challenge: Challenge) -> str | None:
    """The qop we answer with: ``auth`` when offered, else ``auth-int``, else none (RFC 2069)."""
    if not challenge.qop:
        return None
    if "auth" in challenge.qop:
        return "auth"
    if "auth-int" in challenge.qop:
        return "auth-int"
    return ""  # offered only options we do not know: unusable


def select_challenge(challenges: Iterable[Challenge]) -> Challenge | None:
    """The strongest usable challenge: best hash first, then one offering qop; ties keep order."""
    best: Challenge | None = None
    best_key: tuple[int, int] | None = None
    for challenge in challenges:
        if not challenge.supported:
            continue
        qop = _qop_choice(challenge)
        if qop == "":
            continue
        key = (ALGORITHMS[challenge.algorithm][2], 0 if qop is None else 1)
        if best_key is None or key > best_key:
            best, best_key = challenge, key
    return best


def make_challenge(
    realm: str,
    nonce: str,
    algorithm: str = "MD5",
    qop: str | Iterable[str] | None = "auth",
    opaque: str | None = None,
    stale: bool = False,
    *,
    userhash: bool = False,
    domain: str | None = None,
) -> str:
    """A ``WWW-Authenticate``/``Proxy-Authenticate`` value. ``qop=None`` issues an RFC 2069 challenge."""
    canonical = _canonical_algorithm(algorithm)
    if canonical is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    if qop is None:
        qops: tuple[str, ...] = ()
    elif isinstance(qop, str):
        qops = tuple(q.strip() for q in qop.split(",") if q.strip())
    else:
        qops = tuple(qop)
    for q in qops:
        if q not in ("auth", "auth-int"):
            raise ValueError(f"unsupported qop {q!r}")
    return str(
        Challenge(
            realm=realm,
            nonce=nonce,
            algorithm=canonical,
            qop=qops,
            opaque=opaque,
            stale=stale,
            domain=domain,
            userhash=userhash,
        )
    )


# -- the digest computation -----------------------------------------------------------------------


def hash_username(algorithm: str, username: str, realm: str) -> str:
    """The ``userhash=true`` form of a username: H(username ":" realm) (RFC 7616 §3.4.4)."""
    return _hasher(_require_algorithm(algorithm))(f"{username}:{realm}")


def _require_algorithm(algorithm: str) -> str:
    canonical = _canonical_algorithm(algorithm)
    if canonical is None:
        raise ProtocolError(f"unsupported digest algorithm {algorithm!r}")
    return canonical


def compute_ha1(
    algorithm: str,
    username: str,
    realm: str,
    password: str | None = None,
    *,
    ha1: str | None = None,
    nonce: str | None = None,
    cnonce: str | None = None,
) -> str:
    """H(A1). ``ha1`` is a stored H(username:realm:password) used instead of the password;
    for ``-sess`` algorithms it is then bound to nonce and cnonce (RFC 2617 §3.2.2.2)."""
    canonical = _require_algorithm(algorithm)
    h = _hasher(canonical)
    if ha1 is None:
        if password is None:
            raise ValueError("compute_ha1 needs a password or a stored ha1")
        ha1 = h(f"{username}:{realm}:{password}")
    else:
        ha1 = ha1.lower()
    if ALGORITHMS[canonical][1]:
        if nonce is None or cnonce is None:
            raise ProtocolError(f"{canonical} needs nonce and cnonce")
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    return ha1


def compute_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    nonce: str,
    method: str,
    uri: str,
    password: str | None = None,
    ha1: str | None = None,
    qop: str | None = None,
    nc: int | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The ``response`` value (RFC 2617 §3.2.2.1, RFC 7616 §3.4.1)."""
    canonical = _require_algorithm(algorithm)
    h = _hasher(canonical)
    secret = compute_ha1(
        canonical, username, realm, password, ha1=ha1, nonce=nonce, cnonce=cnonce
    )
    if qop == "auth-int":
        body_hash = hashlib.new(ALGORITHMS[canonical][0], body).hexdigest()
        ha2 = h(f"{method}:{uri}:{body_hash}")
    elif qop in (None, "auth"):
        ha2 = h(f"{method}:{uri}")
    else:
        raise ProtocolError(f"unsupported qop {qop!r}")
    if qop is None:
        return h(f"{secret}:{nonce}:{ha2}")
    if nc is None or cnonce is None:
        raise ProtocolError("qop requires nc and cnonce")
    return h(f"{secret}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}")


# -- credentials (Authorization / Proxy-Authorization) --------------------------------------------


@dataclass(frozen=True, slots=True)
class Authorization:
    """A parsed ``Authorization``/``Proxy-Authorization`` Digest value."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    cnonce: str | None = None
    qop: str | None = None
    nc: int | None = None
    opaque: str | None = None
    userhash: bool = False

    def __str__(self) -> str:
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
            f"algorithm={self.algorithm}",
        ]
        if self.cnonce is not None:
            parts.append(f"cnonce={_quote(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.qop is not None:
            parts.append(f"qop={self.qop}")
        if self.nc is not None:
            parts.append(f"nc={self.nc:08x}")
        if self.userhash:
            parts.append("userhash=true")
        return "Digest " + ", ".join(parts)


def _decode_ext_value(value: str) -> str:
    """RFC 8187 ext-value (``UTF-8''J%C3%A4s%C3%B8n``), used by ``username*``."""
    charset, sep, rest = value.partition("'")
    _lang, sep2, encoded = rest.partition("'")
    if not sep or not sep2 or charset.lower() not in ("utf-8", "iso-8859-1"):
        raise ProtocolError(f"bad username* value {value!r}")
    return unquote(encoded, encoding=charset.lower(), errors="strict")


def parse_authorization(value: str) -> Authorization:
    """Parse a Digest credentials value; ProtocolError(400) when it is malformed or incomplete."""
    raws = [raw for raw in _scan(value) if raw.scheme.lower() == "digest"]
    if len(raws) != 1:
        raise ProtocolError("expected exactly one Digest credentials value")
    params = _params_dict(raws[0], "credentials")
    if "username*" in params:
        if "username" in params:
            raise ProtocolError("both username and username* present")
        params["username"] = _decode_ext_value(params.pop("username*"))
    missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in params]
    if missing:
        raise ProtocolError(f"Digest credentials missing {', '.join(missing)}")
    algorithm_text = params.get("algorithm")
    algorithm = _canonical_algorithm(algorithm_text) or (algorithm_text or "MD5")
    qop = params.get("qop")
    nc_text = params.get("nc")
    nc: int | None = None
    if nc_text is not None:
        if len(nc_text) != 8 or not _HEX.fullmatch(nc_text):
            raise ProtocolError(f"nc must be 8 hex digits, got {nc_text!r}")
        nc = int(nc_text, 16)
    if qop is not None and (nc is None or "cnonce" not in params):
        raise ProtocolError("qop present without nc and cnonce")
    return Authorization(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"],
        algorithm=algorithm,
        cnonce=params.get("cnonce"),
        qop=qop.lower() if qop is not None else None,
        nc=nc,
        opaque=params.get("opaque"),
        userhash=_bool_param(params.get("userhash"), "userhash"),
    )


def verify(
    authorization: str | Authorization,
    method: str,
    password: str | None = None,
    *,
    ha1_lookup: Callable[[Authorization], str | None] | None = None,
    body: bytes = b"",
    realm: str | None = None,
    nonce: str | None = None,
    username: str | None = None,
) -> bool:
    """Check Digest credentials against a password or a stored H(A1).

    ``ha1_lookup`` receives the parsed credentials and returns H(username:realm:password) computed
    with the base hash of ``authorization.algorithm`` (``ALGORITHMS_BASE``), or None for an unknown
    user; with ``userhash=true`` the ``username`` it sees is the hash, which the lookup resolves.
    ``realm``/``nonce``/``username``, when given, must equal the credentials' values. Nonce freshness and nc replay checks belong to
    the caller, which issued the nonce. Malformed input raises ProtocolError; well-formed but
    wrong credentials return False. The final comparison is constant-time.
    """
    if (password is None) == (ha1_lookup is None):
        raise ValueError("verify needs exactly one of password or ha1_lookup")
    creds = (
        parse_authorization(authorization) if isinstance(authorization, str) else authorization
    )
    if creds.algorithm not in ALGORITHMS:
        return False
    if realm is not None and creds.realm != realm:
        return False
    if nonce is not None and creds.nonce != nonce:
        return False
    if creds.qop not in (None, "auth", "auth-int"):
        return False
    if username is not None:
        if creds.userhash:
            matches = creds.username.lower() == hash_username(creds.algorithm, username, creds.realm)
        else:
            matches = creds.username == username
        if not matches:
            return False
    ha1: str | None = None
    real_username = creds.username
    if password is not None:
        if creds.userhash:
            if username is None:
                raise ValueError("userhash credentials need the real username to verify a password")
            real_username = username
    else:
        assert ha1_lookup is not None
        ha1 = ha1_lookup(creds)
        if ha1 is None:
            return False
    expected_response = compute_response(
        algorithm=creds.algorithm,
        username=real_username,
        realm=creds.realm,
        nonce=creds.nonce,
        method=method,
        uri=creds.uri,
        password=password,
        ha1=ha1,
        qop=creds.qop,
        nc=creds.nc,
        cnonce=creds.cnonce,
        body=body,
    )
    return hmac.compare_digest(expected_response.encode(), creds.response.lower().encode())


# -- client ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user's secret for one realm (``realm=None``: any realm). ``ha1`` may replace the password:
    it is H(username:realm:password) for ``ha1_algorithm``."""

    username: str
    password: str | None = None
    realm: str | None = None
    ha1: str | None = None
    ha1_algorithm: str = "MD5"

    def __post_init__(self) -> None:
        if self.password is None and self.ha1 is None:
            raise ValueError("Credentials need a password or an ha1")


@dataclass(slots=True)
class _NonceUse:
    cnonce: str
    nc: int = 0


def _default_cnonce() -> str:
    return secrets.token_hex(8)


class DigestClient:
    """Answers challenges and keeps the per-nonce counters.

    One cnonce is drawn per nonce and kept for its reuses (which ``-sess`` requires, RFC 2617
    §3.2.2.2), and ``nc`` counts the requests sent with that nonce. The last challenge answered
    per realm is kept so later requests can carry credentials before being challenged again.
    """

    __slots__ = ("_credentials", "_cnonce_source", "_nonces", "_last")

    def __init__(
        self,
        credentials: Credentials | Iterable[Credentials] | Callable[[str], Credentials | None],
        *,
        cnonce_source: Callable[[], str] = _default_cnonce,
    ) -> None:
        if isinstance(credentials, Credentials):
            table: tuple[Credentials, ...] = (credentials,)
            self._credentials: Callable[[str], Credentials | None] = (
                lambda realm: _pick(table, realm)
            )
        elif callable(credentials):
            self._credentials = credentials
        else:
            table = tuple(credentials)
            self._credentials = lambda realm: _pick(table, realm)
        self._cnonce_source = cnonce_source
        self._nonces: dict[tuple[str, str], _NonceUse] = {}  # (realm, nonce) -> use
        # (proxy?, realm) -> the challenge last answered
        self._last: dict[tuple[bool, str], Challenge] = {}

    def authorization(
        self, challenge: Challenge, method: str, uri: str, body: bytes = b""
    ) -> str:
        """The credentials value answering ``challenge`` for one request (nc advances by one).

        Raises ProtocolError when the challenge's algorithm or qop is not usable and LookupError
        when no credentials are known for its realm.
        """
        if not challenge.supported:
            raise ProtocolError(f"unsupported digest algorithm {challenge.algorithm!r}")
        qop = _qop_choice(challenge)
        if qop == "":
            raise ProtocolError(f"no supported qop in {challenge.qop!r}")
        creds = self._credentials(challenge.realm)
        if creds is None:
            raise LookupError(f"no credentials for realm {challenge.realm!r}")
        key = (challenge.realm, challenge.nonce)
        use = self._nonces.get(key)
        if use is None:
            use = self._nonces[key] = _NonceUse(self._cnonce_source())
        use.nc += 1
        cnonce, nc = use.cnonce, use.nc
        self._last[(challenge.proxy, challenge.realm)] = challenge
        ha1 = None
        if creds.password is None:
            if _canonical_algorithm(creds.ha1_algorithm) != ALGORITHMS_BASE[challenge.algorithm]:
                raise ProtocolError(
                    f"stored ha1 is {creds.ha1_algorithm}, challenge wants {challenge.algorithm}"
                )
            ha1 = creds.ha1
        response = compute_response(
            algorithm=challenge.algorithm,
            username=creds.username,
            realm=challenge.realm,
            nonce=challenge.nonce,
            method=method,
            uri=uri,
            password=creds.password,
            ha1=ha1,
            qop=qop,
            nc=nc if qop else None,
            cnonce=cnonce if qop else None,
            body=body,
        )
        username = (
            hash_username(challenge.algorithm, creds.username, challenge.realm)
            if challenge.userhash
            else creds.username
        )
        return str(
            Authorization(
                username=username,
                realm=challenge.realm,
                nonce=challenge.nonce,
                uri=uri,
                response=response,
                algorithm=challenge.algorithm,
                cnonce=cnonce if qop else None,
                qop=qop,
                nc=nc if qop else None,
                opaque=challenge.opaque,
                userhash=challenge.userhash,
            )
        )

    def respond(
        self, response: _Headers, method: str, uri: str, body: bytes = b""
    ) -> list[tuple[str, str]]:
        """Header pairs answering a 401/407: the strongest challenge of each realm (and of each of
        WWW-/Proxy-Authenticate), for realms we hold credentials for. Empty when none is usable."""
        groups: dict[tuple[bool, str], list[Challenge]] = {}
        for challenge in challenges_of(response):
            groups.setdefault((challenge.proxy, challenge.realm), []).append(challenge)
        headers: list[tuple[str, str]] = []
        for (_proxy, realm), group in groups.items():
            chosen = select_challenge(group)
            if chosen is None or self._credentials(realm) is None:
                continue
            headers.append((chosen.header_name, self.authorization(chosen, method, uri, body)))
        return headers

    def preemptive(self, method: str, uri: str, body: bytes = b"") -> list[tuple[str, str]]:
        """Credentials for a new request reusing the nonces last answered (nc advances), so a
        refresh does not cost a 401 round trip. A stale nonce is answered by the next 401."""
        return [
            (challenge.header_name, self.authorization(challenge, method, uri, body))
            for challenge in list(self._last.values())
        ]

    def forget(self, realm: str | None = None) -> None:
        """Drop remembered nonces (all, or one realm's)."""
        if realm is None:
            self._nonces.clear()
            self._last.clear()
            return
        self._nonces = {k: v for k, v in self._nonces.items() if k[0] != realm}
        self._last = {k: v for k, v in self._last.items() if k[1] != realm}



def _pick(table: tuple[Credentials, ...], realm: str) -> Credentials | None:
    fallback = None
    for creds in table:
        if creds.realm == realm:
            return creds
        if creds.realm is None and fallback is None:
            fallback = creds
    return fallback
