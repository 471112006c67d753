"""The Outbox of an API WebSocket, over a real aiohttp server and client on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from transports.ws_session import Outbox


@pytest.fixture
async def server_socket() -> AsyncIterator[tuple[asyncio.Future, aiohttp.ClientWebSocketResponse]]:
    """(a future of the server side's WebSocketResponse, the connected client)."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future = loop.create_future()
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        accepted.set_result(ws)
        await done.wait()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        client = await http.ws_connect(f"http://127.0.0.1:{port}/ws")
        yield accepted, client
        done.set()
        await client.close()
    await runner.cleanup()


async def test_audio_past_the_ring_drops_the_oldest_and_counts_it(server_socket):
    accepted, client = server_socket
    ws = await accepted
    outbox = Outbox(ws, audio_capacity=10)
    outbox.event('{"event": "first"}')
    for i in range(100):                  # produced faster than anything can be sent
        outbox.audio(bytes([i]) * 4)
    await outbox.flush(5.0)
    assert outbox.audio_dropped == 90
    got = []
    while len(got) < 11:
        msg = await asyncio.wait_for(client.receive(), 5)
        got.append(msg.data)
    # The event first (it was produced first), then the newest 10 frames, in order.
    assert got[0] == '{"event": "first"}'
    assert got[1:] == [bytes([i]) * 4 for i in range(90, 100)]
    outbox.close()
    await outbox.wait_closed(2.0)
