#!/usr/bin/env python3
"""Media-plane cost per call: N concurrent /call sessions that receive caller audio and play
audio back, against a bare aiohttp WebSocket echo of the same frames measured in the same run.

Both servers run as their own processes; this process is only the load generator, so the CPU
figures are the servers' own (psutil CPU time over the measured window). Playout jitter is the
gateway's media clock lateness (how late each 20 ms tick ran after its deadline) from /health.

    .venv/bin/python scripts/bench_media.py --calls 50 --seconds 20
    .venv/bin/python scripts/bench_media.py --calls 200 --seconds 20 --codec pcmu --play tts

Last line of output: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway_process import base_config, start_gateway, stop, wait_ready, write_tone  # noqa: E402
from protocol.codecs import Encoder, codec_info  # noqa: E402

SPEECH = ("Thank you for calling. Your call is important to us. Please hold while we connect you "
          "to the next available agent. ")


def echo_server_main(port_file: str) -> None:
    """The baseline: a bare aiohttp WebSocket server that echoes every frame."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    async def run() -> None:
        app = web.Application()
        app.router.add_get("/call", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
        Path(port_file).write_text(str(port))
        await asyncio.Event().wait()

    asyncio.run(run())


def start_process(args: list[str], ready_file: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as err:
        proc = subprocess.Popen(args, stderr=err, stdout=subprocess.DEVNULL, cwd=ready_file.parent)
    wait_ready(proc, lambda: ready_file.exists() and ready_file.read_text().strip() or None, log, "server")
    return proc


class Load:
    """N WebSocket sessions sending 20 ms frames in real time, driven by one shared ticker."""

    def __init__(self, url: str, calls: int, codec: str, play: str, gateway: bool, vad: str = "none") -> None:
        self.url, self.calls, self.codec, self.play, self.gateway = url, calls, codec, play, gateway
        self.vad = vad
        info = codec_info(codec)
        t = np.arange(320) / 16000
        self.frame = Encoder(info).encode((np.sin(2 * np.pi * 300 * t) * 3000).astype(np.int16))
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.readers: list[asyncio.Task[None]] = []
        self.received = 0
        self.sent = 0


    async def open(self, http: aiohttp.ClientSession) -> None:
        async def one(i: int) -> None:
            ws = await http.ws_connect(f"{self.url}/call?id=bench-{i}&dump=false&ping=0")
            if self.gateway:
                option: dict = {"codec": self.codec}
                if self.vad != "none":
                    option["vad"] = {"type": self.vad}
                await ws.send_json({"command": "invite", "option": option})
            self.sockets.append(ws)
            self.readers.append(asyncio.get_running_loop().create_task(self._read(ws)))

        for start in range(0, self.calls, 50):
            await asyncio.gather(*(one(i) for i in range(start, min(self.calls, start + 50))))

    async def start_playback(self) -> None:
        if self.gateway:
            for ws in self.sockets:
                await self._play(ws)

    async def _play(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if self.play == "tts":
            await ws.send_json({"command": "tts", "text": SPEECH * 2, "playId": "bench"})
        else:
            await ws.send_json({"command": "play", "url": "tone.wav"})

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.received += 1
            elif msg.type == aiohttp.WSMsgType.TEXT and '"trackEnd"' in msg.data and '"serverSideTrack"' in msg.data:
                await self._play(ws)  # keep every call playing for the whole run

    async def pump(self, seconds: float) -> None:
        deadline = time.monotonic()
        end = deadline + seconds
        while deadline < end:
            deadline += 0.02
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            for ws in self.sockets:
                if not ws.closed:
                    await ws.send_bytes(self.frame)
                    self.sent += 1

    async def close(self) -> None:
        for ws in self.sockets:
            await ws.close()
        await asyncio.gather(*self.readers, return_exceptions=True)


async def measure(url: str, proc: psutil.Process, args: argparse.Namespace, gateway: bool) -> dict:
    load = Load(url, args.calls, args.codec, args.play, gateway, args.vad)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        idle_rss = proc.memory_info().rss
        await load.open(http)
        await load.start_playback()
        await load.pump(args.warmup)
        cpu0 = sum(proc.cpu_times()[:2])
        t0 = time.monotonic()
        rx0, tx0 = load.received, load.sent
        await load.pump(args.seconds)
        elapsed = time.monotonic() - t0
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        rss = proc.memory_info().rss
        health = None
        if gateway:
            async with http.get(f"{url}/health") as resp:
                health = await resp.json()
        await load.close()
    return {
        "cpu_pct_per_call": round(100 * cpu / elapsed / args.calls, 4),
        "cpu_pct_total": round(100 * cpu / elapsed, 2),
        "rss_mb_per_call": round((rss - idle_rss) / 2**20 / args.calls, 4),
        "rss_mb": round(rss / 2**20, 1),
        "frames_in_per_s": round((load.sent - tx0) / elapsed, 1),
        "frames_out_per_s": round((load.received - rx0) / elapsed, 1),
        "clock": health["clock"] if health else None,
    }


async def main_async(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        write_tone(tmp / "media" / "tone.wav", 440, 8000)      # what `play` plays
        gateway = start_gateway(tmp, base_config(tmp, args.calls + 10))
        try:
            gw = await measure(gateway.url, psutil.Process(gateway.proc.pid), args, gateway=True)
        finally:
            stop(gateway.proc)
        port_file = tmp / "echo.port"
        echo = start_process([sys.executable, __file__, "--echo-server", str(port_file)], port_file, tmp / "echo.log")
        try:
            base = await measure(f"http://127.0.0.1:{port_file.read_text().strip()}", psutil.Process(echo.pid),
                                 args, gateway=False)
        finally:
            echo.kill()
            echo.wait()
    ratio = gw["cpu_pct_per_call"] / base["cpu_pct_per_call"] if base["cpu_pct_per_call"] else None
    return {
        "calls": args.calls,
        "seconds": args.seconds,
        "gateway_loop": "uvloop",       # as `active-call` runs; the echo baseline is the stock asyncio loop
        "codec": args.codec,
        "play": args.play,
        "vad": args.vad,
        "gateway_cpu_pct_per_call": gw["cpu_pct_per_call"],
        "gateway_cpu_pct_total": gw["cpu_pct_total"],
        "gateway_rss_mb_per_call": gw["rss_mb_per_call"],
        "gateway_rss_mb": gw["rss_mb"],
        "gateway_frames_out_per_s": gw["frames_out_per_s"],
        "playout_lateness_ms_p50": gw["clock"]["lateness_ms_p50"],
        "playout_lateness_ms_p99": gw["clock"]["lateness_ms_p99"],
        "playout_late_ticks": gw["clock"]["late_ticks"],
        "playout_skipped_ticks": gw["clock"]["skipped"],
        "echo_cpu_pct_per_call": base["cpu_pct_per_call"],
        "echo_rss_mb_per_call": base["rss_mb_per_call"],
        "echo_frames_out_per_s": base["frames_out_per_s"],
        "cpu_ratio_vs_echo": round(ratio, 2) if ratio else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--codec", default="pcmu", choices=["pcm", "pcmu", "pcma", "g722"])
    p.add_argument("--play", default="wav", choices=["wav", "tts"],
                   help="wav: `play` of a 15 s WAV from media_root, again at each trackEnd; tts: spoken text")
    p.add_argument("--vad", default="none", choices=["none", "silero", "webrtc"],
                   help="run this VAD on every call's inbound audio")
    p.add_argument("--echo-server", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.echo_server:
        echo_server_main(args.echo_server)
        return
    figures = asyncio.run(main_async(args))
    for key, value in figures.items():
        print(f"{key:32} {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
