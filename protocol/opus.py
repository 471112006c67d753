"""Opus (RFC 6716) through the libopus that PyAV bundles: raw packets in and out, no container.

RTP carries one Opus packet per datagram (RFC 7587) and the gateway sends one per 20 ms frame.
Encoder and decoder keep state across packets (linear prediction, band energies), so each call
direction owns one of each, as it owns its G.722 state.

FFmpeg has two Opus decoders; this module uses libopus's own. FFmpeg's native one returns frames
of uneven length (456 samples, then 984, for 480- and 960-sample packets) because of its internal
resampler, which would break the one-packet-one-frame arithmetic of a paced call.
"""

from __future__ import annotations

import av
import av.error
import numpy as np

from .errors import ProtocolError

OPUS_RATE = 48000  # RTP clock and decoder output rate, whatever the coded bandwidth (RFC 7587 §4.1)
ENCODER_RATES = (8000, 12000, 16000, 24000, 48000)
# libopus audio bandwidths as upper edges in Hz: narrow, medium, wide, super-wide and full band.
BANDWIDTHS_HZ = (4000, 6000, 8000, 12000, 20000)
APPLICATIONS = ("voip", "audio", "lowdelay")
FRAME_MS = 20
MIN_BITRATE, MAX_BITRATE = 6000, 510000  # libopus's own limits
# WebRTC's default for mono voice. Gateway path, speech fixture, PESQ-WB: 16 kbit/s 3.91,
# 24 kbit/s 4.35, 32 kbit/s 4.50, 48 kbit/s 4.58.
DEFAULT_BITRATE = 32000
# Complexity 6 measured PESQ-WB 4.50 on the speech fixture at 32 kbit/s against 4.55 at 8-10,
# for about three quarters of the encoding time (scripts/bench_codecs.py --sweep).
DEFAULT_COMPLEXITY = 6


class OpusError(ProtocolError):
    """A packet libopus refused, or encoder input of the wrong shape."""


def bandwidth_for(rate: int) -> int:
    """The narrowest Opus bandwidth that carries all of a `rate` Hz signal (its Nyquist band).

    Media that was sampled at 16 kHz has nothing above 8 kHz; letting libopus code the empty
    upper band at 48 kHz spends bits there (hybrid mode) that wide-band SILK puts into the speech.
    """
    for edge in BANDWIDTHS_HZ:
        if edge >= rate // 2:
            return edge
    return BANDWIDTHS_HZ[-1]


class OpusEncoder:
    """20 ms of int16 PCM -> one Opus packet.

    `pcm` is either mono content, shape (frame_samples,), which a two-channel encoder sends on
    both channels, or shape (frame_samples, channels) for interleaved multi-channel audio.
    """

    def __init__(
        self,
        sample_rate: int = OPUS_RATE,
        channels: int = 1,
        bitrate: int = DEFAULT_BITRATE,
        *,
        complexity: int = DEFAULT_COMPLEXITY,
        bandwidth_hz: int | None = None,
        application: str = "voip",
    ) -> None:
        if sample_rate not in ENCODER_RATES:
            raise OpusError(f"opus: sample rate must be one of {ENCODER_RATES}, got {sample_rate}")
        if channels not in (1, 2):
            raise OpusError(f"opus: channels must be 1 or 2, got {channels}")
        if not MIN_BITRATE <= bitrate <= MAX_BITRATE:
            raise OpusError(f"opus: bitrate must be {MIN_BITRATE}..{MAX_BITRATE} bit/s, got {bitrate}")
        if not 0 <= complexity <= 10:
            raise OpusError(f"opus: complexity must be 0..10, got {complexity}")
        if bandwidth_hz is not None and bandwidth_hz not in BANDWIDTHS_HZ:
            raise OpusError(f"opus: bandwidth must be one of {BANDWIDTHS_HZ} Hz, got {bandwidth_hz}")
        if application not in APPLICATIONS:
            raise OpusError(f"opus: application must be one of {APPLICATIONS}, got {application!r}")
        self.sample_rate = sample_rate
        self.channels = channels
        self.bitrate = bitrate
        self.frame_samples = sample_rate * FRAME_MS // 1000
        self._layout = "mono" if channels == 1 else "stereo"
        ctx = av.codec.CodecContext.create("libopus", "w")
        ctx.sample_rate = sample_rate
        ctx.layout = self._layout
        ctx.format = "s16"
        ctx.bit_rate = bitrate
        options = {
            "application": application,
            "frame_duration": str(FRAME_MS),
            "compression_level": str(complexity),
        }
        if bandwidth_hz is not None:
            options["cutoff"] = str(bandwidth_hz)
        ctx.options = options
        ctx.open()
        self._ctx = ctx
        self._pts = 0

    def encode(self, pcm: np.ndarray) -> bytes:
        if pcm.dtype != np.int16:
            raise OpusError(f"opus: expected int16 samples, got {pcm.dtype}")
        n = self.frame_samples
        if pcm.shape == (n,):
            samples = pcm if self.channels == 1 else np.repeat(pcm, 2)
        elif pcm.shape == (n, self.channels):
            samples = pcm.reshape(-1)
        else:
            raise OpusError(f"opus: a {FRAME_MS} ms frame at {self.sample_rate} Hz is {n} samples "
                            f"(or {n}x{self.channels}), got shape {pcm.shape}")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples).reshape(1, -1),
                                           format="s16", layout=self._layout)
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += n
        packets = self._ctx.encode(frame)
        # libopus codes each whole frame at once: anything but one packet would break RTP timing.
        if len(packets) != 1:
            raise OpusError(f"opus: encoder returned {len(packets)} packets for one frame", status=500)
        return bytes(packets[0])


class OpusDecoder:
    """Opus packet -> int16 mono PCM at 48 kHz, however many frames and channels the packet holds.

    The decoder is opened with one channel, so libopus itself mixes a stereo stream down
    ((L + R) / 2): RFC 7587 lets a peer send stereo even when mono was asked for.
    """

    sample_rate = OPUS_RATE

    def __init__(self) -> None:
        ctx = av.codec.CodecContext.create("libopus", "r")
        ctx.sample_rate = OPUS_RATE
        ctx.layout = "mono"
        ctx.open()
        self._ctx = ctx

    def decode(self, packet: bytes) -> np.ndarray:
        # An empty packet would reach FFmpeg as end-of-stream and close the decoder for good.
        if not packet:
            raise OpusError("opus: empty packet (RFC 6716 §3.4: a packet has at least one byte)")
        try:
            frames = self._ctx.decode(av.packet.Packet(bytes(packet)))
        except av.error.FFmpegError as exc:
            raise OpusError(f"opus: corrupt packet of {len(packet)} bytes "
                            f"(TOC 0x{packet[0]:02x}): {exc.strerror}") from None
        if not frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
