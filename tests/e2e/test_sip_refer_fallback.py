"""A `refer` the peer refuses (405): the gateway calls the target itself (a second SIPp) and bridges
it to the caller, music on hold until the target answers; hangup of either side ends the other.

Both SIPps send their media to the test's own sockets, so what each side hears is measured: the
caller hears the music on hold (600 Hz) while the target rings, then the target (1000 Hz); the
target hears the caller (440 Hz)."""

from __future__ import annotations

import numpy as np

from protocol.codecs import Encoder, codec_info
from tests.conftest import connect
from tests.support.audio import dominant_frequency, rms, tone
from tests.support.sip_tools import RtpPeer, sipp_uas, until, write_wav

PCMU = codec_info("pcmu")


def ulaw(freq: float, seconds: float) -> bytes:
    return Encoder(PCMU).encode(tone(freq, seconds, 16000))


def heard(peer: RtpPeer, start: int, end: int | None = None) -> np.ndarray:
    """What ``peer`` received in packets[start:end], decoded (16 kHz)."""
    packets = [p for p in peer.packets[start:end] if p.payload_type == 0]
    decoder_peer = RtpPeer()
    decoder_peer.packets = packets
    return decoder_peer.audio(PCMU)


def _dir(tmp_path, name: str):
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    return path


def _freq(pcm: np.ndarray) -> float:
    assert len(pcm) >= 8000, f"only {len(pcm)} samples heard"
    assert rms(pcm) > 500, f"only silence heard (rms {rms(pcm):.0f})"
    return dominant_frequency(pcm, 16000)


async def _transfer(client, tmp_path, target_port: int) -> None:
    write_wav(tmp_path / "media" / "moh.wav", tone(600, 6.0, 8000), 8000)
    await client.send({"command": "refer", "caller": "sip:bot@gateway.test",
                       "callee": f"sip:transfer-target@127.0.0.1:{target_port}",
                       "options": {"timeout": 10, "moh": "moh.wav"}})


async def test_refused_refer_bridges_the_target_and_its_hangup_ends_the_call(gateway, http, tmp_path):
    caller, target = await RtpPeer.open(), await RtpPeer.open()
    stops = []
    try:
        async with sipp_uas(_dir(tmp_path, "caller"), "uas_refer_405_peer.xml", rtp_echo=False,
                            extra=("-key", "rtp_port", str(caller.port))) as (sipp_caller, caller_port), \
                sipp_uas(_dir(tmp_path, "target"), "uas_transfer_target_bye.xml", rtp_echo=False,
                         extra=("-key", "rtp_port", str(target.port))) as (sipp_target, target_port):
            client = await connect(http, gateway, "/call/sip", id="refer-bridge")
            await client.send({"command": "invite", "option": {"callee": f"sip:phone@127.0.0.1:{caller_port}"}})
            await client.wait_event("answer", timeout=10)
            await until(lambda: caller.sources, 5, "the gateway's RTP at the caller")
            stops.append(caller.send_audio(ulaw(440, 12.0), next(iter(caller.sources))))

            await _transfer(client, tmp_path, target_port)
            fallback, = await client.wait_event("other", timeout=10)
            assert fallback["sender"] == "refer"
            assert (fallback["extra"]["code"], fallback["extra"]["source"]) == (405, "fallback")
            # The target's 180: `other` with its code, and `ringing` flagged as the refer's.
            await until(lambda: any(e.get("refer") for e in client.of("ringing")), 10, "the target ringing")
            assert [e["extra"]["code"] for e in client.of("other")] == [405, 180]
            moh_from = len(caller.packets)
            bridged = await client.wait_event("answer", count=2, timeout=10)
            moh_to = len(caller.packets)
            assert bridged[1]["refer"] is True and "m=audio" in bridged[1]["sdp"]
            # While the target rang (1.5 s, its scenario's pause) the caller heard the music on hold.
            moh_freq = _freq(heard(caller, moh_from + 5, moh_to))
            assert abs(moh_freq - 600) < 20, moh_freq

            # Bridged: the target hears the caller; what the target sends reaches the caller.
            await until(lambda: target.sources, 5, "the caller's audio at the target")
            stops.append(target.send_audio(ulaw(1000, 6.0), next(iter(target.sources))))
            from_target = len(caller.packets)
            await until(lambda: len(caller.packets) > from_target + 75, 5, "the target's audio at the caller")
            caller_freq = _freq(heard(caller, from_target + 20))
            assert abs(caller_freq - 1000) < 20, caller_freq
            target_freq = _freq(heard(target, 10))
            assert abs(target_freq - 440) < 20, target_freq

            # The target hangs up (talk_ms after its answer): the gateway ends the caller's side too.
            hangup, = await client.wait_event("hangup", timeout=10)
            assert (hangup["reason"], hangup["initiator"]) == ("byRefer", "callee")
            assert await sipp_target.wait(10) == 0, sipp_target.errors()
            assert await sipp_caller.wait(10) == 0, sipp_caller.errors()
        assert not client.of("error")
        rtp, = [e for e in client.of("metrics") if e["key"] == "rtp"]
        bridge = rtp["data"]["bridge"]           # frames relayed each way while bridged (~3 s)
        assert bridge["to_target"] > 100 and bridge["to_caller"] > 50, bridge
    finally:
        for stop in stops:
            stop()
        caller.close()
        target.close()


async def test_the_callers_hangup_ends_the_bridged_target(gateway, http, tmp_path):
    caller, target = await RtpPeer.open(), await RtpPeer.open()
    try:
        async with sipp_uas(_dir(tmp_path, "caller"), "uas_refer_405_bye.xml", rtp_echo=False,
                            extra=("-key", "rtp_port", str(caller.port))) \
                as (sipp_caller, caller_port), \
                sipp_uas(_dir(tmp_path, "target"), "uas_transfer_target.xml", rtp_echo=False,
                         extra=("-key", "rtp_port", str(target.port))) \
                as (sipp_target, target_port):
            client = await connect(http, gateway, "/call/sip", id="refer-bridge-bye")
            await client.send({"command": "invite", "option": {"callee": f"sip:phone@127.0.0.1:{caller_port}"}})
            await client.wait_event("answer", timeout=10)
            await _transfer(client, tmp_path, target_port)
            bridged = await client.wait_event("answer", count=2, timeout=10)
            assert bridged[1]["refer"] is True
            # The caller hangs up: the gateway sends BYE to the target (its SIPp ends cleanly).
            hangup, = await client.wait_event("hangup", timeout=10)
            assert (hangup["reason"], hangup["initiator"]) == ("byCallee", "callee")
            assert await sipp_target.wait(10) == 0, sipp_target.errors()
            assert await sipp_caller.wait(10) == 0, sipp_caller.errors()
    finally:
        caller.close()
        target.close()


async def test_a_target_that_is_busy_is_a_refer_error_and_the_call_goes_on(gateway, http, tmp_path):
    caller = await RtpPeer.open()
    try:
        async with sipp_uas(_dir(tmp_path, "caller"), "uas_refer_405_peer.xml", rtp_echo=False,
                            extra=("-key", "rtp_port", str(caller.port))) as (sipp_caller, caller_port), \
                sipp_uas(_dir(tmp_path, "target"), "uas_busy.xml") as (sipp_target, target_port):
            client = await connect(http, gateway, "/call/sip", id="refer-busy")
            await client.send({"command": "invite", "option": {"callee": f"sip:phone@127.0.0.1:{caller_port}"}})
            await client.wait_event("answer", timeout=10)
            await _transfer(client, tmp_path, target_port)
            error, = await client.wait_event("error", timeout=10)
            assert error["sender"] == "refer" and error["code"] == 486
            # Back to answered: the music on hold stopped, media commands work, the call ends normally.
            await client.send({"command": "tts", "text": "still here", "playId": "after"})
            await until(lambda: any(e.get("playId") == "after" for e in client.of("trackStart")), 10,
                        "the tts after the failed transfer")
            await client.send({"command": "hangup"})
            await client.wait_closed(10)
            assert await sipp_target.wait(10) == 0, sipp_target.errors()
            assert await sipp_caller.wait(10) == 0, sipp_caller.errors()
        assert client.of("hangup")[0]["reason"] == "hangup_command"
    finally:
        caller.close()
