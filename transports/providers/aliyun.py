"""Aliyun through DashScope: real-time recognition (`paraformer-realtime-v2`) and streaming
synthesis (`cosyvoice-v2`) over `wss://dashscope.aliyuncs.com/api-ws/v1/inference`.

Credentials: `secretKey` of the option, else `DASHSCOPE_API_KEY`, sent as `Authorization: Bearer
<key>`. `endpoint` replaces `wss://dashscope.aliyuncs.com` (the international region's
`wss://dashscope-intl.aliyuncs.com`, a proxy, a test server).

Both speak DashScope's task protocol on the socket: the client sends `run-task` (header `action`,
`task_id`, `streaming: duplex`; payload `task_group: audio`, `task`, `function`, `model`,
`parameters`, `input`), waits for `task-started`, streams (binary audio for recognition,
`continue-task` with text for synthesis), sends `finish-task` and reads to `task-finished`;
`task-failed` carries `error_code` and `error_message`. A socket whose task finished may run the
next task: synthesis keeps its socket for the call, opened at answer.

Recognition (`asr.provider: "aliyun"`): `model` = `modelType` (default `paraformer-realtime-v2`,
`paraformer-realtime-8k-v2` when `samplerate` is 8000 or less), `format: pcm`, `sample_rate` =
`samplerate` (the call's 16 kHz audio resampled), `language_hints` = [the `language`'s primary
tag], `extra` merged into `parameters` (`disfluency_removal_enabled`, `vocabulary_id`,
`max_sentence_silence`...). Audio in 100 ms messages (`bufferSize` changes that). Each
`result-generated` sentence is an `asrDelta` until `sentence_end` (or an `end_time`), then an
`asrFinal`; `heartbeat` results are skipped. DashScope fails a task after 23 s without audio: an
idle stream gets 100 ms of silence every `keepalive_interval`.

Synthesis (`tts.provider: "aliyun"`): `model` = `extra.model` (default `cosyvoice-v2`), `voice` =
`speaker` (default `longxiaochun_v2`), `format: pcm`, `sample_rate` = `samplerate`, `rate` =
`speed` (0.5..2), `volume` = volume x 10 (0..100, 5 → 50), `word_timestamp_enabled` = `subtitle`
(word times become word marks), `text_type: PlainText`; other `extra` keys join `parameters`
(`pitch`, `seed`...). `emotion` has no equivalent.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from actors.services import AsrResult, ProviderError, SynthChunk, SynthRequest
from protocol.api import SynthesisOption, TranscriptionOption

from .tts_cache import TtsCache, cache_key
from .wire import ProviderSettings, SynthAudio, closed_error, connect_ws, credential, join_url, json_message
from .ws_recognition import WsRecognition

__all__ = ["AliyunAsr", "AliyunRecognition", "AliyunTts", "DASHSCOPE_ENDPOINT", "task_error"]

NAME = "aliyun"
DASHSCOPE_ENDPOINT = "wss://dashscope.aliyuncs.com"
PATH = "/api-ws/v1/inference"
ENV_KEY = "DASHSCOPE_API_KEY"
ASR_MODEL = "paraformer-realtime-v2"
ASR_MODEL_8K = "paraformer-realtime-8k-v2"
TTS_MODEL = "cosyvoice-v2"
DEFAULT_VOICE = "longxiaochun_v2"

# DashScope error codes: HTTP-like code, permanent. Unknown codes are transient (502).
_ERRORS: dict[str, tuple[int, bool]] = {
    "InvalidApiKey": (401, True),
    "Unauthorized": (401, True),
    "AccessDenied": (403, True),
    "Arrearage": (402, True),
    "InvalidParameter": (400, True),
    "BadRequest": (400, True),
    "ModelNotFound": (404, True),
    "Throttling": (429, False),
    "InternalError": (500, False),
}


def task_error(message: dict[str, Any]) -> ProviderError:
    header = message.get("header") or {}
    code = str(header.get("error_code") or "")
    text = str(header.get("error_message") or "")
    http, permanent = _ERRORS.get(code, (502, False))
    if code.startswith("Throttling"):
        http, permanent = 429, False
    elif code == "CLIENT_ERROR" and "timeout" in text.lower():
        http, permanent = 408, False
    elif code == "CLIENT_ERROR":
        http, permanent = 400, True
    return ProviderError(f"{NAME}: task failed: {code} {text}".strip(), code=http, permanent=permanent)


def _key(value: str | None) -> str:
    key = credential(value, ENV_KEY)
    if key is None:
        raise ProviderError(f"{NAME}: no API key (set secretKey or {ENV_KEY})", code=401, permanent=True)
    return key


def _extra(extra: Any, what: str) -> dict[str, Any]:
    if extra is None:
        return {}
    if not isinstance(extra, dict):
        raise ProviderError(f"{NAME}: {what}.extra must be an object", code=400, permanent=True)
    return dict(extra)


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _task(action: str, task_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"header": {"action": action, "task_id": task_id, "streaming": "duplex"}, "payload": payload}


async def _until_started(ws: aiohttp.ClientWebSocketResponse, task_id: str, timeout: float) -> None:
    while True:
        try:
            msg = await asyncio.wait_for(ws.receive(), timeout)
        except asyncio.TimeoutError:
            raise ProviderError(f"{NAME}: task not started within {timeout:g} s", code=504) from None
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise closed_error(NAME, ws, "the task start")
        message = json_message(NAME, msg.data)
        event = (message.get("header") or {}).get("event")
        if event == "task-failed":
            raise task_error(message)
        if event == "task-started":
            return


# --- recognition -----------------------------------------------------------------------------

class AliyunRecognition(WsRecognition):
    provider = NAME

    def __init__(self, *args: Any, task_id: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task_id = task_id

    def _on_text(self, data: str) -> None:
        message = json_message(NAME, data)
        header = message.get("header") or {}
        event = header.get("event")
        if event == "task-failed":
            self.fail(task_error(message))
        elif event == "task-finished":
            self.finished = True
            self.utterance_open = False
        elif event == "result-generated":
            sentence = ((message.get("payload") or {}).get("output") or {}).get("sentence")
            if not isinstance(sentence, dict) or sentence.get("heartbeat"):
                return
            text = str(sentence.get("text") or "")
            start = sentence.get("begin_time")
            end = sentence.get("end_time")
            final = bool(sentence.get("sentence_end", end is not None))
            self.utterance_open = not final
            if text:
                self.emit(AsrResult(text, final, None if start is None else int(start),
                                    None if end is None else int(end)))

    async def _end(self) -> None:
        await self.send_json(_task("finish-task", self.task_id, {"input": {}}))


def _language_hint(language: str | None) -> list[str] | None:
    if not language:
        return None
    return [language.replace("_", "-").split("-")[0].lower()]


class AliyunAsr:
    """`AsrProvider`: one recognition task on its own socket per `open`."""

    name = NAME

    def __init__(self, settings: ProviderSettings = ProviderSettings()) -> None:
        self.settings = settings

    def run_task(self, option: TranscriptionOption, task_id: str) -> tuple[dict[str, Any], int]:
        rate = option.samplerate or 16000
        model = option.model_type or (ASR_MODEL_8K if rate <= 8000 else ASR_MODEL)
        parameters: dict[str, Any] = {"format": "pcm", "sample_rate": rate}
        hints = _language_hint(option.language)
        if hints:
            parameters["language_hints"] = hints
        parameters.update(_extra(option.extra, "asr"))
        payload = {"task_group": "audio", "task": "asr", "function": "recognition", "model": model,
                   "parameters": parameters, "input": {}}
        return _task("run-task", task_id, payload), rate

    async def open(self, option: TranscriptionOption | None = None) -> AliyunRecognition:
        option = option or TranscriptionOption()
        key = _key(option.secret_key)
        task_id = uuid.uuid4().hex
        run, rate = self.run_task(option, task_id)
        url = join_url(option.endpoint or DASHSCOPE_ENDPOINT, PATH, websocket=True)
        http = aiohttp.ClientSession()
        try:
            ws = await connect_ws(http, url, provider=NAME, settings=self.settings, headers=_headers(key))
            try:
                await ws.send_json(run)
            except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                raise ProviderError(f"{NAME}: connection lost: {exc}", code=502) from None
            await _until_started(ws, task_id, self.settings.connect_timeout)
        except BaseException:
            await http.close()
            raise
        packet = option.buffer_size or rate // 10 * 2          # 100 ms
        return AliyunRecognition(ws, http, self.settings, rate=rate, packet_bytes=packet, task_id=task_id)


# --- synthesis -------------------------------------------------------------------------------

_WORD = re.compile(r"\S+")


class AliyunTts:
    """`TtsProvider` for one call: one DashScope socket, a synthesis task per request."""

    name = NAME

    def __init__(self, option: SynthesisOption | None = None, settings: ProviderSettings = ProviderSettings(),
                 cache: TtsCache | None = None) -> None:
        self.option = option or SynthesisOption()
        self.settings = settings
        self.reconnect = settings.reconnect
        self.cache = cache
        extra = _extra(self.option.extra, "tts")
        self.model = str(extra.pop("model", TTS_MODEL))
        self._extra = extra
        codec = (self.option.codec or "pcm").lower()
        if codec != "pcm":
            raise ProviderError(f"{NAME}: codec {codec!r} is not supported: the gateway plays PCM", code=400,
                                permanent=True)
        self._http: aiohttp.ClientSession | None = None
        self._idle: aiohttp.ClientWebSocketResponse | None = None
        self._connecting: asyncio.Task[aiohttp.ClientWebSocketResponse] | None = None
        self._closed = False

    def parameters(self, request: SynthRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "text_type": "PlainText", "voice": request.speaker or self.option.speaker or DEFAULT_VOICE,
            "format": "pcm", "sample_rate": request.sample_rate,
            "rate": round(max(0.5, min(2.0, request.speed or 1.0)), 2),
            "volume": max(0, min(100, round(float(request.volume) * 10))),
        }
        if self.option.subtitle:
            params["word_timestamp_enabled"] = True
        params.update(self._extra)
        params.update({k: v for k, v in dict(request.options).items() if k != "model"})
        return params

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        url = join_url(self.option.endpoint or DASHSCOPE_ENDPOINT, PATH, websocket=True)
        return await connect_ws(self._session(), url, provider=NAME, settings=self.settings,
                                headers=_headers(_key(self.option.secret_key)))

    async def prepare(self) -> None:
        if self._closed or self._idle is not None:
            return
        self._connecting = asyncio.get_running_loop().create_task(self._connect())
        try:
            self._idle = await asyncio.shield(self._connecting)
        finally:
            self._connecting = None

    async def _checkout(self) -> aiohttp.ClientWebSocketResponse:
        ws, self._idle = self._idle, None
        if ws is not None and not ws.closed:
            return ws
        return await self._connect()

    async def synthesize(self, request: SynthRequest) -> AsyncIterator[SynthChunk]:
        if self._closed:
            raise ProviderError(f"{NAME}: provider is closed")
        params = self.parameters(request)
        key = None
        if self.cache is not None and not request.streaming:
            key = cache_key(NAME, request, endpoint=self.option.endpoint, model=self.model, params=params)
        chunks = self.cache.through(key, lambda: self._speak(params, request)) if self.cache is not None \
            else self._speak(params, request)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk

    async def _speak(self, params: dict[str, Any], request: SynthRequest) -> AsyncIterator[SynthChunk]:
        ws = await self._checkout()
        task_id = uuid.uuid4().hex
        rate = int(params["sample_rate"])
        word_starts = [m.start() for m in _WORD.finditer(request.text)]
        audio = SynthAudio(rate)
        last_word = -1
        clean = False
        try:
            try:
                await ws.send_json(_task("run-task", task_id, {
                    "task_group": "audio", "task": "tts", "function": "SpeechSynthesizer", "model": self.model,
                    "parameters": params, "input": {}}))
                await _until_started(ws, task_id, self.settings.connect_timeout)
                await ws.send_json(_task("continue-task", task_id, {"input": {"text": request.text}}))
                await ws.send_json(_task("finish-task", task_id, {"input": {}}))
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
                    event = (message.get("header") or {}).get("event")
                    if event == "task-failed":
                        raise task_error(message)
                    if event == "result-generated":
                        sentence = ((message.get("payload") or {}).get("output") or {}).get("sentence") or {}
                        for word in sentence.get("words") or ():
                            try:
                                index = max(0, bisect.bisect_right(word_starts, int(word["begin_index"])) - 1)
                                begin = int(word["begin_time"]) * rate // 1000
                            except (KeyError, TypeError, ValueError):
                                continue
                            if index > last_word:
                                last_word = index
                                audio.mark(index, begin)
                    elif event == "task-finished":
                        chunk = audio.finish()
                        if chunk is not None:
                            yield chunk
                        clean = True
                        return
                else:
                    raise closed_error(NAME, ws, "synthesis")
        finally:
            if clean and not self._closed and self._idle is None:
                self._idle = ws              # the next task runs on this socket
            else:
                await ws.close()

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        ws, self._idle = self._idle, None
        if ws is not None:
            await ws.close()
        if self._http is not None:
            await self._http.close()
