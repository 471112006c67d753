#!/usr/bin/env python3
"""Soak: N concurrent calls for S seconds, each with VAD, a recording and TTS, against the gateway
as a user runs it (`active-call`, its own process); then whether it lets go of everything.

Each call streams recorded speech in real time (VAD turns it into speaking/silence events), records
both directions to a WAV under recorder_root, and keeps a `tts` playing for the whole run. Before
the measured run a warm-up round of the same calls takes the process to its high-water mark
(imports, engine threads, executor threads, allocator arenas). The gateway's figures: RSS, open
fds and threads (psutil), asyncio tasks (`GET /health`) are read

- at start: after the warm-up, no calls;
- at end: the N calls live, just before they hang up;
- after idle: every call gone and `--idle` seconds passed, once fds and tasks hold still.

    .venv/bin/python scripts/soak.py --calls 20 --seconds 60 --idle 5
    .venv/bin/python scripts/soak.py --calls 4 --seconds 4 --vad webrtc

Last line of output: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil

from gateway_process import base_config, start_gateway, stop

ROOT = Path(__file__).resolve().parent.parent
SPEECH_WAV = ROOT / "tests" / "fixtures" / "audio" / "speech_16k.wav"
TEXT = "Thank you for calling. Your call is important to us. Please stay on the line."
MiB = 1 << 20


def speech_frames() -> list[bytes]:
    with wave.open(str(SPEECH_WAV)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    pcm = np.concatenate([pcm, np.zeros(16000, np.int16)])       # a second of silence between turns
    return [pcm[i:i + 320].tobytes() for i in range(0, len(pcm) - 319, 320)]


class Call:
    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.events: dict[str, int] = {}
        self.audio_frames = 0
        self.hangup: dict[str, Any] | None = None
        self.answered = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None
        self.plays = 0

    async def open(self, http: aiohttp.ClientSession, url: str, vad: str) -> None:
        self.ws = await http.ws_connect(f"{url}/call?id={self.sid}&ping=0")
        self.reader = asyncio.get_running_loop().create_task(self._read())
        await self.ws.send_json({"command": "invite", "option": {
            "codec": "pcm", "vad": {"type": vad}, "recorder": {"recorderFile": f"{self.sid}.wav"}}})
        await asyncio.wait_for(self.answered.wait(), 10)
        await self._speak()

    async def _speak(self) -> None:
        self.plays += 1
        await self.ws.send_json({"command": "tts", "text": TEXT, "playId": f"p{self.plays}"})

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.audio_frames += 1
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            name = event["event"]
            self.events[name] = self.events.get(name, 0) + 1
            if name == "answer":
                self.answered.set()
            elif name == "trackEnd" and event.get("playId") == f"p{self.plays}" and self.hangup is None:
                await self._speak()                   # TTS for the whole run
            elif name == "hangup":
                self.hangup = event

    async def end(self) -> None:
        await self.ws.send_json({"command": "hangup"})
        await asyncio.wait_for(self.reader, 15)
        await self.ws.close()


async def run_calls(http: aiohttp.ClientSession, url: str, prefix: str, n: int, seconds: float, vad: str,
                    frames: list[bytes], at_end=None) -> list[Call]:
    calls = [Call(f"{prefix}-{i}") for i in range(n)]
    await asyncio.gather(*(c.open(http, url, vad) for c in calls))
    begin = time.monotonic()
    tick = 0
    while time.monotonic() - begin < seconds:       # every call's caller speaks, in real time
        frame = frames[tick % len(frames)]
        for c in calls:
            if not c.ws.closed:
                await c.ws.send_bytes(frame)
        tick += 1
        await asyncio.sleep(max(0.0, begin + tick * 0.02 - time.monotonic()))
    if at_end is not None:
        await at_end()
    await asyncio.gather(*(c.end() for c in calls))
    return calls


async def figures(http: aiohttp.ClientSession, url: str, proc: psutil.Process) -> dict[str, Any]:
    async with http.get(f"{url}/health") as resp:
        health = await resp.json()
    return {"rss_mib": round(proc.memory_info().rss / MiB, 2), "fds": proc.num_fds(),
            "threads": proc.num_threads(), "tasks": health["tasks"], "calls": health["calls"]}


async def settled(http: aiohttp.ClientSession, url: str, proc: psutil.Process, timeout: float = 20.0) -> dict[str, Any]:
    """The figures once no call is left and fds, tasks and threads hold still over two readings."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        now = await figures(http, url, proc)
        key = (now["fds"], now["tasks"], now["threads"])
        if now["calls"] == 0 and key == last:
            return now
        if time.monotonic() > deadline:
            return {**now, "unsettled": True}
        last = key
        await asyncio.sleep(0.25)


async def quiet(proc: psutil.Process, timeout: float = 60.0) -> None:
    """Until the process's RSS holds within 1 MiB over a second: what it loads at start in the
    background (the Whisper model, when preloaded) is in before anything is measured."""
    deadline = time.monotonic() + timeout
    last = proc.memory_info().rss
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = proc.memory_info().rss
        if abs(now - last) < MiB:
            return
        last = now


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    frames = speech_frames()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        gateway = start_gateway(tmp, base_config(tmp, args.calls + 10) + f'recorder_root = "{tmp}/recorders"\n')
        proc, url, log = gateway.proc, gateway.url, gateway.log
        gw = psutil.Process(proc.pid)
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                await quiet(gw)
                await run_calls(http, url, "warm", args.calls, args.warmup, args.vad, frames)
                start = await settled(http, url, gw)
                end: dict[str, Any] = {}

                async def at_end() -> None:
                    end.update(await figures(http, url, gw))

                began = time.monotonic()
                calls = await run_calls(http, url, "soak", args.calls, args.seconds, args.vad, frames, at_end)
                elapsed = time.monotonic() - began
                await asyncio.sleep(args.idle)
                idle = await settled(http, url, gw)
            recordings = sorted((tmp / "recorders").glob("soak-*.wav"))
            recorded_s = []
            for path in recordings:
                with wave.open(str(path)) as w:
                    recorded_s.append(w.getnframes() / w.getframerate())
        finally:
            code = stop(proc)
        problems = [line for line in log.read_text().splitlines()
                    if '"level": "error"' in line or '"level": "critical"' in line or "Traceback" in line]
    per_call = [c.events for c in calls]
    return {
        "calls": args.calls, "seconds": args.seconds, "idle": args.idle, "vad": args.vad,
        "elapsed_s": round(elapsed, 2),
        "start": start, "end": end, "after_idle": idle,
        "delta": {k: round(idle[k] - start[k], 2) for k in ("rss_mib", "fds", "threads", "tasks")},
        "hangups_ok": sum(1 for c in calls if c.hangup and c.hangup["reason"] == "hangup_command"),
        "speaking_events": sum(e.get("speaking", 0) for e in per_call),
        "silence_events": sum(e.get("silence", 0) for e in per_call),
        "tts_track_ends": sum(e.get("trackEnd", 0) for e in per_call),
        "audio_frames_out": sum(c.audio_frames for c in calls),
        "error_events": sum(e.get("error", 0) for e in per_call),
        "recordings": len(recordings), "recorded_s_min": round(min(recorded_s, default=0.0), 2),
        "gateway_exit": code, "log_problems": problems[:5],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20, help="concurrent calls")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the measured run")
    p.add_argument("--idle", type=float, default=5.0, help="idle time after the calls end before the last reading")
    p.add_argument("--warmup", type=float, default=3.0, help="length of the warm-up round (same calls)")
    p.add_argument("--vad", default="silero", choices=["silero", "webrtc"], help="the VAD of every call")
    args = p.parse_args()
    result = asyncio.run(soak(args))
    for key, value in result.items():
        print(f"{key:18} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
