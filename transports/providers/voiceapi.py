"""VoiceAPI: the self-hosted sherpa-onnx server (github.com/ruzhila/voiceapi), recognition on
`<endpoint>/asr` and synthesis on `<endpoint>/tts`, both WebSockets.

Where: `endpoint` of the option, else `VOICEAPI_ENDPOINT` (`ws://host:8000` or `http://host:8000`;
none is an error, there is no public default). VoiceAPI has no authentication of its own; a
`secretKey`, when given, is sent as `Authorization: Bearer <key>` for a proxy in front of it.

Recognition: `/asr?samplerate=<samplerate>` (default 16000; the call's audio resampled), binary
int16 PCM in, `{"text", "finished", "idx"}` out: `finished: false` is an `asrDelta` of utterance
`idx`, `finished: true` its `asrFinal`. The model, its language and its endpointing are the
server's (`--asr-model`, `--asr-lang`): `language` and `modelType` have no equivalent. Results
carry no times. VoiceAPI has no end-of-stream message: `close()` sends one second of silence, so
the server's endpointing ends the utterance in progress, and waits `close_timeout` for its final.

Synthesis: `/tts?samplerate=<samplerate>&chunk_size=2560&sid=<speaker>&speed=<speed>&split=false
&interrupt=false`: a text message in, binary PCM chunks of 2560 bytes out, then one JSON message
(`progress: 1.0`, `elapsed`, `duration`, `size`) that ends the request. `speaker` is the sid (a
number; default `VOICEAPI_SPEAKER_ID`, else 0); `interrupt=false` lets one socket carry request
after request (it is opened at answer and reused); a request cancelled mid-way closes its socket.
`volume` has no VoiceAPI equivalent and is applied here as a gain; `subtitle` and `emotion` have
none; `extra` adds query parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from yarl import URL

from actors.services import AsrResult, ProviderError, SynthChunk, SynthRequest
from protocol.api import SynthesisOption, TranscriptionOption

from .tts_cache import TtsCache, cache_key
from .wire import ProviderSettings, SynthAudio, closed_error, connect_ws, credential, gain, join_url, json_message
from .ws_recognition import WsRecognition

__all__ = ["CHUNK_SIZE", "VoiceApiAsr", "VoiceApiRecognition", "VoiceApiTts"]

NAME = "voiceapi"
ENV_ENDPOINT = "VOICEAPI_ENDPOINT"
ENV_SPEAKER = "VOICEAPI_SPEAKER_ID"
CHUNK_SIZE = 2560
TAIL_SILENCE_S = 1.0


def _endpoint(value: str | None) -> str:
    endpoint = credential(value, ENV_ENDPOINT)
    if endpoint is None:
        raise ProviderError(f"{NAME}: no endpoint (set endpoint or {ENV_ENDPOINT})", code=400, permanent=True)
    return endpoint


def _headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _extra(extra: Any, what: str) -> dict[str, Any]:
    if extra is None:
        return {}
    if not isinstance(extra, dict):
        raise ProviderError(f"{NAME}: {what}.extra must be an object", code=400, permanent=True)
    return dict(extra)


def _query(params: dict[str, Any]) -> dict[str, str]:
    return {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in params.items()
            if v is not None}


# --- recognition -----------------------------------------------------------------------------

class VoiceApiRecognition(WsRecognition):
    provider = NAME

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idx: int | None = None
        self._final_seen = asyncio.Event()

    def _on_text(self, data: str) -> None:
        message = json_message(NAME, data)
        if "text" not in message:
            return
        text = str(message.get("text") or "")
        final = bool(message.get("finished"))
        self._idx = message.get("idx", self._idx)
        self.utterance_open = not final
        if text:
            self.emit(AsrResult(text, final))
        if final:
            self._final_seen.set()

    async def _end(self) -> None:
        # No end-of-stream message: trailing silence lets the server close the utterance.
        self._final_seen.clear()
        open_before = self.utterance_open
        await self._send_bytes(bytes(int(TAIL_SILENCE_S * self.rate) * 2))
        if open_before:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._final_seen.wait(), self.settings.close_timeout)
        self.finished = True
        await self._ws.close()

    async def _keepalive(self) -> None:
        """VoiceAPI keeps idle streams open; the WebSocket pings are enough."""
        self._last_sent = asyncio.get_running_loop().time()


class VoiceApiAsr:
    """`AsrProvider`: one `/asr` stream per `open`."""

    name = NAME

    def __init__(self, settings: ProviderSettings = ProviderSettings()) -> None:
        self.settings = settings

    async def open(self, option: TranscriptionOption | None = None) -> VoiceApiRecognition:
        option = option or TranscriptionOption()
        rate = option.samplerate or 16000
        query = _query({"samplerate": rate, **_extra(option.extra, "asr")})
        url = URL(join_url(_endpoint(option.endpoint), "/asr", websocket=True)).with_query(query)
        http = aiohttp.ClientSession()
        try:
            ws = await connect_ws(http, url, provider=NAME, settings=self.settings,
                                  headers=_headers(option.secret_key))
        except BaseException:
            await http.close()
            raise
        return VoiceApiRecognition(ws, http, self.settings, rate=rate, packet_bytes=option.buffer_size or 0)


# --- synthesis -------------------------------------------------------------------------------

class VoiceApiTts:
    """`TtsProvider` for one call: one `/tts` socket, request after request."""

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
        self._idle: aiohttp.ClientWebSocketResponse | None = None
        self._idle_url: str | None = None
        self._closed = False

    def _url(self, request: SynthRequest) -> str:
        sid = str(request.speaker or self.option.speaker or credential(None, ENV_SPEAKER) or "0")
        if not sid.lstrip("-").isdigit():
            raise ProviderError(f"{NAME}: speaker must be a speaker id number, not {sid!r}", code=400, permanent=True)
        params = {"samplerate": request.sample_rate, "chunk_size": CHUNK_SIZE, "sid": int(sid),
                  "speed": request.speed, "split": False, "interrupt": False, **self._extra,
                  **dict(request.options)}
        return str(URL(join_url(_endpoint(self.option.endpoint), "/tts", websocket=True)).with_query(_query(params)))

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _connect(self, url: str) -> aiohttp.ClientWebSocketResponse:
        return await connect_ws(self._session(), url, provider=NAME, settings=self.settings,
                                headers=_headers(self.option.secret_key), encoded=True)

    async def prepare(self) -> None:
        if self._closed or self._idle is not None:
            return
        request = SynthRequest("", speaker=self.option.speaker, speed=self.option.speed,
                               sample_rate=self.option.samplerate, options=self.option.extra or {})
        url = self._url(request)
        ws = await self._connect(url)
        if self._closed:
            await ws.close()
            return
        self._idle, self._idle_url = ws, url

    async def _checkout(self, url: str) -> aiohttp.ClientWebSocketResponse:
        ws, self._idle = self._idle, None
        if ws is not None and not ws.closed and self._idle_url == url:
            return ws
        if ws is not None:
            await ws.close()
        return await self._connect(url)

    async def synthesize(self, request: SynthRequest) -> AsyncIterator[SynthChunk]:
        if self._closed:
            raise ProviderError(f"{NAME}: provider is closed")
        url = self._url(request)
        key = cache_key(NAME, request, url=url) if self.cache is not None and not request.streaming else None
        chunks = self.cache.through(key, lambda: self._speak(url, request)) if self.cache is not None \
            else self._speak(url, request)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield SynthChunk(gain(chunk.pcm, request.volume), chunk.sample_rate, chunk.words, chunk.cached)

    async def _speak(self, url: str, request: SynthRequest) -> AsyncIterator[SynthChunk]:
        ws = await self._checkout(url)
        clean = False
        audio = SynthAudio(request.sample_rate)
        try:
            try:
                await ws.send_str(request.text)
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
                    if float(message.get("progress", 0) or 0) >= 1.0:
                        clean = True
                        return
                else:
                    raise closed_error(NAME, ws, "synthesis")
        finally:
            if clean and not self._closed and self._idle is None:
                self._idle, self._idle_url = ws, url
            else:
                await ws.close()

    async def close(self) -> None:
        self._closed = True
        ws, self._idle = self._idle, None
        if ws is not None:
            await ws.close()
        if self._http is not None:
            await self._http.close()
