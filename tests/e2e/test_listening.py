"""Listening on /call: VAD speaking/silence times against a fixture's true speech boundaries,
waitInputTimeout and inactivityTimeout — a real client streaming real audio in real time."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import base_url, connect
from tests.support.audio import frames, tone
from tests.support.poll import until

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audio"


def load_fixture(name: str) -> tuple[np.ndarray, dict]:
    with wave.open(str(FIXTURES / f"{name}.wav")) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm, json.loads((FIXTURES / f"{name}.json").read_text())


async def stream_realtime(client, pcm: np.ndarray, size: int = 320) -> float:
    """Send 20 ms frames on absolute deadlines; returns the wall time (ms) of the first frame."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    import time
    wall0 = time.time() * 1000
    for i, chunk in enumerate(frames(pcm, size)):
        await client.ws.send_bytes(chunk.astype("<i2").tobytes())
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
    return wall0


@pytest.mark.parametrize("vad_type", ["silero", "webrtc"])
async def test_speaking_and_silence_follow_the_true_speech_boundaries(gateway, http, vad_type):
    pcm, truth = load_fixture("speech_16k")
    client = await connect(http, gateway, id=f"vad-{vad_type}")
    await client.send({"command": "invite", "option": {"codec": "pcm", "vad": {"type": vad_type}}})
    await client.wait_event("answer")
    t0 = await stream_realtime(client, np.concatenate([pcm, np.zeros(16000, np.int16)]))
    speaking = client.of("speaking")
    silences = [e for e in client.of("silence") if e["trackId"] == f"vad-{vad_type}"]
    segments = truth["segments"]
    assert len(speaking) == len(segments), client.events
    for ev, seg in zip(speaking, segments):
        assert abs((ev["startTime"] - t0) - seg["start_ms"]) <= 60, (ev, seg)
    ends = [e for e in silences if e["duration"] > 0]
    assert len(ends) >= len(segments)
    for seg in segments:
        nearest = min(ends, key=lambda e: abs((e["startTime"] - t0) - seg["end_ms"]))
        assert abs((nearest["startTime"] - t0) - seg["end_ms"]) <= 60, (nearest, seg)
    await client.ws.close()


async def test_unknown_vad_type_is_an_error_event(gateway, http):
    client = await connect(http, gateway, id="badvad")
    await client.send({"command": "invite", "option": {"codec": "pcm", "vad": {"type": "fancy"}}})
    err, = await client.wait_event("error")
    assert err["sender"] == "vad" and "fancy" in err["error"]
    assert client.of("answer")
    await client.ws.close()


async def test_unknown_asr_provider_is_an_error_event(gateway, http):
    client = await connect(http, gateway, id="badasr")
    await client.send({"command": "invite", "option": {"codec": "pcm", "asr": {"provider": "nonesuch"}}})
    err, = await client.wait_event("error")
    assert err["sender"] == "asr" and "nonesuch" in err["error"]
    await client.ws.close()


async def test_wait_input_timeout_fires_after_track_end(gateway, http):
    client = await connect(http, gateway, id="wait")
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    audio = base64.b64encode(tone(500, 0.3, 16000).tobytes()).decode()
    await client.send({"command": "tts", "base64": True, "text": audio, "playId": "q", "waitInputTimeout": 1})
    end, = await client.wait_event("trackEnd", timeout=3)
    silence, = await client.wait_event("silence", timeout=3)
    assert silence["trackId"] == "serverSideTrack" and silence["duration"] == 1000
    assert 900 <= silence["timestamp"] - end["timestamp"] <= 1300
    assert silence["startTime"] == end["timestamp"]
    await client.ws.close()


async def test_wait_input_timeout_is_cancelled_by_speech(gateway, http):
    pcm, truth = load_fixture("speech_16k")
    client = await connect(http, gateway, id="waitspeech")
    await client.send({"command": "invite", "option": {"codec": "pcm", "vad": {"type": "webrtc"}}})
    await client.wait_event("answer")
    audio = base64.b64encode(tone(500, 0.2, 16000).tobytes()).decode()
    await client.send({"command": "tts", "base64": True, "text": audio, "playId": "q", "waitInputTimeout": 2})
    await client.wait_event("trackEnd", timeout=3)
    await stream_realtime(client, pcm[: int(16000 * 2.5)])  # speech starts at 0.7 s
    assert client.of("speaking")
    assert [e for e in client.of("silence") if e["trackId"] == "serverSideTrack"] == []
    await client.ws.close()


async def test_inactivity_timeout_hangs_up(gateway, http):
    client = await connect(http, gateway, id="idle")
    await client.send({"command": "invite", "option": {"codec": "pcm", "inactivityTimeout": 1}})
    await client.wait_event("answer")
    await stream_realtime(client, np.zeros(8000, np.int16))  # 0.5 s of audio, then nothing
    await client.wait_closed(timeout=4)
    inactivity, = client.of("inactivity")
    hangup = client.events[-1]
    assert hangup["event"] == "hangup" and hangup["reason"] == "inactivity_timeout"
    assert hangup["initiator"] == "system"
    assert inactivity["trackId"] == "idle"


LISTENING = Path(__file__).resolve().parents[1] / "fixtures" / "listening"


def load_listening(name: str) -> np.ndarray:
    with wave.open(str(LISTENING / f"{name}.wav")) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


@pytest.mark.parametrize("fixture,codec", [("dtmf_noisy_16k", "pcmu"), ("dtmf_speech_16k", "pcm")])
async def test_inband_dtmf_sequence_is_detected_exactly(gateway, http, fixture, codec):
    from protocol.codecs import Encoder, codec_info

    pcm = load_listening(fixture)
    client = await connect(http, gateway, id=f"dtmf-{codec}")
    await client.send({"command": "invite", "option": {"codec": codec, "denoise": True,
                                                       "vad": {"type": "webrtc"}}})
    await client.wait_event("answer")
    enc = Encoder(codec_info(codec))
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, chunk in enumerate(frames(np.concatenate([pcm, np.zeros(8000, np.int16)]), 320)):
        await client.ws.send_bytes(enc.encode(chunk))
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
    await until(lambda: len(client.of("dtmf")) >= 6, timeout=3, what="six digits")
    assert "".join(e["digit"] for e in client.of("dtmf")) == "159#*0"
    assert all(e["trackId"] == f"dtmf-{codec}" for e in client.of("dtmf"))
    await client.ws.close()


ASR = Path(__file__).resolve().parents[1] / "fixtures" / "asr"
DIGITS_GRAMMAR = ("#JSGF V1.0;\ngrammar digits;\n"
                  "public <digits> = ( zero | oh | one | two | three | four | five | six | seven | eight | nine )+ ;\n")


def load_asr(name: str) -> tuple[np.ndarray, dict]:
    with wave.open(str(ASR / name)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm, json.loads((ASR / "truth.json").read_text())["files"][name]


async def test_asr_deltas_then_one_final_per_utterance(gateway, http):
    import jiwer

    pcm, truth = load_asr("two_utterances.wav")
    client = await connect(http, gateway, id="asr")
    await client.send({"command": "invite", "option": {
        "codec": "pcm", "asr": {"provider": "pocketsphinx", "extra": {"grammar": DIGITS_GRAMMAR}}}})
    await client.wait_event("answer")
    t0 = await stream_realtime(client, np.concatenate([pcm, np.zeros(16000, np.int16)]))
    finals = await client.wait_event("asrFinal", count=len(truth["segments"]), timeout=10)
    deltas = client.of("asrDelta")
    # Digits through a grammar: this file comes back with one inserted word ("nine eight seven"
    # -> "nine eight seven eight"), 1/7 = 0.143 WER; the bound allows that one error and no more.
    said = " ".join(seg["text"] for seg in truth["segments"])
    heard = " ".join(final["text"] for final in finals)
    assert jiwer.wer(said, heard) <= 1 / 7 + 1e-9, (said, heard)
    for index, (final, seg) in enumerate(zip(finals, truth["segments"]), start=1):
        assert final["index"] == index and final["trackId"] == "asr"
        assert abs((final["startTime"] - t0) - seg["start_ms"]) <= 300
        mine = [d for d in deltas if d["index"] == index]
        assert mine and all(d["timestamp"] <= final["timestamp"] for d in mine)
    metric = [m for m in client.of("metrics") if m["key"] == "ttfb.asr.pocketsphinx"]
    assert len(metric) == len(finals) and all(0 < m["duration"] < 3000 for m in metric)
    await client.ws.close()


async def test_vad_that_falls_behind_says_how_much_audio_it_skipped(gateway_config, http):
    from transports.gateway import start_gateway

    gw = await start_gateway(gateway_config(vad_backlog_ms=100))   # 3 windows of 32 ms
    try:
        pcm, _ = load_fixture("speech_16k")
        client = await connect(http, gw, id="vad-behind")
        await client.send({"command": "invite", "option": {"codec": "pcm", "vad": {"type": "silero"}}})
        await client.wait_event("answer")
        # One second at once: the track works off 25 frames a tick, 15 windows, more than the bound.
        for chunk in frames(pcm[:16000], 320):
            await client.ws.send_bytes(chunk.tobytes())
        deadline = asyncio.get_running_loop().time() + 5
        while not [m for m in client.of("metrics") if m["key"] == "vad.skipped"]:
            assert asyncio.get_running_loop().time() < deadline, client.events
            await asyncio.sleep(0.02)
        skipped = next(m for m in client.of("metrics") if m["key"] == "vad.skipped")
        assert skipped["data"]["backlogMs"] == 100 and skipped["data"]["windows"] >= 1
        assert skipped["duration"] == round(skipped["data"]["windows"] * 32)
        await client.send({"command": "hangup"})              # the call goes on and ends normally
        await client.wait_closed()
        assert client.events[-1]["event"] == "hangup"
        # and the operator sees it on /metrics: at least what the call was told
        async with http.get(f"{base_url(gw)}/metrics") as resp:
            text = await resp.text()
        dropped = float(re.search(r"^activecall_vad_windows_dropped_total (\S+)$", text, re.M).group(1))
        assert dropped >= sum(m["data"]["windows"] for m in client.of("metrics") if m["key"] == "vad.skipped") > 0
    finally:
        await gw.stop()
