"""Outbound calls on `/call/sip` against SIPp as the called phone, through the real gateway and a
real WebSocket application: answer with RTP both ways (SIPp echoes it), digest challenges,
rejection, CANCEL before the answer, early media reaching VAD and the recorder."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import connect
from tests.support.audio import rms
from tests.support.sip_tools import read_wav, sipp_uas, until


def _ordered(client, *names: str) -> list[str]:
    return [e["event"] for e in client.events if e["event"] in names]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_answered_call_carries_media_both_ways_and_ends_with_bye(gateway, http, tmp_path, transport):
    sipp_transport = "t1" if transport == "tcp" else "u1"
    async with sipp_uas(tmp_path, "uas_echo.xml", transport=sipp_transport, extra=("-trace_msg",)) as (sipp, port):
        client = await connect(http, gateway, "/call/sip", id="out-echo")
        callee = f"sip:echo@127.0.0.1:{port}" + (";transport=tcp" if transport == "tcp" else "")
        await client.send({"command": "invite", "option": {
            "callee": callee, "caller": "sip:bot@gateway.test",
            "vad": {"type": "webrtc"}, "recorder": {"recorderFile": "out-echo.wav"}}})
        ringing, = await client.wait_event("ringing")
        assert ringing["earlyMedia"] is False
        answer, = await client.wait_event("answer")
        assert "m=audio" in answer["sdp"] and "PCMU/8000" in answer["sdp"]
        await client.send({"command": "tts", "text": "hello there, this is the gateway speaking on a phone line",
                           "playId": "p1"})
        # SIPp sends our own speech back: the call hears it (VAD), so RTP went out and came in.
        await client.wait_event("speaking", timeout=10)
        await until(lambda: any(e.get("playId") == "p1" for e in client.of("trackEnd")), 15, "the tts played out")
        await client.send({"command": "hangup", "headers": {"X-Reason": "test done"}})
        await client.wait_closed(10)
        assert await sipp.wait(10) == 0, sipp.errors()
    assert _ordered(client, "ringing", "answer", "trackStart", "metrics", "hangup")[:3] == ["ringing", "answer",
                                                                                          "trackStart"]
    rtp, = [e for e in client.of("metrics") if e["key"] == "rtp"]
    assert rtp["data"]["codec"] == "PCMU" and rtp["data"]["packets_received"] > 100
    assert rtp["data"]["packets_sent"] >= rtp["data"]["packets_received"]
    hangup, = client.of("hangup")
    assert hangup["reason"] == "hangup_command" and hangup["to"]["source"].startswith("sip:echo@")
    assert client.events[-1]["event"] == "hangup" and client.events.index(rtp) < client.events.index(hangup)
    # The hangup's headers rode on the BYE.
    messages = "".join(p.read_text() for p in tmp_path.glob("*_messages.log"))
    bye = messages[messages.index("BYE sip:"):]
    assert "X-Reason: test done" in bye[:bye.index("\n\n")]
    samples, channels, rate = read_wav(tmp_path / "recorders" / "out-echo.wav")
    caller = samples.reshape(-1, channels)[:, 0]
    assert channels == 2 and rms(caller) > 200       # the echo of the speech, on the caller's channel
    stats = gateway.sip.endpoint.stats()
    assert stats.transport_errors == 0 and (stats.tcp_opened == 1) == (transport == "tcp")
    await until(lambda: gateway.sip.allocator.in_use == 0, 5, "the RTP ports given back")


async def test_digest_challenge_is_answered(gateway, http, tmp_path):
    async with sipp_uas(tmp_path, "uas_auth.xml") as (sipp, port):
        client = await connect(http, gateway, "/call/sip", id="out-auth")
        await client.send({"command": "invite", "option": {
            "callee": f"sip:secure@127.0.0.1:{port}",
            "sip": {"username": "alice", "password": "s3cret", "realm": "sipp.test",
                    "headers": {"X-Campaign": "spring"}}}})
        await client.wait_event("answer", timeout=10)
        assert not client.of("reject")
        await client.send({"command": "hangup"})
        await client.wait_closed(10)
        assert await sipp.wait(10) == 0, sipp.errors()


async def test_wrong_password_is_a_reject_with_the_status(gateway, http, tmp_path):
    async with sipp_uas(tmp_path, "uas_auth.xml", rtp_echo=False) as (sipp, port):
        client = await connect(http, gateway, "/call/sip", id="out-badauth")
        await client.send({"command": "invite", "option": {
            "callee": f"sip:secure@127.0.0.1:{port}", "sip": {"username": "alice", "password": "wrong"}}})
        reject, = await client.wait_event("reject", timeout=10)
        assert reject["code"] == 403 and "Forbidden" in reject["reason"]
        hangup, = await client.wait_event("hangup")
        assert hangup["reason"] == "rejected" and hangup["initiator"] == "callee"
        await sipp.wait(10)


async def test_busy_phone_rejects_with_486(gateway, http, tmp_path):
    async with sipp_uas(tmp_path, "uas_busy.xml", rtp_echo=False) as (sipp, port):
        client = await connect(http, gateway, "/call/sip", id="out-busy")
        await client.send({"command": "invite", "option": {"callee": f"busy@127.0.0.1:{port}"}})
        reject, = await client.wait_event("reject", timeout=10)
        assert (reject["code"], reject["reason"]) == (486, "Busy Here")
        await client.wait_closed()
        assert await sipp.wait(10) == 0, sipp.errors()
    assert _ordered(client, "ringing", "reject", "hangup") == ["ringing", "reject", "hangup"]
    assert not client.of("trackStart")


async def test_hangup_while_ringing_sends_cancel(gateway, http, tmp_path):
    async with sipp_uas(tmp_path, "uas_cancel.xml", rtp_echo=False) as (sipp, port):
        client = await connect(http, gateway, "/call/sip", id="out-cancel")
        await client.send({"command": "invite", "option": {"callee": f"sip:ring@127.0.0.1:{port}"}})
        await client.wait_event("ringing", timeout=10)
        await client.send({"command": "hangup", "reason": "caller gave up"})
        hangup, = await client.wait_event("hangup")
        assert hangup["reason"] == "caller gave up" and "answerTime" not in hangup
        # SIPp answered the CANCEL with 200 and the INVITE with 487, and got its ACK.
        assert await sipp.wait(10) == 0, sipp.errors()
    assert gateway.sip.endpoint.stats().transport_errors == 0


async def test_early_media_reaches_vad_and_recorder_before_the_answer(gateway, http, tmp_path):
    async with sipp_uas(tmp_path, "uas_early_media.xml") as (sipp, port):
        client = await connect(http, gateway, "/call/sip", id="out-early")
        await client.send({"command": "invite", "option": {
            "callee": f"sip:ivr@127.0.0.1:{port}", "vad": {"type": "webrtc"},
            "recorder": {"recorderFile": "out-early.wav"}}})
        ringing, = await client.wait_event("ringing", timeout=10)
        assert ringing["earlyMedia"] is True
        await client.wait_event("trackStart")
        # Speech played in early media comes back from the phone and is heard before any answer.
        await client.send({"command": "tts", "text": "one two three, can you hear me before the answer",
                           "playId": "early"})
        await client.wait_event("speaking", timeout=10)
        assert not client.of("answer")
        await client.wait_event("answer", timeout=10)
        await client.send({"command": "hangup"})
        await client.wait_closed(10)
        assert await sipp.wait(10) == 0, sipp.errors()
    order = _ordered(client, "ringing", "trackStart", "speaking", "answer", "hangup")
    assert order.index("speaking") < order.index("answer")
    assert len(client.of("trackStart")) == 2        # the leg's (early media) and the tts's, one each
    samples, channels, _ = read_wav(tmp_path / "recorders" / "out-early.wav")
    caller = samples.reshape(-1, channels)[:, 0].astype(np.int32)
    assert rms(caller) > 200


async def test_handshake_timeout_cancels_an_unanswered_call(gateway, http, tmp_path):
    async with sipp_uas(tmp_path, "uas_cancel.xml", rtp_echo=False) as (sipp, port):
        client = await connect(http, gateway, "/call/sip", id="out-timeout")
        await client.send({"command": "invite", "option": {"callee": f"sip:ring@127.0.0.1:{port}",
                                                           "handshakeTimeout": "1.5s"}})
        await client.wait_event("ringing", timeout=10)
        reject, = await client.wait_event("reject", timeout=5)
        assert reject["code"] == 408
        hangup, = await client.wait_event("hangup")
        assert hangup["reason"] == "rejected"
        # The phone saw a CANCEL and answered the INVITE 487.
        assert await sipp.wait(10) == 0, sipp.errors()


async def test_a_second_2xx_from_another_fork_is_acked_and_ended_with_bye(gateway, http, tmp_path):
    async with sipp_uas(tmp_path, "uas_forked_2xx.xml", extra=("-trace_msg",)) as (sipp, port):
        client = await connect(http, gateway, "/call/sip", id="forked")
        await client.send({"command": "invite", "option": {"callee": f"sip:phone@127.0.0.1:{port}"}})
        await client.wait_event("answer", timeout=10)

        def fork_ended() -> bool:
            # SIPp logs the BYE it received for the second fork's dialog (its To tag checked there).
            return any(log.read_bytes().count(b"BYE sip:") >= 1 for log in tmp_path.glob("*_messages.log"))

        await until(fork_ended, 5, "the BYE of the second fork")
        # The call itself goes on with the first fork until the application hangs up.
        assert not client.of("hangup")
        await client.send({"command": "hangup"})
        await client.wait_closed(10)
        assert await sipp.wait(10) == 0, sipp.errors()
    assert len(client.of("answer")) == 1
    assert client.of("hangup")[0]["reason"] == "hangup_command"
