"""Tencent Cloud: real-time recognition (`wss://asr.cloud.tencent.com/asr/v2/<appid>`) and streaming
synthesis (`wss://tts.cloud.tencent.com/stream_wsv2`), both authenticated by an HMAC-SHA1
signature of the request's query.

Credentials: `appId`, `secretId`, `secretKey` of the option, else `TENCENT_APPID`,
`TENCENT_SECRET_ID`, `TENCENT_SECRET_KEY`. `endpoint` replaces the scheme and host the client
connects to; the signature is always computed over Tencent's own host and path, as Tencent
checks it, so a forwarding proxy works.

Signing (both services): every query parameter but the signature, sorted by name, joined as
`name=value` with `&` (values as sent, before URL encoding), prefixed with
`asr.cloud.tencent.com/asr/v2/<appid>?` (recognition) or `GETtts.cloud.tencent.com/stream_wsv2?`
(synthesis); HMAC-SHA1 with the secret key, base64, URL-encoded into `signature`/`Signature`.

Recognition: `engine_model_type` = `modelType`, else `<8k|16k>_<language>` from `samplerate`
and `language` (zh, en, yue, ja, ko...; default `16k_zh`); audio PCM (`voice_format=1`) at the
model's rate, in 40 ms packets (`bufferSize` changes that); `needvad=1`; a new `voice_id` per
connection, as Tencent requires; `extra` adds or overrides query parameters (`hotword_id`,
`vad_silence_time`, `filter_punc`...). The first message answers the handshake (`code` 0, or an
error such as 4002 for a bad signature). Results carry `slice_type` 0 (a sentence begins),
1 (interim), 2 (the sentence is final): 0 and 1 are `asrDelta`, 2 is `asrFinal`. `{"type": "end"}`
ends the stream; the answer with `final: 1` closes it. An idle stream gets 100 ms of silence
(Tencent drops streams with no audio for 6 s).

Synthesis (stream_wsv2, `Action=TextToStreamAudioWSv2`): `speaker` = `VoiceType` (a number,
default 101001), `speed` = `Speed` (the factor mapped onto Tencent's -2..6 scale: 0.6x..2.5x),
`volume` = `Volume` (1..10 around 5 mapped onto -10..10 around 0), `samplerate` = `SampleRate`,
`Codec=pcm`, `subtitle` = `EnableSubtitle` (its word times become word marks), `emotion` =
`EmotionCategory`; `extra` adds or overrides parameters (`EmotionIntensity`, `FastVoiceType`...).
One session per request: wait for `ready: 1`, send `ACTION_SYNTHESIS` with the text and
`ACTION_COMPLETE`, take binary audio until `final: 1`. A session is opened while the call is set up
and, after each request, the next one is opened in the background, so a request finds a session
ready when its parameters match.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import hashlib
import hmac
import math
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp

from actors.services import AsrResult, ProviderError, SynthChunk, SynthRequest
from protocol.api import SynthesisOption, TranscriptionOption

from .tts_cache import TtsCache, cache_key
from .wire import ProviderSettings, SynthAudio, closed_error, connect_ws, credential, join_url, json_message
from .ws_recognition import WsRecognition

__all__ = ["TencentAsr", "TencentRecognition", "TencentTts", "asr_sign_string", "sign", "tencent_speed",
           "tencent_volume", "tts_sign_string"]

NAME = "tencent"
ASR_HOST = "asr.cloud.tencent.com"
TTS_HOST = "tts.cloud.tencent.com"
TTS_PATH = "/stream_wsv2"
TTS_ACTION = "TextToStreamAudioWSv2"
DEFAULT_VOICE = "101001"
SIGNATURE_LIFETIME = 24 * 3600

# Tencent's documented speed steps: API factor -> Tencent Speed.
_SPEED_STEPS = ((0.6, -2.0), (0.8, -1.0), (1.0, 0.0), (1.2, 1.0), (1.5, 2.0), (2.5, 6.0))

# Recognition error codes (the first or a later message, `code` != 0): HTTP-like code, permanent.
ASR_ERRORS: dict[int, tuple[int, bool]] = {
    4001: (400, True),     # a parameter is missing or invalid
    4002: (401, True),     # authentication failed (signature, SecretId)
    4003: (403, True),     # the AppId has not enabled the service
    4004: (402, True),     # free quota used up
    4005: (402, True),     # account in arrears
    4006: (429, False),    # concurrency limit reached
    4007: (400, True),     # audio could not be decoded
    4008: (408, False),    # no audio from the client for too long
    4009: (502, False),    # the client connection broke
    4010: (400, True),     # an unknown text message from the client
}
# Synthesis error codes.
TTS_ERRORS: dict[int, tuple[int, bool]] = {
    10001: (400, True),    # invalid parameters
    10003: (401, True),    # authentication failed
}


def sign(sign_string: str, secret_key: str) -> str:
    digest = hmac.new(secret_key.encode(), sign_string.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _pairs(params: dict[str, Any]) -> str:
    return "&".join(f"{key}={params[key]}" for key in sorted(params))


def asr_sign_string(appid: str, params: dict[str, Any]) -> str:
    return f"{ASR_HOST}/asr/v2/{appid}?{_pairs(params)}"


def tts_sign_string(params: dict[str, Any]) -> str:
    return f"GET{TTS_HOST}{TTS_PATH}?{_pairs(params)}"


def _signed_url(base: str, params: dict[str, Any], signature_name: str, signature: str) -> str:
    query = "&".join(f"{key}={quote(str(params[key]), safe='')}" for key in sorted(params))
    return f"{base}?{query}&{signature_name}={quote(signature, safe='')}"


def tencent_speed(speed: float) -> float:
    """The API's speed factor on Tencent's Speed scale (-2..6), between its documented steps."""
    if not math.isfinite(speed) or speed <= 0:
        return 0.0
    if speed <= _SPEED_STEPS[0][0]:
        return _SPEED_STEPS[0][1]
    for (f0, s0), (f1, s1) in zip(_SPEED_STEPS, _SPEED_STEPS[1:]):
        if speed <= f1:
            return round(s0 + (speed - f0) * (s1 - s0) / (f1 - f0), 2)
    return _SPEED_STEPS[-1][1]


def tencent_volume(volume: float) -> int:
    """The API's 1..10 volume (5 = normal) on Tencent's Volume scale (-10..10, 0 = normal)."""
    return max(-10, min(10, round((float(volume) - 5) * 2)))


def _credentials(option: Any) -> tuple[str, str, str]:
    appid = credential(option.app_id, "TENCENT_APPID")
    secret_id = credential(option.secret_id, "TENCENT_SECRET_ID")
    secret_key = credential(option.secret_key, "TENCENT_SECRET_KEY")
    missing = [name for name, value in (("appId/TENCENT_APPID", appid), ("secretId/TENCENT_SECRET_ID", secret_id),
                                        ("secretKey/TENCENT_SECRET_KEY", secret_key)) if not value]
    if missing:
        raise ProviderError(f"{NAME}: missing credentials ({', '.join(missing)})", code=401, permanent=True)
    return str(appid), str(secret_id), str(secret_key)


def _extra(extra: Any, what: str) -> dict[str, Any]:
    if extra is None:
        return {}
    if not isinstance(extra, dict):
        raise ProviderError(f"{NAME}: {what}.extra must be an object", code=400, permanent=True)
    return {key: (int(value) if isinstance(value, bool) else value) for key, value in extra.items()}


def _error(table: dict[int, tuple[int, bool]], code: int, message: str) -> ProviderError:
    http, permanent = table.get(code, (400 if 4000 <= code < 5000 else 502, False))
    return ProviderError(f"{NAME}: {code} {message}".strip(), code=http, permanent=permanent)


# --- recognition -----------------------------------------------------------------------------

_LANGUAGES = {"zh": "zh", "cn": "zh", "en": "en", "yue": "yue", "ca": "yue", "ja": "ja", "ko": "ko",
              "th": "th", "id": "id", "vi": "vi", "ms": "ms", "fil": "fil", "pt": "pt", "tr": "tr",
              "ar": "ar", "es": "es", "hi": "hi", "fr": "fr", "de": "de"}


def engine_model(option: TranscriptionOption) -> str:
    if option.model_type:
        return option.model_type
    prefix = "8k" if (option.samplerate or 16000) <= 8000 else "16k"
    language = (option.language or "zh").replace("_", "-").split("-")[0].lower()
    if language not in _LANGUAGES:
        raise ProviderError(f"{NAME}: no model for language {option.language!r}; give modelType "
                            "(e.g. 16k_zh, 8k_en)", code=400, permanent=True)
    return f"{prefix}_{_LANGUAGES[language]}"


class TencentRecognition(WsRecognition):
    provider = NAME

    def _on_text(self, data: str) -> None:
        message = json_message(NAME, data)
        code = message.get("code", 0)
        if code:
            self.fail(_error(ASR_ERRORS, int(code), str(message.get("message", ""))))
            return
        if message.get("final") == 1:
            self.finished = True
            self.utterance_open = False
            return
        result = message.get("result")
        if not isinstance(result, dict):
            return
        try:
            kind = int(result["slice_type"])
            text = str(result.get("voice_text_str") or "")
            start = int(result.get("start_time", 0))
            end = int(result.get("end_time", start))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError(f"{NAME}: malformed result ({exc!r})", code=502) from None
        if kind == 2:
            self.utterance_open = False
            if text:
                self.emit(AsrResult(text, True, start, end))
        else:
            self.utterance_open = True
            if text:
                self.emit(AsrResult(text, False, start, end))

    async def _end(self) -> None:
        await self.send_json({"type": "end"})


class TencentAsr:
    """`AsrProvider`: one signed `/asr/v2/<appid>` stream per `open`."""

    name = NAME

    def __init__(self, settings: ProviderSettings = ProviderSettings()) -> None:
        self.settings = settings

    def request(self, option: TranscriptionOption, now: float | None = None) -> tuple[str, int]:
        """The signed URL (already encoded) and the audio rate the model takes."""
        appid, secret_id, secret_key = _credentials(option)
        model = engine_model(option)
        rate = 8000 if model.startswith("8k") else 16000
        stamp = int(time.time() if now is None else now)
        params: dict[str, Any] = {
            "secretid": secret_id, "timestamp": stamp, "expired": stamp + SIGNATURE_LIFETIME,
            "nonce": secrets.randbelow(9_000_000_000) + 1_000_000_000, "engine_model_type": model,
            "voice_id": str(uuid.uuid4()), "voice_format": 1, "needvad": 1,
        }
        params.update(_extra(option.extra, "asr"))
        base = join_url(option.endpoint or f"wss://{ASR_HOST}", f"/asr/v2/{appid}", websocket=True)
        return _signed_url(base, params, "signature", sign(asr_sign_string(appid, params), secret_key)), rate

    async def open(self, option: TranscriptionOption | None = None) -> TencentRecognition:
        option = option or TranscriptionOption()
        url, rate = self.request(option)
        http = aiohttp.ClientSession()
        try:
            ws = await connect_ws(http, url, provider=NAME, settings=self.settings, encoded=True)
            try:
                # The handshake's answer: code 0, or why the stream is refused.
                msg = await asyncio.wait_for(ws.receive(), self.settings.connect_timeout)
            except asyncio.TimeoutError:
                raise ProviderError(f"{NAME}: no handshake answer within {self.settings.connect_timeout:g} s",
                                    code=504) from None
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise closed_error(NAME, ws, "the handshake")
            answer = json_message(NAME, msg.data)
            if answer.get("code", 0):
                raise _error(ASR_ERRORS, int(answer["code"]), str(answer.get("message", "")))
        except BaseException:
            await http.close()
            raise
        packet = option.buffer_size or rate // 25 * 2        # 40 ms, as Tencent recommends
        return TencentRecognition(ws, http, self.settings, rate=rate, packet_bytes=packet)


# --- synthesis -------------------------------------------------------------------------------

_WORD = re.compile(r"\S+")


class _Session:
    """One stream_wsv2 connection that has said `ready`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session_id: str, params: dict[str, Any]) -> None:
        self.ws = ws
        self.session_id = session_id
        self.params = params


class TencentTts:
    """`TtsProvider` for one call over stream_wsv2 sessions, one ready ahead of need."""

    name = NAME

    def __init__(self, option: SynthesisOption | None = None, settings: ProviderSettings = ProviderSettings(),
                 cache: TtsCache | None = None) -> None:
        self.option = option or SynthesisOption()
        self.settings = settings
        self.reconnect = settings.reconnect
        self.cache = cache
        self._extra = _extra(self.option.extra, "tts")
        codec = (self.option.codec or "pcm").lower()
        if codec != "pcm":
            raise ProviderError(f"{NAME}: codec {codec!r} is not supported: the gateway plays PCM", code=400,
                                permanent=True)
        self._http: aiohttp.ClientSession | None = None
        self._spare: asyncio.Task[_Session] | None = None
        self._spare_key: str | None = None
        self._closed = False

    def _params(self, request: SynthRequest) -> dict[str, Any]:
        voice = str(request.speaker or self.option.speaker or DEFAULT_VOICE)
        if not voice.isdigit():
            raise ProviderError(f"{NAME}: speaker must be a VoiceType number, not {voice!r}", code=400, permanent=True)
        params: dict[str, Any] = {
            "Action": TTS_ACTION, "ModelType": 1, "VoiceType": int(voice), "Codec": "pcm",
            "SampleRate": request.sample_rate, "Speed": tencent_speed(request.speed),
            "Volume": tencent_volume(request.volume),
            "EnableSubtitle": "true" if self.option.subtitle else "false",
        }
        if self.option.emotion:
            params["EmotionCategory"] = self.option.emotion
        params.update(self._extra)
        params.update(_extra(dict(request.options), "tts"))
        return params

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _open(self, params: dict[str, Any]) -> _Session:
        appid, secret_id, secret_key = _credentials(self.option)
        stamp = int(time.time())
        session_id = str(uuid.uuid4())
        signed = {**params, "AppId": int(appid) if appid.isdigit() else appid, "SecretId": secret_id,
                  "Timestamp": stamp, "Expired": stamp + SIGNATURE_LIFETIME, "SessionId": session_id}
        base = join_url(self.option.endpoint or f"wss://{TTS_HOST}", TTS_PATH, websocket=True)
        url = _signed_url(base, signed, "Signature", sign(tts_sign_string(signed), secret_key))
        ws = await connect_ws(self._session(), url, provider=NAME, settings=self.settings, encoded=True)
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(ws.receive(), self.settings.connect_timeout)
                except asyncio.TimeoutError:
                    raise ProviderError(f"{NAME}: not ready within {self.settings.connect_timeout:g} s",
                                        code=504) from None
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise closed_error(NAME, ws, "the handshake")
                answer = json_message(NAME, msg.data)
                if answer.get("code", 0):
                    raise _error(TTS_ERRORS, int(answer["code"]), str(answer.get("message", "")))
                if answer.get("ready") == 1:
                    return _Session(ws, session_id, params)
        except BaseException:
            await ws.close()
            raise

    def _make_spare(self, params: dict[str, Any]) -> None:
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._open(params), name="tencent-tts-spare")
        # A spare that fails is not reported: the request that wanted it connects (and reports) itself.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._spare, self._spare_key = task, repr(sorted(params.items()))

    async def _take(self, params: dict[str, Any]) -> _Session:
        spare, key = self._spare, self._spare_key
        self._spare = self._spare_key = None
        if spare is not None:
            if key == repr(sorted(params.items())):
                try:
                    session = await asyncio.shield(spare)
                    if not session.ws.closed:
                        return session
                except ProviderError as exc:
                    if exc.permanent:
                        raise
                except Exception:  # noqa: BLE001 - a spare that failed: connect again below
                    pass
            else:
                spare.cancel()
                spare.add_done_callback(_close_session)
        return await self._open(params)

    async def prepare(self) -> None:
        if self._closed:
            return
        request = SynthRequest("", speaker=self.option.speaker, speed=self.option.speed, volume=self.option.volume,
                               sample_rate=self.option.samplerate, options=self.option.extra or {})
        params = self._params(request)
        self._make_spare(params)
        assert self._spare is not None
        await asyncio.shield(self._spare)

    async def synthesize(self, request: SynthRequest) -> AsyncIterator[SynthChunk]:
        if self._closed:
            raise ProviderError(f"{NAME}: provider is closed")
        params = self._params(request)
        key = None
        if self.cache is not None and not request.streaming:
            key = cache_key(NAME, request, endpoint=self.option.endpoint, params=params)
        chunks = self.cache.through(key, lambda: self._speak(params, request)) if self.cache is not None \
            else self._speak(params, request)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk

    async def _speak(self, params: dict[str, Any], request: SynthRequest) -> AsyncIterator[SynthChunk]:
        session = await self._take(params)
        self._make_spare(params)            # the next request's session, while this one speaks
        ws = session.ws
        rate = int(params["SampleRate"])
        word_starts = [m.start() for m in _WORD.finditer(request.text)]
        audio = SynthAudio(rate)
        last_word = -1
        try:
            try:
                for action, data in (("ACTION_SYNTHESIS", request.text), ("ACTION_COMPLETE", "")):
                    await ws.send_json({"session_id": session.session_id, "message_id": str(uuid.uuid4()),
                                        "action": action, "data": data})
            except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                raise ProviderError(f"{NAME}: connection lost while sending text: {exc}", code=502) from None
            while True:
                try:
                    msg = await asyncio.wait_for(ws.receive(), self.settings.stall_timeout)
                except asyncio.TimeoutError:
                    raise ProviderError(f"{NAME}: no audio for {self.settings.stall_timeout:g} s", code=504) from None
                if msg.type == aiohttp.WSMsgType.BINARY:
                    chunk = audio.audio(msg.data)
                    if chunk is not None:
                        yield chunk
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    message = json_message(NAME, msg.data)
                    if message.get("code", 0):
                        raise _error(TTS_ERRORS, int(message["code"]), str(message.get("message", "")))
                    result = message.get("result")
                    if isinstance(result, dict):
                        for subtitle in result.get("subtitles") or ():
                            try:
                                index = max(0, bisect.bisect_right(word_starts, int(subtitle["BeginIndex"])) - 1)
                                begin = int(subtitle["BeginTime"]) * rate // 1000
                            except (KeyError, TypeError, ValueError):
                                continue
                            if index > last_word:
                                last_word = index
                                audio.mark(index, begin)
                    if message.get("final") == 1:
                        chunk = audio.finish()
                        if chunk is not None:
                            yield chunk
                        return
                else:
                    raise closed_error(NAME, ws, "synthesis")
        finally:
            await ws.close()

    async def close(self) -> None:
        self._closed = True
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.cancel()
            done, = await asyncio.gather(spare, return_exceptions=True)
            if isinstance(done, _Session):
                await done.ws.close()
        if self._http is not None:
            await self._http.close()


def _close_session(task: asyncio.Task[_Session]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    asyncio.get_running_loop().create_task(task.result().ws.close())
