"""The Aliyun (DashScope) client against a local DashScope that speaks the duplex task protocol:
paraformer recognition heard by pocketsphinx, cosyvoice synthesis spoken by espeak-ng."""

from __future__ import annotations


import pytest

from actors.services import ProviderError, SynthRequest
from protocol.api import SynthesisOption, TranscriptionOption
from tests.support.audio import rms
from transports.providers.aliyun import AliyunAsr, AliyunTts
from transports.providers.tts_cache import TtsCache
from transports.providers.wire import ProviderSettings

from .clients import eventually, failures_while_idle, finals, recognise, similar_speech, speak, wer
from .dashscope_server import DashScopeServer
from .support import asr_truth, load_pcm

KEY = "sk-test"
FAST = ProviderSettings(connect_timeout=2.0, stall_timeout=2.0, keepalive_interval=0.3, close_timeout=2.0)


@pytest.fixture
async def server(hearing, speaking):
    async with DashScopeServer(key=KEY, hearing=hearing, speaking=speaking) as srv:
        yield srv


def asr_option(server, **fields) -> TranscriptionOption:
    return TranscriptionOption(**{"provider": "aliyun", "endpoint": server.url, "secret_key": KEY, **fields})


def tts_option(server, **fields) -> SynthesisOption:
    return SynthesisOption(**{"provider": "aliyun", "endpoint": server.url, "secret_key": KEY, **fields})


# --- recognition ------------------------------------------------------------------------------

async def test_a_recognition_task_gives_each_sentence_once(server):
    truth = asr_truth("two_utterances.wav")["segments"]
    pcm = load_pcm("two_utterances.wav")
    session = await AliyunAsr(FAST).open(asr_option(server, language="en-US"))
    results, error = await recognise(session, pcm)
    assert error is None
    got = finals(results)
    assert len(got) == 2 and all(wer(s["text"], f.text) <= 0.34 for s, f in zip(truth, got))
    assert all(abs(f.start_ms - s["start_ms"]) <= 400 for f, s in zip(got, truth))
    run = server.tasks[0]
    assert run["header"]["action"] == "run-task" and run["header"]["streaming"] == "duplex"
    assert run["payload"]["model"] == "paraformer-realtime-v2" and run["payload"]["task_group"] == "audio"
    assert run["payload"]["parameters"] == {"format": "pcm", "sample_rate": 16000, "language_hints": ["en"]}
    assert server.handshakes[0].headers["Authorization"] == f"Bearer {KEY}"
    assert server.finishes == 1
    assert abs(server.audio_ms[0] - (len(pcm) / 16 + 1000)) < 110      # 100 ms packets


async def test_options_choose_model_rate_and_parameters(server):
    option = asr_option(server, samplerate=8000, language="zh-CN",
                        extra={"disfluency_removal_enabled": True, "vocabulary_id": "vocab-1"})
    session = await AliyunAsr(FAST).open(option)
    _, error = await recognise(session, load_pcm("digits_b.wav"))
    assert error is None
    run = server.tasks[0]["payload"]
    assert run["model"] == "paraformer-realtime-8k-v2"
    assert run["parameters"] == {"format": "pcm", "sample_rate": 8000, "language_hints": ["zh"],
                                 "disfluency_removal_enabled": True, "vocabulary_id": "vocab-1"}
    session = await AliyunAsr(FAST).open(asr_option(server, model_type="paraformer-realtime-v1"))
    await session.close()
    assert server.tasks[1]["payload"]["model"] == "paraformer-realtime-v1"


async def test_a_wrong_key_is_a_permanent_401(server):
    with pytest.raises(ProviderError) as info:
        await AliyunAsr(FAST).open(asr_option(server, secret_key="sk-wrong"))
    assert info.value.code == 401 and info.value.permanent
    assert server.accepted == 0


async def test_the_key_comes_from_the_environment_or_nothing_is_attempted(server, monkeypatch):
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    with pytest.raises(ProviderError) as info:
        await AliyunAsr(FAST).open(asr_option(server, secret_key=None))
    assert info.value.code == 401 and "DASHSCOPE_API_KEY" in str(info.value) and server.handshakes == []
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    session = await AliyunAsr(FAST).open(asr_option(server, secret_key=None))
    await session.close()
    assert server.accepted == 1


async def test_a_refused_task_is_permanent(server):
    with pytest.raises(ProviderError) as info:
        await AliyunAsr(FAST).open(asr_option(server, model_type="no-such-model"))
    assert info.value.code == 400 and info.value.permanent and "InvalidParameter" in str(info.value)


@pytest.mark.parametrize("fault", ["drop_after", "garbage_after"])
async def test_drops_and_garbage_are_transient_502s(server, fault):
    setattr(server.faults, fault, (10,) if fault == "drop_after" else 10)
    session = await AliyunAsr(FAST).open(asr_option(server))
    _, error = await recognise(session, load_pcm("digits_a.wav"))
    assert error is not None and error.code == 502 and not error.permanent


async def test_a_stall_inside_a_sentence_is_a_504(server):
    server.faults.stall_after = 14          # 1.4 s in (100 ms packets): the sentence has begun
    session = await AliyunAsr(FAST).open(asr_option(server))
    _, error = await recognise(session, load_pcm("digits_a.wav"), speed=2.0, tail_s=2.0)
    assert error is not None and error.code == 504


async def test_an_idle_task_is_kept_alive(server):
    server.silence_timeout = 1.0            # DashScope fails a task after 23 s without audio
    session = await AliyunAsr(FAST).open(asr_option(server))
    assert await failures_while_idle(session, 2.5) == []


# --- synthesis --------------------------------------------------------------------------------

async def test_synthesis_tasks_run_one_after_another_on_the_prepared_socket(server, speaking):
    tts = AliyunTts(tts_option(server, speaker="longxiaochun_v2", samplerate=24000), FAST)
    try:
        await tts.prepare()
        assert server.accepted == 1 and server.tasks == []
        text = "Good morning, how may I help you?"
        pcm, rate, _, _ = await speak(tts, SynthRequest(text, speaker="longxiaochun_v2", sample_rate=24000))
        assert rate == 24000 and similar_speech(pcm, await speaking.pcm(text, 24000), 24000)
        await speak(tts, SynthRequest("And a second sentence, please.", sample_rate=24000))
        assert server.accepted == 1 and len(server.tasks) == 2
        payload = server.tasks[0]["payload"]
        assert payload["model"] == "cosyvoice-v2" and payload["function"] == "SpeechSynthesizer"
        assert payload["parameters"] == {"text_type": "PlainText", "voice": "longxiaochun_v2", "format": "pcm",
                                         "sample_rate": 24000, "rate": 1.0, "volume": 50}
    finally:
        await tts.close()


async def test_speed_volume_subtitles_and_extra_are_mapped(server, speaking):
    tts = AliyunTts(tts_option(server, subtitle=True, extra={"model": "cosyvoice-v1", "pitch": 1.1}), FAST)
    try:
        text = "One two three four five six."
        pcm, rate, chunks, _ = await speak(tts, SynthRequest(text, speed=1.4, volume=3, sample_rate=16000))
        payload = server.tasks[0]["payload"]
        assert payload["model"] == "cosyvoice-v1"
        assert payload["parameters"]["rate"] == 1.4 and payload["parameters"]["volume"] == 30
        assert payload["parameters"]["pitch"] == 1.1 and payload["parameters"]["word_timestamp_enabled"] is True
        plain = await speaking.pcm(text, 16000)
        assert len(pcm) < 0.85 * len(plain) and rms(pcm) < 0.8 * rms(plain)
        marks, at = [], 0
        for chunk in chunks:
            marks += [(index, at + offset) for index, offset in chunk.words]
            at += len(chunk.pcm)
        assert [index for index, _ in marks] == list(range(6))
        assert [s for _, s in marks] == sorted(s for _, s in marks)
    finally:
        await tts.close()


async def test_cached_texts_are_not_asked_for_again(server):
    tts = AliyunTts(tts_option(server), FAST, TtsCache(1 << 20))
    try:
        await speak(tts, SynthRequest("Cached words here."))
        _, _, again, _ = await speak(tts, SynthRequest("Cached words here."))
        assert all(c.cached for c in again) and len(server.tasks) == 1
    finally:
        await tts.close()


async def test_a_wrong_key_for_synthesis_is_a_permanent_401(server):
    tts = AliyunTts(tts_option(server, secret_key="sk-nope"), FAST)
    try:
        with pytest.raises(ProviderError) as info:
            await tts.prepare()
        assert info.value.code == 401 and info.value.permanent
    finally:
        await tts.close()


async def test_refused_parameters_are_permanent(server):
    tts = AliyunTts(tts_option(server), FAST)
    try:
        with pytest.raises(ProviderError) as info:
            await speak(tts, SynthRequest("Hello there.", sample_rate=12345))
        assert info.value.code == 400 and info.value.permanent
        pcm, *_ = await speak(tts, SynthRequest("Hello again, now right."))   # a new task, a new socket
        assert len(pcm) and server.spoken == ["Hello again, now right."]
    finally:
        await tts.close()


@pytest.mark.parametrize("fault,code", [("drop_after", 502), ("stall_after", 504), ("garbage_after", 502)])
async def test_synthesis_faults_are_transient(server, fault, code):
    setattr(server.faults, fault, (2,) if fault == "drop_after" else 2)
    tts = AliyunTts(tts_option(server), FAST)
    try:
        with pytest.raises(ProviderError) as info:
            await speak(tts, SynthRequest("This sentence is long enough to need several audio messages."))
        assert info.value.code == code and not info.value.permanent
    finally:
        await tts.close()


async def test_a_cancelled_synthesis_does_not_leave_its_socket_for_the_next(server):
    tts = AliyunTts(tts_option(server), FAST)
    try:
        chunks = tts.synthesize(SynthRequest("A long sentence that is cut off before its end, for sure."))
        await chunks.__anext__()
        await chunks.aclose()
        await speak(tts, SynthRequest("The next request."))
        await eventually(lambda: server.accepted == 2)
        assert server.spoken[-1] == "The next request."
    finally:
        await tts.close()
