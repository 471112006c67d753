"""A recognition stream (`AsrSession`) over one provider WebSocket: the part every cloud client
shares. A subclass speaks its provider's messages (`_on_text`, `_end`, `_keepalive`).

Audio: the call feeds 16 kHz int16 frames; they are resampled to the stream's rate if it differs
and sent in binary messages of `packet_bytes` (0: each frame as it comes).

Liveness, three ways:
- more than `stall_timeout` seconds of audio sent and not answered while the provider owes an
  answer (inside an utterance it has begun; for a provider that answers all audio, always): a
  stall, 504, transient;
- WebSocket pings every `heartbeat` seconds find a peer that is gone without closing;
- a stream the call has sent nothing on for `keepalive_interval` gets the provider's keep-alive
  (its own message, or a little silence), since providers close idle streams (Deepgram after 10 s,
  Tencent after 6 s, DashScope after 23 s).

A connection that ends before `close()` asked for its end is a drop (502, transient); a text frame
that is not the provider's JSON is garbage (502, transient). Either way the failure is raised from
`results()` and from the next `send()`, and the socket is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import structlog

from actors.services import AsrResult, ProviderError
from protocol.codecs import Resampler

from .recognition_results import END, read_results
from .wire import ProviderSettings, closed_error

__all__ = ["WsRecognition"]

INPUT_RATE = 16000


class WsRecognition:
    provider = "provider"

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, http: aiohttp.ClientSession, settings: ProviderSettings,
                 *, rate: int = INPUT_RATE, packet_bytes: int = 0) -> None:
        self._ws = ws
        self._http = http
        self.settings = settings
        self.rate = rate
        self._resampler = Resampler(INPUT_RATE, rate) if rate != INPUT_RATE else None
        self._packet = max(0, packet_bytes)
        self._pending = bytearray()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._error: ProviderError | None = None
        self._ending = False
        self.finished = False            # the provider said the stream is over (after our end)
        self.utterance_open = False      # the provider has begun an utterance and owes its end
        self.log = structlog.get_logger("asr").bind(provider=self.provider)
        loop = asyncio.get_running_loop()
        self._last_sent = loop.time()
        self._unanswered = 0                     # bytes of audio sent since the provider's last message
        self._reader = loop.create_task(self._read(), name=f"{self.provider}-asr-read")
        self._watcher = loop.create_task(self._watch(), name=f"{self.provider}-asr-watch")

    # --- AsrSession ----------------------------------------------------------------------------

    async def send(self, pcm: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        if self._ending:
            raise ProviderError(f"{self.provider}: recognition stream is closed")
        samples = np.asarray(pcm, dtype=np.int16).reshape(-1)
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        self._pending += samples.astype("<i2", copy=False).tobytes()
        size = self._packet or len(self._pending)
        while len(self._pending) >= size and self._pending:
            packet = bytes(self._pending[:size])
            del self._pending[:size]
            await self._send_bytes(packet)

    def results(self) -> AsyncIterator[AsrResult]:
        return read_results(self._queue)

    async def close(self) -> None:
        """Ask the provider for its last results, wait for them up to `close_timeout`, release."""
        if not self._ending:
            self._ending = True
            try:
                if self._error is None and not self._ws.closed:
                    if self._pending:
                        packet, self._pending = bytes(self._pending), bytearray()
                        await self._send_bytes(packet)
                    await self._end()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(self._reader), self.settings.close_timeout)
            except ProviderError:
                pass        # the stream is already broken: nothing more will come
            finally:
                await self._release()
        else:
            await asyncio.shield(self._reader)

    # --- for subclasses ---------------------------------------------------------------------------

    def _on_text(self, data: str) -> None:
        raise NotImplementedError

    def _on_binary(self, data: bytes) -> None:
        self.fail(ProviderError(f"{self.provider}: unexpected binary message ({len(data)} bytes)", code=502))

    async def _end(self) -> None:
        """Tell the provider the audio is over (it answers with its last results)."""

    def _owes_answer(self) -> bool:
        """Whether audio sent and not answered for `stall_timeout` means a stall: by default only
        inside an utterance (providers are quiet in silence); one that answers all audio says always."""
        return self.utterance_open

    async def _keepalive(self) -> None:
        """Keep an idle stream open: by default 100 ms of silence."""
        await self._send_bytes(bytes(self.rate // 10 * 2))

    def emit(self, result: AsrResult) -> None:
        self._queue.put_nowait(result)

    def fail(self, error: ProviderError) -> None:
        if self._error is None:
            self._error = error
            self.log.info("recognition stream failed", error=str(error), code=error.code)
            self._queue.put_nowait(error)
            asyncio.get_running_loop().create_task(self._ws.close())

    async def send_json(self, message: dict[str, Any]) -> None:
        try:
            await self._ws.send_json(message)
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise self._lost(exc) from None
        self._last_sent = asyncio.get_running_loop().time()

    # --- internals -------------------------------------------------------------------------------

    async def _send_bytes(self, data: bytes) -> None:
        try:
            await self._ws.send_bytes(data)
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise self._lost(exc) from None
        self._last_sent = asyncio.get_running_loop().time()
        self._unanswered += len(data)

    def _lost(self, exc: BaseException) -> ProviderError:
        error = self._error or ProviderError(f"{self.provider}: connection lost while sending: {exc}", code=502)
        self.fail(error)
        return error

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for msg in self._ws:
                self._unanswered = 0
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._on_text(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self._on_binary(msg.data)
                if self.finished or self._error is not None:
                    break
            if not self.finished and self._error is None and not self._ending:
                self.fail(closed_error(self.provider, self._ws, "recognition"))
        except ProviderError as exc:
            self.fail(exc)
        except Exception as exc:  # noqa: BLE001 - a reader bug ends this stream, not the call
            self.fail(ProviderError(f"{self.provider}: {exc!r}", code=502))
        finally:
            self._queue.put_nowait(END)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        tick = max(0.05, min(self.settings.stall_timeout, self.settings.keepalive_interval) / 4)
        while self._error is None and not self._ending:
            await asyncio.sleep(tick)
            now = loop.time()
            unanswered_s = self._unanswered / (2 * self.rate)
            if unanswered_s > self.settings.stall_timeout and self._owes_answer():
                self.fail(ProviderError(f"{self.provider}: no answer to {unanswered_s:.1f} s of audio", code=504))
                return
            if now - self._last_sent > self.settings.keepalive_interval:
                try:
                    await self._keepalive()
                except ProviderError:
                    return

    async def _release(self) -> None:
        self._watcher.cancel()
        if not self._reader.done():
            self._reader.cancel()
        await asyncio.gather(self._watcher, self._reader, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._ws.close()
        await self._http.close()
