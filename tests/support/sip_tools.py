"""Real peers around a gateway's SIP calls: SIPp answering or calling, a UDP socket that receives
the gateway's RTP (and answers it), the webhook an incoming call is announced to."""

from __future__ import annotations

import asyncio
import json
import socket
import wave
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from protocol.codecs import CodecInfo, Decoder, codec_info
from protocol.rtp import RtpPacket, pack_rtp
from tests.support.poll import until  # noqa: F401 - the SIP tests import it from here
from tests.support.sipp import Sipp, free_media_port, free_port, scenario, wait_echo


@asynccontextmanager
async def sipp_uas(tmp_path: Path, name: str, *, rtp_echo: bool = True, transport: str = "u1",
                   extra: tuple[str, ...] = ()) -> AsyncIterator[tuple[Sipp, int]]:
    """SIPp answering calls with scenario ``name`` on a free loopback port (media echoed back)."""
    kind = socket.SOCK_STREAM if transport.startswith("t") else socket.SOCK_DGRAM
    port = free_port(kind)
    media = free_media_port()
    args = ["-sf", scenario(name), "-i", "127.0.0.1", "-p", str(port), "-mi", "127.0.0.1", "-mp", str(media),
            "-t", transport, "-m", "1", *extra]
    if rtp_echo:
        args.append("-rtp_echo")
    async with Sipp(args, tmp_path) as sipp:
        if rtp_echo:
            await wait_echo(media)
        else:
            await asyncio.sleep(0)   # SIPp binds while the test sets up; its first INVITE retransmits anyway
        yield sipp, port


def sipp_uac(tmp_path: Path, name: str, gateway_port: int, *, transport: str = "u1", keys: dict[str, Any] | None = None,
             service: str = "gw", timeout: str = "20s", extra: tuple[str, ...] = ()) -> Sipp:
    """SIPp calling the gateway once with scenario ``name``; ``keys`` become [name] in the XML."""
    kind = socket.SOCK_STREAM if transport.startswith("t") else socket.SOCK_DGRAM
    args = [f"127.0.0.1:{gateway_port}", "-sf", scenario(name), "-i", "127.0.0.1", "-p", str(free_port(kind)),
            "-mi", "127.0.0.1", "-mp", str(free_media_port()), "-t", transport, "-m", "1", "-s", service,
            "-timeout", timeout, "-timeout_error"]
    # uac_call.xml offers one codec: PCMU unless the test names another.
    keys = {"pt": 0, "codec": "PCMU", "extra_header": "X-Test: 1", **(keys or {})}
    for key, value in keys.items():
        args += ["-key", key, str(value)]
    return Sipp([*args, *extra], tmp_path)


class RtpPeer(asyncio.DatagramProtocol):
    """The far end's media socket: keeps what the gateway sends, can send audio back."""

    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []
        self.sources: set[tuple[str, int]] = set()
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls) -> RtpPeer:
        peer = cls()
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: peer, local_addr=("127.0.0.1", 0))
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        if len(data) >= 12 and data[0] >> 6 == 2 and not 200 <= data[1] <= 204:
            try:
                self.packets.append(RtpPacket.parse(data))
            except Exception:  # noqa: BLE001 - a test socket keeps what it can read
                return
            self.sources.add((addr[0], addr[1]))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def audio(self, codec: CodecInfo | None = None, payload_type: int = 0) -> np.ndarray:
        """What arrived with ``payload_type``, decoded to 16 kHz PCM."""
        decoder = Decoder(codec or codec_info("pcmu"))
        chunks = [decoder.decode(p.payload) for p in self.packets if p.payload_type == payload_type]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    def send_audio(self, pcm8k_ulaw: bytes, addr: tuple[str, int], *, ssrc: int = 0x1234,
                   payload_type: int = 0) -> Callable[[], None]:
        """Stream µ-law audio to ``addr`` at 20 ms per packet; returns a function that stops it."""
        assert self.transport is not None
        transport = self.transport
        loop = asyncio.get_running_loop()
        state = {"n": 0, "handle": None}
        start = loop.time()

        def tick() -> None:
            n = state["n"]
            chunk = pcm8k_ulaw[n * 160:(n + 1) * 160]
            if len(chunk) < 160 or transport.is_closing():
                return
            transport.sendto(pack_rtp(payload_type, n & 0xFFFF, n * 160, ssrc, chunk, n == 0), addr)
            state["n"] = n + 1
            state["handle"] = loop.call_at(start + (n + 1) * 0.02, tick)

        tick()

        def stop() -> None:
            if state["handle"] is not None:
                state["handle"].cancel()

        return stop


class Webhook:
    """The application's webhook: every POST's JSON body is kept (and answered with ``status``)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        self.received = asyncio.Event()
        self.port = 0

    async def _post(self, request: web.Request) -> web.Response:
        self.bodies.append(json.loads(await request.text()))
        self.received.set()
        return web.Response(status=self.status, text="ok")

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[Webhook]:
        app = web.Application()
        app.router.add_post("/webhook", self._post)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the bound ephemeral port
        try:
            yield self
        finally:
            await runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook"

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        count = len(self.bodies)
        await until(lambda: len(self.bodies) > count, timeout, "a webhook POST")
        return self.bodies[count]


def write_wav(path: Path, pcm: np.ndarray, rate: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.astype("<i2").tobytes())
    return path


def read_wav(path: Path) -> tuple[np.ndarray, int, int]:
    """(samples interleaved, channels, rate)."""
    with wave.open(str(path), "rb") as wav:
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return data, wav.getnchannels(), wav.getframerate()
