#!/usr/bin/env python3
"""Embedded recognisers side by side: word error rate, latency and CPU per stream of pocketsphinx
(its language model: open vocabulary) and Whisper tiny.en, on the project's speech fixtures.

Each stream plays the fixtures one after another, paced like a call (20 ms frames), through the
provider a call uses, on a real EngineHost:
- at 16 kHz as the fixtures are;
- at 8 kHz telephone audio: each fixture is taken down to 8 kHz, through G.711 µ-law and back up
  to 16 kHz with the gateway's own resampler and codec, as a PCMU call's audio reaches recognition.

Figures, per engine and rate:
- WER: word error rate of all finals of a stream, in order, against all the fixtures' true words
  (tests/support/speech_truth.py normalises both: lower case, no punctuation, numerals digit by
  digit); the worst stream's;
- latency: from the end of an utterance (the endpointer's speech end, ms of the stream) being sent
  to its final result arriving: p50 / p90 / max over all finals;
- CPU: process CPU seconds per second of audio per stream, in % of one core (the engines' threads
  included, the pacing loop too).

Usage: .venv/bin/python scripts/bench_asr.py [--engines pocketsphinx,whisper] [--rates 16000,8000]
       [--fixtures asr,audio,listening] [--streams 1] [--duration 0] [--pace 1.0]
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path

import jiwer
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.engines import EngineHost  # noqa: E402
from actors.services import AsrNotice, AsrResult  # noqa: E402
from protocol.api import TranscriptionOption  # noqa: E402
from tests.support.speech_truth import RATE, SpeechFixture, normalize, speech_fixtures, telephone  # noqa: E402
from transports.providers.pocketsphinx import PocketsphinxProvider  # noqa: E402
from transports.providers.whisper import WhisperProvider, WhisperSettings  # noqa: E402

FRAME = 320     # 20 ms at 16 kHz
GAP = np.zeros(3 * RATE // 2, dtype=np.int16)   # 1.5 s between fixtures: each utterance ends before the next


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one_stream(provider, fixtures: list[SpeechFixture], rate: int, pace: float,
                     option: TranscriptionOption) -> dict:
    pieces: list[tuple[int, int]] = []      # (start, end) sample of each fixture in the stream
    audio: list[np.ndarray] = []
    at = 0
    for fx in fixtures:
        pcm = fx.pcm if rate == RATE else telephone(fx.pcm)
        audio += [pcm, GAP]
        pieces.append((at, at + len(pcm)))
        at += len(pcm) + len(GAP)
    stream = np.concatenate(audio)
    session = await provider.open(option)
    sent_at: dict[int, float] = {}          # frame index -> perf_counter when sent
    finals: list[tuple[AsrResult, float]] = []
    notices: list[AsrNotice] = []

    async def read() -> None:
        async for r in session.results():
            if isinstance(r, AsrNotice):
                notices.append(r)
            elif r.final:
                finals.append((r, time.perf_counter()))

    reader = asyncio.create_task(read())
    start = time.perf_counter()
    for i in range(0, len(stream) // FRAME):
        sent_at[i] = time.perf_counter()
        await session.send(stream[i * FRAME:(i + 1) * FRAME])
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 / pace - time.perf_counter()))
    await session.close()
    await reader
    hyps = []
    for begin, end in pieces:
        words = [r.text for r, _ in finals if r.end_ms is not None and begin <= r.end_ms * 16 < end + len(GAP)]
        hyps.append(normalize(" ".join(words)))
    latencies = []
    for r, arrived in finals:
        frame = min(max(0, (r.end_ms or 0) * 16 // FRAME), len(sent_at) - 1)
        latencies.append(arrived - sent_at[frame])
    return {"hyps": hyps, "latencies": latencies, "notices": len(notices),
            "audio_seconds": len(stream) / RATE}


async def run(engine: str, rate: int, args: argparse.Namespace, fixtures: list[SpeechFixture]) -> dict:
    host = EngineHost()
    try:
        if engine == "whisper":
            provider = WhisperProvider(host, WhisperSettings(cpu_threads=args.cpu_threads,
                                                             num_workers=args.num_workers,
                                                             max_pending=args.max_pending))
        else:
            provider = PocketsphinxProvider(host)
        # Load the model (and build a first decoder) before anything is timed.
        warm = await provider.open(TranscriptionOption(language="en"))
        for i in range(0, RATE * 2, FRAME):
            await warm.send(fixtures[0].pcm[i:i + FRAME])
        await warm.close()
        async for _ in warm.results():
            pass
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        results = await asyncio.gather(*(one_stream(provider, fixtures, rate, args.pace, TranscriptionOption(language="en"))
                                         for _ in range(args.streams)))
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    finally:
        await host.stop()
    refs = [normalize(fx.text) for fx in fixtures]
    # Over the whole stream: an utterance that an endpointer held open across two fixtures is
    # judged by its words, not by which fixture its end fell in.
    wers = [jiwer.wer(" ".join(refs), " ".join(h for h in r["hyps"] if h)) for r in results]
    latencies = sorted(x for r in results for x in r["latencies"])
    audio = sum(r["audio_seconds"] for r in results)

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000) if latencies else -1

    row = {"engine": engine, "rate": rate, "streams": args.streams, "words": sum(len(r.split()) for r in refs),
           "wer": round(max(wers), 3), "latency_p50_ms": pct(0.5), "latency_p90_ms": pct(0.9),
           "latency_max_ms": pct(1.0), "finals": len(latencies),
           "cpu_per_stream_pct": round(100 * cpu / audio, 1), "wall_seconds": round(wall, 1),
           "refused": sum(r["notices"] for r in results)}
    if args.verbose:
        for fx, hyp in zip(fixtures, results[0]["hyps"]):
            print(f"  {engine} {rate}: {fx.name}: {hyp!r}", file=sys.stderr)
    return row


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="pocketsphinx,whisper")
    parser.add_argument("--rates", default="16000,8000", help="16000 and/or 8000 (telephone µ-law)")
    parser.add_argument("--fixtures", default="asr,audio,listening", help="groups of tests/fixtures")
    parser.add_argument("--streams", type=int, default=1, help="streams at once, each playing every fixture")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="seconds of fixtures per stream at most (0: all of them)")
    parser.add_argument("--pace", type=float, default=1.0, help="1.0 = real time")
    parser.add_argument("--cpu-threads", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--max-pending", type=int, default=3)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    fixtures = speech_fixtures(tuple(args.fixtures.split(",")))
    if args.duration > 0:
        kept, total = [], 0.0
        for fx in fixtures:
            if total + fx.seconds > args.duration and kept:
                break
            kept.append(fx)
            total += fx.seconds
        fixtures = kept
    rows = []
    for engine in args.engines.split(","):
        for rate in (int(r) for r in args.rates.split(",")):
            row = await run(engine, rate, args, fixtures)
            rows.append(row)
            print(f"{engine:12s} {rate:5d} Hz  WER {row['wer']:.3f} ({row['words']} words)  "
                  f"latency p50 {row['latency_p50_ms']} ms p90 {row['latency_p90_ms']} ms "
                  f"max {row['latency_max_ms']} ms  CPU {row['cpu_per_stream_pct']}% of a core per stream  "
                  f"refused {row['refused']}", flush=True)
    print(json.dumps({"bench": "asr", "fixtures": [fx.name for fx in fixtures], "cores": os.cpu_count(),
                      "pace": args.pace, "rows": rows}))


if __name__ == "__main__":
    asyncio.run(main())
