"""The VoiceAPI client against a local sherpa-onnx voiceapi server (pocketsphinx hears, espeak-ng
speaks), optionally behind a proxy that wants a bearer token."""

from __future__ import annotations

import pytest

from actors.services import ProviderError, SynthRequest
from protocol.api import SynthesisOption, TranscriptionOption
from tests.support.audio import rms
from transports.providers.tts_cache import TtsCache
from transports.providers.voiceapi import VoiceApiAsr, VoiceApiTts
from transports.providers.wire import ProviderSettings

from .clients import finals, recognise, similar_speech, speak, wer
from .support import asr_truth, load_pcm
from .voiceapi_server import VoiceApiServer

FAST = ProviderSettings(connect_timeout=2.0, stall_timeout=2.0, keepalive_interval=0.3, close_timeout=2.0)


@pytest.fixture
async def server(hearing, speaking):
    async with VoiceApiServer(hearing=hearing, speaking=speaking) as srv:
        yield srv


def asr_option(server, **fields) -> TranscriptionOption:
    return TranscriptionOption(**{"provider": "voiceapi", "endpoint": server.url, **fields})


def tts_option(server, **fields) -> SynthesisOption:
    return SynthesisOption(**{"provider": "voiceapi", "endpoint": server.url, **fields})


# --- recognition ------------------------------------------------------------------------------

async def test_each_utterance_comes_back_as_deltas_then_one_final(server):
    truth = asr_truth("two_utterances.wav")["segments"]
    pcm = load_pcm("two_utterances.wav")
    session = await VoiceApiAsr(FAST).open(asr_option(server))
    results, error = await recognise(session, pcm, tail_s=0.2)
    assert error is None
    got = finals(results)
    assert len(got) == 2 and all(wer(s["text"], f.text) <= 0.34 for s, f in zip(truth, got))
    assert not results[0].final and got[0].start_ms is None      # VoiceAPI results carry no times
    shake = server.handshakes[0]
    assert shake.path == "/asr" and shake.one("samplerate") == "16000" and "Authorization" not in shake.headers
    # close() sent a second of silence so the last utterance could end.
    assert server.audio_ms[0] >= len(pcm) / 16 + 1000


async def test_the_last_utterance_is_finished_by_the_silence_close_sends(server):
    pcm = load_pcm("digits_c.wav")[: int(16000 * 2.1)]           # cut right after the speech ends
    session = await VoiceApiAsr(FAST).open(asr_option(server))
    results, error = await recognise(session, pcm, tail_s=0.0)
    assert error is None and len(finals(results)) == 1


async def test_samplerate_and_extra_reach_the_query_and_the_endpoint_may_come_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("VOICEAPI_ENDPOINT", server.url.replace("http://", "ws://"))
    session = await VoiceApiAsr(FAST).open(TranscriptionOption(samplerate=8000, extra={"lang": "en"}))
    _, error = await recognise(session, load_pcm("digits_a.wav"))
    assert error is None
    shake = server.handshakes[0]
    assert shake.one("samplerate") == "8000" and shake.one("lang") == "en"
    assert abs(server.audio_ms[0] - (len(load_pcm("digits_a.wav")) / 16 + 2000)) < 60


async def test_no_endpoint_at_all_is_a_permanent_error(monkeypatch):
    monkeypatch.delenv("VOICEAPI_ENDPOINT", raising=False)
    with pytest.raises(ProviderError) as info:
        await VoiceApiAsr(FAST).open(TranscriptionOption())
    assert info.value.code == 400 and info.value.permanent and "VOICEAPI_ENDPOINT" in str(info.value)


async def test_a_proxy_that_refuses_the_token_is_a_permanent_401(server):
    server.token = "proxy-secret"
    with pytest.raises(ProviderError) as info:
        await VoiceApiAsr(FAST).open(asr_option(server, secret_key="wrong"))
    assert info.value.code == 401 and info.value.permanent
    session = await VoiceApiAsr(FAST).open(asr_option(server, secret_key="proxy-secret"))
    await session.close()
    assert server.handshakes[-1].headers["Authorization"] == "Bearer proxy-secret"


@pytest.mark.parametrize("fault", ["drop_after", "garbage_after"])
async def test_drops_and_garbage_are_transient(server, fault):
    setattr(server.faults, fault, (30,) if fault == "drop_after" else 30)
    session = await VoiceApiAsr(FAST).open(asr_option(server))
    _, error = await recognise(session, load_pcm("digits_a.wav"))
    assert error is not None and error.code == 502 and not error.permanent


async def test_a_stall_inside_an_utterance_is_a_504(server):
    server.faults.stall_after = 70          # 1.4 s in: the utterance has begun
    session = await VoiceApiAsr(FAST).open(asr_option(server))
    _, error = await recognise(session, load_pcm("digits_a.wav"), speed=2.0, tail_s=2.0)
    assert error is not None and error.code == 504


# --- synthesis --------------------------------------------------------------------------------

async def test_one_prepared_socket_speaks_request_after_request(server, speaking):
    tts = VoiceApiTts(tts_option(server, speaker="3", samplerate=22050), FAST)
    try:
        await tts.prepare()
        text = "This is the self hosted voice speaking."
        pcm, rate, chunks, _ = await speak(tts, SynthRequest(text, speaker="3", sample_rate=22050))
        assert rate == 22050 and similar_speech(pcm, await speaking.pcm(text, 22050), 22050)
        assert all(len(c.pcm) * 2 <= 2560 for c in chunks)
        await speak(tts, SynthRequest("And then a second request.", speaker="3", sample_rate=22050))
        assert server.accepted == 1 and server.spoken == [text, "And then a second request."]
        shake = server.handshakes[0]
        assert shake.path == "/tts" and shake.one("chunk_size") == "2560" and shake.one("sid") == "3"
        assert shake.one("samplerate") == "22050" and shake.one("interrupt") == "false"
        assert shake.one("split") == "false" and shake.one("speed") == "1.0"
    finally:
        await tts.close()


async def test_speed_volume_and_the_speaker_from_the_environment(server, speaking, monkeypatch):
    monkeypatch.setenv("VOICEAPI_SPEAKER_ID", "7")
    tts = VoiceApiTts(tts_option(server), FAST)
    try:
        text = "A little faster and softer now."
        pcm, *_ = await speak(tts, SynthRequest(text, speed=1.4, volume=3))
        plain = await speaking.pcm(text, 16000)
        assert server.handshakes[0].one("sid") == "7" and server.handshakes[0].one("speed") == "1.4"
        assert len(pcm) < 0.85 * len(plain) and 0.5 < rms(pcm) / rms(plain) < 0.7     # gain 3/5
    finally:
        await tts.close()


async def test_whole_texts_are_cached(server):
    tts = VoiceApiTts(tts_option(server), FAST, TtsCache(1 << 20))
    try:
        await speak(tts, SynthRequest("Cached words here."))
        _, _, again, _ = await speak(tts, SynthRequest("Cached words here."))
        assert all(c.cached for c in again) and server.texts == ["Cached words here."]
    finally:
        await tts.close()


async def test_a_proxy_refusing_synthesis_is_a_permanent_401(server):
    server.token = "proxy-secret"
    tts = VoiceApiTts(tts_option(server, secret_key="nope"), FAST)
    try:
        with pytest.raises(ProviderError) as info:
            await speak(tts, SynthRequest("Hello there."))
        assert info.value.code == 401 and info.value.permanent
    finally:
        await tts.close()


@pytest.mark.parametrize("fault,code", [("drop_after", 502), ("stall_after", 504), ("garbage_after", 502)])
async def test_synthesis_faults_are_transient(server, fault, code):
    setattr(server.faults, fault, (2,) if fault == "drop_after" else 2)
    tts = VoiceApiTts(tts_option(server), FAST)
    try:
        with pytest.raises(ProviderError) as info:
            await speak(tts, SynthRequest("This sentence is long enough to need several audio messages."))
        assert info.value.code == code and not info.value.permanent
    finally:
        await tts.close()
