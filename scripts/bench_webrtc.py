#!/usr/bin/env python3
"""Concurrent WebRTC legs per gateway process, with the audio's quality both ways.

The gateway runs as its own process (`active-call`, uvloop), serving N `/call/webrtc` calls; the
peers run in `--peer-procs` other processes. Each peer is an aiortc peer connection (ICE, DTLS,
SRTP as a browser) that sends a 300 Hz tone in real time and receives what the gateway plays (a
`play` of a 440 Hz WAV, restarted at each trackEnd). The peers send pre-encoded frames and count
received packets without decoding them, so that the load generator costs less than what it loads.

Measured over `--seconds` after `--warmup`:
- the gateway process's CPU (all its threads) and RSS, per leg;
- outbound (gateway -> peers): packets per second per leg and the p99 of |arrival interval - 20 ms|
  at the peers (the peers' own loop adds to it: their CPU is reported too); a sample of legs is
  decoded and must hold 440 Hz;
- inbound (peers -> gateway): the gateway records `--recorded` legs; their caller channel must hold
  300 Hz and at least 99 % of the frames the peer sent (late frames count: the recorder pads the
  wall-clock gap they leave, reported as `padding`);
- the gateway's media clock lateness (p99) from /health.
- the gateway's own account of every leg, logged when it closes: its jitter buffer (frames played,
  gaps, late packets, resyncs) and its sender queue (frames dropped).
A run is clean when every leg receives >= 49 packets/s, the arrival p99 is under 20 ms, the media
clock p99 lateness under 10 ms, no leg's jitter buffer played more than 1 % gaps, and the sampled
audio is the expected tone, < 1 % lost inbound.
On a shared machine the latency figures follow the other load (reported as loadavg); the CPU per
leg does not.

    .venv/bin/python scripts/bench_webrtc.py --legs 20 --seconds 20                  # one process
    .venv/bin/python scripts/bench_webrtc.py --legs 60 --seconds 20 --codec pcmu --peer-procs 2
    .venv/bin/python scripts/bench_webrtc.py --legs 40 --seconds 20 --gateways 2     # the machine: a process per core
    .venv/bin/python scripts/bench_webrtc.py --legs 10 --seconds 10 --aiortc-path    # peers on aiortc's own media path
    .venv/bin/python scripts/bench_webrtc.py --legs 30 --seconds 20 --workers 0,1,2  # worker processes, one run each

Last line of output: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway_process import Gateway, base_config, log_records, start_gateway, stop, write_tone  # noqa: E402

OUT_TONE, IN_TONE = 440.0, 300.0
# What one line per run says with --workers (the full figures are in the last line).
SUMMARY = ("legs", "clean", "legs_ended_early", "gateway_cpu_pct_by_process", "out_packets_per_s_min", "out_arrival_jitter_ms_p99",
           "in_legs_impaired", "in_late_fraction", "clock_lateness_ms_p99", "loadavg_before")


# --- the peers (run in worker processes) -------------------------------------------------------

async def peer_worker(args: argparse.Namespace) -> None:
    import fractions

    import aiohttp
    import av
    from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    from protocol.codecs import Decoder, Encoder, codec_info
    from transports.webrtc_ice import use_host_addresses
    from transports.webrtc_media import OutboundAudio

    use_host_addresses(["127.0.0.1"])
    info = codec_info(args.codec)
    clock = 48000 if args.codec == "opus" else 8000
    step = clock // 50
    enc = Encoder(info)
    t = np.arange(16000) / 16000
    tone = (np.sin(2 * np.pi * IN_TONE * t) * 6000).astype(np.int16)
    frames = [enc.encode(tone[i:i + 320]) for i in range(0, 16000, 320)]   # 1 s, cycled

    class ToneSource(MediaStreamTrack):
        """--aiortc-path: the tone as av.AudioFrames for aiortc's own encoder, paced in real time."""

        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.n = 0
            self.t0: float | None = None

        async def recv(self) -> av.AudioFrame:
            if self.t0 is None:
                self.t0 = time.monotonic()
            await asyncio.sleep(max(0.0, self.t0 + self.n * 0.02 - time.monotonic()))
            i = self.n % 50
            frame = av.AudioFrame.from_ndarray(tone[i * 320:(i + 1) * 320].reshape(1, -1), format="s16",
                                               layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, self.n * 320, fractions.Fraction(1, 16000)
            self.n += 1
            return frame

        @property
        def sent(self) -> int:
            return self.n

    class Leg:
        def __init__(self, index: int) -> None:
            self.index = index
            self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            self.out = ToneSource() if args.aiortc_path else OutboundAudio(clock, step, 10)
            self.transceiver = self.pc.addTransceiver(self.out, direction="sendrecv")
            self.arrivals: list[float] = []
            self.payloads: list[bytes] = []
            self.pcm: list[np.ndarray] = []
            self.pcm_rate = 16000
            self.keep = index < args.recorded
            self.ended: str | None = None     # the hangup reason of a leg the gateway ended mid-run
            self.measuring = False
            self.ws = None
            if args.aiortc_path:
                self.pc.on("track", lambda track: asyncio.ensure_future(self.drain(track)))

        async def on_rtp(self, packet, arrival_time_ms: int = 0) -> None:
            if self.measuring:
                self.arrivals.append(time.monotonic())
                if self.keep and len(self.payloads) < 250:
                    self.payloads.append(packet.payload)

        async def drain(self, track) -> None:
            """--aiortc-path: aiortc decodes on its thread; every decoded frame is taken."""
            try:
                while True:
                    frame = await track.recv()
                    if self.measuring:
                        self.arrivals.append(time.monotonic())
                        if self.keep and len(self.pcm) < 250:
                            self.pcm_rate = frame.sample_rate
                            self.pcm.append(frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0])
            except MediaStreamError:
                return

    legs = [Leg(args.first + i) for i in range(args.count)]

    async def open_leg(http, leg: Leg) -> None:
        await leg.pc.setLocalDescription(await leg.pc.createOffer())
        leg.ws = await http.ws_connect(f"{args.url}/call/webrtc?id=bench-{leg.index}&dump=false&ping=0")
        option: dict = {"offer": leg.pc.localDescription.sdp}
        if args.codec != "opus":
            option["codec"] = args.codec
        if leg.keep:
            option["recorder"] = {"recorderFile": f"bench-{leg.index}.wav"}
        if args.vad != "none":
            option["vad"] = {"type": args.vad}
        await leg.ws.send_json({"command": "invite", "option": option})
        async for msg in leg.ws:
            event = json.loads(msg.data)
            if event["event"] == "answer":
                await leg.pc.setRemoteDescription(RTCSessionDescription(sdp=event["sdp"], type="answer"))
                break
            if event["event"] in ("error", "hangup"):
                raise RuntimeError(f"leg {leg.index}: {event}")
        if not args.aiortc_path:
            leg.transceiver.receiver._handle_rtp_packet = leg.on_rtp  # noqa: SLF001 - count, do not decode
        await leg.ws.send_json({"command": "play", "url": "tone.wav"})
        asyncio.ensure_future(replay(leg))

    async def replay(leg: Leg) -> None:
        async for msg in leg.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            if '"trackEnd"' in msg.data and '"serverSideTrack"' in msg.data and not leg.ws.closed:
                await leg.ws.send_json({"command": "play", "url": "tone.wav"})
            elif '"hangup"' in msg.data and not stop.is_set():
                leg.ended = json.loads(msg.data).get("reason")    # the gateway ended it mid-run

    stop = asyncio.Event()

    async def ticker() -> None:
        deadline = time.monotonic()
        n = 0
        while not stop.is_set():
            deadline += 0.02
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            frame = frames[n % len(frames)]
            n += 1
            for leg in legs:
                if not args.aiortc_path:
                    leg.out.push(frame)

    proc = psutil.Process()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        tick = asyncio.ensure_future(ticker())
        for start in range(0, len(legs), 10):
            await asyncio.gather(*(open_leg(http, leg) for leg in legs[start:start + 10]))
        deadline = time.monotonic() + 20
        while any(leg.pc.connectionState != "connected" for leg in legs):
            if time.monotonic() > deadline:
                raise SystemExit("peers did not connect within 20 s")
            await asyncio.sleep(0.05)
        gc.freeze()          # as the gateway does: full collections must not pause the load generator
        await asyncio.sleep(args.warmup)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)   # "go"
        cpu0 = sum(proc.cpu_times()[:2])
        for leg in legs:
            leg.measuring = True
        t0 = time.monotonic()
        await asyncio.sleep(args.seconds)
        for leg in legs:
            leg.measuring = False
        elapsed = time.monotonic() - t0
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        stop.set()
        await tick
        rates, deviations, sampled = [], [], []
        for leg in legs:
            a = np.array(leg.arrivals)
            rates.append(len(a) / elapsed)
            if len(a) > 1:
                deviations.append(np.abs(np.diff(a) - 0.02) * 1000)
            if leg.payloads or leg.pcm:
                rate = leg.pcm_rate if leg.pcm else 16000
                if leg.pcm:
                    pcm = np.concatenate(leg.pcm).astype(np.float64)
                else:
                    dec = Decoder(info)
                    pcm = np.concatenate([dec.decode(p) for p in leg.payloads]).astype(np.float64)
                pcm = pcm[rate // 10:]                       # past the decoders' start
                spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
                spectrum[0] = 0
                sampled.append(float(np.argmax(spectrum) * rate / len(pcm)))
        for leg in legs:
            if not leg.ws.closed:
                try:
                    await leg.ws.send_json({"command": "hangup"})
                except ConnectionError:
                    pass          # ended by the gateway meanwhile: counted below
            await leg.ws.close()
            await leg.pc.close()
    dev = np.concatenate(deviations) if deviations else np.zeros(1)
    sent = {f"bench-{leg.index}": leg.out.sent for leg in legs if leg.keep}
    print(json.dumps({"rates": rates, "sent": sent, "dev_p50": float(np.percentile(dev, 50)), "dev_p99": float(np.percentile(dev, 99)),
                      "dev_max": float(dev.max()), "sampled_hz": sampled, "cpu_pct": 100 * cpu / elapsed,
                      "ended_early": [leg.ended for leg in legs if leg.ended is not None]}), flush=True)


# --- the gateway and the run --------------------------------------------------------------------

def webrtc_gateway(home: Path, legs: int, workers: int = 0) -> Gateway:
    """One gateway process in `home` (its config, media, recordings and log), ready to call; with
    `workers`, its WebRTC calls run in that many worker processes of its own."""
    write_tone(home / "media" / "tone.wav", OUT_TONE, 16000)       # what `play` plays
    return start_gateway(home, base_config(home, legs + 10) + f'recorder_root = "{home}/rec"\n'
                         f'[webrtc]\nhost_addresses = ["127.0.0.1"]\nworkers = {workers}\n')


def recorded_quality(path: Path, sent: int) -> dict:
    """What the gateway heard of one leg: the caller channel's dominant frequency, and how much of
    the `sent` frames of tone it holds (`loss`). Frames that came late are padded by the recorder
    (it aligns the channels on the wall clock) and still counted as heard; `padding` counts those
    silent frames inside the tone, after its first half second."""
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, w.getnchannels())[:, 0]
    frame = rate // 50
    n = len(pcm) // frame
    energy = np.sqrt(np.mean(pcm[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    loud = np.nonzero(energy > 500)[0]
    if len(loud) == 0:
        return {"hz": None, "loss": 1.0, "padding": None}
    inside = energy[loud[0]: loud[-1] + 1]
    x = pcm[loud[0] * frame: (loud[-1] + 1) * frame].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    spectrum[0] = 0
    gaps = np.nonzero(inside < 500)[0]
    return {"hz": round(float(np.argmax(spectrum) * rate / len(x)), 1),
            "loss": round(max(0.0, 1 - len(loud) / sent), 4) if sent else None,
            "padding": int(np.sum(gaps >= 25))}


async def run(args: argparse.Namespace) -> dict:
    import aiohttp

    workers_per_gateway = args.workers if args.workers is not None else 0

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        gateways: list[tuple[subprocess.Popen, str, Path]] = []
        workers: list[subprocess.Popen] = []
        try:
            # --gateways K: K gateway processes, each with its own share of the legs and its own
            # peer processes: one process per core, as worker processes would spread the calls.
            shares = [args.legs // args.gateways + (1 if g < args.legs % args.gateways else 0)
                      for g in range(args.gateways)]
            first = 0
            recorded_left = args.recorded
            for g, share in enumerate(shares):
                home = tmp / f"gw{g}"
                home.mkdir()
                gateway = webrtc_gateway(home, share, workers_per_gateway)
                url = gateway.url
                gateways.append((gateway.proc, url, home))
                per = -(-share // args.peer_procs)
                for start in range(first, first + share, per):
                    count = min(per, first + share - start)
                    workers.append(subprocess.Popen(
                        [sys.executable, __file__, "--peer-worker", "--url", url, "--first", str(start), "--count",
                         str(count), "--codec", args.codec, "--seconds", str(args.seconds), "--warmup",
                         str(args.warmup), "--recorded", str(max(0, min(count, recorded_left))), "--vad", args.vad]
                        + (["--aiortc-path"] if args.aiortc_path else []),
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT))
                    recorded_left -= count
                first += share
            # The gateway processes and their worker processes (which carry the WebRTC calls then).
            gprocs = [p for proc, _, _ in gateways
                      for p in [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)]
            idle_rss = sum(g.memory_info().rss for g in gprocs)
            for w in workers:
                line = await asyncio.to_thread(w.stdout.readline)
                if line.strip() != "ready":
                    raise SystemExit(f"peer worker failed: {line!r}")
            load_before = os.getloadavg()[0]
            cpu0 = [sum(g.cpu_times()[:2]) for g in gprocs]
            threads = sum(g.num_threads() for g in gprocs)
            t0 = time.monotonic()
            for w in workers:
                w.stdin.write("go\n")
                w.stdin.flush()
            results = [json.loads(await asyncio.to_thread(w.stdout.readline)) for w in workers]
            elapsed = time.monotonic() - t0
            cpus = [sum(g.cpu_times()[:2]) - c for g, c in zip(gprocs, cpu0)]
            load_after = os.getloadavg()[0]
            rss = sum(g.memory_info().rss for g in gprocs)
            healths = []
            async with aiohttp.ClientSession() as http:
                for _, url, _ in gateways:
                    async with http.get(f"{url}/health") as resp:
                        healths.append(await resp.json())
            for w in workers:
                await asyncio.to_thread(w.wait, 30)
            deadline = time.monotonic() + 10          # the recorded calls end and close their files
            async with aiohttp.ClientSession() as http:
                for _, url, _ in gateways:
                    while time.monotonic() < deadline:
                        async with http.get(f"{url}/call/lists") as resp:
                            if not (await resp.json())["calls"]:
                                break
                        await asyncio.sleep(0.1)
            legs_closed, unreadable = [], 0
            for _, _, home in gateways:
                records, other = log_records(home / "gateway.log", '"webrtc leg closed"')
                legs_closed += [r for r in records if r.get("event") == "webrtc leg closed"]
                unreadable += other
            sent = {name: n for res in results for name, n in res["sent"].items()}
            recordings = [recorded_quality(p, sent.get(p.stem, 0))
                          for _, _, home in gateways for p in sorted((home / "rec").glob("bench-*.wav"))]
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
            for proc, _, _ in gateways:
                proc.send_signal(signal.SIGTERM)      # all at once: they drain in parallel
            for proc, _, _ in gateways:
                stop(proc)
    cpu = sum(cpus)
    clocks = [h["clock"] for h in healths] + [w["clock"] for h in healths for w in h.get("workers", [])
                                              if w.get("clock") is not None]
    clock = max(clocks, key=lambda c: c["lateness_ms_p99"])
    rates = [r for res in results for r in res["rates"]]
    sampled = [hz for res in results for hz in res["sampled_hz"]]
    out_p99 = max(res["dev_p99"] for res in results)
    impaired = sum(1 for r in legs_closed if r["gaps"] > 0.01 * max(1, r["played"] + r["gaps"]))
    ended_early = [reason for res in results for reason in res["ended_early"]]
    clean = (not ended_early and min(rates) >= 49.0 and out_p99 < 20.0 and clock["lateness_ms_p99"] < 10.0 and impaired == 0
             and len(legs_closed) == args.legs
             and all(abs(hz - OUT_TONE) < 10 for hz in sampled)
             and all(r["hz"] is not None and abs(r["hz"] - IN_TONE) < 10 and r["loss"] < 0.01 for r in recordings))
    return {
        "legs": args.legs,
        "seconds": args.seconds,
        "codec": args.codec,
        "vad": args.vad,
        "peer_procs": args.peer_procs,
        "cpu_count": os.cpu_count(),
        # The machine may be shared: its load (1 min) before the run and after it, this run's own
        # processes included in the second, puts the latency figures in context.
        "loadavg_before": round(load_before, 2),
        "loadavg_after": round(load_after, 2),
        "gateways": args.gateways,
        "workers": workers_per_gateway,
        "gateway_cpu_pct_total": round(100 * cpu / elapsed, 1),
        "gateway_cpu_pct_by_process": [round(100 * c / elapsed, 1) for c in cpus],
        "gateway_cpu_pct_per_leg": round(100 * cpu / elapsed / args.legs, 3),
        "gateway_threads": threads,
        "gateway_rss_mb": round(rss / 2**20, 1),
        "gateway_rss_mb_per_leg": round((rss - idle_rss) / 2**20 / args.legs, 3),
        "peers_cpu_pct_total": round(sum(res["cpu_pct"] for res in results), 1),
        # --aiortc-path: the peers decode and encode through aiortc's own media path, so this is its
        # cost per leg (without it they only packetise pre-encoded frames and count packets)
        "peers_media_path": "aiortc" if args.aiortc_path else "pre-encoded",
        "peers_cpu_pct_per_leg": round(sum(res["cpu_pct"] for res in results) / args.legs, 3),
        "legs_ended_early": ended_early,      # hangup reasons of legs the gateway ended mid-run
        "out_packets_per_s_min": round(min(rates), 2),
        "out_packets_per_s_mean": round(float(np.mean(rates)), 2),
        "out_arrival_jitter_ms_p50": round(max(res["dev_p50"] for res in results), 3),
        "out_arrival_jitter_ms_p99": round(out_p99, 3),
        "out_arrival_jitter_ms_max": round(max(res["dev_max"] for res in results), 3),
        "out_sampled_hz": [round(hz, 1) for hz in sampled],
        "in_recordings": recordings,
        # the gateway's own account of every leg at its end (its jitter buffer, its sender queue)
        "in_jitter_played": sum(r["played"] for r in legs_closed),
        "in_jitter_gaps": sum(r["gaps"] for r in legs_closed),
        "in_jitter_late": sum(r["late"] for r in legs_closed),
        "in_jitter_resyncs": sum(r["resyncs"] for r in legs_closed),
        "out_frames_dropped": sum(r["frames_out_dropped"] for r in legs_closed),
        # lines of the log that mention a closed leg but are not a JSON record (cut short, or run
        # into a worker's write): those legs are missing from the figures above
        "legs_closed_unreadable": unreadable,
        # legs whose jitter buffer played more than 1 % of its frames as gaps (lost or late)
        "in_legs_impaired": sum(1 for r in legs_closed if r["gaps"] > 0.01 * max(1, r["played"] + r["gaps"])),
        "in_late_fraction": round(sum(r["late"] for r in legs_closed)
                                  / max(1, sum(r["packets_in"] for r in legs_closed)), 4),
        "in_late_fraction_by_leg": sorted(round(r["late"] / max(1, r["packets_in"]), 3) for r in legs_closed),
        "clock_lateness_ms_p50": clock["lateness_ms_p50"],
        "clock_lateness_ms_p99": clock["lateness_ms_p99"],
        "clock_late_ticks": clock["late_ticks"],
        "clock_skipped_ticks": clock["skipped"],
        "clean": clean,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--legs", type=int, default=20)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--codec", default="opus", choices=["opus", "pcmu", "pcma", "g722"])
    p.add_argument("--vad", default="none", choices=["none", "silero", "webrtc"],
                   help="run this VAD on every call's inbound audio")
    p.add_argument("--gateways", type=int, default=1, help="gateway processes the legs are spread over "
                                                          "(one per core: the machine's figure)")
    p.add_argument("--workers", default=None,
                   help="webrtc.workers of each gateway; a comma-separated list (0,1,2) runs the bench once "
                        "per value, in this run, and the last line holds every run")
    p.add_argument("--peer-procs", type=int, default=1, help="peer processes per gateway")
    p.add_argument("--recorded", type=int, default=2, help="legs whose inbound audio the gateway records and "
                                                          "the bench checks")
    p.add_argument("--aiortc-path", action="store_true",
                   help="the peers use aiortc's own media path (decoder thread per receiver, executor encoder): "
                        "peers_cpu_pct_per_leg is then its cost, for comparison with the gateway's")
    p.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.peer_worker:
        try:
            import uvloop
            uvloop.run(peer_worker(args))
        except ImportError:
            asyncio.run(peer_worker(args))
        return
    if args.workers is None:
        figures = asyncio.run(run(args))
        for key, value in figures.items():
            print(f"{key:32} {value}")
        print(json.dumps(figures))
        return
    runs = []
    for count in (int(w) for w in args.workers.split(",")):
        one = asyncio.run(run(argparse.Namespace(**{**vars(args), "workers": count})))
        print(f"workers={count}: " + " ".join(f"{k}={one[k]}" for k in SUMMARY), flush=True)
        runs.append(one)
    print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main()
