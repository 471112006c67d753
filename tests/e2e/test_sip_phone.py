"""baresip as an independent phone: it calls the gateway, the application answers and speaks a
sentence with tts, the phone records what it hears, and recognising that recording gives the
sentence's words back; then the gateway calls the phone, which answers by itself."""

from __future__ import annotations

import jiwer
import numpy as np
import pocketsphinx
import pytest

from tests.conftest import connect
from tests.e2e.conftest import incoming_call
from tests.support.baresip import BARESIP, Baresip
from tests.support.sip_tools import read_wav, until

pytestmark = pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (scripts/apt-packages.txt)")

SENTENCE = "please call me back at five five five one two three four"
WORDS = sorted(set(SENTENCE.split()) | {"zero", "six", "seven", "eight", "nine", "now", "later", "you", "we"})
GRAMMAR = "#JSGF V1.0;\ngrammar said;\npublic <said> = ( " + " | ".join(WORDS) + " )+ ;\n"


def recognise(path) -> str:
    """What pocketsphinx hears in a recording of the phone (16 kHz: the call ran G.722)."""
    samples, channels, rate = read_wav(path)
    assert channels == 1 and rate == 16000, (channels, rate)
    decoder = pocketsphinx.Decoder(hmm=pocketsphinx.get_model_path("en-us/en-us"), lm=None,
                                   dict=pocketsphinx.get_model_path("en-us/cmudict-en-us.dict"),
                                   samprate=16000, loglevel="FATAL")
    decoder.add_fsg("said", decoder.parse_jsgf(GRAMMAR))
    decoder.activate_search("said")
    decoder.start_utt()
    decoder.process_raw(samples.astype("<i2").tobytes(), full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr if hyp is not None else ""


def call_over(phone: Baresip) -> bool:
    """baresip said the call ended (its recording is then complete)."""
    return bool(phone.heard()) and b" terminated (duration" in phone.output


async def speak_and_hang_up(client) -> None:
    await client.send({"command": "tts", "text": SENTENCE, "playId": "sentence"})
    await until(lambda: any(e.get("playId") == "sentence" for e in client.of("trackEnd")), 20, "the sentence")
    await client.send({"command": "hangup"})
    await client.wait_closed(10)


async def test_phone_calls_the_gateway_and_hears_the_sentence(sip_gateway, webhook, http, tmp_path):
    gw = await sip_gateway(rtp={"codecs": ["G722", "PCMU", "telephone-event"]})
    dial = f"/dial sip:assistant@127.0.0.1:{gw.sip_address[1]}"
    async with Baresip(tmp_path / "phone", commands=(dial,)) as phone:
        client, body = await incoming_call(http, gw, webhook)
        assert body["caller"].startswith("sip:phone@127.0.0.1")
        await client.send({"command": "accept", "option": {}})
        answer, = await client.wait_event("answer")
        assert "G722/8000" in answer["sdp"]
        await speak_and_hang_up(client)
        await until(lambda: call_over(phone), 10, "the phone's call to end")
    recording, = phone.heard()
    heard = recognise(recording)
    assert jiwer.wer(SENTENCE, heard) <= 0.2, (SENTENCE, heard)
    assert client.of("hangup")[0]["reason"] == "hangup_command"


async def test_gateway_calls_the_phone_which_answers(gateway_config, http, tmp_path):
    from transports.gateway import start_gateway

    gw = await start_gateway(gateway_config(rtp={"codecs": ["G722", "PCMU", "telephone-event"]}))
    try:
        async with Baresip(tmp_path / "phone") as phone:
            await until(lambda: b"baresip is ready" in phone.output, 10, "baresip to start")
            client = await connect(http, gw, "/call/sip", id="to-phone")
            await client.send({"command": "invite", "option": {"callee": phone.uri, "caller": "sip:bot@127.0.0.1"}})
            await client.wait_event("answer", timeout=10)
            await speak_and_hang_up(client)
            await until(lambda: call_over(phone), 10, "the phone's call to end")
        recording, = phone.heard()
        heard = recognise(recording)
        assert jiwer.wer(SENTENCE, heard) <= 0.2, (SENTENCE, heard)
        samples, _, _ = read_wav(recording)
        assert np.abs(samples).max() > 1000
    finally:
        await gw.stop()
