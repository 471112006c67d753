"""RTP packets (RFC 3550 section 5), sequence/timestamp unwrapping, and receiver statistics.

``ReceiverStats`` follows RFC 3550 Appendix A: A.1 for sequence validation (probation, dropouts,
restarts), A.3 for expected/lost counts and the lost fraction of each report interval, and A.8 for
the interarrival jitter. Time is passed in as ``now`` (seconds, any monotonic origin).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from protocol.errors import ProtocolError
from protocol.rtcp import ReportBlock, SenderReport

RTP_HEADER_LENGTH = 12
RTP_SEQ_MOD = 1 << 16
_HEADER = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")

# RFC 3550 Appendix A.1 constants.
MAX_DROPOUT = 3000
MAX_MISORDER = 100
MIN_SEQUENTIAL = 2


def is_rtcp(data: bytes) -> bool:
    """Whether a datagram on a muxed port is RTCP (RFC 5761 section 4: packet type 192-223)."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def pack_rtp(payload_type: int, sequence_number: int, timestamp: int, ssrc: int, payload: bytes,
             marker: bool = False) -> bytes:
    """``bytes(RtpPacket(...))`` for the packet a leg sends every ptime (no CSRC, extension or
    padding) without building the object: the send path runs 50 times a second per call."""
    return _HEADER.pack(0x80, (0x80 | payload_type) if marker else payload_type, sequence_number, timestamp,
                        ssrc) + payload


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet. The version is always 2; ``padding``/``extension`` flags follow the fields.

    ``extension_profile`` is None when there is no header extension; ``extension`` is its data
    (a multiple of 4 bytes). ``padding_length`` counts the padding bytes including the last one.
    """

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension: bytes = b""
    padding_length: int = 0

    version = 2

    @property
    def padding(self) -> bool:
        return self.padding_length > 0

    @property
    def has_extension(self) -> bool:
        return self.extension_profile is not None

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        length = len(data)
        if length < RTP_HEADER_LENGTH:
            raise ProtocolError(f"RTP packet length is less than {RTP_HEADER_LENGTH} bytes ({length})")
        first, second, sequence_number, timestamp, ssrc = _HEADER.unpack_from(data)
        if first >> 6 != 2:
            raise ProtocolError(f"RTP packet has invalid version {first >> 6}")
        cc = first & 0x0F
        pos = RTP_HEADER_LENGTH + 4 * cc
        if pos > length:
            raise ProtocolError(f"RTP packet is truncated: CSRC count {cc} needs {pos} bytes, got {length}")
        csrc = struct.unpack_from(f"!{cc}I", data, RTP_HEADER_LENGTH) if cc else ()
        extension_profile = None
        extension = b""
        if first & 0x10:
            if pos + 4 > length:
                raise ProtocolError("RTP packet is truncated: header extension header missing")
            extension_profile, words = _EXTENSION_HEADER.unpack_from(data, pos)
            pos += 4
            end = pos + 4 * words
            if end > length:
                raise ProtocolError(f"RTP packet is truncated: header extension needs {end} bytes, got {length}")
            extension = data[pos:end]
            pos = end
        padding_length = 0
        end = length
        if first & 0x20:
            padding_length = data[-1]
            if padding_length == 0 or pos + padding_length > length:
                raise ProtocolError(f"RTP packet padding length {padding_length} is invalid")
            end = length - padding_length
        return cls(
            second & 0x7F,
            sequence_number,
            timestamp,
            ssrc,
            data[pos:end],
            bool(second & 0x80),
            csrc,
            extension_profile,
            extension,
            padding_length,
        )

    def __bytes__(self) -> bytes:
        cc = len(self.csrc)
        if cc > 15:
            raise ValueError(f"RTP packet can carry at most 15 CSRCs, not {cc}")
        if not 0 <= self.payload_type <= 127:
            raise ValueError(f"RTP payload type {self.payload_type} is out of range")
        first = 0x80 | cc
        if self.padding_length:
            first |= 0x20
        if self.extension_profile is not None:
            first |= 0x10
        header = _HEADER.pack(
            first,
            (0x80 if self.marker else 0) | self.payload_type,
            self.sequence_number,
            self.timestamp,
            self.ssrc,
        )
        if not cc and self.extension_profile is None and not self.padding_length:
            return header + self.payload
        parts = [header]
        if cc:
            parts.append(struct.pack(f"!{cc}I", *self.csrc))
        if self.extension_profile is not None:
            if len(self.extension) % 4:
                raise ValueError(f"RTP header extension length {len(self.extension)} is not a multiple of 4")
            parts.append(_EXTENSION_HEADER.pack(self.extension_profile, len(self.extension) // 4))
            parts.append(self.extension)
        parts.append(self.payload)
        if self.padding_length:
            parts.append(bytes(self.padding_length - 1) + bytes((self.padding_length,)))
        return b"".join(parts)


class _Unwrapper:
    """Extends a wrapping counter to an unbounded integer, relative to the highest value seen.

    A value up to half the range behind the highest is taken as reordered (it may unwrap below the
    first value, even below zero); anything else moves forward.
    """

    __slots__ = ("_highest",)
    BITS = 16

    def __init__(self) -> None:
        self._highest: int | None = None

    def unwrap(self, value: int) -> int:
        if self._highest is None:
            self._highest = value
            return value
        modulus = 1 << self.BITS
        half = modulus >> 1
        delta = ((value - self._highest + half) % modulus) - half
        extended = self._highest + delta
        if extended > self._highest:
            self._highest = extended
        return extended

    @property
    def highest(self) -> int | None:
        return self._highest


class SequenceUnwrapper(_Unwrapper):
    """16-bit RTP sequence numbers to extended sequence numbers (65535 -> 65536, not 0)."""

    __slots__ = ()
    BITS = 16


class TimestampUnwrapper(_Unwrapper):
    """32-bit RTP timestamps to an unbounded media clock."""

    __slots__ = ()
    BITS = 32


def seq_diff(a: int, b: int) -> int:
    """``a - b`` for 16-bit sequence numbers, in [-32768, 32767]."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def ts_diff(a: int, b: int) -> int:
    """``a - b`` for 32-bit RTP timestamps, in [-2**31, 2**31 - 1]."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


class SourceState:
    """Reception state of one SSRC (RFC 3550 Appendix A.1, A.3, A.8).

    ``jitter`` is the A.8 estimate in timestamp units, kept as a float: J += (|D| - J) / 16.
    """

    __slots__ = (
        "ssrc",
        "clock_rate",
        "max_seq",
        "cycles",
        "base_seq",
        "bad_seq",
        "probation",
        "received",
        "expected_prior",
        "received_prior",
        "jitter",
        "_transit_arrival",
        "_transit_ts",
        "_last_sr",
        "_last_sr_at",
    )

    def __init__(self, ssrc: int, clock_rate: int, seq: int) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.jitter = 0.0
        self._transit_arrival: float | None = None
        self._transit_ts = 0
        self._last_sr = 0
        self._last_sr_at: float | None = None
        self._init_seq(seq)
        # A.1: a new source is on probation until MIN_SEQUENTIAL packets arrive in sequence.
        self.max_seq = (seq - 1) & 0xFFFF
        self.probation = MIN_SEQUENTIAL

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = RTP_SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    def update_seq(self, seq: int) -> bool:
        """A.1 ``update_seq``: count the packet; False while on probation or for a wild jump."""
        udelta = (seq - self.max_seq) & 0xFFFF
        if self.probation:
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    return True
            else:
                self.probation = MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return False
        if udelta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += RTP_SEQ_MOD
            self.max_seq = seq
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
            if seq == self.bad_seq:
                # Two sequential packets after a large jump: the sender restarted its numbering.
                self._init_seq(seq)
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        # Otherwise a duplicate or a reordered packet: counted, max_seq unchanged.
        self.received += 1
        return True

    def update_jitter(self, timestamp: int, now: float) -> None:
        """A.8: D(i-1, i) = (R_i - R_{i-1}) - (S_i - S_{i-1}) in timestamp units."""
        arrival = now * self.clock_rate
        if self._transit_arrival is not None:
            d = abs((arrival - self._transit_arrival) - ts_diff(timestamp, self._transit_ts))
            self.jitter += (d - self.jitter) / 16.0
        self._transit_arrival = arrival
        self._transit_ts = timestamp

    @property
    def extended_max_seq(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_max_seq - self.base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative packets lost (A.3), clamped to the 24-bit signed field of a report block."""
        return max(-0x800000, min(0x7FFFFF, self.expected - self.received))

    def on_sender_report(self, report: SenderReport, now: float) -> None:
        """Remember an SR from this source for the LSR/DLSR fields of the next report block."""
        self._last_sr = (report.ntp_timestamp >> 16) & 0xFFFFFFFF
        self._last_sr_at = now

    def report_block(self, now: float) -> ReportBlock:
        """A report block for this source; starts a new interval for the lost fraction (A.3)."""
        expected = self.expected
        expected_interval = expected - self.expected_prior
        self.expected_prior = expected
        received_interval = self.received - self.received_prior
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        if expected_interval == 0 or lost_interval <= 0:
            fraction = 0
        else:
            fraction = (lost_interval << 8) // expected_interval
        dlsr = 0
        if self._last_sr_at is not None:
            dlsr = int((now - self._last_sr_at) * 65536) & 0xFFFFFFFF
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=min(fraction, 255),
            packets_lost=self.lost,
            highest_sequence=self.extended_max_seq & 0xFFFFFFFF,
            jitter=int(self.jitter),
            last_sr=self._last_sr,
            delay_since_last_sr=dlsr,
        )


class ReceiverStats:
    """Per-SSRC reception statistics of one RTP stream, for RTCP receiver reports."""

    __slots__ = ("clock_rate", "sources")

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.sources: dict[int, SourceState] = {}

    def receive(self, packet: RtpPacket, now: float) -> bool:
        """Account for a received packet; False when A.1 does not (yet) count it as valid."""
        state = self.sources.get(packet.ssrc)
        if state is None:
            state = self.sources[packet.ssrc] = SourceState(packet.ssrc, self.clock_rate, packet.sequence_number)
        valid = state.update_seq(packet.sequence_number)
        if valid:
            state.update_jitter(packet.timestamp, now)
        return valid

    def on_sender_report(self, report: SenderReport, now: float) -> None:
        state = self.sources.get(report.ssrc)
        if state is not None:
            state.on_sender_report(report, now)

    def report_blocks(self, now: float) -> list[ReportBlock]:
        """One block per source past probation (at most 31, the RC field's limit)."""
        return [s.report_block(now) for s in self.sources.values() if not s.probation][:31]
