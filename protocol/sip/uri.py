"""SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966) and name-addr values.

Components are stored decoded (``%41`` becomes ``A``); a URI parsed from text remembers that
text so that serialising it gives back exactly the bytes received. Parsing is cached: URIs
repeat for the whole life of a dialog and the objects are immutable.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import quote, unquote

from protocol.errors import ProtocolError

__all__ = [
    "SipUri",
    "NameAddr",
    "parse_uri",
    "parse_name_addr",
    "parse_params",
    "read_quoted",
    "quote_param_value",
    "UnsupportedUriScheme",
]


class UnsupportedUriScheme(ProtocolError):
    """A well-formed URI whose scheme this stack does not handle (answer 416)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=416)


# Character sets of RFC 3261 §25.1, with "%" admitted so escapes can be checked separately.
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_USER_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+")
_PASSWORD_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,%]*")
# "_" is not in the hostname grammar but appears in deployed host names; accepting it costs nothing.
_HOST_RE = re.compile(r"[A-Za-z0-9\-_.]+")
_PARAM_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+")
_HNAME_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/?:+$%]+")
_HVALUE_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/?:+$%]*")
_TEL_RE = re.compile(r"\+?[0-9A-Fa-f*#\-.()]+")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOST_END_RE = re.compile(r"[:;?]")
_DIGITS_RE = re.compile(r"[0-9]+")
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# gen-value = token / host / quoted-string: a host adds ":" "[" "]" to the token characters.
_GEN_VALUE_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+")
_PARAM_SPLIT_RE = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)|;', re.S)
_VISUAL_SEPARATORS = str.maketrans("", "", "-.()")
_QUOTED_PAIR_RE = re.compile(r'["\\\x00-\x08\x0b\x0c\x0e-\x1f\x7f]')

# Parameters that must agree whenever either URI carries them (RFC 3261 §19.1.4).
_STRICT_PARAMS = frozenset(("user", "ttl", "method", "maddr", "transport"))

# Characters left unescaped when serialising a component built in code.
_USER_SAFE = "!*'()&=+$,;?/"
_PASSWORD_SAFE = "!*'()&=+$,"
_PARAM_SAFE = "!*'()[]/:&+$"
_HEADER_SAFE = "!*'()[]/?:+$"
_TEL_SAFE = "+*#-.()"

_URI_CACHE_SIZE = 4096
# Only short texts are cached, so that a flood of huge unique values cannot fill memory.
CACHED_TEXT_LIMIT = 512


def _unescape(text: str, what: str) -> str:
    if "%" not in text:
        return text
    if _BAD_ESCAPE_RE.search(text):
        raise ProtocolError(f"bad %-escape in URI {what}: {text!r}")
    # surrogateescape keeps escaped bytes that are not UTF-8 (e.g. %FF) and restores them on output.
    return unquote(text, errors="surrogateescape")


def _escape(text: str, safe: str) -> str:
    return quote(text, safe=safe, errors="surrogateescape")


def _port(text: str, context: str) -> int:
    digits = text.lstrip("0") or "0"
    if not _DIGITS_RE.fullmatch(text) or len(digits) > 5 or int(digits) > 65535:
        raise ProtocolError(f"bad port {text[:20]!r} in {context}")
    return int(digits)


def check_host(host: str, context: str) -> None:
    """Validate a hostname, IPv4 address or bracketed IPv6 reference."""
    if host.startswith("["):
        if not host.endswith("]"):
            raise ProtocolError(f"unterminated IPv6 reference {host!r} in {context}")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ProtocolError(f"bad IPv6 address {host!r} in {context}") from None
    elif not _HOST_RE.fullmatch(host):
        raise ProtocolError(f"bad host {host!r} in {context}")


def split_host_port(text: str, context: str) -> tuple[str, int | None]:
    """``host[:port]`` with ``host`` possibly an IPv6 reference in brackets."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ProtocolError(f"unterminated IPv6 reference in {context}: {text!r}")
        host, rest = text[: close + 1], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ProtocolError(f"unexpected {rest!r} after IPv6 reference in {context}")
    else:
        host, colon, port_text = text.partition(":")
        rest = colon + port_text
    check_host(host, context)
    port = _port(rest[1:], context) if rest else None
    return host, port


def _normal_host(host: str) -> str:
    if host.startswith("["):
        try:
            return "[" + ipaddress.IPv6Address(host[1:-1]).compressed + "]"
        except ValueError:
            return host.lower()
    return host.lower()


def quote_param_value(value: str) -> str:
    """A header-parameter value as written: bare when it is a token or host, else quoted."""
    if value and _GEN_VALUE_RE.fullmatch(value):
        return value
    return quote_string(value)


def quote_string(value: str) -> str:
    """A quoted-string for ``value``: backslash, quote and controls escaped as quoted-pairs; CR
    and LF, which no quoted-pair can carry, become spaces."""
    return '"' + _QUOTED_PAIR_RE.sub(r"\\\g<0>", value.replace("\r", " ").replace("\n", " ")) + '"'


def _format_params(params: tuple[tuple[str, str | None], ...]) -> str:
    return "".join(f";{n}" if v is None else f";{n}={quote_param_value(v)}" for n, v in params)


def read_quoted(text: str, start: int) -> tuple[str, int]:
    """Decode the quoted-string starting at ``text[start] == '"'``; return (value, index after it)."""
    out: list[str] = []
    i = start + 1
    n = len(text)
    while True:
        q = text.find('"', i)
        if q < 0:
            raise ProtocolError(f"unterminated quoted string: {text[start:start + 60]!r}")
        b = text.find("\\", i, q)
        if b < 0:
            out.append(text[i:q])
            return "".join(out), q + 1
        if b + 1 >= n:
            raise ProtocolError(f"quoted string ends in a backslash: {text[start:start + 60]!r}")
        out.append(text[i:b])
        out.append(text[b + 1])
        i = b + 2


def parse_params(text: str, context: str) -> tuple[tuple[str, str | None], ...]:
    """Header parameters ``*( SEMI generic-param )``; names lowercased, quoted values decoded."""
    text = text.strip(" \t")
    if not text:
        return ()
    if text[0] != ";":
        raise ProtocolError(f"unexpected {text[:40]!r} where ';' parameters were expected in {context}")
    if '"' in text:
        pieces: list[str] = []
        start = 1
        for m in _PARAM_SPLIT_RE.finditer(text, 1):
            if m.group() == ";":
                pieces.append(text[start : m.start()])
                start = m.end()
        pieces.append(text[start:])
    else:
        pieces = text[1:].split(";")
    out = []
    for piece in pieces:
        name, eq, value = piece.partition("=")
        name = name.strip(" \t")
        if not _TOKEN_RE.fullmatch(name):
            raise ProtocolError(f"bad parameter name {name!r} in {context}")
        if not eq:
            out.append((name.lower(), None))
            continue
        value = value.strip(" \t")
        if value.startswith('"'):
            decoded, end = read_quoted(value, 0)
            if end != len(value):
                raise ProtocolError(f"text after quoted value of parameter {name!r} in {context}")
            out.append((name.lower(), decoded))
        elif _GEN_VALUE_RE.fullmatch(value):
            out.append((name.lower(), value))
        else:
            raise ProtocolError(f"bad value {value!r} of parameter {name!r} in {context}")
    return tuple(out)


def _lookup(params: tuple[tuple[str, str | None], ...], name: str) -> tuple[bool, str | None]:
    name = name.lower()
    for n, v in params:
        if n == name:
            return True, v
    return False, None


@dataclass(frozen=True, slots=True)
class SipUri:
    """A ``sip:``, ``sips:`` or ``tel:`` URI. An IPv6 host keeps its brackets ("[::1]"). For tel
    URIs the number is ``user`` and ``host`` is ""."""

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    _text: str | None = field(default=None, init=False, repr=False, compare=False)

    def param(self, name: str) -> str | None:
        return _lookup(self.params, name)[1]

    def has_param(self, name: str) -> bool:
        return _lookup(self.params, name)[0]

    @property
    def host_port(self) -> str:
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return host if self.port is None else f"{host}:{self.port}"

    def matches(self, other: SipUri) -> bool:
        """URI equivalence of RFC 3261 §19.1.4 (RFC 3966 §4 for tel)."""
        if self.scheme != other.scheme:
            return False
        if self.scheme == "tel":
            return _tel_number(self.user) == _tel_number(other.user) and _param_map(
                self.params
            ) == _param_map(other.params)
        if self.user != other.user or self.password != other.password:
            return False
        if self.port != other.port or _normal_host(self.host) != _normal_host(other.host):
            return False
        mine, theirs = _param_map(self.params), _param_map(other.params)
        for name in mine.keys() | theirs.keys():
            if name in mine and name in theirs:
                if mine[name] != theirs[name]:
                    return False
            elif name in _STRICT_PARAMS:
                return False
        return sorted((n.lower(), v) for n, v in self.headers) == sorted(
            (n.lower(), v) for n, v in other.headers
        )

    def __str__(self) -> str:
        if self._text is not None:
            return self._text
        if self.scheme == "tel":
            return f"tel:{_escape(self.user or '', _TEL_SAFE)}{_format_uri_params(self.params)}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(_escape(self.user, _USER_SAFE))
            if self.password is not None:
                out.append(":" + _escape(self.password, _PASSWORD_SAFE))
            out.append("@")
        out.append(self.host_port)
        out.append(_format_uri_params(self.params))
        if self.headers:
            out.append(
                "?"
                + "&".join(
                    f"{_escape(n, _HEADER_SAFE)}={_escape(v, _HEADER_SAFE)}" for n, v in self.headers
                )
            )
        return "".join(out)


def _format_uri_params(params: tuple[tuple[str, str | None], ...]) -> str:
    return "".join(
        f";{_escape(n, _PARAM_SAFE)}"
        if v is None
        else f";{_escape(n, _PARAM_SAFE)}={_escape(v, _PARAM_SAFE)}"
        for n, v in params
    )


def _tel_number(number: str | None) -> str:
    return (number or "").translate(_VISUAL_SEPARATORS).lower()


def _param_map(params: tuple[tuple[str, str | None], ...]) -> dict[str, str]:
    return {n: (v or "").lower() for n, v in params}


def _uri_params(text: str, uri: str) -> tuple[tuple[str, str | None], ...]:
    out = []
    for piece in text.split(";"):
        name, eq, value = piece.partition("=")
        if not _PARAM_RE.fullmatch(name) or (eq and not _PARAM_RE.fullmatch(value)):
            raise ProtocolError(f"bad URI parameter {piece!r} in {uri!r}")
        out.append(
            (_unescape(name, "parameter").lower(), _unescape(value, "parameter") if eq else None)
        )
    return tuple(out)


def _uri_headers(text: str, uri: str) -> tuple[tuple[str, str], ...]:
    out = []
    for piece in text.split("&"):
        name, eq, value = piece.partition("=")
        if not eq or not _HNAME_RE.fullmatch(name) or not _HVALUE_RE.fullmatch(value):
            raise ProtocolError(f"bad URI header {piece!r} in {uri!r}")
        out.append((_unescape(name, "header"), _unescape(value, "header")))
    return tuple(out)


def parse_uri(text: str) -> SipUri:
    """Parse a sip/sips/tel URI; ProtocolError (416 for other schemes) on bad input."""
    return _parse_uri_cached(text) if len(text) <= CACHED_TEXT_LIMIT else _parse_uri(text)


def _parse_uri(text: str) -> SipUri:
    colon = text.find(":")
    if colon <= 0:
        raise ProtocolError(f"URI without a scheme: {text[:80]!r}")
    scheme = text[:colon]
    if not _SCHEME_RE.fullmatch(scheme):
        raise ProtocolError(f"bad URI scheme {scheme[:40]!r} in {text[:80]!r}")
    scheme = scheme.lower()
    rest = text[colon + 1 :]
    if scheme == "tel":
        uri = _parse_tel(rest, text)
    elif scheme == "sip" or scheme == "sips":
        uri = _parse_sip(scheme, rest, text)
    else:
        raise UnsupportedUriScheme(f"unsupported URI scheme {scheme!r} in {text[:80]!r}")
    object.__setattr__(uri, "_text", text)
    return uri


_parse_uri_cached = lru_cache(maxsize=_URI_CACHE_SIZE)(_parse_uri)


def _parse_tel(rest: str, text: str) -> SipUri:
    number, semi, params_text = rest.partition(";")
    if not _TEL_RE.fullmatch(number) or "+" in number[1:]:
        raise ProtocolError(f"bad telephone number in {text[:80]!r}")
    params = _uri_params(params_text, text) if semi else ()
    return SipUri("tel", number, None, "", None, params, ())


def _parse_sip(scheme: str, rest: str, text: str) -> SipUri:
    # "@" cannot appear unescaped anywhere but as the userinfo delimiter, while the user part may
    # hold ";", "?" and "," — so the userinfo is split off first.
    at = rest.find("@")
    user = password = None
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user_text, colon, password_text = userinfo.partition(":")
        if not _USER_RE.fullmatch(user_text):
            raise ProtocolError(f"bad user part {user_text[:60]!r} in URI {text[:80]!r}")
        user = _unescape(user_text, "user part")
        if colon:
            if not _PASSWORD_RE.fullmatch(password_text):
                raise ProtocolError(f"bad password in URI {text[:80]!r}")
            password = _unescape(password_text, "password")
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise ProtocolError(f"unterminated IPv6 reference in URI {text[:80]!r}")
        host, rest = rest[: close + 1], rest[close + 1 :]
        check_host(host, f"URI {text[:80]!r}")
    else:
        m = _HOST_END_RE.search(rest)
        end = m.start() if m else len(rest)
        host, rest = rest[:end], rest[end:]
        if not _HOST_RE.fullmatch(host):
            raise ProtocolError(f"bad host {host[:60]!r} in URI {text[:80]!r}")
    port = None
    if rest.startswith(":"):
        m = _HOST_END_RE.search(rest, 1)
        end = m.start() if m and m.group() != ":" else len(rest)
        port = _port(rest[1:end], f"URI {text[:80]!r}")
        rest = rest[end:]
    params: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    if rest.startswith(";"):
        params_text, q, headers_text = rest[1:].partition("?")
        params = _uri_params(params_text, text)
        rest = q + headers_text
    if rest.startswith("?"):
        headers = _uri_headers(rest[1:], text)
    elif rest:
        raise ProtocolError(f"unexpected {rest[:40]!r} in URI {text[:80]!r}")
    return SipUri(scheme, user, password, host, port, params, headers)


@dataclass(frozen=True, slots=True)
class NameAddr:
    """The value of From/To/Contact/Route/Record-Route/Refer-To: a URI, display name, parameters."""

    uri: SipUri
    display_name: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @property
    def tag(self) -> str | None:
        return _lookup(self.params, "tag")[1]

    def param(self, name: str) -> str | None:
        return _lookup(self.params, name)[1]

    def has_param(self, name: str) -> bool:
        return _lookup(self.params, name)[0]

    def with_param(self, name: str, value: str | None) -> NameAddr:
        """A copy with ``name`` set (replacing an existing value, else appended)."""
        name = name.lower()
        kept = tuple((n, v) for n, v in self.params if n != name)
        if len(kept) == len(self.params):
            return NameAddr(self.uri, self.display_name, self.params + ((name, value),))
        params = tuple((n, value) if n == name else (n, v) for n, v in self.params)
        return NameAddr(self.uri, self.display_name, params)

    def __str__(self) -> str:
        if self.display_name is None:
            head = f"<{self.uri}>"
        else:
            head = f"{quote_string(self.display_name)} <{self.uri}>"
        return head + _format_params(self.params)


def parse_name_addr(text: str) -> NameAddr:
    """Parse ``name-addr`` or ``addr-spec`` with header parameters; ProtocolError on bad input."""
    return _parse_name_addr_cached(text) if len(text) <= CACHED_TEXT_LIMIT else _parse_name_addr(text)


def _parse_name_addr(text: str) -> NameAddr:
    s = text.strip(" \t")
    if not s:
        raise ProtocolError("empty address")
    display: str | None
    if s[0] == '"':
        display, i = read_quoted(s, 0)
        lt = s.find("<", i)
        if lt < 0 or s[i:lt].strip(" \t"):
            raise ProtocolError(f"quoted display name not followed by <URI> in {s[:80]!r}")
    else:
        lt = s.find("<")
        semi = s.find(";")
        if lt < 0 or (0 <= semi < lt):
            # addr-spec: a URI with ",", "?" or ";" of its own would have needed <> (RFC 3261 §20).
            uri_text, params_text = (s[:semi], s[semi:]) if semi >= 0 else (s, "")
            uri_text = uri_text.rstrip(" \t")
            if "?" in uri_text or "," in uri_text or " " in uri_text or "\t" in uri_text:
                raise ProtocolError(f"URI with '?', ',' or spaces must be enclosed in <> in {s[:80]!r}")
            return NameAddr(parse_uri(uri_text), None, parse_params(params_text, "address"))
        words = s[:lt].split()
        for word in words:
            if not _TOKEN_RE.fullmatch(word):
                raise ProtocolError(f"display name {s[:lt].strip()!r} must be quoted")
        display = " ".join(words) if words else None
    gt = s.find(">", lt)
    if gt < 0:
        raise ProtocolError(f"'<' without '>' in {s[:80]!r}")
    uri_text = s[lt + 1 : gt]
    if uri_text != uri_text.strip(" \t"):
        raise ProtocolError(f"spaces around the URI inside <> in {s[:80]!r}")
    return NameAddr(parse_uri(uri_text), display, parse_params(s[gt + 1 :], "address"))


_parse_name_addr_cached = lru_cache(maxsize=_URI_CACHE_SIZE)(_parse_name_addr)
