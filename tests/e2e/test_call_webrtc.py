"""The /call/webrtc leg end to end: an aiortc peer (as a browser uses WebRTC) and the application's
WebSocket against the in-process gateway, on loopback."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest

from actors.track import Subscribe
from tests.conftest import base_url, connect
from tests.e2e.test_call_ws import ToneItem, track_ref
from tests.support.audio import dominant_frequency, rms, tone
from tests.support.webrtc_peer import WebRtcPeer, strip_candidates
from tests.support.poll import until

LOOPBACK = {"host_addresses": ["127.0.0.1"]}


@pytest.fixture
async def rtc_gateway(gateway_config):
    from transports.gateway import start_gateway

    gateways = []

    async def make(**webrtc):
        gw = await start_gateway(gateway_config(webrtc={**LOOPBACK, **webrtc}))
        gateways.append(gw)
        return gw

    try:
        yield make
    finally:
        for gw in gateways:
            await gw.stop()


@pytest.fixture
async def peers():
    """Peers made by a test, each closed at its end whatever happened."""
    made: list[WebRtcPeer] = []

    def make(**kwargs) -> WebRtcPeer:
        made.append(WebRtcPeer(**kwargs))
        return made[-1]

    try:
        yield make
    finally:
        for peer in made:
            await peer.close()


async def place(http, gw, peer: WebRtcPeer, session_id: str, command: str = "invite", **option):
    client = await connect(http, gw, path="/call/webrtc", id=session_id)
    await client.send({"command": command, "option": {"offer": await peer.offer(), **option}})
    answer, = await client.wait_event("answer")
    await peer.answer(answer["sdp"])
    await peer.wait_connected()
    return client, answer


async def heard_by_gateway(gw, session_id: str, seconds: float) -> np.ndarray:
    """What the gateway's media plane receives from the peer for `seconds` (16 kHz)."""
    track = await track_ref(gw, session_id)
    tap = await track.ask(Subscribe("test", "in", capacity=200), timeout=2)
    frames: list[np.ndarray] = []
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        frames.extend(tap.drain())
        await asyncio.sleep(0.05)
    frames.extend(tap.drain())
    return np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)


@pytest.mark.parametrize("codec,rate", [("opus", 48000), ("PCMU", 8000), ("PCMA", 8000), ("G722", 16000)])
async def test_a_tone_both_ways_in_every_codec(rtc_gateway, http, codec, rate, peers):
    gw = await rtc_gateway()
    peer = peers(freq=440, codecs=(codec,))
    client, answer = await place(http, gw, peer, f"w-{codec}")
    assert f" {codec}/" in answer["sdp"] or f" {codec.lower()}/" in answer["sdp"].lower()
    # peer -> gateway: the 440 Hz tone reaches the media plane
    heard = await heard_by_gateway(gw, f"w-{codec}", 1.2)
    assert len(heard) >= 12000
    assert abs(dominant_frequency(heard[3200:], 16000) - 440) < 10
    assert rms(heard[3200:]) > 2000

    # gateway -> peer: a 1 kHz tone played on the call reaches the peer, in its codec's rate
    track = await track_ref(gw, f"w-{codec}")
    await peer.wait_frames(10)
    peer.received.clear()
    await track.ask(ToneItem(tone(1000, 0.8, 16000)), timeout=2)
    frames_before = peer.frames
    await peer.wait_frames(frames_before + 40)
    pcm, got_rate = peer.heard()
    assert got_rate == rate
    loud = pcm[np.abs(pcm) > 500]
    assert len(loud) > rate * 0.3, len(loud)
    assert abs(dominant_frequency(pcm, got_rate) - 1000) < 15
    await client.send({"command": "hangup"})
    await client.wait_closed()
    hangup, = client.of("hangup")
    assert hangup["reason"] == "hangup_command"
    # the gateway closed its peer connection: the peer sees it close
    await peer.wait_state("closed")


async def test_the_application_may_name_the_codec(rtc_gateway, http, peers):
    gw = await rtc_gateway()
    peer = peers(freq=600)         # offers opus, G722, PCMU, PCMA
    # `accept` places a WebRTC call as `invite` does
    client, answer = await place(http, gw, peer, "w-named", "accept", codec="pcma")
    rtpmaps = [line for line in answer["sdp"].splitlines() if line.startswith("a=rtpmap:")]
    assert rtpmaps[0] == "a=rtpmap:8 PCMA/8000"
    assert [m.split()[1] for m in rtpmaps] == ["PCMA/8000", "telephone-event/8000"]
    heard = await heard_by_gateway(gw, "w-named", 0.8)
    assert abs(dominant_frequency(heard[3200:], 16000) - 600) < 10
    await client.send({"command": "hangup"})
    await client.wait_closed()


async def test_trickled_candidates_before_and_after_the_offer(rtc_gateway, http, peers):
    gw = await rtc_gateway()
    peer = peers(freq=440)
    offer, candidates = strip_candidates(await peer.offer())
    assert candidates
    client = await connect(http, gw, path="/call/webrtc", id="w-trickle")
    # the first candidate arrives before the offer (with the index spelled as some clients do),
    # the rest and the end of candidates after it
    await client.send({"command": "addIceCandidate", "candidate": candidates[0], "sdpMlineIndex": 0})
    await client.send({"command": "invite", "option": {"offer": offer}})
    answer, = await client.wait_event("answer")
    for line in candidates[1:]:
        await client.send({"command": "addIceCandidate", "candidate": line, "sdpMid": "0"})
    await client.send({"command": "addIceCandidate", "candidate": "", "sdpMid": "0"})
    await peer.answer(answer["sdp"])
    await peer.wait_connected()
    heard = await heard_by_gateway(gw, "w-trickle", 0.8)
    assert abs(dominant_frequency(heard[3200:], 16000) - 440) < 10
    assert client.of("error") == []
    await client.send({"command": "hangup"})
    await client.wait_closed()


async def test_bad_candidates_are_refused_with_an_error_and_the_call_goes_on(rtc_gateway, http, peers):
    gw = await rtc_gateway(max_candidates=3)
    peer = peers(freq=440)
    client, _ = await place(http, gw, peer, "w-badcand")
    await client.send({"command": "addIceCandidate", "candidate": "candidate:garbage", "sdpMid": "0"})
    await client.send({"command": "addIceCandidate", "candidate": "candidate:1 1 udp 5 127.0.0.1 9 typ host"})
    good = {"command": "addIceCandidate", "candidate": "candidate:1 1 udp 5 127.0.0.1 9 typ host", "sdpMid": "0"}
    for _ in range(4):
        await client.send(good)
    errors = await client.wait_event("error", count=3)
    assert [e["code"] for e in errors] == [400, 400, 413]
    assert "not an ICE candidate attribute: 'candidate:garbage'" in errors[0]["error"]
    assert errors[1]["error"] == "addIceCandidate: needs sdpMid or sdpMLineIndex"
    assert "more than 3 candidates for one call (webrtc.max_candidates)" in errors[2]["error"]
    assert all(e["sender"] == "command" for e in errors)
    heard = await heard_by_gateway(gw, "w-badcand", 0.5)   # media goes on
    assert rms(heard[1600:]) > 2000
    await client.send({"command": "hangup"})
    await client.wait_closed()


async def test_a_websocket_session_refuses_ice_candidates(gateway, http):
    client = await connect(http, gateway, id="ws-cand")
    await client.send({"command": "addIceCandidate", "candidate": "candidate:1 1 udp 5 127.0.0.1 9 typ host",
                       "sdpMid": "0"})
    error, = await client.wait_event("error")
    assert error["error"] == "addIceCandidate: this session's leg does not take it" and error["code"] == 400
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    await client.send({"command": "hangup"})
    await client.wait_closed()


async def test_rfc4733_digits_become_dtmf_events(rtc_gateway, http, peers):
    gw = await rtc_gateway()
    # Opus carries telephone-event at 48 kHz, the telephony codecs at 8 kHz
    for option, clock in (({}, 48000), ({"codec": "pcmu"}, 8000)):
        peer = peers(freq=0)
        client, _ = await place(http, gw, peer, f"w-dtmf-{clock}", **option)
        for digit in "15#":
            await peer.send_digit(digit, clock)
        events = await client.wait_event("dtmf", count=3)
        assert [e["digit"] for e in events] == ["1", "5", "#"]
        await client.send({"command": "hangup"})
        await client.wait_closed()


async def test_refusals_of_offers(rtc_gateway, http, peers):
    gw = await rtc_gateway()
    client = await connect(http, gw, path="/call/webrtc", id="w-nooffer")
    await client.send({"command": "invite", "option": {}})
    error, = await client.wait_event("error")
    assert error["code"] == 400 and "option.offer: a /call/webrtc call needs the peer's SDP offer" in error["error"]

    # an offer with no codec the gateway carries, then one without the codec asked for
    peer = peers(codecs=("opus",))
    offer = await peer.offer()
    await client.send({"command": "invite", "option": {"offer": offer, "codec": "g722"}})
    error = (await client.wait_event("error", count=2))[1]
    assert error["code"] == 488 and "option.codec: g722 is not in the offer (it offers opus)" in error["error"]
    no_codec = offer.replace("opus/48000/2", "x-unknown/48000/2")
    await client.send({"command": "invite", "option": {"offer": no_codec}})
    error = (await client.wait_event("error", count=3))[2]
    assert error["code"] == 488 and "no codec the gateway carries" in error["error"]
    await client.send({"command": "invite", "option": {"offer": "v=0\r\nnot sdp"}})
    error = (await client.wait_event("error", count=4))[3]
    assert error["code"] in (400, 488) and error["error"].startswith("invite: option.offer")
    # the call is still new: a good offer is answered
    await client.send({"command": "invite", "option": {"offer": offer}})
    answer, = await client.wait_event("answer")
    await peer.answer(answer["sdp"])
    await peer.wait_connected()
    await client.send({"command": "hangup"})
    await client.wait_closed()


async def test_the_peer_closing_ends_the_call(rtc_gateway, http, peers):
    gw = await rtc_gateway()
    peer = peers(freq=440)
    client, _ = await place(http, gw, peer, "w-peerclose")
    await peer.pc.close()
    await client.wait_closed(10)
    hangup, = client.of("hangup")
    assert (hangup["reason"], hangup["initiator"]) == ("peer_closed", "callee")
    assert client.of("error") == []
    async with http.get(f"{base_url(gw)}/call/lists") as resp:
        assert (await resp.json()) == {"calls": []}


async def test_a_peer_that_never_connects_fails_after_the_ice_timeout(rtc_gateway, http, peers):
    gw = await rtc_gateway(ice_timeout=1.0)
    peer = peers(freq=440)
    offer, _ = strip_candidates(await peer.offer())   # no candidate is ever given
    client = await connect(http, gw, path="/call/webrtc", id="w-noice")
    await client.send({"command": "invite", "option": {"offer": offer}})
    await client.wait_event("answer")
    await client.wait_closed(6)
    error, = client.of("error")
    assert error["sender"] == "leg" and error["code"] == 500
    assert error["error"] == "leg failed: ICE did not connect within 1 s"
    hangup, = client.of("hangup")
    assert (hangup["reason"], hangup["initiator"]) == ("media_failure", "system")


async def test_a_peer_that_goes_silent_is_disconnected_after_the_timeout(rtc_gateway, http, peers):
    gw = await rtc_gateway(disconnect_timeout=1.5)
    peer = peers(freq=440)
    client, _ = await place(http, gw, peer, "w-gone")
    await heard_by_gateway(gw, "w-gone", 0.3)
    # the peer's network goes away without a word: its ICE transport stops, no DTLS close
    await peer.transceiver.receiver.transport.transport.stop()
    await client.wait_closed(8)
    error, = client.of("error")
    assert error["error"] == "leg failed: nothing received from the peer for 1.5 s (disconnected)"
    hangup, = client.of("hangup")
    assert hangup["reason"] == "media_failure"


async def test_the_application_leaving_closes_the_peer_connection(rtc_gateway, http, peers):
    gw = await rtc_gateway()
    peer = peers(freq=440)
    client, _ = await place(http, gw, peer, "w-appgone")
    await client.ws.close()
    await peer.wait_state("closed")
    async with http.get(f"{base_url(gw)}/call/lists") as resp:
        assert (await resp.json()) == {"calls": []}


async def test_the_demo_page_is_served(gateway_config, http, tmp_path):
    from transports.gateway import start_gateway
    from transports.main import demo_url

    gw = await start_gateway(gateway_config())
    try:
        async with http.get(f"{base_url(gw)}/") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            page = await resp.text()
        assert "static/app.js" in page and "static/style.css" in page
        for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
            async with http.get(f"{base_url(gw)}/static/{name}") as resp:
                assert resp.status == 200 and kind in resp.content_type
        async with http.get(f"{base_url(gw)}/static/../pyproject.toml") as resp:
            assert resp.status in (403, 404)
    finally:
        await gw.stop()
    # a gateway whose static_root holds no page says so
    gw = await start_gateway(gateway_config(static_root=str(tmp_path / "none")))
    try:
        async with http.get(f"{base_url(gw)}/") as resp:
            assert resp.status == 404 and "the demo page is not installed" in (await resp.json())["error"]
    finally:
        await gw.stop()
    assert demo_url("0.0.0.0", 8080) == "http://127.0.0.1:8080/"
    assert demo_url("::", 8080) == "http://[::1]:8080/"
    assert demo_url("10.0.0.5", 80) == "http://10.0.0.5:80/"


def recent_rms(peer: WebRtcPeer, frames: int = 5) -> float:
    return rms(np.concatenate(peer.received[-frames:])) if len(peer.received) >= frames else 0.0


async def test_the_media_plane_works_on_a_webrtc_call(rtc_gateway, http, peers):
    """In-band DTMF, tts, mute, interrupt, listing and kill, as on /call."""
    from protocol.codecs import Resampler

    gw = await rtc_gateway()
    peer = peers(freq=0)
    keys = Path(__file__).resolve().parents[1] / "fixtures" / "listening" / "dtmf_clean_16k.wav"
    with wave.open(str(keys)) as w:
        pcm16 = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    pcm16 = np.concatenate([pcm16, np.zeros(16000, dtype=np.int16)])
    peer.tone.loop = Resampler(16000, 48000).process(pcm16)        # the keys pressed as tones, looped
    client, _ = await place(http, gw, peer, "w-media")
    presses = await client.wait_event("dtmf", count=6, timeout=10)
    assert "".join(e["digit"] for e in presses) == "159#*0"

    await client.send({"command": "tts", "text": "This sentence is long enough to be cut short by an "
                       "interrupt while it is still being spoken to the browser.", "playId": "t1"})
    await client.wait_event("trackStart", count=2)
    await until(lambda: recent_rms(peer) > 300, what="the peer hears the tts")
    await client.send({"command": "mute", "trackId": "serverSideTrack"})
    await until(lambda: recent_rms(peer) < 30, what="the peer hears silence while muted")
    await client.send({"command": "unmute", "trackId": "serverSideTrack"})
    await until(lambda: recent_rms(peer) > 300, what="the peer hears the tts again")
    await client.send({"command": "interrupt"})
    interruption, = await client.wait_event("interruption")
    assert interruption["playId"] == "t1"
    await until(lambda: recent_rms(peer) < 30, what="silence after the interrupt")

    async with http.get(f"{base_url(gw)}/call/lists") as resp:
        listed, = (await resp.json())["calls"]
    assert listed["id"] == "w-media" and listed["call_type"] == "webrtc"
    async with http.post(f"{base_url(gw)}/call/kill/w-media") as resp:
        assert await resp.json() is True
    await client.wait_closed()
    hangup, = client.of("hangup")
    assert (hangup["reason"], hangup["initiator"]) == ("killed", "system")
    await peer.wait_state("closed")
