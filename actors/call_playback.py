"""What a Call plays to its caller: `tts`, `play`, `interrupt`, `pause`/`resume`, and the events of
playback (trackStart/trackEnd, autoHangup, the start of a waitInputTimeout).

Part of the Call actor: it runs in the Call's task and holds what is queued, playing and loading;
the Track plays the items, the Tts child fills them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any, ClassVar

from protocol import api

from .call_context import CallContext
from .call_messages import PlayFailed, WaitInputExpired, now_ms
from .playout import PlaybackEvent, PlayItem
from .ref import ActorRef
from .services import MediaLoadError, SynthRequest
from .track import Enqueue, InterruptPlayback, SetPaused
from .tts import CancelSynthesis, Synthesize, Tts, TtsFailed, TtsMetric


class Playback:
    handles: ClassVar[tuple[type, ...]] = (PlaybackEvent, TtsMetric, TtsFailed, PlayFailed)

    def __init__(self, call: CallContext) -> None:
        self.call = call
        self._playing: dict[int, PlayItem] = {}      # id(item) -> item, queued or playing
        self._streams: dict[str | None, PlayItem] = {}  # open streaming tts items by playId
        self._current_tts_play_id: str | None = None
        self._loads: set[asyncio.Task[None]] = set()

    async def receive(self, message: object) -> None:
        call = self.call
        if isinstance(message, PlaybackEvent):
            self._playback(message)
        elif isinstance(message, TtsMetric):
            call.emit(api.MetricsEvent(timestamp=now_ms(), key=f"ttfb.tts.{message.provider}",
                                       duration=message.ttfb_ms,
                                       data={"playId": message.play_id, "provider": message.provider}))
        elif isinstance(message, TtsFailed):
            call.emit_error("tts", f"{message.provider}: {message.error}", message.code,
                            track_id=call.settings.server_side_track)
        elif isinstance(message, PlayFailed):
            call.emit_error("play", f"play {message.url}: {message.error}", message.code,
                            track_id=call.settings.server_side_track)

    # --- commands ---------------------------------------------------------------------------

    async def tts(self, cmd: api.Tts) -> None:
        call = self.call
        track = call.need_track("tts")
        if track is None:
            return
        call_option = call.option.tts if call.option is not None else None
        option = api.merge_options(call_option, cmd.option) or api.SynthesisOption()
        provider = "base64" if cmd.base64 else self._tts_provider(option)
        if provider is None:
            return
        raw = None
        if cmd.base64:
            try:
                raw = base64.b64decode(cmd.text, validate=True)
            except (binascii.Error, ValueError) as exc:
                call.refuse("tts", f"tts: text is not valid base64: {exc}", 400)
                return
        play_id = cmd.play_id
        item = self._streams.get(play_id) if cmd.streaming else None
        if item is None:
            if play_id is not None and play_id != self._current_tts_play_id and self._tts_active():
                await self.interrupt(graceful=False)
            item = PlayItem(play_id, "tts", text="" if cmd.base64 else cmd.text, auto_hangup=cmd.auto_hangup,
                            wait_input_timeout=cmd.wait_input_timeout)
            self._playing[id(item)] = item
            if cmd.streaming:
                self._streams[play_id] = item
            await call.ask_child("track", Enqueue(item))
        else:
            if not cmd.base64:
                item.append_text(cmd.text)
            item.auto_hangup = item.auto_hangup or cmd.auto_hangup
        if cmd.streaming and cmd.end_of_stream:
            self._streams.pop(play_id, None)
        self._current_tts_play_id = play_id
        request = SynthRequest(text="" if cmd.base64 else cmd.text, speaker=cmd.speaker or option.speaker,
                               speed=option.speed, volume=option.volume, sample_rate=option.samplerate,
                               options=option.extra or {})
        tts = await self._tts_actor()
        if tts is None:
            item.finish(error="tts unavailable")
            return
        tts.tell(Synthesize(item, request, provider, streaming=cmd.streaming, end_of_stream=cmd.end_of_stream,
                            max_concurrent=option.max_concurrent_tasks or 1, base64_pcm=raw))

    async def play(self, cmd: api.Play) -> None:
        call = self.call
        track = call.need_track("play")
        if track is None:
            return
        if call.services.load_media is None:
            call.refuse("play", "play: media loading is not configured", 501)
            return
        item = PlayItem(cmd.url, "play", auto_hangup=cmd.auto_hangup, wait_input_timeout=cmd.wait_input_timeout)
        self._playing[id(item)] = item
        # `play` replaces whatever plays now, as the original replaces its server-side track.
        cut = await call.ask_child("track", Enqueue(item, replace=True))
        await self._after_cut(cut, graceful=False)
        load = call.services.load_media
        task = asyncio.get_running_loop().create_task(self._load(load, cmd.url, item), name="play-load")
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)

    async def interrupt(self, graceful: bool) -> None:
        if self.call.child("track") is None:
            return
        cut = await self.call.ask_child("track", InterruptPlayback(graceful))
        await self._after_cut(cut, graceful)

    async def pause(self, cmd: api.Pause | api.Resume) -> None:
        if self.call.need_track(cmd.command) is not None:
            await self.call.ask_child("track", SetPaused(isinstance(cmd, api.Pause)))

    async def cancel_loads(self) -> None:
        for task in list(self._loads):
            task.cancel()
        if self._loads:
            await asyncio.gather(*self._loads, return_exceptions=True)

    # --- tts --------------------------------------------------------------------------------

    def _tts_provider(self, option: api.SynthesisOption | None) -> str | None:
        services = self.call.services
        name = (option.provider if option is not None else None) or services.default_tts
        if name is None or name.lower() not in services.tts:
            known = ", ".join(sorted(services.tts)) or "none"
            self.call.refuse("tts", f"tts: unknown provider {name!r} (available: {known})", 400)
            return None
        return name.lower()

    async def _tts_actor(self) -> ActorRef | None:
        call = self.call
        tts = call.child("tts")
        if tts is not None:
            return tts
        if "tts" in call.child_ids():
            # Restarting after a crash, or given up: the command is refused, the call goes on.
            call.refuse("tts", "tts: the synthesis service is restarting or unavailable", 503)
            return None
        factories = call.services.tts
        option = call.option.tts if call.option is not None else None
        session_id = call.session_id
        return await call.start_service(
            "tts",
            lambda parent: Tts.start(lambda name: factories[name](option), report=parent.tell,
                                     session_id=session_id, parent=parent, name="tts"))

    def _tts_active(self) -> bool:
        return any(item.kind == "tts" for item in self._playing.values())

    # --- play -------------------------------------------------------------------------------

    async def _load(self, load: Any, url: str, item: PlayItem) -> None:
        try:
            clip = await load(url)
        except MediaLoadError as exc:
            item.finish(error=str(exc))
            self.call.actor_ref.tell(PlayFailed(url, str(exc), exc.code))
            return
        except Exception as exc:  # noqa: BLE001 - a loader bug is this play's error, not the call's
            item.finish(error=repr(exc))
            self.call.actor_ref.tell(PlayFailed(url, f"cannot play: {exc!r}", 500))
            return
        item.append(clip.pcm)
        item.finish()

    # --- what the track reports -------------------------------------------------------------

    async def _after_cut(self, cut: list[PlayItem], graceful: bool) -> None:
        call = self.call
        self._streams.clear()
        tts = call.child("tts")
        if tts is not None and any(item.kind == "tts" for item in cut):
            tts.tell(CancelSynthesis())
        current = cut[0] if cut else None
        if current is not None and current.kind == "tts" and current.cut_unfinished:
            call.emit(api.InterruptionEvent(
                track_id=call.settings.server_side_track, timestamp=now_ms(), play_id=current.play_id,
                subtitle=current.text or None, position=current.word_position(),
                total_duration=current.total_ms, current=current.played_ms))

    def _playback(self, ev: PlaybackEvent) -> None:
        call = self.call
        item = ev.item
        track_id = call.settings.server_side_track
        if ev.kind == "started":
            call.caller_input()  # a new playback restarts the wait for input
            call.emit(api.TrackStartEvent(track_id=track_id, timestamp=int(ev.at * 1000), play_id=item.play_id))
            return
        self._playing.pop(id(item), None)
        call.emit(api.TrackEndEvent(track_id=track_id, timestamp=int(ev.at * 1000), duration=item.played_ms,
                                    ssrc=call.ssrc, play_id=item.play_id))
        if item.auto_hangup and not ev.interrupted and not call.ended:
            call.hangup("autohangup", "system")
        elif item.wait_input_timeout and not ev.interrupted and not call.ended:
            ended = int(ev.at * 1000)
            call.arm("wait_input", item.wait_input_timeout,
                     WaitInputExpired(ended, int(item.wait_input_timeout * 1000)))
