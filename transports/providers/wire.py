"""What every cloud provider client shares: settings, credentials, WebSocket connections and the
mapping of what goes wrong on them to `ProviderError`.

The rule for `permanent`: an answer another attempt will not change (bad credentials, a parameter
the provider refuses, a missing endpoint) is permanent and reported once; anything that may heal
(a refused or dropped connection, 5xx, 429, a timeout, a stall) is transient and restarts the
provider with backoff. Codes follow HTTP: the handshake's own status when there is one, 502 for a
connection lost or garbled mid-stream, 503 for one that cannot be made, 504 for a timeout or stall.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np
from yarl import URL

from actors.services import ProviderError, SynthChunk
from protocol.pcm16 import Pcm16Assembler

__all__ = [
    "PERMANENT_STATUSES",
    "ProviderSettings",
    "SynthAudio",
    "closed_error",
    "gain",
    "connect_ws",
    "credential",
    "http_error",
    "join_url",
    "json_message",
]

# Handshake and HTTP answers another attempt will not change.
PERMANENT_STATUSES = frozenset({400, 401, 402, 403, 404, 405, 410, 413, 415, 422, 426})


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Limits every cloud client applies (config table `[providers]`)."""

    connect_timeout: float = 5.0      # TCP + TLS + WebSocket handshake (and the provider's own start)
    stall_timeout: float = 5.0        # a provider that owes an answer and sends nothing this long
    keepalive_interval: float = 4.0   # an idle recognition stream is kept open this often
    heartbeat: float = 15.0           # WebSocket pings: a peer that stops answering them is dropped
    close_timeout: float = 2.0        # the last results after the end of a recognition stream
    max_message_bytes: int = 4 * 1024 * 1024
    resume_attempts: int = 3          # resumptions of one synthesis cut by a lost connection
    backoff_initial: float = 0.2
    backoff_max: float = 5.0

    @property
    def reconnect(self) -> tuple[int, float, float]:
        return (self.resume_attempts, self.backoff_initial, self.backoff_max)


def credential(value: str | None, env: str) -> str | None:
    """An option field, else the environment variable; empty strings count as absent."""
    if value:
        return value
    return os.environ.get(env) or None


def join_url(endpoint: str, path: str, *, websocket: bool) -> str:
    """`endpoint` (scheme://host[:port][/prefix]) with `path` appended unless it already ends the
    endpoint's path; http(s) becomes ws(s) for a WebSocket and the other way round."""
    parts = urlsplit(endpoint.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss", "http", "https") or not parts.netloc:
        raise ProviderError(f"endpoint {endpoint!r} is not a ws(s):// or http(s):// URL", code=400, permanent=True)
    secure = scheme in ("wss", "https")
    scheme = ("wss" if secure else "ws") if websocket else ("https" if secure else "http")
    base = parts.path.rstrip("/")
    if path and not base.endswith(path.rstrip("/")):
        base += path
    return f"{scheme}://{parts.netloc}{base or '/'}"


def http_error(provider: str, status: int, detail: str) -> ProviderError:
    detail = " ".join(detail.split())[:300]
    return ProviderError(f"{provider}: HTTP {status}{': ' + detail if detail else ''}", code=status,
                         permanent=status in PERMANENT_STATUSES)


async def connect_ws(session: aiohttp.ClientSession, url: str | URL, *, provider: str, settings: ProviderSettings,
                     headers: dict[str, str] | None = None, detail_header: str | None = None,
                     encoded: bool = False) -> aiohttp.ClientWebSocketResponse:
    """Open a WebSocket; every failure becomes a ProviderError. `detail_header` names a response
    header that explains a refused handshake (Deepgram's `dg-error`); `encoded` sends a URL whose
    query is already percent-encoded (and signed) exactly as given."""
    target = URL(url, encoded=True) if encoded and isinstance(url, str) else url
    try:
        return await asyncio.wait_for(
            session.ws_connect(target, headers=headers, heartbeat=settings.heartbeat, autoping=True,
                               max_msg_size=settings.max_message_bytes,
                               timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=settings.close_timeout)),
            settings.connect_timeout)
    except aiohttp.WSServerHandshakeError as exc:
        detail = exc.message or ""
        if detail_header and exc.headers is not None and exc.headers.get(detail_header):
            detail = exc.headers[detail_header]
        raise http_error(provider, exc.status or 502, detail) from None
    except asyncio.TimeoutError:
        raise ProviderError(f"{provider}: no connection within {settings.connect_timeout:g} s", code=504) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ProviderError(f"{provider}: cannot connect: {exc}", code=503) from None


def closed_error(provider: str, ws: aiohttp.ClientWebSocketResponse, what: str) -> ProviderError:
    """The stream ended before its end: a drop (transient) unless the close code says the provider
    refused what it was sent (1003 unsupported data, 1007 bad payload, 1008 policy: permanent)."""
    code = ws.close_code
    reason = ""
    exc = ws.exception()
    if exc is not None:
        reason = str(exc)
    permanent = code in (1003, 1007, 1008)
    return ProviderError(f"{provider}: connection closed during {what} (close code {code}{', ' + reason if reason else ''})",
                         code=400 if permanent else 502, permanent=permanent)


def json_message(provider: str, data: str) -> dict[str, Any]:
    """A text frame that must be a JSON object; anything else is garbage from the provider (502)."""
    try:
        value = json.loads(data)
    except ValueError:
        raise ProviderError(f"{provider}: sent a text frame that is not JSON: {data[:80]!r}", code=502) from None
    if not isinstance(value, dict):
        raise ProviderError(f"{provider}: sent JSON that is not an object: {data[:80]!r}", code=502)
    return value


def gain(pcm: np.ndarray, volume: float) -> np.ndarray:
    """The API's 1..10 volume as a gain on int16 audio (5 = unchanged)."""
    volume = max(0.0, min(10.0, float(volume)))
    if volume == 5 or not len(pcm):
        return pcm
    scaled = pcm.astype(np.float32) * (volume / 5)
    return np.clip(np.rint(scaled), -32768, 32767).astype(np.int16)


class SynthAudio:
    """One synthesis's audio messages as `SynthChunk`s: whole samples (a message may split one),
    with the words the provider placed since the previous chunk, positioned within the chunk
    they start in."""

    __slots__ = ("rate", "_samples", "_marks", "_produced")

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._samples = Pcm16Assembler()
        self._marks: list[tuple[int, int]] = []     # (word index, sample from the synthesis start)
        self._produced = 0

    def mark(self, index: int, sample: int) -> None:
        self._marks.append((index, sample))

    def audio(self, data: bytes) -> SynthChunk | None:
        pcm = self._samples.push(data)
        if not len(pcm):
            return None
        chunk = SynthChunk(pcm.copy(), self.rate, self._placed())
        self._produced += len(pcm)
        return chunk

    def finish(self) -> SynthChunk | None:
        """Words placed after the last audio, as an empty chunk; None when there are none."""
        return SynthChunk(np.zeros(0, np.int16), self.rate, self._placed()) if self._marks else None

    def _placed(self) -> tuple[tuple[int, int], ...]:
        marks = tuple((index, sample - self._produced) for index, sample in self._marks)
        self._marks.clear()
        return marks
