"""The Deepgram client against a local Deepgram that speaks its wire protocol: what it hears is
pocketsphinx on the audio actually sent, what it says is espeak-ng on the text actually sent."""

from __future__ import annotations


import numpy as np
import pytest

from actors.services import ProviderError, SynthRequest
from protocol.api import SynthesisOption, TranscriptionOption
from transports.providers.deepgram import DeepgramAsr, DeepgramTts, gain
from transports.providers.tts_cache import TtsCache
from transports.providers.wire import ProviderSettings

from tests.support.audio import rms

from .clients import eventually, failures_while_idle, finals, recognise, similar_speech, speak, wer
from .deepgram_server import DeepgramServer
from .support import asr_truth, load_pcm

KEY = "dg-test-key"
FAST = ProviderSettings(connect_timeout=2.0, stall_timeout=2.0, keepalive_interval=0.3, close_timeout=2.0)


@pytest.fixture
async def server(hearing, speaking):
    async with DeepgramServer(key=KEY, hearing=hearing, speaking=speaking) as srv:
        yield srv


def asr_option(server: DeepgramServer, **fields) -> TranscriptionOption:
    return TranscriptionOption(**{"provider": "deepgram", "endpoint": server.url, "secret_key": KEY, **fields})


def tts_option(server: DeepgramServer, **fields) -> SynthesisOption:
    return SynthesisOption(**{"provider": "deepgram", "endpoint": server.url, "secret_key": KEY, **fields})


# --- recognition ------------------------------------------------------------------------------

async def test_two_utterances_come_back_as_interims_then_one_final_each(server):
    truth = asr_truth("two_utterances.wav")["segments"]
    session = await DeepgramAsr(FAST).open(asr_option(server, language="en-US"))
    results, error = await recognise(session, load_pcm("two_utterances.wav"))
    assert error is None
    got = finals(results)
    assert len(got) == len(truth)
    for final, seg in zip(got, truth):
        assert wer(seg["text"], final.text) <= 0.34, (seg["text"], final.text)
        assert abs(final.start_ms - seg["start_ms"]) <= 400, (final, seg)
    first_final = results.index(got[0])
    assert any(not r.final for r in results[:first_final])       # deltas came before the final
    shake = server.handshakes[0]
    assert shake.headers["Authorization"] == f"Token {KEY}"
    assert shake.one("encoding") == "linear16" and shake.one("sample_rate") == "16000"
    assert shake.one("interim_results") == "true" and shake.one("channels") == "1"
    assert shake.one("language") == "en-US" and shake.one("model") == "nova-3"
    assert server.close_streams == 1


async def test_options_map_onto_the_query_and_the_audio_is_resampled(server):
    option = asr_option(server, model_type="nova-2-phonecall", samplerate=8000, language="en",
                        extra={"smart_format": True, "keyterm": ["acme", "widget"], "endpointing": 500},
                        buffer_size=640)
    pcm = load_pcm("digits_a.wav")
    session = await DeepgramAsr(FAST).open(option)
    results, error = await recognise(session, pcm, tail_s=1.0)
    assert error is None
    # Telephone-band audio is harder for the recogniser behind the server; the words are mostly there.
    assert wer(asr_truth("digits_a.wav")["segments"][0]["text"], " ".join(r.text for r in finals(results))) <= 0.6
    shake = server.handshakes[0]
    assert shake.one("model") == "nova-2-phonecall" and shake.one("sample_rate") == "8000"
    assert shake.one("smart_format") == "true" and shake.query["keyterm"] == ["acme", "widget"]
    assert shake.one("endpointing") == "500"                     # extra overrides the default
    # 8 kHz audio in 640-byte packets (40 ms): the server heard the whole file at 8 kHz.
    assert abs(server.listen_audio_ms[0] - (len(pcm) / 16 + 1000)) < 60


async def test_a_wrong_key_is_a_permanent_401_with_deepgrams_reason(server):
    with pytest.raises(ProviderError) as info:
        await DeepgramAsr(FAST).open(asr_option(server, secret_key="wrong"))
    assert info.value.code == 401 and info.value.permanent
    assert "Invalid credentials" in str(info.value)
    assert server.accepted == 0 and len(server.handshakes) == 1


async def test_no_key_at_all_is_refused_without_connecting(server, monkeypatch):
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
    with pytest.raises(ProviderError) as info:
        await DeepgramAsr(FAST).open(asr_option(server, secret_key=None))
    assert info.value.code == 401 and info.value.permanent and "DEEPGRAM_API_KEY" in str(info.value)
    assert server.handshakes == []


async def test_the_key_may_come_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("DEEPGRAM_API_KEY", KEY)
    session = await DeepgramAsr(FAST).open(asr_option(server, secret_key=None))
    await session.close()
    assert server.handshakes[0].headers["Authorization"] == f"Token {KEY}"


async def test_a_dropped_socket_is_a_transient_502(server):
    server.faults.drop_after = (40,)
    session = await DeepgramAsr(FAST).open(asr_option(server))
    results, error = await recognise(session, load_pcm("digits_a.wav"))
    assert error is not None and error.code == 502 and not error.permanent
    assert server.drops == 1


async def test_garbage_from_the_provider_is_a_transient_502(server):
    server.faults.garbage_after = 10
    session = await DeepgramAsr(FAST).open(asr_option(server))
    results, error = await recognise(session, load_pcm("digits_a.wav"))
    assert error is not None and error.code == 502 and not error.permanent and "not JSON" in str(error)


async def test_a_provider_that_stalls_mid_utterance_is_a_504(server):
    server.faults.stall_after = 45          # 0.9 s in: the utterance (0.4-1.95 s) has begun
    session = await DeepgramAsr(FAST).open(asr_option(server))
    results, error = await recognise(session, load_pcm("digits_a.wav"), speed=1.0, tail_s=2.0)
    assert error is not None and error.code == 504 and not error.permanent
    assert not finals(results)


async def test_an_idle_stream_is_kept_alive(server):
    server.idle_close = 1.0                 # the provider closes a stream idle this long
    session = await DeepgramAsr(FAST).open(asr_option(server))
    failures = await failures_while_idle(session, 2.5, lambda: session.send(np.zeros(320, np.int16)))
    assert failures == [] and server.keepalives >= 4   # 2.5 s is well past the provider's idle limit


# --- synthesis --------------------------------------------------------------------------------

async def test_websocket_synthesis_is_the_voice_of_the_text_and_reuses_the_prepared_socket(server, speaking):
    tts = DeepgramTts(tts_option(server, speaker="aura-2-luna-en", samplerate=24000), FAST)
    try:
        await tts.prepare()
        assert server.accepted == 1
        text = "Hello, this is a test of the voice."
        pcm, rate, chunks, _ = await speak(tts, SynthRequest(text, speaker="aura-2-luna-en", sample_rate=24000))
        assert rate == 24000 and similar_speech(pcm, await speaking.pcm(text, 24000), 24000)
        pcm2, *_ = await speak(tts, SynthRequest("And a second sentence here.", speaker="aura-2-luna-en",
                                                 sample_rate=24000))
        assert len(pcm2) > 0
        assert server.accepted == 1                     # one socket, prepared, used twice
        shake = server.handshakes[0]
        assert shake.one("model") == "aura-2-luna-en" and shake.one("sample_rate") == "24000"
        assert shake.one("encoding") == "linear16" and shake.headers["Authorization"] == f"Token {KEY}"
    finally:
        await tts.close()


async def test_rest_synthesis_maps_speed_and_volume(server, speaking):
    tts = DeepgramTts(tts_option(server, extra={"transport": "rest"}), FAST)
    try:
        text = "Speaking a little faster now."
        pcm, rate, _, _ = await speak(tts, SynthRequest(text, speed=1.3, volume=7, sample_rate=16000))
        plain = await speaking.pcm(text, 16000, speed=1.3)
        assert rate == 16000 and similar_speech(pcm, gain(plain, 7), 16000)
        assert 1.35 < rms(pcm) / rms(plain) < 1.45                 # volume 7 of 10: a gain of 1.4
        slower = await speaking.pcm(text, 16000)
        assert len(pcm) < 0.85 * len(slower)           # speed reached the server
        shake = server.handshakes[0]
        assert shake.path == "/v1/speak" and shake.one("speed") == "1.3" and shake.one("container") == "none"
    finally:
        await tts.close()


async def test_whole_texts_are_cached_and_streaming_pieces_are_not(server):
    cache = TtsCache(1 << 20)
    tts = DeepgramTts(tts_option(server), FAST, cache)
    try:
        request = SynthRequest("A sentence worth keeping.")
        first, _, chunks1, _ = await speak(tts, request)
        second, _, chunks2, _ = await speak(tts, request)
        assert np.array_equal(first, second)
        assert not any(c.cached for c in chunks1) and all(c.cached for c in chunks2)
        assert server.spoken == ["A sentence worth keeping."]
        await speak(tts, SynthRequest("A piece of a stream.", streaming=True))
        await speak(tts, SynthRequest("A piece of a stream.", streaming=True))
        assert server.spoken.count("A piece of a stream.") == 2
        assert cache.stats()["hits"] == 1
    finally:
        await tts.close()


async def test_synthesis_with_a_wrong_key_is_a_permanent_401(server):
    tts = DeepgramTts(tts_option(server, secret_key="nope"), FAST)
    try:
        with pytest.raises(ProviderError) as info:
            await speak(tts, SynthRequest("hello there"))
        assert info.value.code == 401 and info.value.permanent
    finally:
        await tts.close()


@pytest.mark.parametrize("transport", ["websocket", "rest"])
async def test_synthesis_cut_mid_way_is_a_transient_failure(server, transport):
    server.faults.drop_after = (3,)
    tts = DeepgramTts(tts_option(server, extra={"transport": transport}), FAST)
    try:
        with pytest.raises(ProviderError) as info:
            await speak(tts, SynthRequest("This sentence is long enough to need several audio messages."))
        assert not info.value.permanent and info.value.code in (502, 504)
    finally:
        await tts.close()


async def test_synthesis_that_stalls_is_a_504(server):
    server.faults.stall_after = 2
    tts = DeepgramTts(tts_option(server), FAST)
    try:
        with pytest.raises(ProviderError) as info:
            await speak(tts, SynthRequest("This sentence is long enough to need several audio messages."))
        assert info.value.code == 504 and not info.value.permanent
    finally:
        await tts.close()


async def test_a_cancelled_synthesis_leaves_a_fresh_socket_ready(server):
    tts = DeepgramTts(tts_option(server), FAST)
    try:
        chunks = tts.synthesize(SynthRequest("A long sentence that will be cut off before its end, surely."))
        await chunks.__anext__()
        await chunks.aclose()
        await eventually(lambda: server.accepted == 2)    # the spent socket replaced in the background
        await speak(tts, SynthRequest("Next one."))
        assert server.accepted == 2
    finally:
        await tts.close()


def test_codecs_other_than_pcm_are_refused():
    with pytest.raises(ProviderError) as info:
        DeepgramTts(SynthesisOption(codec="mp3"))
    assert info.value.code == 400 and info.value.permanent
