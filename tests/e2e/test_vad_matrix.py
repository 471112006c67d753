"""Every VAD engine at every sample rate it is offered, on every codec of the /call leg.

A real client streams the speech fixture in real time through the real server, encoded in the
leg's codec; the VAD must report the speech with `speaking` at its true onset and then a
`silence` at its true end, without failing the media track. The four codecs of one VAD setting
run as four concurrent calls on one gateway, so the matrix costs a few seconds per setting.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from protocol.codecs import Encoder, codec_info
from tests.conftest import connect
from tests.support.audio import frames

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
CODECS = ("pcm", "pcmu", "pcma", "g722")
VAD_RATES = (8000, 16000)
# The first utterance of the fixture and the pause after it (900 ms) are enough to see both
# events; a little trailing silence lets the last one arrive.
CUT_MS = 3205
TAIL_MS = 500
# Onset and end of speech as dated by the gateway, against the fixture's true boundaries. G.711
# and G.722 add quantisation noise and the 8 kHz path a resampler's delay; every engine lands well
# inside this on a quiet machine (measured: within 85 ms, the worst being silero at 8 kHz).
TOLERANCE_MS = 120


def _vad_types() -> list:
    ten = importlib.util.find_spec("ten_vad") is not None
    return ["silero", "webrtc",
            pytest.param("ten", marks=pytest.mark.skipif(not ten, reason="ten-vad is not installed"))]


def load_speech() -> tuple[np.ndarray, dict]:
    with wave.open(str(FIXTURES / "speech_16k.wav")) as w:
        assert w.getframerate() == 16000
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm, json.loads((FIXTURES / "speech_16k.json").read_text())


async def one_call(http, gateway, vad_type: str, vad_rate: int, codec: str, pcm: np.ndarray) -> dict:
    session = f"m-{vad_type}-{vad_rate}-{codec}"
    client = await connect(http, gateway, id=session)
    await client.send({"command": "invite", "option": {
        "codec": codec, "vad": {"type": vad_type, "samplerate": vad_rate}}})
    await client.wait_event("answer")
    enc = Encoder(codec_info(codec))
    loop = asyncio.get_running_loop()
    start = loop.time()
    wall0 = time.time() * 1000
    for i, chunk in enumerate(frames(pcm, 320)):
        await client.ws.send_bytes(enc.encode(chunk))
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
    # The silence event comes once silence is confirmed; wait for it with a deadline.
    try:
        await client.wait_event("silence", timeout=2)
    except (AssertionError, asyncio.TimeoutError):
        pass
    await client.send({"command": "hangup"})
    await client.wait_closed()
    return {"codec": codec, "t0": wall0, "events": client.events}


@pytest.mark.parametrize("vad_rate", VAD_RATES)
@pytest.mark.parametrize("vad_type", _vad_types())
async def test_vad_reports_speech_on_every_codec(gateway, http, vad_type, vad_rate):
    pcm, truth = load_speech()
    first = truth["segments"][0]
    assert first["end_ms"] < CUT_MS <= truth["segments"][1]["start_ms"]
    audio = np.concatenate([pcm[: CUT_MS * 16], np.zeros(TAIL_MS * 16, np.int16)])

    results = await asyncio.gather(*(one_call(http, gateway, vad_type, vad_rate, codec, audio)
                                     for codec in CODECS))
    for result in results:
        codec, t0, events = result["codec"], result["t0"], result["events"]
        where = f"{vad_type} at {vad_rate} Hz on {codec}"
        names = [e["event"] for e in events]
        assert "error" not in names, (where, events)
        hangup = events[-1]
        assert hangup["event"] == "hangup" and hangup["reason"] == "hangup_command", (where, events)
        session = f"m-{vad_type}-{vad_rate}-{codec}"
        speaking = [e for e in events if e["event"] == "speaking"]
        silences = [e for e in events if e["event"] == "silence" and e["trackId"] == session]
        assert len(speaking) == 1, (where, events)
        assert abs((speaking[0]["startTime"] - t0) - first["start_ms"]) <= TOLERANCE_MS, (where, speaking)
        ends = [e for e in silences if e["duration"] > 0]
        assert ends, (where, events)
        assert abs((ends[0]["startTime"] - t0) - first["end_ms"]) <= TOLERANCE_MS, (where, ends)
        assert ends[0]["timestamp"] >= speaking[0]["timestamp"], (where, events)
