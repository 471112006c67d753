"""Raw loopback peers for transport tests: a UDP socket with a receive queue, SIP text builders."""

from __future__ import annotations

import asyncio
import secrets


class UdpPeer(asyncio.DatagramProtocol):
    """A UDP socket on 127.0.0.1 whose datagrams are queued for ``recv``."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, port: int = 0) -> UdpPeer:
        loop = asyncio.get_running_loop()
        peer = cls()
        await loop.create_datagram_endpoint(lambda: peer, local_addr=("127.0.0.1", port))
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.queue.put_nowait((data, (addr[0], addr[1])))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    async def recv(self, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]]:
        return await asyncio.wait_for(self.queue.get(), timeout)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def sip_request(
    method: str,
    *,
    port: int,
    call_id: str | None = None,
    cseq: int = 1,
    branch: str | None = None,
    to_tag: str | None = None,
    via_host: str = "127.0.0.1",
    via_port: int | None = None,
    rport: bool = True,
    transport: str = "UDP",
    uri: str = "sip:gw@127.0.0.1",
    extra: str = "",
    body: bytes = b"",
    cseq_method: str | None = None,
) -> bytes:
    """A well-formed request as a peer at 127.0.0.1:``port`` would send it."""
    branch = branch or "z9hG4bK" + secrets.token_hex(6)
    call_id = call_id or secrets.token_hex(8) + "@127.0.0.1"
    via = f"SIP/2.0/{transport} {via_host}:{via_port or port};branch={branch}" + (";rport" if rport else "")
    to = "<sip:gw@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    head = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: {via}\r\n"
        f"From: <sip:peer@127.0.0.1:{port}>;tag=peer1\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        "Max-Forwards: 70\r\n"
        f"Contact: <sip:peer@127.0.0.1:{port}>\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body
