import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ProtocolError
from protocol.rtcp import ReceiverReport, SenderReport, parse_rtcp
from protocol.rtp import (
    ReceiverStats,
    RtpPacket,
    SequenceUnwrapper,
    SourceState,
    TimestampUnwrapper,
    is_rtcp,
    seq_diff,
    ts_diff,
)

PCMU_20MS = bytes(range(160))


def header(first: int, second: int, seq: int = 0x1234, ts: int = 0xA0, ssrc: int = 0xDEADBEEF) -> bytes:
    return bytes((first, second)) + seq.to_bytes(2, "big") + ts.to_bytes(4, "big") + ssrc.to_bytes(4, "big")


def test_pcmu_packet_round_trip():
    data = header(0x80, 0x00) + PCMU_20MS
    assert len(data) == 172
    packet = RtpPacket.parse(data)
    assert packet == RtpPacket(0, 0x1234, 0xA0, 0xDEADBEEF, PCMU_20MS)
    assert (packet.version, packet.padding, packet.has_extension, packet.marker, packet.csrc) == (
        2,
        False,
        False,
        False,
        (),
    )
    assert bytes(packet) == data


def test_marker_and_payload_type():
    data = header(0x80, 0x80 | 101) + b"\x01\x0a\x00\xa0"
    packet = RtpPacket.parse(data)
    assert (packet.marker, packet.payload_type, packet.payload) == (True, 101, b"\x01\x0a\x00\xa0")
    assert bytes(packet) == data


def test_csrc_list_round_trip():
    data = header(0x82, 8) + (1).to_bytes(4, "big") + (0xFFFFFFFF).to_bytes(4, "big") + b"payload"
    packet = RtpPacket.parse(data)
    assert packet.csrc == (1, 0xFFFFFFFF)
    assert packet.payload == b"payload"
    assert bytes(packet) == data


def test_header_extension_round_trip():
    extension = b"\x10\xff\x00\x00" + b"\x22\x01\x02\x03"
    data = header(0x90, 0) + b"\xbe\xde\x00\x02" + extension + b"audio"
    packet = RtpPacket.parse(data)
    assert (packet.has_extension, packet.extension_profile, packet.extension) == (True, 0xBEDE, extension)
    assert packet.payload == b"audio"
    assert bytes(packet) == data
    empty = RtpPacket(0, 1, 2, 3, b"x", extension_profile=0x1000)
    assert bytes(empty)[12:16] == b"\x10\x00\x00\x00"
    assert RtpPacket.parse(bytes(empty)) == empty


def test_padding_round_trip():
    data = header(0xA0, 0) + b"abc" + b"\x00\x00\x00\x00\x05"
    packet = RtpPacket.parse(data)
    assert (packet.padding, packet.padding_length, packet.payload) == (True, 5, b"abc")
    assert bytes(packet) == data


def test_everything_at_once_round_trips():
    packet = RtpPacket(
        payload_type=96,
        sequence_number=65535,
        timestamp=0xFFFFFFFF,
        ssrc=1,
        payload=b"\x00" * 33,
        marker=True,
        csrc=tuple(range(15)),
        extension_profile=0x100,
        extension=b"\x12\x34\x56\x78",
        padding_length=3,
    )
    data = bytes(packet)
    assert len(data) == 12 + 60 + 4 + 4 + 33 + 3
    assert data[0] == 0x80 | 0x20 | 0x10 | 15
    assert RtpPacket.parse(data) == packet


def test_padding_only_packet():
    packet = RtpPacket.parse(header(0xA0, 0) + b"\x00\x00\x00\x04")
    assert (packet.payload, packet.padding_length) == (b"", 4)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "RTP packet length is less than 12 bytes (0)"),
        (header(0x80, 0)[:11], "RTP packet length is less than 12 bytes (11)"),
        (header(0x40, 0) + b"x", "RTP packet has invalid version 1"),
        (header(0x00, 0), "RTP packet has invalid version 0"),
        (header(0x83, 0) + b"\x00" * 4, "RTP packet is truncated: CSRC count 3 needs 24 bytes, got 16"),
        (header(0x8F, 0), "RTP packet is truncated: CSRC count 15 needs 72 bytes, got 12"),
        (header(0x90, 0) + b"\xbe", "RTP packet is truncated: header extension header missing"),
        (header(0x90, 0) + b"\xbe\xde\x00\x02" + b"\x00" * 4,
         "RTP packet is truncated: header extension needs 24 bytes, got 20"),
        (header(0xA0, 0) + b"abc\x00", "RTP packet padding length 0 is invalid"),
        (header(0xA0, 0) + b"\xff", "RTP packet padding length 255 is invalid"),
        (header(0xB0, 0) + b"\x00\x00\x00\x00\x04", "RTP packet padding length 4 is invalid"),
    ],
)
def test_bad_packets(data, message):
    with pytest.raises(ProtocolError) as info:
        RtpPacket.parse(data)
    assert (info.value.message, info.value.status) == (message, 400)


@settings(max_examples=500, deadline=None)
@given(st.integers(0x80, 0xBF) | st.integers(0, 255), st.binary(max_size=120))
def test_arbitrary_bytes_parse_or_raise_protocol_error(first, rest):
    # The first byte is mostly a version-2 one, so the fields behind it get exercised too.
    try:
        packet = RtpPacket.parse(bytes((first,)) + rest)
    except ProtocolError:
        return
    assert RtpPacket.parse(bytes(packet)) == packet


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 127),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=64),
    st.booleans(),
    st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
    st.none() | st.integers(0, 0xFFFF),
    st.integers(0, 4),
    st.integers(0, 255),
)
def test_any_packet_round_trips(pt, seq, ts, ssrc, payload, marker, csrc, profile, ext_words, padding):
    packet = RtpPacket(pt, seq, ts, ssrc, payload, marker, tuple(csrc), profile,
                       bytes(range(4 * ext_words)) if profile is not None else b"", padding)
    assert RtpPacket.parse(bytes(packet)) == packet


def test_unbuildable_packets():
    with pytest.raises(ValueError, match="at most 15 CSRCs"):
        bytes(RtpPacket(0, 0, 0, 0, csrc=tuple(range(16))))
    with pytest.raises(ValueError, match="payload type 128"):
        bytes(RtpPacket(128, 0, 0, 0))
    with pytest.raises(ValueError, match="not a multiple of 4"):
        bytes(RtpPacket(0, 0, 0, 0, extension_profile=1, extension=b"abc"))


def test_is_rtcp():
    assert is_rtcp(bytes(ReceiverReport(1)))
    assert not is_rtcp(header(0x80, 0))
    assert not is_rtcp(header(0x80, 0x80 | 0))
    assert not is_rtcp(header(0x80, 0x80 | 127))
    # RFC 5761 keeps RTP off payload types 64-95 for this reason: with the marker they read as 192-223.
    assert is_rtcp(header(0x80, 0x80 | 72))
    assert is_rtcp(header(0x80, 0xDF))
    assert not is_rtcp(header(0x80, 0xE0))
    assert not is_rtcp(b"\x80")


def test_sequence_unwrap_across_65535():
    unwrap = SequenceUnwrapper()
    assert [unwrap.unwrap(s) for s in (65533, 65534, 65535, 0, 1, 2)] == [65533, 65534, 65535, 65536, 65537, 65538]
    # Reordered across the wrap, late packets land before the highest, not 64k ahead.
    assert unwrap.unwrap(65535) == 65535
    assert unwrap.highest == 65538
    forward = range(65538, 65538 + 5 * 65536, 1000)
    assert [unwrap.unwrap(s & 0xFFFF) for s in forward] == list(forward)


def test_sequence_unwrap_reordered_before_first():
    unwrap = SequenceUnwrapper()
    assert unwrap.unwrap(0) == 0
    assert unwrap.unwrap(65535) == -1
    assert unwrap.unwrap(1) == 1


def test_timestamp_unwrap_across_2_32():
    unwrap = TimestampUnwrapper()
    start = 2**32 - 320
    values = [(start + 160 * i) % 2**32 for i in range(5)]
    assert values[2:] == [0, 160, 320]
    assert [unwrap.unwrap(v) for v in values] == [start + 160 * i for i in range(5)]
    assert unwrap.unwrap(values[1]) == start + 160


def test_wrapping_differences():
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_diff(100, 100) == 0
    assert ts_diff(0, 2**32 - 160) == 160
    assert ts_diff(2**32 - 160, 0) == -160


def feed(stats: ReceiverStats, seqs, ssrc=7, clock=8000):
    return [stats.receive(RtpPacket(0, s, (s * 160) & 0xFFFFFFFF, ssrc), now=s * 0.02) for s in seqs]


def test_probation_then_counting():
    stats = ReceiverStats(8000)
    assert feed(stats, [100]) == [False]
    assert stats.report_blocks(now=0) == []
    assert feed(stats, [101, 102]) == [True, True]
    state = stats.sources[7]
    assert (state.base_seq, state.received, state.expected, state.lost) == (101, 2, 2, 0)


def test_probation_restarts_on_out_of_order():
    stats = ReceiverStats(8000)
    assert feed(stats, [100, 200, 201]) == [False, False, True]
    assert stats.sources[7].base_seq == 201


def test_loss_and_fraction_per_interval():
    stats = ReceiverStats(8000)
    feed(stats, [100, 101, 102, 104, 105])
    state = stats.sources[7]
    assert (state.received, state.expected, state.lost, state.extended_max_seq) == (4, 5, 1, 105)
    (block,) = stats.report_blocks(now=1.0)
    assert (block.ssrc, block.fraction_lost, block.packets_lost, block.highest_sequence) == (7, 256 // 5, 1, 105)
    feed(stats, [106, 107])
    (block,) = stats.report_blocks(now=2.0)
    assert (block.fraction_lost, block.packets_lost) == (0, 1)
    feed(stats, [110, 111])  # 108 and 109 lost: 2 of 4
    (block,) = stats.report_blocks(now=3.0)
    assert (block.fraction_lost, block.packets_lost) == (128, 3)


def test_sequence_wrap_in_stats():
    stats = ReceiverStats(8000)
    feed(stats, [65533, 65534, 65535, 0, 1])
    state = stats.sources[7]
    assert (state.cycles, state.max_seq, state.extended_max_seq) == (65536, 1, 65537)
    assert (state.expected, state.received, state.lost) == (4, 4, 0)


def test_duplicates_are_counted_and_make_loss_negative():
    stats = ReceiverStats(8000)
    feed(stats, [1, 2, 3, 3])
    state = stats.sources[7]
    assert (state.expected, state.received, state.lost) == (2, 3, -1)
    (block,) = stats.report_blocks(now=0)
    assert block.packets_lost == -1
    assert parse_rtcp(bytes(ReceiverReport(9, (block,))))[0].reports[0].packets_lost == -1


def test_small_reorder_is_accepted_without_moving_max():
    stats = ReceiverStats(8000)
    assert feed(stats, [1000, 1001, 1002, 990]) == [False, True, True, True]
    assert stats.sources[7].max_seq == 1002


def test_large_jump_needs_two_sequential_packets_to_restart():
    stats = ReceiverStats(8000)
    feed(stats, [1000, 1001, 1002])
    assert feed(stats, [20000]) == [False]
    assert feed(stats, [20001]) == [True]
    state = stats.sources[7]
    assert (state.base_seq, state.max_seq, state.received, state.lost) == (20001, 20001, 1, 0)


def test_sources_are_kept_apart():
    stats = ReceiverStats(8000)
    feed(stats, [1, 2, 3], ssrc=1)
    feed(stats, [50, 51, 53], ssrc=2)
    assert sorted((b.ssrc, b.packets_lost) for b in stats.report_blocks(now=0)) == [(1, 0), (2, 1)]


# Arrival times in sampling periods (8 kHz) of packets sent every 160 samples.
ARRIVALS = [1000, 1160, 1330, 1480, 1650, 1800, 1960]
# J(i) = J(i-1) + (|D(i-1,i)| - J(i-1)) / 16, computed by hand: |D| is 10, 10, 10, 10, then 0.
EXPECTED_JITTER = [0.0, 0.0, 0.625, 1.2109375, 1.76025390625, 2.275238037109375, 2.1330356597900390625]


@pytest.mark.parametrize("first_ts", [0, 2**32 - 320], ids=["plain", "timestamp-wrap"])
def test_interarrival_jitter_a8(first_ts):
    state = SourceState(ssrc=5, clock_rate=8000, seq=10)
    seen = []
    for i, arrival in enumerate(ARRIVALS):
        if state.update_seq(10 + i):
            state.update_jitter((first_ts + 160 * i) & 0xFFFFFFFF, now=arrival / 8000)
        seen.append(state.jitter)
    assert seen == pytest.approx(EXPECTED_JITTER, abs=1e-9)
    assert state.report_block(now=1.0).jitter == 2


def test_jitter_of_a_perfect_stream_is_zero():
    stats = ReceiverStats(16000)
    for i in range(50):
        stats.receive(RtpPacket(9, i, 320 * i, 3), now=10.0 + i * 0.02)
    assert stats.sources[3].jitter == pytest.approx(0.0, abs=1e-6)


def test_lsr_and_dlsr_from_a_sender_report():
    stats = ReceiverStats(8000)
    feed(stats, [1, 2, 3], ssrc=44)
    report = SenderReport(44, 0x1234567890ABCDEF, 0, 0, 0)
    stats.on_sender_report(report, now=10.0)
    stats.on_sender_report(SenderReport(999, 1, 0, 0, 0), now=10.0)  # unknown source: ignored
    (block,) = stats.report_blocks(now=10.5)
    assert (block.last_sr, block.delay_since_last_sr) == (0x567890AB, 32768)


def test_pack_rtp_is_the_bytes_of_the_packet():
    from protocol.rtp import pack_rtp

    for marker in (False, True):
        for pt, seq, ts, ssrc in ((0, 0, 0, 0), (8, 65535, 2**32 - 1, 2**32 - 1), (101, 4242, 160 * 4242, 0x12345678)):
            packet = RtpPacket(pt, seq, ts, ssrc, b"\x01\x02" * 80, marker)
            assert pack_rtp(pt, seq, ts, ssrc, packet.payload, marker) == bytes(packet)
