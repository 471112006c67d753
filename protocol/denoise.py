"""Noise suppression for one direction of one call: speexdsp's preprocessor (denoise only).

speexdsp-ns 0.1.2 wraps ``speex_preprocess_state_init(frame, rate)`` and ``speex_preprocess_run``
with the library's defaults: denoise on, at most 15 dB of attenuation, no AGC, no VAD, no
dereverberation. It estimates the noise spectrum as it goes (a few hundred ms to settle) and
suits stationary noise (fans, hiss, line noise) far better than babble.

The preprocessor takes any frame length (its FFT is twice the frame), so the media plane's 20 ms
frame is its frame: no re-framing. Its analysis window spans the previous and the current frame
with 50 % overlap-add, so the output lags the input by exactly one frame (``delay_samples``,
20 ms at 16 kHz); that lag is the library's, measured, not added here.
"""

from __future__ import annotations

import numpy as np
from speexdsp_ns import NoiseSuppression

from protocol.errors import ProtocolError


class Denoiser:
    """``process(frame)`` takes one int16 frame of exactly ``frame`` samples and returns the
    denoised frame of the same length, ``delay_samples`` behind the input. One per call and
    direction: the noise estimate is per stream."""

    __slots__ = ("sample_rate", "frame", "delay_samples", "_state")

    def __init__(self, sample_rate: int = 16000, frame: int = 320) -> None:
        if not 8000 <= sample_rate <= 48000:
            raise ProtocolError(f"denoiser sample rate must be 8000..48000 Hz, got {sample_rate}")
        # speexdsp is tuned for 10-20 ms frames; allow 5-40 ms around that.
        if not sample_rate // 200 <= frame <= sample_rate // 25:
            raise ProtocolError(f"denoiser frame of {frame} samples is not 5-40 ms at {sample_rate} Hz")
        self.sample_rate = sample_rate
        self.frame = frame
        self.delay_samples = frame
        self._state = NoiseSuppression.create(frame, sample_rate)

    def process(self, frame: np.ndarray) -> np.ndarray:
        # The binding copies exactly `frame` samples from whatever buffer it is given: a shorter
        # one would be read past its end, so the length is checked here, not left to it.
        if frame.dtype != np.int16 or frame.shape != (self.frame,):
            raise ProtocolError(
                f"denoiser takes int16 frames of {self.frame} samples, got {frame.dtype} {frame.shape}")
        out = self._state.process(frame.tobytes())
        return np.frombuffer(out, dtype=np.int16).copy()
