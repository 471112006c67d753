"""The webhook that announces an incoming SIP call to the application (`[handler] url`).

The body is the original active-call's: ``dialogId`` (the id the application connects with,
``/call/sip?id=<dialogId>``), ``createdAt`` (RFC 3339), ``caller`` and ``callee`` (the From and
To URIs), ``event: "invite"``, ``headers`` (every header of the INVITE as ``"Name: value"``) and
``offer`` (the SDP offer, "" without one). Any 2xx is success; another status, a connection
error or no answer within ``handler.timeout`` is a ``WebhookFailed`` naming what happened.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

import aiohttp

from protocol.sip.message import Request

from .config import HandlerConfig

__all__ = ["WebhookFailed", "invite_payload", "post_webhook"]


class WebhookFailed(Exception):
    """The webhook was not delivered (no handler answered with 2xx)."""


def invite_payload(dialog_id: str, request: Request, *, created_at: float | None = None) -> dict[str, Any]:
    when = datetime.now(timezone.utc) if created_at is None else datetime.fromtimestamp(created_at, timezone.utc)
    return {
        "dialogId": dialog_id,
        "createdAt": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "caller": str(request.from_.uri),
        "callee": str(request.to.uri),
        "event": "invite",
        "headers": [f"{name}: {value}" for name, value in request.headers],
        "offer": request.body.decode("utf-8", "replace"),
    }


async def post_webhook(session: aiohttp.ClientSession, handler: HandlerConfig, payload: dict[str, Any]) -> int:
    """Send ``payload`` as JSON to the handler; the status on success, WebhookFailed otherwise."""
    if not handler.url:
        raise WebhookFailed("no [handler] url is configured")
    try:
        async with session.request(handler.method, handler.url, json=payload,
                                   timeout=aiohttp.ClientTimeout(total=handler.timeout)) as response:
            await response.read()
            if not 200 <= response.status < 300:
                raise WebhookFailed(f"{handler.method} {handler.url} answered {response.status}")
            return response.status
    except asyncio.TimeoutError:
        raise WebhookFailed(f"{handler.method} {handler.url}: no answer within {handler.timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise WebhookFailed(f"{handler.method} {handler.url}: {exc!r}") from None
