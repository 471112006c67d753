"""Test signals and measurements on real audio."""

from __future__ import annotations

import numpy as np


def tone(freq: float, seconds: float, rate: int, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.rint(np.sin(2 * np.pi * freq * t) * amplitude).astype(np.int16)


def dominant_frequency(pcm: np.ndarray, rate: int) -> float:
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    spectrum = np.abs(np.fft.rfft(x))
    spectrum[0] = 0
    return float(np.argmax(spectrum) * rate / len(pcm))


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


def frames(pcm: np.ndarray, size: int) -> list[np.ndarray]:
    return [pcm[i:i + size] for i in range(0, len(pcm) - size + 1, size)]
