"""Synthesised speech kept for reuse: the same text, voice and options are not paid for twice.

One cache per gateway process, shared by every call and provider, bounded in bytes (least
recently used out first). Only syntheses that ran to their end are stored, and only of whole
(non-streaming) `tts` texts: a piece of a streaming answer rarely comes again. A hit replays the
stored audio and word marks as one chunk flagged `cached`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from actors.services import SynthChunk, SynthRequest

__all__ = ["TtsCache", "cache_key"]


def cache_key(provider: str, request: SynthRequest, **settings: Any) -> str:
    """What makes two syntheses the same: provider, its settings (endpoint, model...), text, voice,
    speed, volume, rate and provider options."""
    table = {"provider": provider, "settings": settings, "text": request.text, "speaker": request.speaker,
             "speed": request.speed, "volume": request.volume, "rate": request.sample_rate,
             "options": dict(request.options)}
    return hashlib.sha256(json.dumps(table, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _Entry:
    pcm: np.ndarray
    sample_rate: int
    words: tuple[tuple[int, int], ...]


class TtsCache:
    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max(0, max_bytes)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def through(self, key: str | None, synthesize: Callable[[], AsyncIterator[SynthChunk]]
                      ) -> AsyncIterator[SynthChunk]:
        """The stored speech for `key`, else `synthesize()` passed through and stored at its end.
        `key` None: not cacheable, passed through."""
        entry = self._entries.get(key) if key is not None else None
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            yield SynthChunk(entry.pcm, entry.sample_rate, entry.words, cached=True)
            return
        if key is not None:
            self.misses += 1
        parts: list[np.ndarray] = []
        words: list[tuple[int, int]] = []
        rate = 0
        size = 0
        chunks = synthesize()
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if key is not None and self.max_bytes:
                    if rate and chunk.sample_rate != rate:
                        key = None          # a provider that changes rate mid-way: not worth storing
                    else:
                        rate = chunk.sample_rate
                        words.extend((index, size + offset) for index, offset in chunk.words)
                        parts.append(chunk.pcm)
                        size += len(chunk.pcm)
                yield chunk
        if key is not None and self.max_bytes and rate and size * 2 <= self.max_bytes:
            pcm = np.concatenate(parts) if len(parts) != 1 else parts[0]
            self._store(key, _Entry(pcm, rate, tuple(words)))

    def _store(self, key: str, entry: _Entry) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.pcm.nbytes
        self._entries[key] = entry
        self.bytes += entry.pcm.nbytes
        while self.bytes > self.max_bytes and self._entries:
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= dropped.pcm.nbytes

    def stats(self) -> Mapping[str, int]:
        return {"entries": len(self._entries), "bytes": self.bytes, "hits": self.hits, "misses": self.misses}
