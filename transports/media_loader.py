"""Media for `play`: local files under media_root and http(s) URLs, decoded to 16 kHz mono int16.

`MediaLoader.load` is the `LoadMedia` callable handed to calls. Every failure is a
`MediaLoadError` whose code follows HTTP (see `actors.services`).
"""

from __future__ import annotations

import asyncio
import io
import os
import stat
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, BinaryIO
from urllib.parse import unquote, urlsplit

import aiohttp
import av
from yarl import URL
import av.error
import numpy as np
from av.audio.stream import AudioStream
from av.container import InputContainer

from actors.services import MediaClip, MediaLoadError

from .fetch_policy import FetchPolicy, FetchRefused

MiB = 1024 * 1024
OUTPUT_RATE = 16000

# Only demuxers of self-contained audio files. Playlist and session formats (hls, dash, concat,
# sdp, rtsp ...) would make FFmpeg open further files, URLs or sockets named inside the media.
AUDIO_DEMUXERS = ",".join((
    "wav", "w64", "mp3", "ogg", "flac", "aac", "mov", "matroska", "aiff", "au", "caf", "amr",
    "wv", "ape", "asf", "ac3", "eac3", "mpc", "mpc8", "tta", "voc", "g722", "gsm",
))

_CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# One text for every way a server cannot be reached (refused, reset, unreachable, unknown name,
# no answer to the connect): which of them it was would tell a port scanner what it wants to know.
UNREACHABLE = "the media server could not be reached or did not answer"

_SPOOL_FLUSH = 1024 * 1024  # a download is written to its spool file in pieces of about this size


class DecodeBudget:
    """The memory all loads may hold while decoding, shared by the decoder threads.

    A decode reserves the PCM it accumulates (and, at the end, the copy that joins it); past the
    ceiling that load fails with 503 instead of the process growing. Released when the load ends:
    a finished clip belongs to the cache (`cache_bytes`) and to the calls playing it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.refused = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int, source: str) -> None:
        with self._lock:
            if self.used + nbytes > self.limit:
                self.refused += 1
                raise MediaLoadError(
                    f"{source}: media decoding is at its memory ceiling ({self.limit // MiB} MiB); try again later",
                    503)
            self.used += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.used -= nbytes


# (st_dev, st_ino, st_size, st_mtime_ns): a cached local clip is reused only while this holds.
FileSignature = tuple[int, int, int, int]


@dataclass(slots=True)
class _Entry:
    clip: MediaClip
    signature: FileSignature | None


@dataclass(frozen=True, slots=True)
class _Local:
    path: str                 # realpath inside media_root
    signature: FileSignature


def _signature(st: os.stat_result) -> FileSignature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class MediaLoader:
    """Loads, decodes and caches `play` sources.

    `source` is an http(s) URL, a `file:` URL, or a path; paths and file URLs are taken relative
    to `media_root` and must resolve (symlinks included) inside it. URLs go through `policy` (no
    internal addresses unless allow-listed, checked again at each of at most `max_redirects`
    redirects, no userinfo). Downloads are limited to `max_bytes` and `timeout` seconds; decoded
    audio to `max_duration` seconds. Decoded clips are kept in an LRU of `cache_bytes`;
    concurrent loads of one uncached source share one fetch.
    """

    def __init__(
        self,
        media_root: str,
        *,
        max_bytes: int = 50 * MiB,
        timeout: float = 10.0,
        cache_bytes: int = 64 * MiB,
        max_duration: float = 1800.0,
        policy: FetchPolicy | None = None,
        max_redirects: int = 5,
        connect_timeout: float = 5.0,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        decode_memory: int = 256 * MiB,
    ) -> None:
        self.media_root = os.path.realpath(media_root)
        self.policy = policy if policy is not None else FetchPolicy()
        self.max_redirects = max_redirects
        self.connect_timeout = connect_timeout
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.cache_bytes = cache_bytes
        self.max_samples = int(max_duration * OUTPUT_RATE)
        self.budget = DecodeBudget(decode_memory)
        self._session_factory = session_factory or self._policy_session
        self._session: aiohttp.ClientSession | None = None
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._cached_bytes = 0
        self._inflight: dict[str, asyncio.Task[MediaClip]] = {}
        self._closed = False

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    def cached(self, source: str) -> bool:
        return source in self._cache

    async def load(self, source: str) -> MediaClip:
        if self._closed:
            raise MediaLoadError("media loader is closed", 503)
        local = self._locate(source)
        entry = self._cache.get(source)
        if entry is not None:
            if local is None or entry.signature == local.signature:
                self._cache.move_to_end(source)
                return entry.clip
            self._evict(source)
        task = self._inflight.get(source)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._produce(source, local), name="media-load")
            self._inflight[source] = task
            task.add_done_callback(lambda t, s=source: self._settled(s, t))
        try:
            # Shielded: one caller giving up (its call hung up) must not abort the fetch the
            # others wait for; the clip still lands in the cache.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                raise MediaLoadError(f"{source}: loading stopped, media loader is closed", 503) from None
            raise

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._cache.clear()
        self._cached_bytes = 0
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # --- resolution ------------------------------------------------------------------------------

    def _locate(self, source: str) -> _Local | None:
        """None for an http(s) URL; the checked local file otherwise. Raises for refused sources."""
        if not source:
            raise MediaLoadError("empty media source", 400)
        parts = urlsplit(source)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            if not parts.hostname:
                raise MediaLoadError(f"{source}: URL has no host", 400)
            return None
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise MediaLoadError(f"{source}: file URL names a remote host", 400)
            if parts.query or parts.fragment:
                raise MediaLoadError(f"{source}: file URL with a query or fragment", 400)
            relative = unquote(parts.path)
            # A file URL's path is absolute; the media root is its root: file:///a.wav and
            # file://localhost/a.wav name media_root/a.wav, unless the path already points inside
            # the media root (file:///srv/media/a.wav with media_root /srv/media).
            if os.path.isabs(relative) and os.path.commonpath(
                    (self.media_root, os.path.normpath(relative))) != self.media_root:
                relative = relative.lstrip("/")
        elif scheme:
            raise MediaLoadError(f"{source}: unsupported scheme {scheme!r} (http, https, file or a path)", 400)
        else:
            relative = source
        if "\x00" in relative:
            raise MediaLoadError(f"{source!r}: path contains a NUL byte", 400)
        path = os.path.realpath(os.path.join(self.media_root, relative))
        # Refuse before looking at the file: whether something exists outside media_root is
        # none of the caller's business.
        if os.path.commonpath((self.media_root, path)) != self.media_root:
            raise MediaLoadError(f"{source}: path is outside the media root", 400)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise MediaLoadError(f"{source}: no such file", 404) from None
        except OSError as exc:
            raise MediaLoadError(f"{source}: cannot be read ({exc.strerror})", 400) from None
        if not stat.S_ISREG(st.st_mode):
            raise MediaLoadError(f"{source}: not a regular file", 400)
        return _Local(path, _signature(st))

    # --- producing a clip ------------------------------------------------------------------------

    async def _produce(self, source: str, local: _Local | None) -> MediaClip:
        if local is None:
            # The body goes to an unnamed temporary file, not memory: ten large bodies at once
            # cost disk pages the kernel can drop, and the decoder reads the file in pieces.
            spool = await asyncio.to_thread(tempfile.TemporaryFile)
            try:
                await self._download(source, spool)
                pcm = await asyncio.to_thread(_decode_spool, spool, source, self.max_samples, self.budget)
            finally:
                await asyncio.to_thread(spool.close)
            signature = None
        else:
            pcm, signature = await asyncio.to_thread(_decode_file, local, source, self.max_samples, self.budget)
        clip = MediaClip(pcm, source)
        if not self._closed:
            self._remember(source, _Entry(clip, signature))
        return clip

    def _policy_session(self) -> aiohttp.ClientSession:
        # The policy's resolver checks the very addresses connected to; proxies from the
        # environment would connect elsewhere, so none are used.
        connector = aiohttp.TCPConnector(resolver=self.policy.resolver())
        return aiohttp.ClientSession(connector=connector, trust_env=False,
                                     timeout=aiohttp.ClientTimeout(sock_connect=self.connect_timeout))

    async def _download(self, url: str, spool: IO[bytes]) -> None:
        if self._session is None:
            self._session = self._session_factory()
        session = self._session
        answered: list[int] = []     # the status of each response whose headers arrived
        try:
            async with asyncio.timeout(self.timeout):
                await self._follow(session, url, answered, spool)
        except MediaLoadError:
            raise
        except FetchRefused as exc:
            raise MediaLoadError(f"{url}: {exc}", 403) from None
        except TimeoutError:
            # Before ClientError: aiohttp's own timeouts are both. No answer at all reads like a
            # closed port: an open port that keeps silent must not look different.
            if not answered:
                raise MediaLoadError(f"{url}: {UNREACHABLE}", 502) from None
            raise MediaLoadError(f"{url}: no complete answer within {self.timeout:g} s", 504) from None
        except (aiohttp.InvalidURL, ValueError) as exc:
            raise MediaLoadError(f"{url}: invalid URL ({exc})", 400) from None
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, OSError):
            raise MediaLoadError(f"{url}: {UNREACHABLE}", 502) from None
        except aiohttp.ClientError as exc:
            raise MediaLoadError(f"{url}: fetch failed ({exc.__class__.__name__})", 502) from None

    async def _follow(self, session: aiohttp.ClientSession, url: str, answered: list[int], spool: IO[bytes]) -> None:
        """GET `url`, following redirects by hand so that every hop passes the policy."""
        target = URL(url)
        for _hop in range(self.max_redirects + 1):
            await self.policy.check(target, ("http", "https"))
            async with session.get(target, allow_redirects=False) as resp:
                answered.append(resp.status)
                if resp.status in _REDIRECTS:
                    location = resp.headers.get("Location")
                    if not location:
                        raise MediaLoadError(f"{url}: HTTP {resp.status} redirect without a Location", 502)
                    target = target.join(URL(location))
                    continue
                await self._body(url, resp, spool)
                return
        raise MediaLoadError(f"{url}: more than {self.max_redirects} redirects", 502)

    async def _body(self, url: str, resp: aiohttp.ClientResponse, spool: IO[bytes]) -> None:
        if not 200 <= resp.status < 300:
            raise MediaLoadError(f"{url}: server answered HTTP {resp.status}", 502)
        length = resp.content_length
        if length is not None and length > self.max_bytes:
            raise MediaLoadError(f"{url}: {length} bytes is more than the {self.max_bytes}-byte limit", 413)
        pending = bytearray()
        received = 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            received += len(chunk)
            if received > self.max_bytes:
                raise MediaLoadError(f"{url}: body exceeds the {self.max_bytes}-byte limit", 413)
            pending += chunk
            if len(pending) >= _SPOOL_FLUSH:
                await asyncio.to_thread(spool.write, bytes(pending))
                pending.clear()
        if pending:
            await asyncio.to_thread(spool.write, bytes(pending))

    # --- cache -----------------------------------------------------------------------------------

    def _settled(self, source: str, task: asyncio.Task[MediaClip]) -> None:
        if self._inflight.get(source) is task:
            del self._inflight[source]
        if not task.cancelled():
            task.exception()  # retrieved here: when every waiter gave up, nobody else reads it

    def _remember(self, source: str, entry: _Entry) -> None:
        size = entry.clip.pcm.nbytes
        if size > self.cache_bytes:
            return
        self._evict(source)
        self._cache[source] = entry
        self._cached_bytes += size
        while self._cached_bytes > self.cache_bytes:
            oldest = next(iter(self._cache))
            self._evict(oldest)

    def _evict(self, source: str) -> None:
        entry = self._cache.pop(source, None)
        if entry is not None:
            self._cached_bytes -= entry.clip.pcm.nbytes


# --- decoding (worker threads) -------------------------------------------------------------------

def _decode_spool(spool: IO[bytes], source: str, max_samples: int, budget: DecodeBudget | None) -> np.ndarray:
    spool.seek(0)
    return decode_stream(spool, source, max_samples, budget)


def _decode_file(local: _Local, source: str, max_samples: int,
                 budget: DecodeBudget | None = None) -> tuple[np.ndarray, FileSignature]:
    # O_NOFOLLOW: the path was resolved without symlinks; one swapped in since is not followed.
    try:
        fd = os.open(local.path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise MediaLoadError(f"{source}: no such file", 404) from None
    except OSError as exc:
        raise MediaLoadError(f"{source}: cannot be read ({exc.strerror})", 400) from None
    with os.fdopen(fd, "rb") as f:
        signature = _signature(os.fstat(fd))
        return decode_stream(f, source, max_samples, budget), signature


def decode_bytes(data: bytes, source: str, max_samples: int, budget: DecodeBudget | None = None) -> np.ndarray:
    return decode_stream(io.BytesIO(data), source, max_samples, budget)


def decode_stream(f: BinaryIO, source: str, max_samples: int, budget: DecodeBudget | None = None) -> np.ndarray:
    """Decode the first audio stream of `f` to read-only int16 mono 16 kHz PCM.

    CPU-bound and blocking: call it from a worker thread. Raises MediaLoadError 415 for input
    FFmpeg cannot decode, 413 when the audio is longer than `max_samples`, 503 when `budget`
    (shared by concurrent decodes) has no room for it.
    """
    try:
        container = av.open(f, mode="r", options={"format_whitelist": AUDIO_DEMUXERS},
                            metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError, UnicodeDecodeError) as exc:
        raise MediaLoadError(f"{source}: not a decodable audio file ({exc})", 415) from None
    try:
        if not container.streams.audio:
            raise MediaLoadError(f"{source}: contains no audio stream", 415)
        return _decode_audio(container, container.streams.audio[0], source, max_samples, budget)
    except (av.error.FFmpegError, ValueError) as exc:
        raise MediaLoadError(f"{source}: audio cannot be decoded ({exc})", 415) from None
    finally:
        container.close()


def _decode_audio(container: InputContainer, stream: AudioStream, source: str, max_samples: int,
                  budget: DecodeBudget | None) -> np.ndarray:
    out: list[np.ndarray] = []
    total = 0
    reserved = 0
    shape: tuple[str, str, int] | None = None
    resampler: av.AudioResampler | None = None
    bad_packets = 0

    def reserve(nbytes: int) -> None:
        nonlocal reserved
        if budget is not None:
            budget.reserve(nbytes, source)
            reserved += nbytes

    def take(frames: list[av.AudioFrame]) -> None:
        nonlocal total
        for frame in frames:
            pcm = frame.to_ndarray().reshape(-1)
            total += len(pcm)
            if total > max_samples:
                raise MediaLoadError(
                    f"{source}: longer than the {max_samples / OUTPUT_RATE:g} s limit", 413)
            reserve(pcm.nbytes)
            out.append(pcm)

    try:
        for packet in container.demux(stream):
            try:
                frames = stream.decode(packet)
            except av.error.InvalidDataError:
                # A damaged frame (common in MP3s off the web) costs that frame, not the file.
                bad_packets += 1
                continue
            for frame in frames:
                key = (frame.format.name, frame.layout.name, frame.sample_rate)
                if key != shape:
                    # Concatenated MP3s change rate or layout mid-stream; a resampler is built for one.
                    if resampler is not None:
                        take(resampler.resample(None))
                    resampler = av.AudioResampler(format="s16", layout="mono", rate=OUTPUT_RATE)
                    shape = key
                take(resampler.resample(frame))
        if resampler is not None:
            take(resampler.resample(None))
        if total == 0:
            detail = f" ({bad_packets} damaged packets)" if bad_packets else ""
            raise MediaLoadError(f"{source}: no decodable audio{detail}", 415)
        reserve(total * 2)  # joining the pieces holds them and the whole clip at once
        pcm = np.concatenate(out).astype(np.int16, copy=False)
        out.clear()
    finally:
        if budget is not None and reserved:
            budget.release(reserved)
    # Shared by every call that plays it from the cache: nobody may change it in place.
    pcm.flags.writeable = False
    return pcm
