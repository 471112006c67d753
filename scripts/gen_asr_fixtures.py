#!/usr/bin/env python3
"""Make the speech-recognition fixtures: spoken digits, commands and sentences with their truth.

    .venv/bin/python scripts/gen_asr_fixtures.py [--out tests/fixtures/asr] [--voice V] [--speed WPM]
    .venv/bin/python scripts/gen_asr_fixtures.py --tuning DIR


Each utterance is spoken by espeak-ng, resampled to 16 kHz mono 16-bit by sox (no dither, so the
output repeats exactly) and trimmed to its first and last sample at or above TRIM_LEVEL. The clips
are laid between silences of known length, so the true start and end of every utterance follow
from the layout, not from any detector. Low-level white noise (fixed seed) covers each file, so
the silence is not digital zero.

The voice and rate are the ones pocketsphinx's en-us model recognised best among those tried
(en-us, en-gb and the en-us variants m3, f1-f5, klatt, klatt2, klatt4 at 120-170 words per
minute, decoded with the default language model and with a digits grammar): en-us+f5 at 160 wpm,
amplitude 80 (the default amplitude clips after resampling).

Writes one WAV per entry of FILES and truth.json describing all of them: for each file its
vocabulary ("digits", "commands" or "open") and its segments (text, start_ms, end_ms).

With --tuning it writes instead, in the same format, the set the pocketsphinx provider's decoder
settings were chosen on, kept apart from the fixtures so the tests do not grade the tuning: 24
random digit strings and 12 call-centre sentences, spoken in turn by three voices. It is not
committed; it regenerates identically.
Needs the Debian packages espeak-ng, sox and libsox-fmt-all.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import numpy as np

from fixture_audio import TRIM_LEVEL, lay_out, ms, speak, with_noise, write_json, write_wav

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000
VOICE = "en-us+f5"
WORDS_PER_MINUTE = 160
AMPLITUDE = 80
NOISE_RMS = 30.0        # about -61 dBFS
NOISE_SEED = 20240715
LEAD_MS = 400
TAIL_MS = 800           # long enough for an endpointer to close the last utterance by itself

# name -> (vocabulary, [(silence before the utterance in ms, text), ...])
FILES: dict[str, tuple[str, list[tuple[int, str]]]] = {
    "digits_a.wav": ("digits", [(LEAD_MS, "one two three four five")]),
    "digits_b.wav": ("digits", [(LEAD_MS, "six seven eight nine zero")]),
    "digits_c.wav": ("digits", [(LEAD_MS, "four one five two six")]),
    "two_utterances.wav": ("digits", [(LEAD_MS, "nine eight seven"), (1000, "three one four two")]),
    "commands.wav": ("commands", [(LEAD_MS, "yes"), (800, "no"), (800, "operator"), (800, "cancel")]),
    "sentence_a.wav": ("open", [(LEAD_MS, "please call me back tomorrow morning")]),
    "sentence_b.wav": ("open", [(LEAD_MS, "the weather is nice today")]),
}


def build(layout: list[tuple[int, str]], workdir: Path, voice: str, speed: int,
          seed: int) -> tuple[np.ndarray, list[dict[str, object]]]:
    clips = [(silence_ms, speak(text, workdir, voice=voice, wpm=speed, rate=RATE, amplitude=AMPLITUDE))
             for silence_ms, text in layout]
    speech, spans = lay_out(clips, TAIL_MS, RATE)
    segments: list[dict[str, object]] = [{"text": text, "start_ms": ms(start, RATE), "end_ms": ms(end, RATE)}
                                         for (_, text), (start, end) in zip(layout, spans)]
    return with_noise(speech, NOISE_RMS, seed), segments


TUNING_VOICES = ("en-us+f5", "en-us+f2", "en-us+klatt2")
TUNING_DIGIT_SEED = 7
TUNING_SENTENCES = (
    "i would like to pay my bill", "can you tell me the opening hours", "my internet is not working",
    "i need to change my address", "what is the balance of my account", "please send me a new card",
    "i lost my phone yesterday", "can i speak to someone in sales", "the order arrived broken",
    "thank you very much for your help", "i want to cancel my subscription", "how much does it cost",
)


def tuning_files() -> dict[str, tuple[str, str, list[tuple[int, str]], int]]:
    """name -> (vocabulary, voice, layout, noise seed)"""
    digits = "zero one two three four five six seven eight nine".split()
    rng = random.Random(TUNING_DIGIT_SEED)
    files: dict[str, tuple[str, str, list[tuple[int, str]], int]] = {}
    for i in range(24):
        text = " ".join(rng.choice(digits) for _ in range(rng.randint(3, 6)))
        files[f"d{i}.wav"] = ("digits", TUNING_VOICES[i % 3], [(LEAD_MS, text)], 1000 + i)
    for i, text in enumerate(TUNING_SENTENCES):
        files[f"s{i}.wav"] = ("open", TUNING_VOICES[i % 3], [(LEAD_MS, text)], 2000 + i)
    return files


def write_set(out: Path, files: dict[str, tuple[str, str, list[tuple[int, str]], int]], speed: int,
              voice: str | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    described: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (vocabulary, file_voice, layout, seed) in files.items():
            pcm, segments = build(layout, Path(tmp), file_voice, speed, seed)
            write_wav(out / name, pcm, RATE)
            described[name] = {"vocabulary": vocabulary, "voice": file_voice,
                               "duration_ms": ms(len(pcm), RATE), "segments": segments}
            print(f"{out / name}: {len(pcm) / RATE:.2f} s, {len(segments)} utterances")
    truth = {
        "generator": "scripts/gen_asr_fixtures.py",
        "samplerate": RATE,
        "voice": voice,
        "words_per_minute": speed,
        "amplitude": AMPLITUDE,
        "trim_level": TRIM_LEVEL,
        "noise_rms": NOISE_RMS,
        "files": described,
    }
    write_json(out / "truth.json", truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "asr")
    parser.add_argument("--voice", default=VOICE)
    parser.add_argument("--speed", type=int, default=WORDS_PER_MINUTE)
    parser.add_argument("--tuning", type=Path, metavar="DIR", help="write the tuning set to DIR instead")
    args = parser.parse_args()
    if args.tuning is not None:
        write_set(args.tuning, tuning_files(), WORDS_PER_MINUTE, None)
        return
    files = {name: (vocabulary, args.voice, layout, NOISE_SEED + index)
             for index, (name, (vocabulary, layout)) in enumerate(FILES.items())}
    write_set(args.out, files, args.speed, args.voice)


if __name__ == "__main__":
    main()
