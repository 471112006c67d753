"""Shared fixtures: an in-process gateway on an ephemeral loopback port, and a WebSocket client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from transports.config import parse_config
from transports.gateway import Gateway, start_gateway


@pytest.fixture
def gateway_config(tmp_path):
    def make(**overrides: Any):
        table = {
            "http_addr": "127.0.0.1:0",
            "dump_root": str(tmp_path / "dumps"),
            "media_root": str(tmp_path / "media"),
            "recorder_root": str(tmp_path / "recorders"),
            "log_level": "warning",
            # SIP on an ephemeral loopback port (UDP and TCP share it), so gateways run side by side.
            "sip_addr": "127.0.0.1",
            "udp_port": 0,
            # Most tests never recognise speech: the ones that do load the model themselves.
            "whisper": {"preload": False},
        }
        table.update(overrides)
        return parse_config(table)

    return make


@pytest.fixture
async def gateway(gateway_config) -> AsyncIterator[Gateway]:
    gw = await start_gateway(gateway_config())
    try:
        yield gw
    finally:
        await gw.stop()


@pytest.fixture
async def local_fetch_gateway(gateway_config) -> AsyncIterator[Gateway]:
    """A gateway whose fetch policy allows the local test servers (127.0.0.1 and ::1): internal
    addresses are refused by default, as they should be on a real network."""
    gw = await start_gateway(gateway_config(fetch={"allow_hosts": ["127.0.0.1", "::1"]}))
    try:
        yield gw
    finally:
        await gw.stop()


def base_url(gw: Gateway) -> str:
    host, port = gw.http_address
    return f"http://{host}:{port}"


@dataclass
class CallClient:
    """A real WebSocket client of the API: commands out, events and binary audio in."""

    ws: aiohttp.ClientWebSocketResponse
    events: list[dict[str, Any]] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)
    _reader: asyncio.Task | None = None
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.events.append(json.loads(msg.data))
            elif msg.type == aiohttp.WSMsgType.BINARY:
                self.audio.append(msg.data)
            self._new.set()
        self._new.set()

    async def send(self, obj: Any) -> None:
        await self.ws.send_str(obj if isinstance(obj, str) else json.dumps(obj))

    def of(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]

    async def wait_event(self, name: str, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        async def until() -> None:
            while len(self.of(name)) < count:
                if self._reader is not None and self._reader.done():
                    raise AssertionError(f"connection closed before {count} {name!r} events: {self.events}")
                self._new.clear()
                await self._new.wait()

        await asyncio.wait_for(until(), timeout)
        return self.of(name)

    async def wait_audio(self, frames: int, timeout: float = 5.0) -> None:
        async def until() -> None:
            while len(self.audio) < frames:
                if self._reader is not None and self._reader.done():
                    raise AssertionError("connection closed while waiting for audio")
                self._new.clear()
                await self._new.wait()

        await asyncio.wait_for(until(), timeout)

    async def wait_closed(self, timeout: float = 5.0) -> None:
        assert self._reader is not None
        await asyncio.wait_for(self._reader, timeout)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def connect(http: aiohttp.ClientSession, gw: Gateway, path: str = "/call", **params: Any) -> CallClient:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    ws = await http.ws_connect(f"{base_url(gw)}{path}" + (f"?{query}" if query else ""))
    client = CallClient(ws)
    client.start()
    return client
