#!/usr/bin/env python3
"""Make the speech/silence audio fixtures for the VAD tests, with their true speech boundaries.

    .venv/bin/python scripts/gen_fixtures.py [--out tests/fixtures/audio]

Each utterance is spoken by espeak-ng, resampled to 16 kHz by sox and trimmed to its first and
last sample at or above TRIM_LEVEL; the trimmed clips are laid between silences of known length,
so the true boundaries follow from the layout rather than from any VAD. Low-level white noise
(fixed seed) covers the whole file, so "silence" is not digital zero. The 8 kHz file is the 16 kHz
one resampled by sox: its boundaries are the same in milliseconds.

An utterance whose own pauses come near the shortest silence padding would make the ground truth
ambiguous (is that pause a segment boundary or not?), so the script refuses any utterance with an
internal low-energy run longer than MAX_INTERNAL_PAUSE_MS.

Writes speech_16k.wav, speech_8k.wav and, next to each, a .json with the segments.
Needs the Debian packages espeak-ng, sox and libsox-fmt-all.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from fixture_audio import TRIM_LEVEL, lay_out, ms, read_wav, sox, speak, with_noise, write_json, write_wav

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000
VOICE = "en-us"
WORDS_PER_MINUTE = 150
NOISE_RMS = 30.0  # about -61 dBFS
NOISE_SEED = 20240601
ENERGY_FRAME_MS = 10
PAUSE_RMS = 100.0
MAX_INTERNAL_PAUSE_MS = 60

# (silence before the utterance in ms, text); TAIL_MS of silence closes the file.
LAYOUT: list[tuple[int, str]] = [
    (700, "I am calling about my order"),
    (900, "all of our lines are busy now"),
    (600, "we will arrive in an hour"),
]
TAIL_MS = 1000


def longest_pause_ms(pcm: np.ndarray) -> int:
    size = RATE * ENERGY_FRAME_MS // 1000
    frames = pcm[: len(pcm) // size * size].reshape(-1, size).astype(np.float64)
    quiet = np.sqrt((frames ** 2).mean(axis=1)) < PAUSE_RMS
    longest = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        longest = max(longest, run)
    return longest * ENERGY_FRAME_MS


def build(workdir: Path) -> tuple[np.ndarray, list[dict[str, object]]]:
    clips: list[tuple[int, np.ndarray]] = []
    pauses: list[int] = []
    for silence_ms, text in LAYOUT:
        clip = speak(text, workdir, voice=VOICE, wpm=WORDS_PER_MINUTE, rate=RATE)
        pause = longest_pause_ms(clip)
        if pause > MAX_INTERNAL_PAUSE_MS:
            raise SystemExit(f"{text!r} has a {pause} ms internal pause: choose another utterance")
        clips.append((silence_ms, clip))
        pauses.append(pause)
    speech, spans = lay_out(clips, TAIL_MS, RATE)
    segments: list[dict[str, object]] = [
        {"text": text, "start_ms": ms(start, RATE), "end_ms": ms(end, RATE), "longest_internal_pause_ms": pause}
        for (_, text), (start, end), pause in zip(LAYOUT, spans, pauses)
    ]
    return with_noise(speech, NOISE_RMS, NOISE_SEED), segments


def describe(name: str, rate: int, samples: int, segments: list[dict[str, object]]) -> dict[str, object]:
    return {
        "file": name,
        "samplerate": rate,
        "duration_ms": ms(samples, rate),
        "generator": "scripts/gen_fixtures.py",
        "voice": VOICE,
        "words_per_minute": WORDS_PER_MINUTE,
        "trim_level": TRIM_LEVEL,
        "noise_rms": NOISE_RMS,
        "segments": segments,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "audio")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        pcm, segments = build(workdir)
        wav16 = args.out / "speech_16k.wav"
        write_wav(wav16, pcm, RATE)
        wav8 = args.out / "speech_8k.wav"
        sox(str(wav16), "-r", "8000", "-c", "1", "-b", "16", str(wav8))
        pcm8, rate8 = read_wav(wav8)
    for wav, samples, rate in ((wav16, len(pcm), RATE), (wav8, len(pcm8), rate8)):
        meta = describe(wav.name, rate, samples, segments)
        write_json(wav.with_suffix(".json"), meta)
        print(f"{wav}: {samples / rate:.2f} s, {len(segments)} segments")


if __name__ == "__main__":
    main()
