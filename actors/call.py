"""The Call actor: one per session, the owner of its state and the supervisor of its media.

Commands arrive as messages (interrupt and hangup on the system lane), events leave through the
`emit` callable the transport handed in. The Call never touches a socket: its leg arrives as a
`LegIO` and its client connection as `emit`/`close` callables.

A crashed call is not restarted (its CallSupervisor child spec is temporary); whatever ends it, the
application receives exactly one `hangup` event (when it is still connected), then the connection
closes and every child stops in reverse start order.

What the call plays, hears and bridges lives in its parts (`Playback`, `Listening`, `Bridges`):
plain objects that run in the Call's task, keep their own state, and handle the messages they
name in `handles`; the Call routes those to them.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import structlog

from protocol import api
from protocol.codecs import codec_info
from protocol.errors import ProtocolError

from .call_bridge import Bridges
from .call_listening import Listening
from .call_messages import ServiceError, now_ms
from .call_playback import Playback
from .clock import MediaClock
from .playout import PlayItem
from .recorder import Recorder, segment_opener
from .services import CallServices
from .messages import (
    BadCommand,
    CallInfo,
    ClientCommand,
    ClientGone,
    Describe,
    GetTrackStats,
    Kill,
    MediaError,
    SetMute,
    UrgentCommand,
)
from .ref import ActorRef, ChildExited
from .supervisor import Backoff, ChildSpec, Restart, Supervisor
from .track import LegIO, Mix, Subscribe, Track

__all__ = ["CALL_TYPES", "Call", "CallSettings", "iso8601", "now_ms"]

CALL_TYPES = ("websocket", "sip", "webrtc")


def iso8601(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class CallSettings:
    server_side_track: str = "serverSideTrack"
    child_shutdown_timeout: float = 2.0
    provider_restarts: int = 3          # ASR/TTS restarts allowed within provider_period
    provider_period: float = 30.0
    backoff: Backoff = Backoff(initial=0.2, factor=2.0, maximum=5.0)


class Call(Supervisor):
    def __init__(
        self,
        session_id: str,
        call_type: str,
        *,
        emit: Callable[[Any], None],
        close: Callable[[], None],
        clock: MediaClock,
        leg: LegIO | None = None,
        settings: CallSettings = CallSettings(),
        services: CallServices = CallServices(),
    ) -> None:
        super().__init__(children=())
        if call_type not in CALL_TYPES:
            raise ValueError(f"unknown call type {call_type!r}")
        self.session_id = session_id
        self.call_type = call_type
        self._emit = emit
        self._close = close
        self.clock = clock
        self.leg = leg
        self.settings = settings
        self.services = services
        self._media_pass: Any = None
        # By purpose (wait_input, inactivity); the Supervisor keeps its restart backoffs in `_timers`.
        self._timeouts: dict[str, asyncio.TimerHandle] = {}
        self.log = structlog.get_logger("call").bind(session_id=session_id, call_type=call_type)
        self.state = "new"
        self.option: api.CallOption | None = None
        self.created_at = time.time()
        self.answer_at: float | None = None
        self.track_started_at: float | None = None
        self.client_connected = True
        # The leg's synchronisation source, reported in trackEnd (and used as the RTP SSRC on RTP legs).
        self.ssrc = secrets.randbits(32)
        self.playback = Playback(self)
        self.listening = Listening(self)
        self.bridges = Bridges(self)
        self._parts = (self.playback, self.listening, self.bridges)

    # --- lifecycle ------------------------------------------------------------------------

    async def on_start(self) -> None:
        await super().on_start()
        self.log.info("call started")

    async def on_stop(self) -> None:
        if self.state != "ended":
            # Stopped from above (gateway drain) without a hangup: still tell the application.
            self._end("shutdown", "system")
        await self._release()
        await super().on_stop()
        self.log.info("call stopped")

    async def on_failure(self, error: BaseException) -> None:
        self.log.error("call failed", error=repr(error))
        try:
            if self.state != "ended":
                self.emit_error("call", f"internal error: {error}", 500)
                self._end("internal_error", "system")
        finally:
            self.state = "ended"
            self._close()
            await self._release()
            await super().on_failure(error)

    async def _release(self) -> None:
        """Stop what runs beside the children: media loads, the media pass, timers, the VAD."""
        await self.playback.cancel_loads()
        await self._close_media_pass()
        for handle in self._timeouts.values():
            handle.cancel()
        self._timeouts.clear()
        self.listening.release()

    # --- messages ---------------------------------------------------------------------------

    async def on_receive(self, message: object) -> object:
        for part in self._parts:
            if isinstance(message, part.handles):
                await part.receive(message)
                return None
        if isinstance(message, (ClientCommand, UrgentCommand)):
            await self._command(message.command)
            return None
        if isinstance(message, BadCommand):
            self.emit_error("command", message.error, message.code)
            return None
        if isinstance(message, Kill):
            self.hangup(message.reason, message.initiator)
            return True
        if isinstance(message, ClientGone):
            self.client_connected = False
            self.hangup("client_disconnected", "user")
            return None
        if isinstance(message, Describe):
            return self.describe()
        if isinstance(message, MediaError):
            self.emit_error("media", message.error, 400, track_id=message.track_id)
            return None
        if isinstance(message, ChildExited):
            track = self.child("track")
            await super().on_receive(message)
            if track is not None and message.ref is track and message.reason == "failure" and self.state != "ended":
                self.emit_error("media", f"media track failed: {message.error}", 500)
                self.hangup("media_failure", "system")
            return None
        if isinstance(message, ServiceError):
            self.emit_error(message.sender, message.error, message.code)
            return None
        if isinstance(message, GetTrackStats):
            track = self.child("track")
            return None if track is None else await track.ask(message, timeout=1.0)
        return await super().on_receive(message)

    async def _command(self, cmd: Any) -> None:
        if self.state == "ended":
            return
        if isinstance(cmd, (api.Invite, api.Accept)):
            await self._answer(cmd)
        elif isinstance(cmd, api.Hangup):
            self.hangup(cmd.reason or "hangup_command", cmd.initiator or "user")
        elif isinstance(cmd, (api.Mute, api.Unmute)):
            await self._mute(cmd.track_id, isinstance(cmd, api.Mute))
        elif isinstance(cmd, api.Tts):
            await self.playback.tts(cmd)
        elif isinstance(cmd, api.Play):
            await self.playback.play(cmd)
        elif isinstance(cmd, api.Interrupt):
            await self.playback.interrupt(cmd.graceful)
        elif isinstance(cmd, (api.Pause, api.Resume)):
            await self.playback.pause(cmd)
        elif isinstance(cmd, api.Bridge):
            await self.bridges.bridge(cmd.target_session_id)
        elif isinstance(cmd, api.Unbridge):
            await self.bridges.unbridge(cmd.target_session_id)
        elif isinstance(cmd, api.History):
            self.emit(api.AddHistoryEvent(timestamp=now_ms(), speaker=cmd.speaker, text=cmd.text))
        elif isinstance(cmd, api.Custom):
            self.emit(api.CustomEvent(timestamp=now_ms(), sender=cmd.sender, data=cmd.data))
        elif isinstance(cmd, (api.Reject, api.Ringing)) and self.call_type == "websocket":
            self.refuse("command", f"{_wire(cmd)}: a /call session has no incoming call to {_wire(cmd)}", 400)
        elif isinstance(cmd, api.Refer) and self.call_type == "websocket":
            self.refuse("command", "refer: transfer needs a SIP leg; this is a /call session", 400)
        else:
            self.refuse("command", f"{_wire(cmd)}: not supported by this version of the gateway", 501)

    # --- answer: the track and what hangs on it ----------------------------------------------

    async def _answer(self, cmd: api.Invite | api.Accept) -> None:
        name = _wire(cmd)
        if self.state != "new":
            self.refuse("command", f"{name}: the call is already {self.state}", 400)
            return
        if self.call_type != "websocket":
            self.refuse("call", f"{name}: the /call/{self.call_type} leg is not available in this version "
                        "of the gateway", 501)
            return
        option = cmd.option
        try:
            info = codec_info(option.codec, option.samplerate)
        except ProtocolError as exc:
            self.refuse("command", f"{name}: option.codec: {exc}", 400)
            return
        if self.leg is None:
            self.refuse("call", f"{name}: no media leg for this session", 500)
            return
        self.option = option
        leg = self.leg
        spec = ChildSpec(
            id="track",
            start=lambda parent: Track.start(self.session_id, info, leg, self.clock,
                                             report=parent.tell, parent=parent, name="track"),
            restart=Restart.TEMPORARY,
            shutdown=self.settings.child_shutdown_timeout,
        )
        track = await self.start_child(spec)
        self.state = "answered"
        self.answer_at = self.track_started_at = time.time()
        ts = now_ms()
        self.emit(api.AnswerEvent(track_id=self.session_id, timestamp=ts, sdp=""))
        self.emit(api.TrackStartEvent(track_id=self.session_id, timestamp=ts))
        self.log.info("call answered", codec=info.name, rate=info.sample_rate)
        if option.recorder is not None:
            await self._start_recorder(track, option.recorder)
        if option.media_pass is not None:
            await self._start_media_pass(track, option.media_pass)
        await self.listening.start(track, option)

    async def _mute(self, track_id: str | None, muted: bool) -> None:
        track = self.child("track")
        if track is None:
            self.refuse("command", f"{'mute' if muted else 'unmute'}: no media track yet", 400)
            return
        if track_id is None:
            await track.ask(SetMute(inbound=muted, outbound=muted), timeout=1.0)
        elif track_id == self.session_id:
            await track.ask(SetMute(inbound=muted), timeout=1.0)
        elif track_id == self.settings.server_side_track:
            await track.ask(SetMute(outbound=muted), timeout=1.0)
        else:
            self.refuse("command", f"{'mute' if muted else 'unmute'}: unknown trackId {track_id!r} "
                        f"(tracks: {self.session_id!r}, {self.settings.server_side_track!r})", 404)

    # --- recording and media pass -----------------------------------------------------------

    async def _start_recorder(self, track: ActorRef, option: api.RecorderOption) -> None:
        services = self.services
        if services.open_recording is None or services.resolve_recording is None:
            self.refuse("recorder", "recorder: recording is not configured on this gateway", 501)
            return
        try:
            path = services.resolve_recording(option.recorder_file, self.session_id)
        except ValueError as exc:
            self.refuse("recorder", f"recorder: {exc}", 400)
            return
        inbound = await track.ask(Subscribe("recorder", "in", capacity=50), timeout=1.0)
        outbound = await track.ask(Subscribe("recorder", "out", capacity=50), timeout=1.0)
        open_sink = segment_opener(services.open_recording, path, option.samplerate)
        spec = self.service_spec(
            "recorder", Restart.TRANSIENT,
            lambda parent: Recorder.start(inbound, outbound, open_sink, samplerate=option.samplerate,
                                          ptime_ms=option.ptime, parent=parent, name="recorder"))
        await self.start_child(spec)
        self.log.info("recording", path=path)

    async def _start_media_pass(self, track: ActorRef, option: api.MediaPassOption) -> None:
        if self.services.media_pass is None:
            self.refuse("mediaPass", "mediaPass: not configured on this gateway", 501)
            return
        tap = await track.ask(Subscribe("mediaPass", "in", capacity=50), timeout=1.0)
        item = PlayItem("mediaPass", "pass")
        ref = self.actor_ref

        def on_error(text: str) -> None:
            if ref.is_alive():
                ref.tell(ServiceError("mediaPass", text, 502))

        try:
            link = self.services.media_pass(option, tap, item, on_error)
        except (ProtocolError, ValueError) as exc:
            self.refuse("mediaPass", f"mediaPass: {exc}", 400)
            return
        await track.ask(Mix(item), timeout=1.0)
        link.start()
        self._media_pass = link

    async def _close_media_pass(self) -> None:
        link, self._media_pass = self._media_pass, None
        if link is not None:
            try:
                await asyncio.wait_for(link.close(), self.settings.child_shutdown_timeout)
            except Exception as exc:  # noqa: BLE001 - cleanup goes on whatever the link does
                self.log.warning("media pass close failed", error=repr(exc))

    async def on_child_gave_up(self, spec: ChildSpec, error: BaseException | None) -> None:
        if spec.id in ("tts", "recorder", "asr"):
            self.emit_error(spec.id, f"{spec.id}: gave up after repeated failures: {error}", 503,
                            track_id=self.settings.server_side_track)
            return
        await super().on_child_gave_up(spec, error)

    def service_spec(self, id: str, restart: Restart, start: Callable[[ActorRef], ActorRef]) -> ChildSpec:
        """A child that serves the call (recorder, ASR, TTS): restarted with backoff up to its own
        limit, then given up without taking the call down."""
        return ChildSpec(
            id=id,
            start=start,
            restart=restart,
            shutdown=self.settings.child_shutdown_timeout,
            backoff=self.settings.backoff,
            escalate=False,
            intensity=self.settings.provider_restarts,
            period=self.settings.provider_period,
        )

    # --- ending -----------------------------------------------------------------------------

    def hangup(self, reason: str, initiator: str) -> None:
        if self.state == "ended":
            return
        self._end(reason, initiator)
        self.stop()

    def _end(self, reason: str, initiator: str) -> None:
        """Emit the closing events once; children are stopped by the supervisor's on_stop."""
        self.state = "ended"
        hangup_at = time.time()
        ts = int(hangup_at * 1000)
        if self.track_started_at is not None:
            self.emit(api.TrackEndEvent(track_id=self.session_id, timestamp=ts, ssrc=self.ssrc,
                                        duration=int((hangup_at - self.track_started_at) * 1000)))
        self.emit(api.HangupEvent(
            track_id=self.session_id,
            timestamp=ts,
            reason=reason,
            initiator=initiator,
            start_time=iso8601(self.created_at),
            hangup_time=iso8601(hangup_at),
            answer_time=iso8601(self.answer_at) if self.answer_at is not None else None,
        ))
        self.log.info("call ended", reason=reason, initiator=initiator)
        self._close()

    # --- helpers for the call and its parts --------------------------------------------------

    def emit(self, event: Any) -> None:
        if self.client_connected:
            self._emit(event)

    def emit_error(self, sender: str, error: str, code: int | None, *, track_id: str | None = None) -> None:
        self.emit(api.ErrorEvent(track_id=self.session_id if track_id is None else track_id, timestamp=now_ms(),
                                 sender=sender, error=error, code=code))

    def refuse(self, sender: str, error: str, code: int | None) -> None:
        """Turn down a command (or an option of one): logged, and an `error` event for the application."""
        self.log.info("command refused", sender=sender, error=error)
        self.emit_error(sender, error, code)

    def need_track(self, name: str) -> ActorRef | None:
        track = self.child("track")
        if track is None:
            self.refuse("command", f"{name}: the call is not answered yet", 400)
        return track

    def arm(self, key: str, delay: float, message: object) -> None:
        """Tell this call `message` after `delay` seconds, replacing the timer of the same key."""
        self.disarm(key)
        ref = self.actor_ref
        self._timeouts[key] = asyncio.get_running_loop().call_later(
            delay, lambda: ref.tell(message) if ref.is_alive() else None)

    def disarm(self, key: str) -> None:
        handle = self._timeouts.pop(key, None)
        if handle is not None:
            handle.cancel()

    def timer_fired(self, key: str) -> None:
        """Forget the timer whose message is being handled; one armed since then stays armed."""
        self._timeouts.pop(key, None)

    def describe(self) -> CallInfo:
        option = None
        if self.option is not None:
            option = api.option_to_json(self.option)
        return CallInfo(id=self.session_id, call_type=self.call_type, created_at=iso8601(self.created_at),
                        option=option, state=self.state)


def _wire(cmd: Any) -> str:
    return getattr(cmd, "command", type(cmd).__name__.lower())
