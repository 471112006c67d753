"""The WebRTC leg's parts on their own: answers to real browsers' offers, candidates, the outbound
queue, the inbound jitter buffer and RFC 4733, and the ICE host addresses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from actors.leg import LegContext, LegDtmf, LegRefused
from protocol import api
from protocol.dtmf import encode_digit
from protocol.rtp import RtpPacket
from transports.config import WebRtcConfig
from transports.webrtc_ice import host_addresses, use_host_addresses
from transports.webrtc_leg import CandidateInbox, WebRtcLeg, WebRtcSettings, offered_ptime, parse_candidate
from transports.webrtc_media import InboundAudio, OutboundAudio, restrict_audio
from tests.support.webrtc_peer import strip_candidates

SDP = Path(__file__).resolve().parents[1] / "fixtures" / "sdp"


@pytest.fixture(autouse=True)
def loopback_hosts():
    use_host_addresses(["127.0.0.1"])
    yield
    use_host_addresses([])


def rtpmaps(sdp: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in sdp.splitlines() if line.startswith("a=rtpmap:")]


def browser_offer(name: str) -> str:
    """A browser's captured offer without its candidates: the leg must not send checks off loopback."""
    return strip_candidates((SDP / name).read_text())[0]


def option(**fields) -> api.CallOption:
    return api.parse_call_option(fields)


async def answer_to(offer: str, **fields) -> tuple[WebRtcLeg, str, list]:
    reports: list = []
    leg = WebRtcLeg(LegContext("t", reports.append), WebRtcSettings(WebRtcConfig()), CandidateInbox(8))
    answered = await leg.dial(option(offer=offer, **fields))
    return leg, answered.media.sdp, reports


@pytest.mark.parametrize("name,codec,expected", [
    ("chrome_audio.sdp", None, ["opus/48000/2", "telephone-event/48000"]),
    ("chrome_audio.sdp", "pcmu", ["PCMU/8000", "telephone-event/8000"]),
    ("chrome_audio.sdp", "g722", ["G722/8000", "telephone-event/8000"]),
    # Firefox offers telephone-event at 8 kHz only, beside Opus too
    ("firefox_audio.sdp", None, ["opus/48000/2", "telephone-event/8000"]),
    ("firefox_audio.sdp", "pcma", ["PCMA/8000", "telephone-event/8000"]),
])
async def test_answers_to_browser_offers_hold_one_codec_and_telephone_event(name, codec, expected):
    fields = {} if codec is None else {"codec": codec}
    leg, sdp, reports = await answer_to(browser_offer(name), **fields)
    try:
        assert rtpmaps(sdp) == expected
        assert "a=candidate:" in sdp and " 127.0.0.1 " in sdp
        assert leg.codec.name == (codec or "opus")
        assert reports == []
    finally:
        await leg.close()


def test_restrict_audio_keeps_the_chosen_payload_types_in_order():
    offer = (SDP / "chrome_audio.sdp").read_text()
    out = restrict_audio(offer, [0, 126])
    assert "m=audio 45076 UDP/TLS/RTP/SAVPF 0 126" in out
    assert rtpmaps(out) == ["PCMU/8000", "telephone-event/8000"]
    assert "a=fmtp:111" not in out and "a=rtcp-fb:111" not in out
    assert "a=candidate:1039001212" in out and out.endswith("\r\n")


def test_offered_ptime():
    assert offered_ptime("v=0\r\nm=audio 9 RTP/AVP 0\r\na=ptime:30\r\n") == 30
    assert offered_ptime("v=0\r\nm=video 9 RTP/AVP 96\r\na=ptime:30\r\nm=audio 9 RTP/AVP 0\r\n") is None
    assert offered_ptime((SDP / "chrome_audio.sdp").read_text()) is None


def test_candidates_parse_as_browsers_send_them():
    cmd = api.AddIceCandidate("candidate:1039001212 1 udp 2122194687 192.168.99.58 45076 typ host generation 0",
                              "audio", 0)
    candidate = parse_candidate(cmd)
    assert (candidate.ip, candidate.port, candidate.type, candidate.sdpMid, candidate.sdpMLineIndex) == \
        ("192.168.99.58", 45076, "host", "audio", 0)
    srflx = parse_candidate(api.AddIceCandidate(
        "candidate:8 1 udp 1677729535 203.0.113.5 6000 typ srflx raddr 10.0.0.2 rport 5000", sdp_mline_index=0))
    assert (srflx.type, srflx.relatedAddress, srflx.relatedPort, srflx.sdpMLineIndex) == ("srflx", "10.0.0.2", 5000, 0)
    assert parse_candidate(api.AddIceCandidate("", "0")) is None
    for bad in ("candidate:1 1 udp", "candidate:1 1 udp x 1.2.3.4 5 typ host", "candidate:1 1 udp 5 1.2.3.4 5 kind host"):
        with pytest.raises(LegRefused, match="not an ICE candidate attribute") as info:
            parse_candidate(api.AddIceCandidate(bad, "0"))
        assert info.value.code == 400


async def test_outbound_queue_paces_and_bounds():
    track = OutboundAudio(48000, 960, capacity=3)
    for i in range(5):                    # before the sender starts: kept newest, nothing counted
        track.push(bytes([i]))
    assert track.dropped == 0
    first = await track.recv()            # the sender starts: stale payloads go, the newest plays
    assert bytes(first) == bytes([4]) and first.pts == 4 * 960 and first.time_base.denominator == 48000
    waiting = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    assert not waiting.done()             # nothing queued: recv waits for the media clock
    track.push(b"\x05")
    assert bytes(await waiting) == b"\x05"
    for i in range(6, 11):                # a stalled sender: past 3 frames the oldest are dropped
        track.push(bytes([i]))
    assert track.dropped == 2
    later = await track.recv()
    assert bytes(later) == bytes([8]) and later.pts == 8 * 960   # timestamps keep the timeline
    track.stop()


async def test_inbound_jitter_buffer_and_rfc4733():
    now = [100.0]
    digits: list[str] = []
    inbound = InboundAudio(0, 8000, 20, telephone_events={126: 8000}, jitter_target_ms=40, jitter_max_ms=200,
                           dtmf_timeout=0.5, on_digit=digits.append, now=lambda: now[0])

    class Packet:   # aiortc's RtpPacket carries these attributes
        def __init__(self, packet: RtpPacket) -> None:
            self.payload_type, self.sequence_number = packet.payload_type, packet.sequence_number
            self.timestamp, self.ssrc = packet.timestamp, packet.ssrc
            self.payload, self.marker = packet.payload, int(packet.marker)

    # packets 0..3 arrive out of order: played in order after the 40 ms target delay
    for seq in (1, 0, 3, 2):
        await inbound.handle_rtp(Packet(RtpPacket(0, seq, seq * 160, 7, bytes([seq]) * 160)))
    assert inbound.pull(now[0]) is None
    played = []
    for tick in range(2, 8):
        now[0] = 100.0 + tick * 0.02
        played.append(inbound.pull(now[0]))
    assert [p[0] if p else None for p in played] == [0, 1, 2, 3, None, None]
    # a digit on telephone-event, one from an unknown payload type
    for packet in encode_digit("7", payload_type=126, ssrc=9, sequence_number=50, timestamp=8000, duration_ms=60,
                               ptime_ms=20, clock_rate=8000):
        await inbound.handle_rtp(Packet(packet))
    await inbound.handle_rtp(Packet(RtpPacket(96, 1, 0, 7, b"x")))
    assert digits == ["7"]
    stats = inbound.stats()
    assert (stats.packets, stats.dropped_payload_type, stats.jitter.played) == (4, 1, 4)
    assert stats.dtmf_packets >= 3 and inbound.last_packet_at == now[0]


async def test_the_leg_reports_digits_and_refuses_what_webrtc_cannot_do():
    leg, _, reports = await answer_to(browser_offer("chrome_audio.sdp"))
    try:
        leg._digit("9")
        assert isinstance(reports[0], LegDtmf) and (reports[0].digit, reports[0].source) == ("9", "rfc4733")
        for op in (leg.send_dtmf("1", 100), leg.ring(api.Ringing()), leg.reject(486, "busy"),
                   leg.transfer(api.Refer("a", "b"))):
            with pytest.raises(LegRefused):
                await op
        with pytest.raises(LegRefused, match="already negotiated"):
            await leg.dial(option(offer=browser_offer("chrome_audio.sdp")))
    finally:
        await leg.close()


def test_host_addresses_are_chosen_or_discovered():
    use_host_addresses(["127.0.0.1", "::1"])
    assert host_addresses() == ["127.0.0.1", "::1"]
    use_host_addresses([])
    assert "127.0.0.1" not in host_addresses()      # aioice's own choice leaves loopback out
    with pytest.raises(ValueError):
        use_host_addresses(["localhost"])
