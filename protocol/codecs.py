"""Audio codecs and streaming resampling for the media plane (pure: arrays in, bytes out).

The media plane inside a call runs on 16-bit mono PCM at MEDIA_RATE. Each leg has a codec at its own
rate; a per-direction `Encoder`/`Decoder` carries the codec state (G.722 is stateful) and a streaming
resampler, so a call never resamples frame-by-frame without history (that clicks and aliases).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np

import G722

from .errors import ProtocolError
from .opus import DEFAULT_BITRATE as OPUS_BITRATE, OPUS_RATE, OpusDecoder, OpusEncoder, bandwidth_for

MEDIA_RATE = 16000
PTIME_MS = 20


# --- G.711, bit-exact with the reference g711.c (Sun Microsystems) -----------------------------

def _build_ulaw_tables() -> tuple[np.ndarray, np.ndarray]:
    pcm = np.arange(-32768, 32768, dtype=np.int32)
    val = pcm >> 2                                   # 14-bit magnitude, shift first as g711.c does
    mask = np.where(val < 0, 0x7F, 0xFF)
    val = np.minimum(np.abs(val), 8159) + (0x84 >> 2)
    seg_end = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    seg = np.searchsorted(seg_end, val)              # first segment whose end >= val
    uval = (seg << 4) | ((val >> (seg + 1)) & 0xF)
    uval = np.where(seg >= 8, 0x7F, uval)
    encode = ((uval ^ mask) & 0xFF).astype(np.uint8)

    u = (~np.arange(256, dtype=np.int32)) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    decode = np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)
    return encode, decode


def _build_alaw_tables() -> tuple[np.ndarray, np.ndarray]:
    pcm = np.arange(-32768, 32768, dtype=np.int32)
    val = pcm >> 3
    mask = np.where(val >= 0, 0xD5, 0x55)
    val = np.where(val >= 0, val, -val - 1)
    seg_end = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    seg = np.searchsorted(seg_end, val)
    quant = np.where(seg < 2, val >> 1, val >> np.maximum(seg, 1)) & 0x0F
    aval = np.where(seg >= 8, 0x7F, (seg << 4) | quant)
    encode = ((aval ^ mask) & 0xFF).astype(np.uint8)

    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    decode = np.where(a & 0x80, t, -t).astype(np.int16)
    return encode, decode


ULAW_ENCODE, ULAW_DECODE = _build_ulaw_tables()
ALAW_ENCODE, ALAW_DECODE = _build_alaw_tables()


def ulaw_encode(pcm: np.ndarray) -> bytes:
    return ULAW_ENCODE[pcm.astype(np.int32) + 32768].tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    return ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(pcm: np.ndarray) -> bytes:
    return ALAW_ENCODE[pcm.astype(np.int32) + 32768].tobytes()


def alaw_decode(data: bytes) -> np.ndarray:
    return ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


# --- Streaming resampler -----------------------------------------------------------------------

class Resampler:
    """Polyphase FIR resampler with state carried across chunks: one per call and direction.

    Any rational ratio; output length follows input exactly over time (no batching delay), which
    a 20 ms telephony frame needs. Group delay is TAPS/2 input samples (3 ms from 8 kHz, 1.5 ms from 16 kHz).
    """

    TAPS = 48  # per phase: flat to 3.3 kHz at 8 kHz, aliasing below -60 dB (24 taps drooped 3 dB)

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ProtocolError(f"resampler: rates must be positive, got {in_rate} -> {out_rate}")
        g = gcd(in_rate, out_rate)
        self.up, self.down = out_rate // g, in_rate // g
        self.in_rate, self.out_rate = in_rate, out_rate
        self._passthrough = self.up == self.down
        if self._passthrough:
            return
        if self.up > 640:
            raise ProtocolError(f"resampler: ratio {in_rate}:{out_rate} is too fine-grained")
        n = self.TAPS * self.up
        cutoff = 0.92 / max(self.up, self.down)      # of the upsampled Nyquist
        k = np.arange(n) - (n - 1) / 2
        h = cutoff * np.sinc(cutoff * k) * np.kaiser(n, 6.0) * self.up
        # phases[p][j] multiplies input x[i - j] for output phase p
        self._phases = h.reshape(self.TAPS, self.up).T[:, ::-1].astype(np.float64).copy()
        self._kernels = [np.ascontiguousarray(p[::-1]) for p in self._phases]  # for np.convolve
        self._history = np.zeros(self.TAPS - 1, dtype=np.float64)
        self._pos = 0  # position of the next output in the upsampled domain, relative to history end

    def process(self, pcm: np.ndarray) -> np.ndarray:
        if self._passthrough:
            return pcm
        if self.down == 1:
            return self._interpolate(pcm)
        if self.up == 1:
            return self._decimate(pcm)
        return self._rational(pcm)

    def _interpolate(self, pcm: np.ndarray) -> np.ndarray:
        # Integer up-sampling (8 -> 16 kHz, 16 -> 48 kHz): every phase yields one output per input.
        x = np.concatenate((self._history, pcm))
        self._history = x[len(x) - (self.TAPS - 1):]
        y = np.empty(len(pcm) * self.up)
        for p, kernel in enumerate(self._kernels):
            y[p::self.up] = np.convolve(x, kernel, "valid")
        return np.clip(np.rint(y), -32768, 32767).astype(np.int16)

    def _decimate(self, pcm: np.ndarray) -> np.ndarray:
        # Integer down-sampling (16 -> 8 kHz, 48 -> 16 kHz): keep every down-th filtered sample.
        x = np.concatenate((self._history, pcm))
        self._history = x[len(x) - (self.TAPS - 1):]
        y = np.convolve(x, self._kernels[0], "valid")[self._pos::self.down]
        self._pos = (self._pos - len(pcm)) % self.down
        return np.clip(np.rint(y), -32768, 32767).astype(np.int16)

    def _rational(self, pcm: np.ndarray) -> np.ndarray:
        x = np.concatenate((self._history, pcm.astype(np.float64)))
        base = len(self._history)                     # index in x of the first new sample
        limit = len(pcm) * self.up                    # upsampled positions covered by this chunk
        t = np.arange(self._pos, limit, self.down)
        if len(t) == 0:
            self._pos -= limit
            self._history = x[-(self.TAPS - 1):]
            return np.zeros(0, dtype=np.int16)
        idx = base + t // self.up                     # newest input sample used by each output
        phase = t % self.up
        if self.up <= 8:
            # few phases: one 'valid' convolution per phase is far cheaper than a gather
            start = base + self._pos // self.up - (self.TAPS - 1)
            seg = x[start:]
            conv = np.stack([np.convolve(seg, kernel, "valid") for kernel in self._kernels])
            y = conv[phase, idx - (self.TAPS - 1) - start]
        else:
            window = idx[:, None] - (self.TAPS - 1) + np.arange(self.TAPS)[None, :]
            y = np.einsum("nk,nk->n", x[window], self._phases[phase])
        self._pos = int(t[-1] + self.down - limit)
        self._history = x[-(self.TAPS - 1):]
        return np.clip(np.rint(y), -32768, 32767).astype(np.int16)


# --- Codecs ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CodecInfo:
    name: str            # wire name in the API: pcm, pcmu, pcma, g722
    sample_rate: int     # PCM rate the codec carries
    payload_type: int | None
    bytes_per_sample: float


CODECS: dict[str, CodecInfo] = {
    "pcm": CodecInfo("pcm", MEDIA_RATE, None, 2.0),
    "pcmu": CodecInfo("pcmu", 8000, 0, 1.0),
    "pcma": CodecInfo("pcma", 8000, 8, 1.0),
    "g722": CodecInfo("g722", 16000, 9, 0.5),
    # SDP always says opus/48000/2 (RFC 7587, negotiate.py); we send mono packets and decode either.
    # Opus is variable-rate: bytes_per_sample is the nominal figure at the encoder's bitrate.
    "opus": CodecInfo("opus", OPUS_RATE, 111, OPUS_BITRATE / 8 / OPUS_RATE),
}


def codec_info(name: str, sample_rate: int | None = None) -> CodecInfo:
    """Codec by API name; `sample_rate` only applies to raw PCM (any rate 8000..48000)."""
    info = CODECS.get(name.lower())
    if info is None:
        raise ProtocolError(f"unsupported codec {name!r} (supported: {', '.join(CODECS)})")
    if sample_rate is None or sample_rate == info.sample_rate:
        return info
    if info.name != "pcm":
        raise ProtocolError(f"codec {info.name} runs at {info.sample_rate} Hz, not {sample_rate}")
    if not 8000 <= sample_rate <= 48000:
        raise ProtocolError(f"pcm sample rate must be 8000..48000 Hz, got {sample_rate}")
    return CodecInfo("pcm", sample_rate, None, 2.0)


class Decoder:
    """Leg bytes -> PCM at MEDIA_RATE. Stateful: one per leg direction."""

    def __init__(self, info: CodecInfo, media_rate: int = MEDIA_RATE) -> None:
        self.info = info
        self._g722 = G722.G722(16000, 64000) if info.name == "g722" else None
        self._opus_decoder = OpusDecoder() if info.name == "opus" else None
        self._resampler = Resampler(info.sample_rate, media_rate)

    def decode(self, data: bytes) -> np.ndarray:
        name = self.info.name
        if name == "pcm":
            if len(data) % 2:
                raise ProtocolError(f"pcm frame of {len(data)} bytes is not a whole number of 16-bit samples")
            pcm = np.frombuffer(data, dtype="<i2")
        elif name == "pcmu":
            pcm = ulaw_decode(data)
        elif name == "pcma":
            pcm = alaw_decode(data)
        elif name == "opus":
            pcm = self._opus_decoder.decode(data)
        else:
            pcm = np.asarray(self._g722.decode(data), dtype=np.int16)
        return self._resampler.process(pcm)


class Encoder:
    """PCM at MEDIA_RATE -> leg bytes. Stateful: one per leg direction."""

    def __init__(self, info: CodecInfo, media_rate: int = MEDIA_RATE) -> None:
        self.info = info
        self._g722 = G722.G722(16000, 64000) if info.name == "g722" else None
        self._opus_encoder = (OpusEncoder(OPUS_RATE, 1, bandwidth_hz=bandwidth_for(media_rate))
                              if info.name == "opus" else None)
        self._resampler = Resampler(media_rate, info.sample_rate)

    def encode(self, pcm: np.ndarray) -> bytes:
        pcm = self._resampler.process(pcm)
        name = self.info.name
        if name == "pcm":
            return pcm.astype("<i2", copy=False).tobytes()
        if name == "pcmu":
            return ulaw_encode(pcm)
        if name == "pcma":
            return alaw_encode(pcm)
        if name == "opus":
            return self._opus_encoder.encode(pcm)
        return bytes(self._g722.encode(pcm))


def frame_samples(rate: int = MEDIA_RATE, ptime_ms: int = PTIME_MS) -> int:
    return rate * ptime_ms // 1000
