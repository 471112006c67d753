"""The `/call` media features on a SIP leg, end to end: SIPp places the call, the test's own socket
is the caller's media (it sends real speech and DTMF tones as PCMU RTP, and keeps what the gateway
sends), the application drives the call over its WebSocket.

Listening: VAD, speech recognition, in-band DTMF and the two-channel recorder on what the caller
says. Speaking: tts, play, interrupt, mute/unmute, heard (or not) at the caller."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import jiwer
import numpy as np

from protocol.codecs import Encoder, Resampler, codec_info
from protocol.sdp import SessionDescription
from tests.e2e.conftest import incoming_call
from tests.support.audio import dominant_frequency, rms, tone
from tests.support.sip_tools import read_wav, sipp_uac, until, write_wav

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DIGITS_GRAMMAR = ("#JSGF V1.0;\ngrammar digits;\n"
                  "public <digits> = ( zero | oh | one | two | three | four | five | six | seven | eight | nine )+ ;\n")


def wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


def media_address(sdp: str) -> tuple[str, int]:
    desc = SessionDescription.parse(sdp)
    return desc.media_connection(0).address, desc.media[0].port


def after(peer, start: int):
    """What the caller received from packet ``start`` on, decoded (16 kHz)."""
    from protocol.codecs import Decoder, codec_info

    decoder = Decoder(codec_info("pcmu"))
    chunks = [decoder.decode(p.payload) for p in peer.packets[start:] if p.payload_type == 0]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


async def test_vad_asr_inband_dtmf_and_recorder_hear_the_sip_caller(sip_gateway, webhook, peer, http, tmp_path):
    digits16k, rate = wav(FIXTURES / "asr" / "digits_a.wav")
    assert rate == 16000
    said = json.loads((FIXTURES / "asr" / "truth.json").read_text())["files"]["digits_a.wav"]["segments"][0]["text"]
    dtmf8k, rate = wav(FIXTURES / "listening" / "dtmf_g711_8k.wav")
    assert rate == 8000
    dtmf16k = Resampler(8000, 16000).process(dtmf8k)
    silence = np.zeros(8000, dtype=np.int16)
    caller_audio = np.concatenate([silence, digits16k, silence, silence, dtmf16k, silence, silence])

    gw = await sip_gateway()
    # A wideband call (G.722): the recogniser's model is 16 kHz; narrowband PCMU loses it words.
    keys = {"rtp_port": peer.port, "pt": 9, "codec": "G722"}
    async with sipp_uac(tmp_path, "uac_call.xml", gw.sip_address[1], keys=keys) as sipp:
        client, _ = await incoming_call(http, gw, webhook)
        await client.send({"command": "accept", "option": {
            "vad": {"type": "webrtc"}, "recorder": {"recorderFile": "listen.wav"},
            "asr": {"provider": "pocketsphinx", "extra": {"grammar": DIGITS_GRAMMAR}}}})
        answer, = await client.wait_event("answer")
        assert "G722/8000" in answer["sdp"]
        encoded = Encoder(codec_info("g722")).encode(caller_audio)
        stop = peer.send_audio(encoded, media_address(answer["sdp"]), payload_type=9)
        try:
            await client.wait_event("asrFinal", timeout=15)
            await until(lambda: len(client.of("dtmf")) >= 6, 10, "six in-band digits")
        finally:
            stop()
        await client.send({"command": "hangup"})
        await client.wait_closed(10)
        assert await sipp.wait(10) == 0, sipp.errors()
    assert client.of("speaking")
    heard = client.of("asrFinal")[0]["text"]
    assert jiwer.wer(said, heard) <= 0.2, (said, heard)
    assert "".join(e["digit"] for e in client.of("dtmf")) == "159#*0"
    samples, channels, rate = read_wav(tmp_path / "recorders" / "listen.wav")
    stereo = samples.reshape(-1, channels)
    assert channels == 2 and rate == 16000
    assert rms(stereo[:, 0]) > 300 and rms(stereo[:, 1]) < 50      # the caller left, our (silent) side right


async def test_tts_play_interrupt_and_mute_reach_the_sip_caller(sip_gateway, webhook, peer, http, tmp_path):
    write_wav(tmp_path / "media" / "tone.wav", tone(440, 4.0, 8000), 8000)
    gw = await sip_gateway()
    async with sipp_uac(tmp_path, "uac_call.xml", gw.sip_address[1], keys={"rtp_port": peer.port}) as sipp:
        client, _ = await incoming_call(http, gw, webhook)
        await client.send({"command": "accept", "option": {}})
        await client.wait_event("answer")
        # play: the caller hears the tone
        await client.send({"command": "play", "url": "tone.wav"})
        await client.wait_event("trackStart", count=2)
        mark = len(peer.packets)
        await until(lambda: len(peer.packets) > mark + 40, 5, "the tone at the caller")
        heard = after(peer, mark)
        assert abs(dominant_frequency(heard, 16000) - 440) < 15 and rms(heard) > 1000
        # interrupt: it stops at once
        await client.send({"command": "interrupt"})
        tone_end, = await client.wait_event("trackEnd")
        assert tone_end["playId"] == "tone.wav" and tone_end["duration"] < 3000
        mark = len(peer.packets)
        await until(lambda: len(peer.packets) > mark + 25, 5, "audio after the interrupt")
        assert rms(after(peer, mark + 2)) < 30
        # mute: a tts plays, but the caller hears silence; unmute: speech
        await client.send({"command": "mute"})
        await client.send({"command": "tts", "text": "this sentence is long enough to be heard after the unmute "
                                                     "command arrives at the gateway", "playId": "muted"})
        await client.wait_event("trackStart", count=3)
        mark = len(peer.packets)
        await until(lambda: len(peer.packets) > mark + 25, 5, "audio while muted")
        assert rms(after(peer, mark)) < 30
        await client.send({"command": "unmute"})
        mark = len(peer.packets)
        await until(lambda: len(peer.packets) > mark + 50, 5, "audio after the unmute")
        assert rms(after(peer, mark + 2)) > 300
        await client.send({"command": "hangup"})
        await client.wait_closed(10)
        assert await sipp.wait(10) == 0, sipp.errors()
    assert [e["playId"] for e in client.of("trackEnd") if "playId" in e] == ["tone.wav", "muted"]
