"""The media of a WebRTC leg: aiortc carries ICE, DTLS and SRTP; the audio is the gateway's own.

aiortc would decode every received packet on a thread per receiver and encode every sent frame in
an executor, then hand over `av.AudioFrame`s that the call would resample again. The leg skips
both: the call's Track already encodes and decodes Opus, G.711 and G.722 (protocol/codecs.py), so

- outbound, the Track's encoded payload goes to `OutboundAudio`, an aiortc track whose `recv()`
  returns it as a pre-encoded `av.Packet`: aiortc's sender only packs it into RTP (no encoder,
  no executor). The media clock paces it: one payload per tick, through a short bounded queue;
- inbound, `InboundAudio` takes the RTP packets from aiortc's receiver before its jitter buffer
  and decoder thread (`intercept`), puts the audio into the gateway's jitter buffer
  (protocol/jitter.py) and RFC 4733 events into its DTMF receiver (protocol/dtmf.py). The Track
  pulls one payload per tick. Nothing is queued without bound: the jitter buffer holds at most
  `jitter_max_ms`, and aiortc's decoder thread receives nothing (it idles).

aiortc does not know telephone-event. `register_telephone_event` adds it to aiortc's codec table
(at 48 kHz for Opus and 8 kHz for the telephony codecs) so that an offer's telephone-event is
answered and its packets are routed to the receiver; aiortc never encodes or decodes it, because
only the first codec of the answer is sent and the leg puts telephone-event after the audio codec.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import av
from aiortc import MediaStreamTrack, RTCRtpCodecParameters
from aiortc.codecs import CODECS
from aiortc.mediastreams import MediaStreamError

from protocol.codecs import CodecInfo, codec_info
from protocol.dtmf import DtmfReceiver, DtmfStarted
from protocol.errors import ProtocolError
from protocol.jitter import Gap, JitterBuffer, JitterStats
from protocol.rtp import RtpPacket

__all__ = [
    "InboundAudio",
    "OutboundAudio",
    "WEBRTC_CODECS",
    "register_telephone_event",
]

TELEPHONE_EVENT = "audio/telephone-event"
# API codec name by aiortc MIME type: what the gateway's Track can carry.
WEBRTC_CODECS = {"audio/opus": "opus", "audio/g722": "g722", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}
_TELEPHONE_EVENT_PTS = {48000: 110, 8000: 126}  # aiortc's own offers only; answers take the offer's


def register_telephone_event() -> None:
    """Teach aiortc's codec table telephone-event (idempotent)."""
    audio = CODECS["audio"]
    for rate, pt in _TELEPHONE_EVENT_PTS.items():
        if not any(c.mimeType.lower() == TELEPHONE_EVENT and c.clockRate == rate for c in audio):
            audio.append(RTCRtpCodecParameters(mimeType=TELEPHONE_EVENT, clockRate=rate, channels=1,
                                               payloadType=pt, parameters={"0-15": None}))


register_telephone_event()


def restrict_audio(sdp: str, keep: list[int]) -> str:
    """The offer with its (first) audio m-line reduced to the payload types `keep`, in that order.

    aiortc answers every offered codec it knows, in the offer's order, and its codec preferences
    cannot tell telephone-event/48000 from telephone-event/8000; handing it an offer that holds
    only the chosen codec and its telephone-event makes the answer exactly that."""
    wanted = {str(pt) for pt in keep}
    out = []
    in_audio = seen_audio = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            in_audio = line.startswith("m=audio") and not seen_audio
            seen_audio = seen_audio or in_audio
            if in_audio:
                line = " ".join(line.split()[:3] + [str(pt) for pt in keep])
        elif in_audio and line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")):
            if line.split(":", 1)[1].split(None, 1)[0] not in wanted:
                continue
        if line:
            out.append(line)
    return "\r\n".join(out) + "\r\n"


def gateway_codec(codec: RTCRtpCodecParameters) -> CodecInfo | None:
    """The Track's codec for an aiortc audio codec, or None when the gateway does not carry it."""
    name = WEBRTC_CODECS.get(codec.mimeType.lower())
    return codec_info(name) if name is not None else None


def is_telephone_event(codec: RTCRtpCodecParameters) -> bool:
    return codec.mimeType.lower() == TELEPHONE_EVENT


class OutboundAudio(MediaStreamTrack):
    """What the gateway sends: encoded payloads from the Track, handed to aiortc's sender as
    pre-encoded packets. The media clock paces `push`; `recv` waits for the next payload.

    Timestamps advance one frame per payload pushed, dropped ones included, so a frame lost to a
    stalled sender is a gap to the browser rather than a skip in its timeline. Until the sender
    starts (the peer is not connected yet) only the newest payloads are kept and none is counted
    as dropped."""

    kind = "audio"

    def __init__(self, clock_rate: int, samples_per_frame: int, capacity: int) -> None:
        super().__init__()
        self._time_base = Fraction(1, clock_rate)
        self._step = samples_per_frame
        self._queue: deque[tuple[int, bytes]] = deque(maxlen=capacity)
        self._pts = 0
        self._waiter: asyncio.Future[None] | None = None
        self.started = False
        self.sent = 0
        self.dropped = 0

    def push(self, payload: bytes) -> None:
        queue = self._queue
        if len(queue) == queue.maxlen and self.started:
            self.dropped += 1
        queue.append((self._pts, payload))
        self._pts += self._step
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recv(self) -> av.Packet:
        if not self.started:
            # The sender starts once the peer is connected: what waited meanwhile is stale.
            self.started = True
            while len(self._queue) > 1:
                self._queue.popleft()
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        pts, payload = self._queue.popleft()
        packet = av.Packet(payload)
        packet.pts = pts
        packet.time_base = self._time_base
        self.sent += 1
        return packet

    def stop(self) -> None:
        super().stop()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


@dataclass(frozen=True, slots=True)
class InboundStats:
    packets: int                 # audio packets received
    dtmf_packets: int
    dropped_payload_type: int    # packets of a payload type the answer did not choose
    jitter: JitterStats


class InboundAudio:
    """The browser's audio for the Track: RTP packets in (from aiortc's receiver, on the loop),
    one payload per media tick out. RFC 4733 digits go to `on_digit` as they start."""

    def __init__(self, payload_type: int, clock_rate: int, ptime_ms: int, *, telephone_events: dict[int, int],
                 jitter_target_ms: int, jitter_max_ms: int, dtmf_timeout: float,
                 on_digit: Callable[[str], None], now: Callable[[], float] = time.monotonic) -> None:
        self.payload_type = payload_type
        self._jitter = JitterBuffer(clock_rate, ptime_ms, jitter_target_ms, jitter_max_ms)
        self._dtmf = {pt: DtmfReceiver(pt, rate, dtmf_timeout) for pt, rate in telephone_events.items()}
        self._on_digit = on_digit
        self._now = now
        self.last_packet_at: float | None = None
        self.packets = 0
        self.dtmf_packets = 0
        self.dropped_payload_type = 0
        self.malformed = 0

    async def handle_rtp(self, packet: object, arrival_time_ms: int = 0) -> None:
        """aiortc's receiver hook: one decrypted RTP packet (aiortc.rtp.RtpPacket)."""
        now = self._now()
        self.last_packet_at = now
        pt = packet.payload_type  # type: ignore[attr-defined]
        ours = RtpPacket(pt, packet.sequence_number, packet.timestamp, packet.ssrc,  # type: ignore[attr-defined]
                         packet.payload, bool(packet.marker))  # type: ignore[attr-defined]
        if pt == self.payload_type:
            self.packets += 1
            self._jitter.push(ours, now)
            return
        receiver = self._dtmf.get(pt)
        if receiver is None:
            self.dropped_payload_type += 1
            return
        self.dtmf_packets += 1
        try:
            self._digits(receiver.receive(ours, now))
        except ProtocolError:
            self.malformed += 1

    def seen(self) -> None:
        """Any other sign of life from the peer (an RTCP packet)."""
        self.last_packet_at = self._now()

    def pull(self, now: float) -> bytes | None:
        for receiver in self._dtmf.values():
            if receiver.get_timer() is not None:
                self._digits(receiver.handle_timer(now))
        item = self._jitter.pop(now)
        if item is None or item.__class__ is Gap:
            return None
        return item  # type: ignore[return-value]

    def _digits(self, events: list) -> None:
        for event in events:
            if isinstance(event, DtmfStarted):
                self._on_digit(event.digit)

    def stats(self) -> InboundStats:
        return InboundStats(self.packets, self.dtmf_packets, self.dropped_payload_type, self._jitter.stats())
