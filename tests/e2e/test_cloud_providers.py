"""Cloud ASR/TTS providers through the real gateway, driven by a real WebSocket client, each against
its local server: connections killed mid-call, refused credentials, connections made at answer."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import time
import wave

import numpy as np
import pytest

from actors.engines import EngineHost
from protocol.sentences import split_sentences
from tests.conftest import connect
from tests.providers.clients import similar_speech, wer, without_gaps
from tests.providers.kits import KITS, Kit
from tests.providers.support import Hearing, Speaking, call_audio
from tests.support.audio import frames, rms, tone

pytestmark = pytest.mark.timeout(180)

LONG_TEXT = ("Thank you for calling the support line of the example company. "
             "Your call matters to us and will be answered in the order it was received. "
             "While you wait, you may find answers to common questions on our website. "
             "Please have your customer number ready when an agent answers.")


@pytest.fixture
async def hearing_host():
    host = EngineHost()
    yield host
    await host.stop()


@pytest.fixture(params=KITS, ids=lambda kit: kit.name)
async def kit_server(request, gateway, hearing_host):
    kit: Kit = request.param
    server = kit.server(Hearing(hearing_host), Speaking(gateway.engines))
    async with server:
        yield kit, server


async def stream_realtime(client, pcm: np.ndarray) -> None:
    loop = asyncio.get_running_loop()
    begin = loop.time()
    for i, chunk in enumerate(frames(pcm, 320)):
        await client.ws.send_bytes(chunk.astype("<i2").tobytes())
        await asyncio.sleep(max(0.0, begin + (i + 1) * 0.02 - loop.time()))


def live_objects() -> int:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return len(gc.get_objects())


def pcm_of(chunks: list[bytes]) -> np.ndarray:
    return np.concatenate([np.frombuffer(a, dtype="<i2") for a in chunks]) if chunks else np.zeros(0, np.int16)


async def wait_until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


# --- recognition ------------------------------------------------------------------------------

async def test_asr_socket_killed_three_times_loses_no_utterance(gateway, http, kit_server):
    kit, server = kit_server
    audio, truth = call_audio(["digits_a.wav", "two_utterances.wav", "digits_b.wav", "digits_c.wav",
                               "two_utterances.wav"])
    assert 20 <= len(audio) / 16000 <= 26
    # Seconds of audio each connection receives before its socket is cut (the replayed pre-roll
    # counts): the cuts fall about 3.6, 8 and 12 s into the call.
    server.faults.drop_after = tuple(int(s * 1000 / kit.asr_packet_ms) for s in (3.6, 5.2, 4.8))
    client = await connect(http, gateway, id=f"chaos-asr-{kit.name}")
    await client.send({"command": "invite", "option": {"codec": "pcm", "asr": kit.asr(server)}})
    await client.wait_event("answer")
    figures: list[int] = []

    async def sample_memory() -> None:
        seen = 0
        while True:
            await asyncio.sleep(0.05)
            reconnects = [m for m in client.of("metrics") if m["key"] == f"reconnect.asr.{kit.name}"]
            if len(reconnects) > seen:
                seen = len(reconnects)
                figures.append(live_objects())

    sampler = asyncio.create_task(sample_memory())
    try:
        await stream_realtime(client, np.concatenate([audio, np.zeros(16000, np.int16)]))
        finals = await client.wait_event("asrFinal", count=len(truth), timeout=10)
        await wait_until(lambda: len(figures) == 3, 5)
    finally:
        sampler.cancel()
    await asyncio.sleep(0.5)                     # nothing more may come
    finals = client.of("asrFinal")
    said = " ".join(seg["text"] for seg in truth)
    heard = " ".join(f["text"] for f in finals)
    print(f"\nheard: {heard!r}\nlive objects after each reconnect: {figures}")
    assert len(finals) == len(truth), [f["text"] for f in finals]
    assert wer(said, heard) <= 0.15, (said, heard)
    assert [f["index"] for f in finals] == list(range(1, len(truth) + 1))
    drops = [e for e in client.of("error") if e["sender"] == "asr"]
    reconnects = [m for m in client.of("metrics") if m["key"] == f"reconnect.asr.{kit.name}"]
    assert server.drops == 3 and len(drops) == 3 and len(reconnects) == 3, (drops, reconnects)
    assert all(e["code"] == 502 for e in drops)
    assert server.accepted == 4
    assert [m["data"]["attempt"] for m in reconnects] == [1, 2, 3]
    # Memory: the objects alive after the third reconnect against the first.
    assert len(figures) == 3 and figures[2] - figures[0] < 3000, figures
    await client.send({"command": "hangup"})
    await client.wait_closed()
    hangup = client.events[-1]
    assert hangup["event"] == "hangup" and hangup["reason"] == "hangup_command"


async def test_asr_refused_credentials_are_one_401_and_the_call_goes_on(gateway, http, kit_server, tmp_path):
    kit, server = kit_server
    server.faults.reject = 401
    media = tmp_path / "media"
    media.mkdir(exist_ok=True)
    with wave.open(str(media / "beep.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(tone(800, 0.6, 16000).tobytes())
    client = await connect(http, gateway, id=f"asr-401-{kit.name}")
    await client.send({"command": "invite", "option": {"codec": "pcm", "asr": kit.asr(server)}})
    await client.wait_event("answer")
    err, = await client.wait_event("error", timeout=5)
    assert err["sender"] == "asr" and err["code"] == 401, err
    await client.send({"command": "play", "url": "beep.wav"})
    end = (await client.wait_event("trackEnd", timeout=5))[0]
    assert end["playId"] == "beep.wav" and abs(end["duration"] - 600) <= 40
    await asyncio.sleep(1.5)                 # past any backoff: no second attempt
    assert len(server.handshakes) == 1 and server.accepted == 0
    assert len(client.of("error")) == 1
    await client.send({"command": "hangup"})
    await client.wait_closed()
    assert client.events[-1]["event"] == "hangup" and client.events[-1]["reason"] == "hangup_command"


# --- synthesis --------------------------------------------------------------------------------

async def test_tts_connection_killed_three_times_still_speaks_the_whole_text(gateway, http, kit_server):
    kit, server = kit_server
    client = await connect(http, gateway, id=f"chaos-tts-{kit.name}")
    await client.send({"command": "invite", "option": {"codec": "pcm", "tts": kit.tts(server)}})
    await client.wait_event("answer")
    # Audio messages each speaking connection sends before it is cut: fewer than the first sentence
    # has with every provider, so each resumption goes further into it than the last.
    server.faults.drop_after = (8, 14, 20)
    connections_before = len(server.handshakes)
    mark = len(client.audio)
    await client.send({"command": "tts", "text": LONG_TEXT, "playId": "long"})
    end = next(e for e in await client.wait_event("trackEnd", timeout=60) if e.get("playId") == "long")
    heard = pcm_of(client.audio[mark:])
    await wait_until(lambda: any(m["key"] == f"completed.tts.{kit.name}" for m in client.of("metrics")), 5)
    drops = [e for e in client.of("error") if e["sender"] == "tts"]
    reconnects = [m for m in client.of("metrics") if m["key"] == f"reconnect.tts.{kit.name}"]
    completed = [m for m in client.of("metrics") if m["key"] == f"completed.tts.{kit.name}"]
    assert server.drops == 3 and len(drops) == 3 and len(reconnects) == 3, (drops, reconnects)
    assert server.accepted >= 4 and len(server.handshakes) >= connections_before
    assert len(completed) == 1 and completed[0]["data"]["resumed"] == 3
    # The whole text was heard once: the server's own rendering of each sentence, joined.
    speaking = Speaking(gateway.engines)
    expected = np.concatenate([await speaking.pcm(s.text, 16000) for s in split_sentences(LONG_TEXT)])
    assert abs(end["duration"] - len(expected) / 16) < 0.03 * len(expected) / 16, (end["duration"], len(expected) / 16)
    # A resumption slower than the audio buffered ahead of it is a pause on the line: the
    # pauses are taken out of both before the words are compared.
    said, spoken = without_gaps(heard[_lead(heard):]), without_gaps(expected[_lead(expected):])
    n = min(len(said), len(spoken))
    assert similar_speech(said[:n], spoken[:n], 16000, min_correlation=0.9)
    await client.ws.close()


def _lead(pcm: np.ndarray) -> int:
    return next(i for i, f in enumerate(frames(pcm, 320)) if rms(f) > 200) * 320


async def test_tts_refused_credentials_are_one_401_and_play_still_works(gateway, http, kit_server, tmp_path):
    kit, server = kit_server
    server.faults.reject = 401
    media = tmp_path / "media"
    media.mkdir(exist_ok=True)
    with wave.open(str(media / "beep.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(tone(800, 0.6, 16000).tobytes())
    client = await connect(http, gateway, id=f"tts-401-{kit.name}")
    await client.send({"command": "invite", "option": {"codec": "pcm", "tts": kit.tts(server)}})
    await client.wait_event("answer")
    await client.send({"command": "tts", "text": "This will not be heard.", "playId": "no"})
    err, = await client.wait_event("error", timeout=5)
    assert err["sender"] == "tts" and err["code"] == 401, err
    await client.send({"command": "play", "url": "beep.wav"})
    ends = await client.wait_event("trackEnd", count=2, timeout=5)
    assert ends[0]["playId"] == "no" and ends[0]["duration"] == 0
    assert ends[1]["playId"] == "beep.wav" and abs(ends[1]["duration"] - 600) <= 40
    await asyncio.sleep(1.0)
    assert len(server.handshakes) == 1 and server.accepted == 0       # tried once, never again
    assert len(client.of("error")) == 1
    await client.send({"command": "hangup"})
    await client.wait_closed()
    assert client.events[-1]["event"] == "hangup" and client.events[-1]["reason"] == "hangup_command"


async def test_tts_connects_at_answer_and_streams_pieces_into_one_item(gateway, http, kit_server):
    kit, server = kit_server
    client = await connect(http, gateway, id=f"prepared-{kit.name}")
    await client.send({"command": "invite", "option": {"codec": "pcm", "tts": kit.tts(server)}})
    await client.wait_event("answer")
    await wait_until(lambda: server.accepted >= 1, 5)        # no `tts` yet: connected while set up
    assert server.speakers == 0
    first = "Hello, and welcome to the example company."
    await client.send({"command": "tts", "text": first, "playId": "s", "streaming": True})
    await client.send({"command": "tts", "text": "How can we help you today?", "playId": "s", "streaming": True,
                       "endOfStream": True})
    end = next(e for e in await client.wait_event("trackEnd", timeout=20) if e.get("playId") == "s")
    assert end["duration"] > 3000
    assert server.spoken[:2] == [first, "How can we help you today?"]
    assert len([e for e in client.of("trackStart") if e.get("playId") == "s"]) == 1
    ttfb, = [m for m in client.of("metrics") if m["key"] == f"ttfb.tts.{kit.name}"]
    completed, = [m for m in client.of("metrics") if m["key"] == f"completed.tts.{kit.name}"]
    assert ttfb["data"]["playId"] == "s" and completed["data"]["cached"] is False
    assert client.of("error") == []
    await client.ws.close()


async def test_an_interruption_reports_the_sentence_being_spoken_for_a_provider_without_word_times(
        gateway, http, hearing_host):
    from tests.providers.kits import DEEPGRAM

    server = DEEPGRAM.server(Hearing(hearing_host), Speaking(gateway.engines))
    async with server:
        client = await connect(http, gateway, id="interrupt-sentences")
        await client.send({"command": "invite", "option": {"codec": "pcm", "tts": DEEPGRAM.tts(server)}})
        await client.wait_event("answer")
        text = ("The first sentence has six words. The second one follows it here. "
                "And the third sentence ends the text.")
        await client.send({"command": "tts", "text": text, "playId": "three"})
        await client.wait_event("trackStart", count=2, timeout=10)
        first = await Speaking(gateway.engines).pcm("The first sentence has six words.", 16000)
        await asyncio.sleep(len(first) / 16000 + 0.6)               # into the second sentence
        await client.send({"command": "interrupt"})
        ev, = await client.wait_event("interruption", timeout=5)
        assert ev["playId"] == "three" and ev["subtitle"] == text
        assert ev["position"] == 6, ev                              # "The" of the second sentence
        await client.ws.close()
