"""What the local provider servers share: an aiohttp server on 127.0.0.1, fault injection, and the
real engines that make their answers real (pocketsphinx hears the audio actually received, espeak-ng
speaks the text actually sent).

Faults, per connection in the order connections carry audio (for recognition: as they are
accepted; for synthesis: as they begin to speak, so that a connection opened ahead of need and
never used does not count):
- `drop_after[k]`: the k-th such connection has its TCP connection cut (no close frame) after
  that many frames (audio messages received for recognition, audio messages sent for synthesis);
- `stall_after`: after that many frames the server goes on reading but answers nothing;
- `garbage_after`: after that many frames the server sends a text frame that is not JSON;
- `reject`: every handshake is answered with this HTTP status (401: bad credentials).
"""

from __future__ import annotations

import asyncio
import json
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from actors.engines import EngineHost
from actors.services import AsrResult, SynthRequest
from protocol.api import TranscriptionOption
from protocol.codecs import Resampler
from transports.providers.espeak import EspeakProvider
from transports.providers.pocketsphinx import PocketsphinxProvider

ASR_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "asr"
DIGITS_GRAMMAR = ("#JSGF V1.0;\ngrammar digits;\n"
                  "public <digits> = ( zero | oh | one | two | three | four | five | six | seven | eight | nine )+ ;\n")


@dataclass
class Faults:
    drop_after: Sequence[int] = ()
    stall_after: int | None = None
    garbage_after: int | None = None
    reject: int | None = None

    def drop_for(self, index: int) -> int | None:
        return self.drop_after[index] if index < len(self.drop_after) else None


@dataclass
class Handshake:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    accepted: bool
    raw_query: str = ""

    def one(self, key: str) -> str | None:
        values = self.query.get(key)
        return values[0] if values else None


class LocalServer:
    """An aiohttp application on an ephemeral loopback port, with the bookkeeping tests read."""

    def __init__(self) -> None:
        self.faults = Faults()
        self.handshakes: list[Handshake] = []
        self.drops = 0
        self.app = web.Application()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.released = asyncio.Event()     # set at stop: a stalled handler lets go
        self.handshake_delay = 0.0          # seconds added before answering a handshake (a far provider)
        self.speakers = 0                   # synthesis connections that have begun to send audio

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def accepted(self) -> int:
        return sum(1 for h in self.handshakes if h.accepted)

    async def start(self) -> LocalServer:
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the bound ephemeral port
        return self

    async def stop(self) -> None:
        self.released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def stall(self) -> None:
        """Answer nothing more, until the server stops."""
        await self.released.wait()

    async def __aenter__(self) -> LocalServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def speaking_index(self) -> int:
        """Number this synthesis connection among those that have begun to speak (for faults)."""
        self.speakers += 1
        return self.speakers - 1

    async def admit(self) -> None:
        if self.handshake_delay:
            await asyncio.sleep(self.handshake_delay)

    def record(self, request: web.Request, accepted: bool) -> Handshake:
        query: dict[str, list[str]] = {}
        for key, value in request.query.items():
            query.setdefault(key, []).append(value)
        shake = Handshake(request.path, query, dict(request.headers), accepted, request.query_string)
        self.handshakes.append(shake)
        return shake

    def kill(self, request: web.Request) -> None:
        """Cut the TCP connection under a WebSocket: the client sees it drop, no close frame."""
        self.drops += 1
        transport = request.transport
        if transport is not None:
            transport.abort()


def load_pcm(name: str) -> np.ndarray:
    with wave.open(str(ASR_FIXTURES / name)) as w:
        assert w.getframerate() == 16000
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def asr_truth(name: str) -> dict[str, Any]:
    return json.loads((ASR_FIXTURES / "truth.json").read_text())["files"][name]


def call_audio(names: Sequence[str], gap_s: float = 1.2) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Fixture files one after another with `gap_s` of quiet between: 16 kHz audio and its true
    utterances (text, start_ms, end_ms in the joined audio)."""
    parts: list[np.ndarray] = []
    segments: list[dict[str, Any]] = []
    at = 0
    rng = np.random.default_rng(7)
    for name in names:
        pcm = load_pcm(name)
        for seg in asr_truth(name)["segments"]:
            segments.append({"text": seg["text"], "start_ms": at * 1000 / 16000 + seg["start_ms"],
                             "end_ms": at * 1000 / 16000 + seg["end_ms"]})
        quiet = np.rint(rng.normal(0, 30, int(gap_s * 16000))).astype(np.int16)
        parts += [pcm, quiet]
        at += len(pcm) + len(quiet)
    return np.concatenate(parts), segments


class Hearing:
    """pocketsphinx listening to what one connection received (16 kHz after resampling), with the
    digits grammar: the answers a local server gives are what the audio really says."""

    def __init__(self, host: EngineHost, grammar: str | None = DIGITS_GRAMMAR) -> None:
        self._provider = PocketsphinxProvider(host, interim_ms=300)
        self._option = TranscriptionOption(extra={"grammar": grammar} if grammar else None)

    async def open(self, rate: int, on_result: Callable[[AsrResult], Awaitable[None]]) -> HearingStream:
        session = await self._provider.open(self._option)
        return HearingStream(session, rate, on_result)


class HearingStream:
    def __init__(self, session: Any, rate: int, on_result: Callable[[AsrResult], Awaitable[None]]) -> None:
        self._session = session
        self._resampler = Resampler(rate, 16000) if rate != 16000 else None
        self._on_result = on_result
        self.received_ms = 0.0
        self._rate = rate
        self._task = asyncio.get_running_loop().create_task(self._results())

    async def feed(self, data: bytes) -> None:
        pcm = np.frombuffer(data[: len(data) - len(data) % 2], dtype="<i2")
        self.received_ms += len(pcm) * 1000 / self._rate
        if self._resampler is not None:
            pcm = self._resampler.process(pcm)
        if len(pcm):
            await self._session.send(pcm)

    async def _results(self) -> None:
        async for result in self._session.results():
            await self._on_result(result)

    async def finish(self) -> None:
        """Flush the utterance in progress (its final result is delivered before this returns)."""
        await self._session.close()
        await asyncio.gather(self._task, return_exceptions=True)

    async def abandon(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._session.close()


class Speaking:
    """espeak-ng speaking the text a connection was sent, at the rate it asked for."""

    def __init__(self, host: EngineHost, voice: str = "en-us") -> None:
        self._provider = EspeakProvider(host, voice=voice)
        self._warm = False

    async def pcm(self, text: str, rate: int, speed: float = 1.0) -> np.ndarray:
        return (await self.speech(text, rate, speed))[0]

    async def speech(self, text: str, rate: int, speed: float = 1.0, volume: int = 5
                     ) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """The audio at `rate` and where each word starts in it: (word index, sample)."""
        if not self._warm:
            # espeak-ng's first synthesis after it starts comes out a little different from every
            # later one of the same text: spend it on nothing, so renderings compare.
            self._warm = True
            async for _ in self._provider.synthesize(SynthRequest("warm up")):
                pass
        parts = []
        words: list[tuple[int, int]] = []
        at = 0
        resampler: Resampler | None = None
        async for chunk in self._provider.synthesize(SynthRequest(text, speed=speed, volume=volume)):
            if resampler is None:
                resampler = Resampler(chunk.sample_rate, rate) if chunk.sample_rate != rate else None
            words.extend((index, at + offset * rate // chunk.sample_rate) for index, offset in chunk.words)
            pcm = resampler.process(chunk.pcm) if resampler is not None else chunk.pcm
            parts.append(pcm)
            at += len(pcm)
        return (np.concatenate(parts) if parts else np.zeros(0, np.int16)), words

    async def chunks(self, text: str, rate: int, size_bytes: int, speed: float = 1.0) -> AsyncIterator[bytes]:
        data = (await self.pcm(text, rate, speed)).astype("<i2").tobytes()
        for i in range(0, len(data), size_bytes):
            yield data[i:i + size_bytes]


@dataclass
class Tally:
    """Counters a server keeps per connection, for assertions."""

    frames: int = 0
    texts: list[str] = field(default_factory=list)
