"""Playback on the /call leg: tts (base64 audio here; spoken text in test_tts.py), interrupt,
pause/resume, playId rules, autoHangup — checked on the audio the client receives."""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np

from tests.conftest import connect
from tests.support.audio import dominant_frequency, rms, tone
from tests.support.bridging import loud_frames, until_heard
from tests.support.poll import until


def b64(pcm: np.ndarray) -> str:
    return base64.b64encode(pcm.astype("<i2").tobytes()).decode()


def tts_tone(freq: float, seconds: float, **fields) -> dict:
    return {"command": "tts", "text": b64(tone(freq, seconds, 16000)), "base64": True, **fields}


async def answered(http, gateway, sid: str):
    client = await connect(http, gateway, id=sid)
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    return client


def received(client, since: int = 0) -> np.ndarray:
    return np.concatenate([np.frombuffer(a, dtype="<i2") for a in client.audio[since:]])


async def played_for(client, since: int, frames: int, timeout: float = 5.0) -> None:
    """Until `frames` loud frames (20 ms each) have arrived after `since`: how far the playback
    got, measured on the audio itself rather than on this test's clock."""
    deadline = time.monotonic() + timeout
    while sum(rms(np.frombuffer(f, dtype="<i2")) > 100 for f in client.audio[since:]) < frames:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {frames} loud frames within {timeout} s")
        await client.wait_audio(len(client.audio) + 1, timeout=max(0.01, deadline - time.monotonic()))


async def frames_after(client, frames: int) -> None:
    """Until `frames` more frames (whatever they carry) have arrived: what follows a command."""
    await client.wait_audio(len(client.audio) + frames)


class Timed:
    """Arrival time of every audio frame the client receives."""

    def __init__(self, client) -> None:
        self.client, self.times = client, []
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        seen = len(self.client.audio)
        while True:
            await asyncio.sleep(0.001)
            while seen < len(self.client.audio):
                self.times.append((time.monotonic(), self.client.audio[seen]))
                seen += 1

    def stop(self) -> None:
        self._task.cancel()


async def test_tts_audio_plays_with_track_events(gateway, http):
    client = await answered(http, gateway, "t1")
    mark = len(client.audio)
    await client.send(tts_tone(1000, 1.0, playId="p1"))
    start = (await client.wait_event("trackStart", count=2))[1]
    assert start == {**start, "trackId": "serverSideTrack", "playId": "p1"}
    end, = (await client.wait_event("trackEnd", timeout=4))
    assert end["playId"] == "p1" and end["trackId"] == "serverSideTrack"
    assert abs(end["duration"] - 1000) <= 20
    frames = [np.frombuffer(a, dtype="<i2") for a in client.audio[mark:]]
    loud = [f for f in frames if rms(f) > 100]
    assert len(loud) == 50  # exactly 1 s of 20 ms frames, all before the trackEnd
    assert abs(dominant_frequency(np.concatenate(loud), 16000) - 1000) < 10
    await client.ws.close()


async def test_interrupt_cuts_audio_within_40ms_and_reports_position(gateway, http):
    client = await answered(http, gateway, "t2")
    mark = len(client.audio)
    await client.send(tts_tone(1000, 3.0, playId="long"))
    await client.wait_event("trackStart", count=2)
    timed = Timed(client)
    await played_for(client, mark, 25)
    sent_at = time.monotonic()
    await client.send({"command": "interrupt"})
    interruption, = await client.wait_event("interruption")
    await frames_after(client, 15)
    timed.stop()
    loud_at = [t - sent_at for t, frame in timed.times if rms(np.frombuffer(frame, dtype="<i2")) > 100]
    assert any(-0.1 < t < 0 for t in loud_at), "audio was playing when the interrupt was sent"
    assert max(loud_at) < 0.040, f"loud audio {max(loud_at) * 1000:.1f} ms after the interrupt"
    assert len(timed.times) > len(loud_at)  # silence follows
    assert interruption["playId"] == "long" and interruption["totalDuration"] == 3000
    assert 400 <= interruption["current"] <= 700
    ends = client.of("trackEnd")
    assert ends[-1]["playId"] == "long" and ends[-1]["duration"] < 800
    await client.ws.close()


async def test_graceful_interrupt_fades_then_stops(gateway, http):
    client = await answered(http, gateway, "t3")
    mark = len(client.audio)
    await client.send(tts_tone(500, 3.0, playId="g"))
    await client.wait_event("trackStart", count=2)
    await played_for(client, mark, 20)
    mark = len(client.audio)
    await client.send({"command": "interrupt", "graceful": True})
    await client.wait_event("interruption")
    await frames_after(client, 15)
    levels = [rms(np.frombuffer(f, dtype="<i2")) for f in client.audio[mark:]]
    loud = [i for i, level in enumerate(levels) if level > 50]
    assert loud and len(loud) <= 6          # the fade lasts 60 ms (3 frames) plus frames in flight
    fading = [levels[i] for i in loud]
    assert fading[-1] < fading[0]           # it fades rather than stopping dead
    await client.ws.close()


async def test_pause_and_resume(gateway, http):
    client = await answered(http, gateway, "t4")
    mark = len(client.audio)
    await client.send(tts_tone(1000, 1.0, playId="pr"))
    await client.wait_event("trackStart", count=2)
    await played_for(client, mark, 15)
    await client.send({"command": "pause"})
    await frames_after(client, 5)           # frames already on their way when the pause came
    mark = len(client.audio)
    await frames_after(client, 20)
    assert rms(received(client, mark)) == 0
    assert client.of("trackEnd") == []
    await client.send({"command": "resume"})
    end, = await client.wait_event("trackEnd", timeout=3)
    assert abs(end["duration"] - 1000) <= 20  # the pause is not part of the played duration
    await client.ws.close()


async def test_same_play_id_queues_and_a_new_one_replaces(gateway, http):
    client = await answered(http, gateway, "t5")
    await client.send(tts_tone(700, 0.4, playId="a"))
    await client.send(tts_tone(900, 0.4, playId="a"))
    await client.wait_event("trackEnd", count=2, timeout=4)
    assert [e.get("playId") for e in client.of("trackStart")[1:]] == ["a", "a"]
    assert client.of("interruption") == []

    mark = len(client.audio)
    await client.send(tts_tone(700, 3.0, playId="b"))
    await client.wait_event("trackStart", count=4)
    await played_for(client, mark, 15)
    await client.send(tts_tone(900, 0.4, playId="c"))
    await client.wait_event("trackEnd", count=4, timeout=4)
    interruption, = client.of("interruption")
    assert interruption["playId"] == "b"
    assert [e.get("playId") for e in client.of("trackEnd")] == ["a", "a", "b", "c"]
    await client.ws.close()


async def test_streaming_pieces_make_one_track(gateway, http):
    client = await answered(http, gateway, "t6")
    for i in range(3):
        await client.send(tts_tone(1000, 0.3, playId="s", streaming=True, endOfStream=(i == 2)))
        await asyncio.sleep(0.1)
    end, = await client.wait_event("trackEnd", timeout=4)
    assert len(client.of("trackStart")) == 2  # the leg's and one for the stream
    assert abs(end["duration"] - 900) <= 20
    await client.ws.close()


async def test_auto_hangup_after_playback(gateway, http):
    client = await answered(http, gateway, "t7")
    await client.send(tts_tone(1000, 0.3, playId="bye", autoHangup=True))
    await client.wait_closed(timeout=4)
    hangup = client.events[-1]
    assert hangup["event"] == "hangup" and hangup["reason"] == "autohangup" and hangup["initiator"] == "system"
    assert client.of("trackEnd")[0]["playId"] == "bye"


async def test_history_custom_and_refusals(gateway, http):
    client = await connect(http, gateway, id="t8")
    await client.send(tts_tone(1000, 0.1))
    err, = await client.wait_event("error")
    assert "not answered" in err["error"]
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    await client.send({"command": "tts", "text": "hello", "option": {"provider": "nonesuch"}})
    await client.send({"command": "tts", "text": "###", "base64": True})
    errors = await client.wait_event("error", count=3)
    assert errors[1]["sender"] == "tts" and "nonesuch" in errors[1]["error"]
    assert "base64" in errors[2]["error"]
    await client.send({"command": "history", "speaker": "user", "text": "hi there"})
    await client.send({"command": "custom", "sender": "bot", "data": {"k": [1, 2]}})
    history, = await client.wait_event("addHistory")
    custom, = await client.wait_event("custom")
    assert history["speaker"] == "user" and history["text"] == "hi there"
    assert custom["sender"] == "bot" and custom["data"] == {"k": [1, 2]}
    await client.ws.close()


async def test_bridge_patches_two_calls_both_ways_and_unbridge_undoes_it(gateway, http):
    from tests.support.audio import frames

    a = await answered(http, gateway, "ba")
    b = await answered(http, gateway, "bb")
    await a.send({"command": "bridge", "targetSessionId": "nobody"})
    err, = await a.wait_event("error")
    assert err["code"] == 404 and "nobody" in err["error"]
    await a.send({"command": "bridge", "targetSessionId": "bb"})

    async def talk(seconds: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, (fa, fb) in enumerate(zip(frames(tone(700, seconds, 16000), 320),
                                         frames(tone(1200, seconds, 16000), 320))):
            await a.ws.send_bytes(fa.tobytes())
            await b.ws.send_bytes(fb.tobytes())
            await asyncio.sleep(max(0, start + (i + 1) * 0.02 - loop.time()))

    await until_heard(a, b)
    ma, mb = len(a.audio), len(b.audio)
    await talk(1.0)
    await until(lambda: len(loud_frames(b, mb)) >= 40 and len(loud_frames(a, ma)) >= 40, timeout=2,
                what="both tones heard")
    loud_b, loud_a = loud_frames(b, mb), loud_frames(a, ma)
    assert abs(dominant_frequency(np.concatenate(loud_b), 16000) - 700) < 10
    assert abs(dominant_frequency(np.concatenate(loud_a), 16000) - 1200) < 10

    await b.send({"command": "unbridge"})
    await until_heard(a, b, hears=False)
    ma, mb = len(a.audio), len(b.audio)
    await talk(0.5)
    # each call has sent 5 frames (100 ms) more than was talked: the last talked frames would be in
    await until(lambda: len(a.audio) - ma >= 30 and len(b.audio) - mb >= 30, timeout=5, what="0.6 s of audio")
    assert rms(received(a, ma)) == 0 and rms(received(b, mb)) == 0
    await a.ws.close()
    await b.ws.close()
