"""RTP/RTCP port pairs from ``rtp_start_port..rtp_end_port``: an even port for RTP and the odd
one above it for RTCP (RFC 3550 §11), both bound before the pair is handed out.

The search starts after the pair handed out last and wraps around, so a port just released is
the last to be reused (late packets of the old call do not land in a new one). A port another
process holds (EADDRINUSE) is skipped; when every pair is taken, ``RtpPortsExhausted`` says so.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from .config import Config


class RtpPortsExhausted(OSError):
    """No free even/odd port pair is left in the configured range."""


@dataclass(slots=True)
class RtpPorts:
    """A bound pair: ``rtp`` on ``port`` (even), ``rtcp`` on ``port + 1``."""

    host: str
    port: int
    rtp: socket.socket
    rtcp: socket.socket
    allocator: RtpPortAllocator | None = None
    released: bool = False

    @property
    def rtcp_port(self) -> int:
        return self.port + 1

    def release(self, *, close_sockets: bool = True) -> None:
        """Give the pair back, closing both sockets unless a transport owns (and closes) them."""
        if self.released:
            return
        self.released = True
        if close_sockets:
            self.rtp.close()
            self.rtcp.close()
        if self.allocator is not None:
            self.allocator._release(self.port)


class RtpPortAllocator:
    """Hands out bound RTP/RTCP socket pairs from one port range; one per process."""

    def __init__(self, host: str, start: int, end: int) -> None:
        first = start + (start & 1)
        if first + 1 > end:
            raise ValueError(f"RTP port range {start}..{end} holds no even/odd pair")
        self.host = host
        self.first = first
        self.last = (end - 1) & ~1  # the last even port whose odd twin still fits
        self._next = first
        self._in_use: set[int] = set()
        self.allocated = 0
        self.busy_skipped = 0  # pairs held by another process when we tried them
        self.exhausted = 0

    @classmethod
    def from_config(cls, config: Config) -> RtpPortAllocator:
        return cls(config.sip_addr, config.rtp_start_port, config.rtp_end_port)

    @property
    def capacity(self) -> int:
        return (self.last - self.first) // 2 + 1

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    def allocate(self) -> RtpPorts:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        port = self._next
        for _ in range(self.capacity):
            candidate = port
            port = self.first if port + 2 > self.last else port + 2
            if candidate in self._in_use:
                continue
            pair = self._bind_pair(family, candidate)
            if pair is None:
                self.busy_skipped += 1
                continue
            self._in_use.add(candidate)
            self._next = port
            self.allocated += 1
            return RtpPorts(self.host, candidate, pair[0], pair[1], self)
        self.exhausted += 1
        raise RtpPortsExhausted(
            errno.EADDRINUSE,
            f"no free RTP port pair in {self.first}..{self.last + 1} on {self.host} "
            f"({len(self._in_use)} in use by this process)",
        )

    def _bind_pair(self, family: int, port: int) -> tuple[socket.socket, socket.socket] | None:
        bound: list[socket.socket] = []
        try:
            for p in (port, port + 1):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                bound.append(sock)
                sock.setblocking(False)
                sock.bind((self.host, p))
        except OSError as exc:
            for sock in bound:
                sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return None
            raise
        return bound[0], bound[1]

    def _release(self, port: int) -> None:
        self._in_use.discard(port)

    def stats(self) -> dict[str, int]:
        return {"capacity": self.capacity, "in_use": self.in_use, "allocated": self.allocated,
                "busy_skipped": self.busy_skipped, "exhausted": self.exhausted}
