"""Per cloud provider: its local server and the API options that point a call at it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .deepgram_server import DeepgramServer
from .support import Hearing, LocalServer, Speaking


@dataclass(frozen=True)
class Kit:
    name: str
    server: Callable[[Hearing, Speaking], LocalServer]
    asr: Callable[[LocalServer], dict[str, Any]]      # `asr` option of an invite
    tts: Callable[[LocalServer], dict[str, Any]]      # `tts` option of an invite


DEEPGRAM = Kit(
    name="deepgram",
    server=lambda hearing, speaking: DeepgramServer(key="dg-e2e", hearing=hearing, speaking=speaking),
    asr=lambda srv: {"provider": "deepgram", "endpoint": srv.url, "secretKey": "dg-e2e", "language": "en-US"},
    tts=lambda srv: {"provider": "deepgram", "endpoint": srv.url, "secretKey": "dg-e2e", "samplerate": 16000},
)

KITS = [DEEPGRAM]
