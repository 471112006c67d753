"""Every playback ends with exactly one `trackEnd`, whatever path it takes, and the events of a cut
follow one order: the item that was playing ends first."""

from __future__ import annotations

import asyncio

from tests.conftest import connect
from tests.e2e.test_playback import answered, b64, tts_tone
from tests.support.audio import tone


async def barrier(client) -> None:
    """Wait until the commands sent so far were handled (`interrupt` jumps the queue)."""
    n = len(client.of("custom"))
    await client.send({"command": "custom", "data": "barrier"})
    await client.wait_event("custom", count=n + 1)


def sequence(client) -> list[tuple[str, object]]:
    """(event, playId) for the playback events, in order."""
    return [(e["event"], e.get("playId")) for e in client.events
            if e["event"] in ("trackStart", "trackEnd", "interruption", "hangup", "error")
            and (e["event"] != "trackStart" or e.get("playId") is not None)]


async def test_a_tts_with_an_unknown_provider_gets_its_trackend_after_the_error(gateway, http):
    client = await answered(http, gateway, "te1")
    await client.send({"command": "tts", "text": "hi", "playId": "u1", "option": {"provider": "nosuch"}})
    end, = await client.wait_event("trackEnd")
    assert end["playId"] == "u1" and end["duration"] == 0
    assert sequence(client) == [("error", None), ("trackEnd", "u1")]
    # errors about a playback name the server-side track, as an unknown voice's does
    await client.send({"command": "tts", "text": "hi", "playId": "v1", "speaker": "no-such-voice"})
    await client.wait_event("error", count=2)
    assert [e["trackId"] for e in client.of("error")] == ["serverSideTrack", "serverSideTrack"]


async def test_a_tts_with_bad_base64_gets_its_trackend(gateway, http):
    client = await answered(http, gateway, "te2")
    await client.send({"command": "tts", "text": "%%%not base64", "base64": True, "playId": "b1"})
    end, = await client.wait_event("trackEnd")
    assert end["playId"] == "b1"
    err, = client.of("error")
    assert "base64" in err["error"]


async def test_items_still_playing_or_synthesising_or_streaming_end_before_the_hangup(gateway, http):
    client = await answered(http, gateway, "te3")
    await client.send(tts_tone(500, 5.0, playId="long"))
    await client.send({"command": "tts", "text": "first piece", "playId": "s1", "streaming": True})
    await client.wait_event("trackStart", count=2)     # the leg's, then "long"
    await client.send({"command": "hangup"})
    await client.wait_closed()
    ends = [e.get("playId") for e in client.of("trackEnd")]
    assert sorted(ends[:2], key=str) == ["long", "s1"] and ends[2] is None   # then the leg's own
    assert [e["event"] for e in client.events][-1] == "hangup"
    assert len(client.of("trackEnd")) == 3


async def test_play_replacing_a_tts_is_not_an_interruption(gateway, http):
    client = await answered(http, gateway, "te4")
    await client.send(tts_tone(700, 3.0, playId="spoken"))
    await client.wait_event("trackStart", count=2)
    await client.send({"command": "play", "url": "missing.wav"})
    await client.wait_event("trackEnd", count=2)
    assert not client.of("interruption")
    assert client.of("trackEnd")[0]["playId"] == "spoken"


async def test_interrupt_ends_the_cut_item_before_the_queued_ones(gateway, http):
    for graceful in (False, True):
        client = await answered(http, gateway, f"te5-{graceful}")
        await client.send(tts_tone(600, 3.0, playId="now"))
        await client.wait_event("trackStart", count=2)
        await client.send({"command": "tts", "text": b64(tone(800, 1.0, 16000)), "base64": True, "playId": "now"})
        await barrier(client)
        await client.send({"command": "interrupt", "graceful": graceful})
        await client.wait_event("trackEnd", count=2)
        assert [e["playId"] for e in client.of("trackEnd")] == ["now", "now"]
        assert len(client.of("interruption")) == 1
        await client.send({"command": "hangup"})
        await client.wait_closed()


async def test_a_queued_item_of_another_play_id_ends_after_the_cut_one(gateway, http):
    for graceful in (False, True):
        client = await connect(http, gateway, id=f"te6-{graceful}")
        await client.send({"command": "invite", "option": {"codec": "pcm"}})
        await client.wait_event("answer")
        await client.send(tts_tone(600, 3.0))                    # no playId: queued ones follow it
        await client.wait_event("trackStart", count=2)
        await client.send(tts_tone(800, 1.0))
        await barrier(client)
        await client.send({"command": "interrupt", "graceful": graceful})
        ends = await client.wait_event("trackEnd", count=2)
        starts = [e for e in client.of("trackStart") if e["trackId"] != f"te6-{graceful}"]
        assert len(starts) == 1                                  # the queued one never started
        assert ends[0]["duration"] > 0 and ends[1]["duration"] == 0
        await client.send({"command": "hangup"})
        await client.wait_closed()


async def test_the_session_id_is_free_once_the_hangup_is_out_and_the_socket_closed(gateway, http):
    from aiohttp import WSMsgType, web

    from tests.support.servers import local_server

    async def slow_peer(request):
        # Answers its close handshake late: the call's cleanup takes that long.
        ws = web.WebSocketResponse(autoclose=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.CLOSE:
                await asyncio.sleep(0.3)
                await ws.close()
        return ws

    async with local_server("/media", slow_peer) as port:
        for attempt in range(10):
            client = await connect(http, gateway, id="same-id")
            await client.send({"command": "invite", "option": {
                "codec": "pcm", "mediaPass": {"url": f"ws://127.0.0.1:{port}/media",
                                              "inputSampleRate": 16000, "outputSampleRate": 16000}}})
            await client.wait_event("answer")
            await client.send({"command": "hangup"})
            await client.wait_closed()
            assert client.events[-1]["event"] == "hangup"
            refused = [e for e in client.events if e["event"] == "error" and e.get("code") == 409]
            assert not refused, f"attempt {attempt}: {refused}"


async def test_hangup_names_the_parties_as_attendees(gateway, http):
    client = await connect(http, gateway, id="who")
    await client.send({"command": "invite", "option": {"codec": "pcm", "caller": "sip:alice@example.com",
                                                       "callee": "bot"}})
    await client.wait_event("answer")
    await client.send({"command": "hangup"})
    await client.wait_closed()
    hangup = client.events[-1]
    assert hangup["from"] == {"username": "alice", "realm": "example.com", "source": "sip:alice@example.com"}
    assert hangup["to"] == {"username": "bot", "realm": "", "source": "bot"}
