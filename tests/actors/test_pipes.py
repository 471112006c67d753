"""AudioPipe: a bounded ring that drops the oldest item, with stats, close and drain."""

from __future__ import annotations

import asyncio

import pytest

from actors import AudioPipe, PipeClosed, PipeStats


def test_full_pipe_drops_the_oldest_and_counts_it() -> None:
    pipe: AudioPipe[int] = AudioPipe(3, name="in")
    for n in range(1, 6):
        pipe.push(n)
    assert len(pipe) == 3
    assert [pipe.pop_nowait() for _ in range(4)] == [3, 4, 5, None]
    assert pipe.stats() == PipeStats(depth=0, capacity=3, pushed=5, popped=3, dropped=2, high_water=3)


def test_drain_takes_everything_and_keeps_the_counts_balanced() -> None:
    pipe: AudioPipe[bytes] = AudioPipe(10)
    for n in range(4):
        pipe.push(bytes([n]))
    assert pipe.pop_nowait() == b"\x00"
    assert pipe.drain() == [b"\x01", b"\x02", b"\x03"]
    assert pipe.drain() == []
    stats = pipe.stats()
    assert (stats.depth, stats.popped, stats.high_water) == (0, 4, 4)
    assert stats.pushed == stats.popped + stats.dropped + stats.depth


async def test_pop_waits_for_a_push() -> None:
    pipe: AudioPipe[str] = AudioPipe(2)
    waiting = asyncio.create_task(pipe.pop())
    await asyncio.sleep(0)
    assert not waiting.done()
    pipe.push("frame")
    assert await asyncio.wait_for(waiting, 1.0) == "frame"


async def test_close_wakes_the_consumer_after_what_is_left() -> None:
    pipe: AudioPipe[int] = AudioPipe(4)
    waiting = asyncio.create_task(pipe.pop())
    await asyncio.sleep(0)
    pipe.close()
    with pytest.raises(PipeClosed):
        await asyncio.wait_for(waiting, 1.0)

    pipe = AudioPipe(4)
    pipe.push(1)
    pipe.push(2)
    pipe.close()
    pipe.push(3)  # after close: dropped, counted
    assert await pipe.pop() == 1
    assert [item async for item in pipe] == [2]
    with pytest.raises(PipeClosed):
        await pipe.pop()
    assert pipe.closed and pipe.stats().dropped == 1 and pipe.stats().pushed == 3


async def test_async_iteration_ends_when_the_pipe_closes() -> None:
    pipe: AudioPipe[int] = AudioPipe(8)

    async def produce() -> None:
        for n in range(20):
            pipe.push(n)
            await asyncio.sleep(0)
        pipe.close()

    producer = asyncio.create_task(produce())
    received = [item async for item in pipe]
    await producer
    assert received == list(range(20))


async def test_a_cancelled_pop_leaves_the_pipe_usable() -> None:
    pipe: AudioPipe[int] = AudioPipe(2)
    waiting = asyncio.create_task(pipe.pop())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    pipe.push(7)
    assert await asyncio.wait_for(pipe.pop(), 1.0) == 7


async def test_a_second_concurrent_consumer_is_refused() -> None:
    pipe: AudioPipe[int] = AudioPipe(2)
    first = asyncio.create_task(pipe.pop())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="already has a consumer"):
        await pipe.pop()
    pipe.push(1)
    assert await first == 1


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AudioPipe(0)
