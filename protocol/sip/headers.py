"""SIP header fields: names, list splitting, the header store and the typed values of Via, CSeq
and Contact (RFC 3261 §7.3, §20, §25)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from protocol.errors import ProtocolError
from protocol.sip.uri import (
    _GEN_VALUE_RE,
    _TOKEN_RE,
    CACHED_TEXT_LIMIT,
    NameAddr,
    check_host,
    parse_name_addr,
    parse_params,
    quote_param_value,
    split_host_port,
)

__all__ = [
    "COMPACT_FORMS",
    "LIST_HEADERS",
    "Headers",
    "Via",
    "CSeq",
    "Contact",
    "header_key",
    "split_list",
    "parse_via",
    "parse_cseq",
    "parse_contacts",
]

COMPACT_FORMS: dict[str, str] = {
    "i": "call-id",
    "m": "contact",
    "f": "from",
    "t": "to",
    "v": "via",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "s": "subject",
    "e": "content-encoding",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "u": "allow-events",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
}

# Headers whose grammar is a comma-separated list (RFC 3261 §20 and extensions). Not listed, so
# never split: WWW-Authenticate, Authorization, Proxy-Authenticate, Proxy-Authorization (commas
# separate their parameters), Date, Subject, Call-ID, User-Agent, Server, Organization...
LIST_HEADERS = frozenset(
    (
        "via",
        "contact",
        "route",
        "record-route",
        "path",
        "service-route",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "accept-contact",
        "reject-contact",
        "allow-events",
        "content-encoding",
        "content-language",
        "in-reply-to",
        "alert-info",
        "call-info",
        "error-info",
        "warning",
        "p-asserted-identity",
        "p-preferred-identity",
        "history-info",
        "reason",
        "security-client",
        "security-server",
        "security-verify",
        "privacy",
        "request-disposition",
    )
)

_BAD_VALUE_RE = re.compile(r"[\r\n]")
# Controls other than HTAB may only appear escaped as quoted-pairs (RFC 3261 §25.1).
CTL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Each alternative that can start also always succeeds (an unterminated quote or "<" runs to the
# end), so the scan stays linear however many unbalanced '"' or '<' an input holds.
_LIST_SPLIT_RE = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)|<[^>]*(?:>|\Z)|,', re.S)
_DIGITS_RE = re.compile(r"[0-9]+")
_Q_RE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")
_KEY_CACHE: dict[str, str] = {}
_KEY_CACHE_LIMIT = 2048
_MAX_EXPIRES = 2**32 - 1
MAX_CSEQ = 2**31 - 1


def header_key(name: str) -> str:
    """The lookup key of a header name: compact form expanded, lowercased. Validates the name."""
    key = _KEY_CACHE.get(name)
    if key is not None:
        return key
    if not _TOKEN_RE.fullmatch(name):
        raise ProtocolError(f"bad header name {name[:60]!r}")
    key = name.lower()
    key = COMPACT_FORMS.get(key, key)
    if len(_KEY_CACHE) < _KEY_CACHE_LIMIT and len(name) <= 64:
        _KEY_CACHE[name] = key
    return key


def split_list(value: str) -> list[str]:
    """Split at commas outside quoted strings and <...>; elements stripped, empties kept."""
    if '"' not in value and "<" not in value:
        return [p.strip(" \t") for p in value.split(",")]
    parts = []
    start = 0
    for m in _LIST_SPLIT_RE.finditer(value):
        if m.group() == ",":
            parts.append(value[start : m.start()].strip(" \t"))
            start = m.end()
    parts.append(value[start:].strip(" \t"))
    return parts


def check_controls(text: str) -> None:
    """Refuse a control character unless it is escaped by a backslash (a quoted-pair)."""
    for m in CTL_RE.finditer(text):
        i = m.start()
        if i == 0 or text[i - 1] != "\\":
            raise ProtocolError(f"control character {m.group()!r} in a header")


def _check_value(value: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"header value must be str, not {type(value).__name__}")
    if _BAD_VALUE_RE.search(value):
        raise ProtocolError(f"header value contains CR or LF: {value[:60]!r}")
    if CTL_RE.search(value):
        check_controls(value)
    return value.strip(" \t")


class Headers:
    """Ordered header fields as received (names kept as written), with typed views cached
    until the next change. A field that came off the wire keeps its exact text, so an unchanged
    message serialises to the bytes it was parsed from."""

    __slots__ = ("_items", "_views")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        # (key, name as written, value, the field's text as received or None)
        self._items: list[tuple[str, str, str, str | None]] = []
        self._views: dict[str, Any] = {}
        for name, value in items:
            self.add(name, value)

    @classmethod
    def _from_parsed(cls, items: list[tuple[str, str, str, str | None]]) -> Headers:
        self = cls.__new__(cls)
        self._items = items
        self._views = {}
        return self

    def copy(self) -> Headers:
        return Headers._from_parsed(list(self._items))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((name, value) for _, name, value, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = header_key(name)
        return any(item[0] == key for item in self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(i[0], i[2]) for i in self._items] == [(i[0], i[2]) for i in other._items]

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def keys(self) -> list[str]:
        """The lookup key of every field, in order (compact forms expanded, lowercased)."""
        return [item[0] for item in self._items]

    def lines(self, name: str) -> list[str]:
        """The value of each field named ``name``, without splitting at commas."""
        key = header_key(name)
        return [v for k, _, v, _ in self._items if k == key]

    def elements(self, name: str) -> list[str]:
        """Every comma-separated element of a list header, empty elements kept (for validation)."""
        return self._elements(header_key(name))

    def _lines(self, key: str) -> list[str]:
        return [v for k, _, v, _ in self._items if k == key]

    def _elements(self, key: str) -> list[str]:
        out: list[str] = []
        for k, _, v, _ in self._items:
            if k == key:
                out.extend(split_list(v))
        return out

    def get(self, name: str) -> str | None:
        key = header_key(name)
        for k, _, v, _ in self._items:
            if k == key:
                if key in LIST_HEADERS:
                    for element in split_list(v):
                        if element:
                            return element
                    continue
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        key = header_key(name)
        if key in LIST_HEADERS:
            out: list[str] = []
            for k, _, v, _ in self._items:
                if k == key:
                    out.extend(e for e in split_list(v) if e)
            return out
        return [v for k, _, v, _ in self._items if k == key]

    def set(self, name: str, value: str) -> None:
        """Replace the first field named ``name`` in place (dropping the others), else append."""
        key = header_key(name)
        value = _check_value(value)
        self._views.clear()
        for i, (k, n, _, _) in enumerate(self._items):
            if k == key:
                self._items[i] = (k, n, value, None)
                self._items[i + 1 :] = [item for item in self._items[i + 1 :] if item[0] != key]
                return
        self._items.append((key, name, value, None))

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        """Add a field after the last one of the same name (or at the end); ``first=True`` puts it
        before the first one of that name (or at the top), as a new Via or Record-Route goes."""
        key = header_key(name)
        item = (key, name, _check_value(value), None)
        self._views.clear()
        positions = [i for i, item in enumerate(self._items) if item[0] == key]
        if first:
            self._items.insert(positions[0] if positions else 0, item)
        elif positions:
            self._items.insert(positions[-1] + 1, item)
        else:
            self._items.append(item)

    def remove(self, name: str) -> int:
        """Remove every field named ``name``; return how many there were."""
        key = header_key(name)
        before = len(self._items)
        self._items = [item for item in self._items if item[0] != key]
        self._views.clear()
        return before - len(self._items)

    def view(self, key: str, build: Callable[[Headers], Any]) -> Any:
        """A typed value computed from the fields, cached until the headers change."""
        try:
            return self._views[key]
        except KeyError:
            value = self._views[key] = build(self)
            return value


@dataclass(frozen=True, slots=True)
class Via:
    """One via-parm. ``params`` holds the parameters other than branch, received and rport."""

    transport: str
    host: str
    port: int | None = None
    branch: str | None = None
    received: str | None = None
    rport: int | bool | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @property
    def sent_by(self) -> str:
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return host if self.port is None else f"{host}:{self.port}"

    def param(self, name: str) -> str | None:
        name = name.lower()
        if name == "branch":
            return self.branch
        if name == "received":
            return self.received
        if name == "rport":
            return None if self.rport is None or self.rport is True else str(self.rport)
        for n, v in self.params:
            if n == name:
                return v
        return None

    def __str__(self) -> str:
        # A Via built in code is checked here, on its way out, rather than on every parse.
        if not _TOKEN_RE.fullmatch(self.transport):
            raise ProtocolError(f"bad Via transport {self.transport!r}")
        check_host(self.host if ":" not in self.host or self.host.startswith("[") else f"[{self.host}]", "Via")
        if self.branch is not None and not _TOKEN_RE.fullmatch(self.branch):
            raise ProtocolError(f"bad Via branch {self.branch!r}")
        if self.received is not None and not _GEN_VALUE_RE.fullmatch(self.received):
            raise ProtocolError(f"bad Via received {self.received!r}")
        out = [f"SIP/2.0/{self.transport} {self.sent_by}"]
        if self.branch is not None:
            out.append(f";branch={self.branch}")
        for n, v in self.params:
            out.append(f";{n}" if v is None else f";{n}={quote_param_value(v)}")
        if self.received is not None:
            out.append(f";received={self.received}")
        if self.rport is True:
            out.append(";rport")
        elif self.rport is not None:
            out.append(f";rport={self.rport}")
        return "".join(out)


def parse_via(text: str) -> Via:
    """Parse one via-parm: ``SIP / 2.0 / transport sent-by *( ; via-params )``."""
    return _parse_via_cached(text) if len(text) <= CACHED_TEXT_LIMIT else _parse_via(text)


def _parse_via(text: str) -> Via:
    semi = text.find(";")
    head = text if semi < 0 else text[:semi]
    parts = head.split("/")
    if len(parts) != 3:
        raise ProtocolError(f"bad Via {text[:80]!r}: expected SIP/2.0/transport host")
    name, version, rest = parts
    if name.strip(" \t").upper() != "SIP" or version.strip(" \t") != "2.0":
        raise ProtocolError(f"Via {text[:80]!r} is not SIP/2.0")
    words = rest.split(None, 1)
    if len(words) != 2:
        raise ProtocolError(f"Via {text[:80]!r} lacks a transport or sent-by")
    transport = words[0]
    if not _TOKEN_RE.fullmatch(transport):
        raise ProtocolError(f"bad Via transport {transport!r}")
    host, port = split_host_port("".join(words[1].split()), "Via")
    params = parse_params(text[semi:], "Via") if semi >= 0 else ()
    branch = received = None
    rport: int | bool | None = None
    other = []
    for n, v in params:
        if n == "branch":
            if not v:
                raise ProtocolError("Via branch parameter without a value")
            branch = v
        elif n == "received":
            if not v:
                raise ProtocolError("Via received parameter without a value")
            received = v
        elif n == "rport":
            if v is None:
                rport = True
            elif _DIGITS_RE.fullmatch(v) and len(v.lstrip("0")) <= 5 and int(v.lstrip("0") or "0") <= 65535:
                rport = int(v.lstrip("0") or "0")
            else:
                raise ProtocolError(f"bad Via rport {v!r}")
        else:
            other.append((n, v))
    return Via(transport.upper(), host, port, branch, received, rport, tuple(other))


_parse_via_cached = lru_cache(maxsize=4096)(_parse_via)


@dataclass(frozen=True, slots=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(text: str) -> CSeq:
    return _parse_cseq_cached(text) if len(text) <= CACHED_TEXT_LIMIT else _parse_cseq(text)


def _parse_cseq(text: str) -> CSeq:
    words = text.split()
    if len(words) != 2:
        raise ProtocolError(f"bad CSeq {text[:60]!r}: expected 'number METHOD'")
    number, method = words
    if not _DIGITS_RE.fullmatch(number):
        raise ProtocolError(f"bad CSeq number {number[:30]!r}")
    digits = number.lstrip("0") or "0"
    value = int(digits) if len(digits) <= 10 else MAX_CSEQ + 1
    if value > MAX_CSEQ:
        raise ProtocolError(f"CSeq number {number[:30]} is not below 2**31")
    if not _TOKEN_RE.fullmatch(method):
        raise ProtocolError(f"bad CSeq method {method[:40]!r}")
    return CSeq(value, method)


_parse_cseq_cached = lru_cache(maxsize=1024)(_parse_cseq)


@dataclass(frozen=True, slots=True)
class Contact:
    """One Contact value; ``address`` is None (and ``star`` True) for ``Contact: *``."""

    address: NameAddr | None
    expires: int | None = None
    q: float | None = None
    star: bool = False

    def __str__(self) -> str:
        if self.star or self.address is None:
            return "*"
        text = str(self.address)
        if self.expires is not None and not self.address.has_param("expires"):
            text += f";expires={self.expires}"
        if self.q is not None and not self.address.has_param("q"):
            text += f";q={self.q:g}"
        return text


def _contact(text: str) -> Contact:
    if text == "*":
        return Contact(None, None, None, True)
    address = parse_name_addr(text)
    expires = q = None
    for n, v in address.params:
        if n == "expires":
            if v is None or not _DIGITS_RE.fullmatch(v):
                raise ProtocolError(f"bad Contact expires {v!r}")
            # Beyond 2**32-1 the value is clamped rather than refused (RFC 4475 §3.1.2.4 allows it).
            digits = v.lstrip("0") or "0"
            expires = min(int(digits), _MAX_EXPIRES) if len(digits) <= 10 else _MAX_EXPIRES
        elif n == "q":
            if v is None or not _Q_RE.fullmatch(v):
                raise ProtocolError(f"bad Contact q {v!r}")
            q = float(v)
    return Contact(address, expires, q, False)


def parse_contacts(values: Iterable[str]) -> list[Contact]:
    """Contact elements (already split at commas) to typed values; empty elements are errors."""
    out = []
    for element in values:
        if not element:
            raise ProtocolError("empty element in Contact")
        out.append(_contact(element))
    if len(out) > 1 and any(c.star for c in out):
        raise ProtocolError("Contact '*' must be the only Contact value")
    return out
