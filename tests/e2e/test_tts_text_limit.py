"""`tts_text_bytes`: the tts text one call holds before it is spoken is bounded; past it a `tts` is
refused (error 413 naming the key) and ends unplayed, the call goes on, and text that has been
spoken (or cut) makes room again."""

from __future__ import annotations

from tests.conftest import connect
from transports.gateway import start_gateway

SENTENCE = "This sentence waits in the queue. "        # 34 bytes


async def test_tts_text_past_the_limit_is_refused_and_room_comes_back(gateway_config, http):
    gw = await start_gateway(gateway_config(tts_text_bytes=64 * 1024))
    try:
        client = await connect(http, gw, id="text-limit")
        await client.send({"command": "invite", "option": {"codec": "pcm"}})
        await client.wait_event("answer")
        big = SENTENCE * 1200                            # 40,800 bytes
        await client.send({"command": "tts", "text": big, "playId": "q"})
        await client.send({"command": "tts", "text": SENTENCE * 600, "playId": "q"})     # queued: 61,200 held
        await client.wait_event("trackStart", count=2)                # the call's track, then "q" playing
        await client.send({"command": "tts", "text": SENTENCE * 300, "playId": "q"})     # 71,400: refused
        err, = await client.wait_event("error")
        assert err["sender"] == "tts" and err["code"] == 413
        assert "65536-byte limit" in err["error"] and "(tts_text_bytes; 61200 bytes wait now)" in err["error"]
        end, = await client.wait_event("trackEnd")
        assert end["playId"] == "q" and end["duration"] == 0          # the refused one ends unplayed
        # Cut what waits: its text is let go, and the same tts is taken now.
        await client.send({"command": "interrupt"})
        await client.wait_event("trackEnd", count=3)
        await client.send({"command": "tts", "text": SENTENCE * 300, "playId": "after"})
        starts = await client.wait_event("trackStart", count=3)
        assert starts[-1]["playId"] == "after"
        assert len(client.of("error")) == 1
        await client.send({"command": "hangup"})
        await client.wait_closed()
        assert client.events[-1]["event"] == "hangup" and client.events[-1]["reason"] == "hangup_command"
    finally:
        await gw.stop()
