"""The /call leg end to end: a real WebSocket client against the in-process gateway."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

import numpy as np
import pytest

from actors import GetCall, GetChild
from actors.messages import GetTrackStats
from actors.playout import PlayFeed, PlaySpec
from actors.track import Enqueue, Subscribe
from protocol.codecs import Decoder, Encoder, codec_info
from tests.conftest import base_url, connect
from tests.support.audio import dominant_frequency, frames, rms, tone
from tests.support.poll import until


async def call_ref(gw, session_id):
    calls = await gw.ref.ask(GetChild("calls"), timeout=2)
    return await calls.ask(GetCall(session_id), timeout=2)


async def track_ref(gw, session_id):
    call = await call_ref(gw, session_id)
    return await call.ask(GetChild("track"), timeout=2)


def ToneItem(pcm: np.ndarray) -> Enqueue:
    """A finished playback holding `pcm` (16 kHz), as a producer leaves its feed, for the track."""
    feed = PlayFeed(len(pcm))
    feed.push(pcm)
    feed.finish()
    return Enqueue(PlaySpec(10_000, "tone", "play"), feed)


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("codec,rate,frame_bytes", [
    ("pcm", 16000, 640), ("pcmu", 8000, 160), ("pcma", 8000, 160), ("g722", 16000, 160),
])
async def test_audio_both_ways_in_every_codec(gateway, http, codec, rate, frame_bytes):
    client = await connect(http, gateway, id=f"c-{codec}")
    await client.send({"command": "invite", "option": {"codec": codec}})
    answer, = await client.wait_event("answer")
    assert answer["sdp"] == "" and answer["trackId"] == f"c-{codec}"
    start, = await client.wait_event("trackStart")
    assert start["trackId"] == f"c-{codec}"

    # Caller -> gateway: a 440 Hz tone in the leg's codec, one 20 ms frame per message.
    track = await track_ref(gateway, f"c-{codec}")
    tap = await track.ask(Subscribe("test", "in", capacity=200), timeout=2)
    enc = Encoder(codec_info(codec))
    for chunk in frames(tone(440, 1.0, 16000), 320):
        await client.ws.send_bytes(enc.encode(chunk))
        await asyncio.sleep(0.005)
    taken: list[np.ndarray] = []

    async def reached() -> bool:
        taken.extend(tap.drain())
        return sum(len(f) for f in taken) >= 14000     # ~1 s at 16 kHz reached the media plane

    await until(reached)
    heard = np.concatenate(taken)
    assert abs(dominant_frequency(heard[1600:], 16000) - 440) < 10
    assert rms(heard[1600:]) > 4000

    # Gateway -> caller: a 1 kHz tone played out, paced, in the same codec and rate.
    client.audio.clear()
    await track.ask(ToneItem(tone(1000, 0.6, 16000)), timeout=2)
    await client.wait_audio(40)             # the 30 frames of the tone and silence after them
    sizes = {len(f) for f in client.audio}
    assert sizes == {frame_bytes}, sizes
    dec = Decoder(codec_info(codec))
    out = np.concatenate([dec.decode(f) for f in client.audio])
    loud = out[np.abs(out) > 0]
    assert abs(dominant_frequency(out, 16000) - 1000) < 15
    assert rms(loud) > 3000

    await client.send({"command": "hangup"})
    await client.wait_closed()


async def test_outbound_is_paced_in_real_time(gateway, http):
    client = await connect(http, gateway, id="paced")
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    client.audio.clear()
    await asyncio.sleep(1.0)
    # 50 frames a second, whatever is (not) playing: silence fills the gaps.
    assert 44 <= len(client.audio) <= 56, len(client.audio)
    stats = await (await call_ref(gateway, "paced")).ask(GetTrackStats(), timeout=2)
    assert stats.frames_out >= 44
    assert stats.jitter_ms_p50 < 5
    await client.ws.close()


async def test_hangup_command_sends_hangup_then_closes(gateway, http):
    client = await connect(http, gateway, id="h1")
    await client.send({"command": "invite", "option": {"codec": "pcmu"}})
    await client.wait_event("answer")
    await asyncio.sleep(0.1)    # the track plays a while: its trackEnd duration says how long
    await client.send({"command": "hangup", "reason": "user_requested", "initiator": "user"})
    await client.wait_closed()
    end, = client.of("trackEnd")
    hangup, = client.of("hangup")
    assert client.events[-1]["event"] == "hangup"
    assert hangup["reason"] == "user_requested" and hangup["initiator"] == "user"
    assert hangup["trackId"] == "h1"
    start, answer, stop = (parse_iso(hangup[k]) for k in ("startTime", "answerTime", "hangupTime"))
    assert start <= answer <= stop
    assert end["duration"] >= 100 and isinstance(end["ssrc"], int)
    async with http.get(f"{base_url(gateway)}/call/lists") as resp:
        assert (await resp.json()) == {"calls": []}


async def test_ten_malformed_commands_mid_call_then_audio_still_flows(gateway, http):
    client = await connect(http, gateway, id="bad")
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    malformed = [
        "{not json",
        "[1, 2, 3]",
        '"a string"',
        json.dumps({"nocommand": True}),
        json.dumps({"command": "dance"}),
        json.dumps({"command": "tts"}),
        json.dumps({"command": "play", "url": 42}),
        json.dumps({"command": "interrupt", "graceful": "yes"}),
        json.dumps({"command": "mute", "trackId": ["x"]}),
        json.dumps({"command": "invite", "option": {"vad": {"samplerate": "16k"}}}),
    ]
    for text in malformed:
        await client.send(text)
    errors = await client.wait_event("error", count=10)
    assert len(errors) == 10
    reasons = [e["error"] for e in errors]
    assert reasons[0].startswith("invalid JSON")
    assert "dance" in reasons[4]
    assert "text" in reasons[5]
    assert "url" in reasons[6]
    assert "graceful" in reasons[7]
    assert "option.vad.samplerate" in reasons[9]
    assert all(e["sender"] == "command" and e["code"] == 400 for e in errors)

    # The call goes on: audio still flows both ways.
    call = await call_ref(gateway, "bad")
    before = await call.ask(GetTrackStats(), timeout=2)
    client.audio.clear()
    for chunk in frames(tone(300, 0.4, 16000), 320):
        await client.ws.send_bytes(chunk.tobytes())
        await asyncio.sleep(0.01)

    async def all_in() -> bool:
        return (await call.ask(GetTrackStats(), timeout=2)).frames_in - before.frames_in >= 20

    await until(all_in)
    after = await call.ask(GetTrackStats(), timeout=2)
    assert after.frames_in - before.frames_in == 20
    assert len(client.audio) >= 10
    await client.send({"command": "hangup"})
    await client.wait_closed()
    assert client.events[-1]["event"] == "hangup"


async def test_odd_sized_pcm_frame_is_an_error_event_not_a_crash(gateway, http):
    client = await connect(http, gateway, id="odd")
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    await client.ws.send_bytes(b"\x01\x02\x03")
    err, = await client.wait_event("error")
    assert err["sender"] == "media" and "whole number" in err["error"]
    await client.ws.send_bytes(np.zeros(160, dtype=np.int16).tobytes())  # any whole number of samples
    call = await call_ref(gateway, "odd")

    async def counted() -> bool:
        return (await call.ask(GetTrackStats(), timeout=2)).bytes_in >= 323

    await until(counted, what="both frames counted")
    stats = await call.ask(GetTrackStats(), timeout=2)
    assert stats.bad_frames == 1 and stats.bytes_in == 323
    await client.ws.close()


async def test_unknown_codec_is_refused_and_the_session_stays_usable(gateway, http):
    client = await connect(http, gateway, id="codec")
    await client.send({"command": "invite", "option": {"codec": "opus"}})
    err, = await client.wait_event("error")
    assert "codec" in err["error"]
    await client.send({"command": "invite", "option": {"codec": "pcm", "samplerate": 8000}})
    await client.wait_event("answer")
    client.audio.clear()
    await client.wait_audio(5)
    assert {len(a) for a in client.audio} == {320}  # 20 ms of 8 kHz s16le
    await client.ws.close()


async def test_client_close_cleans_the_call_up(gateway, http):
    client = await connect(http, gateway, id="gone")
    await client.send({"command": "accept", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    assert len(gateway.clock) == 1
    await client.ws.close()
    for _ in range(100):
        async with http.get(f"{base_url(gateway)}/call/lists") as resp:
            if (await resp.json())["calls"] == []:
                break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("call still listed after its client left")
    assert len(gateway.clock) == 0


async def test_kill_ends_the_call_with_initiator_system(gateway, http):
    client = await connect(http, gateway, id="victim")
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    async with http.post(f"{base_url(gateway)}/call/kill/victim") as resp:
        assert resp.status == 200 and await resp.json() is True
    await client.wait_closed()
    hangup, = client.of("hangup")
    assert hangup["initiator"] == "system"
    async with http.post(f"{base_url(gateway)}/call/kill/victim") as resp:
        assert resp.status == 404
        assert "victim" in (await resp.json())["error"]


async def test_original_list_and_kill_forms(gateway, http):
    client = await connect(http, gateway, id="orig")
    await client.send({"command": "invite", "option": {"codec": "pcmu", "caller": "alice"}})
    await client.wait_event("answer")
    async with http.get(f"{base_url(gateway)}/list") as resp:
        body = await resp.json()
    call, = body["active_calls"]
    assert call["id"] == "orig" and call["callType"] == "webSocket"
    assert call["cs.option"]["caller"] == "alice"
    async with http.get(f"{base_url(gateway)}/call/lists") as resp:
        listed, = (await resp.json())["calls"]
    assert set(listed) == {"id", "call_type", "created_at", "option"}
    assert listed["option"]["codec"] == "pcmu"
    parse_iso(listed["created_at"])
    async with http.get(f"{base_url(gateway)}/kill/nope") as resp:
        assert await resp.json() == {"status": "not_found", "id": "nope"}
    async with http.get(f"{base_url(gateway)}/kill/orig") as resp:
        assert await resp.json() == {"status": "killed", "id": "orig"}
    await client.wait_closed()


async def test_trailing_slash_and_webrtc_path(gateway, http):
    client = await connect(http, gateway, path="/call/", id="slash")
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    await client.ws.close()
    # /call/webrtc is served (tests/e2e/test_call_webrtc.py): without an offer, invite is refused
    webrtc = await connect(http, gateway, path="/call/webrtc/")
    await webrtc.send({"command": "invite", "option": {"callee": "sip:bob@127.0.0.1"}})
    err, = await webrtc.wait_event("error")
    assert err["code"] == 400 and "a /call/webrtc call needs the peer's SDP offer" in err["error"]
    await webrtc.ws.close()


async def test_dump_file_and_ping(gateway, http, tmp_path):
    client = await connect(http, gateway, id="dumped", pingInterval="0.2")
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("ping", count=2, timeout=3)
    await client.send({"command": "hangup"})
    await client.wait_closed()
    dump = tmp_path / "dumps" / "dumped.events.jsonl"
    for _ in range(250):   # written by the dump's thread: wait for the last line, at most 5 s
        if dump.exists() and '\\"event\\":\\"hangup\\"' in dump.read_text():
            break
        await asyncio.sleep(0.02)
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    kinds = [(d["type"], json.loads(d["content"]).get("command") or json.loads(d["content"]).get("event"))
             for d in lines]
    assert kinds[0] == ("command", "invite")
    assert ("event", "answer") in kinds and ("event", "ping") in kinds and ("command", "hangup") in kinds
    assert kinds[-1] == ("event", "hangup")
    assert all(isinstance(d["timestamp"], int) for d in lines)

    quiet = await connect(http, gateway, id="quiet", dump="false", ping="0")
    await quiet.send({"command": "invite", "option": {"codec": "pcm"}})
    await quiet.wait_event("answer")
    await asyncio.sleep(0.3)    # a window in which a ping or a dump line would show
    await quiet.ws.close()
    assert not (tmp_path / "dumps" / "quiet.events.jsonl").exists()
    assert quiet.of("ping") == []


async def test_bad_query_parameters_are_400(gateway, http):
    for query in ("dump=maybe", "pingInterval=soon", "pingInterval=-1"):
        async with http.get(f"{base_url(gateway)}/call?{query}", headers={
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
            assert resp.status == 400
            assert "query parameter" in (await resp.json())["error"]


async def test_server_side_track_id_for_mute(gateway, http):
    client = await connect(http, gateway, id="m", serverSideTrack="bot")
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    track = await track_ref(gateway, "m")
    await track.ask(ToneItem(tone(1000, 2.0, 16000)), timeout=2)
    await client.wait_audio(len(client.audio) + 10)
    await client.send({"command": "mute", "trackId": "bot"})
    await client.wait_audio(len(client.audio) + 5)     # frames already on their way
    client.audio.clear()
    await client.wait_audio(15)
    muted = np.concatenate([np.frombuffer(a, dtype="<i2") for a in client.audio])
    assert rms(muted) == 0
    await client.send({"command": "unmute", "trackId": "bot"})
    await client.wait_audio(len(client.audio) + 5)
    client.audio.clear()
    await client.wait_audio(15)
    assert rms(np.concatenate([np.frombuffer(a, dtype="<i2") for a in client.audio])) > 3000
    await client.send({"command": "mute", "trackId": "nobody"})
    err, = await client.wait_event("error")
    assert err["code"] == 404 and "nobody" in err["error"]
    await client.ws.close()


async def test_admission_limit_refuses_the_next_call(gateway_config, http):
    from transports.gateway import start_gateway

    gw = await start_gateway(gateway_config(max_calls=2, max_pending_calls=10))
    try:
        idle = [await connect(http, gw, id=f"idle-{i}") for i in range(5)]   # never place a call
        placed = []
        for sid in ("a", "b"):
            client = await connect(http, gw, id=sid)
            await client.send({"command": "invite", "option": {"codec": "pcm"}})
            await client.wait_event("answer")            # idle connections hold no slot
            placed.append(client)
        c = await connect(http, gw, id="c")
        await c.send({"command": "invite", "option": {"codec": "pcm"}})
        await c.wait_closed()
        err, = c.of("error")
        assert err["code"] == 503 and "max_calls (2)" in err["error"] and err["sender"] == "server"
        assert c.ws.close_code == 1013 and not c.of("hangup")
        await placed[0].ws.close()
        d = await connect(http, gw, id="d")
        deadline = asyncio.get_running_loop().time() + 5
        while True:                                      # the slot freed by a's departure admits d
            await d.send({"command": "invite", "option": {"codec": "pcm"}})
            try:
                await d.wait_event("answer", timeout=0.5)
                break
            except (asyncio.TimeoutError, AssertionError):
                assert asyncio.get_running_loop().time() < deadline, d.events
                d = await connect(http, gw, id="d")
        for client in idle + placed[1:] + [d]:
            await client.ws.close()
    finally:
        await gw.stop()


async def test_a_connection_that_places_no_call_is_closed_after_the_handshake_timeout(gateway_config, http):
    from transports.gateway import start_gateway

    gw = await start_gateway(gateway_config(handshake_timeout=0.3, max_pending_calls=2))
    try:
        first = await connect(http, gw, id="quiet-1")
        second = await connect(http, gw, id="quiet-2")
        third = await connect(http, gw, id="quiet-3")            # past max_pending_calls
        await third.wait_closed()
        assert third.of("error")[0]["code"] == 503 and "max_pending_calls (2)" in third.of("error")[0]["error"]
        await first.wait_closed(timeout=5)
        err, = first.of("error")
        assert err["code"] == 408 and "no invite or accept within 0.3 s" in err["error"]
        assert first.ws.close_code == 1008 and not first.of("hangup")
        await second.wait_closed(timeout=5)
        async with http.get("http://%s:%d/call/lists" % gw.http_address) as resp:
            assert (await resp.json())["calls"] == []
    finally:
        await gw.stop()


async def test_duplicate_session_id_is_refused(gateway, http):
    a = await connect(http, gateway, id="same")
    await until(lambda: call_ref(gateway, "same"), what="the first call registered")
    b = await connect(http, gateway, id="same")
    await b.wait_closed()
    err, = b.of("error")
    assert err["code"] == 409
    await a.send({"command": "invite", "option": {"codec": "pcm"}})
    await a.wait_event("answer")
    await a.ws.close()


async def test_iceservers_and_health(gateway_config, http):
    from transports.gateway import start_gateway

    gw = await start_gateway(gateway_config(ice_servers=[
        {"urls": ["stun:127.0.0.1:3478"]},
        {"urls": ["turn:127.0.0.1:3478"], "username": "u", "credential": "p"},
    ]))
    try:
        async with http.get(f"{base_url(gw)}/iceservers") as resp:
            assert await resp.json() == [
                {"urls": ["stun:127.0.0.1:3478"], "username": None, "credential": None},
                {"urls": ["turn:127.0.0.1:3478"], "username": "u", "credential": "p"},
            ]
        async with http.get(f"{base_url(gw)}/health") as resp:
            health = await resp.json()
        assert health["status"] == "ok" and health["calls"] == 0 and health["max_calls"] == 1000
        async with http.get(f"{base_url(gw)}/nope") as resp:
            assert resp.status == 404
    finally:
        await gw.stop()
