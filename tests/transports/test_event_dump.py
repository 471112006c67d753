"""The event dump's writer: off the event loop, bounded, and never losing a line silently."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

from transports.event_dump import DumpFile, DumpWriter, EventDump


async def test_a_stalled_disk_never_stalls_the_loop_and_lost_lines_are_said(tmp_path):
    # A pipe nobody reads stands for a disk that stopped answering: the writer thread blocks in
    # write() once the pipe's 64 KiB are full.
    read_fd, write_fd = os.pipe()
    writer = DumpWriter(queue_bytes=256 * 1024)
    writer.start()
    dump = EventDump(str(tmp_path), "stalled", writer, max_bytes=1 << 30, file=DumpFile(tmp_path / "x", write_fd))
    text = json.dumps({"event": "custom", "data": "x" * 1000})
    slowest = 0.0
    started = time.perf_counter()
    for _ in range(2000):
        t0 = time.perf_counter()
        dump.event(text)
        slowest = max(slowest, time.perf_counter() - t0)
    assert time.perf_counter() - started < 1.0 and slowest < 0.05, slowest
    assert dump.lost_lines > 0 and writer.lost_lines == dump.lost_lines
    assert writer.pending <= 256 * 1024

    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read_fd, 65536), b"")))
    reader.start()
    for _ in range(500):
        if writer.pending == 0:
            break
        await asyncio.sleep(0.01)
    dump.event(json.dumps({"event": "custom", "data": "last"}))
    dump.close()
    await writer.stop()
    reader.join(5)
    os.close(read_fd)
    lines = [json.loads(line) for line in b"".join(chunks).decode().splitlines()]
    written = [line for line in lines if line["type"] == "event"]
    # One marker per run of lost lines (the writer may free room between runs), right before the
    # first line written after it; together they count every line lost.
    markers = [line for line in lines if line["type"] == "dump"]
    assert all(m["content"].endswith(" lines were not written: the dump writer fell behind") for m in markers)
    assert sum(int(m["content"].split()[0]) for m in markers) == dump.lost_lines
    assert len(written) + dump.lost_lines == 2001
    assert json.loads(lines[-1]["content"])["data"] == "last" and lines[-2] is markers[-1]


async def test_the_budget_ends_a_dump_with_a_last_line(tmp_path):
    writer = DumpWriter()
    writer.start()
    dump = EventDump(str(tmp_path), "big", writer, max_bytes=10_000)
    for i in range(100):
        dump.command(json.dumps({"command": "custom", "data": "y" * 500, "i": i}))
    dump.close()
    await writer.stop()
    data = (tmp_path / "big.events.jsonl").read_bytes()
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert lines[-1]["type"] == "dump" and "budget of 10000 bytes" in lines[-1]["content"]
    assert len(data) - len(json.dumps(lines[-1])) <= 10_000
    assert all(line["type"] == "command" for line in lines[:-1]) and 10 < len(lines) < 20


async def test_symlinks_and_fifos_at_the_dump_path_are_refused(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    root = tmp_path / "dumps"
    root.mkdir()
    (root / "evil.events.jsonl").symlink_to(outside)
    os.mkfifo(root / "pipe.events.jsonl")
    writer = DumpWriter()
    writer.start()
    dumps = [EventDump(str(root), sid, writer) for sid in ("evil", "pipe")]
    for _ in range(50):
        if all(d.disabled for d in dumps):
            break
        await asyncio.sleep(0.02)
    for dump in dumps:
        dump.event('{"event":"ping","timestamp":1}')
        dump.close()
    await writer.stop()
    assert outside.read_text() == "precious\n"
    assert all(d.disabled for d in dumps)
