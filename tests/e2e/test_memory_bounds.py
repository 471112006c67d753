"""Memory a client can make the gateway hold, measured on the real process (its RSS, sampled)."""

from __future__ import annotations

import asyncio
import struct
import time

import aiohttp
import numpy as np
import psutil
from aiohttp import web

from tests.e2e.test_cli_sessions import GatewayProcess

MiB = 1 << 20


def lying_wav(body: bytes) -> bytes:
    """8-bit mono 8 kHz WAV header claiming 4 GiB of data, then `body`."""
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 8000, 8000, 1, 8)
    return b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + fmt + b"data" + struct.pack("<I", 0xFFFFFFFF) + body


async def peak_rss_while(proc: psutil.Process, work) -> tuple[float, float]:
    """(RSS before, peak RSS while `work` runs), in MiB, sampled every 10 ms."""
    before = proc.memory_info().rss / MiB
    peak = before
    task = asyncio.ensure_future(work)
    while not task.done():
        peak = max(peak, proc.memory_info().rss / MiB)
        await asyncio.sleep(0.01)
    await task
    return before, peak


async def test_ten_large_non_audio_bodies_and_a_lying_wav_stay_within_a_bound(tmp_path):
    rng = np.random.default_rng(5)
    junk = rng.bytes(45 * MiB)                     # under the 50 MiB body limit, not audio
    lying = lying_wav(rng.bytes(40 * MiB))         # noise that decodes for the whole 1800 s limit

    async def serve_junk(request: web.Request) -> web.Response:
        return web.Response(body=junk, content_type="audio/mpeg")

    async def serve_lying(request: web.Request) -> web.Response:
        return web.Response(body=lying, content_type="audio/wav")

    app = web.Application()
    app.router.add_get("/junk.mp3", serve_junk)
    app.router.add_get("/lying.wav", serve_lying)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    gw = GatewayProcess(tmp_path, max_calls=20,
                        fetch={"allow_hosts": [f"127.0.0.1:{port}"], "decode_memory": 32 * MiB, "timeout": 30.0})
    proc = psutil.Process(gw.proc.pid)
    try:
        async with aiohttp.ClientSession() as http:
            async def one(i: int, path: str) -> dict:
                async with http.ws_connect(f"{gw.url}/call?id=m{i}&dump=false&ping=0") as ws:
                    await ws.send_json({"command": "invite", "option": {"codec": "pcm"}})
                    url = f"http://127.0.0.1:{port}{path}?n={i}"    # distinct: no shared fetch, no cache
                    await ws.send_json({"command": "play", "url": url})
                    error = None
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            continue
                        event = msg.json()
                        if event["event"] == "error" and event["sender"] == "play":
                            error = event
                        if event["event"] == "trackEnd" and event.get("playId") == url:
                            await ws.close()
                            return {"error": error, "duration": event["duration"]}
                    raise AssertionError("closed before the play ended")

            await one(99, "/lying.wav?warm")            # imports, codecs, thread pools: warm
            started = time.monotonic()
            jobs = asyncio.gather(*(one(i, "/junk.mp3") for i in range(10)), one(10, "/lying.wav"))
            before, peak = await peak_rss_while(proc, jobs)
            results = await jobs
            elapsed = time.monotonic() - started
        junk_results, lying_result = results[:10], results[10]
        assert all(r["error"]["code"] == 415 for r in junk_results), junk_results
        # The lying WAV decodes into noise until the shared decode memory is spent: refused, 503.
        assert lying_result["error"]["code"] == 503 and "memory ceiling" in lying_result["error"]["error"]
        # Bodies go to disk, decoded PCM is capped at 32 MiB (plus the join at the end and the
        # allocator's slack): 10 x 45 MiB held in memory would have been 450 MiB and more.
        print(f"rss before {before:.0f} MiB, peak {peak:.0f} MiB, {elapsed:.1f} s")
        assert peak - before < 120, (before, peak, elapsed)
    finally:
        gw.stop()
        await runner.cleanup()
