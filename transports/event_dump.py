"""The event dump: `<dump_root>/<id>.events.jsonl`, every command and event of a session.

One line per command and event, `{"type": "command"|"event", "timestamp": ms, "content": "<the
JSON text>"}` as the original active-call writes them (credentials redacted). The event loop only
formats and queues lines; one `DumpWriter` thread per gateway opens the files and writes them, so
a slow disk never stalls a call.

Bounded by policy: each dump may write `max_bytes` (then a last line says it stopped), and the lines
queued for the writer may hold `queue_bytes` in all (past that a line is not queued; the next one
that is says how many were lost, and the count is logged and exported). The file is opened with
O_NOFOLLOW and must be a regular file: a symlink or FIFO planted at the dump's path is refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time
from collections import deque
from pathlib import Path

import structlog

from protocol.redact import redact_json_text

from .recording_paths import safe_session_id

__all__ = ["DumpWriter", "EventDump"]

log = structlog.get_logger("dump")

_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK
          | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))


def _line(kind: str, content: str) -> bytes:
    return (json.dumps({"type": kind, "timestamp": int(time.time() * 1000), "content": content},
                       ensure_ascii=False) + "\n").encode()


class DumpFile:
    """The writer thread's side of one dump: its descriptor, opened on the thread."""

    __slots__ = ("path", "fd", "failed")

    def __init__(self, path: Path, fd: int | None = None) -> None:
        self.path = path
        self.fd = fd
        self.failed = False

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, _FLAGS, 0o644)
        except OSError as exc:
            # ELOOP: a symlink where the dump should be. Nothing is written through it.
            self.failed = True
            log.warning("event dump disabled", path=str(self.path), error=exc.strerror or str(exc))
            return
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            self.failed = True
            log.warning("event dump disabled", path=str(self.path), error="not a regular file")
            return
        os.set_blocking(fd, True)
        self.fd = fd

    def write(self, data: bytes) -> None:
        if self.fd is None:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            self.failed = True
            log.warning("event dump write failed; dump stopped", path=str(self.path), error=exc.strerror)
            self.close()

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


class DumpWriter:
    """The one thread that writes every dump; a bounded queue in front of it."""

    def __init__(self, queue_bytes: int = 16 << 20) -> None:
        self.queue_bytes = queue_bytes
        self.pending = 0                     # bytes queued and not yet written
        self.lost_lines = 0                  # lines refused because the queue was full
        self.written_bytes = 0
        self._ops: deque[tuple[DumpFile, str, bytes]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="event-dump-writer", daemon=True)
            self._thread.start()

    def submit(self, file: DumpFile, op: str, data: bytes = b"") -> bool:
        """Queue an op ("open", "write", "close"); False when a write does not fit the queue."""
        with self._cond:
            if op == "write":
                if self.pending + len(data) > self.queue_bytes:
                    self.lost_lines += 1
                    return False
                self.pending += len(data)
            self._ops.append((file, op, data))
            self._cond.notify()
        return True

    async def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then end the thread (waited for off the event loop)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, timeout)
            if thread.is_alive():
                log.error("event dump writer did not finish in time", pending_bytes=self.pending)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._ops and not self._stopping:
                    self._cond.wait()
                if not self._ops:
                    return
                file, op, data = self._ops.popleft()
            try:
                if op == "open":
                    file.open()
                elif op == "write":
                    file.write(data)
                else:
                    file.close()
            except Exception:  # noqa: BLE001 - one dump's defect must not end every dump
                log.exception("event dump writer failed on a dump", path=str(file.path))
            finally:
                if op == "write":
                    with self._cond:
                        self.pending -= len(data)
                        self.written_bytes += len(data)


class EventDump:
    """One session's dump. `command`/`event` format on the loop and queue; never block."""

    def __init__(self, root: str, session_id: str, writer: DumpWriter, max_bytes: int = 64 << 20,
                 file: DumpFile | None = None) -> None:
        # A session id comes from a query string: never let it name a path outside dump_root.
        self.path = Path(root) / f"{safe_session_id(session_id)}.events.jsonl"
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self.lost_lines = 0
        self._unreported_lost = 0
        self._stopped = False
        self._writer = writer
        self._file = file if file is not None else DumpFile(self.path)
        if file is None:
            writer.submit(self._file, "open")

    @property
    def disabled(self) -> bool:
        """The file could not be opened (or written): nothing more is dumped."""
        return self._file.failed

    def command(self, text: str) -> None:
        self._write("command", text)

    def event(self, text: str) -> None:
        self._write("event", text)

    def _write(self, kind: str, text: str) -> None:
        if self._stopped or self._file.failed:
            return
        # Commands carry provider keys and SIP passwords; a dump is read by more people than the API.
        data = _line(kind, redact_json_text(text))
        if self._unreported_lost:
            data = _line("dump", f"{self._unreported_lost} lines were not written: the dump writer fell "
                                 "behind") + data
        if self.queued_bytes + len(data) > self.max_bytes:
            self._stopped = True
            last = _line("dump", f"dump stopped: its budget of {self.max_bytes} bytes is used up; later "
                                 "commands and events are not written")
            if self._writer.submit(self._file, "write", last):
                self.queued_bytes += len(last)
            return
        if self._writer.submit(self._file, "write", data):
            self.queued_bytes += len(data)
            self._unreported_lost = 0
        else:
            self.lost_lines += 1
            self._unreported_lost += 1

    def close(self) -> None:
        if self.lost_lines:
            log.warning("event dump lost lines: the writer fell behind", path=str(self.path), lines=self.lost_lines)
        self._writer.submit(self._file, "close")
