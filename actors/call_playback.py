"""What a Call plays to its caller: `tts`, `play`, `interrupt`, `pause`/`resume`, and the events of
playback (trackStart/trackEnd, autoHangup, the start of a waitInputTimeout).

Part of the Call actor: it runs in the Call's task and keeps a record of every playback from its
command to its end. The Track plays the items and reports their start and end; producers (the
Tts child, the file loads) fill them through their feeds. Every playback that got past the state
check ends with exactly one `trackEnd`: when it is played out or cut, when it is refused (an
unknown provider, bad base64: after the `error`), and, for whatever is still open, when the call
ends (before its `hangup`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import sys
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from protocol import api
from protocol.codecs import MEDIA_RATE

from .call_context import CallContext
from .call_messages import PlayFailed, WaitInputExpired, now_ms
from .playout import ItemReport, PlaybackEvent, PlayFeed, PlaySpec
from .ref import ActorRef
from .services import MediaLoadError, SynthRequest
from .track import Enqueue, InterruptPlayback, SetPaused
from .tts import CancelSynthesis, PrepareSynthesis, Synthesize, Tts, TtsFailed, TtsMetric


@dataclass(slots=True)
class _Record:
    """One playback from its command to its trackEnd."""

    spec: PlaySpec
    feed: PlayFeed
    auto_hangup: bool
    wait_input_timeout: float | None
    text_bytes: int = 0       # of the tts text it holds (counted against tts_text_bytes)


class Playback:
    handles: ClassVar[tuple[type, ...]] = (PlaybackEvent, TtsMetric, TtsFailed, PlayFailed)

    def __init__(self, call: CallContext) -> None:
        self.call = call
        self._records: dict[int, _Record] = {}            # token -> an open playback
        self._streams: dict[str | None, _Record] = {}     # open streaming tts by playId
        self._current_tts_play_id: str | None = None
        self._loads: set[asyncio.Task[None]] = set()
        self._tokens = itertools.count(1)
        self._text_bytes = 0                              # tts text of the open playbacks

    async def receive(self, message: object) -> None:
        call = self.call
        if isinstance(message, PlaybackEvent):
            self._playback(message)
        elif isinstance(message, TtsMetric):
            call.emit(api.MetricsEvent(timestamp=now_ms(), key=f"ttfb.tts.{message.provider}",
                                       duration=message.ttfb_ms,
                                       data={"playId": message.play_id, "provider": message.provider}))
        elif isinstance(message, TtsFailed):
            call.services.tally.provider_error("tts", message.provider, message.permanent)
            call.emit_error("tts", f"{message.provider}: {message.error}", message.code,
                            track_id=call.settings.server_side_track)
        elif isinstance(message, PlayFailed):
            call.emit_error("play", f"play {message.url}: {message.error}", message.code,
                            track_id=call.settings.server_side_track)

    # --- commands ---------------------------------------------------------------------------

    async def tts(self, cmd: api.Tts) -> None:
        call = self.call
        if call.need_track("tts") is None:
            return
        call_option = call.option.tts if call.option is not None else None
        option = api.merge_options(call_option, cmd.option) or api.SynthesisOption()
        stream = self._streams.get(cmd.play_id) if cmd.streaming else None
        provider = "base64" if cmd.base64 else self._tts_provider(option)
        raw = None
        if provider is not None and cmd.base64:
            try:
                raw = base64.b64decode(cmd.text, validate=True)
            except (binascii.Error, ValueError) as exc:
                self._refuse("tts", f"tts: text is not valid base64: {exc}", 400)
                provider = None
        if provider is None:
            # Refused: the playback still ends, so a bot waiting for its trackEnd is not left hanging.
            if stream is None:
                self._end_unplayed(cmd.play_id, "tts")
            return
        play_id = cmd.play_id
        size = len(cmd.text.encode("utf-8", "replace"))
        if stream is None:
            if play_id is not None and play_id != self._current_tts_play_id and self._tts_active():
                await self.interrupt(graceful=False)
            if self._over_text_limit(size):
                self._end_unplayed(cmd.play_id, "tts")
                return
            stream = self._open(play_id, "tts", auto_hangup=cmd.auto_hangup,
                                wait_input_timeout=cmd.wait_input_timeout,
                                feed=PlayFeed(self._feed_capacity(), text="" if cmd.base64 else cmd.text.strip()))
            if cmd.streaming:
                self._streams[play_id] = stream
            await call.ask_child("track", Enqueue(stream.spec, stream.feed))
        else:
            if self._over_text_limit(size):
                return
            if not cmd.base64:
                stream.feed.append_text(cmd.text)
            stream.auto_hangup = stream.auto_hangup or cmd.auto_hangup
            # The piece that ends a stream is where a bot knows it wants to wait for an answer.
            if cmd.wait_input_timeout is not None:
                stream.wait_input_timeout = cmd.wait_input_timeout
        stream.text_bytes += size
        self._text_bytes += size
        if cmd.streaming and cmd.end_of_stream:
            self._streams.pop(play_id, None)
        self._current_tts_play_id = play_id
        request = SynthRequest(text="" if cmd.base64 else cmd.text, speaker=cmd.speaker or option.speaker,
                               speed=option.speed, volume=option.volume, sample_rate=option.samplerate,
                               options=option.extra or {})
        tts = await self._tts_actor()
        if tts is None:
            stream.feed.finish(error="tts unavailable")
            return
        tts.tell(Synthesize(stream.feed, play_id, request, provider, streaming=cmd.streaming,
                            end_of_stream=cmd.end_of_stream, max_concurrent=option.max_concurrent_tasks or 1,
                            base64_pcm=raw))

    def _over_text_limit(self, size: int) -> bool:
        """Queued items hold their text until they are spoken: without a bound, a client could make
        one call hold any amount of it. True (and the `error` sent) when `size` more would pass it."""
        limit = self.call.settings.tts_text_bytes
        if self._text_bytes + size <= limit:
            return False
        self._refuse("tts", f"tts: {size} bytes of text would pass the {limit}-byte limit of text waiting to be "
                            f"spoken (tts_text_bytes; {self._text_bytes} bytes wait now); not queued", 413)
        return True

    async def play(self, cmd: api.Play) -> None:
        call = self.call
        if call.need_track("play") is None:
            return
        if call.services.load_media is None:
            self._refuse("play", "play: media loading is not configured", 501)
            self._end_unplayed(cmd.url, "play")
            return
        # A clip is decoded whole by the loader, which bounds its size; the feed adds no bound.
        record = self._open(cmd.url, "play", auto_hangup=cmd.auto_hangup, wait_input_timeout=cmd.wait_input_timeout,
                            feed=PlayFeed(sys.maxsize))
        # `play` replaces whatever plays now, as the original replaces its server-side track; that
        # is not an interruption of the caller's making, so no `interruption` event.
        cut = await call.ask_child("track", Enqueue(record.spec, record.feed, replace=True))
        self._after_cut(cut, graceful=False, announce=False)
        load = call.services.load_media
        task = asyncio.get_running_loop().create_task(self._load(load, cmd.url, record.feed), name="play-load")
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)

    async def interrupt(self, graceful: bool) -> None:
        if self.call.child("track") is None:
            return
        cut = await self.call.ask_child("track", InterruptPlayback(graceful))
        self._after_cut(cut, graceful, announce=True)

    async def pause(self, cmd: api.Pause | api.Resume) -> None:
        if self.call.need_track(cmd.command) is not None:
            await self.call.ask_child("track", SetPaused(isinstance(cmd, api.Pause)))

    async def prepare(self) -> None:
        """At answer, when the call names a tts option: start synthesis so it connects before the first `tts`."""
        option = self.call.option.tts if self.call.option is not None else None
        name = ((option.provider if option is not None else None) or self.call.services.default_tts or "").lower()
        if option is not None and name in self.call.services.tts and (tts := await self._tts_actor()) is not None:
            tts.tell(PrepareSynthesis(name))

    async def cancel_loads(self) -> None:
        for task in list(self._loads):
            task.cancel()
        if self._loads:
            await asyncio.gather(*self._loads, return_exceptions=True)

    def end_all(self) -> None:
        """The call is ending: every playback still open ends now, before the hangup."""
        at = time.time()
        for record in list(self._records.values()):
            record.feed.close()
            self._emit_end(record, at, record.feed.taken * 1000 // MEDIA_RATE)
        self._records.clear()
        self._streams.clear()
        self._text_bytes = 0

    def _refuse(self, sender: str, error: str, code: int) -> None:
        """One rule for errors: what concerns a playback (provider, voice, text, source) names the
        server-side track, as the provider's own failures do; the call and its leg name the session."""
        self.call.log.info("command refused", sender=sender, error=error)
        self.call.emit_error(sender, error, code, track_id=self.call.settings.server_side_track)

    # --- records ------------------------------------------------------------------------------

    def _open(self, play_id: str | None, kind: str, *, auto_hangup: bool, wait_input_timeout: float | None,
              feed: PlayFeed) -> _Record:
        record = _Record(PlaySpec(next(self._tokens), play_id, kind), feed, auto_hangup, wait_input_timeout)
        self._records[record.spec.token] = record
        return record

    def _end_unplayed(self, play_id: str | None, kind: str) -> None:
        record = _Record(PlaySpec(next(self._tokens), play_id, kind), PlayFeed(1), False, None)
        self._emit_end(record, time.time(), 0)

    def _emit_end(self, record: _Record, at: float, played_ms: int) -> None:
        call = self.call
        call.emit(api.TrackEndEvent(track_id=call.settings.server_side_track, timestamp=int(at * 1000),
                                    duration=played_ms, ssrc=call.ssrc, play_id=record.spec.play_id))

    def _feed_capacity(self) -> int:
        return int(self.call.settings.playback_buffer_seconds * MEDIA_RATE)

    # --- tts --------------------------------------------------------------------------------

    def _tts_provider(self, option: api.SynthesisOption | None) -> str | None:
        services = self.call.services
        name = (option.provider if option is not None else None) or services.default_tts
        if name is None or name.lower() not in services.tts:
            known = ", ".join(sorted(services.tts)) or "none"
            self._refuse("tts", f"tts: unknown provider {name!r} (available: {known})", 400)
            return None
        return name.lower()

    async def _tts_actor(self) -> ActorRef | None:
        call = self.call
        tts = call.child("tts")
        if tts is not None:
            return tts
        if "tts" in call.child_ids():
            # Restarting after a crash, or given up: the command is refused, the call goes on.
            self._refuse("tts", "tts: the synthesis service is restarting or unavailable", 503)
            return None
        factories = call.services.tts
        option = call.option.tts if call.option is not None else None
        session_id = call.session_id
        return await call.start_service(
            "tts",
            lambda parent: Tts.start(lambda name: factories[name](option), report=parent.tell_quietly,
                                     session_id=session_id, parent=parent, name="tts"))

    def _tts_active(self) -> bool:
        return any(record.spec.kind == "tts" for record in self._records.values())

    # --- play -------------------------------------------------------------------------------

    async def _load(self, load: Any, url: str, feed: PlayFeed) -> None:
        try:
            clip = await load(url)
        except MediaLoadError as exc:
            feed.finish(error=str(exc))
            self.call.actor_ref.tell(PlayFailed(url, str(exc), exc.code))
            return
        except Exception as exc:  # noqa: BLE001 - a loader bug is this play's error, not the call's
            feed.finish(error=repr(exc))
            self.call.actor_ref.tell(PlayFailed(url, f"cannot play: {exc!r}", 500))
            return
        feed.push(clip.pcm)
        feed.finish()

    # --- what the track reports -------------------------------------------------------------

    def _after_cut(self, cut: tuple[ItemReport, ...], graceful: bool, *, announce: bool) -> None:
        call = self.call
        self._streams.clear()
        tts = call.child("tts")
        if tts is not None and any(item.kind == "tts" for item in cut):
            tts.tell(CancelSynthesis())
        current = cut[0] if cut else None
        if announce and current is not None and current.kind == "tts" and current.cut_unfinished:
            call.emit(api.InterruptionEvent(
                track_id=call.settings.server_side_track, timestamp=now_ms(), play_id=current.play_id,
                subtitle=current.text or None, position=current.position,
                total_duration=current.total_ms, current=current.played_ms))

    def _playback(self, ev: PlaybackEvent) -> None:
        call = self.call
        report = ev.item
        record = self._records.get(report.token)
        if record is None:
            return  # ended already (the call is ending)
        if ev.kind == "started":
            call.caller_input()  # a new playback restarts the wait for input
            call.emit(api.TrackStartEvent(track_id=call.settings.server_side_track, timestamp=int(ev.at * 1000),
                                          play_id=report.play_id))
            return
        del self._records[report.token]
        self._text_bytes -= record.text_bytes
        if record.feed.overflowed:
            call.emit_error(report.kind, f"{report.kind}: {record.feed.failed}", 413,
                            track_id=call.settings.server_side_track)
        self._emit_end(record, ev.at, report.played_ms)
        if record.auto_hangup and not ev.interrupted and not call.ended:
            call.hangup("autohangup", "system")
        elif record.wait_input_timeout and not ev.interrupted and not call.ended:
            ended = int(ev.at * 1000)
            call.arm("wait_input", record.wait_input_timeout,
                     WaitInputExpired(ended, round(record.wait_input_timeout * 1000)))
