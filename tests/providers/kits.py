"""Per cloud provider: its local server and the API options that point a call at it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .dashscope_server import DashScopeServer
from .deepgram_server import DeepgramServer
from .support import Hearing, LocalServer, Speaking
from .tencent_server import TencentServer
from .voiceapi_server import VoiceApiServer


@dataclass(frozen=True)
class Kit:
    name: str
    server: Callable[[Hearing, Speaking], LocalServer]
    asr: Callable[[LocalServer], dict[str, Any]]      # `asr` option of an invite
    tts: Callable[[LocalServer], dict[str, Any]]      # `tts` option of an invite
    asr_packet_ms: int = 20                           # audio per message the client sends


DEEPGRAM = Kit(
    name="deepgram",
    server=lambda hearing, speaking: DeepgramServer(key="dg-e2e", hearing=hearing, speaking=speaking),
    asr=lambda srv: {"provider": "deepgram", "endpoint": srv.url, "secretKey": "dg-e2e", "language": "en-US"},
    tts=lambda srv: {"provider": "deepgram", "endpoint": srv.url, "secretKey": "dg-e2e", "samplerate": 16000},
)

TENCENT_CREDENTIALS = {"appId": "1250000009", "secretId": "AKIDe2e", "secretKey": "tencent-e2e"}

TENCENT = Kit(
    name="tencent",
    server=lambda hearing, speaking: TencentServer(appid="1250000009", secret_id="AKIDe2e", secret_key="tencent-e2e",
                                                   hearing=hearing, speaking=speaking),
    asr=lambda srv: {"provider": "tencent", "endpoint": srv.url, "language": "en", **TENCENT_CREDENTIALS},
    tts=lambda srv: {"provider": "tencent", "endpoint": srv.url, "samplerate": 16000, **TENCENT_CREDENTIALS},
    asr_packet_ms=40,
)

ALIYUN = Kit(
    name="aliyun",
    server=lambda hearing, speaking: DashScopeServer(key="sk-e2e", hearing=hearing, speaking=speaking),
    asr=lambda srv: {"provider": "aliyun", "endpoint": srv.url, "secretKey": "sk-e2e", "language": "en"},
    tts=lambda srv: {"provider": "aliyun", "endpoint": srv.url, "secretKey": "sk-e2e", "samplerate": 16000},
    asr_packet_ms=100,
)

# VoiceAPI has no credentials of its own: the e2e server stands behind a proxy that wants a token,
# which is what a 401 can come from.
VOICEAPI = Kit(
    name="voiceapi",
    server=lambda hearing, speaking: VoiceApiServer(token="va-e2e", hearing=hearing, speaking=speaking),
    asr=lambda srv: {"provider": "voiceapi", "endpoint": srv.url, "secretKey": "va-e2e"},
    tts=lambda srv: {"provider": "voiceapi", "endpoint": srv.url, "secretKey": "va-e2e", "samplerate": 16000},
)

KITS = [DEEPGRAM, TENCENT, ALIYUN, VOICEAPI]
