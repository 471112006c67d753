"""tts with the embedded espeak-ng engine, play of files and URLs, the recorder and mediaPass,
on /call, checked on real audio, real files and real local servers."""

from __future__ import annotations

import asyncio
import json
import wave

import numpy as np
from aiohttp import WSMsgType, web

from protocol.codecs import Encoder, codec_info
from tests.conftest import connect
from tests.support.audio import dominant_frequency, frames, rms, tone
from tests.support.poll import file_closed, until
from tests.support.servers import local_server


async def answered(http, gateway, sid: str, **option):
    client = await connect(http, gateway, id=sid)
    await client.send({"command": "invite", "option": {"codec": "pcm", **option}})
    await client.wait_event("answer")
    return client


def pcm_of(chunks: list[bytes]) -> np.ndarray:
    return np.concatenate([np.frombuffer(a, dtype="<i2") for a in chunks]) if chunks else np.zeros(0, np.int16)


def write_wav(path, pcm: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


async def test_tts_speaks_with_the_embedded_engine(gateway, http):
    client = await answered(http, gateway, "speak")
    mark = len(client.audio)
    await client.send({"command": "tts", "text": "Hello, this is a test of the gateway.", "playId": "hi"})
    metric = (await client.wait_event("metrics", timeout=10))[0]
    assert metric["key"] == "ttfb.tts.espeak" and metric["data"]["playId"] == "hi"
    assert 0 <= metric["duration"] < 2000
    end, = await client.wait_event("trackEnd", timeout=15)
    done, = [m for m in client.of("metrics") if m["key"] == "completed.tts.espeak"]
    assert done["data"]["playId"] == "hi" and done["data"]["cached"] is False
    assert done["data"]["length"] == round(end["duration"] / 1000 * 16000) * 2 or \
        abs(done["data"]["length"] / 32000 - end["duration"] / 1000) < 0.05
    assert end["playId"] == "hi"
    speech = pcm_of(client.audio[mark:])
    voiced = [f for f in frames(speech, 320) if rms(f) > 300]
    # ~2 s of speech at 175 wpm; the frames with energy cover most of it.
    assert 1.2 < len(voiced) * 0.02 < 4.0, len(voiced) * 0.02
    assert abs(end["duration"] / 1000 - len(speech) / 16000) < 0.5
    await client.ws.close()


async def test_interrupting_speech_reports_words_and_subtitle(gateway, http):
    client = await answered(http, gateway, "words")
    text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
    await client.send({"command": "tts", "text": text, "playId": "count"})
    await client.wait_event("trackStart", count=2, timeout=10)
    # 1.5 s of the speech played (the call sends a frame every 20 ms): a few words in
    await client.wait_audio(len(client.audio) + 75, timeout=10)
    await client.send({"command": "interrupt"})
    ev, = await client.wait_event("interruption")
    assert ev["playId"] == "count" and ev["subtitle"] == text
    assert 2 <= ev["position"] <= 9, ev           # a few words in, far from the end
    assert 1300 <= ev["current"] <= 1900
    assert ev["totalDuration"] >= ev["current"]
    await client.ws.close()


async def test_streaming_tts_starts_before_the_last_piece(gateway, http):
    client = await answered(http, gateway, "stream")
    await client.send({"command": "tts", "text": "This is the first part of a long answer,",
                       "playId": "s", "streaming": True})
    starts = await client.wait_event("trackStart", count=2, timeout=10)
    assert starts[1]["playId"] == "s"            # audio started with only one piece sent
    await client.send({"command": "tts", "text": "and this is the end.", "playId": "s",
                       "streaming": True, "endOfStream": True})
    end, = await client.wait_event("trackEnd", timeout=15)
    assert end["playId"] == "s" and end["duration"] > 2000
    assert len(client.of("trackStart")) == 2
    await client.ws.close()


async def test_unknown_voice_is_an_error_and_the_call_goes_on(gateway, http):
    client = await answered(http, gateway, "voice")
    await client.send({"command": "tts", "text": "hello", "speaker": "no-such-voice", "playId": "v"})
    err, = await client.wait_event("error", timeout=10)
    assert err["sender"] == "tts" and "no-such-voice" in err["error"]
    await client.send({"command": "tts", "text": "still here", "playId": "w"})
    ends = await client.wait_event("trackEnd", count=2, timeout=15)
    assert ends[-1]["playId"] == "w" and ends[-1]["duration"] > 300
    await client.ws.close()


async def test_play_a_wav_from_media_root_arrives_as_1khz(gateway, http, tmp_path):
    media = tmp_path / "media"
    media.mkdir(exist_ok=True)
    write_wav(media / "beep.wav", tone(1000, 1.0, 8000), 8000)
    client = await answered(http, gateway, "play", codec="pcmu")
    mark = len(client.audio)
    await client.send({"command": "play", "url": "beep.wav"})
    start = (await client.wait_event("trackStart", count=2))[1]
    assert start["playId"] == "beep.wav"
    end, = await client.wait_event("trackEnd", timeout=5)
    assert abs(end["duration"] - 1000) <= 20
    from protocol.codecs import Decoder
    dec = Decoder(codec_info("pcmu"))
    heard = np.concatenate([dec.decode(f) for f in client.audio[mark:]])
    loud = np.concatenate([f for f in frames(heard, 320) if rms(f) > 1000])
    assert abs(len(loud) / 16000 - 1.0) < 0.1
    assert abs(dominant_frequency(loud, 16000) - 1000) < 10
    await client.ws.close()


async def test_play_failures_are_error_events(local_fetch_gateway, http, tmp_path):
    gateway = local_fetch_gateway
    (tmp_path / "secret.wav").write_bytes(b"RIFF")
    client = await answered(http, gateway, "playfail")
    await client.send({"command": "play", "url": "http://127.0.0.1:9/nothing.wav"})
    await client.send({"command": "play", "url": "../secret.wav"})
    errors = await client.wait_event("error", count=2, timeout=10)
    by_url = {("127.0.0.1:9" in e["error"]): e for e in errors}
    assert by_url[True]["sender"] == "play" and by_url[True]["code"] == 502
    assert by_url[False]["sender"] == "play" and by_url[False]["code"] == 400
    ends = await client.wait_event("trackEnd", count=2, timeout=5)
    assert {e["playId"] for e in ends} == {"http://127.0.0.1:9/nothing.wav", "../secret.wav"}
    assert all(e["duration"] == 0 for e in ends)
    await client.ws.close()


async def test_play_from_a_url(local_fetch_gateway, http):
    gateway = local_fetch_gateway
    import io
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(tone(440, 0.5, 16000).tobytes())
    body = buf.getvalue()

    async def serve(request):
        return web.Response(body=body, content_type="audio/wav")

    async with local_server("/a.wav", serve) as port:
        client = await answered(http, gateway, "url")
        mark = len(client.audio)
        url = f"http://127.0.0.1:{port}/a.wav"
        await client.send({"command": "play", "url": url, "autoHangup": True})
        await client.wait_closed(timeout=5)
        played, leg = client.of("trackEnd")
        assert played["playId"] == url and abs(played["duration"] - 500) <= 20
        assert leg["trackId"] == "url" and "playId" not in leg
        assert client.events[-1]["reason"] == "autohangup"
        loud = np.concatenate([f for f in frames(pcm_of(client.audio[mark:]), 320) if rms(f) > 1000])
        assert abs(dominant_frequency(loud, 16000) - 440) < 10


async def test_recorder_holds_both_directions_aligned(gateway, http, tmp_path):
    client = await answered(http, gateway, "rec", recorder={"recorderFile": "calls/{id}", "samplerate": 16000})
    enc = Encoder(codec_info("pcm"))
    # The caller sends 0.5 s of silence then 0.5 s of a 700 Hz tone, in real time.
    signal = np.concatenate([np.zeros(8000, np.int16), tone(700, 0.5, 16000)])
    sent = asyncio.get_running_loop().time()
    for i, chunk in enumerate(frames(signal, 320)):
        await client.ws.send_bytes(enc.encode(chunk))
        await asyncio.sleep(max(0, sent + (i + 1) * 0.02 - asyncio.get_running_loop().time()))
    # Then the gateway plays 0.4 s of 1500 Hz.
    import base64
    await client.send({"command": "tts", "base64": True, "playId": "b",
                       "text": base64.b64encode(tone(1500, 0.4, 16000).tobytes()).decode()})
    await client.wait_event("trackEnd", timeout=5)
    await client.send({"command": "hangup"})
    await client.wait_closed()
    path = tmp_path / "recorders" / "calls" / "rec.wav"
    await until(lambda: file_closed(path), what="the recording is closed")
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 16000)
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    left, right = data[:, 0], data[:, 1]
    onset_left = int(np.argmax(np.abs(left) > 2000))
    # The tone left the client 0.5 s after its first frame; the recording starts at answer time,
    # a few ms before the first frame: allow 60 ms either way.
    assert abs(onset_left / 16000 - 0.5) < 0.06, onset_left / 16000
    assert abs(dominant_frequency(left[onset_left:onset_left + 4000], 16000) - 700) < 10
    onset_right = int(np.argmax(np.abs(right) > 2000))
    assert onset_right > onset_left + 8000 - 800   # the gateway spoke after the caller finished
    assert abs(dominant_frequency(right[onset_right:onset_right + 4000], 16000) - 1500) < 10
    assert rms(right[:onset_right - 320]) < 50       # nothing of the caller leaks into the right
    assert rms(left[onset_right + 320:onset_right + 4000]) < 50


async def test_recorder_path_outside_root_is_refused(gateway, http):
    client = await connect(http, gateway, id="escape")
    await client.send({"command": "invite", "option": {"codec": "pcm", "recorder": {"recorderFile": "../../x"}}})
    err, = await client.wait_event("error")
    assert err["sender"] == "recorder" and "x" in err["error"]
    assert client.of("answer")  # the call itself goes on
    await client.ws.close()


async def test_media_pass_round_trip_with_an_echo_server(local_fetch_gateway, http):
    gateway = local_fetch_gateway
    connections = []

    async def echo(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connections.append(ws)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async with local_server("/media", echo) as port:
        client = await answered(http, gateway, "pass", mediaPass={
            "url": f"ws://127.0.0.1:{port}/media", "inputSampleRate": 8000, "outputSampleRate": 8000,
            "packetSize": 640})
        mark = len(client.audio)
        for chunk in frames(tone(600, 1.0, 16000), 320):
            await client.ws.send_bytes(chunk.tobytes())
            await asyncio.sleep(0.02)

        def loud_frames() -> list[np.ndarray]:
            return [f for f in frames(pcm_of(client.audio[mark:]), 320) if rms(f) > 1000]

        # the caller's tone comes back through the external service
        await until(lambda: len(loud_frames()) > 30, timeout=3, what="the tone back from the external service")
        loud = loud_frames()
        assert abs(dominant_frequency(np.concatenate(loud), 16000) - 600) < 15
        assert len(connections) == 1
        await client.ws.close()


async def test_media_pass_unreachable_is_an_error_event(local_fetch_gateway, http):
    gateway = local_fetch_gateway
    client = await answered(http, gateway, "passdown", mediaPass={
        "url": "ws://127.0.0.1:9/media", "inputSampleRate": 16000, "outputSampleRate": 16000})
    err, = await client.wait_event("error", timeout=5)
    assert err["sender"] == "mediaPass" and "127.0.0.1:9" in err["error"]
    await client.send({"command": "hangup"})
    await client.wait_closed()
    assert client.events[-1]["event"] == "hangup"


async def test_muting_the_caller_silences_its_recorder_channel(gateway, http, tmp_path):
    client = await answered(http, gateway, "mrec", recorder={"recorderFile": "{id}"})
    loop = asyncio.get_running_loop()
    signal = tone(700, 1.5, 16000)
    start = loop.time()
    for i, chunk in enumerate(frames(signal, 320)):
        if i == 25:
            await client.send({"command": "mute", "trackId": "mrec"})
        if i == 50:
            await client.send({"command": "unmute", "trackId": "mrec"})
        await client.ws.send_bytes(chunk.tobytes())
        await asyncio.sleep(max(0, start + (i + 1) * 0.02 - loop.time()))
    await client.send({"command": "hangup"})
    await client.wait_closed()
    await until(lambda: file_closed(tmp_path / "recorders" / "mrec.wav"), what="the recording is closed")
    with wave.open(str(tmp_path / "recorders" / "mrec.wav")) as w:
        left = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)[:, 0]
    onset = int(np.argmax(np.abs(left) > 2000))
    levels = [rms(f) for f in frames(left[onset:], 320)]
    # 0.5 s heard, 0.5 s muted (silence in the recording), then heard again.
    assert min(levels[2:20]) > 3000
    assert max(levels[29:45]) < 50
    assert min(levels[55:70]) > 3000
