"""What the two browser drivers share: a page reached by JSON commands over a WebSocket (Chrome
DevTools for Chromium, WebDriver BiDi for Firefox), each command answered by its `id`, and events
in between that carry what the page logged."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import aiohttp


class RemotePage:
    """`call` sends one command and waits for its answer; `until` polls `evaluate` with a
    deadline; `console` and `errors` hold what the page logged. A protocol says how an answer
    reports an error (`failure`), what its events mean (`on_event`) and how to evaluate."""

    Error: type[Exception] = RuntimeError

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.console: list[str] = []
        self.errors: list[str] = []
        self._reader = asyncio.ensure_future(self._read())

    def failure(self, answer: dict[str, Any]) -> str | None:
        raise NotImplementedError

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        raise NotImplementedError

    async def evaluate(self, expression: str, timeout: float = 10.0) -> Any:
        raise NotImplementedError

    def logged(self, line: str, error: bool) -> None:
        self.console.append(line)
        if error:
            self.errors.append(line)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                failure = self.failure(data)
                if failure is not None:
                    future.set_exception(self.Error(failure))
                else:
                    future.set_result(data.get("result", {}))
            elif "method" in data:
                self.on_event(data["method"], data.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self.Error("the browser's connection closed"))

    async def call(self, method: str, timeout: float = 10.0, **params: Any) -> Any:
        ident = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        return await asyncio.wait_for(future, timeout)

    async def until(self, expression: str, timeout: float, interval: float = 0.1) -> Any:
        """Poll `expression` until it is truthy; its value, or TimeoutError naming it."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"page: {expression!r} not true within {timeout:g} s")
            await asyncio.sleep(interval)

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
