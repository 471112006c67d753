"""A call leg's media: codec, inbound framing and fan-out, paced playout, mute.

The leg itself (WebSocket, RTP socket, WebRTC) belongs to a transport; the Track sees only its media
plane, a `MediaPort`: `pull()` for the next payload from the peer and a non-blocking `send` towards
it. The same Track therefore carries WebSocket, RTP and WebRTC audio.

Both directions run on the media clock's tick, not on tasks of their own: per tick the track
drains what the peer sent (decode, re-frame to 20 ms, fan out to taps such as recorder or VAD) and
sends exactly one frame out. Tick callbacks are synchronous, so they never interleave with the
actor's own message handling in the middle of a state change.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import structlog

from protocol.codecs import MEDIA_RATE, CodecInfo, Decoder, Encoder, frame_samples
from protocol.errors import ProtocolError

from .base import Actor
from .clock import MediaClock
from .mailbox import SystemMessage
from .messages import GetTrackStats, MediaError, SetMute, TrackStats
from .pipes import AudioPipe
from .playout import ItemReport, PipeItem, PlayFeed, PlayItem, Playlist, PlaySpec

FRAME = frame_samples(MEDIA_RATE)           # samples per 20 ms media frame
SILENCE = np.zeros(FRAME, dtype=np.int16)
MAX_INBOUND_PER_TICK = 25                   # a burst from the peer is worked off over a few ticks


class MediaPort(Protocol):
    """A leg's media plane (see actors/leg.py): drained and fed on every tick of the media clock."""

    def pull(self) -> bytes | None: ...

    def send(self, payload: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Ask for a tap on the track's audio: direction 'in' (from the peer) or 'out' (to it)."""

    name: str
    direction: str = "in"
    capacity: int = 50


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    name: str
    direction: str = "in"


@dataclass(frozen=True, slots=True)
class Enqueue:
    """Play what `feed` carries after what is queued, or (replace) instead of everything playing
    now. The Track makes the item; answers the reports of the items cut (replace), current first."""

    spec: PlaySpec
    feed: PlayFeed
    replace: bool = False


@dataclass(frozen=True, slots=True)
class InterruptPlayback(SystemMessage):
    """Cut playback now (graceful: after a short fade); answers the reports of the items cut,
    current first."""

    graceful: bool = False


@dataclass(frozen=True, slots=True)
class SetPaused(SystemMessage):
    paused: bool


class Denoiser(Protocol):
    def process(self, frame: np.ndarray) -> np.ndarray: ...


Listener = Callable[[np.ndarray, float], None]   # (20 ms frame as heard, its capture time in ms)


@dataclass(frozen=True, slots=True)
class Listen:
    """Inline processing of what the caller says: `raw_listeners` (in-band DTMF) get every frame as
    received, then the optional denoiser runs and `listeners` (VAD) get the denoised frame. The
    "heard" taps (ASR) receive the denoised frames too."""

    denoiser: Denoiser | None = None
    listeners: tuple[Listener, ...] = ()
    raw_listeners: tuple[Listener, ...] = ()


@dataclass(frozen=True, slots=True)
class Mix:
    """Mix a continuous source (a mediaPass feed, a bridged call's pipe) into the output beside the
    playlist, under `spec.play_id`; `source=None` removes it. Interrupts and `play` never cut it."""

    spec: PlaySpec
    source: PlayFeed | AudioPipe[np.ndarray] | None


class Track(Actor):
    def __init__(
        self,
        track_id: str,
        codec: CodecInfo,
        leg: MediaPort,
        clock: MediaClock,
        *,
        report: Callable[[object], None],
        jitter_window: int = 500,
    ) -> None:
        self.track_id = track_id
        self.codec = codec
        self.leg = leg
        self.clock = clock
        self.report = report                       # messages up to the Call (MediaError, PlaybackEvent)
        self.log = structlog.get_logger("track").bind(track_id=track_id)
        self._decoder = Decoder(codec)
        self._encoder = Encoder(codec)
        # Stateless codecs encode silence to the same bytes every time: encode it once.
        self._silence_bytes = None if codec.name in ("g722", "opus") else self._encoder.encode(SILENCE)
        self._in_buf = np.zeros(0, dtype=np.int16)
        self._taps: dict[str, dict[str, AudioPipe[np.ndarray]]] = {"in": {}, "out": {}, "heard": {}}
        self._denoiser: Denoiser | None = None
        self._listeners: tuple[Listener, ...] = ()
        self._raw_listeners: tuple[Listener, ...] = ()
        self._stream_t0: float | None = None       # capture time (ms) of inbound frame 0
        # The server-side track: what the gateway plays to this leg.
        self.playlist = Playlist(report)
        self._mix: dict[str, PlayItem] = {}      # continuous sources by their spec's play_id
        self._mute_in = False
        self._mute_out = False
        self._clock_handle: int | None = None
        self._last_tick: float | None = None
        self._intervals: deque[float] = deque(maxlen=jitter_window)
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bad_frames = 0
        self.last_input_at: float | None = None
        self.started_at = time.time()

    async def on_start(self) -> None:
        self._clock_handle = self.clock.register(self._tick, self._tick_failed)
        # A tick that raised fails this actor in its own task, so the Call learns through supervision.
        self._fail = self.outside(_raise)

    async def on_stop(self) -> None:
        self._release()

    async def on_failure(self, error: BaseException) -> None:
        self._release()

    def _release(self) -> None:
        # Producers of whatever was still to play are told to stop (their feeds close).
        self.playlist.close()
        for item in self._mix.values():
            item.drop()
        self._mix.clear()
        if self._clock_handle is not None:
            self.clock.unregister(self._clock_handle)
            self._clock_handle = None
        for taps in self._taps.values():
            for pipe in taps.values():
                pipe.close()
            taps.clear()

    def _tick_failed(self, error: BaseException) -> None:
        self._clock_handle = None
        self.log.error("track tick failed", error=repr(error))
        self._fail(error)

    async def on_receive(self, message: object) -> object:
        if isinstance(message, SetMute):
            if message.inbound is not None:
                self._mute_in = message.inbound
            if message.outbound is not None:
                self._mute_out = message.outbound
            return None
        if isinstance(message, InterruptPlayback):
            return _reports(self.playlist.interrupt(message.graceful))
        if isinstance(message, Enqueue):
            item = PlayItem(message.spec, message.feed)
            if message.replace:
                return _reports(self.playlist.replace(item))
            self.playlist.enqueue(item)
            return ()
        if isinstance(message, Listen):
            self._denoiser = message.denoiser
            self._listeners = message.listeners
            self._raw_listeners = message.raw_listeners
            return None
        if isinstance(message, Mix):
            key = message.spec.play_id or ""
            old = self._mix.pop(key, None)
            if old is not None:
                old.drop()
            source = message.source
            if isinstance(source, PlayFeed):
                self._mix[key] = PlayItem(message.spec, source)
            elif source is not None:
                self._mix[key] = PipeItem(message.spec, source)
            return None
        if isinstance(message, SetPaused):
            if message.paused:
                self.playlist.pause()
            else:
                self.playlist.resume()
            return None
        if isinstance(message, Subscribe):
            pipe: AudioPipe[np.ndarray] = AudioPipe(message.capacity, name=f"{self.track_id}.{message.name}")
            old = self._taps[message.direction].pop(message.name, None)
            if old is not None:
                old.close()
            self._taps[message.direction][message.name] = pipe
            return pipe
        if isinstance(message, Unsubscribe):
            pipe = self._taps[message.direction].pop(message.name, None)
            if pipe is not None:
                pipe.close()
            return None
        if isinstance(message, GetTrackStats):
            return self.stats()
        raise TypeError(f"track: unexpected message {type(message).__name__}")

    # --- media plane (runs on the clock's tick) ---------------------------------------------

    def _tick(self, now: float) -> None:
        if self._last_tick is not None:
            self._intervals.append(now - self._last_tick)
        self._last_tick = now
        self._receive()
        self._send()

    def _receive(self) -> None:
        pull = self.leg.pull
        for _ in range(MAX_INBOUND_PER_TICK):
            payload = pull()
            if payload is None:
                break
            self.bytes_in += len(payload)
            try:
                pcm = self._decoder.decode(payload)
            except ProtocolError as exc:
                self.bad_frames += 1
                if self.bad_frames <= 3:
                    self.report(MediaError(self.track_id, str(exc)))
                continue
            self.last_input_at = time.time()
            self._in_buf = np.concatenate((self._in_buf, pcm)) if len(self._in_buf) else pcm
            while len(self._in_buf) >= FRAME:
                frame, self._in_buf = self._in_buf[:FRAME], self._in_buf[FRAME:]
                self._hear(SILENCE if self._mute_in else frame)

    def _hear(self, frame: np.ndarray) -> None:
        # Frames are dated on the caller's stream clock (so bursts keep their spacing),
        # resynchronised to the wall clock when the caller paused sending.
        wall = time.time() * 1000
        at = wall if self._stream_t0 is None else self._stream_t0 + self.frames_in * 20
        if self._stream_t0 is None or wall - at > 200:
            self._stream_t0 = wall - self.frames_in * 20
            at = wall
        self.frames_in += 1
        self._fan_out("in", frame)
        for listener in self._raw_listeners:
            listener(frame, at)
        if self._denoiser is not None:
            frame = self._denoiser.process(frame)
        for listener in self._listeners:
            listener(frame, at)
        self._fan_out("heard", frame)

    def _send(self) -> None:
        frame = self.playlist.read(FRAME)
        if frame is not None and len(frame) < FRAME:
            frame = np.concatenate((frame, SILENCE[: FRAME - len(frame)])) if len(frame) else None
        if self._mix:
            frame = self._mixed(frame)
        if frame is None or self._mute_out:
            frame = SILENCE
        if frame is SILENCE and self._silence_bytes is not None:
            payload = self._silence_bytes
        else:
            payload = self._encoder.encode(frame)
        self.leg.send(payload)
        self.frames_out += 1
        self._fan_out("out", frame)

    def _mixed(self, frame: np.ndarray | None) -> np.ndarray | None:
        acc = None if frame is None else frame.astype(np.int32)
        ended = []
        for key, item in self._mix.items():
            part = item.read(FRAME)
            if len(part):
                if acc is None:
                    acc = np.zeros(FRAME, dtype=np.int32)
                acc[: len(part)] += part
            if item.done:
                ended.append(key)
        for key in ended:
            del self._mix[key]
        return None if acc is None else np.clip(acc, -32768, 32767).astype(np.int16)

    def _fan_out(self, direction: str, frame: np.ndarray) -> None:
        for pipe in self._taps[direction].values():
            pipe.push(frame)

    def stats(self) -> TrackStats:
        if self._intervals:
            dev = np.abs(np.fromiter(self._intervals, dtype=np.float64) - self.clock.ptime) * 1000.0
            p50, p99 = float(np.percentile(dev, 50)), float(np.percentile(dev, 99))
        else:
            p50 = p99 = 0.0
        return TrackStats(
            track_id=self.track_id,
            frames_in=self.frames_in,
            frames_out=self.frames_out,
            bytes_in=self.bytes_in,
            bad_frames=self.bad_frames,
            jitter_ms_p50=p50,
            jitter_ms_p99=p99,
            last_input_at=self.last_input_at,
        )


def _raise(error: BaseException) -> None:
    raise error


def _reports(items: list[PlayItem]) -> tuple[ItemReport, ...]:
    return tuple(item.report() for item in items)
