import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ProtocolError
from protocol.rtcp import (
    NTP_UNIX_OFFSET,
    SDES_CNAME,
    SDES_NOTE,
    SDES_TOOL,
    App,
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpUnknown,
    SdesChunk,
    SdesItem,
    SenderReport,
    SourceDescription,
    ntp_timestamp,
    parse_rtcp,
    serialize_rtcp,
)

BLOCK = ReportBlock(
    ssrc=0x01020304,
    fraction_lost=51,
    packets_lost=3,
    highest_sequence=0x0001FFFF,
    jitter=17,
    last_sr=0x567890AB,
    delay_since_last_sr=32768,
)
BLOCK_BYTES = bytes.fromhex("01020304" "33" "000003" "0001ffff" "00000011" "567890ab" "00008000")


def test_report_block_wire_format():
    assert bytes(BLOCK) == BLOCK_BYTES
    assert ReportBlock.parse(BLOCK_BYTES) == BLOCK
    negative = ReportBlock(1, 0, -5, 0, 0, 0, 0)
    assert bytes(negative)[5:8] == b"\xff\xff\xfb"
    assert ReportBlock.parse(bytes(negative)).packets_lost == -5


def test_receiver_report_wire_format():
    rr = ReceiverReport(0xCAFEBABE, (BLOCK,))
    data = bytes.fromhex("81c90007" "cafebabe") + BLOCK_BYTES
    assert bytes(rr) == data
    assert parse_rtcp(data) == [rr]
    assert bytes(ReceiverReport(5)) == bytes.fromhex("80c90001" "00000005")


def test_sender_report_round_trip():
    sr = SenderReport(
        ssrc=0x11111111,
        ntp_timestamp=ntp_timestamp(1_700_000_000.25),
        rtp_timestamp=0xFFFFFF00,
        packet_count=500,
        octet_count=80000,
        reports=(BLOCK, ReportBlock(2, 0, 0, 100, 0, 0, 0)),
    )
    data = bytes(sr)
    assert data[:4] == bytes.fromhex("82c80012")
    assert len(data) == 4 + 24 + 48
    assert parse_rtcp(data) == [sr]


def test_report_extensions_are_kept():
    sr = SenderReport(1, 2, 3, 4, 5, extension=b"\x00\x01\x02\x03")
    assert parse_rtcp(bytes(sr)) == [sr]
    rr = ReceiverReport(1, (), b"profile-specific")
    assert parse_rtcp(bytes(rr)) == [rr]


def test_sdes_wire_format():
    sdes = SourceDescription((SdesChunk(0x11223344, (SdesItem(SDES_CNAME, b"ab"),)),))
    data = bytes.fromhex("81ca0003" "11223344" "0102" "6162" "00" "000000")
    assert bytes(sdes) == data
    assert parse_rtcp(data) == [sdes]
    assert sdes.chunks[0].cname == "ab"


def test_sdes_several_chunks_and_items():
    sdes = SourceDescription(
        (
            SdesChunk(1, (SdesItem(SDES_CNAME, b"user@host"), SdesItem(SDES_TOOL, b"active-call"))),
            SdesChunk(2, (SdesItem(SDES_CNAME, b"{8c4c}"),)),
            SdesChunk(3, ()),
            SdesChunk(4, (SdesItem(SDES_NOTE, "on hold \u266b".encode()),)),
        )
    )
    data = bytes(sdes)
    assert len(data) % 4 == 0
    (parsed,) = parse_rtcp(data)
    assert parsed == sdes
    assert [c.cname for c in parsed.chunks] == ["user@host", "{8c4c}", None, None]
    assert parsed.chunks[3].items[0].text == "on hold \u266b"


def test_bye_wire_format():
    bye = Bye((0x11223344,), b"bye")
    data = bytes.fromhex("81cb0002" "11223344" "03627965")
    assert bytes(bye) == data
    assert parse_rtcp(data) == [bye]
    assert bye.reason_text == "bye"
    assert parse_rtcp(bytes(Bye((1, 2)))) == [Bye((1, 2))]
    assert parse_rtcp(bytes(Bye((1,), b""))) == [Bye((1,), b"")]
    long_reason = Bye((7,), "call ended \u2013 hung up".encode())
    (parsed,) = parse_rtcp(bytes(long_reason))
    assert parsed == long_reason
    assert parsed.reason_text == "call ended \u2013 hung up"
    assert Bye((1,)).reason_text is None


def test_app_is_kept_raw():
    app = App(subtype=5, ssrc=0xABCDEF01, name=b"TEST", data=b"\x01\x02\x03\x04")
    data = bytes.fromhex("85cc0003" "abcdef01") + b"TEST" + b"\x01\x02\x03\x04"
    assert bytes(app) == data
    assert parse_rtcp(data) == [app]
    # Unaligned data goes out padded the RFC 3550 way and comes back as it was.
    odd = App(0, 1, b"abcd", b"xyz")
    assert bytes(odd)[0] & 0x20
    assert parse_rtcp(bytes(odd)) == [odd]


def test_unknown_types_are_kept_raw():
    nack = bytes.fromhex("81cd0003" "00000001" "00000002" "00640000")
    (packet,) = parse_rtcp(nack)
    assert packet == RtcpUnknown(packet_type=205, count=1, body=bytes.fromhex("00000001" "00000002" "00640000"))
    assert bytes(packet) == nack


def test_compound_packet_round_trip():
    packets = [
        SenderReport(1, ntp_timestamp(0.5), 160, 1, 160, (BLOCK,)),
        SourceDescription((SdesChunk(1, (SdesItem(SDES_CNAME, b"gateway"),)),)),
        RtcpUnknown(206, 1, b"\x00\x00\x00\x01\x00\x00\x00\x02"),
        App(1, 1, b"NAME", b""),
        Bye((1,), b"hangup"),
    ]
    data = serialize_rtcp(packets)
    assert parse_rtcp(data) == packets
    assert serialize_rtcp(parse_rtcp(data)) == data


def test_received_padding_is_stripped():
    rr = bytes.fromhex("a0c90002" "00000005" "00000004")
    assert parse_rtcp(rr) == [ReceiverReport(5)]
    compound = rr + bytes(Bye((5,)))
    assert parse_rtcp(compound) == [ReceiverReport(5), Bye((5,))]


def test_ntp_timestamp():
    assert ntp_timestamp(0.0) == NTP_UNIX_OFFSET << 32
    assert ntp_timestamp(1.5) == (NTP_UNIX_OFFSET + 1) << 32 | 0x80000000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "RTCP packet is empty"),
        (b"\x80\xc9\x00", "RTCP packet length is less than 4 bytes (3)"),
        (bytes(ReceiverReport(1)) + b"\x80", "RTCP packet length is less than 4 bytes (1)"),
        (bytes.fromhex("40c90001" "00000001"), "RTCP packet has invalid version 1"),
        (bytes.fromhex("80c90007" "00000001"), "RTCP packet is truncated: length field needs 32 bytes, got 8"),
        (bytes.fromhex("80c80001" "00000001"), "RTCP sender report is truncated (8 bytes)"),
        (bytes.fromhex("80c90000"), "RTCP receiver report is truncated (4 bytes)"),
        (bytes.fromhex("81c90001" "00000001"), "RTCP receiver report is truncated: 1 report blocks need 32 bytes"),
        (bytes.fromhex("81c80006") + bytes(24),
         "RTCP sender report is truncated: 1 report blocks need 52 bytes"),
        (bytes.fromhex("82ca0002" "00000001" "01000000"), "RTCP SDES source is truncated"),
        (bytes.fromhex("81ca0002" "00000001" "01056162"), "RTCP SDES item is truncated"),
        (bytes.fromhex("81ca0001" "00000001"), "RTCP SDES item is truncated"),
        (bytes.fromhex("82cb0001" "00000001"), "RTCP BYE is truncated: 2 sources need 12 bytes"),
        (bytes.fromhex("81cb0002" "00000001" "09627965"), "RTCP BYE reason is truncated"),
        (bytes.fromhex("80cc0001" "00000001"), "RTCP APP is truncated (8 bytes)"),
        (bytes.fromhex("a0c90001" "00000000"), "RTCP packet padding length 0 is invalid"),
        (bytes.fromhex("a0c90001" "00000009"), "RTCP packet padding length 9 is invalid"),
        (bytes.fromhex("a0c90000"), "RTCP packet padding length 0 is invalid"),
    ],
)
def test_bad_packets(data, message):
    with pytest.raises(ProtocolError) as info:
        parse_rtcp(data)
    assert (info.value.message, info.value.status) == (message, 400)


def test_unbuildable_packets():
    with pytest.raises(ValueError, match="does not fit in 5 bits"):
        bytes(ReceiverReport(1, (BLOCK,) * 32))
    with pytest.raises(ValueError, match="exceeds 255"):
        bytes(SdesChunk(1, (SdesItem(SDES_CNAME, b"x" * 256),)))
    with pytest.raises(ValueError, match="4 bytes"):
        bytes(App(0, 1, b"NAMES"))
    with pytest.raises(ValueError, match="exceeds 255"):
        bytes(Bye((1,), b"x" * 256))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_protocol_error(data):
    try:
        packets = parse_rtcp(data)
    except ProtocolError:
        return
    assert parse_rtcp(serialize_rtcp(packets)) == packets


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([ReceiverReport(1, (BLOCK,)), Bye((2,), b"x"), App(3, 4, b"abcd", b"12345")]),
                min_size=1, max_size=4), st.integers(0, 255))
def test_mutated_compound_packets_parse_or_raise_protocol_error(packets, flip):
    data = bytearray(serialize_rtcp(packets))
    data[flip % len(data)] ^= 0xFF
    try:
        parsed = parse_rtcp(bytes(data))
    except ProtocolError:
        return
    assert parse_rtcp(serialize_rtcp(parsed)) == parsed
