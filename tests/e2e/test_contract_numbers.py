"""Fractions where the contract says `number`, end to end on /call: a `tts` with a fractional
waitInputTimeout, volume and speed plays and times out on time; fractional VAD and recorder
options are accepted and take effect (whole units rounded)."""

from __future__ import annotations

import asyncio
import wave

import numpy as np

from tests.conftest import connect
from tests.support.audio import frames, rms


async def answered(http, gateway, sid: str, **option):
    client = await connect(http, gateway, id=sid)
    await client.send({"command": "invite", "option": {"codec": "pcm", **option}})
    await client.wait_event("answer")
    return client


async def stream_silence(client, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    zero = bytes(640)
    for i in range(int(seconds * 50)):
        await client.ws.send_bytes(zero)
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))


async def test_tts_with_fractional_wait_input_timeout_volume_and_speed_plays(gateway, http):
    client = await answered(http, gateway, "frac-tts")
    mark = len(client.audio)
    await client.send({"command": "tts", "text": "Hello, please say something.", "playId": "ask",
                       "waitInputTimeout": 1.5, "option": {"volume": 5.5, "speed": 1.25}})
    starts = await client.wait_event("trackStart", count=2, timeout=10)   # the leg's, then the item's
    start, = [e for e in starts if e.get("playId") == "ask"]
    end, = await client.wait_event("trackEnd", timeout=15)
    assert end["playId"] == "ask" and start["trackId"] == end["trackId"] == "serverSideTrack"
    speech = np.concatenate([np.frombuffer(a, dtype="<i2") for a in client.audio[mark:]])
    voiced = [f for f in frames(speech, 320) if rms(f) > 300]
    assert len(voiced) * 0.02 > 0.5, len(voiced)
    silence, = await client.wait_event("silence", timeout=3)
    assert silence["trackId"] == "serverSideTrack" and silence["duration"] == 1500
    assert silence["startTime"] == end["timestamp"]
    assert 1400 <= silence["timestamp"] - end["timestamp"] <= 1800, (silence, end)
    assert client.of("error") == []
    await client.ws.close()


async def test_fractional_listening_and_recording_options_take_effect(gateway, http, tmp_path):
    client = await answered(http, gateway, "frac-opts",
                            vad={"type": "webrtc", "speechPadding": 200.5, "silencePadding": 100.5,
                                 "silenceTimeout": 500.5, "ratio": 0.55, "voiceThreshold": 0.5},
                            recorder={"recorderFile": "{id}", "samplerate": 8000.4, "ptime": 100.6})
    await stream_silence(client, 1.3)
    timeouts = await client.wait_event("silence", count=2, timeout=3)
    assert all(e["trackId"] == "frac-opts" for e in timeouts)
    # A silence once 500.5 ms and 1001 ms of no speech have passed, on the first 20 ms WebRTC
    # window to reach it (500 would give 500 and 1000: the fraction is not truncated away).
    assert [e["duration"] for e in timeouts[:2]] == [520, 1020], timeouts
    await client.send({"command": "hangup"})
    await client.wait_closed()
    assert client.of("error") == []
    with wave.open(str(tmp_path / "recorders" / "frac-opts.wav")) as w:
        assert (w.getnchannels(), w.getframerate()) == (2, 8000)
        assert w.getnframes() >= 8000


async def test_values_out_of_range_are_refused_with_the_field_and_the_range(gateway, http):
    client = await connect(http, gateway, id="ranges")
    # A recorder rate the resampler cannot serve used to end the call with an internal error once
    # answered; now the invite is refused, and a corrected one is answered.
    await client.send({"command": "invite", "option": {"codec": "pcm", "recorder": {
        "recorderFile": "{id}", "samplerate": 44101}}})
    err, = await client.wait_event("error")
    assert err["sender"] == "command" and err["code"] == 400
    assert err["error"] == ("invite: option.recorder.samplerate: expected one of 8000, 11025, 12000, 16000, "
                            "22050, 24000, 32000, 44100, 48000 (Hz), got 44101")
    assert client.of("answer") == []
    await client.send({"command": "invite", "option": {"codec": "pcm", "handshakeTimeout": 30,
                                                       "tts": {"volume": 11}}})
    err = (await client.wait_event("error", count=2))[1]
    assert err["error"] == "invite: option.tts.volume: expected number from 1 to 10, got 11"
    await client.send({"command": "invite", "option": {"codec": "pcm", "handshakeTimeout": "abc"}})
    err = (await client.wait_event("error", count=3))[2]
    assert err["error"].startswith("invite: option.handshakeTimeout: expected a duration such as \"30s\"")
    await client.send({"command": "invite", "option": {"codec": "pcm", "handshakeTimeout": 30}})
    await client.wait_event("answer")

    # A tts that asks for what cannot be done plays nothing; the call goes on and the next one plays.
    for bad in ({"speed": 0}, {"speed": -1}, {"volume": 0}):
        await client.send({"command": "tts", "text": "never", "playId": "bad", "option": bad})
    errors = await client.wait_event("error", count=6)
    assert [e["error"] for e in errors[3:]] == [
        "tts: option.speed: expected number from 0.5 to 2, got 0",
        "tts: option.speed: expected number from 0.5 to 2, got -1",
        "tts: option.volume: expected number from 1 to 10, got 0",
    ]
    await client.send({"command": "tts", "text": "Hello.", "playId": "good", "option": {"speed": 2}})
    end, = await client.wait_event("trackEnd", timeout=10)
    assert end["playId"] == "good"
    assert [e for e in client.events if e.get("playId") == "bad"] == []
    await client.send({"command": "hangup"})
    await client.wait_closed()
