"""DTMF: RFC 4733 telephone-event payloads, a receiver turning packets into digits, the sender's
packet train, and the two SIP INFO bodies (application/dtmf-relay, application/dtmf).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from protocol.errors import ProtocolError
from protocol.rtp import RtpPacket, ts_diff

DIGITS = "0123456789*#ABCD"
MAX_DURATION = 0xFFFF
END_PACKETS = 3
_PAYLOAD = struct.Struct("!BBH")


def digit_to_event(digit: str) -> int:
    """The RFC 4733 event code of a DTMF digit (0-9, *, #, A-D)."""
    code = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return code


def event_to_digit(event: int) -> str | None:
    """The digit of an event code, or None for non-DTMF events (flash, tones...)."""
    return DIGITS[event] if 0 <= event < len(DIGITS) else None


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 event block: event code, end bit, volume (-dBm0, 0-63), duration in RTP units."""

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    @property
    def digit(self) -> str | None:
        return event_to_digit(self.event)

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        if len(payload) < 4:
            raise ProtocolError(f"telephone-event payload length is less than 4 bytes ({len(payload)})")
        event, flags, duration = _PAYLOAD.unpack_from(payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def __bytes__(self) -> bytes:
        return _PAYLOAD.pack(self.event, (0x80 if self.end else 0) | (self.volume & 0x3F), self.duration)


@dataclass(frozen=True, slots=True)
class DtmfStarted:
    digit: str
    timestamp: int


@dataclass(frozen=True, slots=True)
class DtmfEnded:
    """A digit is over. ``reason`` is "end" (E bit), "new-event" (a later event began before the
    end arrived) or "timeout" (no packet for the receiver's timeout). ``duration`` is in RTP units.
    """

    digit: str
    timestamp: int
    duration: int
    duration_ms: float
    reason: str


DtmfEvent = DtmfStarted | DtmfEnded


class DtmfReceiver:
    """Turns the telephone-event packets of one stream into digit start/end events.

    All packets of one event share its RTP timestamp: the first seen starts the digit (marker bit
    or not, so a lost first packet does not lose the digit), later ones extend it, the first with
    the E bit ends it and its retransmissions are ignored. An event whose end never comes is ended
    by the next event's timestamp or, with no packets at all, ``timeout`` seconds after the last
    one (``get_timer``/``handle_timer``). A long event split into segments (RFC 4733 section
    2.5.1.3: same event, new timestamp, no marker, contiguous with the open segment) stays one
    digit; a segment already closed with the E bit has been reported, so what follows is new.
    """

    __slots__ = (
        "payload_type",
        "clock_rate",
        "timeout",
        "_ssrc",
        "_last_ts",
        "_active",
        "_start_ts",
        "_segment_ts",
        "_current",
        "_deadline",
    )

    def __init__(self, payload_type: int, clock_rate: int = 8000, timeout: float = 0.5) -> None:
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.timeout = timeout
        self._ssrc: int | None = None
        self._last_ts: int | None = None
        self._active: int | None = None
        self._start_ts = 0
        self._segment_ts = 0
        self._current = 0
        self._deadline: float | None = None

    def get_timer(self) -> float | None:
        """When an unfinished digit will be ended by timeout, or None."""
        return self._deadline

    def handle_timer(self, now: float) -> list[DtmfEvent]:
        if self._deadline is not None and now >= self._deadline:
            return [self._finish("timeout")]
        return []

    def receive(self, packet: RtpPacket, now: float) -> list[DtmfEvent]:
        """Feed one RTP packet (other payload types are ignored); returns the digit events it causes."""
        if packet.payload_type != self.payload_type:
            return []
        info = TelephoneEvent.parse(packet.payload)
        events = self.handle_timer(now)
        if info.digit is None:
            return events
        if packet.ssrc != self._ssrc:
            if self._active is not None:
                events.append(self._finish("new-event"))
            self._ssrc = packet.ssrc
            self._last_ts = None
        ts = packet.timestamp
        if self._last_ts is not None:
            age = ts_diff(ts, self._last_ts)
            if age < 0:
                return events
            if age == 0:
                if self._active is None:
                    return events
                return events + self._update(info, now)
            if self._active == info.event and not packet.marker and age <= self._current + self.clock_rate // 20:
                self._segment_ts = ts
                self._last_ts = ts
                return events + self._update(info, now)
            if self._active is not None:
                events.append(self._finish("new-event"))
        self._active = info.event
        self._start_ts = self._segment_ts = self._last_ts = ts
        self._current = 0
        events.append(DtmfStarted(DIGITS[info.event], ts))
        return events + self._update(info, now)

    def _update(self, info: TelephoneEvent, now: float) -> list[DtmfEvent]:
        # A block's duration counts from its own segment's timestamp, not from the digit's start.
        self._deadline = now + self.timeout
        if info.end:
            return [self._finish("end", info.duration)]
        self._current = info.duration
        return []

    def _finish(self, reason: str, segment_duration: int | None = None) -> DtmfEnded:
        assert self._active is not None
        seg = self._current if segment_duration is None else segment_duration
        total = ts_diff(self._segment_ts, self._start_ts) + seg
        ended = DtmfEnded(DIGITS[self._active], self._start_ts, total, total * 1000.0 / self.clock_rate, reason)
        self._active = None
        self._deadline = None
        self._current = 0
        return ended


def encode_digit(
    digit: str,
    *,
    payload_type: int,
    ssrc: int,
    sequence_number: int,
    timestamp: int,
    duration_ms: int = 100,
    ptime_ms: int = 20,
    volume: int = 10,
    clock_rate: int = 8000,
) -> list[RtpPacket]:
    """The RFC 4733 packet train of one digit, to be sent one packet per ``ptime_ms``.

    Every packet carries the event's ``timestamp``; the first has the marker bit; durations grow
    by one ptime per packet up to the digit's length, and the last value is sent three times with
    the E bit. Sequence numbers run on from ``sequence_number`` (mod 2**16).
    """
    event = digit_to_event(digit)
    step = clock_rate * ptime_ms // 1000
    total = clock_rate * duration_ms // 1000
    if step <= 0 or total <= 0:
        raise ValueError("duration_ms and ptime_ms must give at least one sample")
    if total > MAX_DURATION:
        raise ValueError(f"a {duration_ms} ms digit exceeds the 16-bit duration field at {clock_rate} Hz")
    durations = list(range(step, total, step))
    blocks = [TelephoneEvent(event, False, volume, d) for d in durations]
    blocks += [TelephoneEvent(event, True, volume, total)] * END_PACKETS
    return [
        RtpPacket(
            payload_type,
            (sequence_number + i) & 0xFFFF,
            timestamp & 0xFFFFFFFF,
            ssrc,
            bytes(block),
            marker=(i == 0),
        )
        for i, block in enumerate(blocks)
    ]


@dataclass(frozen=True, slots=True)
class DtmfInfo:
    """A digit from a SIP INFO body; ``duration_ms`` when the body gave one."""

    digit: str
    duration_ms: int | None = None


def _signal(text: str) -> str:
    value = text.strip()
    if len(value) == 1 and value.upper() in DIGITS:
        return value.upper()
    # Some senders give the RFC 4733 event code instead of the character (Signal=11 for '#').
    if value.isdigit() and int(value) < len(DIGITS):
        return DIGITS[int(value)]
    raise ProtocolError(f"DTMF signal {text.strip()!r} is not a digit 0-9, *, #, A-D")


def parse_dtmf_info(content_type: str, body: bytes | str) -> DtmfInfo:
    """The digit of a SIP INFO with ``application/dtmf-relay`` ("Signal=5\\r\\nDuration=160") or
    ``application/dtmf`` ("5") body. ProtocolError for anything else (415 for another type)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("DTMF INFO body is not UTF-8") from None
    else:
        text = body
    if media_type == "application/dtmf":
        return DtmfInfo(_signal(text))
    if media_type != "application/dtmf-relay":
        raise ProtocolError(f"unsupported DTMF INFO content type {media_type!r}", 415)
    fields: dict[str, str] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise ProtocolError(f"DTMF relay line {line!r} is not key=value")
        fields[key.strip().lower()] = value.strip()
    if "signal" not in fields:
        raise ProtocolError("DTMF relay body has no Signal line")
    duration = None
    if "duration" in fields:
        if not fields["duration"].isdigit():
            raise ProtocolError(f"DTMF relay duration {fields['duration']!r} is not a number")
        duration = int(fields["duration"])
    return DtmfInfo(_signal(fields["signal"]), duration)
