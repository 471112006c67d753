"""Driving a provider client the way the call does, for the client tests."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import jiwer
import numpy as np

from actors.services import AsrResult, ProviderError, SynthChunk, SynthRequest
from protocol.codecs import Resampler
from tests.support.poll import until


async def recognise(session: Any, pcm: np.ndarray, *, speed: float = 4.0, tail_s: float = 1.0,
                    close: bool = True) -> tuple[list[AsrResult], ProviderError | None]:
    """Feed `pcm` (16 kHz) in 20 ms frames at `speed` x real time plus `tail_s` of quiet, then close;
    returns every result and the error the stream ended with, if any."""
    results: list[AsrResult] = []
    failure: list[ProviderError] = []

    async def collect() -> None:
        try:
            async for result in session.results():
                results.append(result)
        except ProviderError as exc:
            failure.append(exc)

    reader = asyncio.create_task(collect())
    audio = np.concatenate([pcm, np.zeros(int(tail_s * 16000), np.int16)])
    loop = asyncio.get_running_loop()
    begin = loop.time()
    try:
        for i in range(0, len(audio) - 319, 320):
            await session.send(audio[i:i + 320])
            await asyncio.sleep(max(0.0, begin + (i // 320 + 1) * 0.02 / speed - loop.time()))
    except ProviderError as exc:
        failure.append(exc)
    if close:
        await session.close()
    await asyncio.wait_for(reader, 10)
    return results, (failure[0] if failure else None)


async def failures_while_idle(session: Any, seconds: float,
                              before: Callable[[], Any] | None = None) -> list[ProviderError]:
    """Read `session`'s results for `seconds` of silence from the caller (after `before`, if given),
    then close it: the errors its stream ended with meanwhile. Waiting out the provider's idle
    limit is the point: nothing observable happens when the keep-alive works."""
    failures: list[ProviderError] = []

    async def read() -> None:
        try:
            async for _ in session.results():
                pass
        except ProviderError as exc:
            failures.append(exc)

    reader = asyncio.create_task(read())
    if before is not None:
        await before()
    await asyncio.sleep(seconds)
    seen = list(failures)
    await session.close()
    await asyncio.wait_for(reader, 10)
    return seen


def finals(results: list[AsrResult]) -> list[AsrResult]:
    return [r for r in results if r.final]


def wer(truth: str, heard: str) -> float:
    return jiwer.wer(truth, heard) if heard.strip() else 1.0


async def speak(provider: Any, request: SynthRequest) -> tuple[np.ndarray, int, list[SynthChunk], float]:
    """Everything `provider` says for `request`: audio, its rate, the chunks, seconds to first audio."""
    chunks: list[SynthChunk] = []
    started = time.monotonic()
    first = 0.0
    async for chunk in provider.synthesize(request):
        if not chunks:
            first = time.monotonic() - started
        chunks.append(chunk)
    rate = chunks[0].sample_rate if chunks else request.sample_rate
    pcm = np.concatenate([c.pcm for c in chunks]) if chunks else np.zeros(0, np.int16)
    return pcm, rate, chunks, first


def envelope(pcm: np.ndarray, rate: int, frame_ms: int = 20) -> np.ndarray:
    size = rate * frame_ms // 1000
    usable = len(pcm) - len(pcm) % size
    frames = pcm[:usable].astype(np.float64).reshape(-1, size)
    return np.sqrt((frames ** 2).mean(axis=1))


def without_gaps(pcm: np.ndarray, min_run: int = 80) -> np.ndarray:
    """`pcm` with every run of at least `min_run` exactly-zero samples taken out. A playback that
    waits for its producer (a provider reconnecting) sends digital silence meanwhile; the words
    around the wait are what a listener compares, not when they came."""
    zero = np.concatenate(([False], pcm == 0, [False]))
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    keep = np.ones(len(pcm), dtype=bool)
    for start, stop in zip(edges[::2], edges[1::2]):
        if stop - start >= min_run:
            keep[start:stop] = False
    return pcm[keep]


def similar_speech(a: np.ndarray, b: np.ndarray, rate: int, *, length_tolerance: float = 0.03,
                   min_correlation: float = 0.9) -> bool:
    """The same utterance: espeak-ng renders a text with a few samples of random variation each
    time, so two renderings are compared by length and by the correlation of their loudness
    envelopes (20 ms frames), not sample by sample. Measured: 0.93 to 1.0 between renderings of
    one sentence, -0.3 to -0.1 between different sentences."""
    if not len(a) or not len(b) or abs(len(a) - len(b)) > length_tolerance * max(len(a), len(b)):
        return False
    ea, eb = envelope(a, rate), envelope(b, rate)
    n = min(len(ea), len(eb))
    return float(np.corrcoef(ea[:n], eb[:n])[0, 1]) >= min_correlation


def to_rate(pcm: np.ndarray, source: int, target: int) -> np.ndarray:
    return Resampler(source, target).process(pcm) if source != target else pcm


eventually = functools.partial(until, interval=0.01)
