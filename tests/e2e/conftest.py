"""Fixtures of the SIP end-to-end tests: the application's webhook, a gateway that announces its
incoming calls to it, and the caller's media socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.conftest import connect
from tests.support.sip_tools import RtpPeer, Webhook
from transports.gateway import Gateway, start_gateway


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook()
    async with hook.serve():
        yield hook


@pytest.fixture
async def sip_gateway(gateway_config, webhook) -> AsyncIterator[Callable[..., Any]]:
    """A gateway whose incoming calls go to the test's webhook (``handler_url=None``: none)."""
    started: list[Gateway] = []

    async def make(*, handler_url: str | None = "default", **overrides: Any) -> Gateway:
        url = webhook.url if handler_url == "default" else handler_url
        handler = {"url": url} if url else {}
        gw = await start_gateway(gateway_config(handler=handler, **overrides))
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.stop()


@pytest.fixture
async def peer() -> AsyncIterator[RtpPeer]:
    media = await RtpPeer.open()
    yield media
    media.close()


async def incoming_call(http, gw: Gateway, webhook: Webhook):
    body = await webhook.next(10)
    client = await connect(http, gw, "/call/sip", id=body["dialogId"])
    await client.wait_event("incoming")
    return client, body


