"""Recording writes off the event loop: one writer thread for every recording of the process.

The loop that drives the media clock must never wait on a disk. A `WrittenSink` looks like the
sink it wraps (`write(left, right)`, `close()`, `path`) but only queues the work; the `FileWriter`'s
thread opens the file, writes the chunks and closes it, in order for each sink, one job at a time
for all of them (a recording flush is a few kilobytes, so one thread keeps up with hundreds of
calls). Nothing is lost silently:

- a failure on the thread (the file cannot be opened, the disk is full) is kept and raised by the
  sink's next `write` or `close`, so the recorder fails there and its supervisor continues the
  recording in the next segment;
- the audio queued but not yet written is bounded (`max_pending_bytes` for the whole process): a
  `write` past it raises `WriterBehind`, with the same effect, instead of growing without limit
  behind a stalled disk.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from actors.services import RecordingSink

__all__ = ["FileWriter", "WriterBehind", "WrittenSink"]

log = logging.getLogger(__name__)

_STOP = object()


class WriterBehind(Exception):
    """More audio waits for the disk than the writer may hold."""


class WrittenSink:
    """A sink whose file work runs on the writer's thread (see the module docstring)."""

    def __init__(self, writer: FileWriter, open_sink: Callable[[], RecordingSink], path: str) -> None:
        self._writer = writer
        self.path = path
        self._sink: RecordingSink | None = None
        self.error: BaseException | None = None     # set by the writer thread, read by the loop
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = self._loop.create_future()
        writer.submit(self, 0, self._open, open_sink)

    def write(self, left: np.ndarray, right: np.ndarray) -> None:
        self._raise_error()
        size = left.nbytes + right.nbytes
        self._writer.submit(self, size, self._write, left, right, size)

    def close(self) -> None:
        """Queue the end of the file (its last header update and close); see ``wait_closed``."""
        if not self.closed:
            self.closed = True
            try:
                self._writer.submit(self, 0, self._close)
            except OSError:
                self._done.set_result(None)

    async def wait_closed(self) -> None:
        """Until the file is complete on disk (every queued write done, the file closed)."""
        await asyncio.shield(self._done)

    def _raise_error(self) -> None:
        error = self.error
        if error is not None:
            raise OSError(f"recording {self.path}: {error}") from error

    # --- on the writer thread -----------------------------------------------------------------

    def _open(self, open_sink: Callable[[], RecordingSink]) -> None:
        self._sink = open_sink()

    def _write(self, left: np.ndarray, right: np.ndarray, size: int) -> None:
        try:
            if self._sink is not None and self.error is None:
                self._sink.write(left, right)
        finally:
            self._writer.written(size)

    def _close(self) -> None:
        sink, self._sink = self._sink, None
        try:
            if sink is not None:
                sink.close()
        finally:
            try:
                self._loop.call_soon_threadsafe(_settle, self._done)
            except RuntimeError:
                pass  # the loop is gone; nobody waits


class FileWriter:
    def __init__(self, max_pending_bytes: int = 64 << 20) -> None:
        self.max_pending_bytes = max_pending_bytes
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        self.jobs_done = 0
        self.failures = 0
        self.refused_bytes = 0
        self._thread: threading.Thread | None = None
        self._stopped = False

    def wrap(self, open_sink: Callable[[], RecordingSink], path: str) -> WrittenSink:
        return WrittenSink(self, open_sink, path)

    @property
    def pending_bytes(self) -> int:
        return self._pending

    def submit(self, sink: WrittenSink, size: int, fn: Callable[..., None], *args: Any) -> None:
        if self._stopped:
            raise OSError(f"recording {sink.path}: the file writer has stopped")
        with self._lock:
            if size and self._pending + size > self.max_pending_bytes:
                self.refused_bytes += size
                raise WriterBehind(f"recording {sink.path}: more than {self.max_pending_bytes >> 20} MiB of "
                                   "audio is waiting for the disk")
            self._pending += size
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="file-writer", daemon=True)
            self._thread.start()
        self._jobs.put((sink, fn, args))

    def written(self, size: int) -> None:
        with self._lock:
            self._pending -= size

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            sink, fn, args = job
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - handed to the loop through the sink
                self.failures += 1
                if sink.error is None:
                    sink.error = exc
                log.warning("recording write failed: %s: %r", sink.path, exc)
            self.jobs_done += 1

    def stop(self, timeout: float = 10.0) -> bool:
        """Finish every queued job (files completed and closed), then end the thread. Blocking:
        called once the calls are gone, from a thread or at the end of the process."""
        self._stopped = True
        thread = self._thread
        if thread is None:
            return True
        self._jobs.put(_STOP)
        thread.join(timeout)
        return not thread.is_alive()


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
