"""Actors are cheap: ten thousand of them start and stop in well under a second."""

from __future__ import annotations

import asyncio
import time

from actors import Actor

ACTORS = 10_000


class Counted(Actor):
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    async def on_start(self) -> None:
        self.counts["started"] += 1

    async def on_stop(self) -> None:
        self.counts["stopped"] += 1

    async def on_receive(self, message: object) -> object:
        return message


async def test_ten_thousand_actors_start_and_stop_quickly() -> None:
    counts = {"started": 0, "stopped": 0}
    started = time.perf_counter()
    refs = [Counted.start(counts) for _ in range(ACTORS)]
    answers = await asyncio.gather(*(ref.ask(n) for n, ref in enumerate(refs)))
    up = time.perf_counter()
    results = await asyncio.gather(*(ref.stop() for ref in refs))
    done = time.perf_counter()
    print(
        f"{ACTORS} actors: start + one ask each {up - started:.3f} s, "
        f"stop {done - up:.3f} s, total {done - started:.3f} s"
    )
    assert answers == list(range(ACTORS))
    assert all(results) and not any(ref.is_alive() for ref in refs)
    assert counts == {"started": ACTORS, "stopped": ACTORS}
    # Behaviour, not speed (scripts/bench_actors.py measures that): nothing grows worse than
    # linearly, which a busy machine cannot stretch this far.
    assert done - started < 10.0
