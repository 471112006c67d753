import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.dtmf import (
    DIGITS,
    DtmfEnded,
    DtmfInfo,
    DtmfReceiver,
    DtmfStarted,
    TelephoneEvent,
    digit_to_event,
    encode_digit,
    event_to_digit,
    parse_dtmf_info,
)
from protocol.errors import ProtocolError
from protocol.rtp import RtpPacket

SIPP_PCAPS = Path("/usr/share/sip-tester")
PT = 101


def read_pcap_udp(path: Path) -> list[tuple[float, bytes]]:
    """(capture time, UDP payload) of each IPv4/UDP frame of a classic libpcap file."""
    data = path.read_bytes()
    magic = data[:4]
    order = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">"}[magic]
    linktype = struct.unpack(order + "I", data[20:24])[0]
    link_header = {1: 14, 0: 4, 101: 0, 113: 16}[linktype]
    out = []
    pos = 24
    while pos + 16 <= len(data):
        seconds, micros, captured, _ = struct.unpack(order + "IIII", data[pos : pos + 16])
        frame = data[pos + 16 : pos + 16 + captured]
        pos += 16 + captured
        ip = frame[link_header:]
        if ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        udp = ip[(ip[0] & 0x0F) * 4 :]
        length = struct.unpack("!H", udp[4:6])[0]
        out.append((seconds + micros / 1e6, udp[8:length]))
    return out


def packet(ts: int, event: int, duration: int, *, end=False, marker=False, seq=1, ssrc=0x1234, pt=PT):
    return RtpPacket(pt, seq, ts, ssrc, bytes(TelephoneEvent(event, end, 10, duration)), marker=marker)


def feed(receiver: DtmfReceiver, packets, start=0.0, step=0.02):
    events = []
    for i, p in enumerate(packets):
        events += receiver.receive(p, start + i * step)
    return events


def test_payload_round_trip():
    data = bytes.fromhex("018a08c0")
    event = TelephoneEvent.parse(data)
    assert event == TelephoneEvent(event=1, end=True, volume=10, duration=2240)
    assert event.digit == "1"
    assert bytes(event) == data
    assert TelephoneEvent.parse(bytes.fromhex("0b3f0000")) == TelephoneEvent(11, False, 63, 0)
    assert TelephoneEvent(16).digit is None


def test_short_payload_is_an_error():
    with pytest.raises(ProtocolError) as info:
        TelephoneEvent.parse(b"\x01\x0a\x00")
    assert info.value.message == "telephone-event payload length is less than 4 bytes (3)"


def test_digit_codes():
    assert [digit_to_event(d) for d in "0123456789*#ABCD"] == list(range(16))
    assert digit_to_event("a") == 12
    assert [event_to_digit(e) for e in (0, 10, 11, 15, 16, 255)] == ["0", "*", "#", "D", None, None]
    for bad in ("E", "", "12", "x"):
        with pytest.raises(ValueError):
            digit_to_event(bad)


SIPP_DIGITS = [(str(d), f"dtmf_2833_{d}.pcap") for d in range(10)] + [
    ("#", "dtmf_2833_pound.pcap"),
    ("*", "dtmf_2833_star.pcap"),
]


@pytest.mark.skipif(not SIPP_PCAPS.is_dir(), reason="sip-tester is not installed")
@pytest.mark.parametrize(("digit", "name"), SIPP_DIGITS)
def test_sipp_capture_decodes_to_one_digit(digit, name):
    receiver = DtmfReceiver(PT)
    events = []
    frames = read_pcap_udp(SIPP_PCAPS / name)
    # The capture: marker on the first packet, durations growing by 320, three end packets.
    assert len(frames) == 10
    for at, payload in frames:
        events += receiver.receive(RtpPacket.parse(payload), at)
    ts = RtpPacket.parse(frames[0][1]).timestamp
    assert events == [DtmfStarted(digit, ts), DtmfEnded(digit, ts, 2240, 280.0, "end")]
    assert receiver.get_timer() is None


@pytest.mark.parametrize("digit", list(DIGITS))
def test_encode_then_decode_every_digit(digit):
    packets = encode_digit(digit, payload_type=PT, ssrc=77, sequence_number=65533, timestamp=2**32 - 10)
    assert [p.marker for p in packets] == [True] + [False] * (len(packets) - 1)
    assert {p.timestamp for p in packets} == {2**32 - 10}
    assert [p.sequence_number for p in packets] == [65533, 65534, 65535, 0, 1, 2, 3]
    blocks = [TelephoneEvent.parse(p.payload) for p in packets]
    assert [b.duration for b in blocks] == [160, 320, 480, 640, 800, 800, 800]
    assert [b.end for b in blocks] == [False] * 4 + [True] * 3
    assert {b.event for b in blocks} == {digit_to_event(digit)}
    events = feed(DtmfReceiver(PT), [RtpPacket.parse(bytes(p)) for p in packets])
    assert events == [DtmfStarted(digit, 2**32 - 10), DtmfEnded(digit, 2**32 - 10, 800, 100.0, "end")]


def test_encode_options():
    packets = encode_digit("#", payload_type=96, ssrc=1, sequence_number=0, timestamp=0, duration_ms=250,
                           ptime_ms=50, volume=20, clock_rate=16000)
    blocks = [TelephoneEvent.parse(p.payload) for p in packets]
    assert [b.duration for b in blocks] == [800, 1600, 2400, 3200, 4000, 4000, 4000]
    assert {b.volume for b in blocks} == {20}
    assert {p.payload_type for p in packets} == {96}
    short = encode_digit("1", payload_type=96, ssrc=1, sequence_number=0, timestamp=0, duration_ms=20)
    assert [(TelephoneEvent.parse(p.payload).duration, p.marker) for p in short] == [
        (160, True),
        (160, False),
        (160, False),
    ]
    with pytest.raises(ValueError):
        encode_digit("1", payload_type=96, ssrc=1, sequence_number=0, timestamp=0, duration_ms=9000)
    with pytest.raises(ValueError):
        encode_digit("E", payload_type=96, ssrc=1, sequence_number=0, timestamp=0)


def test_redundant_end_packets_count_once_and_old_packets_are_ignored():
    receiver = DtmfReceiver(PT)
    events = feed(receiver, [packet(1000, 5, 160, marker=True), packet(1000, 5, 320)])
    assert events == [DtmfStarted("5", 1000)]
    ends = [packet(1000, 5, 480, end=True)] * 3
    assert feed(receiver, ends, start=0.04) == [DtmfEnded("5", 1000, 480, 60.0, "end")]
    # A straggler of the same event, and one of an older event: nothing.
    assert receiver.receive(packet(1000, 5, 320), 1.2) == []
    assert receiver.receive(packet(500, 3, 160), 1.3) == []


def test_lost_first_packet_still_starts_the_digit():
    events = feed(DtmfReceiver(PT), [packet(8000, 9, 320), packet(8000, 9, 480, end=True)])
    assert events == [DtmfStarted("9", 8000), DtmfEnded("9", 8000, 480, 60.0, "end")]


def test_only_the_end_arrives():
    events = feed(DtmfReceiver(PT), [packet(8000, 11, 800, end=True)])
    assert events == [DtmfStarted("#", 8000), DtmfEnded("#", 8000, 800, 100.0, "end")]


def test_lost_end_is_closed_by_the_next_event():
    receiver = DtmfReceiver(PT)
    events = feed(receiver, [packet(1000, 1, 160, marker=True), packet(1000, 1, 320)])
    events += feed(receiver, [packet(3000, 2, 160, marker=True)], start=0.5)
    assert events == [
        DtmfStarted("1", 1000),
        DtmfEnded("1", 1000, 320, 40.0, "new-event"),
        DtmfStarted("2", 3000),
    ]


def test_same_digit_pressed_again_after_a_lost_end():
    receiver = DtmfReceiver(PT)
    events = feed(receiver, [packet(1000, 4, 160, marker=True), packet(1000, 4, 320)])
    events += feed(receiver, [packet(2600, 4, 160, marker=True)], start=0.3)
    assert [type(e).__name__ for e in events] == ["DtmfStarted", "DtmfEnded", "DtmfStarted"]
    assert events[1].reason == "new-event"


def test_lost_end_is_closed_by_timeout():
    receiver = DtmfReceiver(PT, timeout=0.5)
    assert feed(receiver, [packet(1000, 0, 160, marker=True), packet(1000, 0, 320)], start=10.0) == [
        DtmfStarted("0", 1000)
    ]
    assert receiver.get_timer() == pytest.approx(10.52)
    assert receiver.handle_timer(10.3) == []
    assert receiver.handle_timer(10.52) == [DtmfEnded("0", 1000, 320, 40.0, "timeout")]
    assert receiver.get_timer() is None
    assert receiver.handle_timer(11.0) == []
    # Stragglers of the timed-out event do not restart it.
    assert receiver.receive(packet(1000, 0, 480, end=True), 11.1) == []


def test_timeout_is_noticed_on_the_next_packet_too():
    receiver = DtmfReceiver(PT, timeout=0.5)
    feed(receiver, [packet(1000, 7, 160, marker=True)])
    events = receiver.receive(packet(9000, 8, 160, marker=True), now=2.0)
    assert events == [DtmfEnded("7", 1000, 160, 20.0, "timeout"), DtmfStarted("8", 9000)]


def test_long_event_segment_without_end_bit_continues_the_digit():
    receiver = DtmfReceiver(PT)
    packets = [packet(0, 6, 32000, marker=True), packet(0, 6, 0xFFFF), packet(0xFFFF, 6, 8000),
               packet(0xFFFF, 6, 9000, end=True)]
    assert feed(receiver, packets) == [DtmfStarted("6", 0), DtmfEnded("6", 0, 0xFFFF + 9000, (0xFFFF + 9000) / 8,
                                                                      "end")]


def test_other_payload_types_non_digit_events_and_new_sources():
    receiver = DtmfReceiver(PT)
    assert receiver.receive(RtpPacket(0, 1, 160, 5, bytes(160)), 0.0) == []
    assert receiver.receive(packet(100, 16, 160, marker=True), 0.0) == []
    events = receiver.receive(packet(100, 1, 160, marker=True, ssrc=1), 0.1)
    events += receiver.receive(packet(50, 2, 160, marker=True, ssrc=2), 0.2)
    assert events == [DtmfStarted("1", 100), DtmfEnded("1", 100, 160, 20.0, "new-event"), DtmfStarted("2", 50)]
    with pytest.raises(ProtocolError):
        receiver.receive(RtpPacket(PT, 1, 160, 2, b"\x01"), 0.3)


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", DtmfInfo("5", 160)),
        ("application/dtmf-relay", "Signal=5\r\nDuration=160", DtmfInfo("5", 160)),
        ("application/dtmf-relay", b"Signal= #\nDuration= 250\n", DtmfInfo("#", 250)),
        ("Application/DTMF-Relay; charset=utf-8", b"signal=*\r\n", DtmfInfo("*", None)),
        ("application/dtmf-relay", b"Signal=d\r\nDuration=100\r\n", DtmfInfo("D", 100)),
        ("application/dtmf-relay", b"Signal=11\r\nDuration=100\r\n", DtmfInfo("#", 100)),
        ("application/dtmf", b"5", DtmfInfo("5")),
        ("application/dtmf", b" 0\r\n", DtmfInfo("0")),
        ("application/dtmf", b"10", DtmfInfo("*")),
    ],
)
def test_sip_info_bodies(content_type, body, expected):
    assert parse_dtmf_info(content_type, body) == expected


@pytest.mark.parametrize(
    ("content_type", "body", "message", "status"),
    [
        ("application/dtmf-relay", b"Duration=160\r\n", "DTMF relay body has no Signal line", 400),
        ("application/dtmf-relay", b"Signal=X\r\n", "DTMF signal 'X' is not a digit 0-9, *, #, A-D", 400),
        ("application/dtmf-relay", b"Signal=5\r\nDuration=long\r\n", "DTMF relay duration 'long' is not a number",
         400),
        ("application/dtmf-relay", b"hello world", "DTMF relay line 'hello world' is not key=value", 400),
        ("application/dtmf-relay", b"Signal=\xff", "DTMF INFO body is not UTF-8", 400),
        ("application/dtmf", b"", "DTMF signal '' is not a digit 0-9, *, #, A-D", 400),
        ("application/dtmf", b"16", "DTMF signal '16' is not a digit 0-9, *, #, A-D", 400),
        ("application/dtmf", b"55", "DTMF signal '55' is not a digit 0-9, *, #, A-D", 400),
        ("text/plain", b"5", "unsupported DTMF INFO content type 'text/plain'", 415),
    ],
)
def test_sip_info_garbage(content_type, body, message, status):
    with pytest.raises(ProtocolError) as info:
        parse_dtmf_info(content_type, body)
    assert (info.value.message, info.value.status) == (message, status)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 800, 1600, 2**32 - 400]),  # event timestamp
            st.integers(0, 20),  # event code (16+ are not digits)
            st.booleans(),  # E bit
            st.booleans(),  # marker
            st.integers(0, 0xFFFF),  # duration
            st.floats(0, 1.0),  # time since the previous packet
        ),
        max_size=40,
    )
)
def test_any_packet_stream_gives_well_formed_digit_events(items):
    receiver = DtmfReceiver(PT, timeout=0.5)
    now = 0.0
    events = []
    for ts, code, end, marker, duration, gap in items:
        now += gap
        events += receiver.handle_timer(now) if gap > 0.6 else []
        events += receiver.receive(packet(ts, code, duration, end=end, marker=marker), now)
    events += receiver.handle_timer(now + 1.0)
    # Starts and ends alternate, each end closing the digit its start opened.
    open_digit = None
    for event in events:
        if isinstance(event, DtmfStarted):
            assert open_digit is None
            open_digit = event
        else:
            assert open_digit is not None
            assert (event.digit, event.timestamp) == (open_digit.digit, open_digit.timestamp)
            assert event.duration >= 0 and event.reason in ("end", "new-event", "timeout")
            open_digit = None
    assert open_digit is None
    assert receiver.get_timer() is None
