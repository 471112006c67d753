"""Deepgram: streaming recognition (`/v1/listen`, WebSocket) and synthesis (`/v1/speak`, WebSocket or REST).

Credentials: `secretKey` of the option, else `DEEPGRAM_API_KEY`, sent as `Authorization: Token <key>`.
`endpoint` replaces `https://api.deepgram.com` (a self-hosted Deepgram, or a test server).

Recognition (`asr.provider: "deepgram"`): the call's 16 kHz audio is sent as `linear16` at
`samplerate` (resampled when that is not 16000) with `interim_results=true`,
`utterance_end_ms=1000`, `vad_events=true`, `endpointing=300`, `punctuate=true`; `modelType`
becomes `model` (default `nova-3`), `language` becomes `language`, and every key of `extra` is
added to the query as given (`{"smart_format": true, "keyterm": ["acme"]}`), overriding those
defaults. Deepgram sends interim results (`is_final: false`), finalised pieces of an utterance
(`is_final: true`) and marks its end with `speech_final: true` or an `UtteranceEnd` message: the
pieces of one utterance are joined into one `asrFinal`; every interim result is an `asrDelta` of
the utterance so far. `KeepAlive` goes out on an idle stream; `CloseStream` ends it.

Synthesis (`tts.provider: "deepgram"`): `speaker` is the model (voice), default
`aura-2-thalia-en`; audio is requested as `linear16` at `samplerate`. Over the WebSocket (the
default) each request is `Speak` + `Flush` and ends at `Flushed`; one socket per call is opened
while the call is set up and reused, a cancelled request closes it and a fresh one is opened in
the background. `extra.transport: "rest"` uses `POST /v1/speak` instead (one request each, audio
streamed in the response). `speed` maps to `speed` on REST and has no equivalent on the
WebSocket; `volume` has no Deepgram equivalent and is applied here as a gain (5 = unchanged,
10 = twice the amplitude, clipped); `subtitle` has none (the gateway marks sentence starts);
`codec` must be `pcm`/`linear16` (the gateway plays PCM). Other keys of `extra` are added to the
query. Whole texts are cached (tts_cache.py).
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
from .wire import ProviderSettings, SynthAudio, closed_error, connect_ws, credential, gain, http_error, join_url, json_message
from .ws_recognition import WsRecognition

__all__ = ["DEEPGRAM_ENDPOINT", "DeepgramAsr", "DeepgramRecognition", "DeepgramTts", "gain"]

NAME = "deepgram"
DEEPGRAM_ENDPOINT = "https://api.deepgram.com"
ENV_KEY = "DEEPGRAM_API_KEY"
DEFAULT_ASR_MODEL = "nova-3"
DEFAULT_VOICE = "aura-2-thalia-en"
SPEAK_LIMIT = 2000           # characters per Speak message (Deepgram's limit)
IDLE_SOCKETS = 1             # prepared synthesis sockets kept per call


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return [_query_value(v) for v in value]
    return str(value)


def _query(params: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        if value is None:
            continue
        value = _query_value(value)
        out.extend((key, v) for v in value) if isinstance(value, list) else out.append((key, value))
    return out


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


# --- recognition -----------------------------------------------------------------------------

class DeepgramRecognition(WsRecognition):
    provider = NAME

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pieces: list[str] = []          # finalised pieces of the utterance in progress
        self._start: int | None = None
        self._end_ms: int | None = None

    def _on_text(self, data: str) -> None:
        message = json_message(NAME, data)
        kind = message.get("type")
        if kind == "Results":
            self._results(message)
        elif kind == "UtteranceEnd":
            self._final()
        elif kind == "Metadata":
            # Deepgram's last word after CloseStream: whatever is still open ends here.
            if self._ending:
                self._final()
                self.finished = True
        elif kind in ("SpeechStarted",):
            pass
        elif kind == "Error" or "err_code" in message:
            detail = message.get("description") or message.get("err_msg") or message.get("message") or data[:200]
            self.fail(ProviderError(f"{NAME}: {detail}", code=502))
        # Other message types are newer than this client: ignored.

    def _results(self, message: dict[str, Any]) -> None:
        try:
            alternative = message["channel"]["alternatives"][0]
            transcript = str(alternative.get("transcript") or "").strip()
            start = float(message.get("start", 0.0))
            duration = float(message.get("duration", 0.0))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ProviderError(f"{NAME}: malformed Results message ({exc!r})", code=502) from None
        words = alternative.get("words") or []
        if transcript:
            first = float(words[0].get("start", start)) if words else start
            last = float(words[-1].get("end", start + duration)) if words else start + duration
            if self._start is None:
                self._start = int(first * 1000)
            self._end_ms = int(last * 1000)
        if message.get("is_final"):
            if transcript:
                self._pieces.append(transcript)
            if message.get("speech_final"):
                self._final()
            elif self._pieces:
                self.utterance_open = True
                self.emit(AsrResult(" ".join(self._pieces), False, self._start, self._end_ms))
        elif transcript:
            self.utterance_open = True
            self.emit(AsrResult(" ".join([*self._pieces, transcript]), False, self._start,
                                int((start + duration) * 1000)))

    def _final(self) -> None:
        if self._pieces:
            self.emit(AsrResult(" ".join(self._pieces), True, self._start, self._end_ms))
        self._pieces = []
        self._start = self._end_ms = None
        self.utterance_open = False

    def _owes_answer(self) -> bool:
        return True          # Deepgram answers all audio, silence included (empty Results)

    async def _end(self) -> None:
        await self.send_json({"type": "CloseStream"})

    async def _keepalive(self) -> None:
        await self.send_json({"type": "KeepAlive"})


class DeepgramAsr:
    """`AsrProvider`: one `/v1/listen` stream per `open`."""

    name = NAME

    def __init__(self, settings: ProviderSettings = ProviderSettings()) -> None:
        self.settings = settings

    def listen_url(self, option: TranscriptionOption) -> tuple[str, list[tuple[str, str]], int]:
        rate = option.samplerate or 16000
        params: dict[str, Any] = {
            "model": option.model_type or DEFAULT_ASR_MODEL,
            "language": option.language,
            "encoding": "linear16",
            "sample_rate": rate,
            "channels": 1,
            "interim_results": True,
            "utterance_end_ms": 1000,
            "vad_events": True,
            "endpointing": 300,
            "punctuate": True,
        }
        params.update(_extra(option.extra, "asr"))
        url = join_url(option.endpoint or DEEPGRAM_ENDPOINT, "/v1/listen", websocket=True)
        return url, _query(params), rate

    async def open(self, option: TranscriptionOption | None = None) -> DeepgramRecognition:
        option = option or TranscriptionOption()
        key = _key(option.secret_key)
        url, query, rate = self.listen_url(option)
        http = aiohttp.ClientSession()
        try:
            ws = await connect_ws(http, URL(url).with_query(query), provider=NAME,
                                  settings=self.settings, headers={"Authorization": f"Token {key}"},
                                  detail_header="dg-error")
        except BaseException:
            await http.close()
            raise
        return DeepgramRecognition(ws, http, self.settings, rate=rate, packet_bytes=option.buffer_size or 0)


# --- synthesis -------------------------------------------------------------------------------

class DeepgramTts:
    """`TtsProvider` for one call: prepared WebSocket(s) reused request after request, or REST."""

    name = NAME

    def __init__(self, option: SynthesisOption | None = None, settings: ProviderSettings = ProviderSettings(),
                 cache: TtsCache | None = None) -> None:
        self.option = option or SynthesisOption()
        self.settings = settings
        self.reconnect = settings.reconnect
        self.cache = cache
        self._http: aiohttp.ClientSession | None = None
        self._idle: list[aiohttp.ClientWebSocketResponse] = []
        self._idle_url: str | None = None
        self._opening: set[asyncio.Task[None]] = set()
        self._closed = False
        extra = _extra(self.option.extra, "tts")
        self.transport = str(extra.pop("transport", "websocket")).lower()
        if self.transport not in ("websocket", "rest"):
            raise ProviderError(f"{NAME}: tts.extra.transport must be \"websocket\" or \"rest\", "
                                f"not {self.transport!r}", code=400, permanent=True)
        self._extra = extra
        codec = (self.option.codec or "pcm").lower()
        if codec not in ("pcm", "linear16"):
            raise ProviderError(f"{NAME}: codec {codec!r} is not supported: the gateway plays PCM (pcm/linear16)",
                                code=400, permanent=True)

    # what a request is sent as
    def _params(self, request: SynthRequest) -> dict[str, Any]:
        params: dict[str, Any] = {"model": request.speaker or self.option.speaker or DEFAULT_VOICE,
                                  "encoding": "linear16", "sample_rate": request.sample_rate}
        if self.transport == "rest":
            params["container"] = "none"
            if request.speed != 1.0:
                params["speed"] = request.speed
        params.update(self._extra)
        params.update({k: v for k, v in dict(request.options).items() if k != "transport"})
        return params

    def _url(self, request: SynthRequest) -> URL:
        base = join_url(self.option.endpoint or DEEPGRAM_ENDPOINT, "/v1/speak", websocket=self.transport == "websocket")
        return URL(base).with_query(_query(self._params(request)))

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {_key(self.option.secret_key)}"}

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    # TtsProvider
    async def prepare(self) -> None:
        """Open the socket the first request will use (WebSocket transport only)."""
        if self.transport != "websocket" or self._closed:
            return
        request = SynthRequest("", speaker=self.option.speaker, sample_rate=self.option.samplerate,
                               speed=self.option.speed, volume=self.option.volume)
        url = str(self._url(request))
        ws = await connect_ws(self._session(), url, provider=NAME, settings=self.settings,
                              headers=self._headers(), detail_header="dg-error", encoded=True)
        self._keep(url, ws)

    async def synthesize(self, request: SynthRequest) -> AsyncIterator[SynthChunk]:
        if self._closed:
            raise ProviderError(f"{NAME}: provider is closed")
        url = str(self._url(request))
        key = None
        if self.cache is not None and not request.streaming:
            key = cache_key(NAME, request, url=url)
        speak = self._speak_ws if self.transport == "websocket" else self._speak_rest
        chunks = self.cache.through(key, lambda: speak(url, request)) if self.cache is not None else speak(url, request)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield SynthChunk(gain(chunk.pcm, request.volume), chunk.sample_rate, chunk.words, chunk.cached)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._opening):
            task.cancel()
        await asyncio.gather(*self._opening, return_exceptions=True)
        idle, self._idle = self._idle, []
        for ws in idle:
            with contextlib.suppress(Exception):
                await ws.close()
        if self._http is not None:
            await self._http.close()

    # the WebSocket transport
    async def _checkout(self, url: str) -> aiohttp.ClientWebSocketResponse:
        while self._idle:
            ws = self._idle.pop()
            if self._idle_url == url and not ws.closed:
                return ws
            await ws.close()
        return await connect_ws(self._session(), url, provider=NAME, settings=self.settings,
                                headers=self._headers(), detail_header="dg-error", encoded=True)

    def _keep(self, url: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        if self._closed or len(self._idle) >= IDLE_SOCKETS or (self._idle and self._idle_url != url):
            asyncio.get_running_loop().create_task(ws.close())
            return
        self._idle_url = url
        self._idle.append(ws)

    def _reopen(self, url: str) -> None:
        """A socket was spent (cancelled mid-request): have the next one ready in the background."""
        if self._closed:
            return

        async def run() -> None:
            try:
                ws = await connect_ws(self._session(), url, provider=NAME, settings=self.settings,
                                      headers=self._headers(), detail_header="dg-error", encoded=True)
            except ProviderError:
                return          # the next request connects (and reports) itself
            self._keep(url, ws)

        task = asyncio.get_running_loop().create_task(run(), name="deepgram-tts-reopen")
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _speak_ws(self, url: str, request: SynthRequest) -> AsyncIterator[SynthChunk]:
        ws = await self._checkout(url)
        clean = False
        try:
            try:
                for i in range(0, len(request.text), SPEAK_LIMIT):
                    await ws.send_json({"type": "Speak", "text": request.text[i:i + SPEAK_LIMIT]})
                await ws.send_json({"type": "Flush"})
            except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                raise ProviderError(f"{NAME}: connection lost while sending text: {exc}", code=502) from None
            audio = SynthAudio(request.sample_rate)
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
                    kind = message.get("type")
                    if kind == "Flushed":
                        clean = True
                        return
                    if kind == "Warning":
                        raise ProviderError(f"{NAME}: {message.get('description') or message.get('code')}",
                                            code=400, permanent=True)
                    # Metadata, Cleared and newer messages carry nothing to play.
                else:
                    raise closed_error(NAME, ws, "synthesis")
        finally:
            if clean:
                self._keep(url, ws)
            else:
                await ws.close()
                self._reopen(url)

    # the REST transport
    async def _speak_rest(self, url: str, request: SynthRequest) -> AsyncIterator[SynthChunk]:
        target = url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        timeout = aiohttp.ClientTimeout(sock_connect=self.settings.connect_timeout,
                                        sock_read=self.settings.stall_timeout)
        try:
            async with self._session().post(URL(target, encoded=True), json={"text": request.text},
                                            headers=self._headers(), timeout=timeout) as response:
                if response.status != 200:
                    body = await response.text()
                    with contextlib.suppress(ValueError):
                        payload = json_message(NAME, body)
                        body = str(payload.get("err_msg") or payload.get("message") or body)
                    raise http_error(NAME, response.status, body)
                audio = SynthAudio(request.sample_rate)
                async for data in response.content.iter_any():
                    chunk = audio.audio(data)
                    if chunk is not None:
                        yield chunk
        except ProviderError:
            raise
        except asyncio.TimeoutError:
            raise ProviderError(f"{NAME}: no audio for {self.settings.stall_timeout:g} s", code=504) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderError(f"{NAME}: request failed: {exc}", code=502) from None
