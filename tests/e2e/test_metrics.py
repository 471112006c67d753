"""GET /metrics through the real server, read with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import json

import aiohttp
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
        # The figures other threads and periodic samplers feed: the dump writer, the loop-lag probe.
        figures = await poll_scrape(http, gw, lambda f: f.get(("activecall_dump_written_bytes_total", ()), 0) > 0
                                    and f.get(("activecall_event_loop_lag_seconds_count", ()), 0) >= 3)
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
        after = await poll_scrape(http, gw, lambda f: f.get(("activecall_calls_live", (("type", "websocket"),))) == 0)
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


async def poll_scrape(http, gw, ready, timeout: float = 10.0) -> dict[tuple[str, tuple], float]:
    """Scrape until `ready(figures)` holds (the figures move when calls let go, not at once)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        figures = await scrape(http, gw)
        if ready(figures):
            return figures
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"metrics did not reach the expected figures: "
                                 f"{ {k: v for k, v in figures.items() if 'ended' in k[0] or 'jitter' in k[0]} }")
        await asyncio.sleep(0.05)


def ended(outcome: str):
    return ("activecall_calls_ended_total", (("outcome", outcome),))


async def test_calls_are_counted_by_outcome_and_their_playout_jitter_observed(gateway_config, http):
    gw = await start_gateway(gateway_config())
    try:
        clients = {}
        for sid in ("by-command", "by-close", "by-kill"):
            clients[sid] = await connect(http, gw, id=sid)
            await clients[sid].send({"command": "invite", "option": {"codec": "pcm"}})
            await clients[sid].wait_event("answer")
        for client in clients.values():
            await client.wait_audio(5)           # paced playout has run: the track has ticks to judge
        before = await scrape(http, gw)
        assert before.get(("activecall_call_playout_jitter_seconds_count", ())) == 0
        # A hangup's own reason is the client's text: counted as the command, not as a new series.
        await clients["by-command"].send({"command": "hangup", "reason": "customer said goodbye"})
        await clients["by-close"].ws.close()
        async with http.post(f"{base_url(gw)}/call/kill/by-kill") as resp:
            assert resp.status == 200
        for client in clients.values():
            await client.wait_closed()
        figures = await poll_scrape(http, gw, lambda f: f.get(("activecall_call_playout_jitter_seconds_count", ())) == 3)
        assert figures[ended("hangup_command")] == 1
        assert figures[ended("client_disconnected")] == 1
        assert figures[ended("killed")] == 1
        assert not [k for k in figures if k[0] == "activecall_calls_ended_total" and "goodbye" in str(k[1])]
        # Each call's p99 deviation of its ticks: a few ms at most on an idle loopback.
        assert 0 <= figures[("activecall_call_playout_jitter_seconds_sum", ())] < 3 * 0.1
        assert figures[("activecall_call_playout_jitter_seconds_bucket", (("le", "+Inf"),))] == 3
    finally:
        await gw.stop()


async def test_provider_errors_and_actor_restarts_are_counted(gateway_config, http):
    from actors.engines import EngineHost
    from tests.providers.kits import DEEPGRAM
    from tests.providers.support import Hearing, Speaking

    gw = await start_gateway(gateway_config())
    hearing_host = EngineHost()
    try:
        server = DEEPGRAM.server(Hearing(hearing_host), Speaking(gw.engines))
        async with server:
            # ASR: its socket is cut after half a second of audio: a transient error, the ASR restarts.
            server.faults.drop_after = (25,)
            client = await connect(http, gw, id="asr-drop")
            await client.send({"command": "invite", "option": {"codec": "pcm", "asr": DEEPGRAM.asr(server)}})
            await client.wait_event("answer")
            for frame in frames(tone(440, 1.5, 16000), 320):
                await client.ws.send_bytes(frame.tobytes())
                await asyncio.sleep(0.02)
            await client.wait_event("metrics", timeout=10)      # reconnect.asr.deepgram: restarted
            figures = await poll_scrape(http, gw, lambda f: f.get(
                ("activecall_actor_restarts_total", (("kind", "asr"),)), 0) >= 1)
            assert figures[("activecall_provider_errors_total",
                            (("kind", "transient"), ("provider", "deepgram"), ("service", "asr")))] == 1
            await client.send({"command": "hangup"})
            await client.wait_closed()
            # TTS: refused credentials, a permanent error (not retried, no restart).
            server.faults.drop_after = ()
            server.faults.reject = 401
            client = await connect(http, gw, id="tts-401")
            await client.send({"command": "invite", "option": {"codec": "pcm", "tts": DEEPGRAM.tts(server)}})
            await client.wait_event("answer")
            await client.send({"command": "tts", "text": "not heard", "playId": "no"})
            err, = await client.wait_event("error", timeout=5)
            assert err["sender"] == "tts" and err["code"] == 401
            figures = await scrape(http, gw)
            assert figures[("activecall_provider_errors_total",
                            (("kind", "permanent"), ("provider", "deepgram"), ("service", "tts")))] == 1
            assert ("activecall_actor_restarts_total", (("kind", "tts"),)) not in figures
            await client.send({"command": "hangup"})
            await client.wait_closed()
    finally:
        await gw.stop()
        await hearing_host.stop()


async def test_event_bytes_queued_for_a_client_that_does_not_read_are_a_gauge(gateway_config, http):
    gw = await start_gateway(gateway_config(event_queue_bytes=64 << 20))
    try:
        ws = await http.ws_connect(f"{base_url(gw)}/call?id=not-reading", max_msg_size=0)
        await ws.send_json({"command": "invite", "option": {"codec": "pcm", "vad": None}})
        blob = "q" * (512 << 10)
        for _ in range(40):      # 20 MiB echoed as `custom` events: more than the sockets' buffers hold
            await ws.send_str(json.dumps({"command": "custom", "data": blob}))
        figures = await poll_scrape(http, gw, lambda f: f[("activecall_event_queue_bytes", ())] > 1 << 20)
        assert figures[("activecall_event_queue_bytes_max", ())] == figures[("activecall_event_queue_bytes", ())]
        # The client reads again: the queue drains to nothing.
        customs = 0
        while customs < 40:
            msg = await asyncio.wait_for(ws.receive(), 10)
            if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("event") == "custom":
                customs += 1
        await poll_scrape(http, gw, lambda f: f[("activecall_event_queue_bytes", ())] < 1024)
        await ws.close()
    finally:
        await gw.stop()



async def test_the_inbound_audio_queue_follows_audio_in_frames(gateway_config, http):
    gw = await start_gateway(gateway_config(audio_in_frames=5))
    try:
        client = await connect(http, gw, id="burst")
        await client.send({"command": "invite", "option": {"codec": "pcm"}})
        await client.wait_event("answer")
        # 100 frames at once: a pipe of 5 frames keeps the last few and drops the rest (the default
        # of 50 drops about half of such a burst, see above).
        for frame in frames(tone(440, 2.0, 16000), 320):
            await client.ws.send_bytes(frame.tobytes())
        figures = await poll_scrape(http, gw, lambda f: f[("activecall_inbound_frames_dropped_total", ())] >= 80)
        assert figures[("activecall_inbound_frames_dropped_total", ())] <= 95
        assert figures[("activecall_outbound_frames_dropped_total", ())] == 0    # this client reads its audio
        await client.ws.close()
    finally:
        await gw.stop()


async def test_silero_windows_are_counted(gateway_config, http):
    gw = await start_gateway(gateway_config())
    try:
        client = await connect(http, gw, id="vad-count")
        await client.send({"command": "invite", "option": {"codec": "pcm", "vad": {"type": "silero"}}})
        await client.wait_event("answer")
        for frame in frames(tone(440, 1.0, 16000), 320):       # one second, in real time
            await client.ws.send_bytes(frame.tobytes())
            await asyncio.sleep(0.02)
        figures = await poll_scrape(http, gw, lambda f: f[("activecall_vad_windows_total", ())] >= 25, timeout=15)
        assert 0 < figures[("activecall_vad_inferences_total", ())] <= figures[("activecall_vad_windows_total", ())]
        assert figures[("activecall_vad_windows_dropped_total", ())] == 0
        assert figures[("activecall_vad_windows_lost_total", ())] == 0
        await client.send({"command": "hangup"})
        await client.wait_closed()
    finally:
        await gw.stop()
