#!/usr/bin/env python3
"""SIP calls under load through the real gateway, against the RTP floor measured in the same run.

SIPp calls the gateway at ``--rate`` calls/s until ``--calls`` are up at once; every call offers
PCMU and streams speech (tests/fixtures/audio/speech_8k.wav, looped) while the gateway sends its
own packets back, so RTP flows both ways. The gateway (its own process, `active-call`, uvloop)
announces each call by webhook to this script, whose WebSocket application accepts it with
silero VAD and a two-channel recorder. In the window where all calls are up:

- the gateway process's CPU (% of a core) and RSS growth per call (psutil, its own figures: SIPp
  and this script run on the same cores and are not counted);
- INVITE -> 200 OK latency p50/p99 as SIPp measured it (its response-time trace), which includes
  the webhook and the application's `accept`;
- fidelity: VAD `speaking` events per call and minute (the speech has 3 utterances per 8 s loop),
  calls that completed, recordings written.

Then the floor: a bare UDP echo on uvloop with the same number of sessions and the same packet
rate (scripts/bench_rtp_socket.py's echo and load generator), in the same run.

    .venv/bin/python scripts/bench_sip.py --calls 50 --rate 20 --seconds 10

Last line of output: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import shutil
import socket
import struct
import sys
import tempfile
import time
import wave
from pathlib import Path

import aiohttp
import numpy as np
import psutil
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway_process import base_config, start_gateway, stop  # noqa: E402
from protocol.codecs import ulaw_encode  # noqa: E402

SPEECH = ROOT / "tests" / "fixtures" / "audio" / "speech_8k.wav"
SCENARIO = ROOT / "scripts" / "sipp" / "uac_load.xml"


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_ulaw_wav(source: Path, target: Path) -> None:
    """The speech as an 8 kHz mu-law WAV (format 7), which SIPp's rtp_stream plays."""
    with wave.open(str(source)) as w:
        assert w.getframerate() == 8000 and w.getnchannels() == 1
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    data = ulaw_encode(pcm)
    fmt = struct.pack("<HHIIHH", 7, 1, 8000, 8000, 1, 8)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    target.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


# -- the application ---------------------------------------------------------------------------------


class App:
    """The webhook and one WebSocket per incoming call: accept with VAD and a recorder, count events."""

    def __init__(self, vad: str) -> None:
        self.vad = vad
        self.http_url = ""
        self.port = 0
        self.webhooks = 0
        self.answered = 0
        self.speaking: dict[str, int] = {}
        self.hangups: dict[str, int] = {}
        self.errors: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/webhook", self._webhook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the bound ephemeral port
        self._session = aiohttp.ClientSession()
        return runner

    async def _webhook(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.webhooks += 1
        task = asyncio.create_task(self._call(body["dialogId"]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.Response(text="ok")

    async def _call(self, dialog_id: str) -> None:
        assert self._session is not None
        try:
            async with self._session.ws_connect(f"{self.http_url}/call/sip?id={dialog_id}&dump=false&ping=0") as ws:
                await ws.send_json({"command": "accept", "option": {
                    "vad": {"type": self.vad}, "recorder": {"recorderFile": f"{dialog_id}.wav"}}})
                self.speaking[dialog_id] = 0
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    event = json.loads(msg.data)
                    kind = event.get("event")
                    if kind == "answer":
                        self.answered += 1
                    elif kind == "speaking":
                        self.speaking[dialog_id] += 1
                    elif kind == "hangup":
                        reason = event.get("reason", "")
                        self.hangups[reason] = self.hangups.get(reason, 0) + 1
                    elif kind == "error":
                        self.errors.append(event.get("error", ""))
        except aiohttp.ClientError as exc:
            self.errors.append(repr(exc))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


# -- the gateway process -------------------------------------------------------------------------------


def bench_config(tmp: Path, calls: int, webhook: str, rtp_start: int) -> str:
    return base_config(tmp, calls + 10) + "\n".join([
        f"rtp_start_port = {rtp_start}", f"rtp_end_port = {rtp_start + 4 * calls + 200}",
        f'recorder_root = "{tmp}/recordings"', "accept_timeout = 30.0",
        "[handler]", f'url = "{webhook}"', "",
    ])


def percentile(values: list[float], p: float) -> float | None:
    return round(float(np.percentile(values, p)), 1) if values else None


def response_times(tmp: Path) -> list[float]:
    """SIPp's -trace_rtt file: one line per measured answer, 'date_ms;response_time_ms;rtd_no'."""
    times = []
    for path in tmp.glob("*_rtt.csv"):
        for line in path.read_text().splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 2:
                try:
                    times.append(float(parts[1]))
                except ValueError:
                    continue
    return times


async def run_gateway(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    app = App(args.vad)
    runner = await app.start()
    gateway = start_gateway(tmp, bench_config(tmp, args.calls, f"http://127.0.0.1:{app.port}/webhook", args.rtp_start))
    proc, sip_port = gateway.proc, gateway.sip_port
    app.http_url = gateway.url
    ps = psutil.Process(proc.pid)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.sleep(1.0)                 # the gateway settles (engines warm on first use)
        rss_idle = ps.memory_info().rss
        ramp = args.calls / args.rate
        hold = ramp + args.warmup + args.seconds + 3.0
        sipp_args = [shutil.which("sipp") or "sipp", f"127.0.0.1:{sip_port}", "-sf", str(SCENARIO), "-s", "bench",
                     "-i", "127.0.0.1", "-p", str(free_port()), "-mi", "127.0.0.1", "-mp", str(args.media_port),
                     "-r", str(args.rate), "-l", str(args.calls), "-m", str(args.calls), "-d", str(int(hold * 1000)),
                     "-trace_rtt", "-rtt_freq", "1", "-trace_err", "-nostdin", "-timeout", f"{int(hold + 60)}s"]
        sipp = await asyncio.create_subprocess_exec(*sipp_args, cwd=tmp, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        started = time.monotonic()
        deadline = started + ramp + 30
        while app.answered < args.calls and time.monotonic() < deadline and sipp.returncode is None:
            await asyncio.sleep(0.1)
        up_after = time.monotonic() - started
        await asyncio.sleep(args.warmup)
        cpu0, t0 = ps.cpu_times(), time.monotonic()
        speaking0 = sum(app.speaking.values())
        await asyncio.sleep(args.seconds)
        cpu1, t1 = ps.cpu_times(), time.monotonic()
        speaking1 = sum(app.speaking.values())
        rss_busy = ps.memory_info().rss
        calls_up = app.answered - sum(app.hangups.values())
        try:
            _, err = await asyncio.wait_for(sipp.communicate(), hold + 60)
        except TimeoutError:
            sipp.kill()
            _, err = await sipp.communicate()
        for _ in range(100):                       # the application's connections close after hangup
            if sum(app.hangups.values()) >= app.answered:
                break
            await asyncio.sleep(0.1)
    finally:
        await loop.run_in_executor(None, stop, proc)
        await app.close()
        await runner.cleanup()
    window = t1 - t0
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    latencies = response_times(tmp)
    recordings = list((tmp / "recordings").glob("*.wav"))
    return {
        "calls": args.calls,
        "rate": args.rate,
        "all_up_after_s": round(up_after, 2),
        "calls_up_in_window": calls_up,
        "cpu_pct_total": round(100 * cpu / window, 2),
        "cpu_pct_per_call": round(100 * cpu / window / max(1, calls_up), 4),
        "rss_mb_idle": round(rss_idle / 2**20, 1),
        "rss_mb_busy": round(rss_busy / 2**20, 1),
        "rss_mb_per_call": round((rss_busy - rss_idle) / 2**20 / max(1, calls_up), 3),
        "invite_200_ms_p50": percentile(latencies, 50),
        "invite_200_ms_p99": percentile(latencies, 99),
        "answers_timed": len(latencies),
        "speaking_per_call_minute": round((speaking1 - speaking0) / max(1, calls_up) / (window / 60), 2),
        "webhooks": app.webhooks,
        "answered": app.answered,
        "hangups": app.hangups,
        "app_errors": len(app.errors),
        "first_errors": app.errors[:3],
        "recordings": len(recordings),
        "recording_mb": round(sum(p.stat().st_size for p in recordings) / 2**20, 1),
        "sipp_exit": sipp.returncode,
        "sipp_stderr": err.decode(errors="replace")[-300:] if sipp.returncode else "",
    }


def load_rtp_bench():
    spec = importlib.util.spec_from_file_location("bench_rtp_socket", ROOT / "scripts" / "bench_rtp_socket.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def bench(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-sip-") as name:
        tmp = Path(name)
        write_ulaw_wav(SPEECH, tmp / "speech.wav")
        gateway = await run_gateway(args, tmp)
    floor = await load_rtp_bench().measure("echo", args.calls, args.seconds, args.warmup, args.rtp_start)
    per_call = gateway["cpu_pct_per_call"]
    floor_per_session = floor["cpu_pct_per_session"]
    return {
        "calls": args.calls,
        "rate": args.rate,
        "seconds": args.seconds,
        "vad": args.vad,
        "gateway_cpu_pct_per_call": per_call,
        "echo_floor_cpu_pct_per_session": floor_per_session,
        "gateway_over_floor": round(per_call / floor_per_session, 1) if floor_per_session else None,  # type: ignore[operator]
        "gateway_rss_mb_per_call": gateway["rss_mb_per_call"],
        "echo_floor_rss_mb": floor["rss_mb"],
        "invite_200_ms_p50": gateway["invite_200_ms_p50"],
        "invite_200_ms_p99": gateway["invite_200_ms_p99"],
        "gateway": gateway,
        "floor": floor,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50, help="concurrent calls (SIPp -l and -m)")
    parser.add_argument("--rate", type=float, default=20.0, help="new calls per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window with every call up")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds after the last answer before measuring")
    parser.add_argument("--vad", default="silero", choices=("silero", "webrtc"), help="the application's VAD")
    parser.add_argument("--rtp-start", type=int, default=24000, help="first port of the gateway's RTP range")
    parser.add_argument("--media-port", type=int, default=36000, help="SIPp's first RTP port")
    args = parser.parse_args()
    if not 1 <= args.calls <= 1000 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--calls must be 1..1000, --rate and --seconds positive")
    if shutil.which("sipp") is None:
        parser.error("sipp is not installed (Debian package sip-tester)")
    import uvloop

    result = uvloop.run(bench(args))
    g = result["gateway"]
    f = result["floor"]
    print(f"gateway  {g['calls_up_in_window']} calls up, {g['cpu_pct_total']} % of a core, "
          f"{g['cpu_pct_per_call']} % and {g['rss_mb_per_call']} MB per call; INVITE->200 p50 "
          f"{g['invite_200_ms_p50']} ms p99 {g['invite_200_ms_p99']} ms; {g['speaking_per_call_minute']} "
          f"speaking/call/min; {g['recordings']} recordings; hangups {g['hangups']}")
    print(f"floor    uvloop UDP echo, {args.calls} sessions: {f['cpu_pct_per_session']} % per session, "
          f"rss {f['rss_mb']} MB")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
