"""SIPp as a real peer for tests: scenario files from scripts/sipp/, free loopback ports, and a
process that is always stopped (terminate, then kill) whatever the test does.

SIPp runs as an asyncio subprocess so the gateway code under test keeps serving on the same loop.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scripts" / "sipp"
PCAPS = Path("/usr/share/sip-tester")
SIPP = shutil.which("sipp")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_media_port() -> int:
    """An even port p with p, p+1, p+2 and p+3 free for UDP: SIPp binds p and p+2 (and RTCP)."""
    for _ in range(100):
        port = free_port() & ~1
        if port + 3 > 65535:
            continue
        socks = []
        try:
            for p in range(port, port + 4):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free media port block on 127.0.0.1")


class Sipp:
    """One SIPp process; use ``async with`` so it is stopped on every path."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        if SIPP is None:
            raise RuntimeError("sipp is not installed (Debian package sip-tester)")
        self.args = [SIPP, *args, "-nostdin", "-trace_err"]
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.stdout = b""
        self.stderr = b""

    async def __aenter__(self) -> Sipp:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, cwd=self.cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait(self, timeout: float) -> int:
        """The exit code; TimeoutError (after stopping it) if SIPp is still running at ``timeout``."""
        assert self.proc is not None
        try:
            self.stdout, self.stderr = await asyncio.wait_for(self.proc.communicate(), timeout)
        except TimeoutError:
            await self.stop()
            raise
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    def errors(self) -> str:
        """SIPp's error log and output, for an assertion message."""
        logs = sorted(self.cwd.glob("*_errors.log"))
        text = "\n".join(p.read_text(errors="replace")[-3000:] for p in logs)
        return f"exit={self.proc.returncode if self.proc else None}\n{text}\n{self.stderr.decode(errors='replace')[-2000:]}"


async def wait_echo(port: int, timeout: float = 5.0) -> None:
    """Wait until SIPp's RTP echo on ``port`` answers (it binds a moment after starting)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            s.sendto(b"probe", ("127.0.0.1", port))
            try:
                await asyncio.wait_for(loop.sock_recv(s, 64), 0.1)
                return
            except TimeoutError:
                continue
    raise TimeoutError(f"no RTP echo on 127.0.0.1:{port} within {timeout} s")


def scenario(name: str) -> str:
    path = SCENARIOS / name
    if not path.exists():
        raise FileNotFoundError(path)
    return str(path)
