"""GET /metrics through the real server, read with prometheus-client's own parser."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import base_url, connect
from tests.support.audio import frames, tone
from transports.gateway import start_gateway

API = "api-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"


async def scrape(http, gw, token: str | None = None) -> dict[tuple[str, tuple], float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(f"{base_url(gw)}/metrics", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_need_an_admin_token_when_tokens_are_set(gateway_config, http):
    gw = await start_gateway(gateway_config(api_tokens=[API], admin_tokens=[ADMIN]))
    try:
        async with http.get(f"{base_url(gw)}/metrics") as resp:
            assert resp.status == 401
        async with http.get(f"{base_url(gw)}/metrics", headers={"Authorization": f"Bearer {API}"}) as resp:
            assert resp.status == 403 and "admin" in (await resp.json())["error"]
        figures = await scrape(http, gw, ADMIN)
        assert figures[("activecall_calls_max", ())] == 1000
    finally:
        await gw.stop()


async def test_calls_refusals_drops_clock_loop_and_engines_are_counted(gateway_config, http):
    gw = await start_gateway(gateway_config(max_calls=1))
    try:
        client = await connect(http, gw, id="m1")
        await client.send({"command": "invite", "option": {"codec": "pcm"}})
        await client.wait_event("answer")
        refused = await connect(http, gw, id="m2")
        await refused.send({"command": "invite", "option": {"codec": "pcm"}})   # past max_calls
        await refused.wait_closed()
        # A burst far faster than real time: the 50-frame input pipe drops the oldest.
        for frame in frames(tone(440, 4.0, 16000), 320):
            await client.ws.send_bytes(frame.tobytes())
        await client.send({"command": "tts", "text": "metrics", "playId": "m"})
        await client.wait_event("trackEnd", timeout=10)
        await asyncio.sleep(0.3)
        figures = await scrape(http, gw)
        assert figures[("activecall_calls_live", (("type", "websocket"),))] == 1
        assert figures[("activecall_calls_live", (("type", "sip"),))] == 0
        assert figures[("activecall_admissions_refused_total", ())] == 1
        assert 0 < figures[("activecall_inbound_frames_dropped_total", ())] < 200
        assert figures[("activecall_binary_frames_dropped_total", ())] == 0
        assert figures[("activecall_clock_ticks_total", ())] > 10
        assert figures[("activecall_clock_tracks", ())] == 1
        assert 0 <= figures[("activecall_clock_lateness_seconds", (("quantile", "0.99"),))] < 1
        assert figures[("activecall_event_loop_lag_seconds_count", ())] >= 3
        engines = {labels for (name, labels) in figures if name == "activecall_engine_submitted_total"}
        assert engines and max(figures[("activecall_engine_submitted_total", lab)] for lab in engines) >= 1
        assert figures[("activecall_dump_written_bytes_total", ())] > 0
        await client.ws.close()
        await client.wait_closed()
        await asyncio.sleep(0.2)
        after = await scrape(http, gw)
        assert after[("activecall_calls_live", (("type", "websocket"),))] == 0
        # Counters never go back when calls end.
        assert after[("activecall_inbound_frames_dropped_total", ())] == \
            figures[("activecall_inbound_frames_dropped_total", ())]
    finally:
        await gw.stop()


@pytest.mark.parametrize("path", ["/health"])
async def test_health_stays_open(gateway_config, http, path):
    gw = await start_gateway(gateway_config(api_tokens=[API]))
    try:
        async with http.get(f"{base_url(gw)}{path}") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
    finally:
        await gw.stop()
