"""A client that stops reading its events: the gateway does not queue them without bound; past the
connection's event budget it closes the connection with a reason and the call hangs up."""

from __future__ import annotations

import aiohttp

from tests.support.slow_client import flood_until_cut, hangup_reasons
from transports.gateway import start_gateway


async def test_a_client_that_never_reads_is_closed_and_its_call_hangs_up(gateway_config, tmp_path):
    gw = await start_gateway(gateway_config(event_queue_bytes=2 << 20))
    url = "http://%s:%d" % gw.http_address
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{url}/call?id=slow", max_msg_size=0)
            await ws.send_json({"command": "invite", "option": {"codec": "pcm"}})
            close_code, close_reason, _ = await flood_until_cut(http, url, ws)
            assert close_code in (1008, 1006), close_code     # 1006: reset mid-read
            if close_code == 1008:
                assert "client too slow" in close_reason
    finally:
        await gw.stop()
    reasons = hangup_reasons(tmp_path / "dumps" / "slow.events.jsonl")
    assert reasons and reasons[-1] == "client_too_slow"
