"""Files a client makes the gateway write (event dumps, recordings), attacked through the server."""

from __future__ import annotations

import asyncio
import json
import os

from tests.conftest import connect
from transports.gateway import start_gateway


async def wait_for(predicate, what: str, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_symlink_planted_at_the_dump_path_is_not_followed(gateway, http, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    (tmp_path / "dumps").mkdir()
    (tmp_path / "dumps" / "evil.events.jsonl").symlink_to(outside)
    client = await connect(http, gateway, id="evil")
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    await client.send({"command": "hangup"})
    await client.wait_closed()
    await client.wait_event("hangup")
    # A dump of another session is written, so the writer has passed the planted link by now.
    other = await connect(http, gateway, id="honest")
    await other.send({"command": "hangup"})
    await other.wait_closed()
    honest = tmp_path / "dumps" / "honest.events.jsonl"
    await wait_for(lambda: honest.exists() and "hangup" in honest.read_text(), "the honest dump")
    assert outside.read_text() == "precious\n"
    assert os.path.islink(tmp_path / "dumps" / "evil.events.jsonl")


async def test_a_dump_stops_at_its_budget_with_a_last_line(gateway_config, http, tmp_path):
    gw = await start_gateway(gateway_config(dump={"max_bytes": 300_000}))
    try:
        client = await connect(http, gw, id="flood")
        frame = "{" + '"\\u0001' * 15_000           # malformed frames that grow when escaped
        for _ in range(5):
            await client.send(frame)
        errors = await client.wait_event("error", count=5, timeout=10)
        assert all(e["code"] == 400 for e in errors)   # the call answers every bad command
        await client.send({"command": "invite", "option": {"codec": "pcm"}})
        await client.wait_event("answer")               # and goes on
        await client.send({"command": "hangup"})
        await client.wait_closed()
    finally:
        await gw.stop()                                   # the writer has written all it queued
    path = tmp_path / "dumps" / "flood.events.jsonl"
    data = path.read_bytes()
    lines = [json.loads(line) for line in data.decode().splitlines()]
    last = lines[-1]
    assert last["type"] == "dump" and "budget of 300000 bytes" in last["content"]
    assert len(data) <= 300_000 + 300
    assert lines[0]["type"] == "command"
