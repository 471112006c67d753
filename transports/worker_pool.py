"""Worker processes for WebRTC calls: the WorkerPool child of the gateway and its workers.

Each worker is a complete gateway (`active-call --worker SOCKET`) on a Unix socket in a private
directory, with the front's configuration less what only the front does (listening for SIP,
registering, checking tokens). The pool is a supervisor: a `WorkerProcess` actor per worker, which
starts the process, waits until it answers on its socket, and fails when the process ends, so that
the pool starts it again (`webrtc.worker_restarts` in `webrtc.worker_period`, then the pool fails
and the gateway's own limits apply). Stopping a worker is a drain: SIGTERM, then SIGKILL after
`webrtc.worker_drain_timeout`. A worker also ends by itself when its front goes away (its stdin,
a pipe from the front, reaches end of file), so no worker outlives its front.

The front places each call on the ready worker with the fewest calls (`PlaceCall`), and is told
when it ends (`CallLeft`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import structlog

from actors.base import Actor
from actors.ref import ActorRef, ChildExited, ReplyError
from actors.supervisor import Backoff, ChildSpec, Restart, Strategy, Supervisor

from .config import Config

log = structlog.get_logger("workers")

WORKER_ORIGIN = "http://worker"   # the host part of URLs on a worker's Unix socket (not resolved)
POLL = 0.05


@dataclass(frozen=True, slots=True)
class WorkerAddress:
    index: int
    path: str    # the worker's Unix socket
    pid: int


class NoWorker(ReplyError):
    """No worker process is ready to take a call (all starting again, or none configured)."""


class WorkerDied(Exception):
    """A worker process ended without being asked to: its WorkerProcess actor fails with it."""


class WorkerStartFailed(Exception):
    pass


@dataclass(frozen=True, slots=True)
class PlaceCall:
    """Ask the pool: the worker to run this call on (the ready one with the fewest calls)."""

    session_id: str


@dataclass(frozen=True, slots=True)
class CallLeft:
    """Tell the pool: the call placed on a worker has ended (or was never made)."""

    session_id: str
    lost: bool = False    # it ended because its worker died


@dataclass(frozen=True, slots=True)
class GetWorkers:
    """Ask the pool: one dict of figures per configured worker, in index order."""


@dataclass(frozen=True, slots=True)
class WorkerReady:
    """A WorkerProcess tells its pool once its process answers on its socket."""

    address: WorkerAddress


def worker_config(config: Config) -> dict[str, object]:
    """The configuration table a worker runs with: the front's, less what only the front does."""
    table = json.loads(json.dumps(dataclasses.asdict(config)))
    table.update(sip_addr="127.0.0.1", udp_port=0, tcp_port=None, register_users=[], api_tokens=[],
                 admin_tokens=[], allowed_origins=[])
    table["webrtc"]["workers"] = 0
    return table


def worker_session(path: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path))


class WorkerProcess(Actor):
    """One worker process: alive while the process is; its end (unasked) is this actor's failure."""

    def __init__(self, index: int, runtime: str, config_path: str, config: Config) -> None:
        self.index = index
        self.path = os.path.join(runtime, f"worker-{index}.sock")
        self.config_path = config_path
        self.webrtc = config.webrtc
        self.proc: asyncio.subprocess.Process | None = None
        self.watcher: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "transports.main", "--worker", self.path, "--worker-config", self.config_path,
            "--worker-index", str(self.index),
            stdin=asyncio.subprocess.PIPE)
        try:
            await asyncio.wait_for(self._until_ready(), self.webrtc.worker_start_timeout)
        except asyncio.TimeoutError:
            await self._kill()
            raise WorkerStartFailed(f"worker {self.index} did not answer on {self.path} within "
                                    f"{self.webrtc.worker_start_timeout} s (webrtc.worker_start_timeout)") from None
        except WorkerStartFailed:
            await self._kill()
            raise
        except BaseException:
            # Stopped while starting (the gateway stops meanwhile): the process goes with it; the
            # loop's child watcher reaps it.
            if self.proc.returncode is None:
                self.proc.kill()
            self._close_stdin()
            raise
        died = self.outside(self._died)
        proc = self.proc
        self.watcher = asyncio.create_task(self._watch(proc, died), name=f"worker-{self.index}-watch")
        assert self.actor_ref.parent is not None
        self.actor_ref.parent.tell(WorkerReady(WorkerAddress(self.index, self.path, proc.pid)))
        log.info("worker ready", worker=self.index, pid=proc.pid)

    async def _until_ready(self) -> None:
        assert self.proc is not None
        while True:
            if self.proc.returncode is not None:
                raise WorkerStartFailed(f"worker {self.index} exited with status {self.proc.returncode} "
                                        "while starting")
            if os.path.exists(self.path):
                try:
                    async with worker_session(self.path) as session:
                        async with session.get(f"{WORKER_ORIGIN}/health",
                                               timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                            if resp.status == 200:
                                return
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                    pass
            await asyncio.sleep(POLL)

    @staticmethod
    async def _watch(proc: asyncio.subprocess.Process, died: object) -> None:
        status = await proc.wait()
        died(status)  # type: ignore[operator]

    def _died(self, status: int) -> None:
        pid = self.proc.pid if self.proc is not None else None
        log.error("worker process ended", worker=self.index, pid=pid, status=status)
        raise WorkerDied(f"worker {self.index} (pid {pid}) exited with status {status}")

    async def on_stop(self) -> None:
        """The drain: SIGTERM (the worker ends its calls, each with its hangup), SIGKILL past the timeout."""
        self._unwatch()
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.webrtc.worker_drain_timeout)
        except asyncio.TimeoutError:
            log.warning("worker did not drain in time; killing it", worker=self.index, pid=proc.pid,
                        timeout=self.webrtc.worker_drain_timeout)
            await self._kill()
        self._close_stdin()

    async def on_failure(self, error: BaseException) -> None:
        self._unwatch()
        await self._kill()

    def _unwatch(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None

    async def _kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            await proc.wait()
        self._close_stdin()

    def _close_stdin(self) -> None:
        if self.proc is not None and self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()


class WorkerPool(Supervisor):
    """`workers` WorkerProcess children and the calls placed on each."""

    def __init__(self, config: Config) -> None:
        webrtc = config.webrtc
        self.runtime: str | None = None
        self.config_path = ""
        if webrtc.workers:
            self.runtime = tempfile.mkdtemp(prefix="active-call-workers-")   # 0700: only this user connects
            self.config_path = os.path.join(self.runtime, "config.json")
            with open(self.config_path, "w") as fh:
                json.dump(worker_config(config), fh)
        sup = config.supervision
        specs = [
            ChildSpec(id=f"worker-{i}", restart=Restart.PERMANENT,
                      shutdown=webrtc.worker_drain_timeout + 2.0,
                      backoff=Backoff(initial=sup.backoff_initial, factor=2.0, maximum=sup.backoff_max),
                      intensity=webrtc.worker_restarts, period=webrtc.worker_period,
                      start=_starter(i, self.runtime or "", self.config_path, config))
            for i in range(webrtc.workers)
        ]
        super().__init__(specs, strategy=Strategy.ONE_FOR_ONE)
        self.ready: dict[int, WorkerAddress] = {}
        self.calls: dict[int, set[str]] = {i: set() for i in range(webrtc.workers)}
        self.placed: dict[str, int] = {}
        self.lost_calls = dict.fromkeys(range(webrtc.workers), 0)   # calls each worker took with it as it died

    async def on_receive(self, message: object) -> object:
        if isinstance(message, PlaceCall):
            return self._place(message.session_id)
        if isinstance(message, CallLeft):
            index = self.placed.pop(message.session_id, None)
            if index is not None:
                self.calls[index].discard(message.session_id)
                self.lost_calls[index] += message.lost
            return None
        if isinstance(message, WorkerReady):
            self.ready[message.address.index] = message.address
            return None
        if isinstance(message, GetWorkers):
            counts = self.restart_counts()
            return [{"index": i, "ready": i in self.ready, "pid": self.ready[i].pid if i in self.ready else None,
                     "path": self.ready[i].path if i in self.ready else None,
                     "calls": len(self.calls[i]), "restarts": counts.get(f"worker-{i}", 0),
                     "lost_calls": self.lost_calls[i]}
                    for i in sorted(self.calls)]
        return await super().on_receive(message)

    def _place(self, session_id: str) -> WorkerAddress:
        if not self.ready:
            raise NoWorker("no worker process is ready for a WebRTC call (starting or restarting)")
        index = min(self.ready, key=lambda i: (len(self.calls[i]), i))
        self.calls[index].add(session_id)
        self.placed[session_id] = index
        return self.ready[index]

    async def on_child_exited(self, spec: ChildSpec, exit: ChildExited) -> None:
        index = int(spec.id.rsplit("-", 1)[1])
        # Its calls are gone with it; their connections end them at the front (CallLeft, lost).
        self.ready.pop(index, None)

    async def on_stop(self) -> None:
        try:
            await super().on_stop()
        finally:
            if self.runtime is not None:
                shutil.rmtree(self.runtime, ignore_errors=True)

    async def on_failure(self, error: BaseException) -> None:
        try:
            await super().on_failure(error)
        finally:
            if self.runtime is not None:
                shutil.rmtree(self.runtime, ignore_errors=True)


def _starter(index: int, runtime: str, config_path: str, config: Config) -> Callable[[ActorRef], ActorRef]:
    def start(parent: ActorRef) -> ActorRef:
        return WorkerProcess.start(index, runtime, config_path, config, parent=parent, name=f"worker-{index}")

    return start
