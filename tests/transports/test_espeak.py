"""The espeak-ng provider, on the real library, through a real EngineHost."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import aclosing

import numpy as np
import pykka
import pytest

from actors.engines import EngineActor, EngineHost
from actors.services import ProviderError, SynthChunk, SynthRequest
from protocol.api import SynthesisOption
from tests.support.poll import until
from transports.providers.espeak import (
    ENGINE_NAME,
    ESPEAK_PROVIDER_NAMES,
    EspeakProvider,
    espeak_factories,
    espeak_rate,
    espeak_volume,
    make_espeak_factory,
    register_espeak,
)

RATE = 22050
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
LONG_TEXT = " ".join([SENTENCE] * 60)      # about 3.5 minutes of speech


@pytest.fixture(autouse=True)
def no_engine_left_behind():
    yield
    assert [t for t in threading.enumerate() if t.name.startswith("engine-")] == []
    assert pykka.ActorRegistry.get_by_class(EngineActor) == []


@pytest.fixture
async def host():
    engines = EngineHost()
    try:
        yield engines
    finally:
        assert await engines.stop()


@pytest.fixture
async def espeak(host) -> EspeakProvider:
    provider = EspeakProvider(host)
    await host.start(ENGINE_NAME)      # figures below are for a warm engine
    return provider


class Speech:
    def __init__(self, chunks: list[SynthChunk]) -> None:
        self.chunks = chunks
        self.pcm = np.concatenate([c.pcm for c in chunks]) if chunks else np.zeros(0, np.int16)
        self.words: list[tuple[int, int]] = []     # (word index, sample from the start)
        start = 0
        for chunk in chunks:
            assert chunk.sample_rate == RATE and chunk.pcm.dtype == np.int16 and chunk.pcm.ndim == 1
            for index, offset in chunk.words:
                assert 0 <= offset <= max(0, len(chunk.pcm) - 1)
                self.words.append((index, start + offset))
            start += len(chunk.pcm)

    @property
    def seconds(self) -> float:
        return len(self.pcm) / RATE

    @property
    def rms(self) -> float:
        return float(np.sqrt(np.mean(self.pcm.astype(np.float64) ** 2)))


async def speak(provider: EspeakProvider, text: str, **kwargs) -> Speech:
    return Speech([chunk async for chunk in provider.synthesize(SynthRequest(text, **kwargs))])


def test_speed_and_volume_map_onto_espeak_scales():
    assert [espeak_rate(s) for s in (1.0, 2.0, 0.5, 10.0, 0.1, 0.0, -1.0, float("nan"))] == \
        [175, 350, 88, 450, 80, 175, 175, 175]
    assert [espeak_volume(v) for v in (5, 1, 10, 0, 99, -3)] == [100, 20, 200, 0, 200, 0]
    assert [espeak_volume(v) for v in (5.5, 7.25, 1.01)] == [110, 145, 20]


async def test_hello_world_is_speech_and_a_faster_speed_makes_it_shorter(espeak):
    normal = await speak(espeak, "hello world")
    fast = await speak(espeak, "hello world", speed=2.0)
    print(f"\nhello world: {normal.seconds:.3f} s at speed 1.0, {fast.seconds:.3f} s at 2.0; "
          f"rms {normal.rms:.0f} / {fast.rms:.0f}")
    assert 0.5 < normal.seconds < 1.5
    assert fast.seconds < 0.7 * normal.seconds
    assert normal.rms > 1000 and fast.rms > 1000
    # speech, not a tone: plenty of distinct sample values and quiet gaps inside
    assert len(np.unique(normal.pcm)) > 1000


async def test_volume_scales_the_amplitude(espeak):
    quiet, normal, loud = [await speak(espeak, "hello world", volume=v) for v in (2, 5, 10)]
    assert quiet.rms < normal.rms < loud.rms
    assert 1.6 < loud.rms / normal.rms < 2.4
    assert 0.3 < quiet.rms / normal.rms < 0.5
    # A fraction of the 1..10 scale is a step of its own, not truncated to the integer below.
    between = await speak(espeak, "hello world", volume=5.5)
    assert 1.05 < between.rms / normal.rms < 1.15, between.rms / normal.rms


async def test_word_marks_one_per_written_word_in_increasing_order(espeak):
    text = "the quick brown fox jumps over the lazy dog"
    speech = await speak(espeak, text)
    assert [index for index, _ in speech.words] == list(range(len(text.split())))
    samples = [sample for _, sample in speech.words]
    assert samples[0] < RATE // 10
    assert all(a < b for a, b in zip(samples, samples[1:]))
    assert samples[-1] < len(speech.pcm)
    # A number spoken as several words is still one written word; accents count as characters.
    expanded = await speak(espeak, "Call 123 now, café naïve friends.")
    assert [index for index, _ in expanded.words] == [0, 1, 2, 3, 4, 5]


async def test_an_unknown_voice_is_a_permanent_error_naming_it(espeak):
    with pytest.raises(ProviderError, match="no-such-voice") as info:
        await speak(espeak, "hello", speaker="no-such-voice")
    assert info.value.permanent
    assert (await speak(espeak, "hello world")).seconds > 0.5
    assert (await speak(espeak, "hello world", speaker="en-us+f3")).rms > 1000


async def test_empty_text_yields_nothing(espeak):
    assert (await speak(espeak, "")).chunks == []
    assert (await speak(espeak, "   \n")).chunks == []


async def test_first_audio_arrives_long_before_a_long_text_is_done(host):
    started = time.perf_counter()
    provider = EspeakProvider(host)
    cold = await speak(provider, "hello")
    cold_first = time.perf_counter() - started
    assert cold.seconds > 0.2

    first = None
    samples = 0
    started = time.perf_counter()
    async for chunk in provider.synthesize(SynthRequest(LONG_TEXT)):
        if first is None:
            first = time.perf_counter() - started
        samples += len(chunk.pcm)
    total = time.perf_counter() - started
    audio = samples / RATE
    print(f"\nespeak-ng: first audio {first * 1e3:.2f} ms warm ({cold_first * 1e3:.1f} ms for a cold "
          f"engine, init included); {audio:.1f} s of speech in {total * 1e3:.0f} ms: "
          f"real-time factor {total / audio:.4f}")
    assert audio > 120
    assert first < total / 10
    assert first < 0.05


async def test_the_loop_stays_responsive_during_a_long_synthesis(espeak):
    async def consume() -> int:
        return sum([len(chunk.pcm) async for chunk in espeak.synthesize(SynthRequest(LONG_TEXT))])

    job = asyncio.create_task(consume())
    period = 0.005
    lateness: list[float] = []
    next_tick = time.monotonic() + period
    for _ in range(2000):
        if job.done():
            break
        await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        lateness.append(time.monotonic() - next_tick)
        next_tick += period
    assert await job > 120 * RATE
    print(f"\n5 ms ticker during synthesis: {len(lateness)} ticks, max lateness {max(lateness) * 1e3:.2f} ms")
    assert len(lateness) >= 10
    # A loop blocked by the synthesis would be late by the synthesis' whole length (hundreds of ms);
    # the scheduling noise of a busy machine stays well below this bound.
    assert max(lateness) < 0.1


async def test_cancelling_mid_text_stops_promptly_and_the_next_synthesis_works(host, espeak):
    very_long = " ".join([SENTENCE] * 300)      # about 1 s of engine time if left to finish
    async with aclosing(espeak.synthesize(SynthRequest(very_long))) as chunks:
        got = 0
        async for chunk in chunks:
            got += 1
            if got == 5:
                break
    left = time.perf_counter()
    while host.stats(ENGINE_NAME).cancelled < 1:
        assert time.perf_counter() - left < 1.0
        await asyncio.sleep(0.001)
    stopped = time.perf_counter() - left

    started = time.perf_counter()
    next_speech = await speak(espeak, "hello world")
    following = time.perf_counter() - started
    print(f"\nengine stopped {stopped * 1e3:.2f} ms after the consumer left; "
          f"the next 'hello world' took {following * 1e3:.2f} ms")
    assert stopped < 0.1
    assert following < 0.1
    assert 0.5 < next_speech.seconds < 1.5

    # the same through task cancellation
    chunks = []

    async def consume() -> None:
        async for chunk in espeak.synthesize(SynthRequest(very_long)):
            chunks.append(chunk)
            await asyncio.sleep(0)

    task = asyncio.create_task(consume())
    await until(lambda: chunks, what="the synthesis streams")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    left = time.perf_counter()
    while host.stats(ENGINE_NAME).cancelled < 2:
        assert time.perf_counter() - left < 1.0
        await asyncio.sleep(0.001)
    assert (await speak(espeak, "hello world")).seconds > 0.5


async def test_two_concurrent_syntheses_are_serialised_and_both_complete():
    texts = {"a": " ".join(["Hello world, this is the first caller."] * 5),
             "b": " ".join(["Good morning, a second caller speaking here."] * 5)}
    in_flight = 2
    async with EngineHost(max_in_flight=in_flight) as host:
        espeak = EspeakProvider(host)
        solo = {tag: await speak(espeak, text) for tag, text in texts.items()}
        arrivals: list[str] = []

        async def run(tag: str) -> Speech:
            chunks = []
            async for chunk in espeak.synthesize(SynthRequest(texts[tag])):
                arrivals.append(tag)
                chunks.append(chunk)
                await asyncio.sleep(0)
            return Speech(chunks)

        together = dict(zip("ab", await asyncio.gather(run("a"), run("b"))))
    # One engine thread: the second synthesis starts only once the first has emitted all its
    # chunks, so at most `in_flight` of the first can still be unread when the second begins.
    first = arrivals[0]
    second = "b" if first == "a" else "a"
    before_second = arrivals[:arrivals.index(second)]
    assert before_second.count(first) >= len(together[first].chunks) - in_flight
    for tag in "ab":
        assert abs(together[tag].seconds - solo[tag].seconds) < 0.02 * solo[tag].seconds
        assert together[tag].rms > 1000
        assert [i for i, _ in together[tag].words] == list(range(len(texts[tag].split())))


async def test_factories_cover_every_alias_and_take_the_default_voice_from_the_option(host):
    factories = espeak_factories(host)
    assert set(factories) == set(ESPEAK_PROVIDER_NAMES) == {"espeak", "espeak-ng", "local"}
    assert len({id(f) for f in factories.values()}) == 1
    plain = factories["local"](None)
    assert plain.name == "espeak" and plain.voice == "en-us"
    voiced = make_espeak_factory(host)(SynthesisOption(provider="espeak-ng", speaker="en-us+f3"))
    assert voiced.voice == "en-us+f3"
    assert (await speak(voiced, "hello world")).rms > 1000
    await voiced.close()
    with pytest.raises(ProviderError, match="closed"):
        await speak(voiced, "hello")


async def test_the_library_has_one_owner_per_process_and_a_stopped_host_frees_it(host, espeak):
    assert (await speak(espeak, "hello")).seconds > 0.2
    other = EngineHost()
    try:
        with pytest.raises(ProviderError, match="already owned") as info:
            await speak(EspeakProvider(other), "hello")
        assert info.value.permanent
    finally:
        assert await other.stop()

    assert await host.stop()
    assert [t for t in threading.enumerate() if t.name.startswith("engine-")] == []
    async with EngineHost() as again:
        assert (await speak(EspeakProvider(again), "hello world")).seconds > 0.5


async def test_missing_voice_data_is_a_permanent_error_not_a_dead_process(host, tmp_path):
    register_espeak(host, name="espeak-broken", data_path=str(tmp_path / "nowhere"))
    with pytest.raises(ProviderError, match="no espeak-ng data") as info:
        await speak(EspeakProvider(host, engine="espeak-broken"), "hello")
    assert info.value.permanent
    assert (await speak(EspeakProvider(host), "hello world")).seconds > 0.5
