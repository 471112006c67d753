"""One RTP stream of a SIP leg, with its RTCP: the sockets, symmetric RTP, the jitter buffer,
RFC 4733 events both ways, sender/receiver reports and the figures a call reports at hangup.

The media clock drives it: ``pull(now)`` once per tick returns the payload due for playout (or
None), and also runs RTCP and the DTMF receiver's timeout; ``send(payload, now)`` once per
packet time puts one packet on the wire (or the next RFC 4733 packet while a digit is being
sent). Received datagrams are handled in the socket's callback: parsed, checked against the
negotiated payload types and the latched source, counted, and pushed into the jitter buffer or
the DTMF receiver. Nothing here blocks or allocates per packet beyond the packet itself.

Symmetric RTP (RFC 4961 practice, "comedia"): media goes to the SDP address until a packet with
a negotiated payload type arrives; from then on to the address it came from. Another source is
ignored (and counted) unless the latched one has been silent for ``rtp.relatch_after`` seconds,
which is how a NAT rebinding or a transfer to another media server is followed.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from protocol.api_events import MetricsEvent
from protocol.dtmf import DtmfEnded, DtmfReceiver, DtmfStarted, digit_to_event, encode_digit
from protocol.errors import ProtocolError
from protocol.jitter import Gap, JitterBuffer
from protocol.negotiate import NegotiatedMedia
from protocol.rtcp import (
    SDES_CNAME,
    Bye,
    ReceiverReport,
    ReportBlock,
    SdesChunk,
    SdesItem,
    SenderReport,
    SourceDescription,
    ntp_timestamp,
    parse_rtcp,
    serialize_rtcp,
)
from protocol.rtp import ReceiverStats, RtpPacket, SourceState, is_rtcp, pack_rtp

from .config import RtpConfig
from .rtp_ports import RtpPortAllocator, RtpPorts

log = structlog.get_logger("rtp")

Address = tuple[str, int]
# A pause in sending longer than this many packet times is a new talkspurt: marker bit, and the
# timestamp jumps by the time that passed (RFC 3550 §5.1).
_RESUME_AFTER_PTIMES = 2.5


@dataclass(frozen=True, slots=True)
class RtpStats:
    """What one RTP session carried, for the call's `metrics` event at hangup."""

    local_port: int
    remote: str | None                 # host:port media is sent to now
    codec: str | None
    payload_type: int | None
    ssrc: int
    remote_ssrc: int | None
    duration_ms: int                   # since start()
    packets_sent: int
    bytes_sent: int                    # RTP datagram bytes (header + payload)
    packets_received: int
    bytes_received: int
    packets_expected: int              # from the sequence numbers (RFC 3550 A.3), all sources
    packets_lost: int
    loss_fraction: float               # lost / expected over the call
    jitter_ms: float                   # interarrival jitter now (RFC 3550 A.8)
    max_jitter_ms: float
    played: int                        # frames the jitter buffer delivered
    concealed: int                     # ticks with no frame due (loss, late, not yet arrived)
    late: int
    duplicates: int
    skipped: int
    resyncs: int
    ssrc_changes: int
    relatched: int                     # times the symmetric-RTP source changed
    dtmf_received: int
    dtmf_sent: int
    dropped_malformed: int
    dropped_payload_type: int          # a payload type that was not negotiated
    dropped_source: int                # from an address other than the latched one
    dropped_not_started: int           # before start() (no codec yet)
    send_suppressed: int               # send() while the direction forbids sending (hold)
    rtcp_sent: int
    rtcp_received: int
    rtcp_malformed: int
    remote_fraction_lost: float | None  # the peer's view of our stream, from its last report
    remote_packets_lost: int | None
    remote_jitter_ms: float | None
    rtt_ms: float | None

    def to_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def metrics_event(self, timestamp: int, key: str = "rtp") -> MetricsEvent:
        """The `metrics` event a call sends at hangup: ``duration`` is the media time in ms."""
        return MetricsEvent(timestamp=timestamp, key=key, duration=self.duration_ms, data=self.to_dict())


class _RtpProtocol(asyncio.DatagramProtocol):
    __slots__ = ("session", "rtcp")

    def __init__(self, session: RtpSession, rtcp: bool) -> None:
        self.session = session
        self.rtcp = rtcp

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        if self.rtcp:
            self.session._on_rtcp(data, (addr[0], addr[1]), time.monotonic())
        else:
            self.session._on_rtp(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        self.session.socket_errors += 1


class RtpSession:
    """One audio stream: ``open`` binds a port pair, ``start`` applies the negotiated media."""

    def __init__(
        self,
        ports: RtpPorts,
        config: RtpConfig,
        *,
        on_dtmf: Callable[[str], None] | None = None,
        on_bye: Callable[[], None] | None = None,
    ) -> None:
        self.ports = ports
        self.config = config
        self.on_dtmf = on_dtmf
        self.on_bye = on_bye
        self.ssrc = secrets.randbits(32)
        self.cname = f"{secrets.token_hex(8)}@active-call"
        self._rtp: asyncio.DatagramTransport | None = None
        self._rtcp: asyncio.DatagramTransport | None = None
        self.closed = False
        self.socket_errors = 0
        # negotiated
        self.media: NegotiatedMedia | None = None
        self._pt: int | None = None
        self._te_pt: int | None = None
        self._clock_rate = 8000
        self._samples = 160
        self._ptime = 0.02
        self._can_send = False
        self._sdp_addr: Address | None = None
        self._sdp_rtcp: Address | None = None
        self._mux = False
        self._jitter: JitterBuffer | None = None
        self._dtmf_rx: DtmfReceiver | None = None
        self._rx = ReceiverStats(8000)
        self._started_at: float | None = None
        # symmetric RTP
        self._latched: Address | None = None
        self._latched_at = 0.0
        self._rtcp_latched: Address | None = None
        # sending
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self._last_send: float | None = None
        self._dtmf_queue: deque[tuple[str, int]] = deque()  # (digit, duration in ms)
        self._dtmf_train: deque[RtpPacket] = deque()
        self._dtmf_gap = 0  # audio packets still to send before the next digit
        self._sent_since_report = False
        self._next_rtcp: float | None = None
        self._last_sr_ntp: int | None = None
        # counters
        self._remote_ssrc: int | None = None
        self._packets_sent = self._bytes_sent = self._octets_sent = 0
        self._packets_received = self._bytes_received = 0
        self._ssrc_changes = self._relatched = 0
        self._dtmf_received = self._dtmf_sent = 0
        self._dropped_malformed = self._dropped_pt = self._dropped_source = self._dropped_not_started = 0
        self._send_suppressed = 0
        self._rtcp_sent = self._rtcp_received = self._rtcp_malformed = 0
        self._max_jitter = 0.0
        self._jitter_totals = (0, 0, 0, 0, 0, 0)  # of jitter buffers replaced by a codec change
        self._remote_block: ReportBlock | None = None
        self._rtt: float | None = None

    # -- life cycle -----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        allocator: RtpPortAllocator,
        config: RtpConfig,
        *,
        on_dtmf: Callable[[str], None] | None = None,
        on_bye: Callable[[], None] | None = None,
    ) -> RtpSession:
        """Bind an RTP/RTCP port pair from ``allocator`` and start receiving on it."""
        ports = allocator.allocate()
        session = cls(ports, config, on_dtmf=on_dtmf, on_bye=on_bye)
        loop = asyncio.get_running_loop()
        try:
            session._rtp, _ = await loop.create_datagram_endpoint(lambda: _RtpProtocol(session, False), sock=ports.rtp)
            session._rtcp, _ = await loop.create_datagram_endpoint(lambda: _RtpProtocol(session, True), sock=ports.rtcp)
        except BaseException:
            session.close()
            raise
        return session

    @property
    def port(self) -> int:
        return self.ports.port

    @property
    def rtcp_port(self) -> int:
        return self.ports.rtcp_port

    @property
    def host(self) -> str:
        """The address the sockets are bound to (SDP uses the SIP endpoint's advertised host)."""
        return self.ports.host

    @property
    def remote(self) -> Address | None:
        """Where media goes now: the latched source, else the SDP address."""
        return self._latched or self._sdp_addr

    def start(self, media: NegotiatedMedia, now: float | None = None) -> None:
        """Apply the negotiated media; call again after each new offer/answer (re-INVITE, hold).

        A new codec or payload type restarts the jitter buffer and the DTMF receiver; a new remote
        address drops the latched source, so media follows the new SDP until packets arrive."""
        if self.closed:
            raise RuntimeError("RTP session is closed")
        now = time.monotonic() if now is None else now
        previous = self.media
        self.media = media
        codec = media.codec
        new_stream = previous is None or previous.codec != codec or previous.ptime != media.ptime
        self._pt = codec.payload_type
        self._te_pt = media.telephone_event_pt
        self._clock_rate = codec.clock_rate
        self._samples = codec.clock_rate * media.ptime // 1000
        self._ptime = media.ptime / 1000.0
        if new_stream:
            if self._jitter is not None:
                self._jitter_totals = self._jitter_sums()
            self._jitter = JitterBuffer(codec.clock_rate, media.ptime, self.config.jitter_target_ms,
                                        self.config.jitter_max_ms)
            self._rx.clock_rate = codec.clock_rate
        if previous is None or previous.telephone_event_pt != media.telephone_event_pt:
            self._dtmf_rx = (DtmfReceiver(media.telephone_event_pt, codec.clock_rate, self.config.dtmf_timeout)
                             if media.telephone_event_pt is not None else None)
            self._dtmf_train.clear()
            if media.telephone_event_pt is None:
                self._dtmf_queue.clear()
        sdp_addr = (media.remote_address, media.remote_port) if media.remote_address else None
        if sdp_addr != self._sdp_addr:
            self._latched = None
            self._rtcp_latched = None
        self._sdp_addr = sdp_addr
        self._mux = media.rtcp_mux
        self._sdp_rtcp = media.remote_rtcp
        self._can_send = sdp_addr is not None and media.direction in ("sendrecv", "sendonly")
        if self._started_at is None:
            self._started_at = now
            self._next_rtcp = now + self.config.rtcp_interval / 2

    def close(self) -> None:
        """Send an RTCP BYE (when started), close the sockets and give the ports back."""
        if self.closed:
            return
        if self.media is not None and self._rtp is not None:
            try:
                self._send_rtcp(time.monotonic(), bye=True)
            except OSError:
                pass
        self.closed = True
        # A socket handed to a transport is closed by it; one never handed over is closed here.
        for transport, sock in ((self._rtp, self.ports.rtp), (self._rtcp, self.ports.rtcp)):
            if transport is not None:
                transport.close()
            else:
                sock.close()
        self._rtp = self._rtcp = None
        self.ports.release(close_sockets=False)

    # -- the media tick -------------------------------------------------------------------------

    def pull(self, now: float | None = None) -> bytes | None:
        """The payload due for playout at this tick, or None (nothing due, or a frame lost: the
        caller conceals it). Also runs RTCP and the end of a digit whose end packet was lost."""
        now = time.monotonic() if now is None else now
        if self._next_rtcp is not None and now >= self._next_rtcp:
            self._send_rtcp(now)
        receiver = self._dtmf_rx
        if receiver is not None and receiver.get_timer() is not None:
            self._dtmf_events(receiver.handle_timer(now))
        jitter = self._jitter
        if jitter is None:
            return None
        item = jitter.pop(now)
        if item is None or item.__class__ is Gap:
            return None
        return item  # type: ignore[return-value]

    def send(self, payload: bytes, now: float | None = None, *, marker: bool = False) -> bool:
        """Send one packet of ``payload`` (one packet time of audio in the negotiated codec).

        While digits are queued with ``send_dtmf``, their RFC 4733 packets go out instead of the
        audio, one per call. False when nothing was sent (not started, on hold, closed)."""
        transport = self._rtp
        if transport is None or self._pt is None:
            return False
        now = time.monotonic() if now is None else now
        if not self._can_send:
            self._send_suppressed += 1
            return False
        last = self._last_send
        if last is None:
            marker = True
        elif now - last > _RESUME_AFTER_PTIMES * self._ptime:
            self._ts = (self._ts + (round((now - last) / self._ptime) - 1) * self._samples) & 0xFFFFFFFF
            marker = True
        self._last_send = now
        if self._dtmf_train or (self._dtmf_queue and not self._dtmf_gap):
            data = self._next_dtmf_packet()
        else:
            data = pack_rtp(self._pt, self._seq, self._ts, self.ssrc, payload, marker)
            self._octets_sent += len(payload)
            if self._dtmf_gap:
                self._dtmf_gap -= 1
        transport.sendto(data, self._latched or self._sdp_addr)
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + self._samples) & 0xFFFFFFFF
        self._packets_sent += 1
        self._bytes_sent += len(data)
        self._sent_since_report = True
        return True

    def send_dtmf(self, digits: str, duration_ms: int | None = None) -> None:
        """Queue RFC 4733 digits (0-9, *, #, A-D) to replace the audio of the next ``send`` calls,
        each ``duration_ms`` long (default ``rtp.dtmf_duration_ms``) with ``rtp.dtmf_gap_ms`` of
        audio after it.

        ValueError for a digit outside 0-9*#A-D, a duration outside 40..8000 ms, when the peer did
        not negotiate telephone-event, or when more than ``rtp.dtmf_max_queued`` digits would wait."""
        for digit in digits:
            digit_to_event(digit)
        duration = self.config.dtmf_duration_ms if duration_ms is None else duration_ms
        if not 40 <= duration <= 8000:
            raise ValueError(f"DTMF duration must be 40..8000 ms, got {duration}")
        if self._te_pt is None:
            raise ValueError("the peer did not negotiate telephone-event: RFC 4733 digits cannot be sent")
        if len(self._dtmf_queue) + len(digits) > self.config.dtmf_max_queued:
            raise ValueError(
                f"{len(self._dtmf_queue)} digits already wait to be sent; rtp.dtmf_max_queued is "
                f"{self.config.dtmf_max_queued}"
            )
        self._dtmf_queue.extend((digit, duration) for digit in digits.upper())

    @property
    def dtmf_pending(self) -> int:
        """Digits queued or being sent."""
        return len(self._dtmf_queue) + (1 if self._dtmf_train else 0)

    def _next_dtmf_packet(self) -> bytes:
        if not self._dtmf_train:
            digit, duration_ms = self._dtmf_queue.popleft()
            assert self._te_pt is not None
            self._dtmf_train.extend(encode_digit(
                digit, payload_type=self._te_pt, ssrc=self.ssrc, sequence_number=self._seq,
                timestamp=self._ts, duration_ms=duration_ms,
                ptime_ms=round(self._ptime * 1000), clock_rate=self._clock_rate,
            ))
            self._dtmf_sent += 1
        packet = self._dtmf_train.popleft()
        if not self._dtmf_train:
            ptime_ms = round(self._ptime * 1000)
            self._dtmf_gap = -(-self.config.dtmf_gap_ms // ptime_ms)
        # The train was numbered when it started; a codec change in between cannot renumber it.
        if packet.sequence_number != self._seq:
            packet = RtpPacket(packet.payload_type, self._seq, packet.timestamp, packet.ssrc,
                               packet.payload, packet.marker)
        self._octets_sent += len(packet.payload)
        return bytes(packet)

    # -- receiving ------------------------------------------------------------------------------

    def _on_rtp(self, data: bytes, addr: Address) -> None:
        now = time.monotonic()
        if is_rtcp(data):  # rtcp-mux (RFC 5761): RTCP packet types never collide with our PTs
            self._on_rtcp(data, addr, now)
            return
        jitter = self._jitter
        if jitter is None:
            self._dropped_not_started += 1
            return
        try:
            packet = RtpPacket.parse(data)
        except ProtocolError:
            self._dropped_malformed += 1
            return
        pt = packet.payload_type
        if pt != self._pt and pt != self._te_pt:
            self._dropped_pt += 1
            return
        latched = self._latched
        if addr != latched:
            if latched is not None and now - self._latched_at < self.config.relatch_after:
                self._dropped_source += 1
                return
            if latched is not None:
                self._relatched += 1
                log.info("rtp source changed", port=self.ports.port, old=f"{latched[0]}:{latched[1]}",
                         new=f"{addr[0]}:{addr[1]}")
            self._latched = addr
        self._latched_at = now
        self._packets_received += 1
        self._bytes_received += len(data)
        ssrc = packet.ssrc
        if ssrc != self._remote_ssrc:
            if self._remote_ssrc is not None:
                self._ssrc_changes += 1
            self._remote_ssrc = ssrc
        if pt == self._te_pt and pt != self._pt:
            # Events share the stream's sequence numbers (loss counts) but repeat one timestamp
            # for a whole digit, which would read as jitter: only the sequence is counted.
            state = self._rx.sources.get(ssrc)
            if state is None:
                state = self._rx.sources[ssrc] = SourceState(ssrc, self._clock_rate, packet.sequence_number)
            state.update_seq(packet.sequence_number)
            if self._dtmf_rx is not None:
                try:
                    self._dtmf_events(self._dtmf_rx.receive(packet, now))
                except ProtocolError:
                    self._dropped_malformed += 1
            return
        self._rx.receive(packet, now)
        jitter.push(packet, now)

    def _dtmf_events(self, events: list[DtmfStarted | DtmfEnded]) -> None:
        for event in events:
            if isinstance(event, DtmfStarted):
                self._dtmf_received += 1
                if self.on_dtmf is not None:
                    try:
                        self.on_dtmf(event.digit)
                    except Exception:  # noqa: BLE001 - the stream goes on whatever the listener does
                        log.exception("dtmf callback raised")

    def _on_rtcp(self, data: bytes, addr: Address, now: float) -> None:
        try:
            packets = parse_rtcp(data)
        except ProtocolError:
            self._rtcp_malformed += 1
            return
        if self._latched is not None and addr[0] != self._latched[0]:
            # Reports from a host the media does not come from are not about this stream.
            self._dropped_source += 1
            return
        self._rtcp_received += 1
        if not self._mux and addr != self._rtcp_latched:
            self._rtcp_latched = addr
        for packet in packets:
            blocks: tuple[ReportBlock, ...] = ()
            if isinstance(packet, SenderReport):
                self._rx.on_sender_report(packet, now)
                blocks = packet.reports
            elif isinstance(packet, ReceiverReport):
                blocks = packet.reports
            elif isinstance(packet, Bye):
                if self._remote_ssrc is not None and self._remote_ssrc in packet.sources and self.on_bye is not None:
                    try:
                        self.on_bye()
                    except Exception:  # noqa: BLE001
                        log.exception("rtcp bye callback raised")
            for block in blocks:
                if block.ssrc == self.ssrc:
                    self._remote_block = block
                    if block.last_sr:
                        arrival = (ntp_timestamp(time.time()) >> 16) & 0xFFFFFFFF
                        rtt = ((arrival - block.last_sr - block.delay_since_last_sr) & 0xFFFFFFFF) / 65536.0
                        if rtt < 60.0:  # anything larger is a clock step or a bogus block
                            self._rtt = rtt

    # -- RTCP -----------------------------------------------------------------------------------

    def _send_rtcp(self, now: float, *, bye: bool = False) -> None:
        interval = self.config.rtcp_interval
        self._next_rtcp = now + interval * random.uniform(0.5, 1.5)
        transport, target = self._rtcp_route()
        if transport is None or target is None:
            return
        blocks = tuple(self._rx.report_blocks(now))
        for source in self._rx.sources.values():
            self._max_jitter = max(self._max_jitter, source.jitter * 1000.0 / source.clock_rate)
        packets: list = []
        if self._sent_since_report:
            ntp = ntp_timestamp(time.time())
            packets.append(SenderReport(self.ssrc, ntp, self._ts, self._packets_sent & 0xFFFFFFFF,
                                        self._octets_sent & 0xFFFFFFFF, blocks))
            self._last_sr_ntp = ntp
        else:
            packets.append(ReceiverReport(self.ssrc, blocks))
        self._sent_since_report = False
        packets.append(SourceDescription((SdesChunk(self.ssrc, (SdesItem(SDES_CNAME, self.cname.encode()),)),)))
        if bye:
            packets.append(Bye((self.ssrc,)))
        transport.sendto(serialize_rtcp(packets), target)
        self._rtcp_sent += 1

    def _rtcp_route(self) -> tuple[asyncio.DatagramTransport | None, Address | None]:
        if self._mux:
            return self._rtp, self._latched or self._sdp_addr
        if self._rtcp_latched is not None:
            return self._rtcp, self._rtcp_latched
        if self._sdp_rtcp is not None:
            return self._rtcp, self._sdp_rtcp
        if self._latched is not None:
            return self._rtcp, (self._latched[0], self._latched[1] + 1)
        return self._rtcp, None

    # -- figures --------------------------------------------------------------------------------

    def _jitter_sums(self) -> tuple[int, int, int, int, int, int]:
        base = self._jitter_totals
        if self._jitter is None:
            return base
        s = self._jitter.stats()
        values = (s.played, s.gaps, s.late, s.duplicates, s.skipped, s.resyncs)
        return tuple(a + b for a, b in zip(base, values))  # type: ignore[return-value]

    def stats(self, now: float | None = None) -> RtpStats:
        now = time.monotonic() if now is None else now
        expected = lost = 0
        jitter_ms = 0.0
        for source in self._rx.sources.values():
            if source.probation:
                continue
            expected += source.expected
            lost += max(0, source.expected - source.received)
            ms = source.jitter * 1000.0 / source.clock_rate
            self._max_jitter = max(self._max_jitter, ms)
            if source.ssrc == self._remote_ssrc:
                jitter_ms = ms
        played, gaps, late, duplicates, skipped, resyncs = self._jitter_sums()
        block = self._remote_block
        remote = self.remote
        media = self.media
        return RtpStats(
            local_port=self.ports.port,
            remote=None if remote is None else f"{remote[0]}:{remote[1]}",
            codec=None if media is None else media.codec.name,
            payload_type=self._pt,
            ssrc=self.ssrc,
            remote_ssrc=self._remote_ssrc,
            duration_ms=0 if self._started_at is None else round((now - self._started_at) * 1000),
            packets_sent=self._packets_sent,
            bytes_sent=self._bytes_sent,
            packets_received=self._packets_received,
            bytes_received=self._bytes_received,
            packets_expected=expected,
            packets_lost=lost,
            loss_fraction=round(lost / expected, 4) if expected else 0.0,
            jitter_ms=round(jitter_ms, 3),
            max_jitter_ms=round(self._max_jitter, 3),
            played=played,
            concealed=gaps,
            late=late,
            duplicates=duplicates,
            skipped=skipped,
            resyncs=resyncs,
            ssrc_changes=self._ssrc_changes,
            relatched=self._relatched,
            dtmf_received=self._dtmf_received,
            dtmf_sent=self._dtmf_sent,
            dropped_malformed=self._dropped_malformed,
            dropped_payload_type=self._dropped_pt,
            dropped_source=self._dropped_source,
            dropped_not_started=self._dropped_not_started,
            send_suppressed=self._send_suppressed,
            rtcp_sent=self._rtcp_sent,
            rtcp_received=self._rtcp_received,
            rtcp_malformed=self._rtcp_malformed,
            remote_fraction_lost=None if block is None else round(block.fraction_lost / 256, 4),
            remote_packets_lost=None if block is None else block.packets_lost,
            remote_jitter_ms=None if block is None else round(block.jitter * 1000.0 / self._clock_rate, 3),
            rtt_ms=None if self._rtt is None else round(self._rtt * 1000.0, 3),
        )
