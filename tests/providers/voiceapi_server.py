"""A local VoiceAPI (the sherpa-onnx voiceapi server): `/asr?samplerate=` takes binary int16 PCM and
answers `{"text", "finished", "idx"}`; `/tts?samplerate=&chunk_size=&sid=&speed=&split=&interrupt=`
takes text and answers binary PCM in `chunk_size` pieces, then `{"progress", "elapsed", "duration",
"size"}`. With `interrupt=true` (VoiceAPI's default) a new text replaces the one being spoken.

VoiceAPI itself has no authentication; `token`, when set, makes this server behave as a proxy in
front of it that wants `Authorization: Bearer <token>` (HTTP 401 otherwise).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import WSMsgType, web

from actors.services import AsrResult

from .support import Hearing, LocalServer, Speaking


class VoiceApiServer(LocalServer):
    def __init__(self, *, token: str | None = None, hearing: Hearing | None = None,
                 speaking: Speaking | None = None) -> None:
        super().__init__()
        self.token = token
        self.hearing = hearing
        self.speaking = speaking
        self.spoken: list[str] = []
        self.audio_ms: list[float] = []
        self.texts: list[str] = []
        self.app.router.add_get("/asr", self.asr)
        self.app.router.add_get("/tts", self.tts)

    def _refusal(self, request: web.Request) -> web.Response | None:
        status = self.faults.reject
        if status is None and self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            status = 401
        if status is None:
            return None
        self.record(request, accepted=False)
        return web.json_response({"detail": "Unauthorized"}, status=status)

    async def asr(self, request: web.Request) -> web.StreamResponse:
        await self.admit()
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        index = self.accepted
        self.record(request, accepted=True)
        rate = int(request.query.get("samplerate", "16000"))
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        state: dict[str, Any] = {"frames": 0, "stalled": False, "idx": 0}
        sending = asyncio.Lock()

        async def on_result(result: AsrResult) -> None:
            if state["stalled"] or ws.closed:
                return
            async with sending:
                await ws.send_str(json.dumps({"text": result.text, "finished": result.final, "idx": state["idx"]}))
            if result.final:
                state["idx"] += 1

        assert self.hearing is not None, "this server was built without a recogniser"
        stream = await self.hearing.open(rate, on_result)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY:
                    break
                state["frames"] += 1
                await stream.feed(msg.data)
                drop_at = self.faults.drop_for(index)
                if drop_at is not None and state["frames"] >= drop_at:
                    self.kill(request)
                    break
                if self.faults.stall_after is not None and state["frames"] >= self.faults.stall_after:
                    state["stalled"] = True
                if self.faults.garbage_after is not None and state["frames"] == self.faults.garbage_after:
                    await ws.send_str("Internal Server Error")
        finally:
            self.audio_ms.append(stream.received_ms)
            await stream.abandon()
        return ws

    async def tts(self, request: web.Request) -> web.StreamResponse:
        await self.admit()
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        self.record(request, accepted=True)
        q = request.query
        rate = int(q.get("samplerate", "16000"))
        chunk_size = int(q.get("chunk_size", "1024"))
        speed = float(q.get("speed", "1.0"))
        interrupt = q.get("interrupt", "true").lower() == "true"
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        speaking: asyncio.Task[None] | None = None
        pending: list[asyncio.Task[None]] = []

        async def speak(text: str) -> None:
            started = time.monotonic()
            assert self.speaking is not None, "this server was built without a voice"
            pcm = await self.speaking.pcm(text, rate, speed=speed)
            data = pcm.astype("<i2").tobytes()
            index = self.speaking_index()
            sent = 0
            for i in range(0, len(data), chunk_size):
                if self.faults.stall_after is not None and sent >= self.faults.stall_after:
                    await self.stall()
                    return
                if self.faults.garbage_after is not None and sent == self.faults.garbage_after:
                    await ws.send_str("Internal Server Error")
                await ws.send_bytes(data[i:i + chunk_size])
                sent += 1
                drop_at = self.faults.drop_for(index)
                if drop_at is not None and sent >= drop_at:
                    self.kill(request)
                    return
            self.spoken.append(text)
            await ws.send_str(json.dumps({"progress": 1.0, "elapsed": f"{int((time.monotonic() - started) * 1000)}ms",
                                          "duration": f"{len(pcm) / rate:.2f}s", "size": len(pcm)}))

        async for msg in ws:
            if msg.type != WSMsgType.TEXT or not msg.data:
                break
            self.texts.append(msg.data)
            if interrupt and speaking is not None and not speaking.done():
                speaking.cancel()
            previous = speaking if not interrupt else None

            async def after(text: str, before: asyncio.Task[None] | None) -> None:
                if before is not None:
                    await asyncio.gather(before, return_exceptions=True)
                await speak(text)

            speaking = asyncio.get_running_loop().create_task(after(msg.data, previous))
            pending.append(speaking)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return ws
