"""Real local peers for tests: an aiohttp server on an ephemeral loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def local_server(path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> AsyncIterator[int]:
    """Serve `handler` at `path` on 127.0.0.1; yields the port, stops the server on exit."""
    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the bound ephemeral port
    finally:
        await runner.cleanup()
