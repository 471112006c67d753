"""The shared calls of the contract walk (test_contract_walk.py): one gateway, real WebSocket clients,
real audio, real files and local peers, each scenario run once and looked at by many checks.

A scenario is a coroutine that places a call or a few, drives them and returns what they saw. The
lab starts every scenario at once (they spend their time waiting on real-time audio), memoises each
result, and bounds each one with a deadline; the scenarios that time syntheses against each other
run alone afterwards, since the one espeak-ng thread is shared by every call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import wave
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import WSMsgType, web

from protocol.codecs import Decoder, Encoder, codec_info
from tests.conftest import CallClient, base_url
from tests.providers.support import Hearing
from tests.support.audio import frames, rms, tone

SST = "serverSideTrack"
VERBS = ("invite", "accept")
SCENARIO_DEADLINE = 60.0            # seconds any one scenario may take
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def load_wav(relative: str) -> np.ndarray:
    with wave.open(str(FIXTURES / relative)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def zeros(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16000), np.int16)


def b64(pcm: np.ndarray) -> str:
    return base64.b64encode(pcm.astype("<i2").tobytes()).decode()


def tts_tone(freq: float, seconds: float, **fields: Any) -> dict[str, Any]:
    return {"command": "tts", "text": b64(tone(freq, seconds, 16000)), "base64": True, **fields}


def pcm_of(chunks: Iterable[bytes]) -> np.ndarray:
    parts = [np.frombuffer(c, dtype="<i2") for c in chunks]
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


def voiced_seconds(pcm: np.ndarray, level: float = 300.0) -> float:
    return sum(1 for f in frames(pcm, 320) if rms(f) > level) * 0.02


def loud_frames(pcm: np.ndarray, level: float = 1000.0) -> np.ndarray:
    """The 20 ms frames (16 kHz) louder than `level`, joined: a tone without the silence around it."""
    loud = [f for f in frames(pcm, 320) if rms(f) > level]
    return np.concatenate(loud) if loud else np.zeros(0, np.int16)


def pitch(pcm: np.ndarray, rate: int = 16000) -> float:
    """Median fundamental frequency (Hz) of the voiced 40 ms pieces of speech, by autocorrelation."""
    n = int(0.04 * rate)
    found = []
    for i in range(0, len(pcm) - n, n):
        x = pcm[i:i + n].astype(np.float64)
        if rms(x) < 500:
            continue
        x -= x.mean()
        ac = np.correlate(x, x, "full")[n - 1:]
        lo, hi = rate // 400, rate // 60
        found.append(rate / (lo + int(np.argmax(ac[lo:hi]))))
    assert found, "no voiced speech"
    return float(np.median(found))


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.01) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(step)


@dataclass
class WalkClient(CallClient):
    """A CallClient that also remembers where each event fell in the audio stream (the outbox keeps
    events and frames in the order they were produced), so an item's own audio can be cut out."""

    sid: str = ""
    positions: list[int] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.positions.append(len(self.audio))
                self.arrivals.append(time.time() * 1000)
                self.events.append(json.loads(msg.data))
            elif msg.type == aiohttp.WSMsgType.BINARY:
                self.audio.append(msg.data)
            self._new.set()
        self._new.set()

    @property
    def closed(self) -> bool:
        return self._reader is not None and self._reader.done()

    def find(self, name: str, occurrence: int = 0, **match: Any) -> int:
        """Index (in `events`) of the `occurrence`-th `name` event whose fields include `match`."""
        hits = [i for i, e in enumerate(self.events)
                if e.get("event") == name and all(e.get(k) == v for k, v in match.items())]
        assert len(hits) > occurrence, f"no {name} {match} #{occurrence} in {self.events}"
        return hits[occurrence]

    def item_audio(self, play_id: str | None, occurrence: int = 0) -> np.ndarray:
        """The PCM (16 kHz s16le leg) received between an item's trackStart and its trackEnd."""
        start = self.find("trackStart", occurrence, trackId=SST, playId=play_id)
        end = next(i for i in range(start, len(self.events))
                   if self.events[i]["event"] == "trackEnd" and self.events[i].get("playId") == play_id)
        return pcm_of(self.audio[self.positions[start]:self.positions[end]])

    async def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        await wait_until(predicate, timeout, f"{what} on {self.sid}: {self.events[-8:]}")

    async def barrier(self) -> None:
        """Every command sent so far has been handled (a `custom` round trip)."""
        n = len([e for e in self.events if e.get("event") == "custom" and e.get("sender") == "barrier"])
        await self.send({"command": "custom", "sender": "barrier"})
        await self.until(lambda: len([e for e in self.events if e.get("event") == "custom"
                                      and e.get("sender") == "barrier"]) > n, 5, "the barrier")

    async def next_error(self, send: dict[str, Any] | str, timeout: float = 5.0) -> dict[str, Any]:
        n = len(self.of("error"))
        await self.send(send)
        await self.until(lambda: len(self.of("error")) > n, timeout, f"an error for {str(send)[:120]}")
        return self.of("error")[n]

    async def hangup(self, **fields: Any) -> None:
        await self.send({"command": "hangup", **fields})
        await self.wait_closed(timeout=10)

    def errors(self, *, sender: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.of("error") if sender is None or e["sender"] == sender]


async def stream(client: WalkClient, pcm: np.ndarray, codec: str = "pcm", rate: int | None = None) -> float:
    """Send 16 kHz `pcm` in 20 ms frames on absolute deadlines, encoded for the leg; returns the wall
    time (ms) of the first frame."""
    enc = Encoder(codec_info(codec, rate))
    loop = asyncio.get_running_loop()
    start = loop.time()
    t0 = time.time() * 1000
    for i, chunk in enumerate(frames(pcm, 320)):
        if client.closed:
            break
        await client.ws.send_bytes(enc.encode(chunk))
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
    return t0


def decode_all(chunks: Iterable[bytes], codec: str, rate: int | None = None) -> np.ndarray:
    dec = Decoder(codec_info(codec, rate))
    parts = [dec.decode(c) for c in chunks]
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


def wav_frames_on_disk(path: Path) -> int | None:
    """Frames in a two-channel 16-bit WAV as its header says now (None before the file exists)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(44)
    except FileNotFoundError:
        return None
    if len(head) < 44:
        return None
    return struct.unpack_from("<I", head, 40)[0] // 4


class Lab:
    def __init__(self, gateway: Any, http: aiohttp.ClientSession, root: Path, web_port: int) -> None:
        self.gateway = gateway
        self.http = http
        self.root = root
        self.web_port = web_port
        self.clients: list[WalkClient] = []
        self.media_peers: dict[str, MediaPassPeer] = {}
        self.tencent: Any = None            # the local Tencent Cloud server (tests/providers)
        self.hearing: Any = None            # what it heard: audio message sizes per stream
        self._runs: dict[tuple[Any, ...], asyncio.Task[Any]] = {}
        self._exclusive = asyncio.Lock()

    @property
    def recorder_root(self) -> Path:
        return self.root / "recorders"

    @property
    def clip_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/clip.wav"

    async def listed(self, sid: str) -> dict[str, Any]:
        """The call `sid` as GET /call/lists shows it."""
        async with self.http.get(f"{base_url(self.gateway)}/call/lists") as resp:
            return next(c for c in (await resp.json())["calls"] if c["id"] == sid)

    async def connect(self, sid: str, **params: Any) -> WalkClient:
        query = "&".join(f"{k}={v}" for k, v in {"id": sid, **params}.items())
        ws = await self.http.ws_connect(f"{base_url(self.gateway)}/call?{query}")
        client = WalkClient(ws, sid=sid)
        client.start()
        self.clients.append(client)
        return client

    async def placed(self, sid: str, verb: str = "invite", params: dict[str, Any] | None = None,
                     **option: Any) -> WalkClient:
        """A call placed by `verb` with `option` (pcm unless it says otherwise), answered."""
        client = await self.connect(sid, **(params or {}))
        await client.send({"command": verb, "option": {"codec": "pcm", **option}})
        await client.wait_event("answer", timeout=5)
        return client

    def run(self, scenario: Callable[..., Awaitable[Any]], *args: Any) -> Awaitable[Any]:
        """The result of `scenario(lab, *args)`, run once and shared by every check that asks."""
        key = (scenario, *args)
        task = self._runs.get(key)
        if task is None:
            exclusive = getattr(scenario, "exclusive", False)

            async def bounded() -> Any:
                if exclusive:
                    # Timed against the shared synthesis thread: nothing else may run meanwhile.
                    await self.settle(exclusive=False)
                    async with self._exclusive:
                        return await asyncio.wait_for(scenario(self, *args), SCENARIO_DEADLINE)
                return await asyncio.wait_for(scenario(self, *args), SCENARIO_DEADLINE)

            task = self._runs[key] = asyncio.get_running_loop().create_task(
                bounded(), name=f"{scenario.__name__}{args}")
        return asyncio.shield(task)

    def start(self, runs: Iterable[tuple[Any, ...]]) -> None:
        for scenario, *args in runs:
            self.run(scenario, *args)

    async def settle(self, *, exclusive: bool | None = None) -> None:
        """Wait for the scenarios started so far (only the shared ones, or only the exclusive ones)."""
        tasks = [t for key, t in self._runs.items()
                 if exclusive is None or getattr(key[0], "exclusive", False) == exclusive]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in self._runs.values():
            task.cancel()
        await asyncio.gather(*self._runs.values(), return_exceptions=True)
        for client in self.clients:
            if not client.ws.closed:
                await client.ws.close()
            if client._reader is not None:
                client._reader.cancel()


def exclusive(scenario: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    scenario.exclusive = True  # type: ignore[attr-defined]
    return scenario


class CountingHearing(Hearing):
    """The recogniser of a local provider server, noting the size of every audio message each
    stream received (one list per stream, in the order they opened)."""

    def __init__(self, host: Any) -> None:
        super().__init__(host)
        self.packets: list[list[int]] = []

    async def open(self, rate: int, on_result: Callable[[Any], Awaitable[None]]) -> Any:
        stream = await super().open(rate, on_result)
        sizes: list[int] = []
        self.packets.append(sizes)
        feed = stream.feed

        async def counted(data: bytes) -> None:
            sizes.append(len(data))
            await feed(data)

        stream.feed = counted
        return stream


# --- local peers -----------------------------------------------------------------------------------


def write_wav(path: Path, pcm: np.ndarray, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


@dataclass
class MediaPassPeer:
    """What a mediaPass service saw on one path: the handshake, each binary message's size and bytes."""

    paths: list[str] = field(default_factory=list)
    packets: list[bytes] = field(default_factory=list)


def media_pass_app(peers: dict[str, MediaPassPeer], reply: dict[str, tuple[int, np.ndarray]]) -> web.Application:
    """A mediaPass service: records what it receives on /media/{name} and plays `reply[name]` (its
    rate and 16-bit PCM at that rate) back in real time, 20 ms per message."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        name = request.match_info["name"]
        peer = peers.setdefault(name, MediaPassPeer())
        peer.paths.append(request.path)
        ws = web.WebSocketResponse()
        await ws.prepare(request)

        async def speak() -> None:
            rate, pcm = reply[name]
            loop = asyncio.get_running_loop()
            start = loop.time()
            step = rate // 50
            for i in range(0, len(pcm) - step + 1, step):
                if ws.closed:
                    return
                await ws.send_bytes(pcm[i:i + step].astype("<i2").tobytes())
                await asyncio.sleep(max(0.0, start + (i // step + 1) * 0.02 - loop.time()))

        task = asyncio.create_task(speak()) if name in reply else None
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    peer.packets.append(msg.data)
        finally:
            if task is not None:
                task.cancel()
        return ws

    app = web.Application()
    app.router.add_get("/media/{name}", handler)
    return app

