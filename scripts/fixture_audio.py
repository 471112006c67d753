"""Audio helpers shared by the fixture generators: 16-bit mono WAV files, sox, espeak-ng speech,
clips laid between silences of known length, and seeded background noise.

The generators run as `python scripts/gen_*.py`, which puts this directory on sys.path.
"""

from __future__ import annotations

import json
import subprocess
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TRIM_LEVEL = 328  # 1 % of full scale: below it the tail of a fade is inaudible under the noise


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise SystemExit(f"{path}: expected mono 16-bit PCM")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16), w.getframerate()


def write_wav(path: Path, pcm: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def ms(samples: int, rate: int) -> float:
    return round(samples * 1000 / rate, 3)


def sox(*args: str) -> None:
    # -R and -D (no dither) make sox's output repeat exactly from run to run.
    subprocess.run(["sox", "-R", "-D", *args], check=True)


def speak(text: str, workdir: Path, *, voice: str, wpm: int, rate: int, amplitude: int | None = None,
          trim_level: int = TRIM_LEVEL) -> np.ndarray:
    """espeak-ng speech resampled by sox to `rate`, mono 16-bit, cut to its first and last sample at
    or above `trim_level`. `amplitude` None leaves espeak-ng at its default."""
    raw = workdir / "raw.wav"
    resampled = workdir / "resampled.wav"
    loudness = [] if amplitude is None else ["-a", str(amplitude)]
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), *loudness, "-w", str(raw), text], check=True)
    sox(str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(resampled))
    pcm, got = read_wav(resampled)
    if got != rate:
        raise SystemExit(f"sox wrote {got} Hz instead of {rate} Hz")
    loud = np.nonzero(np.abs(pcm.astype(np.int32)) >= trim_level)[0]
    if not len(loud):
        raise SystemExit(f"espeak-ng produced no audible sound for {text!r}")
    return pcm[loud[0]:loud[-1] + 1]


def lay_out(clips: Sequence[tuple[int, np.ndarray]], tail_ms: int,
            rate: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Each clip after its silence (ms), then tail_ms of silence: the samples and every clip's
    (start, end) sample, which are the truth the fixtures are graded against."""
    parts: list[np.ndarray] = []
    spans: list[tuple[int, int]] = []
    position = 0
    for silence_ms, clip in clips:
        gap = np.zeros(rate * silence_ms // 1000, dtype=np.int16)
        parts += [gap, clip]
        start = position + len(gap)
        position = start + len(clip)
        spans.append((start, position))
    parts.append(np.zeros(rate * tail_ms // 1000, dtype=np.int16))
    return np.concatenate(parts), spans


def with_noise(pcm: np.ndarray, rms: float, seed: int) -> np.ndarray:
    """pcm plus white noise of the given RMS, so that silence is not digital zero."""
    noise = np.random.default_rng(seed).normal(0.0, rms, len(pcm))
    return np.clip(np.rint(pcm.astype(np.float64) + noise), -32768, 32767).astype(np.int16)
