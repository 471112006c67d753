"""The Tencent Cloud client against a local Tencent that checks the HMAC-SHA1 signature and speaks
its recognition and stream_wsv2 synthesis messages (pocketsphinx hears, espeak-ng speaks)."""

from __future__ import annotations


import pytest

from actors.services import ProviderError, SynthRequest
from protocol.api import SynthesisOption, TranscriptionOption
from transports.providers.tencent import (TencentAsr, TencentTts, asr_sign_string, sign, tencent_speed,
                                          tencent_volume, tts_sign_string)
from transports.providers.tts_cache import TtsCache
from transports.providers.wire import ProviderSettings

from .clients import eventually, failures_while_idle, finals, recognise, similar_speech, speak, wer
from .support import asr_truth, load_pcm
from .tencent_server import TencentServer

APPID, SECRET_ID, SECRET_KEY = "1250000001", "AKIDtest", "tencent-test-key"
FAST = ProviderSettings(connect_timeout=2.0, stall_timeout=2.0, keepalive_interval=0.3, close_timeout=2.0)


@pytest.fixture
async def server(hearing, speaking):
    async with TencentServer(appid=APPID, secret_id=SECRET_ID, secret_key=SECRET_KEY,
                             hearing=hearing, speaking=speaking) as srv:
        yield srv


def asr_option(server, **fields) -> TranscriptionOption:
    return TranscriptionOption(**{"provider": "tencent", "endpoint": server.url.replace("http", "ws"),
                                  "app_id": APPID, "secret_id": SECRET_ID, "secret_key": SECRET_KEY,
                                  "language": "en", **fields})


def tts_option(server, **fields) -> SynthesisOption:
    return SynthesisOption(**{"provider": "tencent", "endpoint": server.url, "app_id": APPID,
                              "secret_id": SECRET_ID, "secret_key": SECRET_KEY, **fields})


def test_signature_is_hmac_sha1_over_the_sorted_query_on_tencents_host():
    params = {"secretid": "AKIDz", "timestamp": 1700000000, "expired": 1700086400, "nonce": 1234567890,
              "engine_model_type": "16k_zh", "voice_id": "c64385ee", "voice_format": 1, "needvad": 1}
    text = asr_sign_string("125922", params)
    assert text == ("asr.cloud.tencent.com/asr/v2/125922?engine_model_type=16k_zh&expired=1700086400&needvad=1"
                    "&nonce=1234567890&secretid=AKIDz&timestamp=1700000000&voice_format=1&voice_id=c64385ee")
    import base64
    import hashlib
    import hmac
    assert sign(text, "k") == base64.b64encode(hmac.new(b"k", text.encode(), hashlib.sha1).digest()).decode()
    assert tts_sign_string({"B": 2, "A": "x"}) == "GETtts.cloud.tencent.com/stream_wsv2?A=x&B=2"


def test_speed_and_volume_map_onto_tencents_scales():
    assert [tencent_speed(f) for f in (0.5, 0.6, 0.8, 1.0, 1.2, 1.5, 2.5, 4.0)] == [-2, -2, -1, 0, 1, 2, 6, 6]
    assert tencent_speed(1.1) == 0.5 and tencent_speed(2.0) == 4.0
    assert [tencent_volume(v) for v in (1, 5, 10)] == [-8, 0, 10]


# --- recognition ------------------------------------------------------------------------------

async def test_a_signed_stream_recognises_each_sentence_once(server):
    truth = asr_truth("two_utterances.wav")["segments"]
    pcm = load_pcm("two_utterances.wav")
    session = await TencentAsr(FAST).open(asr_option(server))
    results, error = await recognise(session, pcm)
    assert error is None
    got = finals(results)
    assert [wer(s["text"], f.text) <= 0.34 for s, f in zip(truth, got)] == [True] * len(truth) and len(got) == 2
    assert all(abs(f.start_ms - s["start_ms"]) <= 400 for f, s in zip(got, truth))
    assert not results[0].final                       # slice_type 0/1 before 2
    shake = server.handshakes[0]
    assert shake.one("engine_model_type") == "16k_en" and shake.one("voice_format") == "1"
    assert shake.one("needvad") == "1" and shake.one("secretid") == SECRET_ID and shake.one("signature")
    assert server.ends == 1
    # 40 ms packets: 1280 bytes each.
    assert abs(server.audio_ms[0] - (len(pcm) / 16 + 1000)) < 60


async def test_options_choose_the_model_rate_packets_and_extra_parameters(server):
    option = asr_option(server, language="en-US", samplerate=8000, buffer_size=3200,
                        extra={"hotword_id": "hw-1", "vad_silence_time": 800, "filter_punc": True})
    session = await TencentAsr(FAST).open(option)
    results, error = await recognise(session, load_pcm("digits_a.wav"))
    assert error is None and finals(results)
    shake = server.handshakes[0]
    assert shake.one("engine_model_type") == "8k_en"
    assert shake.one("hotword_id") == "hw-1" and shake.one("vad_silence_time") == "800"
    assert shake.one("filter_punc") == "1"
    session = await TencentAsr(FAST).open(asr_option(server, model_type="16k_zh_dialect"))
    await session.close()
    assert server.handshakes[1].one("engine_model_type") == "16k_zh_dialect"
    assert server.voice_ids[0] != server.voice_ids[1]       # a new voice_id per connection


async def test_a_bad_signature_is_a_permanent_401(server):
    with pytest.raises(ProviderError) as info:
        await TencentAsr(FAST).open(asr_option(server, secret_key="not-the-key"))
    assert info.value.code == 401 and info.value.permanent and "4002" in str(info.value)
    assert server.accepted == 0


async def test_missing_credentials_are_refused_without_connecting(server, monkeypatch):
    for name in ("TENCENT_APPID", "TENCENT_SECRET_ID", "TENCENT_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ProviderError) as info:
        await TencentAsr(FAST).open(asr_option(server, secret_id=None))
    assert info.value.code == 401 and "TENCENT_SECRET_ID" in str(info.value)
    assert server.handshakes == []


async def test_credentials_may_come_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("TENCENT_APPID", APPID)
    monkeypatch.setenv("TENCENT_SECRET_ID", SECRET_ID)
    monkeypatch.setenv("TENCENT_SECRET_KEY", SECRET_KEY)
    session = await TencentAsr(FAST).open(asr_option(server, app_id=None, secret_id=None, secret_key=None))
    await session.close()
    assert server.accepted == 1


@pytest.mark.parametrize("fault,code", [("drop_after", 502), ("garbage_after", 502)])
async def test_drops_and_garbage_are_transient(server, fault, code):
    setattr(server.faults, fault, (20,) if fault == "drop_after" else 20)
    session = await TencentAsr(FAST).open(asr_option(server))
    _, error = await recognise(session, load_pcm("digits_a.wav"))
    assert error is not None and error.code == code and not error.permanent


async def test_a_stall_inside_a_sentence_is_a_504(server):
    server.faults.stall_after = 35          # 1.4 s in (40 ms packets): the sentence has begun
    session = await TencentAsr(FAST).open(asr_option(server))
    results, error = await recognise(session, load_pcm("digits_a.wav"), speed=2.0, tail_s=2.0)
    assert error is not None and error.code == 504 and not error.permanent


async def test_an_idle_stream_is_kept_open_with_silence(server):
    server.idle_close = 1.0                 # Tencent answers 4008 after this long without audio
    session = await TencentAsr(FAST).open(asr_option(server))
    assert await failures_while_idle(session, 2.5) == []
    await eventually(lambda: bool(server.audio_ms))
    assert server.audio_ms[0] >= 500        # keep-alive silence reached the server


# --- synthesis --------------------------------------------------------------------------------

async def test_synthesis_uses_a_ready_session_and_keeps_the_next_one_ready(server, speaking):
    tts = TencentTts(tts_option(server, speaker="101004", samplerate=16000), FAST)
    try:
        await tts.prepare()
        assert server.accepted == 1
        text = "Welcome to the example company."
        pcm, rate, _, _ = await speak(tts, SynthRequest(text, speaker="101004", sample_rate=16000))
        assert rate == 16000 and similar_speech(pcm, await speaking.pcm(text, 16000), 16000)
        await eventually(lambda: server.accepted == 2)      # the spare, opened while it spoke
        await speak(tts, SynthRequest("A second sentence follows.", speaker="101004", sample_rate=16000))
        await eventually(lambda: server.accepted == 3)
        assert server.spoken == [text, "A second sentence follows."]
        session = server.sessions[0]
        assert session["VoiceType"] == "101004" and session["SampleRate"] == "16000"
        assert session["Codec"] == "pcm" and session["Action"] == "TextToStreamAudioWSv2"
    finally:
        await tts.close()


async def test_speed_volume_emotion_and_extra_reach_the_session(server, speaking):
    option = tts_option(server, emotion="happy", subtitle=True, samplerate=8000,
                        extra={"EmotionIntensity": 150, "SegmentRate": 1})
    tts = TencentTts(option, FAST)
    try:
        text = "One two three four five six."
        pcm, rate, chunks, _ = await speak(tts, SynthRequest(text, speed=1.5, volume=7, sample_rate=8000))
        session = server.sessions[0]
        assert session["Speed"] == "2.0" and session["Volume"] == "4" and session["SampleRate"] == "8000"
        assert session["EmotionCategory"] == "happy" and session["EmotionIntensity"] == "150"
        assert session["SegmentRate"] == "1" and session["EnableSubtitle"] == "true"
        assert rate == 8000 and len(pcm) < 0.8 * len(await speaking.pcm(text, 8000))
        # Subtitles became word marks, one per word, in order, inside the audio.
        marks, at = [], 0
        for chunk in chunks:
            marks += [(index, at + offset) for index, offset in chunk.words]
            at += len(chunk.pcm)
        assert [index for index, _ in marks] == list(range(6))
        assert all(0 <= sample <= len(pcm) for _, sample in marks)
        assert [s for _, s in marks] == sorted(s for _, s in marks)
    finally:
        await tts.close()


async def test_whole_texts_come_from_the_cache_the_second_time(server):
    tts = TencentTts(tts_option(server), FAST, TtsCache(1 << 20))
    try:
        _, _, first, _ = await speak(tts, SynthRequest("Cached words here."))
        _, _, again, _ = await speak(tts, SynthRequest("Cached words here."))
        assert all(c.cached for c in again) and server.spoken == ["Cached words here."]
    finally:
        await tts.close()


async def test_a_bad_signature_on_synthesis_is_a_permanent_401(server):
    tts = TencentTts(tts_option(server, secret_key="wrong"), FAST)
    try:
        with pytest.raises(ProviderError) as info:
            await speak(tts, SynthRequest("Hello there."))
        assert info.value.code == 401 and info.value.permanent and "10003" in str(info.value)
    finally:
        await tts.close()


async def test_a_speaker_that_is_not_a_voice_number_is_refused(server):
    tts = TencentTts(tts_option(server), FAST)
    try:
        with pytest.raises(ProviderError) as info:
            await speak(tts, SynthRequest("Hello there.", speaker="xiaoyan"))
        assert info.value.code == 400 and info.value.permanent
    finally:
        await tts.close()


@pytest.mark.parametrize("fault,code", [("drop_after", 502), ("stall_after", 504), ("garbage_after", 502)])
async def test_synthesis_faults_are_transient(server, fault, code):
    setattr(server.faults, fault, (2,) if fault == "drop_after" else 2)
    tts = TencentTts(tts_option(server), FAST)
    try:
        with pytest.raises(ProviderError) as info:
            await speak(tts, SynthRequest("This sentence is long enough to need several audio messages."))
        assert info.value.code == code and not info.value.permanent
    finally:
        await tts.close()
