"""MediaPassLink against real WebSocket peers on 127.0.0.1: echo, tone, drops, refusals, backoff."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import numpy as np
import psutil
import pytest
from aiohttp import WSMsgType, web

from actors.pipes import AudioPipe
from actors.playout import PlayFeed
from protocol.api import MediaPassOption
from protocol.errors import ProtocolError
from tests.support.audio import dominant_frequency, frames, rms, tone
from transports.fetch_policy import FetchPolicy
from actors.supervisor import Backoff, ChildSpec, Restart, Supervisor
from transports.media_pass import LinkCounters, MediaPassLink, media_pass_starter
from tests.support.poll import until

FRAME = 320  # 20 ms at 16 kHz

Behaviour = Callable[["Peer", web.WebSocketResponse, int], Awaitable[None]]

# The local test peers are internal addresses: allowed here, as an operator would allow theirs.
LOCAL = FetchPolicy(("127.0.0.1", "::1"))


class Peer:
    """A mediaPass server: counts handshakes and connections, records the binary messages it got."""

    def __init__(self, behaviour: Behaviour | None = None, *, status: int | None = None) -> None:
        self.behaviour = behaviour or echo
        self.status = status
        self.requests = 0
        self.received: list[list[bytes]] = []      # per connection, in order
        self.close_codes: list[int | None] = []    # per finished connection
        self.port = 0
        self._open: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None

    @property
    def connections(self) -> int:
        return len(self.received)

    def url(self, port: int | None = None) -> str:
        return f"ws://127.0.0.1:{port or self.port}/media"

    async def start(self, port: int = 0) -> Peer:
        app = web.Application()
        app.router.add_get("/media", self._handle)
        app.on_shutdown.append(self._shutdown)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _shutdown(self, app: web.Application) -> None:
        for ws in list(self._open):
            await ws.close(code=1001)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.status is not None:
            return web.Response(status=self.status, text="no")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        index = len(self.received)
        self.received.append([])
        self._open.add(ws)
        try:
            await self.behaviour(self, ws, index)
        finally:
            self._open.discard(ws)
            self.close_codes.append(ws.close_code)
        return ws


async def echo(peer: Peer, ws: web.WebSocketResponse, index: int) -> None:
    async for msg in ws:
        if msg.type is WSMsgType.BINARY:
            peer.received[index].append(msg.data)
            await ws.send_bytes(msg.data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_sockets_to(port: int) -> list:
    return [c for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr.port == port]


class SupervisedLink:
    """A call's mediaPass as the call runs it: the MediaPass actor under a supervisor whose
    ChildSpec restarts it with backoff (the same spec shape as actors/call.py's start_service)."""

    def __init__(self, option, pipe, playback, on_error, *, backoff_initial: float = 0.2,
                 backoff_max: float = 5.0, **link_kwargs) -> None:
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError(f"backoff must satisfy 0 < initial <= max, got {backoff_initial}, {backoff_max}")
        self.counters = LinkCounters()
        self._start = media_pass_starter(option, pipe, playback, on_error, counters=self.counters, **link_kwargs)
        self._backoff = Backoff(initial=backoff_initial, factor=2.0, maximum=backoff_max)
        self.sup = None

    def start(self) -> None:
        spec = ChildSpec(id="mediaPass", start=self._start, restart=Restart.TRANSIENT, shutdown=2.0,
                         backoff=self._backoff, escalate=False, intensity=1000, period=60.0)
        self.sup = Supervisor.start([spec], name="call")

    async def close(self) -> None:
        if self.sup is not None:
            await self.sup.stop()

    def stats(self) -> dict:
        return self.counters.snapshot()


class Harness:
    """One mediaPass with its caller pipe, playback feed and the errors it reported (with times)."""

    def __init__(self, url: str, rate_in: int = 16000, rate_out: int = 16000, packet_size: int = 2560,
                 **kwargs) -> None:
        self.option = MediaPassOption(url=url, input_sample_rate=rate_in, output_sample_rate=rate_out,
                                      packet_size=packet_size)
        self.pipe: AudioPipe[np.ndarray] = AudioPipe(128, name="caller")
        self.playback = PlayFeed(16000 * 60, live=True)
        self.errors: list[tuple[float, str]] = []
        kwargs.setdefault("policy", LOCAL)
        self.link = SupervisedLink(self.option, self.pipe, self.playback,
                                   lambda m: self.errors.append((time.monotonic(), m)), **kwargs)

    def push(self, pcm: np.ndarray) -> int:
        chunks = frames(pcm, FRAME)
        for chunk in chunks:
            self.pipe.push(chunk)
        return len(chunks)

    def played(self) -> np.ndarray:
        return self.playback.take(self.playback.buffered)


@pytest.fixture
async def tasks_before() -> set[asyncio.Task]:
    return asyncio.all_tasks()


async def assert_no_tasks_left(before: set[asyncio.Task]) -> None:
    await asyncio.sleep(0)
    left = asyncio.all_tasks() - before - {asyncio.current_task()}
    assert not left, f"tasks left behind: {left}"


# --- echo ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate,packet_size", [(8000, 2560), (16000, 2560), (24000, 2560), (24000, 999)])
async def test_echo_returns_the_tone_in_packets_of_exactly_packet_size(rate, packet_size, tasks_before):
    peer = await Peer(echo).start()
    h = Harness(peer.url(), rate_in=rate, rate_out=rate, packet_size=packet_size)
    h.link.start()
    await until(lambda: h.link.stats()["connected"], what="connection")
    sent = tone(1000, 1.0, 16000)
    h.push(sent)

    bytes_out = len(sent) * rate // 16000 * 2
    packets = bytes_out // packet_size
    expected = packets * packet_size // 2 * 16000 // rate   # samples back at 16 kHz
    await until(lambda: h.playback.produced >= expected - 2, what="echoed audio")
    await until(lambda: h.link.stats()["packets_sent"] == packets, what="all packets sent")

    assert [len(p) for p in peer.received[0]] == [packet_size] * packets
    stats = h.link.stats()
    assert stats["bytes_sent"] == packets * packet_size
    assert stats["packets_received"] == packets
    assert stats["bytes_received"] == packets * packet_size
    assert stats["dropped_frames"] == 0 and h.errors == []
    assert abs(h.playback.produced - expected) <= 2

    got = h.played()
    middle = got[1600:-1600]
    assert abs(dominant_frequency(middle, 16000) - 1000) < 5
    assert rms(middle) == pytest.approx(rms(sent), rel=0.05)
    if rate == 16000:
        # no resampling anywhere: the audio comes back bit for bit
        assert np.array_equal(got, sent[:len(got)])

    await h.link.close()
    await until(lambda: peer.close_codes == [1000], what="the peer to see a normal close")
    assert not client_sockets_to(peer.port)
    await peer.stop()
    assert h.playback.finished and h.playback.failed is None
    await assert_no_tasks_left(tasks_before)


# --- audio from the peer -------------------------------------------------------------------------

def tone_server(rate: int, chunk: int, texts_every: int) -> Behaviour:
    """Sends 1 s of 440 Hz at `rate` in `chunk`-byte messages (odd sizes split samples) with text between."""

    async def behaviour(peer: Peer, ws: web.WebSocketResponse, index: int) -> None:
        data = tone(440, 1.0, rate).astype("<i2").tobytes()
        for n, start in enumerate(range(0, len(data), chunk)):
            await ws.send_bytes(data[start:start + chunk])
            if n % texts_every == texts_every - 1:
                await ws.send_str('{"note": "ignored"}')
        async for _ in ws:
            pass

    return behaviour


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
async def test_tone_from_the_peer_is_played_at_the_media_rate(rate, tasks_before):
    chunk, texts_every = 333, 10
    peer = await Peer(tone_server(rate, chunk, texts_every)).start()
    h = Harness(peer.url(), rate_in=rate, rate_out=8000)
    h.link.start()
    await until(lambda: h.playback.produced >= 16000 - 2, what="the whole tone")

    total = rate * 2
    messages = -(-total // chunk)
    stats = h.link.stats()
    assert stats["bytes_received"] == total
    assert stats["packets_received"] == messages
    assert stats["text_received"] == messages // texts_every
    got = h.played()
    assert abs(len(got) - 16000) <= 2
    assert abs(dominant_frequency(got[800:-800], 16000) - 440) < 3
    if rate == 16000:
        # odd-sized messages reassembled without shifting a single sample
        assert np.array_equal(got, tone(440, 1.0, 16000))

    await h.link.close()
    await peer.stop()
    await assert_no_tasks_left(tasks_before)


# --- drops and reconnects ------------------------------------------------------------------------

async def drop_first(peer: Peer, ws: web.WebSocketResponse, index: int) -> None:
    if index == 0:
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                peer.received[index].append(msg.data)
                await ws.close(code=1011, message=b"going away")
                return
    await echo(peer, ws, index)


async def test_dropped_connection_is_reported_and_reconnected_with_a_fresh_stream(tasks_before):
    peer = await Peer(drop_first).start()
    h = Harness(peer.url(), packet_size=1000, backoff_initial=0.05, backoff_max=1.0)
    h.link.start()
    await until(lambda: h.link.stats()["connected"], what="first connection")

    # 4 frames = 2560 bytes: two packets and 560 bytes that must not leak into the next connection
    for value in range(1, 5):
        h.pipe.push(np.full(FRAME, value, dtype=np.int16))
    await until(lambda: len(h.errors) == 1, what="the drop to be reported")
    assert h.errors[0][1] == f"mediaPass: {peer.url()}: connection closed by peer (code 1011)"

    await until(lambda: peer.connections == 2 and h.link.stats()["connected"], what="reconnection")
    pcm = np.repeat(np.arange(100, 110, dtype=np.int16), FRAME)
    h.push(pcm)
    packets = len(pcm) * 2 // 1000
    await until(lambda: len(peer.received[1]) == packets, what="audio after reconnect")
    first = np.frombuffer(peer.received[1][0], dtype="<i2")
    assert first[0] == 100 and np.all(first[:FRAME] == 100)
    await until(lambda: h.playback.produced >= packets * 500, what="echo after reconnect")
    assert np.array_equal(h.played(), pcm[:packets * 500])     # the first peer echoed nothing

    stats = h.link.stats()
    assert (stats["connections"], stats["reconnects"], stats["disconnects"]) == (2, 1, 1)
    assert len(h.errors) == 1
    await h.link.close()
    await peer.stop()
    await assert_no_tasks_left(tasks_before)


async def test_server_down_at_start_retries_with_growing_delays_then_connects(tasks_before):
    port = free_port()
    initial, cap = 0.05, 0.4
    h = Harness(f"ws://127.0.0.1:{port}/media", backoff_initial=initial, backoff_max=cap)
    h.link.start()
    await until(lambda: len(h.errors) >= 6, what="six failed attempts")

    times = [t for t, _ in h.errors[:6]]
    gaps = [b - a for a, b in zip(times, times[1:])]
    expected = [0.05, 0.1, 0.2, 0.4, 0.4]
    for gap, want in zip(gaps, expected):
        assert want * 0.9 <= gap <= want + 0.25, (gaps, expected)
    # A closed port reads like any server that cannot be reached (no port state in error texts).
    assert all(m == f"mediaPass: ws://127.0.0.1:{port}/media: connect failed: the server could not be reached"
               for _, m in h.errors)

    peer = await Peer(echo).start(port)
    await until(lambda: h.link.stats()["connected"], timeout=3.0, what="connection once the server is up")
    h.push(tone(500, 0.2, 16000))
    await until(lambda: h.playback.produced >= 2560, what="echo")
    stats = h.link.stats()
    assert stats["connections"] == 1 and stats["reconnects"] == 0
    assert stats["connect_failures"] == len(h.errors) >= 6
    await h.link.close()
    await peer.stop()
    await assert_no_tasks_left(tasks_before)


async def test_caller_audio_is_drained_and_counted_while_disconnected(tasks_before):
    h = Harness(f"ws://127.0.0.1:{free_port()}/media", backoff_initial=0.05, backoff_max=0.1)
    h.link.start()
    await until(lambda: len(h.errors) >= 1, what="the first failure")
    pushed = h.push(tone(300, 2.0, 16000))     # 100 frames into a pipe that holds 128
    await until(lambda: h.link.stats()["dropped_frames"] == pushed, what="frames dropped")
    assert len(h.pipe) == 0 and h.pipe.stats().dropped == 0
    assert h.playback.produced == 0
    await h.link.close()
    await assert_no_tasks_left(tasks_before)


async def test_close_during_backoff_returns_promptly(tasks_before):
    h = Harness(f"ws://127.0.0.1:{free_port()}/media", backoff_initial=10.0, backoff_max=10.0)
    h.link.start()
    await until(lambda: len(h.errors) == 1, what="the first failure")
    started = time.monotonic()
    await h.link.close()
    assert time.monotonic() - started < 0.2
    await h.link.close()                        # idempotent
    # No instance was running to end the feed: it is the call's, and its track drops it.
    assert len(h.errors) == 1 and not h.playback.finished
    await assert_no_tasks_left(tasks_before)


# --- handshakes that go wrong --------------------------------------------------------------------

class SilentServer:
    """Accepts TCP connections and never answers: a handshake that hangs."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_a_hanging_handshake_times_out_and_is_retried(tasks_before):
    silent = SilentServer()
    port = await silent.start()
    h = Harness(f"ws://127.0.0.1:{port}/media", connect_timeout=0.1, backoff_initial=0.05, backoff_max=0.05)
    h.link.start()
    await until(lambda: len(h.errors) >= 2, what="two timeouts")
    # An open port that never answers reads exactly like a closed one.
    assert h.errors[0][1] == f"mediaPass: ws://127.0.0.1:{port}/media: connect failed: the server could not be reached"
    assert len(silent.writers) >= 2
    await h.link.close()
    await silent.stop()
    await assert_no_tasks_left(tasks_before)


async def test_close_during_a_connect_attempt_returns_promptly(tasks_before):
    silent = SilentServer()
    port = await silent.start()
    h = Harness(f"ws://127.0.0.1:{port}/media", connect_timeout=30.0)
    h.link.start()
    await until(lambda: len(silent.writers) == 1, what="the TCP connection")
    started = time.monotonic()
    await h.link.close()
    assert time.monotonic() - started < 0.2
    assert h.errors == []
    await silent.stop()
    await assert_no_tasks_left(tasks_before)


async def test_a_refused_handshake_that_cannot_heal_is_not_retried(tasks_before):
    peer = await Peer(status=403).start()
    h = Harness(peer.url(), backoff_initial=0.02, backoff_max=0.02)
    h.link.start()
    await until(lambda: h.playback.finished, what="the link to give up")
    await asyncio.sleep(0.15)                   # several backoff periods: still no second attempt
    assert peer.requests == 1
    assert [m for _, m in h.errors] == [f"mediaPass: {peer.url()}: handshake refused: HTTP 403 Forbidden"]
    assert h.playback.failed == "handshake refused: HTTP 403 Forbidden"
    # Given up: nothing drains the caller's tap any more; it stays a bounded ring (its call's track
    # unsubscribes it when the mediaPass stops for good).
    for _ in range(140):
        h.pipe.push(np.zeros(FRAME, dtype=np.int16))
    assert len(h.pipe) == 128 and h.pipe.stats().dropped >= 12
    await h.link.close()                        # the call (its supervisor) ends too
    await peer.stop()
    await assert_no_tasks_left(tasks_before)


async def test_a_server_error_on_the_handshake_is_retried():
    peer = await Peer(status=503).start()
    h = Harness(peer.url(), backoff_initial=0.02, backoff_max=0.02)
    h.link.start()
    await until(lambda: peer.requests >= 3, what="retries")
    assert h.errors[0][1] == f"mediaPass: {peer.url()}: handshake refused: HTTP 503 Service Unavailable"
    assert not h.playback.finished
    await h.link.close()
    await peer.stop()


# --- the end of the caller's audio, and construction ---------------------------------------------

async def test_closing_the_caller_pipe_ends_the_link(tasks_before):
    peer = await Peer(echo).start()
    h = Harness(peer.url())
    h.link.start()
    await until(lambda: h.link.stats()["connected"], what="connection")
    h.pipe.close()
    await until(lambda: peer.close_codes == [1000], what="the socket to be closed")
    await until(lambda: not h.link.stats()["connected"], what="the link to end")
    assert h.playback.finished and h.errors == []
    await peer.stop()
    await h.link.close()                        # the call (its supervisor) ends too
    await assert_no_tasks_left(tasks_before)
    await h.link.close()


def test_construction_rejects_what_can_never_work():
    pipe: AudioPipe[np.ndarray] = AudioPipe(4)
    item = PlayFeed(live=True)
    with pytest.raises(ProtocolError, match="ws://"):
        media_pass_starter(MediaPassOption(url="ftp://127.0.0.1/x", input_sample_rate=16000,
                                           output_sample_rate=16000), pipe, item, print)
    with pytest.raises(ProtocolError, match="resampler"):
        media_pass_starter(MediaPassOption(url="ws://127.0.0.1/x", input_sample_rate=16001,
                                           output_sample_rate=16000), pipe, item, print)
    with pytest.raises(ValueError, match="connect_timeout"):
        MediaPassLink(MediaPassOption(url="ws://127.0.0.1/x", input_sample_rate=16000, output_sample_rate=16000),
                      pipe, item, print, lambda reason, permanent: None, connect_timeout=0)


async def test_credentials_in_the_url_are_refused_and_query_tokens_stay_out_of_error_texts():
    port = free_port()
    with pytest.raises(ProtocolError, match="credentials in the url") as info:
        Harness(f"ws://user:secret@127.0.0.1:{port}/media")
    assert "secret" not in str(info.value)
    h = Harness(f"ws://127.0.0.1:{port}/media?token=abc")
    h.link.start()
    await until(lambda: h.errors, what="the first failure")
    await h.link.close()
    assert h.errors[0][1].startswith(f"mediaPass: ws://127.0.0.1:{port}/media: ")
    assert "abc" not in h.errors[0][1]
