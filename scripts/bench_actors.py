#!/usr/bin/env python3
"""Measure the actor runtime: start, tell throughput, ask round trips, stop, memory per actor.

    .venv/bin/python scripts/bench_actors.py --actors 10000 --messages 100

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors import Actor, ActorRef  # noqa: E402


class Progress:
    """Counts events across all actors and wakes the benchmark when a target is reached."""

    def __init__(self) -> None:
        self.count = 0
        self.target = -1
        self.reached = asyncio.Event()

    def expect(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.reached.clear()

    def add(self) -> None:
        self.count += 1
        if self.count == self.target:
            self.reached.set()


@dataclass(frozen=True, slots=True)
class Reset:
    """Zero the count and report to the progress counter every ``every`` messages."""

    every: int


class Counter(Actor):
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.count = 0
        self.every = 1

    async def on_start(self) -> None:
        self.progress.add()

    async def on_receive(self, message: object) -> object:
        if isinstance(message, int):
            self.count += 1
            if self.count % self.every == 0:
                self.progress.add()
            return None
        if isinstance(message, Reset):
            self.count, self.every = 0, message.every
            return None
        return self.count


def rss_bytes() -> int | None:
    try:
        with open(f"/proc/{os.getpid()}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


async def bench(actors: int, messages: int, asks: int) -> dict[str, object]:
    progress = Progress()
    figures: dict[str, object] = {"actors": actors, "messages": messages}

    gc.collect()
    rss_before = rss_bytes()
    progress.expect(actors)
    started = time.perf_counter()
    refs: list[ActorRef] = [Counter.start(progress) for _ in range(actors)]
    await progress.reached.wait()
    elapsed = time.perf_counter() - started
    rss_after = rss_bytes()
    figures["start_s"] = round(elapsed, 4)
    figures["start_per_actor_us"] = round(elapsed / actors * 1e6, 2)
    if rss_before is not None and rss_after is not None:
        figures["rss_per_idle_actor_bytes"] = round((rss_after - rss_before) / actors)
    print(f"start {actors} actors: {elapsed:.3f} s ({figures['start_per_actor_us']} us each)")

    # Burst: every message queued first, then handled; each actor wakes once per batch.
    await asyncio.gather(*(ref.ask(Reset(messages)) for ref in refs))
    total = actors * messages
    progress.expect(actors)
    started = time.perf_counter()
    for _ in range(messages):
        for ref in refs:
            ref.tell(1)
    await progress.reached.wait()
    elapsed = time.perf_counter() - started
    figures["tell_burst_msgs_per_s"] = round(total / elapsed)
    high_water = max(ref.mailbox_stats().normal_high_water for ref in refs)
    figures["mailbox_high_water"] = high_water
    print(f"tell, burst: {total} messages in {elapsed:.3f} s = {total / elapsed:,.0f} msg/s")

    # Paced: one message per actor per round, and the round is handled before the next one, so
    # every message costs its actor a wakeup (the shape of a control plane at rest).
    await asyncio.gather(*(ref.ask(Reset(1)) for ref in refs))
    progress.expect(total)
    started = time.perf_counter()
    for n in range(messages):
        for ref in refs:
            ref.tell(1)
        while progress.count < (n + 1) * actors:
            await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    figures["tell_paced_msgs_per_s"] = round(total / elapsed)
    print(f"tell, paced: {total} messages in {elapsed:.3f} s = {total / elapsed:,.0f} msg/s")

    target = refs[0]
    started = time.perf_counter()
    for _ in range(asks):
        await target.ask("count")
    elapsed = time.perf_counter() - started
    figures["ask_sequential_per_s"] = round(asks / elapsed)
    figures["ask_round_trip_us"] = round(elapsed / asks * 1e6, 2)
    print(f"ask, sequential: {asks} round trips, {elapsed / asks * 1e6:.1f} us each")

    started = time.perf_counter()
    await asyncio.gather(*(ref.ask("count") for ref in refs))
    elapsed = time.perf_counter() - started
    figures["ask_concurrent_s"] = round(elapsed, 4)
    print(f"ask, one to each of {actors} actors at once: {elapsed:.3f} s")

    started = time.perf_counter()
    stopped = await asyncio.gather(*(ref.stop() for ref in refs))
    elapsed = time.perf_counter() - started
    figures["stop_s"] = round(elapsed, 4)
    figures["all_stopped"] = all(stopped)
    print(f"stop {actors} actors: {elapsed:.3f} s")

    figures["python"] = platform.python_version()
    figures["cpus"] = os.cpu_count()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=100, help="messages told to each actor")
    parser.add_argument("--asks", type=int, default=20_000, help="sequential ask round trips")
    args = parser.parse_args()
    if args.actors < 1 or args.messages < 1 or args.asks < 1:
        parser.error("--actors, --messages and --asks must be at least 1")
    figures = asyncio.run(bench(args.actors, args.messages, args.asks))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
