"""A local Tencent Cloud speech service: real-time recognition (`/asr/v2/<appid>`) and streaming
synthesis (`/stream_wsv2`), each checking the HMAC-SHA1 signature of its query the way Tencent
does (the sign string built on Tencent's own host and path, values as sent, sorted by name) and
answering in its documented messages (code/message/voice_id/message_id/result/final;
ready/heartbeat/subtitles/final).

Recognition is pocketsphinx on the audio received, synthesis espeak-ng on the text received.
Refusals are in-band, as Tencent's are: the upgrade succeeds, then one JSON message with the
error code (4002 / 10003 for a bad signature) and the socket closes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from typing import Any

from aiohttp import WSMsgType, web

from actors.services import AsrResult

from .support import Hearing, LocalServer, Speaking

ASR_HOST = "asr.cloud.tencent.com"
TTS_HOST = "tts.cloud.tencent.com"
_SPEED_STEPS = ((-2.0, 0.6), (-1.0, 0.8), (0.0, 1.0), (1.0, 1.2), (2.0, 1.5), (6.0, 2.5))
CHUNK_BYTES = 3200
_WORD = re.compile(r"\S+")


def _signature(sign_string: str, key: str) -> str:
    return base64.b64encode(hmac.new(key.encode(), sign_string.encode(), hashlib.sha1).digest()).decode()


def _factor(speed: float) -> float:
    for (s0, f0), (s1, f1) in zip(_SPEED_STEPS, _SPEED_STEPS[1:]):
        if speed <= s1:
            return f0 + (max(speed, s0) - s0) * (f1 - f0) / (s1 - s0)
    return _SPEED_STEPS[-1][1]


class TencentServer(LocalServer):
    def __init__(self, *, appid: str = "1250000000", secret_id: str = "AKIDlocaltest", secret_key: str = "local-key",
                 hearing: Hearing | None = None, speaking: Speaking | None = None, idle_close: float = 6.0) -> None:
        super().__init__()
        self.appid = appid
        self.secret_id = secret_id
        self.secret_key = secret_key
        self.hearing = hearing
        self.speaking = speaking
        self.idle_close = idle_close
        self.ends = 0
        self.spoken: list[str] = []
        self.audio_ms: list[float] = []
        self.voice_ids: list[str] = []
        self.sessions: list[dict[str, str]] = []     # the synthesis parameters of each session
        self.app.router.add_get("/asr/v2/{appid}", self.recognise)
        self.app.router.add_get("/stream_wsv2", self.synthesise)

    # --- signature ----------------------------------------------------------------------------

    def _check(self, request: web.Request, prefix: str, signature_name: str, id_name: str,
               stamp_names: tuple[str, str]) -> str | None:
        """None if the request is signed right and in time, else why not."""
        params = {k: v for k, v in request.query.items() if k != signature_name}
        if self.faults.reject is not None:
            return "rejected"
        if params.get(id_name) != self.secret_id:
            return f"unknown {id_name}"
        try:
            stamp, expired = int(params[stamp_names[0]]), int(params[stamp_names[1]])
        except (KeyError, ValueError):
            return "timestamp/expired missing"
        if not stamp - 300 <= time.time() <= expired:
            return "signature expired"
        sign_string = prefix + "&".join(f"{k}={params[k]}" for k in sorted(params))
        if request.query.get(signature_name) != _signature(sign_string, self.secret_key):
            return "signature mismatch"
        return None

    # --- recognition --------------------------------------------------------------------------

    async def recognise(self, request: web.Request) -> web.StreamResponse:
        await self.admit()
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        appid = request.match_info["appid"]
        voice_id = request.query.get("voice_id", "")
        why = self._check(request, f"{ASR_HOST}/asr/v2/{appid}?", "signature", "secretid", ("timestamp", "expired"))
        if why is None and appid != self.appid:
            why = "appid mismatch"
        if why is not None:
            self.record(request, accepted=False)
            await ws.send_str(json.dumps({"code": 4002, "message": f"鉴权失败 ({why})", "voice_id": voice_id}))
            await ws.close()
            return ws
        model = request.query.get("engine_model_type", "")
        if not re.fullmatch(r"(8k|16k)_\w+", model) or request.query.get("voice_format") != "1" or not voice_id:
            self.record(request, accepted=False)
            await ws.send_str(json.dumps({"code": 4001, "message": "参数不合法", "voice_id": voice_id}))
            await ws.close()
            return ws
        index = self.accepted
        self.record(request, accepted=True)
        self.voice_ids.append(voice_id)
        await ws.send_str(json.dumps({"code": 0, "message": "success", "voice_id": voice_id}))
        rate = 8000 if model.startswith("8k") else 16000
        state: dict[str, Any] = {"frames": 0, "stalled": False, "slice": 0, "open": False}
        sending = asyncio.Lock()

        async def send(message: dict[str, Any]) -> None:
            if state["stalled"] or ws.closed:
                return
            async with sending:
                await ws.send_str(json.dumps({"code": 0, "message": "success", "voice_id": voice_id,
                                              "message_id": f"{voice_id}_{uuid.uuid4().hex[:8]}", **message}))

        async def on_result(result: AsrResult) -> None:
            if not state["open"]:
                state["open"] = True
                await send({"result": {"slice_type": 0, "index": state["slice"], "start_time": result.start_ms or 0,
                                       "end_time": result.start_ms or 0, "voice_text_str": "", "word_size": 0,
                                       "word_list": []}, "final": 0})
            await send({"result": {"slice_type": 2 if result.final else 1, "index": state["slice"],
                                   "start_time": result.start_ms or 0, "end_time": result.end_ms or 0,
                                   "voice_text_str": result.text, "word_size": 0, "word_list": []}, "final": 0})
            if result.final:
                state["open"] = False
                state["slice"] += 1

        assert self.hearing is not None, "this server was built without a recogniser"
        stream = await self.hearing.open(rate, on_result)
        loop = asyncio.get_running_loop()
        last_audio = loop.time()
        ended = False
        try:
            while True:
                try:
                    msg = await ws.receive(timeout=max(0.05, self.idle_close - (loop.time() - last_audio)))
                except asyncio.TimeoutError:
                    await send({"code": 4008, "message": "客户端数据上传超时"})
                    await ws.close()
                    break
                if msg.type == WSMsgType.BINARY:
                    last_audio = loop.time()
                    state["frames"] += 1
                    await stream.feed(msg.data)
                    drop_at = self.faults.drop_for(index)
                    if drop_at is not None and state["frames"] >= drop_at:
                        self.kill(request)
                        break
                    if self.faults.stall_after is not None and state["frames"] >= self.faults.stall_after:
                        state["stalled"] = True
                    if self.faults.garbage_after is not None and state["frames"] == self.faults.garbage_after:
                        await ws.send_str("<html>502 Bad Gateway</html>")
                elif msg.type == WSMsgType.TEXT:
                    if json.loads(msg.data).get("type") == "end":
                        self.ends += 1
                        ended = True
                        await stream.finish()
                        await send({"final": 1})
                        await ws.close()
                        break
                    await send({"code": 4010, "message": "未知的文本消息"})
                    await ws.close()
                    break
                else:
                    break
        finally:
            self.audio_ms.append(stream.received_ms)
            if not ended:
                await stream.abandon()
        return ws

    # --- synthesis ----------------------------------------------------------------------------

    async def synthesise(self, request: web.Request) -> web.StreamResponse:
        await self.admit()
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        session_id = request.query.get("SessionId", "")
        request_id = str(uuid.uuid4())

        async def send(message: dict[str, Any]) -> None:
            await ws.send_str(json.dumps({"code": 0, "message": "success", "session_id": session_id,
                                          "request_id": request_id, "message_id": uuid.uuid4().hex, **message}))

        why = self._check(request, f"GET{TTS_HOST}/stream_wsv2?", "Signature", "SecretId", ("Timestamp", "Expired"))
        if why is None and request.query.get("AppId") != self.appid:
            why = "AppId mismatch"
        if why is not None:
            self.record(request, accepted=False)
            await send({"code": 10003, "message": f"鉴权失败 ({why})"})
            await ws.close()
            return ws
        q = request.query
        if (q.get("Action") != "TextToStreamAudioWSv2" or q.get("Codec") != "pcm" or not session_id
                or q.get("SampleRate") not in ("8000", "16000", "24000") or not q.get("VoiceType", "").isdigit()):
            self.record(request, accepted=False)
            await send({"code": 10001, "message": "参数错误"})
            await ws.close()
            return ws
        self.record(request, accepted=True)
        self.sessions.append(dict(q))
        await send({"ready": 1})
        text: list[str] = []
        sent = 0
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            message = json.loads(msg.data)
            action = message.get("action")
            if message.get("session_id") != session_id:
                await send({"code": 10001, "message": "session_id 不一致"})
                break
            if action == "ACTION_SYNTHESIS":
                text.append(str(message.get("data", "")))
            elif action == "ACTION_COMPLETE":
                whole = "".join(text)
                assert self.speaking is not None, "this server was built without a voice"
                rate = int(q["SampleRate"])
                pcm, words = await self.speaking.speech(whole, rate, speed=_factor(float(q.get("Speed", "0"))),
                                                        volume=max(1, min(10, round(float(q.get("Volume", "0")) / 2 + 5))))
                data = pcm.astype("<i2").tobytes()
                index = self.speaking_index()
                spans = [m.span() for m in _WORD.finditer(whole)]
                if q.get("EnableSubtitle") == "true" and words:
                    await send({"final": 0, "result": {"subtitles": [
                        {"Text": whole[spans[i][0]:spans[i][1]], "BeginTime": sample * 1000 // rate,
                         "EndTime": (words[n + 1][1] if n + 1 < len(words) else len(pcm)) * 1000 // rate,
                         "BeginIndex": spans[i][0], "EndIndex": spans[i][1], "Phoneme": ""}
                        for n, (i, sample) in enumerate(words) if i < len(spans)]}})
                for i in range(0, len(data), CHUNK_BYTES):
                    if self.faults.stall_after is not None and sent >= self.faults.stall_after:
                        await self.stall()
                        return ws
                    if self.faults.garbage_after is not None and sent == self.faults.garbage_after:
                        await ws.send_str("{not json")
                    await ws.send_bytes(data[i:i + CHUNK_BYTES])
                    sent += 1
                    drop_at = self.faults.drop_for(index)
                    if drop_at is not None and sent >= drop_at:
                        self.kill(request)
                        return ws
                self.spoken.append(whole)
                await send({"final": 1})
                await ws.close()
                break
        return ws
