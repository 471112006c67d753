"""Incoming SIP calls through the real gateway: SIPp calls in, the webhook announces the call to a
real HTTP server, the application connects `/call/sip?id=<dialogId>` over a real WebSocket and
rings, answers, rejects, or walks away; the caller's media socket is the test's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import incoming_call
from tests.support.audio import dominant_frequency, rms, tone
from tests.support.sip_tools import read_wav, sipp_uac, until, write_wav


def final_status(tmp_path: Path) -> list[str]:
    return [line.split("final ", 1)[1].strip() for log in tmp_path.glob("*_logs.log")
            for line in log.read_text().splitlines() if "final " in line]


async def test_answered_call_speaks_tts_to_the_caller(sip_gateway, webhook, peer, http, tmp_path):
    gw = await sip_gateway()
    async with sipp_uac(tmp_path, "uac_call.xml", gw.sip_address[1], keys={"rtp_port": peer.port}) as sipp:
        client, body = await incoming_call(http, gw, webhook)
        # The original's webhook body.
        assert set(body) == {"dialogId", "createdAt", "caller", "callee", "event", "headers", "offer"}
        assert body["event"] == "invite" and body["caller"].startswith("sip:caller@127.0.0.1")
        assert body["callee"].startswith("sip:gw@127.0.0.1") and "X-Customer: 4711" in body["headers"]
        assert f"m=audio {peer.port} RTP/AVP 0 101" in body["offer"]
        incoming, = client.of("incoming")
        assert (incoming["caller"], incoming["callee"], incoming["sdp"]) == (body["caller"], body["callee"],
                                                                            body["offer"])
        await client.send({"command": "ringing"})
        await client.send({"command": "accept", "option": {}})
        answer, = await client.wait_event("answer")
        assert "PCMU/8000" in answer["sdp"]           # the first of our preferences the caller offered
        await client.send({"command": "tts", "text": "Thank you for calling. How can I help you today?",
                           "playId": "greeting"})
        await until(lambda: any(e.get("playId") == "greeting" for e in client.of("trackEnd")), 15, "the greeting")
        await client.send({"command": "hangup"})
        await client.wait_closed(10)
        assert await sipp.wait(10) == 0, sipp.errors()
    # What the caller received: speech (energy in the voice band), from the port our answer named.
    pcm = peer.audio()
    voiced = [f for f in np.array_split(pcm, max(1, len(pcm) // 320)) if rms(f) > 300]
    assert len(voiced) > 50, f"{len(voiced)} voiced frames of {len(pcm) // 320}"
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    freqs = np.fft.rfftfreq(len(pcm), 1 / 16000)
    band = spectrum[(freqs >= 100) & (freqs <= 3400)].sum() / spectrum.sum()
    assert band > 0.9, band
    assert {p.payload_type for p in peer.packets} == {0}
    hangup, = client.of("hangup")
    assert hangup["reason"] == "hangup_command" and hangup["from"]["username"] == "caller"
    async with http.get(f"http://{gw.http_address[0]}:{gw.http_address[1]}/health") as response:
        health = await response.json()
    assert health["sip"]["incoming"] == 1 and health["sip"]["endpoint"]["new_calls"] == 1
    await until(lambda: gw.sip.allocator.in_use == 0, 5, "the RTP ports given back")


async def test_caller_hangs_up_with_bye(sip_gateway, webhook, peer, http, tmp_path):
    gw = await sip_gateway()
    async with sipp_uac(tmp_path, "uac_call_bye.xml", gw.sip_address[1], keys={"rtp_port": peer.port}) as sipp:
        client, _ = await incoming_call(http, gw, webhook)
        await client.send({"command": "accept", "option": {}})
        hangup, = await client.wait_event("hangup", timeout=10)
        assert (hangup["reason"], hangup["initiator"]) == ("byCaller", "caller")
        assert await sipp.wait(10) == 0, sipp.errors()
    assert [e["key"] for e in client.of("metrics")] == ["rtp"]


async def test_early_media_plays_the_ringtone_and_the_ringing_recorder_wins(sip_gateway, webhook, peer, http,
                                                                            tmp_path):
    gw = await sip_gateway()
    write_wav(tmp_path / "media" / "ring.wav", tone(440, 5.0, 8000), 8000)
    async with sipp_uac(tmp_path, "uac_call.xml", gw.sip_address[1], keys={"rtp_port": peer.port}) as sipp:
        client, _ = await incoming_call(http, gw, webhook)
        await client.send({"command": "ringing", "earlyMedia": True, "ringtone": "ring.wav",
                           "recorder": {"recorderFile": "ringing.wav"}})
        ringing = await client.wait_event("trackStart", count=2)
        assert any(e.get("playId") == "ring.wav" for e in ringing)
        await until(lambda: len(peer.packets) > 50, 5, "early media at the caller")
        early = peer.audio()
        assert abs(dominant_frequency(early[-8000:], 16000) - 440) < 15 and rms(early[-8000:]) > 1000
        await client.send({"command": "accept", "option": {"recorder": {"recorderFile": "accepted.wav"},
                                                          "vad": {"type": "webrtc"}}})
        await client.wait_event("answer")
        # The answer stops the ringtone: it ends long before its 5 s.
        ring_end, = await client.wait_event("trackEnd")
        assert ring_end["playId"] == "ring.wav" and ring_end["duration"] < 4000
        await client.send({"command": "hangup"})
        await client.wait_closed(10)
        assert await sipp.wait(10) == 0, sipp.errors()
    assert (tmp_path / "recorders" / "ringing.wav").exists()
    assert not (tmp_path / "recorders" / "accepted.wav").exists()
    samples, channels, _ = read_wav(tmp_path / "recorders" / "ringing.wav")
    assert channels == 2 and rms(samples.reshape(-1, 2)[:, 1]) > 1000     # the ringtone, on our channel


@pytest.mark.parametrize("how", ["reject", "timeout", "leave", "no-handler", "webhook-fails", "bad-scheme",
                                 "require"])
async def test_calls_turned_down(sip_gateway, webhook, peer, http, tmp_path, how):
    expected = {"reject": "486", "timeout": "408", "leave": "603", "no-handler": "503", "webhook-fails": "503",
                "bad-scheme": "416", "require": "420"}[how]
    overrides: dict[str, Any] = {}
    if how == "timeout":
        overrides["accept_timeout"] = 1.0
    if how == "no-handler":
        overrides["handler_url"] = None
    if how == "webhook-fails":
        webhook.status = 500
    gw = await sip_gateway(**overrides)
    keys = {"rtp_port": peer.port, "scheme": "mailto" if how == "bad-scheme" else "sip"}
    if how == "require":
        keys["extra_header"] = "Require: 100rel"
    async with sipp_uac(tmp_path, "uac_refused.xml", gw.sip_address[1], keys=keys, extra=("-trace_logs",)) as sipp:
        if how in ("reject", "timeout", "leave"):
            client, _ = await incoming_call(http, gw, webhook)
            if how == "reject":
                await client.send({"command": "reject", "reason": "Busy Here", "code": 486})
            elif how == "leave":
                await client.ws.close()
            if how != "leave":
                hangup, = await client.wait_event("hangup", timeout=5)
                assert hangup["reason"] == {"reject": "Busy Here", "timeout": "accept_timeout"}[how]
        assert await sipp.wait(15) == 0, sipp.errors()
    assert final_status(tmp_path) == [expected]
    if how == "webhook-fails":
        assert gw.sip.webhooks_failed == 1 and len(webhook.bodies) == 1
    if how in ("no-handler", "bad-scheme", "require"):
        assert not webhook.bodies


async def test_caller_cancels_while_it_rings(sip_gateway, webhook, peer, http, tmp_path):
    gw = await sip_gateway()
    async with sipp_uac(tmp_path, "uac_cancel.xml", gw.sip_address[1], keys={"rtp_port": peer.port}) as sipp:
        client, _ = await incoming_call(http, gw, webhook)
        await client.send({"command": "ringing"})
        hangup, = await client.wait_event("hangup", timeout=10)
        assert (hangup["reason"], hangup["initiator"]) == ("canceled", "caller") and "ringingTime" in hangup
        assert await sipp.wait(10) == 0, sipp.errors()


async def test_late_offer_is_answered_in_the_ack(sip_gateway, webhook, peer, http, tmp_path):
    gw = await sip_gateway()
    async with sipp_uac(tmp_path, "uac_late_offer.xml", gw.sip_address[1], keys={"rtp_port": peer.port}) as sipp:
        client, body = await incoming_call(http, gw, webhook)
        assert body["offer"] == "" and client.of("incoming")[0]["sdp"] == ""
        await client.send({"command": "accept", "option": {}})
        answer, = await client.wait_event("answer")
        assert "m=audio" in answer["sdp"]                 # our offer; the caller answers in its ACK
        await client.send({"command": "tts", "text": "late offers work too", "playId": "late"})
        await until(lambda: len(peer.packets) > 25, 5, "media after the answer in the ACK")
        await client.send({"command": "hangup"})
        await client.wait_closed(10)
        assert await sipp.wait(10) == 0, sipp.errors()
    assert {p.payload_type for p in peer.packets} == {0}
