"""MediaLoader on real files and a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import socket
import time
import wave
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import av
import numpy as np
import pytest
from aiohttp import web

from actors.services import MediaClip, MediaLoadError
from tests.support.audio import dominant_frequency, rms
from tests.support.poll import until
from transports.fetch_policy import FetchPolicy
from transports.media_loader import MediaLoader

# The local test servers are internal addresses: allowed here, as an operator would allow theirs.
LOCAL = FetchPolicy(("127.0.0.1", "::1"))

RATE = 16000


# --- fixtures: signals and files ------------------------------------------------------------------

def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.25) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


def wav_bytes(channels: list[np.ndarray], rate: int, width: int = 2) -> bytes:
    """Integer PCM WAV via the stdlib: width 1 (unsigned 8-bit), 2, 3 or 4 bytes."""
    x = np.stack(channels, axis=1).reshape(-1)         # interleaved
    if width == 1:
        raw = np.rint(x * 127 + 128).astype(np.uint8).tobytes()
    elif width == 2:
        raw = np.rint(x * 32767).astype("<i2").tobytes()
    elif width == 3:
        raw = np.rint(x * 8388607).astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = np.rint(x * 2147483647).astype("<i4").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(len(channels))
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return buf.getvalue()


def encoded_bytes(channels: list[np.ndarray], rate: int, fmt: str, codec: str) -> bytes:
    """Encode planar float audio with PyAV (MP3 through libmp3lame, float WAV through pcm_f32le)."""
    layout = "mono" if len(channels) == 1 else "stereo"
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        planar = np.stack(channels).astype(np.float32)
        step = 1152
        for start in range(0, planar.shape[1], step):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar[:, start:start + step]),
                                               format="fltp", layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def mp3_bytes(channels: list[np.ndarray], rate: int) -> bytes:
    return encoded_bytes(channels, rate, "mp3", "libmp3lame")


def assert_tone(clip: MediaClip, freq: float, seconds: float) -> None:
    assert clip.pcm.dtype == np.int16 and clip.pcm.ndim == 1
    assert abs(len(clip.pcm) - seconds * RATE) <= 0.020 * RATE, len(clip.pcm)
    assert abs(clip.duration_ms - seconds * 1000) <= 20
    middle = clip.pcm[len(clip.pcm) // 4: 3 * len(clip.pcm) // 4]
    assert abs(dominant_frequency(middle, RATE) - freq) < 10


@pytest.fixture
def media_root(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    return root


@pytest.fixture
async def loader(media_root) -> AsyncIterator[MediaLoader]:
    ml = MediaLoader(str(media_root), policy=LOCAL, timeout=2.0)
    try:
        yield ml
    finally:
        await ml.close()


# --- fixtures: a local HTTP server ------------------------------------------------------------------

@dataclass
class MediaServer:
    """Serves `files` under /f/<name> and misbehaves on purpose under other paths; counts hits."""

    files: dict[str, bytes] = field(default_factory=dict)
    hits: Counter = field(default_factory=Counter)
    delay: float = 0.0                  # before answering /f/*
    fail_next: int = 0                  # answer /f/* with 500 this many times
    sent: Counter = field(default_factory=Counter)   # body bytes written per path
    ended: Counter = field(default_factory=Counter)  # handlers of a streamed body that returned
    release: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def stall(self) -> None:
        # Held until teardown, and never past 5 s: every handler ends.
        try:
            await asyncio.wait_for(self.release.wait(), 5.0)
        except TimeoutError:
            pass

    async def file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=500, text="try later")
        if name not in self.files:
            return web.Response(status=404, text="not here")
        return web.Response(body=self.files[name], content_type="application/octet-stream")

    async def slow_headers(self, request: web.Request) -> web.StreamResponse:
        self.hits["slow_headers"] += 1
        await self.stall()
        return web.Response(body=b"late")

    async def slow_body(self, request: web.Request) -> web.StreamResponse:
        self.hits["slow_body"] += 1
        resp = web.StreamResponse()
        resp.content_length = 100_000
        await resp.prepare(request)
        await resp.write(b"\0" * 1000)
        await self.stall()
        return resp

    async def declared_big(self, request: web.Request) -> web.StreamResponse:
        # Declares more than the limit, sends a little, then stalls: a client that reads on
        # instead of refusing at the headers ends in a timeout, not a 413.
        self.hits["declared_big"] += 1
        resp = web.StreamResponse()
        resp.content_length = int(request.query["length"])
        await resp.prepare(request)
        await resp.write(b"\0" * 1024)
        await self.stall()
        return resp

    async def chunked_big(self, request: web.Request) -> web.StreamResponse:
        self.hits["chunked_big"] += 1
        total = int(request.query["total"])
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for _ in range(total // 16384):
                await resp.write(b"\1" * 16384)
                self.sent["chunked_big"] += 16384
                await asyncio.sleep(0)
            await resp.write_eof()
        except ConnectionError:
            pass
        finally:
            self.ended["chunked_big"] += 1
        return resp


@pytest.fixture
async def server() -> AsyncIterator[MediaServer]:
    srv = MediaServer()
    app = web.Application()
    app.router.add_get("/f/{name}", srv.file)
    app.router.add_get("/slow-headers", srv.slow_headers)
    app.router.add_get("/slow-body", srv.slow_body)
    app.router.add_get("/declared-big", srv.declared_big)
    app.router.add_get("/chunked-big", srv.chunked_big)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.port = runner.addresses[0][1]
    try:
        yield srv
    finally:
        srv.release.set()
        await runner.cleanup()


async def refused(loader: MediaLoader, source: str, code: int) -> MediaLoadError:
    with pytest.raises(MediaLoadError) as info:
        await loader.load(source)
    assert info.value.code == code, str(info.value)
    return info.value


# --- decoding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate,nchannels,width", [
    (8000, 1, 2), (44100, 2, 2), (16000, 1, 2), (48000, 2, 2),
    (22050, 1, 1), (32000, 1, 3), (11025, 2, 4),
])
async def test_pcm_wav_decodes_to_16k_mono(loader, media_root, rate, nchannels, width):
    tone = sine(1000, 1.0, rate)
    (media_root / "tone.wav").write_bytes(wav_bytes([tone] * nchannels, rate, width))
    clip = await loader.load("tone.wav")
    assert clip.source == "tone.wav"
    assert_tone(clip, 1000, 1.0)
    # 0.25 full scale in, about the same out: no channel summed twice, no clipping.
    assert abs(rms(clip.pcm) - 0.25 * 32767 / np.sqrt(2)) < 0.03 * 0.25 * 32767


async def test_float_wav_and_mp3_decode(loader, media_root):
    (media_root / "float.wav").write_bytes(
        encoded_bytes([sine(1000, 1.5, 44100)] * 2, 44100, "wav", "pcm_f32le"))
    (media_root / "tone44.mp3").write_bytes(mp3_bytes([sine(1000, 2.0, 44100)] * 2, 44100))
    (media_root / "tone8.mp3").write_bytes(mp3_bytes([sine(1000, 1.0, 8000)], 8000))
    assert_tone(await loader.load("float.wav"), 1000, 1.5)
    assert_tone(await loader.load("tone44.mp3"), 1000, 2.0)
    assert_tone(await loader.load("tone8.mp3"), 1000, 1.0)


async def test_stereo_is_mixed_not_one_channel_taken(loader, media_root):
    left, right = sine(1000, 1.0, 44100), sine(3000, 1.0, 44100)
    (media_root / "lr.wav").write_bytes(wav_bytes([left, right], 44100))
    pcm = (await loader.load("lr.wav")).pcm.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    at = lambda hz: spectrum[int(hz * len(pcm) / RATE) - 3: int(hz * len(pcm) / RATE) + 4].max()  # noqa: E731
    assert 0.8 < at(1000) / at(3000) < 1.25
    assert at(1000) > 100 * at(2000)


async def test_rate_and_layout_changes_mid_stream(loader, media_root):
    # Two MP3s joined end to end: 8 kHz mono, then 44.1 kHz stereo.
    (media_root / "joined.mp3").write_bytes(
        mp3_bytes([sine(1000, 1.0, 8000)], 8000) + mp3_bytes([sine(2000, 1.0, 44100)] * 2, 44100))
    pcm = (await loader.load("joined.mp3")).pcm
    # The second part keeps its encoder delay and padding: only the first header is gapless.
    assert 2.0 * RATE <= len(pcm) <= 2.25 * RATE
    assert dominant_frequency(pcm[2000:14000], RATE) == pytest.approx(1000, abs=10)
    assert dominant_frequency(pcm[-14000:-2000], RATE) == pytest.approx(2000, abs=10)


async def test_clip_is_read_only(loader, media_root):
    (media_root / "a.wav").write_bytes(wav_bytes([sine(1000, 0.2, 16000)], 16000))
    clip = await loader.load("a.wav")
    with pytest.raises(ValueError):
        clip.pcm[0] = 1


async def test_garbage_and_non_audio_are_415(loader, media_root):
    rng = np.random.default_rng(7)
    (media_root / "noise.wav").write_bytes(rng.bytes(20000))
    (media_root / "empty.mp3").write_bytes(b"")
    (media_root / "notes.txt").write_text("hello\n" * 200)
    (media_root / "silence-header.wav").write_bytes(wav_bytes([np.zeros(0)], 8000))
    for name in ("noise.wav", "empty.mp3", "notes.txt", "silence-header.wav"):
        err = await refused(loader, name, 415)
        assert name in str(err)


async def test_playlists_and_session_descriptions_are_not_opened(loader, media_root, tmp_path, server):
    # Demuxers that open what a file names: an HLS playlist naming a file outside the media
    # root, an SDP naming an RTP port FFmpeg would listen on (and wait at, with no end).
    (tmp_path / "secret.mp3").write_bytes(mp3_bytes([sine(1000, 1.0, 8000)], 8000))
    playlist = ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n"
                f"{tmp_path / 'secret.mp3'}\n#EXT-X-ENDLIST\n")
    sdp = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           "m=audio 45678 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    for name, text in (("list.m3u8", playlist), ("call.sdp", sdp)):
        (media_root / name).write_text(text)
        server.files[name] = text.encode()
        for source in (name, server.url(f"/f/{name}")):
            with pytest.raises(MediaLoadError) as info:
                await asyncio.wait_for(loader.load(source), 2.0)
            assert info.value.code == 415, str(info.value)


async def test_longer_than_max_duration_is_413(media_root):
    (media_root / "long.wav").write_bytes(wav_bytes([sine(1000, 3.0, 8000)], 8000))
    ml = MediaLoader(str(media_root), policy=LOCAL, max_duration=2.0)
    try:
        err = await refused(ml, "long.wav", 413)
        assert "long.wav" in str(err)
    finally:
        await ml.close()


async def test_decoding_leaves_the_event_loop_free(loader, media_root):
    (media_root / "long.wav").write_bytes(wav_bytes([sine(1000, 120.0, 44100)] * 2, 44100))
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set() and len(gaps) < 10_000:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    clip = await loader.load("long.wav")
    elapsed = time.perf_counter() - started
    done.set()
    await tick
    assert abs(clip.duration_ms - 120_000) <= 20
    assert len(gaps) >= 5
    # Run inline, the decode would be one pause as long as the whole load.
    assert max(gaps) < elapsed / 3, (max(gaps), elapsed)


# --- local paths ----------------------------------------------------------------------------------

async def test_paths_and_file_urls_resolve_under_media_root(loader, media_root):
    (media_root / "sub").mkdir()
    (media_root / "sub" / "b.wav").write_bytes(wav_bytes([sine(1000, 0.5, 8000)], 8000))
    (media_root / "link.wav").symlink_to(media_root / "sub" / "b.wav")
    for source in ("sub/b.wav", "./sub/../sub/b.wav", "link.wav", "file:sub/b.wav",
                   f"file://{media_root}/sub/b.wav", f"file://localhost{media_root}/sub/b.wav",
                   str(media_root / "sub" / "b.wav"), "file:sub/%62.wav"):
        assert_tone(await loader.load(source), 1000, 0.5)


async def test_paths_escaping_media_root_are_refused(loader, media_root, tmp_path):
    outside = tmp_path / "x.wav"
    outside.write_bytes(wav_bytes([sine(1000, 0.5, 8000)], 8000))
    (media_root / "escape.wav").symlink_to(outside)
    (media_root / "dir").symlink_to(tmp_path)
    for source in ("../x.wav", str(outside), "escape.wav", "dir/x.wav",
                   "file:../x.wav", "sub/../../x.wav", "../missing.wav", "file:///../x.wav"):
        err = await refused(loader, source, 400)
        assert source in str(err)
    # A file URL's absolute path outside the media root is looked up under it: not found there.
    err = await refused(loader, f"file://{outside}", 404)
    assert "no such file" in str(err)


async def test_file_urls_are_rooted_at_the_media_root(loader, media_root):
    (media_root / "x.wav").write_bytes(wav_bytes([sine(1000, 0.5, 8000)], 8000))
    for source in ("file://localhost/x.wav", "file:///x.wav", "file:/x.wav", f"file://{media_root}/x.wav"):
        assert_tone(await loader.load(source), 1000, 0.5)


async def test_missing_file_is_404_and_other_refusals(loader, media_root):
    (media_root / "d").mkdir()
    err = await refused(loader, "nope.wav", 404)
    assert "nope.wav" in str(err)
    await refused(loader, "d/nope/deeper.wav", 404)
    await refused(loader, "d", 400)                  # a directory
    await refused(loader, ".", 400)                  # the root itself
    await refused(loader, "", 400)
    await refused(loader, "ftp://127.0.0.1/a.wav", 400)
    await refused(loader, "data:audio/wav;base64,AAAA", 400)
    await refused(loader, "file://example.com/a.wav", 400)
    await refused(loader, "a\0.wav", 400)
    await refused(loader, "http:///a.wav", 400)


async def test_changed_local_file_is_reloaded(loader, media_root):
    path = media_root / "v.wav"
    path.write_bytes(wav_bytes([sine(1000, 0.5, 8000)], 8000))
    first = await loader.load("v.wav")
    assert await loader.load("v.wav") is first
    path.write_bytes(wav_bytes([sine(2000, 0.7, 8000)], 8000))
    assert_tone(await loader.load("v.wav"), 2000, 0.7)
    path.unlink()
    await refused(loader, "v.wav", 404)


# --- HTTP -----------------------------------------------------------------------------------------

async def test_wav_and_mp3_over_http(loader, server):
    server.files["t.wav"] = wav_bytes([sine(1000, 1.0, 44100)] * 2, 44100)
    server.files["t.mp3"] = mp3_bytes([sine(1000, 1.0, 44100)] * 2, 44100)
    assert_tone(await loader.load(server.url("/f/t.wav")), 1000, 1.0)
    clip = await loader.load(server.url("/f/t.mp3"))
    assert_tone(clip, 1000, 1.0)
    assert clip.source == server.url("/f/t.mp3")


async def test_http_error_status_is_502_naming_it(loader, server):
    err = await refused(loader, server.url("/f/absent.wav"), 502)
    assert "404" in str(err) and "/f/absent.wav" in str(err)


async def test_connection_refused_is_502(loader):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await refused(loader, f"http://127.0.0.1:{port}/a.wav", 502)


@pytest.mark.parametrize("path,code", [("/slow-headers", 502), ("/slow-body", 504)])
async def test_slow_server_is_refused_within_the_timeout(media_root, server, path, code):
    # No headers at all reads like an unreachable server (502): an open port that keeps silent
    # must not look different from a closed one. Headers then a stalled body: 504.
    ml = MediaLoader(str(media_root), policy=LOCAL, timeout=0.4)
    try:
        started = time.perf_counter()
        await refused(ml, server.url(path), code)
        elapsed = time.perf_counter() - started
        assert 0.35 < elapsed < 0.9, elapsed
    finally:
        await ml.close()


async def test_oversize_by_content_length_is_413_before_download(media_root, server):
    ml = MediaLoader(str(media_root), policy=LOCAL, max_bytes=100_000, timeout=3.0)
    try:
        started = time.perf_counter()
        err = await refused(ml, server.url("/declared-big?length=100001"), 413)
        assert time.perf_counter() - started < 1.0
        assert "100001" in str(err)
        # At the limit exactly, the body is read (and here stalls into a timeout).
        ml.timeout = 0.3
        await refused(ml, server.url("/declared-big?length=100000"), 504)
    finally:
        await ml.close()


async def test_oversize_while_streaming_chunked_is_413(media_root, server):
    ml = MediaLoader(str(media_root), policy=LOCAL, max_bytes=200_000)
    try:
        err = await refused(ml, server.url("/chunked-big?total=2000000"), 413)
        assert "200000" in str(err)
        await until(lambda: server.ended["chunked_big"] == 1, what="the server's handler ends")
        assert server.sent["chunked_big"] < 2_000_000   # the client hung up mid-stream
        # Under the limit the same endpoint is just bytes, and undecodable ones at that.
        await refused(ml, server.url("/chunked-big?total=163840"), 415)
    finally:
        await ml.close()


async def test_garbage_over_http_is_415_naming_the_url(loader, server):
    server.files["junk.mp3"] = np.random.default_rng(3).bytes(50_000)
    err = await refused(loader, server.url("/f/junk.mp3"), 415)
    assert server.url("/f/junk.mp3") in str(err)


# --- cache and sharing -----------------------------------------------------------------------------

async def test_cache_hit_does_not_refetch(loader, server):
    server.files["c.wav"] = wav_bytes([sine(1000, 0.5, 8000)], 8000)
    url = server.url("/f/c.wav")
    first = await loader.load(url)
    second = await loader.load(url)
    assert second is first
    assert server.hits["c.wav"] == 1
    assert loader.cached(url) and loader.cached_bytes == first.pcm.nbytes


async def test_concurrent_loads_share_one_fetch(loader, server):
    server.files["s.wav"] = wav_bytes([sine(1000, 0.5, 8000)], 8000)
    server.delay = 0.2
    url = server.url("/f/s.wav")
    clips = await asyncio.gather(*(loader.load(url) for _ in range(5)))
    assert all(clip is clips[0] for clip in clips)
    assert server.hits["s.wav"] == 1


async def test_failures_are_not_cached(loader, server):
    server.files["r.wav"] = wav_bytes([sine(1000, 0.5, 8000)], 8000)
    server.fail_next = 1
    url = server.url("/f/r.wav")
    await refused(loader, url, 502)
    assert not loader.cached(url)
    assert_tone(await loader.load(url), 1000, 0.5)
    assert server.hits["r.wav"] == 2


async def test_lru_by_decoded_bytes(media_root, server):
    for name in "abc":
        server.files[f"{name}.wav"] = wav_bytes([sine(1000, 1.0, 8000)], 8000)   # 32,000 bytes decoded
    server.files["huge.wav"] = wav_bytes([sine(1000, 3.0, 8000)], 8000)
    ml = MediaLoader(str(media_root), policy=LOCAL, cache_bytes=70_000)
    try:
        url = {name: server.url(f"/f/{name}.wav") for name in ("a", "b", "c", "huge")}
        await ml.load(url["a"])
        await ml.load(url["b"])
        await ml.load(url["a"])              # a is now the most recent
        await ml.load(url["c"])              # evicts b
        assert ml.cached(url["a"]) and ml.cached(url["c"]) and not ml.cached(url["b"])
        assert ml.cached_bytes == 64_000
        await ml.load(url["a"])
        await ml.load(url["b"])
        assert server.hits["a.wav"] == 1 and server.hits["b.wav"] == 2
        await ml.load(url["huge"])           # larger than the whole cache: served, not kept
        assert not ml.cached(url["huge"]) and ml.cached_bytes == 64_000
    finally:
        await ml.close()


async def test_a_cancelled_waiter_does_not_abort_the_shared_fetch(loader, server):
    server.files["w.wav"] = wav_bytes([sine(1000, 0.5, 8000)], 8000)
    server.delay = 0.2
    url = server.url("/f/w.wav")
    quitter = asyncio.create_task(loader.load(url))
    stayer = asyncio.create_task(loader.load(url))
    await until(lambda: server.hits["w.wav"] == 1, what="the shared fetch reaches the server")
    quitter.cancel()
    assert_tone(await stayer, 1000, 0.5)
    with pytest.raises(asyncio.CancelledError):
        await quitter
    assert server.hits["w.wav"] == 1 and loader.cached(url)


async def test_close_ends_pending_loads_and_refuses_new_ones(media_root, server):
    server.files["p.wav"] = wav_bytes([sine(1000, 0.5, 8000)], 8000)
    server.delay = 1.0
    ml = MediaLoader(str(media_root), policy=LOCAL)
    pending = asyncio.create_task(ml.load(server.url("/f/p.wav")))
    await until(lambda: server.hits["p.wav"] == 1, what="the load reaches the server")
    started = time.perf_counter()
    await ml.close()
    assert time.perf_counter() - started < 0.5
    with pytest.raises(MediaLoadError) as info:
        await pending
    assert info.value.code == 503
    await refused(ml, server.url("/f/p.wav"), 503)


async def test_session_is_made_once_and_closed(media_root, server):
    import aiohttp

    made: list[aiohttp.ClientSession] = []

    def factory() -> aiohttp.ClientSession:
        made.append(aiohttp.ClientSession())
        return made[-1]

    server.files["q.wav"] = wav_bytes([sine(1000, 0.5, 8000)], 8000)
    ml = MediaLoader(str(media_root), policy=LOCAL, session_factory=factory, cache_bytes=0)
    await ml.load(server.url("/f/q.wav"))
    await ml.load(server.url("/f/q.wav"))
    assert len(made) == 1 and server.hits["q.wav"] == 2   # cache_bytes=0 caches nothing
    await ml.close()
    assert made[0].closed
