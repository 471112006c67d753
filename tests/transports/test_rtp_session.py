"""RtpSession on real sockets: a second session, raw UDP peers, SIPp's DTMF captures and its
RTP echo as peers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable

import pytest

from protocol.dtmf import TelephoneEvent
from protocol.negotiate import NegotiatedCodec, NegotiatedMedia
from protocol.rtcp import Bye, ReceiverReport, SenderReport, parse_rtcp
from protocol.rtp import RtpPacket
from transports.config import RtpConfig
from transports.rtp_ports import RtpPortAllocator
from transports.rtp_session import RtpSession
from tests.support.pcap import udp_payloads
from tests.support.sipp import PCAPS, Sipp, free_media_port, free_port, wait_echo
from tests.transports.test_rtp_ports import free_block
from tests.support.udp import UdpPeer
from tests.support.poll import until

PTIME = 0.02
PCMU = NegotiatedCodec("PCMU", 0, 8000, 8000)
PCMA = NegotiatedCodec("PCMA", 8, 8000, 8000)


def media(port: int, *, codec: NegotiatedCodec = PCMU, te: int | None = 101, direction: str = "sendrecv",
          host: str | None = "127.0.0.1", mux: bool = False) -> NegotiatedMedia:
    return NegotiatedMedia(
        index=0, codec=codec, telephone_event_pt=te, remote_address=host, remote_port=port,
        remote_rtcp=None if mux or host is None else (host, port + 1), rtcp_mux=mux, ptime=20,
        direction=direction, on_hold=False,
    )


def frame(index: int) -> bytes:
    return index.to_bytes(2, "big") * 80  # 160 bytes: one 20 ms PCMU frame naming its index


def index_of(payload: bytes) -> int:
    return int.from_bytes(payload[:2], "big")


def rtp(seq: int, ts: int, ssrc: int, payload: bytes, pt: int = 0, marker: bool = False) -> bytes:
    return bytes(RtpPacket(pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, payload, marker))


@pytest.fixture
async def allocator() -> AsyncIterator[RtpPortAllocator]:
    start = free_block(24)
    yield RtpPortAllocator("127.0.0.1", start, start + 23)


async def open_session(allocator: RtpPortAllocator, **config: object) -> RtpSession:
    defaults: dict[str, object] = {"rtcp_interval": 1.0, "relatch_after": 0.2}
    defaults.update(config)
    return await RtpSession.open(allocator, RtpConfig(**defaults))  # type: ignore[arg-type]


async def ticks(on_tick: Callable[[float, int], bool | None], *, limit: float) -> int:
    """Call ``on_tick(now, n)`` every 20 ms on absolute deadlines until it returns True; the
    number of ticks. AssertionError past ``limit`` seconds."""
    start = time.monotonic()
    n = 0
    while True:
        now = time.monotonic()
        if on_tick(now, n):
            return n
        n += 1
        if now - start > limit:
            raise AssertionError(f"not done within {limit} s ({n} ticks)")
        await asyncio.sleep(max(0.0, start + n * PTIME - time.monotonic()))


# -- two sessions ----------------------------------------------------------------------------------


async def test_two_sessions_carry_audio_both_ways_with_rtcp_reports(allocator):
    a = await open_session(allocator)
    b = await open_session(allocator)
    try:
        assert a.port % 2 == 0 and a.rtcp_port == a.port + 1
        a.start(media(b.port))
        b.start(media(a.port))
        heard_a: list[int] = []
        heard_b: list[int] = []

        def tick(now: float, n: int) -> bool:
            if n < 150:
                a.send(frame(n), now)
                b.send(frame(1000 + n), now)
            for session, heard in ((a, heard_a), (b, heard_b)):
                payload = session.pull(now)
                if payload is not None:
                    heard.append(index_of(payload))
            if n < 150:
                return False
            done = [(s.rtt_ms is not None and len(h) + s.late + s.skipped >= 150)
                    for s, h in ((a.stats(), heard_a), (b.stats(), heard_b))]
            return all(done)

        await ticks(tick, limit=8.0)
        sa, sb = a.stats(), b.stats()
        # Every frame is played in order, or counted: on a busy machine this test's own loop can
        # stall past the 60 ms playout delay, and a frame that comes too late is dropped as late.
        for heard, first, stats in ((heard_b, 0, sb), (heard_a, 1000, sa)):
            assert heard == sorted(set(heard)) and heard[0] >= first and heard[-1] < first + 150
            assert len(heard) >= 100 and len(heard) + stats.late + stats.skipped == 150
        assert sa.packets_sent == sb.packets_received == 150
        assert sa.bytes_sent == sb.bytes_received == 150 * 172
        assert sb.packets_lost == 0 and sb.loss_fraction == 0.0
        assert sb.remote_ssrc == a.ssrc and sa.remote_ssrc == b.ssrc
        assert sa.rtcp_sent >= 1 and sb.rtcp_received >= 1
        # Loopback: well under these bounds unless the machine holds the loop for long.
        assert 0 <= sa.rtt_ms < 500 and sa.remote_packets_lost == 0
        assert sa.jitter_ms < 200
        event = sb.metrics_event(timestamp=1)
        assert event.key == "rtp" and event.data["packets_received"] == 150 and event.duration > 2000
    finally:
        a.close()
        b.close()


async def test_rfc4733_digits_between_two_sessions(allocator):
    digits: list[str] = []
    a = await open_session(allocator)
    b = await RtpSession.open(allocator, RtpConfig(), on_dtmf=digits.append)
    try:
        a.start(media(b.port))
        b.start(media(a.port))
        a.send_dtmf("159#*D")
        assert a.dtmf_pending == 6

        def tick(now: float, n: int) -> bool:
            a.send(frame(n), now)
            b.pull(now)
            return len(digits) == 6 and a.dtmf_pending == 0

        await ticks(tick, limit=5.0)
        assert digits == list("159#*D")
        assert a.stats().dtmf_sent == 6 and b.stats().dtmf_received == 6
        assert b.stats().packets_lost == 0  # events share the stream's sequence numbers
    finally:
        a.close()
        b.close()


# -- a raw peer: loss, reordering, duplicates, SSRC changes -----------------------------------------


async def play(peer: UdpPeer, session: RtpSession, packets: list[bytes | None], heard: list[int],
               extra_ticks: int = 15) -> None:
    """Send one entry per tick (None: nothing) while pulling the session once per tick."""
    target = ("127.0.0.1", session.port)

    def tick(now: float, n: int) -> bool:
        if n < len(packets):
            data = packets[n]
            if data is not None:
                peer.send(data, target)
        payload = session.pull(now)
        if payload is not None:
            heard.append(index_of(payload))
        return n >= len(packets) + extra_ticks

    await ticks(tick, limit=len(packets) * PTIME + 5.0)


@pytest.fixture
async def peer() -> AsyncIterator[UdpPeer]:
    p = await UdpPeer.open()
    yield p
    p.close()


async def test_loss_and_reordering(allocator, peer):
    session = await open_session(allocator)
    try:
        session.start(media(peer.port))
        ssrc, seq0, ts0 = 0x1234, 65500, 4_000_000_000  # both counters wrap during the stream
        packets = [rtp(seq0 + i, ts0 + 160 * i, ssrc, frame(i)) for i in range(60)]
        packets[20], packets[21] = packets[21], packets[20]  # 21 overtakes 20
        for lost in (10, 11, 30):
            packets[lost] = None
        heard: list[int] = []
        await play(peer, session, packets, heard)
        assert heard == [i for i in range(60) if i not in (10, 11, 30)]
        stats = session.stats()
        assert stats.packets_received == 57 and stats.packets_lost == 3
        assert stats.packets_expected == 59  # counted from the second packet (RFC 3550 A.1 probation)
        assert stats.loss_fraction == round(3 / 59, 4)
        assert stats.concealed >= 3 and stats.late == 0
    finally:
        session.close()


async def test_duplicates_are_played_once(allocator, peer):
    session = await open_session(allocator)
    try:
        session.start(media(peer.port))
        packets: list[bytes | None] = [rtp(100 + i, 160 * i, 7, frame(i)) for i in range(20)]
        packets.insert(8, packets[7])  # the same packet twice, one tick apart
        heard: list[int] = []
        await play(peer, session, packets, heard)
        assert heard == list(range(20))
        assert session.stats().duplicates == 1
    finally:
        session.close()


async def test_an_ssrc_change_restarts_the_stream(allocator, peer):
    session = await open_session(allocator)
    try:
        session.start(media(peer.port))
        first = [rtp(1000 + i, 5000 + 160 * i, 0xAAAA, frame(i)) for i in range(30)]
        second = [rtp(40000 + i, 900_000 + 160 * i, 0xBBBB, frame(100 + i)) for i in range(30)]
        heard: list[int] = []
        await play(peer, session, first + second, heard)
        stats = session.stats()
        assert stats.ssrc_changes == 1 and stats.remote_ssrc == 0xBBBB
        old = [i for i in heard if i < 100]
        new = [i for i in heard if i >= 100]
        assert old == list(range(len(old))) and new == list(range(100, 130))
        # What the old source still had buffered at the change is dropped, and counted.
        assert len(old) + stats.skipped == 30
        assert stats.packets_lost == 0
    finally:
        session.close()


async def test_symmetric_rtp_latches_onto_the_source_seen(allocator):
    sdp_peer, real, intruder = await UdpPeer.open(), await UdpPeer.open(), await UdpPeer.open()
    session = await open_session(allocator, relatch_after=0.2)
    try:
        session.start(media(sdp_peer.port))
        target = ("127.0.0.1", session.port)
        # Before anything arrives, media goes to the SDP address.
        session.send(frame(0))
        data, _ = await sdp_peer.recv()
        assert RtpPacket.parse(data).marker
        # The far end sends from another port (a NAT): media follows it.
        real.send(rtp(1, 160, 1, frame(1)), target)
        await until(lambda: session.stats().packets_received == 1)
        session.send(frame(1))
        await real.recv()
        assert session.remote == ("127.0.0.1", real.port)
        # A third source while the latched one is active is ignored.
        intruder.send(rtp(1, 160, 2, frame(9)), target)
        await until(lambda: session.stats().dropped_source == 1)
        assert session.remote == ("127.0.0.1", real.port)
        # Once the latched source has been silent for relatch_after, a new one takes over.
        await asyncio.sleep(0.25)  # the silence under test, not a wait for a result
        intruder.send(rtp(2, 320, 2, frame(10)), target)
        await until(lambda: session.stats().relatched == 1)
        session.send(frame(2))
        await intruder.recv()
        assert sdp_peer.queue.empty()
    finally:
        session.close()
        for p in (sdp_peer, real, intruder):
            p.close()


async def test_what_is_not_our_stream_is_dropped_and_counted(allocator, peer):
    session = await open_session(allocator)
    try:
        target = ("127.0.0.1", session.port)
        peer.send(rtp(1, 0, 5, frame(0)), target)  # before start(): no codec yet
        await until(lambda: session.stats().dropped_not_started == 1)
        session.start(media(peer.port))
        peer.send(b"\x80\x00\x01", target)  # shorter than an RTP header
        peer.send(b"\x40" + bytes(20), target)  # version 1
        peer.send(rtp(2, 160, 5, frame(1), pt=18), target)  # G.729: not negotiated
        peer.send(b"\x81\xc9\x00\x07" + bytes(8), target)  # RTCP (mux) whose length lies
        await until(lambda: session.stats().rtcp_malformed == 1)
        stats = session.stats()
        assert stats.dropped_malformed == 2 and stats.dropped_payload_type == 1
        assert stats.packets_received == 0
        assert session.remote == ("127.0.0.1", peer.port)  # nothing latched onto garbage
    finally:
        session.close()


# -- RFC 4733: SIPp's captures in, our packet trains out ----------------------------------------------


async def test_rfc4733_digits_from_sipps_captures(allocator, peer):
    digits: list[str] = []
    session = await RtpSession.open(allocator, RtpConfig(dtmf_timeout=0.3), on_dtmf=digits.append)
    try:
        session.start(media(peer.port, codec=PCMA, te=101))
        target = ("127.0.0.1", session.port)
        schedule: list[tuple[float, bytes]] = []
        offset = 0.0
        # In the order of their RTP timestamps, as one sender's stream would have them.
        for name in ("1", "5", "9", "star", "pound"):
            packets = udp_payloads(PCAPS / f"dtmf_2833_{name}.pcap")
            if name == "9":
                packets = packets[:-3]  # its three end packets are lost: ended by timeout
            schedule += [(offset + at, data) for at, data in packets]
            offset += packets[-1][0] + 0.6
        start = time.monotonic()
        for at, data in schedule:
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            peer.send(data, target)
            session.pull()
        assert TelephoneEvent.parse(RtpPacket.parse(schedule[-1][1]).payload).end
        await ticks(lambda now, n: session.pull(now) is None and len(digits) == 5, limit=2.0)
        assert digits == ["1", "5", "9", "*", "#"]  # one per key press, retransmitted ends included
        assert session.stats().dtmf_received == 5
    finally:
        session.close()


async def test_rfc4733_packet_train_on_the_wire(allocator, peer):
    session = await open_session(allocator, dtmf_duration_ms=100, dtmf_gap_ms=40)
    try:
        session.start(media(peer.port, te=101))
        session.send_dtmf("1#")

        def tick(now: float, n: int) -> bool:
            session.send(frame(n), now)
            return n >= 25

        await ticks(tick, limit=3.0)
        packets = [RtpPacket.parse((await peer.recv())[0]) for _ in range(26)]
        seqs = [p.sequence_number for p in packets]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
        events = [p for p in packets if p.payload_type == 101]
        assert len(events) == 14  # per digit: 4 growing durations, then the end sent three times
        for digit, train in (("1", events[:7]), ("#", events[7:])):
            blocks = [TelephoneEvent.parse(p.payload) for p in train]
            assert {b.digit for b in blocks} == {digit}
            assert [p.marker for p in train] == [True] + [False] * 6
            assert len({p.timestamp for p in train}) == 1
            assert [b.duration for b in blocks] == [160, 320, 480, 640, 800, 800, 800]
            assert [b.end for b in blocks] == [False] * 4 + [True] * 3
        # The first digit replaces the audio from the first packet; audio timestamps run on.
        assert packets[0].payload_type == 101 and packets[0].timestamp == packets[7].timestamp - 7 * 160
        audio_after = packets[7]
        assert audio_after.payload_type == 0 and not audio_after.marker
        # The gap: 40 ms of audio (two packets) between the digits.
        assert [p.payload_type for p in packets[7:10]] == [0, 0, 101]
        assert session.stats().dtmf_sent == 2
    finally:
        session.close()


async def test_send_dtmf_refuses_what_it_cannot_send(allocator, peer):
    session = await open_session(allocator, dtmf_max_queued=4)
    try:
        session.start(media(peer.port, te=None))
        with pytest.raises(ValueError, match="did not negotiate telephone-event"):
            session.send_dtmf("1")
        session.start(media(peer.port, te=101))
        with pytest.raises(ValueError, match="not a DTMF digit"):
            session.send_dtmf("1x")
        with pytest.raises(ValueError, match="must be 40..8000 ms"):
            session.send_dtmf("1", duration_ms=20)
        session.send_dtmf("123", duration_ms=200)
        with pytest.raises(ValueError, match="dtmf_max_queued is 4"):
            session.send_dtmf("45")
        assert session.dtmf_pending == 3
        session.send(frame(0))
        first = RtpPacket.parse((await peer.recv())[0])
        assert first.payload_type == 101 and first.marker
    finally:
        session.close()


# -- hold, resume, RTCP BYE, close ------------------------------------------------------------------


async def test_hold_suppresses_sending_and_resume_marks_a_new_talkspurt(allocator, peer):
    session = await open_session(allocator)
    try:
        session.start(media(peer.port))
        first_at = time.monotonic()
        session.send(frame(0), first_at)
        session.send(frame(1), first_at + PTIME)
        session.start(media(peer.port, direction="recvonly"))  # the far end put us on hold
        assert not session.send(frame(2), first_at + 2 * PTIME)
        session.start(media(peer.port))
        session.send(frame(3), first_at + 1.0)  # resumed 1 s after the first packet
        packets = [RtpPacket.parse((await peer.recv())[0]) for _ in range(3)]
        assert [p.marker for p in packets] == [True, False, True]
        # The timestamp tells the far end how much time passed: 1 s at 8 kHz since packet 0.
        assert (packets[2].timestamp - packets[0].timestamp) & 0xFFFFFFFF == 8000
        assert session.stats().send_suppressed == 1
    finally:
        session.close()


async def test_close_sends_rtcp_bye_and_releases_the_ports(allocator):
    byes: list[bool] = []
    a = await open_session(allocator)
    b = await RtpSession.open(allocator, RtpConfig(), on_bye=lambda: byes.append(True))
    try:
        a.start(media(b.port))
        b.start(media(a.port))
        a.send(frame(0))
        await until(lambda: b.stats().packets_received == 1)
        port = a.port
        a.close()
        await until(lambda: byes == [True])
        assert allocator.in_use == 1
        again = await open_session(allocator)  # the released pair is the last one reused
        assert again.port != port
        again.close()
    finally:
        a.close()
        b.close()
    assert allocator.in_use == 0


async def test_rtcp_reports_reach_a_raw_peer(allocator, peer):
    session = await open_session(allocator, rtcp_interval=1.0)
    listener = await UdpPeer.open()
    try:
        # RTCP goes to the port the SDP gave for it (here a separate listener).
        m = dataclasses.replace(media(peer.port), remote_rtcp=("127.0.0.1", listener.port))
        session.start(m)
        session.send(frame(0))
        session.send(frame(1))
        await ticks(lambda now, n: session.pull(now) is None and not listener.queue.empty(), limit=3.0)
        data, _ = await listener.recv()
        packets = parse_rtcp(data)
        assert isinstance(packets[0], SenderReport) and packets[0].ssrc == session.ssrc
        assert packets[0].packet_count == 2 and packets[0].octet_count == 320
        assert packets[1].chunks[0].cname == session.cname
        session.close()
        bye = parse_rtcp((await listener.recv())[0])
        assert isinstance(bye[0], ReceiverReport) and isinstance(bye[-1], Bye)
    finally:
        session.close()
        listener.close()


# -- SIPp's RTP echo -----------------------------------------------------------------------------------


async def test_round_trip_through_sipp_rtp_echo(allocator, tmp_path):
    media_port = free_media_port()
    args = ["-sn", "uas", "-i", "127.0.0.1", "-p", str(free_port()), "-mi", "127.0.0.1",
            "-mp", str(media_port), "-rtp_echo", "-m", "1"]
    async with Sipp(args, tmp_path) as sipp:
        await wait_echo(media_port)
        session = await open_session(allocator)
        try:
            session.start(media(media_port))
            heard: list[int] = []

            def tick(now: float, n: int) -> bool:
                if n < 100:
                    session.send(frame(n), now)
                payload = session.pull(now)
                if payload is not None:
                    heard.append(index_of(payload))
                return n >= 100 and len(heard) >= 97

            await ticks(tick, limit=6.0)
            # The echo comes back from the media port we sent to: our own packets, in order.
            assert heard == list(range(len(heard)))
            stats = session.stats()
            assert stats.remote == f"127.0.0.1:{media_port}"
            assert stats.packets_received == stats.packets_sent == 100 and stats.packets_lost == 0
            assert stats.remote_ssrc == session.ssrc
        finally:
            session.close()
        await sipp.stop()
