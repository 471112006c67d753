"""An ASR provider that fails mid-utterance is restarted, and the pre-roll replay means the words
of that utterance are still recognised: the real pocketsphinx engine behind a wrapper that breaks
the stream once (fault injection), fed through the Asr actor as a call feeds it."""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from actors import AudioPipe, Supervisor
from actors.asr import Asr, AsrFailed, AsrText, PrerollRing
from actors.engines import EngineHost
from actors.services import ProviderError
from actors.supervisor import Backoff, ChildSpec, Restart
from protocol.api import TranscriptionOption
from transports.providers.pocketsphinx import make_pocketsphinx_factory

ASR = Path(__file__).resolve().parents[1] / "fixtures" / "asr"
DIGITS = TranscriptionOption(extra={"grammar": (
    "#JSGF V1.0;\ngrammar digits;\n"
    "public <digits> = ( zero | oh | one | two | three | four | five | six | seven | eight | nine )+ ;\n")})


class BreaksOnce:
    """A session whose results stream fails after `after` frames, once per shared state."""

    def __init__(self, inner, state: dict) -> None:
        self.inner, self.state, self.sent = inner, state, 0

    async def send(self, pcm):
        self.sent += 1
        if self.state["break_at"] is not None and self.sent == self.state["break_at"]:
            self.state["break_at"] = None
            self.state["broken"].set()
        await self.inner.send(pcm)

    async def results(self):
        results = self.inner.results().__aiter__()
        broken = asyncio.ensure_future(self.state["broken"].wait()) if self.state["break_at"] else None
        while True:
            nxt = asyncio.ensure_future(results.__anext__())
            waits = {nxt} | ({broken} if broken else set())
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if broken in done:
                nxt.cancel()
                raise ProviderError("recognition stream reset by provider")
            try:
                yield nxt.result()
            except StopAsyncIteration:
                return

    async def close(self):
        await self.inner.close()


class Flaky:
    name = "flaky"

    def __init__(self, inner, state) -> None:
        self.inner, self.state = inner, state

    async def open(self, option):
        return BreaksOnce(await self.inner.open(option), self.state)


class Reports:
    def __init__(self) -> None:
        self.items: list = []

    def tell(self, message) -> None:
        self.items.append(message)


@pytest.fixture
async def engines():
    host = EngineHost()
    yield host
    await host.stop()


async def test_a_stream_failing_mid_utterance_restarts_and_the_words_are_not_lost(engines):
    with wave.open(str(ASR / "digits_a.wav")) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    truth = json.loads((ASR / "truth.json").read_text())["files"]["digits_a.wav"]["segments"][0]
    factory = make_pocketsphinx_factory(engines)
    state = {"break_at": 60, "broken": asyncio.Event()}   # 1.2 s in: mid-utterance (0.4-1.95 s)
    audio: AudioPipe[np.ndarray] = AudioPipe(100)
    ring = PrerollRing(2.0)
    reports: list = []

    def start(parent):
        return Asr.start(Flaky(factory(DIGITS), state), DIGITS, audio, ring, report=reports.append,
                         parent=parent)

    sup = Supervisor.start([ChildSpec("asr", start, restart=Restart.TRANSIENT, escalate=False,
                                      backoff=Backoff(initial=0.05, factor=2.0, maximum=0.2))])
    try:
        loop = asyncio.get_running_loop()
        begin = loop.time()
        frames = [pcm[i:i + 320] for i in range(0, len(pcm) - 319, 320)] + [np.zeros(320, np.int16)] * 50
        for i, frame in enumerate(frames):
            audio.push(frame)
            await asyncio.sleep(max(0.0, begin + (i + 1) * 0.02 - loop.time()))
        for _ in range(100):
            if any(isinstance(r, AsrText) and r.final for r in reports):
                break
            await asyncio.sleep(0.05)
    finally:
        await sup.stop()
    failures = [r for r in reports if isinstance(r, AsrFailed)]
    assert len(failures) == 1 and "reset" in failures[0].error and not failures[0].permanent
    finals = [r for r in reports if isinstance(r, AsrText) and r.final]
    assert len(finals) == 1
    # The new stream was fed the ring first: the utterance's first words are in the final text.
    assert finals[0].text.split()[:3] == truth["text"].split()[:3], finals[0].text
