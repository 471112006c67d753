#!/usr/bin/env python3
"""Time to first audio of a cloud TTS client, with and without the connection made at call set-up.

    .venv/bin/python scripts/bench_provider_ttfb.py --provider deepgram --trials 20 --handshake-ms 0,120

Each trial is a fresh provider object, as a new call gets. "cold": the first request opens the
connection itself. "prepared": `prepare()` ran first (what the call does at answer), then the
request. The provider is the local test server of that provider (tests/providers/), on loopback,
speaking with espeak-ng; `--handshake-ms` adds that much delay before the server answers a
handshake, standing for the TCP + TLS + upgrade round trips to a real provider (three round
trips of 40 ms: 120 ms). ttfb is from the request to its first audio chunk, in ms (median, p90).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.engines import EngineHost  # noqa: E402
from actors.services import SynthRequest  # noqa: E402
from tests.providers.kits import KITS  # noqa: E402
from tests.providers.support import Hearing, Speaking  # noqa: E402
from transports.config import parse_config  # noqa: E402
from transports.providers.registry import provider_factories  # noqa: E402
from protocol.api import SynthesisOption, parse_option  # noqa: E402

TEXT = "Hello, and welcome to the example company."


async def first_audio(provider, request: SynthRequest) -> float:
    started = time.monotonic()
    async for chunk in provider.synthesize(request):
        if len(chunk.pcm):
            return (time.monotonic() - started) * 1000
    raise RuntimeError("no audio")


async def run(args: argparse.Namespace) -> dict:
    # A provider closed at the end of a trial abandons the session it was opening ahead of need;
    # the test server would log each abandoned handshake.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    kit = next(k for k in KITS if k.name == args.provider)
    host = EngineHost()
    config = parse_config({"providers": {"tts_cache_bytes": 0}})
    factories = provider_factories(config, host).tts
    results: dict[str, dict[str, float]] = {}
    try:
        server = kit.server(Hearing(host), Speaking(host))
        async with server:
            option = parse_option(SynthesisOption, kit.tts(server))
            request = SynthRequest(TEXT, speaker=option.speaker, sample_rate=option.samplerate)
            for delay_ms in args.handshake_ms:
                server.handshake_delay = delay_ms / 1000
                for mode in ("cold", "prepared"):
                    times = []
                    for _ in range(args.trials):
                        provider = factories[kit.name](option)
                        try:
                            if mode == "prepared":
                                await provider.prepare()
                            times.append(await first_audio(provider, request))
                        finally:
                            await provider.close()
                    times.sort()
                    results[f"{mode}_{delay_ms}ms"] = {
                        "median_ms": round(statistics.median(times), 1),
                        "p90_ms": round(times[int(0.9 * (len(times) - 1))], 1),
                    }
                    print(f"{kit.name} handshake +{delay_ms} ms, {mode:8s}: median {results[f'{mode}_{delay_ms}ms']['median_ms']} ms, "
                          f"p90 {results[f'{mode}_{delay_ms}ms']['p90_ms']} ms")
    finally:
        await host.stop()
    return {"bench": "provider_ttfb", "provider": kit.name, "trials": args.trials, "python": platform.python_version(),
            "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--provider", default="deepgram", choices=[k.name for k in KITS])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--handshake-ms", type=lambda v: [int(x) for x in v.split(",")], default=[0, 120])
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
