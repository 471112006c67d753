"""The Call actor: one per session, the owner of its state and the supervisor of its media.

Commands arrive as messages (interrupt and hangup on the system lane), events leave through the
`emit` callable the transport handed in. The Call never touches a socket: its leg arrives as a
`LegIO` and its client connection as `emit`/`close` callables.

A crashed call is not restarted (its CallSupervisor child spec is temporary); whatever ends it, the
application receives exactly one `hangup` event (when it is still connected), then the connection
closes and every child stops in reverse start order.
"""

from __future__ import annotations

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

from .clock import MediaClock
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
from .ref import ChildExited
from .supervisor import ChildSpec, Restart, Supervisor
from .track import LegIO, Track

CALL_TYPES = ("websocket", "sip", "webrtc")


def now_ms() -> int:
    return int(time.time() * 1000)


def iso8601(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class CallSettings:
    server_side_track: str = "serverSideTrack"
    child_shutdown_timeout: float = 2.0


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
        self.log = structlog.get_logger("call").bind(session_id=session_id, call_type=call_type)
        self.state = "new"
        self.option: api.CallOption | None = None
        self.created_at = time.time()
        self.answer_at: float | None = None
        self.track_started_at: float | None = None
        self.client_connected = True
        # The leg's synchronisation source, reported in trackEnd (and used as the RTP SSRC on RTP legs).
        self.ssrc = secrets.randbits(32)

    # --- lifecycle ------------------------------------------------------------------------

    async def on_start(self) -> None:
        await super().on_start()
        self.log.info("call started")

    async def on_stop(self) -> None:
        if self.state != "ended":
            # Stopped from above (gateway drain) without a hangup: still tell the application.
            self._end("shutdown", "system")
        await super().on_stop()
        self.log.info("call stopped")

    async def on_failure(self, error: BaseException) -> None:
        self.log.error("call failed", error=repr(error))
        try:
            if self.state != "ended":
                self.emit(api.ErrorEvent(track_id=self.session_id, timestamp=now_ms(), sender="call",
                                         error=f"internal error: {error}", code=500))
                self._end("internal_error", "system")
        finally:
            self.state = "ended"
            self._close()
            await super().on_failure(error)

    # --- messages ---------------------------------------------------------------------------

    async def on_receive(self, message: object) -> object:
        if isinstance(message, (ClientCommand, UrgentCommand)):
            await self._command(message.command)
            return None
        if isinstance(message, BadCommand):
            self.emit(api.ErrorEvent(track_id=self.session_id, timestamp=now_ms(), sender="command",
                                     error=message.error, code=message.code))
            return None
        if isinstance(message, Kill):
            self._hangup(message.reason, message.initiator)
            return True
        if isinstance(message, ClientGone):
            self.client_connected = False
            self._hangup("client_disconnected", "user")
            return None
        if isinstance(message, Describe):
            return self.describe()
        if isinstance(message, MediaError):
            self.emit(api.ErrorEvent(track_id=message.track_id, timestamp=now_ms(), sender="media",
                                     error=message.error, code=400))
            return None
        if isinstance(message, ChildExited):
            track = self.child("track")
            await super().on_receive(message)
            if track is not None and message.ref is track and message.reason == "failure" and self.state != "ended":
                self.emit(api.ErrorEvent(track_id=self.session_id, timestamp=now_ms(), sender="media",
                                         error=f"media track failed: {message.error}", code=500))
                self._hangup("media_failure", "system")
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
            self._hangup(cmd.reason or "hangup_command", cmd.initiator or "user")
        elif isinstance(cmd, (api.Mute, api.Unmute)):
            await self._mute(cmd.track_id, isinstance(cmd, api.Mute))
        elif isinstance(cmd, (api.Reject, api.Ringing)) and self.call_type == "websocket":
            self._error("command", f"{_wire(cmd)}: a /call session has no incoming call to {_wire(cmd)}", 400)
        elif isinstance(cmd, api.Refer) and self.call_type == "websocket":
            self._error("command", "refer: transfer needs a SIP leg; this is a /call session", 400)
        else:
            self._error("command", f"{_wire(cmd)}: not supported by this version of the gateway", 501)

    async def _answer(self, cmd: api.Invite | api.Accept) -> None:
        name = _wire(cmd)
        if self.state != "new":
            self._error("command", f"{name}: the call is already {self.state}", 400)
            return
        if self.call_type != "websocket":
            self._error("call", f"{name}: the /call/{self.call_type} leg is not available in this version "
                        "of the gateway", 501)
            return
        option = cmd.option
        try:
            info = codec_info(option.codec, option.samplerate)
        except ProtocolError as exc:
            self._error("command", f"{name}: option.codec: {exc}", 400)
            return
        if self.leg is None:
            self._error("call", f"{name}: no media leg for this session", 500)
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
        await self.start_child(spec)
        self.state = "answered"
        self.answer_at = self.track_started_at = time.time()
        ts = now_ms()
        self.emit(api.AnswerEvent(track_id=self.session_id, timestamp=ts, sdp=""))
        self.emit(api.TrackStartEvent(track_id=self.session_id, timestamp=ts))
        self.log.info("call answered", codec=info.name, rate=info.sample_rate)

    async def _mute(self, track_id: str | None, muted: bool) -> None:
        track = self.child("track")
        if track is None:
            self._error("command", f"{'mute' if muted else 'unmute'}: no media track yet", 400)
            return
        if track_id is None:
            await track.ask(SetMute(inbound=muted, outbound=muted), timeout=1.0)
        elif track_id == self.session_id:
            await track.ask(SetMute(inbound=muted), timeout=1.0)
        elif track_id == self.settings.server_side_track:
            await track.ask(SetMute(outbound=muted), timeout=1.0)
        else:
            self._error("command", f"{'mute' if muted else 'unmute'}: unknown trackId {track_id!r} "
                        f"(tracks: {self.session_id!r}, {self.settings.server_side_track!r})", 404)

    # --- ending -----------------------------------------------------------------------------

    def _hangup(self, reason: str, initiator: str) -> None:
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

    # --- helpers ----------------------------------------------------------------------------

    def emit(self, event: Any) -> None:
        if self.client_connected:
            self._emit(event)

    def _error(self, sender: str, error: str, code: int | None) -> None:
        self.log.info("command refused", sender=sender, error=error)
        self.emit(api.ErrorEvent(track_id=self.session_id, timestamp=now_ms(), sender=sender,
                                 error=error, code=code))

    def describe(self) -> CallInfo:
        option = None
        if self.option is not None:
            option = api.option_to_json(self.option)
        return CallInfo(id=self.session_id, call_type=self.call_type, created_at=iso8601(self.created_at),
                        option=option, state=self.state)


def _wire(cmd: Any) -> str:
    return getattr(cmd, "command", type(cmd).__name__.lower())
