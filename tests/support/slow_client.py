"""A client that stops reading its events: it sends `custom` commands whose echoes it never reads
until the gateway, past the connection's event budget, cuts it off and hangs its call up."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from tests.support.poll import until

BLOB = "x" * (512 << 10)


async def flood_until_cut(http: aiohttp.ClientSession, url: str,
                          ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str, aiohttp.WSMessage]:
    """Flood, wait until the gateway lists no call, then read what the client was sent: some
    events, then the end of the connection. Its close code, close reason and the last message."""
    for _ in range(40):
        if ws.closed:
            break
        try:
            await asyncio.wait_for(ws.send_str(json.dumps({"command": "custom", "data": BLOB})), 5)
        except (ConnectionError, asyncio.TimeoutError):
            break      # the gateway stopped reading too, or closed the connection

    async def no_calls() -> bool:
        async with http.get(f"{url}/call/lists") as resp:
            return not (await resp.json())["calls"]

    await until(no_calls, timeout=20, what="the slow client's call ends")
    while True:
        msg = await asyncio.wait_for(ws.receive(), 10)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return ws.close_code, str(msg.extra or ""), msg


def hangup_reasons(dump: Path) -> list[str]:
    """The reasons of the `hangup` events in a call's event dump, in order."""
    records = [json.loads(line) for line in dump.read_text().splitlines()]
    contents = [json.loads(r["content"]) for r in records if r.get("type") == "event"]
    return [c["reason"] for c in contents if isinstance(c, dict) and c.get("event") == "hangup"]
