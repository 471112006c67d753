"""A local DashScope (`/api-ws/v1/inference`): the duplex task protocol (run-task, task-started,
continue-task, result-generated, finish-task, task-finished, task-failed) for real-time recognition
(task asr / function recognition) and synthesis (task tts / function SpeechSynthesizer), with
`Authorization: Bearer <key>` checked at the handshake (HTTP 401 with DashScope's error body).

What it recognises is what pocketsphinx hears, what it says is espeak-ng on the text it was sent;
several tasks may run one after another on one socket, as DashScope allows.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import WSMsgType, web

from actors.services import AsrResult

from .support import Hearing, LocalServer, Speaking

ASR_MODELS = ("paraformer-realtime-v2", "paraformer-realtime-8k-v2", "paraformer-realtime-v1")
TTS_MODELS = ("cosyvoice-v2", "cosyvoice-v1")
TTS_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
SILENCE_TIMEOUT = 23.0
CHUNK_BYTES = 4096
_WORD = re.compile(r"\S+")


class DashScopeServer(LocalServer):
    def __init__(self, *, key: str = "sk-local", hearing: Hearing | None = None, speaking: Speaking | None = None,
                 silence_timeout: float = SILENCE_TIMEOUT) -> None:
        super().__init__()
        self.key = key
        self.hearing = hearing
        self.speaking = speaking
        self.silence_timeout = silence_timeout
        self.tasks: list[dict[str, Any]] = []       # every run-task received
        self.spoken: list[str] = []
        self.audio_ms: list[float] = []
        self.finishes = 0
        self.app.router.add_get("/api-ws/v1/inference", self.inference)

    async def inference(self, request: web.Request) -> web.StreamResponse:
        await self.admit()
        auth = request.headers.get("Authorization", "")
        status = self.faults.reject
        if status is None and not (auth.lower().startswith("bearer ") and auth[7:] == self.key):
            status = 401
        if status is not None:
            self.record(request, accepted=False)
            return web.json_response({"code": "InvalidApiKey", "message": "Invalid API-key provided.",
                                      "request_id": "local"}, status=status)
        self.record(request, accepted=True)
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        try:
            while True:
                msg = await ws.receive()
                if msg.type != WSMsgType.TEXT:
                    break
                run = json.loads(msg.data)
                header = run.get("header") or {}
                if header.get("action") != "run-task":
                    await self._fail(ws, header.get("task_id"), "InvalidParameter", "expected run-task")
                    break
                self.tasks.append(run)
                payload = run.get("payload") or {}
                task = (payload.get("task"), payload.get("function"))
                if task == ("asr", "recognition"):
                    if not await self._recognise(ws, request, run):
                        break
                elif task == ("tts", "SpeechSynthesizer"):
                    if not await self._synthesise(ws, request, run):
                        break
                else:
                    await self._fail(ws, header.get("task_id"), "InvalidParameter", f"unknown task {task}")
                    break
        finally:
            if not ws.closed:
                await ws.close()
        return ws

    async def _event(self, ws: web.WebSocketResponse, task_id: str | None, event: str,
                     payload: dict[str, Any] | None = None, **header: Any) -> None:
        await ws.send_str(json.dumps({"header": {"task_id": task_id, "event": event, "attributes": {}, **header},
                                      "payload": payload if payload is not None else {}}))

    async def _fail(self, ws: web.WebSocketResponse, task_id: str | None, code: str, message: str) -> None:
        await self._event(ws, task_id, "task-failed", error_code=code, error_message=message)

    # --- recognition --------------------------------------------------------------------------

    async def _recognise(self, ws: web.WebSocketResponse, request: web.Request, run: dict[str, Any]) -> bool:
        task_id = run["header"]["task_id"]
        payload = run["payload"]
        params = payload.get("parameters") or {}
        if payload.get("model") not in ASR_MODELS or params.get("format") != "pcm" \
                or not isinstance(params.get("sample_rate"), int):
            await self._fail(ws, task_id, "InvalidParameter", "bad model, format or sample_rate")
            return False
        index = self.accepted - 1
        rate = params["sample_rate"]
        state: dict[str, Any] = {"frames": 0, "stalled": False}
        sending = asyncio.Lock()

        async def send_event(event: str, out: dict[str, Any] | None = None) -> None:
            if state["stalled"] or ws.closed:
                return
            async with sending:
                await self._event(ws, task_id, event, out)

        async def on_result(result: AsrResult) -> None:
            sentence = {"begin_time": result.start_ms or 0, "end_time": result.end_ms if result.final else None,
                        "text": result.text, "sentence_end": result.final,
                        "words": [{"begin_time": result.start_ms or 0, "end_time": result.end_ms or 0,
                                   "text": w, "punctuation": ""} for w in result.text.split()]}
            await send_event("result-generated", {"output": {"sentence": sentence},
                                                  "usage": {"duration": 1} if result.final else None})

        await self._event(ws, task_id, "task-started")
        assert self.hearing is not None, "this server was built without a recogniser"
        stream = await self.hearing.open(rate, on_result)
        finished = False
        try:
            while True:
                try:
                    msg = await ws.receive(timeout=self.silence_timeout)
                except asyncio.TimeoutError:
                    await self._fail(ws, task_id, "CLIENT_ERROR",
                                     f"request timeout after {self.silence_timeout:g} seconds.")
                    return False
                if msg.type == WSMsgType.BINARY:
                    state["frames"] += 1
                    await stream.feed(msg.data)
                    drop_at = self.faults.drop_for(index)
                    if drop_at is not None and state["frames"] >= drop_at:
                        self.kill(request)
                        return False
                    if self.faults.stall_after is not None and state["frames"] >= self.faults.stall_after:
                        state["stalled"] = True
                    if self.faults.garbage_after is not None and state["frames"] == self.faults.garbage_after:
                        await ws.send_str("<html>502 Bad Gateway</html>")
                elif msg.type == WSMsgType.TEXT:
                    header = json.loads(msg.data).get("header") or {}
                    if header.get("action") == "finish-task" and header.get("task_id") == task_id:
                        self.finishes += 1
                        finished = True
                        await stream.finish()
                        await send_event("task-finished", {"output": {}, "usage": None})
                        return True
                    await self._fail(ws, task_id, "InvalidParameter", "unexpected message during the task")
                    return False
                else:
                    return False
        finally:
            self.audio_ms.append(stream.received_ms)
            if not finished:
                await stream.abandon()

    # --- synthesis ----------------------------------------------------------------------------

    async def _synthesise(self, ws: web.WebSocketResponse, request: web.Request, run: dict[str, Any]) -> bool:
        task_id = run["header"]["task_id"]
        payload = run["payload"]
        params = payload.get("parameters") or {}
        if (payload.get("model") not in TTS_MODELS or params.get("format") != "pcm"
                or params.get("sample_rate") not in TTS_RATES or not params.get("voice")
                or not 0 <= params.get("volume", 50) <= 100 or not 0.5 <= params.get("rate", 1.0) <= 2.0):
            await self._fail(ws, task_id, "InvalidParameter", "bad model, voice, format, rate or volume")
            return True
        await self._event(ws, task_id, "task-started")
        text: list[str] = []
        index: int | None = None
        sent = 0
        while True:
            msg = await ws.receive()
            if msg.type != WSMsgType.TEXT:
                return False
            message = json.loads(msg.data)
            header = message.get("header") or {}
            if header.get("task_id") != task_id:
                await self._fail(ws, task_id, "InvalidParameter", "task_id mismatch")
                return False
            action = header.get("action")
            if action == "continue-task":
                text.append(str(((message.get("payload") or {}).get("input") or {}).get("text", "")))
            elif action == "finish-task":
                break
        whole = "".join(text)
        rate = params["sample_rate"]
        assert self.speaking is not None, "this server was built without a voice"
        pcm, words = await self.speaking.speech(whole, rate, speed=float(params.get("rate", 1.0)),
                                                volume=max(1, min(10, round(params.get("volume", 50) / 10))))
        index = self.speaking_index()
        spans = [m.span() for m in _WORD.finditer(whole)]
        if params.get("word_timestamp_enabled") and words:
            await self._event(ws, task_id, "result-generated", {"output": {"sentence": {"index": 0, "words": [
                {"text": whole[spans[i][0]:spans[i][1]], "begin_index": spans[i][0], "end_index": spans[i][1],
                 "begin_time": sample * 1000 // rate,
                 "end_time": (words[n + 1][1] if n + 1 < len(words) else len(pcm)) * 1000 // rate}
                for n, (i, sample) in enumerate(words) if i < len(spans)]}}, "usage": None})
        data = pcm.astype("<i2").tobytes()
        for i in range(0, len(data), CHUNK_BYTES):
            if self.faults.stall_after is not None and sent >= self.faults.stall_after:
                await self.stall()
                return False
            if self.faults.garbage_after is not None and sent == self.faults.garbage_after:
                await ws.send_str("{not json")
            await ws.send_bytes(data[i:i + CHUNK_BYTES])
            sent += 1
            drop_at = self.faults.drop_for(index)
            if drop_at is not None and sent >= drop_at:
                self.kill(request)
                return False
        self.spoken.append(whole)
        await self._event(ws, task_id, "task-finished", {"output": {}, "usage": {"characters": len(whole)}})
        return True
