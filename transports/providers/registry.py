"""Every speech provider the gateway offers, by the names `asr.provider` and `tts.provider` take.

The embedded engines (espeak-ng, pocketsphinx, Whisper) run on the EngineHost; the cloud clients get the
`[providers]` limits and the `[supervision]` restart budget, and share one cache of synthesised
speech per process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.engines import EngineHost

from .aliyun import AliyunAsr, AliyunTts
from .deepgram import DeepgramAsr, DeepgramTts
from .espeak import espeak_factories
from .pocketsphinx import pocketsphinx_factories
from .tencent import TencentAsr, TencentTts
from .tts_cache import TtsCache
from .voiceapi import VoiceApiAsr, VoiceApiTts
from .whisper import WhisperSettings, whisper_factories
from .wire import ProviderSettings

__all__ = ["Providers", "provider_factories", "provider_settings", "whisper_settings"]

Factory = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Providers:
    tts: dict[str, Factory]
    asr: dict[str, Factory]
    cache: TtsCache


def provider_settings(config: Any) -> ProviderSettings:
    """The cloud clients' limits from a gateway `Config`."""
    p, sup = config.providers, config.supervision
    return ProviderSettings(connect_timeout=p.connect_timeout, stall_timeout=p.stall_timeout,
                            keepalive_interval=p.keepalive_interval, heartbeat=p.heartbeat,
                            close_timeout=p.close_timeout, max_message_bytes=p.max_message_bytes,
                            resume_attempts=sup.provider_restarts, backoff_initial=sup.backoff_initial,
                            backoff_max=sup.backoff_max)


def whisper_settings(config: Any) -> WhisperSettings:
    """The embedded Whisper recogniser's settings from a gateway `Config`."""
    w = config.whisper
    return WhisperSettings(model_dir=w.model_dir, cpu_threads=w.cpu_threads, num_workers=w.num_workers,
                           compute_type=w.compute_type, beam_size=w.beam_size, max_pending=w.max_pending,
                           max_utterance_seconds=w.max_utterance_seconds, vad_mode=w.vad_mode)


def provider_factories(config: Any, engines: EngineHost) -> Providers:
    settings = provider_settings(config)
    cache = TtsCache(config.providers.tts_cache_bytes)
    tts: dict[str, Factory] = dict(espeak_factories(engines))
    asr: dict[str, Factory] = dict(pocketsphinx_factories(engines))
    asr.update(whisper_factories(engines, whisper_settings(config)))
    tts["deepgram"] = lambda option: DeepgramTts(option, settings, cache)
    asr["deepgram"] = lambda option: DeepgramAsr(settings)
    tts["tencent"] = lambda option: TencentTts(option, settings, cache)
    asr["tencent"] = lambda option: TencentAsr(settings)
    tts["aliyun"] = lambda option: AliyunTts(option, settings, cache)
    asr["aliyun"] = lambda option: AliyunAsr(settings)
    tts["voiceapi"] = lambda option: VoiceApiTts(option, settings, cache)
    asr["voiceapi"] = lambda option: VoiceApiAsr(settings)
    return Providers(tts=tts, asr=asr, cache=cache)
