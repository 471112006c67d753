"""CPU per 20 ms frame of the inline listeners every call runs on its inbound audio: the in-band
DTMF detector and the speexdsp denoiser, on the listening fixtures (speech, tones, both, noise,
silence). The baseline, measured in the same run, is one numpy real FFT of the same frame: the
figures are also printed as multiples of it, which stay comparable across machines.

    .venv/bin/python scripts/bench_listening.py --repeats 5 --seconds 4

The last line is one JSON object of the figures (microseconds of process CPU time per frame, best
of the repeats).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol.denoise import Denoiser  # noqa: E402
from protocol.dtmf_detect import DtmfDetector  # noqa: E402

RATE = 16000
FRAME = 320
FIXTURES = ROOT / "tests" / "fixtures" / "listening"


def read(name: str, seconds: float) -> np.ndarray:
    with wave.open(str(FIXTURES / name)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    need = int(seconds * RATE)
    return np.resize(pcm, need) if len(pcm) < need else pcm[:need]


def frames_of(pcm: np.ndarray) -> list[np.ndarray]:
    return [pcm[i:i + FRAME] for i in range(0, len(pcm) - FRAME + 1, FRAME)]


def best_us(run, frames: list[np.ndarray], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        step = run()
        began = time.process_time()
        for i, frame in enumerate(frames):
            step(frame, i)
        best = min(best, (time.process_time() - began) / len(frames))
    return best * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="runs per figure; the best is kept")
    p.add_argument("--seconds", type=float, default=4.0, help="audio per run")
    args = p.parse_args()
    inputs = {
        "speech": read("speech_us_f.wav", args.seconds),
        "dtmf": read("dtmf_clean_16k.wav", args.seconds),
        "speech+dtmf": read("dtmf_speech_16k.wav", args.seconds),
        "noise": read("noisy_white_10db_16k.wav", args.seconds),
        "silence": np.zeros(int(args.seconds * RATE), dtype=np.int16),
    }
    figures: dict[str, float] = {}
    baseline = best_us(lambda: (lambda frame, i: np.fft.rfft(frame)), frames_of(inputs["speech"]), args.repeats)
    figures["fft_baseline_us"] = round(baseline, 2)
    for label, pcm in inputs.items():
        frames = frames_of(pcm)

        def dtmf():
            det = DtmfDetector()
            return lambda frame, i: det.feed(frame, i * 20)

        figures[f"dtmf_{label}_us"] = round(best_us(dtmf, frames, args.repeats), 2)
    for label in ("speech", "noise"):
        def denoise():
            d = Denoiser()
            return lambda frame, i: d.process(frame)

        figures[f"denoise_{label}_us"] = round(best_us(denoise, frames_of(inputs[label]), args.repeats), 2)
    for key in [k for k in figures if k != "fft_baseline_us"]:
        figures[key.replace("_us", "_x_fft")] = round(figures[key] / baseline, 1)
    for key, value in figures.items():
        print(f"{key:28} {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
