"""SIP requests and responses: parsing (datagram and stream), typed views, serialising and
building (RFC 3261 §7, §8.2.6, §18.3).

``parse_message`` checks what every later layer relies on — start line, header syntax, the
mandatory headers, Via/From/To/CSeq/Call-ID/Contact and Content-Length — so a message that
parses can be handed to a transaction without further checks. Anything else (Max-Forwards,
Route...) is parsed when first asked for and cached until the headers change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from protocol.errors import ProtocolError
from protocol.sip.headers import (
    _KEY_CACHE,
    CTL_RE,
    _check_value,
    check_controls,
    Contact,
    CSeq,
    Headers,
    Via,
    header_key,
    parse_contacts,
    parse_cseq,
    parse_via,
    split_list,
)
from protocol.sip.uri import NameAddr, SipUri, _TOKEN_RE, parse_name_addr, parse_uri

__all__ = [
    "MAX_MESSAGE_SIZE",
    "MAX_HEADERS",
    "MAX_LINE_LENGTH",
    "REASON_PHRASES",
    "SipParseError",
    "Message",
    "Request",
    "Response",
    "Via",
    "CSeq",
    "Contact",
    "Headers",
    "parse_message",
    "StreamParser",
    "make_request",
    "make_response",
    "make_error_response",
]

MAX_MESSAGE_SIZE = 65536
MAX_HEADERS = 256
MAX_LINE_LENGTH = 8192

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}

_MANDATORY = ("via", "from", "to", "call-id", "cseq")
# Copied from a request into its responses, in this order, after the Vias (RFC 3261 §8.2.6).
_ECHOED = {"from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq", "timestamp": "Timestamp"}
_SINGLE = ("from", "to", "call-id", "cseq", "max-forwards", "content-type")
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.I)
_DIGITS_RE = re.compile(r"[0-9]+")
_STATUS_RE = re.compile(r"[1-6][0-9][0-9]")


class SipParseError(ProtocolError):
    """Bad SIP input. When the broken message was a request whose headers could be read,
    ``method`` and ``headers`` are set so a UAS can still answer (see make_error_response)."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        *,
        method: str | None = None,
        headers: Headers | None = None,
    ) -> None:
        super().__init__(message, status)
        self.method = method
        self.headers = headers


def _vias(lines: list[str]) -> tuple[Via, ...]:
    out = []
    for line in lines:
        for element in split_list(line):
            if not element:
                raise ProtocolError("empty element in Via")
            out.append(parse_via(element))
    return tuple(out)


def _call_id(value: str) -> str:
    if not value or " " in value or "\t" in value:
        raise ProtocolError(f"bad Call-ID {value[:60]!r}")
    return value


def _contacts(lines: list[str]) -> tuple[Contact, ...]:
    return tuple(parse_contacts([e for line in lines for e in split_list(line)]))


def _build_vias(headers: Headers) -> tuple[Via, ...]:
    return _vias(headers._lines("via"))


def _build_single_address(key: str):
    def build(headers: Headers) -> NameAddr:
        lines = headers._lines(key)
        if not lines:
            raise ProtocolError(f"no {key} header")
        return parse_name_addr(lines[0])

    return build


def _build_addresses(key: str):
    def build(headers: Headers) -> tuple[NameAddr, ...]:
        out = []
        for element in headers._elements(key):
            if not element:
                raise ProtocolError(f"empty element in {key}")
            out.append(parse_name_addr(element))
        return tuple(out)

    return build


def _build_cseq(headers: Headers) -> CSeq:
    lines = headers._lines("cseq")
    if not lines:
        raise ProtocolError("no CSeq header")
    return parse_cseq(lines[0])


def _build_call_id(headers: Headers) -> str:
    lines = headers._lines("call-id")
    if not lines:
        raise ProtocolError("no Call-ID header")
    return _call_id(lines[0])


def _build_contacts(headers: Headers) -> tuple[Contact, ...]:
    return _contacts(headers._lines("contact"))


def _build_max_forwards(headers: Headers) -> int | None:
    lines = headers._lines("max-forwards")
    if not lines:
        return None
    value = lines[0]
    digits = value.lstrip("0") or "0"
    if not _DIGITS_RE.fullmatch(value) or len(digits) > 3 or int(digits) > 255:
        raise ProtocolError(f"bad Max-Forwards {value[:30]!r}: expected 0-255")
    return int(digits)


def _content_length_value(value: str) -> int:
    digits = value.lstrip("0") or "0"
    if not _DIGITS_RE.fullmatch(value):
        raise ProtocolError(f"bad Content-Length {value[:30]!r}: expected a non-negative integer")
    if len(digits) > 9:
        raise ProtocolError(f"Content-Length {value[:30]} is too large", 413)
    return int(digits)


def _build_content_length(headers: Headers) -> int | None:
    values = {_content_length_value(v) for v in headers._lines("content-length")}
    if len(values) > 1:
        raise ProtocolError(f"conflicting Content-Length values {sorted(values)}")
    return values.pop() if values else None


class Message:
    """What requests and responses share: version, headers, body and the typed header views."""

    __slots__ = ("version", "headers", "_body")

    version: str
    headers: Headers
    _body: bytes

    # -- header access -------------------------------------------------------------------
    def get(self, name: str) -> str | None:
        """First value (first list element for list headers); name case-insensitive, compact ok."""
        return self.headers.get(name)

    def get_all(self, name: str) -> list[str]:
        """Every value, split at commas where the header's grammar is a list."""
        return self.headers.get_all(name)

    def set(self, name: str, value: str) -> None:
        self.headers.set(name, value)

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        self.headers.add(name, value, first=first)

    def remove(self, name: str) -> int:
        return self.headers.remove(name)

    def __contains__(self, name: object) -> bool:
        return name in self.headers

    def set_top_via(self, via: Via | str) -> None:
        """Replace the topmost Via value (e.g. to add received/rport, RFC 3581), splitting a
        comma-joined first Via line so the other values keep their text and order."""
        items = self.headers._items
        for i, (key, name, value, _) in enumerate(items):
            if key == "via":
                rest = [e for e in split_list(value)[1:] if e]
                new = [(key, name, _check_value(str(via)), None)]
                if rest:
                    new.append((key, name, ", ".join(rest), None))
                items[i : i + 1] = new
                self.headers._views.clear()
                return
        raise ProtocolError("no Via header to replace")

    # -- typed views -----------------------------------------------------------------------
    @property
    def via(self) -> list[Via]:
        return list(self.headers.view("via", _build_vias))

    @property
    def from_(self) -> NameAddr:
        return self.headers.view("from", _BUILD_FROM)

    @property
    def to(self) -> NameAddr:
        return self.headers.view("to", _BUILD_TO)

    @property
    def call_id(self) -> str:
        return self.headers.view("call-id", _build_call_id)

    @property
    def cseq(self) -> CSeq:
        return self.headers.view("cseq", _build_cseq)

    @property
    def max_forwards(self) -> int | None:
        """None when absent; ProtocolError when present but not 0-255."""
        return self.headers.view("max-forwards", _build_max_forwards)

    @property
    def contact(self) -> list[Contact]:
        return list(self.headers.view("contact", _build_contacts))

    @property
    def route(self) -> list[NameAddr]:
        return list(self.headers.view("route", _BUILD_ROUTE))

    @property
    def record_route(self) -> list[NameAddr]:
        return list(self.headers.view("record-route", _BUILD_RECORD_ROUTE))

    @property
    def content_type(self) -> str | None:
        """The media type, lowercased, without parameters (the full value is get("Content-Type"))."""
        value = self.headers.get("content-type")
        if value is None:
            return None
        return value.partition(";")[0].strip(" \t").lower()

    @property
    def content_length(self) -> int:
        """The Content-Length header's value, or the body's length when there is none."""
        value = self.headers.view("content-length", _build_content_length)
        return len(self._body) if value is None else value

    @property
    def body(self) -> bytes:
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        """Replacing the body keeps Content-Length in step."""
        self._body = bytes(value)
        self.headers.set("Content-Length", str(len(self._body)))

    # -- serialising -------------------------------------------------------------------------
    def _start_line(self) -> str:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        parts = [self._start_line(), "\r\n"]
        for _, name, value, raw in self.headers._items:
            if raw is not None:
                parts.append(raw)
                parts.append("\r\n")
            else:
                parts.append(f"{name}: {value}\r\n" if value else f"{name}:\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("utf-8", "surrogateescape") + self._body

    def _same_content(self, other: Message) -> bool:
        return self.version == other.version and self.headers == other.headers and self._body == other._body

    __hash__ = None  # type: ignore[assignment]


class Request(Message):
    __slots__ = ("method", "uri")

    def __init__(
        self,
        method: str,
        uri: SipUri,
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        self.method = method
        self.uri = uri
        self.version = version
        self.headers = headers if headers is not None else Headers()
        self._body = body

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def copy(self) -> Request:
        return Request(self.method, self.uri, self.headers.copy(), self._body, self.version)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (
            self.method == other.method
            and self.uri == other.uri
            and str(self.uri) == str(other.uri)
            and self._same_content(other)
        )

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} call-id={self.get('call-id')!r}>"


class Response(Message):
    __slots__ = ("status", "reason")

    def __init__(
        self,
        status: int,
        reason: str = "",
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers if headers is not None else Headers()
        self._body = body

    def _start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def copy(self) -> Response:
        return Response(self.status, self.reason, self.headers.copy(), self._body, self.version)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return self.status == other.status and self.reason == other.reason and self._same_content(other)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} call-id={self.get('call-id')!r}>"


_BUILD_FROM = _build_single_address("from")
_BUILD_TO = _build_single_address("to")
_BUILD_ROUTE = _build_addresses("route")
_BUILD_RECORD_ROUTE = _build_addresses("record-route")


# -- parsing ----------------------------------------------------------------------------------


def _find_head_end(data: bytes | bytearray, start: int) -> tuple[int, int]:
    """(end of the header section, start of the body), or (-1, -1) if no blank line yet.
    Bare-LF line ends are accepted as well as CRLF."""
    end = data.find(b"\r\n\r\n", start)
    limit = end if end >= 0 else len(data)
    best, length = (end, 4) if end >= 0 else (-1, 0)
    j = data.find(b"\n\n", start, limit)
    if j >= 0:
        best, length, limit = j, 2, j
    k = data.find(b"\n\r\n", start, limit)
    if k >= 0:
        best, length = k, 3
    return (best, best + length) if best >= 0 else (-1, -1)


class _Head:
    """The start line and header fields of a message whose body may still be on its way."""

    __slots__ = ("start", "items", "content_length")

    def __init__(
        self, start: str, items: list[tuple[str, str, str, str | None]], content_length: int | None
    ) -> None:
        self.start = start
        self.items = items
        self.content_length = content_length


def _header_items(lines: list[str]) -> list[tuple[str, str, str, str | None]]:
    items: list[tuple[str, str, str, str | None]] = []
    for line in lines[1:]:
        if not line:
            raise SipParseError("empty line inside the header section")
        first = line[0]
        if first == " " or first == "\t":
            if not items:
                raise SipParseError("continuation line before the first header")
            key, name, value, raw = items[-1]
            more = line.strip(" \t")
            value = f"{value} {more}" if value and more else value or more
            items[-1] = (key, name, value, f"{raw}\r\n{line}")
            continue
        colon = line.find(":")
        if colon <= 0:
            raise SipParseError(f"header line without a name and colon: {line[:60]!r}")
        name = line[:colon].rstrip(" \t")
        try:
            key = header_key(name)
        except ProtocolError as e:
            raise SipParseError(e.message) from None
        items.append((key, name, line[colon + 1 :].strip(" \t"), line))
    return items


def _parse_head(head: bytes | bytearray) -> _Head:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SipParseError(f"header section is not UTF-8 (byte {e.start})") from None
    lines = text.split("\r\n")
    if text.count("\n") != len(lines) - 1 or text.count("\r") != len(lines) - 1:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            raise SipParseError("bare CR in the header section")
        lines = text.split("\n")
    if CTL_RE.search(text):
        try:
            check_controls(text)
        except ProtocolError as e:
            raise SipParseError(e.message) from None
    if len(lines) > 4 * MAX_HEADERS:
        raise SipParseError(f"more than {MAX_HEADERS} header fields", 413)
    if max(map(len, lines)) > MAX_LINE_LENGTH:
        raise SipParseError(f"header section line longer than {MAX_LINE_LENGTH} characters", 413)
    start = lines[0]
    items = None
    if "\n " not in text and "\n\t" not in text:
        # Fast path for the common shape: no folding, names as seen before, no space before ':'.
        body_lines = lines[1:]
        parts = [line.partition(":") for line in body_lines]
        if all(p[1] for p in parts):
            try:
                items = [
                    (_KEY_CACHE[n], n, v.strip(" \t"), line)
                    for (n, _, v), line in zip(parts, body_lines)
                ]
            except KeyError:
                pass
    if items is None:
        items = _header_items(lines)
    if len(items) > MAX_HEADERS:
        raise SipParseError(f"more than {MAX_HEADERS} header fields", 413)
    content_length: int | None = None
    for key, _, value, _ in items:
        if key == "content-length":
            try:
                number = _content_length_value(value)
            except ProtocolError as e:
                raise SipParseError(e.message, e.status) from None
            if content_length is not None and number != content_length:
                raise SipParseError(f"conflicting Content-Length values {content_length} and {number}")
            content_length = number
    return _Head(start, items, content_length)


def _build(head: _Head, body: bytes) -> Request | Response:
    """Turn a framed head and body into a validated message."""
    start = head.start
    headers = Headers._from_parsed(head.items)
    msg: Request | Response
    if start[:4].upper() == "SIP/":
        version, _, rest = start.partition(" ")
        # "SIP/2.0 100" without the SP before an empty reason is accepted: the intent is clear.
        code, _, reason = rest.partition(" ")
        _check_version(version, None, None)
        if not _STATUS_RE.fullmatch(code):
            raise SipParseError(f"bad status code {code[:20]!r}: expected 100-699")
        msg = Response(int(code), reason, headers, body, "SIP/2.0")
        method = None
    else:
        parts = start.split(" ")
        if len(parts) != 3 or not all(parts):
            raise SipParseError(
                f"bad request line {start[:80]!r}: expected 'METHOD SP Request-URI SP SIP/2.0'"
            )
        method, uri_text, version = parts
        if not _TOKEN_RE.fullmatch(method):
            raise SipParseError(f"bad method {method[:40]!r}")
        _check_version(version, method, headers)
        try:
            uri = parse_uri(uri_text)
        except ProtocolError as e:
            raise SipParseError(
                f"bad Request-URI: {e.message}", e.status, method=method, headers=headers
            ) from None
        if uri.headers:
            raise SipParseError(
                f"Request-URI {uri_text[:80]!r} must not carry headers", method=method, headers=headers
            )
        msg = Request(method, uri, headers, body, "SIP/2.0")
    try:
        _validate(msg, headers)
    except SipParseError:
        raise
    except ProtocolError as e:
        raise SipParseError(e.message, e.status, method=method, headers=headers) from None
    return msg


def _check_version(version: str, method: str | None, headers: Headers | None) -> None:
    if version == "SIP/2.0" or version.upper() == "SIP/2.0":
        return
    if _VERSION_RE.fullmatch(version):
        raise SipParseError(f"SIP version {version!r} is not supported", 505, method=method, headers=headers)
    raise SipParseError(f"bad SIP version {version[:30]!r}", method=method, headers=headers)


def _validate(msg: Request | Response, headers: Headers) -> None:
    """Check the mandatory headers and leave their typed values in the view cache."""
    fields: dict[str, list[str]] = {}
    for key, _, value, _ in headers._items:
        if key in fields:
            fields[key].append(value)
        else:
            fields[key] = [value]
    missing = [k for k in _MANDATORY if k not in fields]
    if missing:
        raise ProtocolError(f"missing mandatory header(s): {', '.join(missing)}")
    for key in _SINGLE:
        if key in fields and len(fields[key]) > 1:
            raise ProtocolError(f"more than one {key} header")
    views = headers._views
    views["via"] = _vias(fields["via"])
    views["from"] = parse_name_addr(fields["from"][0])
    views["to"] = parse_name_addr(fields["to"][0])
    views["call-id"] = _call_id(fields["call-id"][0])
    views["cseq"] = cseq = parse_cseq(fields["cseq"][0])
    if "contact" in fields:
        views["contact"] = _contacts(fields["contact"])
    if isinstance(msg, Request) and cseq.method != msg.method:
        raise ProtocolError(f"CSeq method {cseq.method!r} does not match request method {msg.method!r}")


def _head_too_large(head: _Head | None, text: str) -> SipParseError:
    """513 Message Too Large (RFC 3261 §21.5.14). A request whose start line and header fields
    could be read keeps them, so that a UAS can still answer it with make_error_response."""
    if head is None or head.start[:4].upper() == "SIP/":
        return SipParseError(text, 513)
    parts = head.start.split(" ")
    if len(parts) != 3 or not _TOKEN_RE.fullmatch(parts[0]):
        return SipParseError(text, 513)
    return SipParseError(text, 513, method=parts[0], headers=Headers._from_parsed(head.items))


def _too_large(data: bytes, text: str) -> SipParseError:
    # The datagram is already in memory (at most 64 KiB): reading its header section costs what
    # parsing any datagram costs, and lets the sender learn why it was refused.
    start = 0
    while start < len(data) and data[start] in (13, 10):
        start += 1
    head_end, _ = _find_head_end(data, start)
    if head_end < 0:
        return SipParseError(text, 513)
    try:
        head = _parse_head(data[start:head_end])
    except SipParseError:
        return SipParseError(text, 513)
    return _head_too_large(head, text)


def parse_message(data: bytes, *, max_size: int = MAX_MESSAGE_SIZE) -> Request | Response:
    """Parse one datagram. Bytes after Content-Length are ignored (RFC 3261 §18.3); without a
    Content-Length the body is the rest of the datagram."""
    size = len(data)
    if size > max_size:
        raise _too_large(data, f"message of {size} bytes exceeds the {max_size} byte limit")
    start = 0
    while start < size and data[start] in (13, 10):
        start += 1
    if start == size:
        raise SipParseError("empty message (only CRLF keep-alives)")
    head_end, body_start = _find_head_end(data, start)
    if head_end < 0:
        raise SipParseError("no empty line ends the header section")
    head = _parse_head(data[start:head_end])
    body = data[body_start:]
    if head.content_length is not None:
        if head.content_length > len(body):
            raise SipParseError(
                f"Content-Length {head.content_length} exceeds the {len(body)} body bytes received"
            )
        body = body[: head.content_length]
    return _build(head, bytes(body))


class StreamParser:
    """Frames messages on a stream transport (TCP/TLS) by Content-Length, which is mandatory there.

    ``feed`` returns the complete messages received so far. CRLFs between messages are skipped;
    ``pings`` counts the double-CRLF keep-alives among them (RFC 5626 §4.4.1: answer each with a
    single CRLF). A framed message that is malformed is dropped and its SipParseError queued for
    ``take_errors()``; a framing error (bad or missing Content-Length, oversize) cannot be
    recovered from: it is raised, and every later ``feed`` raises it again — close the stream.
    """

    def __init__(self, *, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self.pings = 0
        self._buf = bytearray()
        self._pos = 0  # start of the unconsumed data in _buf
        self._scanned = 0  # how far the search for the end of the headers has got
        self._head: _Head | None = None
        self._body_start = 0
        self._crlfs = 0
        self._errors: list[SipParseError] = []
        self._fatal: SipParseError | None = None

    def take_errors(self) -> list[SipParseError]:
        """Errors of the malformed messages dropped since the last call."""
        errors, self._errors = self._errors, []
        return errors

    def feed(self, data: bytes) -> list[Request | Response]:
        if self._fatal is not None:
            raise self._fatal
        self._buf += data
        out: list[Request | Response] = []
        try:
            while True:
                framed = self._next()
                if framed is None:
                    break
                head, body = framed
                try:
                    out.append(_build(head, body))
                except SipParseError as e:
                    self._errors.append(e)
        except SipParseError as e:
            self._fatal = e
            self._buf.clear()
            raise
        # Consumed bytes are dropped once per feed, not once per message.
        if self._pos:
            del self._buf[: self._pos]
            self._scanned -= self._pos
            self._body_start -= self._pos
            self._pos = 0
        return out

    def _skip_crlf(self) -> None:
        buf = self._buf
        i = self._pos
        n = len(buf)
        while i < n:
            if buf[i] == 13:
                if i + 1 == n:
                    break  # the LF may be in the next segment
                if buf[i + 1] != 10:
                    raise SipParseError("bare CR between messages")
                i += 2
            elif buf[i] == 10:
                i += 1
            else:
                break
            self._crlfs += 1
            if self._crlfs == 2:
                self.pings += 1
                self._crlfs = 0
        if i != self._pos:
            self._pos = self._scanned = i

    def _next(self) -> tuple[_Head, bytes] | None:
        buf = self._buf
        if self._head is None:
            self._skip_crlf()
            start = self._pos
            if start == len(buf) or buf[start] == 13:
                return None
            self._crlfs = 0
            # Resume the search a few bytes back: the blank line may straddle two segments.
            head_end, body_start = _find_head_end(buf, max(start, self._scanned - 3))
            if head_end < 0:
                self._scanned = len(buf)
                if len(buf) - start > self.max_message_size:
                    raise SipParseError(
                        f"no end of headers within {self.max_message_size} bytes", 513
                    )
                return None
            head = _parse_head(bytes(buf[start:head_end]))
            if head.content_length is None:
                raise SipParseError("Content-Length is required on a stream transport")
            size = body_start - start + head.content_length
            if size > self.max_message_size:
                raise _head_too_large(
                    head, f"message of {size} bytes exceeds the {self.max_message_size} byte limit"
                )
            self._head, self._body_start = head, body_start
        head = self._head
        end = self._body_start + (head.content_length or 0)
        if len(buf) < end:
            return None
        body = bytes(buf[self._body_start : end])
        self._pos = self._scanned = end
        self._head = None
        return head, body


# -- building ---------------------------------------------------------------------------------


def make_request(
    method: str,
    uri: SipUri | str,
    *,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Request:
    """A request with the given headers in order and a Content-Length computed from ``body``."""
    if not _TOKEN_RE.fullmatch(method):
        raise ProtocolError(f"bad method {method!r}")
    if isinstance(uri, str):
        uri = parse_uri(uri)
    fields = Headers(headers)
    body = bytes(body)
    fields.set("Content-Length", str(len(body)))
    return Request(method, uri, fields, body)


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to ``request`` per RFC 3261 §8.2.6: Via (all), From, To, Call-ID, CSeq copied,
    a To tag added when given and the To has none, then ``headers``, then Content-Length."""
    return _respond(request.headers, status, reason, to_tag, headers, body, copy_timestamp=status == 100)


def make_error_response(
    error: ProtocolError, *, to_tag: str | None = None, reason: str | None = None
) -> Response | None:
    """The response a UAS sends for a request that failed to parse, or None when there is
    nothing to answer (a broken response, or a request too broken to echo its headers)."""
    if not isinstance(error, SipParseError) or error.method is None or error.headers is None:
        return None
    if any(not error.headers._lines(key) for key in _MANDATORY):
        return None
    return _respond(error.headers, error.status, reason or error.message[:200], to_tag, (), b"", False)


def _respond(
    source: Headers,
    status: int,
    reason: str | None,
    to_tag: str | None,
    extra: Iterable[tuple[str, str]],
    body: bytes,
    copy_timestamp: bool,
) -> Response:
    if not isinstance(status, int) or not 100 <= status <= 699:
        raise ProtocolError(f"bad status code {status!r}")
    if reason is None:
        reason = REASON_PHRASES.get(status, "")
    if "\r" in reason or "\n" in reason:
        raise ProtocolError("reason phrase contains CR or LF")
    if to_tag is not None and not _TOKEN_RE.fullmatch(to_tag):
        raise ProtocolError(f"bad To tag {to_tag!r}")
    vias: list[tuple[str, str, str, str | None]] = []
    first: dict[str, str] = {}
    for key, _, value, _ in source._items:
        if key == "via":
            vias.append(("via", "Via", value, None))
        elif key in _ECHOED and key not in first:
            first[key] = value
    if not copy_timestamp:
        first.pop("timestamp", None)
    items = vias
    for key, name in _ECHOED.items():
        if key in first:
            value = first[key]
            if key == "to" and to_tag is not None and not _has_tag(source, value):
                value = f"{value};tag={to_tag}"
            items.append((key, name, value, None))
    for name, value in extra:
        key = header_key(name)
        if key != "content-length":
            items.append((key, name, _check_value(value), None))
    body = bytes(body)
    items.append(("content-length", "Content-Length", str(len(body)), None))
    return Response(status, reason, Headers._from_parsed(items), body)


def _has_tag(source: Headers, to_value: str) -> bool:
    to = source._views.get("to")
    if to is None:
        try:
            to = parse_name_addr(to_value)
        except ProtocolError:
            return ";tag=" in to_value.replace(" ", "").lower()
    return to.tag is not None
