"""The project's speech fixtures with their true text, and the text normalisation the word error
rates are computed after (shared by the ASR tests and scripts/bench_asr.py)."""

from __future__ import annotations

import json
import re
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocol.codecs import Resampler, ulaw_decode, ulaw_encode

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RATE = 16000
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class SpeechFixture:
    name: str               # group/file
    group: str              # asr, audio, listening
    vocabulary: str         # digits, commands, open
    text: str               # every word said, in order
    pcm: np.ndarray         # 16 kHz int16 mono

    @property
    def seconds(self) -> float:
        return len(self.pcm) / RATE


def normalize(text: str) -> str:
    """Lower case, no punctuation, numerals spelled digit by digit ("1, 2" -> "one two"; a time
    such as "9:30" becomes "nine three zero" and counts as the error it is against "nine thirty")."""
    text = re.sub(r"\d", lambda m: f" {_DIGITS[int(m.group())]} ", text.lower())
    text = re.sub(r"[^a-z' ]+", " ", text)
    return " ".join(w.strip("'") for w in text.split() if w.strip("'"))


def read_pcm(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (RATE, 1, 2):
            raise ValueError(f"{path}: not 16 kHz 16-bit mono")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def speech_fixtures(groups: tuple[str, ...] = ("asr", "audio", "listening")) -> list[SpeechFixture]:
    """Every 16 kHz speech fixture whose words are known, in a fixed order."""
    out: list[SpeechFixture] = []
    if "asr" in groups:
        truth = json.loads((FIXTURES / "asr" / "truth.json").read_text())
        for name, meta in truth["files"].items():
            text = " ".join(s["text"] for s in meta["segments"])
            out.append(SpeechFixture(f"asr/{name}", "asr", meta["vocabulary"], text,
                                     read_pcm(FIXTURES / "asr" / name)))
    if "audio" in groups:
        meta = json.loads((FIXTURES / "audio" / "speech_16k.json").read_text())
        out.append(SpeechFixture("audio/speech_16k.wav", "audio", "open",
                                 " ".join(s["text"] for s in meta["segments"]),
                                 read_pcm(FIXTURES / "audio" / "speech_16k.wav")))
    if "listening" in groups:
        meta = json.loads((FIXTURES / "listening" / "speech.json").read_text())
        for item in meta["files"]:
            out.append(SpeechFixture(f"listening/{item['file']}", "listening", "open", item["text"],
                                     read_pcm(FIXTURES / "listening" / item["file"])))
    return out


def telephone(pcm: np.ndarray) -> np.ndarray:
    """16 kHz -> 8 kHz -> G.711 µ-law -> 8 kHz -> 16 kHz with the gateway's own resampler and
    codec: what recognition gets of a PCMU call (4.4 ms later)."""
    down, up = Resampler(RATE, 8000), Resampler(8000, RATE)
    return up.process(ulaw_decode(ulaw_encode(down.process(pcm))))
