"""A WebRTC peer for tests: aiortc as a browser would use it, on loopback.

It offers one audio track that plays a tone (or silence), answers with the gateway's SDP, keeps
what it receives as PCM (draining aiortc's track, as every aiortc user must), and can send RFC 4733
digits the way a browser's RTCDTMFSender does: telephone-event packets on the same SRTP session.
"""

from __future__ import annotations

import asyncio
import fractions
import re
import time

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from protocol.dtmf import encode_digit

RATE = 48000
FRAME = RATE // 50


class ToneTrack(MediaStreamTrack):
    """A microphone that plays `freq` Hz (0: silence), paced in real time, 20 ms a frame."""

    kind = "audio"

    def __init__(self, freq: float = 440.0, amplitude: float = 8000.0) -> None:
        super().__init__()
        self.freq = freq
        self.amplitude = amplitude
        self.loop: np.ndarray | None = None     # 48 kHz audio to play (looped) instead of the tone
        self._n = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.time()
        else:
            await asyncio.sleep(max(0.0, self._start + self._n * FRAME / RATE - time.time()))
        if self.loop is not None:
            at = (np.arange(FRAME) + self._n * FRAME) % len(self.loop)
            pcm = self.loop[at]
        elif self.freq:
            t = (np.arange(FRAME) + self._n * FRAME) / RATE
            pcm = np.rint(np.sin(2 * np.pi * self.freq * t) * self.amplitude).astype(np.int16)
        else:
            pcm = np.zeros(FRAME, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._n * FRAME
        frame.time_base = fractions.Fraction(1, RATE)
        self._n += 1
        return frame


def strip_candidates(sdp: str) -> tuple[str, list[str]]:
    """The offer without its a=candidate lines (for trickling them), and those lines."""
    lines = sdp.splitlines()
    candidates = [line[2:] for line in lines if line.startswith("a=candidate:")]
    kept = [line for line in lines if not line.startswith(("a=candidate:", "a=end-of-candidates"))]
    return "\r\n".join(kept) + "\r\n", candidates


class WebRtcPeer:
    def __init__(self, freq: float = 440.0, codecs: tuple[str, ...] | None = None) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.tone = ToneTrack(freq)
        self.transceiver = self.pc.addTransceiver(self.tone, direction="sendrecv")
        if codecs is not None:
            caps = RTCRtpSender.getCapabilities("audio").codecs
            chosen = [c for name in codecs for c in caps if c.mimeType.lower() == f"audio/{name}".lower()]
            assert chosen, codecs
            self.transceiver.setCodecPreferences(chosen)
        self.received: list[np.ndarray] = []
        self.received_rate: int | None = None
        self.frames = 0
        self._reader: asyncio.Task | None = None
        self._dtmf_seq = 1000
        self._dtmf_ssrc = 0x5EED1234
        self._dtmf_ts = 0

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._reader = asyncio.ensure_future(self._read(track))

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                channels = len(frame.layout.channels)
                pcm = frame.to_ndarray().reshape(-1, channels)[:, 0].astype(np.int16)
                self.received_rate = frame.sample_rate
                self.received.append(pcm)
                self.frames += 1
        except MediaStreamError:
            return

    async def wait_connected(self, timeout: float = 10.0) -> None:
        async def until() -> None:
            while self.pc.connectionState != "connected":
                await asyncio.sleep(0.02)
        await asyncio.wait_for(until(), timeout)

    async def wait_frames(self, count: int, timeout: float = 10.0) -> None:
        async def until() -> None:
            while self.frames < count:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(until(), timeout)

    async def wait_state(self, state: str, timeout: float = 10.0) -> None:
        async def until() -> None:
            while self.pc.connectionState != state:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(until(), timeout)

    def heard(self) -> tuple[np.ndarray, int]:
        return (np.concatenate(self.received) if self.received else np.zeros(0, dtype=np.int16)), \
            self.received_rate or RATE

    def telephone_event_pt(self, clock_rate: int) -> int:
        """The payload type the gateway's answer gave telephone-event at `clock_rate`."""
        sdp = self.pc.remoteDescription.sdp
        match = re.search(rf"a=rtpmap:(\d+) telephone-event/{clock_rate}", sdp)
        assert match, f"no telephone-event/{clock_rate} in the answer"
        return int(match.group(1))

    async def send_digit(self, digit: str, clock_rate: int, duration_ms: int = 100) -> None:
        """One RFC 4733 digit, a packet per 20 ms (a browser sends them on its audio stream; here
        they come on a stream of their own)."""
        pt = self.telephone_event_pt(clock_rate)
        transport = self.transceiver.sender.transport
        # A stream of its own: SRTP would take packets numbered apart from the audio's for replays.
        packets = encode_digit(digit, payload_type=pt, ssrc=self._dtmf_ssrc, sequence_number=self._dtmf_seq, timestamp=self._dtmf_ts, duration_ms=duration_ms,
                               ptime_ms=20, clock_rate=clock_rate)
        for packet in packets:
            await transport._send_rtp(bytes(packet))  # noqa: SLF001 - the peer's own SRTP session
            await asyncio.sleep(0.02)
        self._dtmf_seq += len(packets)
        self._dtmf_ts += clock_rate

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
