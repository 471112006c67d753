"""RTCP packets (RFC 3550 section 6): SR, RR, SDES, BYE, APP, and compound packets.

Packet types this module does not interpret (feedback, XR...) are kept raw as ``RtcpUnknown`` so
a compound packet always round-trips. Padding is stripped on parse; on output it is added only
where a raw body is not 32-bit aligned.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from protocol.errors import ProtocolError

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204

SDES_END = 0
SDES_CNAME = 1
SDES_NAME = 2
SDES_EMAIL = 3
SDES_PHONE = 4
SDES_LOC = 5
SDES_TOOL = 6
SDES_NOTE = 7
SDES_PRIV = 8

# Seconds from the NTP epoch (1900) to the Unix epoch (1970).
NTP_UNIX_OFFSET = 2208988800

_HEADER = struct.Struct("!BBH")
_REPORT_BLOCK = struct.Struct("!IB3sIIII")
_SR_INFO = struct.Struct("!IQIII")


def ntp_timestamp(unix_time: float) -> int:
    """A 64-bit NTP timestamp (32.32 fixed point) for a Unix time in seconds."""
    seconds = int(unix_time)
    fraction = int((unix_time - seconds) * (1 << 32)) & 0xFFFFFFFF
    return ((seconds + NTP_UNIX_OFFSET) & 0xFFFFFFFF) << 32 | fraction


def _header(packet_type: int, count: int, body: bytes) -> bytes:
    if count > 31:
        raise ValueError(f"RTCP count {count} does not fit in 5 bits")
    first = 0x80 | count
    pad = -len(body) % 4
    if pad:
        # Only raw bodies (APP data, unknown types, report extensions) can be unaligned: pad them
        # the RFC 3550 way, so that parsing strips exactly what was added.
        first |= 0x20
        body += bytes(pad - 1) + bytes((pad,))
    return _HEADER.pack(first, packet_type, len(body) // 4) + body


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """A reception report block; ``packets_lost`` is the signed 24-bit cumulative count."""

    ssrc: int
    fraction_lost: int
    packets_lost: int
    highest_sequence: int
    jitter: int
    last_sr: int
    delay_since_last_sr: int

    @classmethod
    def parse(cls, data: bytes, offset: int = 0) -> ReportBlock:
        ssrc, fraction, lost, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, offset)
        return cls(ssrc, fraction, int.from_bytes(lost, "big", signed=True), highest, jitter, lsr, dlsr)

    def __bytes__(self) -> bytes:
        return _REPORT_BLOCK.pack(
            self.ssrc,
            self.fraction_lost,
            self.packets_lost.to_bytes(3, "big", signed=True),
            self.highest_sequence,
            self.jitter,
            self.last_sr,
            self.delay_since_last_sr,
        )


def _parse_blocks(body: bytes, offset: int, count: int, kind: str) -> tuple[tuple[ReportBlock, ...], bytes]:
    end = offset + 24 * count
    if end > len(body):
        raise ProtocolError(f"RTCP {kind} is truncated: {count} report blocks need {end + 4} bytes")
    blocks = tuple(ReportBlock.parse(body, offset + 24 * i) for i in range(count))
    return blocks, body[end:]


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    packet_type = RTCP_SR

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> SenderReport:
        if len(body) < 24:
            raise ProtocolError(f"RTCP sender report is truncated ({len(body) + 4} bytes)")
        ssrc, ntp, rtp_ts, packets, octets = _SR_INFO.unpack_from(body)
        reports, extension = _parse_blocks(body, 24, count, "sender report")
        return cls(ssrc, ntp, rtp_ts, packets, octets, reports, extension)

    def __bytes__(self) -> bytes:
        body = _SR_INFO.pack(self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count)
        body += b"".join(bytes(r) for r in self.reports) + self.extension
        return _header(RTCP_SR, len(self.reports), body)


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    packet_type = RTCP_RR

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> ReceiverReport:
        if len(body) < 4:
            raise ProtocolError(f"RTCP receiver report is truncated ({len(body) + 4} bytes)")
        reports, extension = _parse_blocks(body, 4, count, "receiver report")
        return cls(int.from_bytes(body[:4], "big"), reports, extension)

    def __bytes__(self) -> bytes:
        body = self.ssrc.to_bytes(4, "big") + b"".join(bytes(r) for r in self.reports) + self.extension
        return _header(RTCP_RR, len(self.reports), body)


@dataclass(frozen=True, slots=True)
class SdesItem:
    """One SDES item; ``value`` is the raw text (UTF-8 by RFC 3550, not enforced)."""

    type: int
    value: bytes

    @property
    def text(self) -> str:
        return self.value.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class SdesChunk:
    ssrc: int
    items: tuple[SdesItem, ...] = ()

    @property
    def cname(self) -> str | None:
        return next((i.text for i in self.items if i.type == SDES_CNAME), None)

    def __bytes__(self) -> bytes:
        data = bytearray(self.ssrc.to_bytes(4, "big"))
        for item in self.items:
            if len(item.value) > 255:
                raise ValueError(f"SDES item of {len(item.value)} bytes exceeds 255")
            data += bytes((item.type, len(item.value))) + item.value
        # At least one null octet ends the item list, then pad to a 32-bit boundary.
        data += b"\x00"
        return _pad4(bytes(data))


@dataclass(frozen=True, slots=True)
class SourceDescription:
    chunks: tuple[SdesChunk, ...] = ()

    packet_type = RTCP_SDES

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> SourceDescription:
        chunks = []
        pos = 0
        for _ in range(count):
            if pos + 4 > len(body):
                raise ProtocolError("RTCP SDES source is truncated")
            start = pos
            ssrc = int.from_bytes(body[pos : pos + 4], "big")
            pos += 4
            items = []
            while True:
                if pos >= len(body):
                    raise ProtocolError("RTCP SDES item is truncated")
                item_type = body[pos]
                if item_type == SDES_END:
                    pos += 1
                    break
                if pos + 2 > len(body) or pos + 2 + body[pos + 1] > len(body):
                    raise ProtocolError("RTCP SDES item is truncated")
                length = body[pos + 1]
                items.append(SdesItem(item_type, body[pos + 2 : pos + 2 + length]))
                pos += 2 + length
            pos += -(pos - start) % 4
            chunks.append(SdesChunk(ssrc, tuple(items)))
        return cls(tuple(chunks))

    def __bytes__(self) -> bytes:
        return _header(RTCP_SDES, len(self.chunks), b"".join(bytes(c) for c in self.chunks))


@dataclass(frozen=True, slots=True)
class Bye:
    """Sources leaving, with an optional reason kept raw like SDES text (UTF-8 by RFC 3550)."""

    sources: tuple[int, ...] = ()
    reason: bytes | None = None

    packet_type = RTCP_BYE

    @property
    def reason_text(self) -> str | None:
        return None if self.reason is None else self.reason.decode("utf-8", "replace")

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> Bye:
        end = 4 * count
        if end > len(body):
            raise ProtocolError(f"RTCP BYE is truncated: {count} sources need {end + 4} bytes")
        sources = struct.unpack_from(f"!{count}I", body)
        reason = None
        if end < len(body):
            length = body[end]
            if end + 1 + length > len(body):
                raise ProtocolError("RTCP BYE reason is truncated")
            reason = body[end + 1 : end + 1 + length]
        return cls(tuple(sources), reason)

    def __bytes__(self) -> bytes:
        body = struct.pack(f"!{len(self.sources)}I", *self.sources)
        if self.reason is not None:
            if len(self.reason) > 255:
                raise ValueError(f"RTCP BYE reason of {len(self.reason)} bytes exceeds 255")
            body += _pad4(bytes((len(self.reason),)) + self.reason)
        return _header(RTCP_BYE, len(self.sources), body)


@dataclass(frozen=True, slots=True)
class App:
    """Application-defined packet, kept raw: subtype, SSRC, 4-byte name, data."""

    subtype: int
    ssrc: int
    name: bytes
    data: bytes = b""

    packet_type = RTCP_APP

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> App:
        if len(body) < 8:
            raise ProtocolError(f"RTCP APP is truncated ({len(body) + 4} bytes)")
        return cls(count, int.from_bytes(body[:4], "big"), body[4:8], body[8:])

    def __bytes__(self) -> bytes:
        if len(self.name) != 4:
            raise ValueError(f"RTCP APP name must be 4 bytes, not {len(self.name)}")
        return _header(RTCP_APP, self.subtype, self.ssrc.to_bytes(4, "big") + self.name + self.data)


@dataclass(frozen=True, slots=True)
class RtcpUnknown:
    """A packet type not interpreted here (RTPFB, PSFB, XR...): header fields and raw body."""

    packet_type: int
    count: int
    body: bytes

    def __bytes__(self) -> bytes:
        return _header(self.packet_type, self.count, self.body)


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye | App | RtcpUnknown

_PARSERS = {
    RTCP_SR: SenderReport.parse_body,
    RTCP_RR: ReceiverReport.parse_body,
    RTCP_SDES: SourceDescription.parse_body,
    RTCP_BYE: Bye.parse_body,
    RTCP_APP: App.parse_body,
}


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a (compound) RTCP datagram into its packets; ProtocolError on any malformed one."""
    packets: list[RtcpPacket] = []
    pos = 0
    if not data:
        raise ProtocolError("RTCP packet is empty")
    while pos < len(data):
        if pos + 4 > len(data):
            raise ProtocolError(f"RTCP packet length is less than 4 bytes ({len(data) - pos})")
        first, packet_type, words = _HEADER.unpack_from(data, pos)
        if first >> 6 != 2:
            raise ProtocolError(f"RTCP packet has invalid version {first >> 6}")
        end = pos + 4 + 4 * words
        if end > len(data):
            raise ProtocolError(
                f"RTCP packet is truncated: length field needs {end - pos} bytes, got {len(data) - pos}"
            )
        body = data[pos + 4 : end]
        if first & 0x20:
            padding = body[-1] if body else 0
            if padding == 0 or padding > len(body):
                raise ProtocolError(f"RTCP packet padding length {padding} is invalid")
            body = body[:-padding]
        count = first & 0x1F
        parser = _PARSERS.get(packet_type)
        packets.append(parser(count, body) if parser else RtcpUnknown(packet_type, count, body))
        pos = end
    return packets


def serialize_rtcp(packets: list[RtcpPacket] | tuple[RtcpPacket, ...]) -> bytes:
    """A compound RTCP datagram of ``packets`` in order."""
    return b"".join(bytes(p) for p in packets)
