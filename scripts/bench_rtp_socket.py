#!/usr/bin/env python3
"""CPU per RTP session in the gateway's own process, against a bare UDP echo in the same run.

Two server processes, each on uvloop as the gateway runs, measured one after the other under the
same load from this process (one 172-byte PCMU packet every 20 ms per session, both ways):

- echo:    N UDP sockets that send every datagram straight back (the floor of Python RTP);
- gateway: N ``RtpSession``s from an ``RtpPortAllocator``, driven by the gateway's ``MediaClock``:
           every packet received is parsed, checked (payload type, latched source), counted for
           RTCP and pushed into the jitter buffer; every 20 ms each session is pulled once and sends
           one packet; RTCP reports run on their interval.

The CPU figures are each server process's own (psutil, over the measured window after a warm-up),
so the load generator sharing the machine does not count against them.

    .venv/bin/python scripts/bench_rtp_socket.py --sessions 100 --seconds 10

Last line of output: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PTIME = 0.02
PAYLOAD = bytes([0xFF]) * 160  # 20 ms of µ-law silence


# -- the servers ---------------------------------------------------------------------------------


class _Echo(asyncio.DatagramProtocol):
    def __init__(self, counts: list[int]) -> None:
        self.counts = counts
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.counts[0] += 1
        assert self.transport is not None
        self.transport.sendto(data, addr)


async def serve_echo(sessions: int) -> None:
    loop = asyncio.get_running_loop()
    counts = [0]
    transports = []
    for _ in range(sessions):
        transport, _ = await loop.create_datagram_endpoint(lambda: _Echo(counts), local_addr=("127.0.0.1", 0))
        transports.append(transport)
    ports = [t.get_extra_info("sockname")[1] for t in transports]
    await _ready_then_wait(ports, lambda: {"received": counts[0]})
    for t in transports:
        t.close()


async def serve_gateway(sessions: int, peers: list[int], rtp_start: int) -> None:
    from actors.clock import MediaClock
    from protocol.negotiate import NegotiatedCodec, NegotiatedMedia
    from transports.config import RtpConfig
    from transports.rtp_ports import RtpPortAllocator
    from transports.rtp_session import RtpSession

    allocator = RtpPortAllocator("127.0.0.1", rtp_start, min(65535, rtp_start + 4 * sessions + 400))
    clock = MediaClock(ptime_ms=20)
    config = RtpConfig()
    opened: list[RtpSession] = []
    for peer in peers:
        session = await RtpSession.open(allocator, config)
        # rtcp-mux: reports go to the generator's one socket per session, which ignores them.
        session.start(NegotiatedMedia(0, NegotiatedCodec("PCMU", 0, 8000, 8000), 101, "127.0.0.1", peer,
                                      None, True, 20, "sendrecv", False))
        opened.append(session)

    def make_tick(session: RtpSession):
        def tick(now: float) -> None:
            # What a Track does per tick with its leg: one pull, one send.
            payload = session.pull(now)
            session.send(payload if payload is not None else PAYLOAD, now)
        return tick

    for session in opened:
        clock.register(make_tick(session), lambda exc: None)

    def final() -> dict[str, object]:
        stats = [s.stats() for s in opened]
        return {
            "received": sum(s.packets_received for s in stats),
            "sent": sum(s.packets_sent for s in stats),
            "lost": sum(s.packets_lost for s in stats),
            "concealed": sum(s.concealed for s in stats),
            "dropped": sum(s.dropped_malformed + s.dropped_payload_type + s.dropped_source for s in stats),
            "clock": clock.stats(),
        }

    await _ready_then_wait([s.port for s in opened], final)
    await clock.stop()
    for session in opened:
        session.close()


async def _ready_then_wait(ports: list[int], final) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("READY " + json.dumps(ports), flush=True)
    await stop.wait()
    print("FINAL " + json.dumps(final()), flush=True)


# -- the load generator ----------------------------------------------------------------------------


class _Peer(asyncio.DatagramProtocol):
    def __init__(self, counts: list[int]) -> None:
        self.counts = counts

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        if len(data) > 1 and 200 <= data[1] <= 204:
            return  # RTCP from the gateway
        self.counts[0] += 1


class Load:
    """One socket per session; one packet per socket every 20 ms, on absolute deadlines."""

    def __init__(self) -> None:
        self.counts = [0]
        self.sent = 0
        self.transports: list[asyncio.DatagramTransport] = []
        self.targets: list[tuple[str, int]] = []
        self.late_ticks = 0

    async def open(self, sessions: int) -> list[int]:
        loop = asyncio.get_running_loop()
        for _ in range(sessions):
            transport, _ = await loop.create_datagram_endpoint(lambda: _Peer(self.counts),
                                                               local_addr=("127.0.0.1", 0))
            self.transports.append(transport)
        return [t.get_extra_info("sockname")[1] for t in self.transports]

    async def run(self, seconds: float) -> None:
        import struct

        header = struct.Struct("!BBHII")
        start = time.monotonic()
        n = 0
        pairs = list(zip(self.transports, self.targets))
        while True:
            now = time.monotonic()
            if now - start >= seconds:
                return
            seq = n & 0xFFFF
            ts = (n * 160) & 0xFFFFFFFF
            for i, (transport, target) in enumerate(pairs):
                transport.sendto(header.pack(0x80, 0, seq, ts, 0x10000 + i) + PAYLOAD, target)
            self.sent += len(pairs)
            n += 1
            delay = start + n * PTIME - time.monotonic()
            if delay < 0:
                self.late_ticks += 1
            await asyncio.sleep(max(0.0, delay))

    def close(self) -> None:
        for t in self.transports:
            t.close()


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True,
                            cwd=str(ROOT))


def _ready(proc: subprocess.Popen[str], timeout: float = 30.0) -> list[int]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server exited with {proc.wait()} before it was ready")
        if line.startswith("READY "):
            return json.loads(line[6:])
    raise TimeoutError("server not ready")


def _finish(proc: subprocess.Popen[str]) -> dict[str, object]:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    for line in out.splitlines():
        if line.startswith("FINAL "):
            return json.loads(line[6:])
    raise RuntimeError("server printed no final figures")


async def measure(kind: str, sessions: int, seconds: float, warmup: float, rtp_start: int) -> dict[str, object]:
    load = Load()
    peers = await load.open(sessions)
    args = ["--serve", kind, "--sessions", str(sessions), "--rtp-start", str(rtp_start),
            "--peers", ",".join(map(str, peers))]
    proc = _spawn(args)
    try:
        loop = asyncio.get_running_loop()
        ports = await loop.run_in_executor(None, _ready, proc)
        load.targets = [("127.0.0.1", p) for p in ports]
        ps = psutil.Process(proc.pid)
        runner = asyncio.create_task(load.run(warmup + seconds))
        await asyncio.sleep(warmup)
        cpu0, rx0, tx0, t0 = ps.cpu_times(), load.counts[0], load.sent, time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, rx1, tx1, t1 = ps.cpu_times(), load.counts[0], load.sent, time.monotonic()
        rss = ps.memory_info().rss
        await runner
        final = await loop.run_in_executor(None, _finish, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        load.close()
    window = t1 - t0
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return {
        "cpu_pct_total": round(100 * cpu / window, 2),
        "cpu_pct_per_session": round(100 * cpu / window / sessions, 4),
        "sent_pps": round((tx1 - tx0) / window),
        "returned_pps": round((rx1 - rx0) / window),
        "rss_mb": round(rss / 2**20, 1),
        "generator_late_ticks": load.late_ticks,
        "server": final,
    }


async def bench(args: argparse.Namespace) -> dict[str, object]:
    echo = await measure("echo", args.sessions, args.seconds, args.warmup, args.rtp_start)
    gateway = await measure("gateway", args.sessions, args.seconds, args.warmup, args.rtp_start)
    return {
        "sessions": args.sessions,
        "seconds": args.seconds,
        "loop": "uvloop",
        "echo_cpu_pct_per_session": echo["cpu_pct_per_session"],
        "gateway_cpu_pct_per_session": gateway["cpu_pct_per_session"],
        "gateway_over_echo": round(gateway["cpu_pct_per_session"] / echo["cpu_pct_per_session"], 2)  # type: ignore[operator]
        if echo["cpu_pct_per_session"] else None,
        "echo": echo,
        "gateway": gateway,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100, help="concurrent RTP sessions")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per server")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--rtp-start", type=int, default=30000, help="first port of the gateway's RTP range")
    parser.add_argument("--serve", choices=("echo", "gateway"), help=argparse.SUPPRESS)
    parser.add_argument("--peers", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.sessions <= 5000 or args.seconds <= 0:
        parser.error("--sessions must be 1..5000 and --seconds positive")
    import uvloop

    if args.serve == "echo":
        uvloop.run(serve_echo(args.sessions))
        return 0
    if args.serve == "gateway":
        peers = [int(p) for p in args.peers.split(",") if p]
        uvloop.run(serve_gateway(args.sessions, peers, args.rtp_start))
        return 0
    result = uvloop.run(bench(args))
    for kind in ("echo", "gateway"):
        r = result[kind]
        print(f"{kind:8s} {r['cpu_pct_total']:6.2f} % of a core total, {r['cpu_pct_per_session']:.4f} % per session, "
              f"{r['returned_pps']} of {r['sent_pps']} packets/s returned, rss {r['rss_mb']} MB")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
