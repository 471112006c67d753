"""Session descriptions (RFC 8866): parse, typed access, serialise.

A description is kept as its lines, in order, so that ``parse(bytes(x)) == x`` for anything parsed
and attributes nobody here understands survive a round trip untouched. Typed views (rtpmap, fmtp,
ptime, direction, rtcp, ssrc, connection) are computed from those lines; the attributes they read
are validated once, at parse time, so a bad line is reported with its line number.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from protocol.errors import ProtocolError

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

# RFC 3551 table 4: payload types that mean a codec without any rtpmap. G722 is listed at 8000 Hz
# although it samples at 16 kHz: RFC 3551 section 4.5.2 fixed its RTP clock at 8000 for history's sake.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
}

_SESSION_ORDER = "vosiuepcbtrzka"
_MEDIA_TYPES = frozenset("micbka")
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")
# Bounded so that int() never meets a number too long to convert.
_INTEGER = re.compile(r"^[0-9]{1,20}$")
_DECIMAL = re.compile(r"^[0-9]{1,9}(\.[0-9]{1,9})?$")


def _bad(lineno: int, kind: str, line: str) -> ProtocolError:
    return ProtocolError(f"sdp line {lineno}: bad {kind} line {line!r}")


@dataclass(frozen=True, slots=True)
class Origin:
    """``o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>``."""

    username: str
    session_id: str
    session_version: int
    address: str
    nettype: str = "IN"
    addrtype: str = "IP4"

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(frozen=True, slots=True)
class Connection:
    """``c=<nettype> <addrtype> <connection-address>``; ttl/count only for multicast addresses."""

    address: str
    addrtype: str = "IP4"
    nettype: str = "IN"
    ttl: int | None = None
    count: int | None = None

    @property
    def is_null(self) -> bool:
        """The RFC 2543 way of saying "do not send me media" (0.0.0.0, or :: for IPv6)."""
        return self.address in ("0.0.0.0", "::")

    def __str__(self) -> str:
        text = f"{self.nettype} {self.addrtype} {self.address}"
        if self.ttl is not None:
            text += f"/{self.ttl}"
        if self.count is not None:
            text += f"/{self.count}"
        return text


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """``b=<bwtype>:<bandwidth>`` (kbit/s for AS and CT; TIAS is bit/s)."""

    bwtype: str
    value: int

    def __str__(self) -> str:
        return f"{self.bwtype}:{self.value}"


@dataclass(frozen=True, slots=True)
class Timing:
    """A ``t=`` line and the ``r=`` lines that belong to it (kept as text)."""

    start: int = 0
    stop: int = 0
    repeats: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Attribute:
    """``a=<name>`` (a flag, value None) or ``a=<name>:<value>``; the value is kept verbatim."""

    name: str
    value: str | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclass(frozen=True, slots=True)
class RtpMap:
    """``a=rtpmap:<payload type> <encoding name>/<clock rate>[/<channels>]``."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None = None

    def __str__(self) -> str:
        text = f"{self.payload_type} {self.encoding}/{self.clock_rate}"
        return text if self.channels is None else f"{text}/{self.channels}"


@dataclass(frozen=True, slots=True)
class Fmtp:
    """``a=fmtp:<format> <parameters>``: the raw text and its ``key=value;...`` reading.

    A parameter without ``=`` (telephone-event's ``0-15``) is kept with the value None.
    """

    format: str
    raw: str

    @property
    def payload_type(self) -> int | None:
        return int(self.format) if _INTEGER.match(self.format) else None

    @property
    def params(self) -> dict[str, str | None]:
        result: dict[str, str | None] = {}
        for part in self.raw.split(";"):
            part = part.strip()
            if not part:
                continue
            key, eq, value = part.partition("=")
            result[key.strip()] = value.strip() if eq else None
        return result

    def __str__(self) -> str:
        return f"{self.format} {self.raw}" if self.raw else self.format


@dataclass(frozen=True, slots=True)
class RtcpAddress:
    """``a=rtcp:<port> [<nettype> <addrtype> <address>]`` (RFC 3605)."""

    port: int
    address: str | None = None
    addrtype: str | None = None
    nettype: str | None = None


@dataclass(frozen=True, slots=True)
class SsrcAttribute:
    """``a=ssrc:<ssrc> <attribute>[:<value>]`` (RFC 5576)."""

    ssrc: int
    attribute: str
    value: str | None = None


@dataclass(frozen=True, slots=True)
class Codec:
    """A format of an RTP media line with what is known of it (rtpmap, static table, fmtp)."""

    payload_type: int
    name: str
    clock_rate: int
    channels: int = 1
    fmtp: Fmtp | None = None


def _parse_rtpmap(value: str) -> RtpMap:
    pt_text, _, encoding = value.strip().partition(" ")
    parts = encoding.strip().split("/")
    if not _INTEGER.match(pt_text) or int(pt_text) > 127 or len(parts) not in (2, 3):
        raise ValueError(value)
    if not parts[0] or not _INTEGER.match(parts[1]) or int(parts[1]) == 0:
        raise ValueError(value)
    channels = None
    if len(parts) == 3:
        if not _INTEGER.match(parts[2]):
            raise ValueError(value)
        channels = int(parts[2])
    return RtpMap(int(pt_text), parts[0], int(parts[1]), channels)


def _parse_fmtp(value: str) -> Fmtp:
    fmt, _, raw = value.partition(" ")
    if not fmt:
        raise ValueError(value)
    return Fmtp(fmt, raw.strip())


def _parse_ms(value: str) -> int:
    # RFC 4566 allows a decimal ptime ("20.0"); media clocks here tick in whole milliseconds.
    text = value.strip()
    if not _DECIMAL.match(text):
        raise ValueError(value)
    number = round(float(text))
    if not 0 < number < 100000:
        raise ValueError(value)
    return number


def _parse_rtcp(value: str) -> RtcpAddress:
    parts = value.split()
    if len(parts) not in (1, 4) or not _INTEGER.match(parts[0]) or int(parts[0]) > 65535:
        raise ValueError(value)
    if len(parts) == 4:
        return RtcpAddress(int(parts[0]), parts[3], parts[2], parts[1])
    return RtcpAddress(int(parts[0]))


def _parse_ssrc(value: str) -> SsrcAttribute:
    ssrc_text, _, rest = value.partition(" ")
    if not _INTEGER.match(ssrc_text) or int(ssrc_text) > 0xFFFFFFFF or not rest.strip():
        raise ValueError(value)
    name, colon, attr_value = rest.strip().partition(":")
    return SsrcAttribute(int(ssrc_text), name, attr_value if colon else None)


# The attributes whose syntax is checked at parse time, so typed access never fails later.
_CHECKED_ATTRIBUTES = {
    "rtpmap": _parse_rtpmap,
    "fmtp": _parse_fmtp,
    "ptime": _parse_ms,
    "maxptime": _parse_ms,
    "rtcp": _parse_rtcp,
    "ssrc": _parse_ssrc,
}


class _Attributes:
    """Typed reading of an ordered attribute list, shared by session and media level."""

    __slots__ = ()
    attributes: tuple[Attribute, ...]

    def get(self, name: str) -> str | None:
        """The value of the first ``a=name`` ("" for a flag), or None when absent."""
        for attribute in self.attributes:
            if attribute.name == name:
                return "" if attribute.value is None else attribute.value
        return None

    def get_all(self, name: str) -> list[str]:
        return [a.value or "" for a in self.attributes if a.name == name]

    def has(self, name: str) -> bool:
        return any(a.name == name for a in self.attributes)

    @property
    def direction(self) -> str | None:
        """The direction attribute given at this level, if any (the last one wins)."""
        found = None
        for attribute in self.attributes:
            if attribute.name in DIRECTIONS and attribute.value is None:
                found = attribute.name
        return found


@dataclass(frozen=True, slots=True)
class MediaDescription(_Attributes):
    """One ``m=`` section: ``m=<media> <port>[/<count>] <proto> <fmt> ...`` and its lines."""

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    port_count: int | None = None
    information: str | None = None
    connection: Connection | None = None
    bandwidths: tuple[Bandwidth, ...] = ()
    key: str | None = None
    attributes: tuple[Attribute, ...] = ()

    @property
    def is_rtp(self) -> bool:
        return "RTP/" in self.proto

    @property
    def payload_types(self) -> list[int]:
        """The formats as payload types (RTP profiles only; other formats are skipped)."""
        return [int(f) for f in self.formats if _INTEGER.match(f)] if self.is_rtp else []

    @property
    def rtpmaps(self) -> dict[int, RtpMap]:
        result: dict[int, RtpMap] = {}
        for value in self.get_all("rtpmap"):
            rtpmap = _parse_rtpmap(value)
            result.setdefault(rtpmap.payload_type, rtpmap)
        return result

    @property
    def fmtps(self) -> dict[int, Fmtp]:
        result: dict[int, Fmtp] = {}
        for value in self.get_all("fmtp"):
            fmtp = _parse_fmtp(value)
            if fmtp.payload_type is not None:
                result.setdefault(fmtp.payload_type, fmtp)
        return result

    @property
    def codecs(self) -> list[Codec]:
        """The payload types of the m= line in order, named by rtpmap or the static table.

        A dynamic payload type without an rtpmap has no name and is left out.
        """
        rtpmaps = self.rtpmaps
        fmtps = self.fmtps
        result = []
        for pt in self.payload_types:
            rtpmap = rtpmaps.get(pt)
            if rtpmap is not None:
                name, rate, channels = rtpmap.encoding, rtpmap.clock_rate, rtpmap.channels or 1
            elif pt in STATIC_PAYLOAD_TYPES:
                name, rate, channels = STATIC_PAYLOAD_TYPES[pt]
            else:
                continue
            result.append(Codec(pt, name, rate, channels, fmtps.get(pt)))
        return result

    @property
    def ptime(self) -> int | None:
        value = self.get("ptime")
        return None if value is None else _parse_ms(value)

    @property
    def maxptime(self) -> int | None:
        value = self.get("maxptime")
        return None if value is None else _parse_ms(value)

    @property
    def rtcp(self) -> RtcpAddress | None:
        value = self.get("rtcp")
        return None if value is None else _parse_rtcp(value)

    @property
    def rtcp_mux(self) -> bool:
        return self.has("rtcp-mux")

    @property
    def ssrcs(self) -> list[SsrcAttribute]:
        return [_parse_ssrc(v) for v in self.get_all("ssrc")]

    @property
    def mid(self) -> str | None:
        return self.get("mid")

    def lines(self) -> list[str]:
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        out = [f"m={' '.join((self.media, port, self.proto, *self.formats))}"]
        if self.information is not None:
            out.append(f"i={self.information}")
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out.extend(f"b={b}" for b in self.bandwidths)
        if self.key is not None:
            out.append(f"k={self.key}")
        out.extend(f"a={a}" for a in self.attributes)
        return out


@dataclass(frozen=True, slots=True)
class SessionDescription(_Attributes):
    """A whole description. ``str()``/``bytes()`` give CRLF-terminated lines in RFC 8866 order."""

    origin: Origin
    name: str = "-"
    information: str | None = None
    uri: str | None = None
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    connection: Connection | None = None
    bandwidths: tuple[Bandwidth, ...] = ()
    timings: tuple[Timing, ...] = (Timing(),)
    zone: str | None = None
    key: str | None = None
    attributes: tuple[Attribute, ...] = ()
    media: tuple[MediaDescription, ...] = field(default=())

    def media_connection(self, index: int) -> Connection | None:
        """The connection of stream ``index``: its own ``c=``, else the session's."""
        media = self.media[index]
        return media.connection if media.connection is not None else self.connection

    def media_direction(self, index: int) -> str:
        """The direction of stream ``index``: media level overrides session level; sendrecv by default."""
        return self.media[index].direction or self.direction or "sendrecv"

    @property
    def groups(self) -> list[list[str]]:
        """``a=group:<semantics> <tag>...`` lines, each as [semantics, tags...]."""
        return [v.split() for v in self.get_all("group")]

    def lines(self) -> list[str]:
        out = ["v=0", f"o={self.origin}", f"s={self.name}"]
        if self.information is not None:
            out.append(f"i={self.information}")
        if self.uri is not None:
            out.append(f"u={self.uri}")
        out.extend(f"e={e}" for e in self.emails)
        out.extend(f"p={p}" for p in self.phones)
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out.extend(f"b={b}" for b in self.bandwidths)
        for timing in self.timings:
            out.append(f"t={timing.start} {timing.stop}")
            out.extend(f"r={r}" for r in timing.repeats)
        if self.zone is not None:
            out.append(f"z={self.zone}")
        if self.key is not None:
            out.append(f"k={self.key}")
        out.extend(f"a={a}" for a in self.attributes)
        for media in self.media:
            out.extend(media.lines())
        return out

    def __str__(self) -> str:
        return "".join(line + "\r\n" for line in self.lines())

    def __bytes__(self) -> bytes:
        return str(self).encode("utf-8")

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        return parse(data)


def _parse_origin(lineno: int, line: str, value: str) -> Origin:
    parts = value.split()
    if len(parts) != 6 or not _INTEGER.match(parts[2]):
        raise _bad(lineno, "o=", line)
    return Origin(parts[0], parts[1], int(parts[2]), parts[5], parts[3], parts[4])


def _parse_connection(lineno: int, line: str, value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3:
        raise _bad(lineno, "c=", line)
    nettype, addrtype, address = parts
    pieces = address.split("/")
    numbers = pieces[1:]
    if not pieces[0] or len(numbers) > 2 or not all(_INTEGER.match(n) for n in numbers):
        raise _bad(lineno, "c=", line)
    ttl = count = None
    # IPv4 multicast carries a TTL before the address count; IPv6 has only the count.
    if addrtype == "IP6":
        if len(numbers) > 1:
            raise _bad(lineno, "c=", line)
        count = int(numbers[0]) if numbers else None
    else:
        ttl = int(numbers[0]) if numbers else None
        count = int(numbers[1]) if len(numbers) > 1 else None
    return Connection(pieces[0], addrtype, nettype, ttl, count)


def _parse_bandwidth(lineno: int, line: str, value: str) -> Bandwidth:
    bwtype, colon, amount = value.partition(":")
    if not colon or not _TOKEN.match(bwtype) or not _INTEGER.match(amount.strip()):
        raise _bad(lineno, "b=", line)
    return Bandwidth(bwtype, int(amount.strip()))


def _parse_timing(lineno: int, line: str, value: str) -> Timing:
    parts = value.split()
    if len(parts) != 2 or not all(_INTEGER.match(p) for p in parts):
        raise _bad(lineno, "t=", line)
    return Timing(int(parts[0]), int(parts[1]))


def _parse_media(lineno: int, line: str, value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3 or not _TOKEN.match(parts[0]):
        raise _bad(lineno, "m=", line)
    port_text, slash, count_text = parts[1].partition("/")
    if not _INTEGER.match(port_text) or int(port_text) > 65535:
        raise _bad(lineno, "m=", line)
    if slash and not _INTEGER.match(count_text):
        raise _bad(lineno, "m=", line)
    formats = tuple(parts[3:])
    media = MediaDescription(
        media=parts[0],
        port=int(port_text),
        proto=parts[2],
        formats=formats,
        port_count=int(count_text) if slash else None,
    )
    if media.is_rtp and any(not _INTEGER.match(f) or int(f) > 127 for f in formats):
        raise _bad(lineno, "m=", line)
    return media


def _parse_attribute(lineno: int, line: str, value: str) -> Attribute:
    name, colon, attr_value = value.partition(":")
    if not name or not _TOKEN.match(name):
        raise _bad(lineno, "a=", line)
    check = _CHECKED_ATTRIBUTES.get(name)
    if check is not None:
        try:
            check(attr_value)
        except ValueError:
            raise _bad(lineno, f"a={name}", line) from None
    return Attribute(name, attr_value if colon else None)


def _split_lines(data: bytes | str) -> list[str]:
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"sdp is not UTF-8: {exc.reason} at byte {exc.start}") from None
    else:
        text = data
    # Real stacks end lines with bare LF as often as with CRLF.
    return text.replace("\r\n", "\n").split("\n")


def parse(data: bytes | str) -> SessionDescription:
    """Parse a session description; lines may end in CRLF or LF. Bad input raises ProtocolError."""
    lines = _split_lines(data)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or lines[0].strip() != "v=0":
        first = lines[0] if lines else ""
        raise ProtocolError(f"sdp line 1: expected 'v=0', got {first!r}")

    session: dict[str, object] = {}
    emails: list[str] = []
    phones: list[str] = []
    bandwidths: list[Bandwidth] = []
    timings: list[Timing] = []
    attributes: list[Attribute] = []
    medias: list[MediaDescription] = []
    media_lines: dict[str, object] = {}
    media_bandwidths: list[Bandwidth] = []
    media_attributes: list[Attribute] = []

    def close_media() -> None:
        if medias:
            medias[-1] = replace(
                medias[-1],
                information=media_lines.get("i"),  # type: ignore[arg-type]
                connection=media_lines.get("c"),  # type: ignore[arg-type]
                key=media_lines.get("k"),  # type: ignore[arg-type]
                bandwidths=tuple(media_bandwidths),
                attributes=tuple(media_attributes),
            )
        media_lines.clear()
        media_bandwidths.clear()
        media_attributes.clear()

    for lineno, raw in enumerate(lines[1:], start=2):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if len(line) < 2 or line[1] != "=":
            raise ProtocolError(f"sdp line {lineno}: not a <type>=<value> line {line!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            close_media()
            medias.append(_parse_media(lineno, line, value))
            continue
        if medias:
            if kind not in _MEDIA_TYPES:
                raise ProtocolError(f"sdp line {lineno}: {kind}= line not allowed in a media section {line!r}")
            if kind == "a":
                media_attributes.append(_parse_attribute(lineno, line, value))
            elif kind == "b":
                media_bandwidths.append(_parse_bandwidth(lineno, line, value))
            elif kind in media_lines:
                raise ProtocolError(f"sdp line {lineno}: repeated {kind}= line in a media section {line!r}")
            elif kind == "c":
                media_lines["c"] = _parse_connection(lineno, line, value)
            else:
                media_lines[kind] = value
            continue
        if kind not in _SESSION_ORDER or kind == "v":
            raise ProtocolError(f"sdp line {lineno}: unknown line type {line!r}")
        if kind == "a":
            attributes.append(_parse_attribute(lineno, line, value))
        elif kind == "b":
            bandwidths.append(_parse_bandwidth(lineno, line, value))
        elif kind == "e":
            emails.append(value)
        elif kind == "p":
            phones.append(value)
        elif kind == "t":
            timings.append(_parse_timing(lineno, line, value))
        elif kind == "r":
            if not timings:
                raise ProtocolError(f"sdp line {lineno}: r= line before any t= line {line!r}")
            timings[-1] = replace(timings[-1], repeats=(*timings[-1].repeats, value))
        elif kind in session:
            raise ProtocolError(f"sdp line {lineno}: repeated {kind}= line {line!r}")
        elif kind == "o":
            session["o"] = _parse_origin(lineno, line, value)
        elif kind == "c":
            session["c"] = _parse_connection(lineno, line, value)
        else:
            session[kind] = value
    close_media()

    if "o" not in session:
        raise ProtocolError("sdp: missing o= line")
    return SessionDescription(
        origin=session["o"],  # type: ignore[arg-type]
        name=session.get("s", "-"),  # type: ignore[arg-type]
        information=session.get("i"),  # type: ignore[arg-type]
        uri=session.get("u"),  # type: ignore[arg-type]
        emails=tuple(emails),
        phones=tuple(phones),
        connection=session.get("c"),  # type: ignore[arg-type]
        bandwidths=tuple(bandwidths),
        timings=tuple(timings),
        zone=session.get("z"),  # type: ignore[arg-type]
        key=session.get("k"),  # type: ignore[arg-type]
        attributes=tuple(attributes),
        media=tuple(medias),
    )


__all__: Sequence[str] = (
    "DIRECTIONS",
    "STATIC_PAYLOAD_TYPES",
    "Attribute",
    "Bandwidth",
    "Codec",
    "Connection",
    "Fmtp",
    "MediaDescription",
    "Origin",
    "RtcpAddress",
    "RtpMap",
    "SessionDescription",
    "SsrcAttribute",
    "Timing",
    "parse",
)
