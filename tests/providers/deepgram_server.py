"""A local Deepgram: `/v1/listen` (WebSocket) and `/v1/speak` (WebSocket and REST), speaking the
documented messages (Results with is_final/speech_final, UtteranceEnd, Metadata, KeepAlive,
CloseStream; Speak/Flush/Flushed/Clear/Cleared/Close) and checking `Authorization: Token <key>`.

What it recognises is what pocketsphinx hears in the audio it was sent; what it speaks is what
espeak-ng says for the text it was sent. A refused handshake answers as Deepgram does: the HTTP
status, a `dg-error` header and a JSON body with `err_code`/`err_msg`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from aiohttp import WSMsgType, web

from actors.services import AsrResult

from .support import Hearing, LocalServer, Speaking

LINEAR16_RATES = (8000, 16000, 24000, 32000, 48000)
CHUNK_BYTES = 4800
IDLE_CLOSE = 10.0          # NET-0001: no audio and no KeepAlive for this long


class DeepgramServer(LocalServer):
    def __init__(self, *, key: str = "dg-test-key", hearing: Hearing | None = None,
                 speaking: Speaking | None = None, idle_close: float = IDLE_CLOSE) -> None:
        super().__init__()
        self.key = key
        self.hearing = hearing
        self.speaking = speaking
        self.idle_close = idle_close
        self.keepalives = 0
        self.close_streams = 0
        self.spoken: list[str] = []            # texts synthesised to their end, in order
        self.listen_audio_ms: list[float] = []  # per listen connection
        self.app.router.add_get("/v1/listen", self.listen)
        self.app.router.add_get("/v1/speak", self.speak_ws)
        self.app.router.add_post("/v1/speak", self.speak_rest)

    # --- handshakes ---------------------------------------------------------------------------

    def _refusal(self, request: web.Request, required: dict[str, tuple[Any, ...] | None]) -> web.Response | None:
        status = self.faults.reject
        code, message = "INVALID_AUTH", "Invalid credentials."
        if status is None and request.headers.get("Authorization") != f"Token {self.key}":
            status = 401
        if status is None:
            for name, allowed in required.items():
                value = request.query.get(name)
                if value is None or (allowed is not None and value not in allowed):
                    status, code = 400, "INVALID_QUERY_PARAMETER"
                    message = f"Bad value for {name}: {value!r}"
                    break
        if status is None:
            return None
        self.record(request, accepted=False)
        body = json.dumps({"err_code": code, "err_msg": message, "request_id": str(uuid.uuid4())})
        return web.Response(status=status, text=body, content_type="application/json",
                            headers={"dg-error": message, "dg-request-id": str(uuid.uuid4())})

    # --- /v1/listen ---------------------------------------------------------------------------

    async def listen(self, request: web.Request) -> web.StreamResponse:
        await self.admit()
        refusal = self._refusal(request, {"encoding": ("linear16",), "sample_rate": None, "channels": ("1",)})
        if refusal is not None:
            return refusal
        index = self.accepted
        self.record(request, accepted=True)
        rate = int(request.query["sample_rate"])
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        request_id = str(uuid.uuid4())
        model = request.query.get("model", "nova-3")
        state: dict[str, Any] = {"frames": 0, "stalled": False}
        sending = asyncio.Lock()

        async def send(message: dict[str, Any]) -> None:
            if state["stalled"] or ws.closed:
                return
            async with sending:
                await ws.send_str(json.dumps(message))
            state["answered_ms"] = stream.received_ms

        def results(text: str, start: float, end: float, is_final: bool, speech_final: bool) -> dict[str, Any]:
            words = text.split()
            step = (end - start) / max(1, len(words))
            return {
                "type": "Results", "channel_index": [0, 1], "duration": round(end - start, 3),
                "start": round(start, 3), "is_final": is_final, "speech_final": speech_final,
                "from_finalize": False,
                "channel": {"alternatives": [{
                    "transcript": text, "confidence": 0.9,
                    "words": [{"word": w, "start": round(start + i * step, 3), "end": round(start + (i + 1) * step, 3),
                               "confidence": 0.9, "punctuated_word": w} for i, w in enumerate(words)]}]},
                "metadata": {"request_id": request_id, "model_info": {"name": model, "version": "local", "arch": model},
                             "model_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, model))},
            }

        async def on_result(result: AsrResult) -> None:
            start = (result.start_ms or 0) / 1000
            end = (result.end_ms or result.start_ms or 0) / 1000
            if result.final:
                await send(results(result.text, start, end, True, True))
                await send({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": round(end, 3)})
            else:
                await send(results(result.text, start, end, False, False))

        assert self.hearing is not None, "this server was built without a recogniser"
        stream = await self.hearing.open(rate, on_result)
        loop = asyncio.get_running_loop()
        last_input = loop.time()
        closing = False
        try:
            while True:
                try:
                    msg = await ws.receive(timeout=max(0.05, self.idle_close - (loop.time() - last_input)))
                except asyncio.TimeoutError:
                    await ws.close(code=1011, message=b"NET-0001")
                    break
                if msg.type == WSMsgType.BINARY:
                    if not msg.data:
                        continue
                    last_input = loop.time()
                    state["frames"] += 1
                    await stream.feed(msg.data)
                    if stream.received_ms - state.get("answered_ms", 0.0) >= 1000:
                        # Deepgram answers silence too: an empty final result for the audio so far.
                        at = state.get("answered_ms", 0.0) / 1000
                        await send(results("", at, stream.received_ms / 1000, True, False))
                    drop_at = self.faults.drop_for(index)
                    if drop_at is not None and state["frames"] >= drop_at:
                        self.kill(request)
                        break
                    if self.faults.stall_after is not None and state["frames"] >= self.faults.stall_after:
                        state["stalled"] = True
                    if self.faults.garbage_after is not None and state["frames"] == self.faults.garbage_after:
                        await ws.send_str("<html>502 Bad Gateway</html>")
                elif msg.type == WSMsgType.TEXT:
                    kind = json.loads(msg.data).get("type")
                    last_input = loop.time()
                    if kind == "KeepAlive":
                        self.keepalives += 1
                    elif kind == "CloseStream":
                        self.close_streams += 1
                        closing = True
                        await stream.finish()
                        await send({"type": "Metadata", "transaction_key": "deprecated", "request_id": request_id,
                                    "sha256": "0" * 64, "created": "2026-01-01T00:00:00.000Z",
                                    "duration": round(stream.received_ms / 1000, 3), "channels": 1})
                        await ws.close()
                        break
                else:
                    break
        finally:
            self.listen_audio_ms.append(stream.received_ms)
            if not closing:
                await stream.abandon()
        return ws

    # --- /v1/speak ----------------------------------------------------------------------------

    def _speak_refusal(self, request: web.Request) -> web.Response | None:
        return self._refusal(request, {"encoding": ("linear16",), "sample_rate": tuple(map(str, LINEAR16_RATES)),
                                       "model": None})

    async def speak_ws(self, request: web.Request) -> web.StreamResponse:
        await self.admit()
        refusal = self._speak_refusal(request)
        if refusal is not None:
            return refusal
        self.record(request, accepted=True)
        rate = int(request.query["sample_rate"])
        index: int | None = None
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "Metadata", "request_id": str(uuid.uuid4()),
                                      "model_name": request.query["model"], "model_version": "local",
                                      "model_uuid": str(uuid.uuid4())}))
        assert self.speaking is not None, "this server was built without a voice"
        text: list[str] = []
        sent = 0
        sequence = 0
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                await ws.close(code=1003, message=b"DATA-0000")
                break
            message = json.loads(msg.data)
            kind = message.get("type")
            if kind == "Speak":
                text.append(str(message.get("text", "")))
            elif kind == "Flush":
                whole, text = "".join(text), []
                if index is None:
                    index = self.speaking_index()
                async for data in self.speaking.chunks(whole, rate, CHUNK_BYTES):
                    if self.faults.stall_after is not None and sent >= self.faults.stall_after:
                        break
                    if self.faults.garbage_after is not None and sent == self.faults.garbage_after:
                        await ws.send_str("{not json")
                    await ws.send_bytes(data)
                    sent += 1
                    drop_at = self.faults.drop_for(index)
                    if drop_at is not None and sent >= drop_at:
                        self.kill(request)
                        return ws
                else:
                    self.spoken.append(whole)
                    await ws.send_str(json.dumps({"type": "Flushed", "sequence_id": sequence}))
                    sequence += 1
            elif kind == "Clear":
                text = []
                await ws.send_str(json.dumps({"type": "Cleared", "sequence_id": sequence}))
            elif kind == "Close":
                await ws.close()
                break
        return ws

    async def speak_rest(self, request: web.Request) -> web.StreamResponse:
        await self.admit()
        refusal = self._speak_refusal(request)
        if refusal is not None:
            return refusal
        self.record(request, accepted=True)
        index = self.speaking_index()
        try:
            body = await request.json()
            text = body["text"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"err_code": "INVALID_BODY", "err_msg": "Body must be {\"text\": ...}"},
                                     status=400)
        rate = int(request.query["sample_rate"])
        speed = float(request.query.get("speed", "1"))
        response = web.StreamResponse(headers={"Content-Type": "audio/l16", "dg-request-id": str(uuid.uuid4())})
        await response.prepare(request)
        assert self.speaking is not None, "this server was built without a voice"
        sent = 0
        async for data in self.speaking.chunks(text, rate, CHUNK_BYTES, speed=speed):
            if self.faults.stall_after is not None and sent >= self.faults.stall_after:
                await self.stall()
                return response
            await response.write(data)
            sent += 1
            drop_at = self.faults.drop_for(index)
            if drop_at is not None and sent >= drop_at:
                self.kill(request)
                return response
        self.spoken.append(text)
        await response.write_eof()
        return response
