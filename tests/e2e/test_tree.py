"""The gateway's supervision tree, built for real and compared with the drawing in
docs/architecture.md: names, order and actor classes."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from actors import GetChild, GetRestartCounts
from actors.supervisor import GetChildren
from aiohttp import WSMsgType, web

from tests.e2e.test_call_ws import connect
from tests.support.servers import local_server

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def drawn_tree() -> list[tuple[int, str, str]]:
    """(depth, name, class) for each line of the drawing under "The supervision tree"."""
    text = DOC.read_text()
    block = text[text.index("## The supervision tree"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    rows = []
    for line in block.strip().splitlines():
        match = re.match(r"^([│ ]*)(?:[├└]── )?([^:]+): (\w+)", line)
        assert match, f"unreadable tree line: {line!r}"
        prefix, name, cls = match.groups()
        depth = 0 if not line.lstrip().startswith(("├", "└")) and not prefix else len(prefix) // 4 + 1
        rows.append((depth, name.strip(), cls))
    return rows


async def children(ref):
    return await ref.ask(GetChildren(), timeout=2)


async def test_the_tree_is_as_drawn(local_fetch_gateway, http):
    gateway = local_fetch_gateway
    drawn = drawn_tree()
    assert drawn[0] == (0, "gateway", "Supervisor")
    top = [(name, cls) for depth, name, cls in drawn if depth == 1]
    built = await children(gateway.ref)
    assert [(id, ref.actor_class.__name__) for id, ref in built] == top

    # a call with every child: recorder, mediaPass, ASR (and the track) at answer, TTS on the first tts
    async def echo(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    peer = local_server("/media", echo)
    port = await peer.__aenter__()
    client = await connect(http, gateway, id="tree")
    await client.send({"command": "invite", "option": {
        "codec": "pcm", "recorder": {"recorderFile": "tree.wav"}, "asr": {"provider": "pocketsphinx"},
        "mediaPass": {"url": f"ws://127.0.0.1:{port}/media", "inputSampleRate": 16000, "outputSampleRate": 16000}}})
    await client.wait_event("answer")
    await client.send({"command": "tts", "text": "hello", "playId": "p1"})
    await client.wait_event("trackStart", count=2)
    calls = await gateway.ref.ask(GetChild("calls"), timeout=2)
    (call_id, call), = await children(calls)
    assert call_id == "tree" and call.actor_class.__name__ == "Call"
    call_rows = [(name, cls) for depth, name, cls in drawn if depth == 3]
    assert [(id, ref.actor_class.__name__) for id, ref in await children(call)] == call_rows
    await client.send({"command": "hangup"})
    await client.wait_closed()
    await peer.__aexit__(None, None, None)


async def test_an_engine_host_that_gives_an_engine_up_is_restarted_by_the_gateway(gateway):
    class Fragile:
        def die(self):
            raise SystemExit("engine thread dies")

    engines = gateway.engines
    engines.register("fragile", Fragile)
    before = await gateway.ref.ask(GetChild("engines"), timeout=2)
    limit = gateway.config.supervision.engine_restarts
    for kill in range(limit + 1):
        try:
            await asyncio.wait_for(engines.call("fragile", "die"), 2.0)
        except Exception:  # noqa: BLE001 - EngineStopped: the thread died, as intended
            pass
        for _ in range(300):   # the death is seen and the engine started again (or given up)
            if engines.restarts.get("fragile", 0) == kill + 1 or kill == limit:
                break
            await asyncio.sleep(0.01)
    for _ in range(200):
        after = await gateway.ref.ask(GetChild("engines"), timeout=2)
        if after is not None and after is not before:
            break
        await asyncio.sleep(0.01)
    assert after is not None and after is not before, "the engine host was not restarted"
    counts = await gateway.ref.ask(GetRestartCounts(), timeout=2)
    assert counts["engines"] == 1 and counts["calls"] == 0 and counts["clock"] == 0
    # restarted with a clean record: the engine runs again
    assert engines.given_up("fragile") is None
