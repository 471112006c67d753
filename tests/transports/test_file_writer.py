"""Recording writes on the writer thread: in order, complete on disk when waited for, failures and
backlog raised on the loop, never blocking it."""

from __future__ import annotations

import asyncio
import threading
import time
import wave

import numpy as np
import pytest

from transports.file_writer import FileWriter, WriterBehind
from transports.wav_sink import open_recording


def chunk(value: int, n: int = 1600) -> tuple[np.ndarray, np.ndarray]:
    return np.full(n, value, dtype=np.int16), np.full(n, -value, dtype=np.int16)


async def test_writes_land_in_order_and_the_file_is_complete_once_closed(tmp_path):
    writer = FileWriter()
    path = str(tmp_path / "a.wav")
    sink = writer.wrap(lambda: open_recording(path, 16000, 0), path)
    for value in range(1, 51):
        sink.write(*chunk(value))
    sink.close()
    await asyncio.wait_for(sink.wait_closed(), 5)
    with wave.open(path) as w:
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert len(frames) == 50 * 1600
    assert list(frames[::1600, 0]) == list(range(1, 51)) and (frames[:, 1] == -frames[:, 0]).all()
    assert writer.stop() and writer.pending_bytes == 0


async def test_the_loop_is_not_held_by_a_slow_disk(tmp_path):
    gate = threading.Event()

    class SlowSink:
        path = "slow"

        def write(self, left, right):
            gate.wait(5)

        def close(self):
            pass

    writer = FileWriter()
    sink = writer.wrap(lambda: SlowSink(), "slow")
    started = time.perf_counter()
    for _ in range(20):
        sink.write(*chunk(1))
    assert time.perf_counter() - started < 0.05
    assert writer.pending_bytes == 20 * 6400
    gate.set()
    sink.close()
    await asyncio.wait_for(sink.wait_closed(), 5)
    assert writer.stop()


async def test_a_failure_on_the_thread_is_raised_by_the_next_write(tmp_path):
    writer = FileWriter()
    path = str(tmp_path / "missing-dir" / "x" / "a.wav")

    def refuse():
        raise PermissionError(13, "Permission denied", path)

    sink = writer.wrap(refuse, path)
    for _ in range(200):
        if sink.error is not None:
            break
        await asyncio.sleep(0.005)
    with pytest.raises(OSError, match="Permission denied"):
        sink.write(*chunk(1))
    sink.close()
    await asyncio.wait_for(sink.wait_closed(), 5)
    assert writer.failures == 1 and writer.stop()


async def test_a_backlog_past_the_limit_is_refused_not_queued():
    gate = threading.Event()

    class Stalled:
        path = "stalled"

        def write(self, left, right):
            gate.wait(5)

        def close(self):
            pass

    writer = FileWriter(max_pending_bytes=64_000)
    sink = writer.wrap(lambda: Stalled(), "stalled")
    with pytest.raises(WriterBehind, match="waiting for the disk"):
        for _ in range(100):
            sink.write(*chunk(1))           # 6400 bytes each
    assert writer.pending_bytes <= 64_000 and writer.refused_bytes == 6400
    gate.set()
    sink.close()
    await asyncio.wait_for(sink.wait_closed(), 5)
    assert writer.stop()
