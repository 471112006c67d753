"""EngineHost: thread-bound engines on pykka ThreadingActors, driven from asyncio without blocking it."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import aclosing

import pykka
import pytest

from actors.engines import (
    EngineActor,
    EngineBusy,
    EngineError,
    EngineHost,
    EngineStalled,
    EngineStartError,
    EngineStopped,
)


class Workbench:
    """A pure-Python engine that records which thread built it, ran it and closed it."""

    def __init__(self) -> None:
        self.built_on = threading.get_ident()
        self.closed_on: int | None = None
        self.log: list[tuple[str, float, float]] = []
        self.started: list[str] = []         # jobs that began on the engine thread
        self.emitted = 0

    def whoami(self) -> int:
        return threading.get_ident()

    def add(self, a: int, b: int = 0) -> int:
        return a + b

    def boom(self) -> None:
        raise ValueError("boom")

    def work(self, label: str, seconds: float) -> str:
        self.started.append(label)
        started = time.monotonic()
        time.sleep(seconds)
        self.log.append((label, started, time.monotonic()))
        return label

    def count(self, emitter, n: int) -> None:
        for i in range(n):
            if not emitter.emit(i):
                return
            self.emitted = i + 1

    def spin(self, emitter, limit: float) -> None:
        # Produces nothing, only watches for the consumer leaving (a long native call would).
        self.started.append("spin")
        deadline = time.monotonic() + limit
        while not emitter.cancelled and time.monotonic() < deadline:
            time.sleep(0.001)

    def close(self) -> None:
        self.closed_on = threading.get_ident()


def bench_host(**kwargs) -> tuple[EngineHost, list[Workbench]]:
    host = EngineHost(**kwargs)
    made: list[Workbench] = []

    def build() -> Workbench:
        made.append(Workbench())
        return made[-1]

    host.register("bench", build)
    return host, made


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("engine-")]


@pytest.fixture(autouse=True)
def no_engine_left_behind():
    yield
    assert engine_threads() == []
    assert pykka.ActorRegistry.get_by_class(EngineActor) == []


async def wait_for(predicate, timeout: float = 2.0) -> float:
    """Seconds until `predicate()` held (polled every ms); fails after `timeout`."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        await asyncio.sleep(0.001)
    return time.monotonic() - started


async def test_engine_starts_lazily_on_one_thread_that_runs_every_call():
    host, made = bench_host()
    async with host:
        assert not host.is_running("bench") and host.threads() == [] and made == []
        idents = {await host.call("bench", "whoami") for _ in range(5)}
        assert len(idents) == 1
        ident = idents.pop()
        assert ident != threading.get_ident()
        assert len(made) == 1 and made[0].built_on == ident
        assert [t.name for t in host.threads()] == ["engine-bench"]
        assert host.threads()[0].ident == ident
        stats = host.stats("bench")
        assert (stats.submitted, stats.completed, stats.queued, stats.running) == (5, 5, 0, True)
    assert made[0].closed_on == ident


async def test_start_builds_the_engine_before_any_job():
    host, made = bench_host()
    async with host:
        await host.start("bench")
        assert len(made) == 1 and host.is_running("bench")
        assert await host.call("bench", "add", 2, b=3) == 5
        assert len(made) == 1


async def test_results_and_exceptions_come_back_and_the_engine_keeps_serving():
    host, _ = bench_host()
    async with host:
        with pytest.raises(ValueError, match="boom"):
            await host.call("bench", "boom")
        with pytest.raises(AttributeError):
            await host.call("bench", "no_such_method")
        assert await host.call("bench", "add", 40, 2) == 42
        assert host.stats("bench").failed == 2


async def test_jobs_run_one_at_a_time_in_arrival_order():
    host, made = bench_host()
    async with host:
        labels = await asyncio.gather(*(host.call("bench", "work", str(i), 0.02) for i in range(5)))
        assert labels == ["0", "1", "2", "3", "4"]
        log = made[0].log
        assert [label for label, _, _ in log] == labels
        for (_, _, end), (_, start, _) in zip(log, log[1:]):
            assert start >= end


async def test_loop_stays_responsive_while_the_engine_blocks():
    host, _ = bench_host()
    async with host:
        await host.start("bench")
        job = asyncio.create_task(host.call("bench", "work", "long", 0.3))
        lateness = await tick_while(job, period=0.005)
        assert await job == "long"
    print(f"\nloop lateness while the engine blocked 300 ms: max {max(lateness) * 1e3:.2f} ms "
          f"over {len(lateness)} ticks")
    assert len(lateness) >= 30
    assert max(lateness) < 0.020


async def tick_while(task: asyncio.Task, period: float) -> list[float]:
    lateness: list[float] = []
    next_tick = time.monotonic() + period
    for _ in range(2000):
        if task.done():
            break
        await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        lateness.append(time.monotonic() - next_tick)
        next_tick += period
    return lateness


async def test_a_consumer_slower_than_its_engine_does_not_hold_the_loop():
    host, _ = bench_host()
    async with host:
        async def consume() -> int:
            taken = 0
            async for _ in host.stream("bench", "count", 300):
                busy_until = time.perf_counter() + 0.001    # CPU work per item, no await
                while time.perf_counter() < busy_until:
                    pass
                taken += 1
            return taken

        job = asyncio.create_task(consume())
        lateness = await tick_while(job, period=0.005)
        assert await job == 300
    # Held by the consumer, the loop would be late by the whole stream (300 ms and more); the
    # bound leaves room for a machine whose cores are all busy.
    assert len(lateness) >= 20
    assert max(lateness) < 0.050


async def test_a_queued_job_whose_caller_gave_up_is_skipped():
    host, made = bench_host()
    async with host:
        await host.start("bench")
        first = asyncio.create_task(host.call("bench", "work", "first", 0.1))
        await wait_for(lambda: made[0].started == ["first"])
        second = asyncio.create_task(host.call("bench", "work", "second", 0.0))
        await wait_for(lambda: host.stats("bench").submitted == 3)      # start, first, and this behind it
        second.cancel()
        assert await first == "first"
        assert await host.call("bench", "add", 1) == 1
        assert [label for label, _, _ in made[0].log] == ["first"]
        assert host.stats("bench").cancelled == 1
        with pytest.raises(asyncio.CancelledError):
            await second


async def test_stream_delivers_every_item_in_order():
    host, _ = bench_host()
    async with host:
        items = [item async for item in host.stream("bench", "count", 500)]
        assert items == list(range(500))
        assert host.stats("bench").completed == 1


async def test_stream_keeps_at_most_max_in_flight_items_unread():
    host, made = bench_host(max_in_flight=4)
    async with host:
        async with aclosing(host.stream("bench", "count", 100)) as items:
            assert await anext(items) == 0
            await wait_for(lambda: made[0].emitted >= 5)    # the engine fills the free slots ...
            await asyncio.sleep(0.05)   # ... then waits: this window would show a sixth
            assert made[0].emitted == 5  # the item taken + 4 in flight
            rest = [item async for item in items]
        assert rest == list(range(1, 100))


async def test_a_consumer_that_stops_reading_stops_the_engine_promptly():
    host, made = bench_host(max_in_flight=8)
    async with host:
        async with aclosing(host.stream("bench", "count", 10**9)) as items:
            async for item in items:
                if item == 20:
                    break
        stop_latency = await wait_for(lambda: host.stats("bench").cancelled == 1)
        assert made[0].emitted <= 21 + 8
        assert await host.call("bench", "add", 7) == 7
    print(f"\nengine stopped {stop_latency * 1e3:.2f} ms after its consumer left")
    assert stop_latency < 0.1


async def test_cancelling_the_consumer_task_stops_a_busy_engine():
    host, made = bench_host()
    async with host:
        async def consume() -> None:
            async for _ in host.stream("bench", "spin", 5.0):
                pass

        task = asyncio.create_task(consume())
        await wait_for(lambda: made and made[0].started == ["spin"])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await wait_for(lambda: host.stats("bench").cancelled == 1) < 0.1


async def test_a_stalled_consumer_loses_its_stream_and_frees_the_engine():
    host, _ = bench_host(max_in_flight=2, stall_timeout=0.1)
    async with host:
        async with aclosing(host.stream("bench", "count", 100)) as items:
            assert await anext(items) == 0
            # Reading nothing for longer than the stall timeout: the engine gives up on us and
            # serves the next job.
            assert await asyncio.wait_for(host.call("bench", "add", 1, 1), 2.0) == 2
            got = []
            with pytest.raises(EngineStalled):
                async for item in items:
                    got.append(item)
            assert got == [1, 2]
        assert host.stats("bench").failed == 1


async def test_a_failing_factory_fails_the_job_and_is_tried_again():
    host = EngineHost()
    attempts: list[int] = []

    def build() -> Workbench:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("library not found")
        return Workbench()

    host.register("flaky", build)
    async with host:
        with pytest.raises(EngineStartError, match="library not found") as info:
            await host.call("flaky", "add", 1)
        assert isinstance(info.value.__cause__, OSError)
        assert await host.call("flaky", "add", 1) == 1
        assert len(attempts) == 2


async def test_stop_fails_pending_jobs_closes_engines_on_their_thread_and_joins_them():
    host, made = bench_host()
    await host.start("bench")
    ident = made[0].built_on
    running = asyncio.create_task(host.call("bench", "work", "running", 0.1))
    queued = asyncio.create_task(host.call("bench", "work", "queued", 0.0))

    async def consume() -> list[int]:
        return [item async for item in host.stream("bench", "count", 10)]

    streaming = asyncio.create_task(consume())
    await wait_for(lambda: made[0].started == ["running"] and host.stats("bench").submitted == 4)   # start + 3
    assert await host.stop() is True
    for task in (running, queued, streaming):
        with pytest.raises(EngineStopped):
            await task
    assert host.threads() == [] and engine_threads() == []
    assert not host.is_running("bench")
    assert made[0].closed_on == ident
    assert [label for label, _, _ in made[0].log] == ["running"]
    with pytest.raises(EngineStopped):
        await host.call("bench", "add", 1)


async def test_stop_gives_up_waiting_after_its_timeout_and_can_be_awaited_again():
    host, made = bench_host()
    await host.start("bench")
    job = asyncio.create_task(host.call("bench", "work", "slow", 0.3))
    await wait_for(lambda: made[0].started == ["slow"])
    assert await host.stop(timeout=0.05) is False
    assert len(host.threads()) == 1
    assert await host.stop(timeout=2.0) is True
    assert host.threads() == []
    with pytest.raises(EngineStopped):
        await job


async def test_names_must_be_registered_and_unambiguous():
    host, _ = bench_host()
    async with host:
        with pytest.raises(EngineError, match="no engine named 'nope'"):
            await host.call("nope", "add", 1)
        host.register("plain", Workbench)
        host.register("plain", Workbench)   # the same factory again: fine
        with pytest.raises(ValueError, match="already registered"):
            host.register("bench", Workbench)
        assert await host.call("plain", "add", 3) == 3
    with pytest.raises(ValueError):
        EngineHost(max_in_flight=0)


class Fragile:
    def ok(self):
        return threading.current_thread().name

    def die(self):
        raise SystemExit("engine thread dies")  # a BaseException: gets past the job guard


async def test_an_engine_whose_thread_died_is_started_again():
    async with EngineHost() as host:
        host.register("fragile", Fragile)
        first = await host.call("fragile", "ok")
        with pytest.raises(EngineStopped, match="died"):
            await asyncio.wait_for(host.call("fragile", "die"), 2.0)
        await wait_for(lambda: host.restarts.get("fragile") == 1)
        assert await host.call("fragile", "ok") == first  # same engine name, a fresh thread
        assert host.is_running("fragile")


async def test_an_engine_thread_killed_past_the_intensity_limit_is_given_up():
    gave_up: list[tuple[str, str]] = []
    async with EngineHost(restart_intensity=2, restart_period=30.0) as host:
        host.on_gave_up = lambda name, why: gave_up.append((name, why))
        host.register("fragile", Fragile)
        for kill in range(3):
            await host.call("fragile", "ok")
            with pytest.raises(EngineStopped):
                await asyncio.wait_for(host.call("fragile", "die"), 2.0)
            await wait_for(lambda: kill < 2 and host.restarts.get("fragile") == kill + 1 or bool(gave_up))
        assert host.restarts["fragile"] == 2
        assert gave_up == [("fragile", "its thread died 3 times within 30 s")]
        with pytest.raises(EngineStopped, match="gave up: its thread died 3 times"):
            await host.call("fragile", "ok")
        host.open()                                  # a restarted owner starts from a clean record
        assert await host.call("fragile", "ok") == "engine-fragile"


async def test_deaths_older_than_the_period_do_not_count():
    async with EngineHost(restart_intensity=1, restart_period=0.2) as host:
        host.register("fragile", Fragile)
        for kill in range(3):
            with pytest.raises(EngineStopped):
                await asyncio.wait_for(host.call("fragile", "die"), 2.0)
            await wait_for(lambda: host.restarts.get("fragile") == kill + 1)
            await asyncio.sleep(0.25)                # outside the period before the next death
        assert host.given_up("fragile") is None


async def test_submit_runs_a_job_as_a_future():
    host, made = bench_host()
    try:
        assert await host.submit("bench", "add", 2, 3) == 5
    finally:
        await host.stop()


async def test_a_bounded_submission_to_a_full_engine_is_refused_and_counted():
    host, made = bench_host()
    async with host:
        running = host.submit("bench", "work", "a", 0.2, max_queued=2)
        waiting = host.submit("bench", "work", "b", 0.0, max_queued=2)
        with pytest.raises(EngineBusy, match="2 jobs queued") as info:
            host.submit("bench", "work", "c", 0.0, max_queued=2)
        assert isinstance(info.value, EngineError)
        unbounded = host.submit("bench", "work", "d", 0.0)      # no limit given: queued as ever
        assert host.stats("bench").refused == 1
        assert [await running, await waiting, await unbounded] == ["a", "b", "d"]
        assert [label for label, _, _ in made[0].log] == ["a", "b", "d"]     # "c" never ran
        assert await host.submit("bench", "work", "e", 0.0, max_queued=2) == "e"   # room again
        stats = host.stats("bench")
        assert (stats.refused, stats.completed, stats.queued) == (1, 4, 0)
        with pytest.raises(EngineError, match="no engine named"):
            host.check_room("nonesuch", 1)
