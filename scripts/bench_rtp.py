#!/usr/bin/env python3
"""Measure the media-plane parsers: RTP parse/build of a 20 ms PCMU packet, jitter buffer, SDP.

    .venv/bin/python scripts/bench_rtp.py --iterations 200000

Each figure is the best of five timed runs (µs per operation). ``rtp_build_us``,
``receiver_stats_us`` and ``jitter_push_pop_us`` include constructing the RtpPacket, as a receive
or send path does. The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol.jitter import JitterBuffer  # noqa: E402
from protocol.negotiate import answer  # noqa: E402
from protocol.rtcp import parse_rtcp  # noqa: E402
from protocol.rtp import ReceiverStats, RtpPacket  # noqa: E402
from protocol.sdp import parse as parse_sdp  # noqa: E402

REPEATS = 5


def best_us(iterations: int, run: Callable[[int], None]) -> float:
    """Best of REPEATS timings of ``run(iterations)``, in µs per iteration."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        run(iterations)
        best = min(best, time.perf_counter() - start)
    return best / iterations * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200_000, help="operations per timed run")
    args = parser.parse_args()
    n = args.iterations

    packet = RtpPacket(0, 4242, 160 * 4242, 0x12345678, bytes(range(160)), marker=False)
    data = bytes(packet)
    assert len(data) == 172

    def parse_rtp(count: int) -> None:
        parse = RtpPacket.parse
        for _ in range(count):
            parse(data)

    def build_rtp(count: int) -> None:
        payload = packet.payload
        for i in range(count):
            bytes(RtpPacket(0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, 0x12345678, payload))

    def stats_receive(count: int) -> None:
        stats = ReceiverStats(8000)
        payload = packet.payload
        for i in range(count):
            stats.receive(RtpPacket(0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, 1, payload), i * 0.02)

    def jitter_push_pop(count: int) -> None:
        buffer = JitterBuffer(8000, 20, 60)
        payload = packet.payload
        for i in range(count):
            now = i * 0.02
            buffer.push(RtpPacket(0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, 1, payload), now)
            buffer.pop(now)

    rtcp = bytes.fromhex("81c90007cafebabe01020304330000030001ffff00000011567890ab00008000")

    def parse_rr(count: int) -> None:
        for _ in range(count):
            parse_rtcp(rtcp)

    offer_bytes = (ROOT / "tests" / "fixtures" / "sdp" / "chrome_audio.sdp").read_bytes()
    prefs = ["PCMU", "PCMA", "G722", "telephone-event"]

    def sdp_parse(count: int) -> None:
        for _ in range(count):
            parse_sdp(offer_bytes)

    def sdp_answer(count: int) -> None:
        offer = parse_sdp(offer_bytes)
        for _ in range(count):
            bytes(answer(offer, prefs, "127.0.0.1", 40000)[0])

    sdp_n = max(1, n // 100)
    figures = {
        "python": platform.python_version(),
        "iterations": n,
        "rtp_packet_bytes": len(data),
        "rtp_parse_us": round(best_us(n, parse_rtp), 3),
        "rtp_build_us": round(best_us(n, build_rtp), 3),
        "receiver_stats_us": round(best_us(n, stats_receive), 3),
        "jitter_push_pop_us": round(best_us(n, jitter_push_pop), 3),
        "rtcp_rr_parse_us": round(best_us(n, parse_rr), 3),
        "sdp_chrome_parse_us": round(best_us(sdp_n, sdp_parse), 1),
        "sdp_chrome_answer_us": round(best_us(sdp_n, sdp_answer), 1),
    }
    for key, value in figures.items():
        print(f"{key:>24}: {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
