#!/usr/bin/env python3
"""Measure VAD cost per call: silero one inference per window vs batched across calls, WebRTC, TEN.

    .venv/bin/python scripts/bench_vad.py --calls 100 --seconds 10

Every call streams the speech fixture (each call from a different offset) as 16 kHz 20 ms frames
through the real detector path: ``push`` (framing), inference and the event machine. Calls start
at different phases of the 32 ms silero window, as real calls do, so about 5 in 8 of them have a
window due in any one tick. Silero runs on one shared engine, flushed once per 20 ms tick as the
media clock does: "single" caps its batches at one window (one inference per call-window),
"batched" runs all windows due in a tick in one inference.

``frame_us`` is CPU time (this process, one thread: onnxruntime is set to one thread) per 20 ms
frame per call, the best of ``--repeats`` passes; CPU time rather than wall time so that other
work on the machine does not inflate it. ``calls_per_core`` is what one core carries at that
cost (20,000 µs of audio per frame / frame_us), VAD alone. ``infer_us_per_window`` is the part
spent inside onnxruntime, per 32 ms window, over all passes. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.vad import SileroEngine, SileroVad, TenVad, WebRtcVad  # noqa: E402
from protocol.api import VADOption  # noqa: E402

RATE = 16000
FRAME = RATE // 50
FRAME_US = 20_000.0
FIXTURE = ROOT / "tests" / "fixtures" / "audio" / "speech_16k.wav"


def load_audio() -> np.ndarray:
    with wave.open(str(FIXTURE), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def call_frames(audio: np.ndarray, calls: int, frames: int) -> list[np.ndarray]:
    """Per call, `frames` consecutive 20 ms frames as one (frames, FRAME) array."""
    need = frames * FRAME
    looped = np.tile(audio, need // len(audio) + 2)
    out = []
    for call in range(calls):
        offset = (call * 7919 * FRAME) % len(audio)
        out.append(looped[offset:offset + need].reshape(frames, FRAME))
    return out


class TimedEngine(SileroEngine):
    """A SileroEngine that adds up the CPU time spent in inference."""

    def __init__(self, *, max_batch: int | None) -> None:
        super().__init__(max_batch=max_batch)
        self.infer_seconds = 0.0

    def infer(self, batch) -> None:
        start = time.process_time()
        super().infer(batch)
        self.infer_seconds += time.process_time() - start


def stagger(vads, streams) -> None:
    """Start each call at another phase of the 32 ms silero window, as calls that began at
    different moments are: a lead-in of 0-511 samples per call."""
    for call, (vad, stream) in enumerate(zip(vads, streams)):
        lead = (call * 131) % 512
        if lead:
            vad.push(stream[0][:lead].copy(), -lead / 16.0)


def timed_runs(vads, streams, frames: int, repeats: int, tick_done=None) -> float:
    """Best CPU seconds per frame per call over `repeats` passes of all frames (after a warm-up)."""
    warm = min(25, frames // 4)
    best = float("inf")
    now = 0.0
    for tick in range(warm):
        for vad, stream in zip(vads, streams):
            vad.push(stream[tick], now)
        if tick_done:
            tick_done()
        now += 20.0
    for _ in range(repeats):
        start = time.process_time()
        for tick in range(frames):
            for vad, stream in zip(vads, streams):
                vad.push(stream[tick], now)
            if tick_done:
                tick_done()
            now += 20.0
        best = min(best, time.process_time() - start)
    return best / (frames * len(streams))


def bench_silero(streams: list[np.ndarray], frames: int, repeats: int, max_batch: int | None) -> dict[str, float]:
    engine = TimedEngine(max_batch=max_batch)
    vads = [SileroVad(VADOption(), engine, lambda e: None) for _ in streams]
    stagger(vads, streams)
    windows0, inferences0 = engine.windows, engine.inferences
    engine.infer_seconds = 0.0
    per_frame = timed_runs(vads, streams, frames, repeats, engine.flush) * 1e6
    windows = engine.windows - windows0
    inferences = engine.inferences - inferences0
    return {
        "frame_us": round(per_frame, 2),
        "calls_per_core": int(FRAME_US / per_frame),
        "infer_us_per_window": round(engine.infer_seconds * 1e6 / windows, 2),
        "windows_per_inference": round(windows / inferences, 1),
    }


def bench_inline(streams: list[np.ndarray], frames: int, repeats: int, make) -> dict[str, float]:
    vads = [make() for _ in streams]
    per_frame = timed_runs(vads, streams, frames, repeats) * 1e6
    return {"frame_us": round(per_frame, 2), "calls_per_core": int(FRAME_US / per_frame)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100, help="concurrent calls")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of audio per call")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per engine; the best counts")
    parser.add_argument("--skip-ten", action="store_true", help="leave TEN out even when installed")
    args = parser.parse_args()
    if args.calls < 1 or args.seconds < 0.5 or args.repeats < 1:
        parser.error("need at least one call, half a second of audio and one repeat")
    frames = int(args.seconds * 50)
    streams = call_frames(load_audio(), args.calls, frames)

    results: dict[str, object] = {
        "calls": args.calls,
        "seconds": args.seconds,
        "python": platform.python_version(),
    }
    repeats = args.repeats
    results["silero_single"] = bench_silero(streams, frames, repeats, max_batch=1)
    results["silero_batched"] = bench_silero(streams, frames, repeats, max_batch=None)
    results["webrtc"] = bench_inline(
        streams, frames, repeats, lambda: WebRtcVad(VADOption(type="webrtc"), lambda e: None)
    )
    if not args.skip_ten:
        try:
            results["ten"] = bench_inline(
                streams, frames, repeats, lambda: TenVad(VADOption(type="ten"), lambda e: None)
            )
        except Exception as exc:  # noqa: BLE001 - report why TEN could not be measured, measure the rest
            results["ten"] = {"error": str(exc)}
    single = results["silero_single"]["frame_us"]
    batched = results["silero_batched"]["frame_us"]
    results["batching_speedup"] = round(single / batched, 2)

    for name in ("silero_single", "silero_batched", "webrtc", "ten"):
        if name in results:
            print(f"{name:15s} {results[name]}")
    print(f"batched silero is {results['batching_speedup']}x cheaper per call than one inference per window")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
