"""The cache of synthesised speech: hits replay the audio and marks, bounded in bytes, LRU."""

from __future__ import annotations

import numpy as np

from actors.services import SynthChunk, SynthRequest
from transports.providers.tts_cache import TtsCache, cache_key


def source(samples: int, calls: list[int]):
    async def synthesize():
        calls.append(samples)
        yield SynthChunk(np.arange(samples // 2, dtype=np.int16), 16000, ((0, 0),))
        yield SynthChunk(np.arange(samples - samples // 2, dtype=np.int16), 16000, ((1, 5),))
    return synthesize


async def collect(cache: TtsCache, key, synthesize) -> list[SynthChunk]:
    return [chunk async for chunk in cache.through(key, synthesize)]


async def test_a_hit_replays_audio_and_marks_without_asking_the_provider():
    cache, calls = TtsCache(1 << 20), []
    first = await collect(cache, "k", source(1000, calls))
    again = await collect(cache, "k", source(1000, calls))
    assert calls == [1000]
    assert len(again) == 1 and again[0].cached and not any(c.cached for c in first)
    assert np.array_equal(again[0].pcm, np.concatenate([c.pcm for c in first]))
    assert again[0].words == ((0, 0), (1, 505))


async def test_the_byte_bound_drops_the_least_recently_used():
    cache, calls = TtsCache(5000), []          # 2,000 bytes per entry: two fit
    await collect(cache, "a", source(1000, calls))
    await collect(cache, "b", source(1000, calls))
    await collect(cache, "a", source(1000, calls))     # a is now the most recent
    await collect(cache, "c", source(1000, calls))     # b goes
    assert cache.bytes <= 5000 and len(cache) == 2
    await collect(cache, "a", source(1000, calls))
    await collect(cache, "b", source(1000, calls))
    assert calls == [1000, 1000, 1000, 1000]


async def test_an_unfinished_synthesis_is_not_stored():
    cache, calls = TtsCache(1 << 20), []
    chunks = cache.through("k", source(1000, calls))
    await chunks.__anext__()
    await chunks.aclose()
    assert len(cache) == 0


def test_the_key_covers_text_voice_and_options():
    base = SynthRequest("hello", speaker="v1")
    assert cache_key("p", base) == cache_key("p", SynthRequest("hello", speaker="v1"))
    for other in (SynthRequest("hello!", speaker="v1"), SynthRequest("hello", speaker="v2"),
                  SynthRequest("hello", speaker="v1", speed=1.2), SynthRequest("hello", speaker="v1", volume=6),
                  SynthRequest("hello", speaker="v1", options={"pitch": 2})):
        assert cache_key("p", other) != cache_key("p", base)
    assert cache_key("p", base, url="x") != cache_key("p", base, url="y")
