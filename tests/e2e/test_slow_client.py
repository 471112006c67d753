"""A client that stops reading its events: the gateway does not queue them without bound; past the
connection's event budget it closes the connection with a reason and the call hangs up."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from transports.gateway import start_gateway


async def test_a_client_that_never_reads_is_closed_and_its_call_hangs_up(gateway_config, tmp_path):
    gw = await start_gateway(gateway_config(event_queue_bytes=2 << 20))
    url = "http://%s:%d" % gw.http_address
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{url}/call?id=slow", max_msg_size=0)
            await ws.send_json({"command": "invite", "option": {"codec": "pcm"}})
            blob = "x" * (512 << 10)
            # Echoed back as `custom` events that this client never reads.
            for _ in range(40):
                if ws.closed:
                    break
                try:
                    await asyncio.wait_for(ws.send_str(json.dumps({"command": "custom", "data": blob})), 5)
                except (ConnectionError, asyncio.TimeoutError):
                    break
            deadline = time.monotonic() + 20
            while True:
                async with http.get(f"{url}/call/lists") as resp:
                    calls = (await resp.json())["calls"]
                if not calls:
                    break
                assert time.monotonic() < deadline, f"the slow client's call is still up: {calls}"
                await asyncio.sleep(0.05)
            # What the client finally reads: some events, then the close with its reason (or a reset).
            close_code, close_reason = None, ""
            while True:
                msg = await asyncio.wait_for(ws.receive(), 10)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    close_code, close_reason = ws.close_code, str(msg.extra or "")
                    break
            assert close_code in (1008, 1006), close_code
            if close_code == 1008:
                assert "client too slow" in close_reason
    finally:
        await gw.stop()
    dump = (tmp_path / "dumps" / "slow.events.jsonl").read_text().splitlines()
    contents = [json.loads(json.loads(line)["content"]) for line in dump if json.loads(line).get("type") == "event"]
    hangups = [c for c in contents if isinstance(c, dict) and c.get("event") == "hangup"]
    assert hangups and hangups[-1]["reason"] == "client_too_slow"
