"""The Call actor: one per session, the owner of its state and the supervisor of its media.

Three things meet in a call, each behind its own seam:

- its **leg** (actors/leg.py), made by the factory the transport handed in: the Call asks it to
  dial, ring, answer, reject, transfer and hang up, and hears from it (answered, rejected, remote
  hangup, DTMF, hold) through `Leg*` messages. The Call has no branch on the kind of leg.
- its **state**, a transition table in protocol/callstate.py: every command and every leg event is
  checked against it first; what is not valid in the current state is refused with an `error`
  event and changes nothing.
- its **application connection**, attached and detached by message. A call can exist before its
  application connects (an incoming SIP call is announced by a webhook) and must decide what a
  detach means: before an incoming call is answered it is declined (603), otherwise it is hung up.
  An incoming call that nobody accepts within `accept_timeout` is answered 408. Events emitted
  while no application is attached wait in a bounded backlog and are delivered on attach.

A crashed call is not restarted (its CallSupervisor child spec is temporary); whatever ends it, the
application receives exactly one `hangup` event (when it is still connected), then the connection
closes, the leg is hung up and closed, and every child stops in reverse start order.

What the call plays, hears and bridges lives in its parts (`Playback`, `Listening`, `Bridges`):
plain objects that run in the Call's task, see it through `CallContext`, and handle the messages
they name in `handles`; the Call routes those to them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import structlog

from protocol import api
from protocol.errors import ProtocolError
from protocol.callstate import CallInput, CallState, CallStateMachine, Direction, InvalidTransition, attendee, command_input

from .call_bridge import Bridges
from .call_context import ChildUnavailable
from .call_listening import Listening
from .call_messages import AcceptTimeout, Dtmf, HandshakeTimeout, ServiceError, now_ms
from .call_supervisor import Admit, AdmissionRefused
from .call_playback import Playback
from .clock import MediaClock
from .leg import (
    Leg,
    LegAnswered,
    LegContext,
    LegDtmf,
    LegFactory,
    LegFailed,
    LegHangup,
    LegHold,
    LegMedia,
    LegOffer,
    LegRefused,
    LegRejected,
    LegRinging,
    LegTransferBridged,
    LegTransferFailed,
    LegTransferProgress,
    LegTransferRequest,
    LegTransferred,
)
from .messages import (
    AppConnection,
    Attach,
    AttachRefused,
    BadCommand,
    CallInfo,
    ClientCommand,
    Describe,
    Detach,
    Drained,
    GetTrackStats,
    Kill,
    MediaError,
    SetMute,
    UrgentCommand,
)
from .playout import PlayFeed, PlaySpec
from .recorder import Recorder, segment_opener
from .ref import ActorDeadError, ActorRef, ChildExited
from .services import CallServices, ServiceMetric
from .supervisor import Backoff, ChildSpec, Restart, Supervisor
from .track import Mix, Subscribe, Track, Unsubscribe

__all__ = ["Call", "CallSettings", "iso8601", "now_ms"]

I = CallInput
MEDIA_PASS_AHEAD = 16000                # samples (1 s at the media rate) a mediaPass peer may run ahead

# A call's children, declared here and nowhere else: id -> restart type. The track is the call's
# media (never restarted: losing it ends the call, media_failure); the services restart with
# backoff within `provider_restarts` per `provider_period` and are then given up with an `error`
# event, never taking the call down. Start order: the track at answer (or early media), the
# recorder and ASR right after it, TTS on the first `tts`.
CHILDREN: dict[str, Restart] = {
    "track": Restart.TEMPORARY,
    "recorder": Restart.TRANSIENT,      # a restart continues in the next segment file
    "asr": Restart.TRANSIENT,           # a permanent provider error stops it for good
    "tts": Restart.PERMANENT,
    "mediaPass": Restart.TRANSIENT,     # a lost connection is made again; a refused one stays down
}
# Children with a restart budget of their own (settings attributes: restarts, period).
OWN_LIMITS = {"mediaPass": ("media_pass_restarts", "media_pass_period")}
LEG_EVENTS = (LegRinging, LegAnswered, LegRejected, LegHangup, LegFailed, LegDtmf, LegHold,
              LegTransferRequest, LegTransferred, LegTransferFailed, LegTransferProgress, LegTransferBridged)


def iso8601(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class CallSettings:
    server_side_track: str = "serverSideTrack"
    child_shutdown_timeout: float = 2.0
    provider_restarts: int = 3          # ASR/TTS restarts allowed within provider_period
    provider_period: float = 30.0
    backoff: Backoff = Backoff(initial=0.2, factor=2.0, maximum=5.0)
    accept_timeout: float = 50.0        # an incoming call nobody accepts is answered 408
    detached_backlog: int = 256         # events kept for an application that has not attached yet
    leg_timeout: float = 5.0            # how long one leg operation (dial, answer, BYE) may take
    playback_buffer_seconds: float = 300.0  # synthesised audio a tts may hold ahead of playback
    tts_text_bytes: int = 16 << 20          # tts text a call holds that is not spoken yet
    handshake_timeout: float = 30.0     # a connection that places no call (invite/accept) is closed
    media_pass_restarts: int = 10       # mediaPass connections made again within media_pass_period
    media_pass_period: float = 60.0


class Call(Supervisor):
    def __init__(
        self,
        session_id: str,
        *,
        leg: LegFactory,
        clock: MediaClock,
        direction: Direction = Direction.OUTBOUND,
        offer: LegOffer | None = None,
        settings: CallSettings = CallSettings(),
        services: CallServices = CallServices(),
        app: AppConnection | None = None,
        admitted: bool = True,
    ) -> None:
        super().__init__(children=())
        self.session_id = session_id
        self._leg_factory = leg
        self.leg: Leg | None = None
        self.clock = clock
        self.machine = CallStateMachine(direction)
        self.offer = offer
        self.settings = settings
        self.services = services
        self._app = app
        self._backlog: deque[Any] = deque(maxlen=max(1, settings.detached_backlog))
        self.backlog_dropped = 0
        self.log = structlog.get_logger("call").bind(session_id=session_id)
        self.option: api.CallOption | None = None
        self.created_at = time.time()
        self.ringing_at: float | None = None
        self.answer_at: float | None = None
        self.track_started_at: float | None = None
        # How the leg is to be left when the call ends: "hangup" (BYE/CANCEL, as its state needs)
        # unless the leg ended the call itself or was already rejected.
        self._leg_done = False
        self._hangup_headers: Mapping[str, str] | None = None
        self._ringtone = False          # a `ringing` ringtone plays (early media) until the answer
        self._ringing_recorder: api.RecorderOption | None = None
        self._moh = False               # a `refer` music on hold plays until the transfer's outcome
        self._pending_input: CallInput | None = None
        self._silenced = False          # set once the hangup event is out
        # False: started for a connection that has not placed a call yet; the call takes its slot
        # under max_calls from its supervisor when it is placed (Admit), so idle sockets hold none.
        self._admitted = admitted
        self._close_code = 1000
        # The leg's synchronisation source, reported in trackEnd (and used as the RTP SSRC on RTP legs).
        self.ssrc = secrets.randbits(32)
        self.playback = Playback(self)
        self.listening = Listening(self)
        self.bridges = Bridges(self)
        self._parts = (self.playback, self.listening, self.bridges)

    # --- what the parts see (CallContext) ---------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.machine.ended

    @property
    def answered(self) -> bool:
        return self.machine.answered

    @property
    def state(self) -> str:
        return self.machine.state.value

    @property
    def attached(self) -> bool:
        return self._app is not None

    def caller_input(self) -> None:
        self.listening.caller_input()

    # --- lifecycle ------------------------------------------------------------------------

    async def on_start(self) -> None:
        await super().on_start()
        ref = self.actor_ref

        def report(event: object) -> None:
            if ref.is_alive():
                try:
                    ref.tell(event)
                except ActorDeadError:
                    pass

        self.leg = self._leg_factory(LegContext(self.session_id, report))
        self.log = self.log.bind(call_type=self.leg.kind)
        if self.offer is not None:
            self.emit(api.IncomingEvent(track_id=self.session_id, timestamp=now_ms(), caller=self.offer.caller,
                                        callee=self.offer.callee, sdp=self.offer.sdp))
        if self.machine.direction is Direction.INBOUND:
            self.arm("accept", self.settings.accept_timeout, AcceptTimeout())
        elif not self._admitted:
            self.arm("handshake", self.settings.handshake_timeout, HandshakeTimeout())
        self.log.info("call started", direction=self.machine.direction.value)

    async def on_stop(self) -> None:
        if not self.ended:
            # Stopped from above (gateway drain) without a hangup: still tell the application.
            self._end("shutdown", "system", I.KILL)
        await self._release()
        await super().on_stop()
        self._release_recordings()
        await self._close_leg()
        self._close_app()
        self.log.info("call stopped")

    async def on_failure(self, error: BaseException) -> None:
        self.log.error("call failed", error=repr(error))
        try:
            if not self.ended:
                self.emit_error("call", f"internal error: {error}", 500)
                self._end("internal_error", "system", I.KILL)
        finally:
            await self._release()
            await super().on_failure(error)
            self._release_recordings()
            await self._close_leg()
            self._close_app()

    async def _release(self) -> None:
        """Stop what runs beside the children: media loads, the media pass, the VAD; hang the leg up."""
        await self._tally_playout()
        await self.playback.cancel_loads()
        self.listening.release()
        leg = self.leg
        if leg is not None and not self._leg_done:
            self._leg_done = True
            await self._leg_op("hangup", leg.hangup(self._end_reason, self._hangup_headers), quiet=True)

    async def _close_leg(self) -> None:
        leg, self.leg = self.leg, None
        if leg is not None:
            await self._leg_op("close", leg.close(), quiet=True)

    async def _leg_op(self, what: str, op: Any, *, quiet: bool = False) -> Any:
        """Await a leg operation within the leg timeout. Cleanup (quiet) only logs a failure;
        otherwise LegRefused passes up as a refusal and anything else is the leg's failure."""
        try:
            return await asyncio.wait_for(op, self.settings.leg_timeout)
        except LegRefused:
            if quiet:
                return None
            raise
        except Exception as exc:  # noqa: BLE001 - a leg's defect ends its call, not the process
            self.log.warning("leg operation failed", op=what, error=repr(exc))
            if quiet:
                return None
            raise _LegBroken(f"{what}: {exc!r}") from exc

    # --- messages ---------------------------------------------------------------------------

    async def on_receive(self, message: object) -> object:
        try:
            return await self._dispatch(message)
        except ChildUnavailable as exc:
            self._child_unavailable(exc)
            return None
        except _LegBroken as exc:
            if not self.ended:
                self.emit_error("leg", f"leg failed: {exc}", 500)
                self.hangup("media_failure", "system")
            return None

    async def _dispatch(self, message: object) -> object:
        for part in self._parts:
            if isinstance(message, part.handles):
                await part.receive(message)
                return None
        if isinstance(message, (ClientCommand, UrgentCommand)):
            await self._command(message.command)
            return None
        if isinstance(message, LEG_EVENTS):
            await self._leg_event(message)
            return None
        if isinstance(message, BadCommand):
            self.emit_error("command", message.error, message.code)
            return None
        if isinstance(message, Attach):
            self._attach(message.connection)
            return None
        if isinstance(message, Detach):
            await self._detach()
            return None
        if isinstance(message, Kill):
            self._end_by(I.KILL, message.reason, message.initiator)
            return True
        if isinstance(message, AcceptTimeout):
            await self._accept_timeout()
            return None
        if isinstance(message, HandshakeTimeout):
            if self.machine.state is CallState.NEW:
                self._refuse_call(408, 1008, f"no invite or accept within {self.settings.handshake_timeout:g} s; "
                                  "the connection is closed")
            return None
        if isinstance(message, Describe):
            return self.describe()
        if isinstance(message, MediaError):
            self.emit_error("media", message.error, 400, track_id=message.track_id)
            return None
        if isinstance(message, ChildExited):
            track = self.child("track")
            await super().on_receive(message)
            if track is not None and message.ref is track and not self.ended:
                # The track is the call's media: a call that lost it, however, cannot go on.
                why = f"failed: {message.error}" if message.reason == "failure" else f"stopped ({message.reason})"
                self.emit_error("media", f"media track {why}", 500)
                self.hangup("media_failure", "system")
            return None
        if isinstance(message, ServiceError):
            self.emit_error(message.sender, message.error, message.code)
            return None
        if isinstance(message, ServiceMetric):
            self.emit(api.MetricsEvent(timestamp=now_ms(), key=message.key, duration=message.duration,
                                       data=dict(message.data)))
            return None
        if isinstance(message, GetTrackStats):
            return None if self.child("track") is None else await self.ask_child("track", message)
        if isinstance(message, Drained):
            return None
        return await super().on_receive(message)

    def _child_unavailable(self, exc: ChildUnavailable) -> None:
        """The one rule for a failed ask: the track is the call's media, so losing it ends the
        call (media_failure); any other child only costs the command that needed it."""
        if self.ended:
            return
        if exc.child == "track":
            self.emit_error("media", f"media track unavailable: {exc.cause}", 500)
            self.hangup("media_failure", "system")
        else:
            self.refuse(exc.child, f"{exc.child}: unavailable ({exc.cause})", 503)

    # --- the application connection -----------------------------------------------------------

    def _attach(self, connection: AppConnection) -> None:
        if self._app is not None:
            raise AttachRefused(f"session {self.session_id!r} already has an application connection")
        if self.ended:
            raise AttachRefused(f"session {self.session_id!r} has ended")
        self.machine.process(I.APP_ATTACH)
        self._app = connection
        backlog, self._backlog = self._backlog, deque(maxlen=self._backlog.maxlen)
        for event in backlog:
            connection.emit(event)
        if self.backlog_dropped:
            self.emit_error("server", f"{self.backlog_dropped} events were dropped while no application "
                            f"was connected (detached_backlog {self._backlog.maxlen})", 507)
        self.log.info("application attached", backlog=len(backlog))

    async def _detach(self) -> None:
        self._app = None
        if self.ended:
            return
        self.log.info("application detached", state=self.state)
        if self.machine.direction is Direction.INBOUND and not self.answered:
            await self._decline(603, "Decline")
        self._end_by(I.APP_DETACH, "client_disconnected", "user")

    async def _accept_timeout(self) -> None:
        if self.ended or not self.machine.valid(I.ACCEPT_TIMEOUT):
            return
        self.log.info("incoming call not accepted in time", timeout=self.settings.accept_timeout)
        await self._decline(408, "Request Timeout")
        self._end_by(I.ACCEPT_TIMEOUT, "accept_timeout", "system")

    async def _take_slot(self) -> bool:
        """A call started for a connection takes its place under max_calls when it is placed."""
        if self._admitted:
            return True
        parent = self.actor_ref.parent
        try:
            if parent is not None:
                await parent.ask(Admit(self.session_id), timeout=2.0)
        except AdmissionRefused as exc:
            self._refuse_call(503, 1013, f"call refused: {exc}")
            return False
        except (ActorDeadError, TimeoutError):
            self._refuse_call(503, 1013, "call refused: the gateway is shutting down or overloaded")
            return False
        self._admitted = True
        self.disarm("handshake")
        return True

    def _refuse_call(self, code: int, close_code: int, error: str) -> None:
        """No call was placed, and none will be: one `error` (sender server), then the connection
        closes with `close_code`; there is no hangup, as there was no call."""
        self.log.info("call refused", error=error)
        self.emit_error("server", error, code)
        self._pending_input = None
        self.machine.process(I.KILL)
        self._silenced = True
        self._leg_done = True
        self._close_code = close_code
        self.stop()

    async def _decline(self, code: int, reason: str) -> None:
        leg = self.leg
        if leg is not None and not self._leg_done:
            self._leg_done = True
            await self._leg_op("reject", leg.reject(code, reason), quiet=True)

    # --- commands ---------------------------------------------------------------------------

    async def _command(self, cmd: Any) -> None:
        if self.ended:
            return
        inp = command_input(cmd)
        try:
            self.machine.check(inp)
        except InvalidTransition as exc:
            self.refuse("command", exc.message, exc.status)
            return
        self._pending_input = inp
        try:
            accepted = await self._carry_out(cmd)
        except LegRefused as exc:
            self.refuse("command", f"{_wire(cmd)}: {exc.message}", exc.code)
            accepted = False
        if accepted:
            self._advance()
        self._pending_input = None

    def _advance(self) -> None:
        """Apply the command being carried out to the state (once; no-op after the call ended)."""
        inp, self._pending_input = self._pending_input, None
        if inp is not None and not self.ended:
            self.machine.process(inp)

    async def _carry_out(self, cmd: Any) -> bool:
        """Do what `cmd` asks; False if it was refused (already reported)."""
        leg = self.leg
        assert leg is not None
        if isinstance(cmd, (api.Invite, api.Accept)) and self.machine.direction is Direction.OUTBOUND:
            if not await self._take_slot():
                return False
            immediate = await self._leg_op("dial", leg.dial(cmd.option))
            self.option = cmd.option
            self._advance()
            if immediate is not None:
                await self._leg_event(immediate)
            return True
        if isinstance(cmd, api.Accept):
            media = await self._leg_op("answer", leg.answer(cmd.option))
            self.option = cmd.option
            self.disarm("accept")
            self._advance()
            await self._answered(media)
            return True
        if isinstance(cmd, api.Ringing):
            media = await self._leg_op("ringing", leg.ring(cmd))
            self._advance()
            self.ringing_at = self.ringing_at or time.time()
            self._ringing_recorder = self._ringing_recorder or cmd.recorder
            # Early media: the track starts with the ringing's recorder (which the accept's does not
            # replace) and its ringtone; what the accept asks for starts at the answer.
            if media is not None and await self._start_media(media, api.CallOption(recorder=cmd.recorder)):
                if cmd.ringtone:
                    self._ringtone = True
                    await self.playback.play(api.Play(url=cmd.ringtone))
            return True
        if isinstance(cmd, api.Reject):
            self.disarm("accept")
            await self._decline(cmd.code or 486, cmd.reason)
            self._outcome = "rejected"       # the reason is the client's text; counted as its command
            self._end_by(I.REJECT, cmd.reason or "rejected", "user")
            return True
        if isinstance(cmd, api.Refer):
            await self._leg_op("refer", leg.transfer(cmd))
            if cmd.options is not None and cmd.options.moh:
                self._moh = True
                await self.playback.play(api.Play(url=cmd.options.moh))
            return True
        if isinstance(cmd, api.SendDtmf):
            await self._leg_op("sendDtmf", leg.send_dtmf(cmd.digits, cmd.duration))
            return True
        if isinstance(cmd, api.Hangup):
            self._hangup_headers = cmd.headers
            self._outcome = "hangup_command"
            self._end_by(I.HANGUP, cmd.reason or "hangup_command", cmd.initiator or "user")
            return True
        if isinstance(cmd, (api.Mute, api.Unmute)):
            return await self._mute(cmd.track_id, isinstance(cmd, api.Mute))
        if isinstance(cmd, api.Tts):
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
            # The session is the sender, as in the original (its own greeting says "system").
            self.emit(api.AddHistoryEvent(timestamp=now_ms(), speaker=cmd.speaker, text=cmd.text,
                                          sender=self.session_id))
        elif isinstance(cmd, api.Custom):
            self.emit(api.CustomEvent(timestamp=now_ms(), sender=cmd.sender, data=cmd.data))
        return True

    # --- what the leg reports -------------------------------------------------------------------

    async def _leg_event(self, ev: object) -> None:
        if self.ended:
            return
        if isinstance(ev, LegDtmf):
            await self.listening.receive(Dtmf(ev.digit, ev.at_ms, ev.source))
            return
        inp = _leg_input(ev)
        if not self.machine.valid(inp):
            # A late or duplicate report (a 200 OK after the call was cancelled): the leg's own
            # state machine deals with the peer; the call's state does not move.
            self.log.info("leg event ignored", leg_event=type(ev).__name__, state=self.state)
            return
        if isinstance(ev, LegHangup):
            self._leg_done = True
            self._end_by(inp, ev.reason, ev.initiator)
        elif isinstance(ev, LegFailed):
            self._leg_done = True
            self.emit_error("leg", f"leg failed: {ev.error}", 500)
            self._end_by(inp, "media_failure", "system")
        elif isinstance(ev, LegRejected):
            self._leg_done = True
            self.emit(api.RejectEvent(track_id=self.session_id, timestamp=now_ms(), reason=ev.reason, code=ev.code))
            self._end_by(inp, "rejected", "callee")
        elif isinstance(ev, LegRinging):
            self.machine.process(inp)
            self.ringing_at = self.ringing_at or time.time()
            self.emit(api.RingingEvent(track_id=self.session_id, timestamp=now_ms(), early_media=ev.early_media))
            if ev.media is not None:
                await self._start_media(ev.media, self.option or api.CallOption())
        elif isinstance(ev, LegAnswered):
            self.machine.process(inp)
            await self._answered(ev.media)
        elif isinstance(ev, LegHold):
            self.machine.process(inp)
            self.emit(api.HoldEvent(track_id=self.session_id, timestamp=now_ms(), on_hold=ev.held))
        elif isinstance(ev, LegTransferRequest):
            self.machine.process(inp)
            self.emit(api.TransferRequestEvent(track_id=self.session_id, timestamp=now_ms(), refer_to=ev.target,
                                               referred_by=ev.headers.get("Referred-By")))
        elif isinstance(ev, LegTransferred):
            self._end_by(inp, "transferred", "system")
        elif isinstance(ev, LegTransferFailed):
            self.machine.process(inp)
            await self._stop_moh()   # the music on hold of a transfer that failed stops: the call resumes
            self.emit_error("refer", f"refer failed: {ev.code} {ev.reason}", ev.code)
        elif isinstance(ev, LegTransferProgress):
            # Every 1xx of a transfer as `other` (its code kept); ringing of the target also as the
            # original reports a refer's progress: `ringing` with `refer: true`.
            self.emit(api.OtherEvent(track_id=self.session_id, timestamp=now_ms(), sender="refer",
                                     extra={"code": ev.code, "reason": ev.reason, "source": ev.source}))
            if ev.code in (180, 183):
                self.emit(api.RingingEvent(track_id=self.session_id, timestamp=now_ms(), refer=True))
        elif isinstance(ev, LegTransferBridged):
            self.machine.process(inp)
            await self._stop_moh()
            self.emit(api.AnswerEvent(track_id=self.session_id, timestamp=now_ms(), sdp=ev.sdp, refer=True))

    async def _stop_moh(self) -> None:
        if self._moh:
            self._moh = False
            await self.playback.interrupt(False)

    # --- answer: the track and what hangs on it ----------------------------------------------

    async def _answered(self, media: LegMedia) -> None:
        self.answer_at = time.time()
        self.emit(api.AnswerEvent(track_id=self.session_id, timestamp=now_ms(), sdp=media.sdp))
        option = self.option or api.CallOption()
        if self._ringing_recorder is not None:      # a `ringing` recorder is not replaced by accept's
            option = dataclasses.replace(option, recorder=self._ringing_recorder)
        if not await self._start_media(media, option) and self.machine.direction is Direction.INBOUND:
            # The track runs since early media, started with the ringing's options: the ringtone
            # stops, and the accept's recorder (unless ringing had one) and listening start now.
            if self._ringtone:
                self._ringtone = False
                await self.playback.interrupt(False)
            track = self.child("track")
            if track is not None and option.recorder is not None and self.child("recorder") is None:
                await self._start_recorder(track, option.recorder)
            self.listening.release()
            await self.listening.start(option)

    async def _start_media(self, media: LegMedia, option: api.CallOption) -> bool:
        """Start the track on the negotiated codec with the recorder, mediaPass and listening the
        option asks for; once per call (early media starts it before the answer)."""
        if self.child("track") is not None or self.track_started_at is not None:
            return False
        leg = self.leg
        assert leg is not None
        codec = media.codec
        track = await self.start_child(ChildSpec(
            id="track",
            start=lambda parent: Track.start(self.session_id, codec, leg, self.clock,
                                             report=parent.tell_quietly, parent=parent, name="track"),
            restart=CHILDREN["track"],
            shutdown=self.settings.child_shutdown_timeout,
        ))
        self.track_started_at = time.time()
        self.emit(api.TrackStartEvent(track_id=self.session_id, timestamp=int(self.track_started_at * 1000)))
        self.log.info("media started", codec=codec.name, rate=codec.sample_rate)
        if option.recorder is not None:
            await self._start_recorder(track, option.recorder)
        if option.media_pass is not None:
            await self._start_media_pass(option.media_pass)
        await self.listening.start(option)
        await self.playback.prepare()
        return True

    async def _mute(self, track_id: str | None, muted: bool) -> bool:
        name = "mute" if muted else "unmute"
        if self.need_track(name) is None:
            return False
        if track_id is None:
            await self.ask_child("track", SetMute(inbound=muted, outbound=muted))
        elif track_id == self.session_id:
            await self.ask_child("track", SetMute(inbound=muted))
        elif track_id == self.settings.server_side_track:
            await self.ask_child("track", SetMute(outbound=muted))
        else:
            self.refuse("command", f"{name}: unknown trackId {track_id!r} "
                        f"(tracks: {self.session_id!r}, {self.settings.server_side_track!r})", 404)
            return False
        return True

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
        inbound = await self.ask_child("track", Subscribe("recorder", "in", capacity=50))
        outbound = await self.ask_child("track", Subscribe("recorder", "out", capacity=50))
        open_sink = segment_opener(services.open_recording, path, option.samplerate)
        await self.start_service(
            "recorder",
            lambda parent: Recorder.start(inbound, outbound, open_sink, samplerate=option.samplerate,
                                          ptime_ms=option.ptime, parent=parent, name="recorder"))
        self.log.info("recording", path=path)

    async def _start_media_pass(self, option: api.MediaPassOption) -> None:
        if self.services.media_pass is None:
            self.refuse("mediaPass", "mediaPass: not configured on this gateway", 501)
            return
        ref = self.actor_ref

        def on_error(text: str) -> None:
            if ref.is_alive():
                ref.tell(ServiceError("mediaPass", text, 502))

        tap = await self.ask_child("track", Subscribe("mediaPass", "in", capacity=50))
        # A live source: past a second ahead of playback its oldest audio goes (counted in the feed).
        feed = PlayFeed(MEDIA_PASS_AHEAD, live=True)
        try:
            start = self.services.media_pass(option, tap, feed, on_error)
        except (ProtocolError, ValueError) as exc:
            await self.ask_child("track", Unsubscribe("mediaPass", "in"))
            self.refuse("mediaPass", f"mediaPass: {exc}", 400)
            return
        await self.ask_child("track", Mix(PlaySpec(0, "mediaPass", "pass"), feed))
        await self.start_service("mediaPass", start)

    async def on_child_exited(self, spec: ChildSpec, exit: ChildExited) -> None:
        if spec.id == "mediaPass" and exit.reason == "normal":
            await self._media_pass_over()       # stopped for good (refused, or the call's audio ended)

    async def _media_pass_over(self) -> None:
        """Nothing reads the caller's tap for mediaPass any more: the track stops feeding it."""
        if self.ended or self.child("track") is None:
            return
        try:
            await self.ask_child("track", Unsubscribe("mediaPass", "in"))
            await self.ask_child("track", Mix(PlaySpec(0, "mediaPass", "pass"), None))
        except ChildUnavailable:
            pass  # the track is going too; it takes its taps with it

    async def on_child_restarted(self, spec: ChildSpec, ref: ActorRef) -> None:
        self.services.tally.restarted(spec.id)
        await super().on_child_restarted(spec, ref)

    async def _tally_playout(self) -> None:
        """The call's playout jitter (the p99 of its ticks' deviation from ptime) into /metrics."""
        if self.child("track") is None:
            return
        try:
            stats = await self.ask_child("track", GetTrackStats(), timeout=0.5)
        except ChildUnavailable:
            return
        if stats.frames_out:
            self.services.tally.playout_jitter.observe(stats.jitter_ms_p99 / 1000.0)

    async def on_child_gave_up(self, spec: ChildSpec, error: BaseException | None) -> None:
        if spec.id == "mediaPass":
            await self._media_pass_over()
        if spec.id in ("tts", "recorder", "asr", "mediaPass"):
            self.emit_error(spec.id, f"{spec.id}: gave up after repeated failures: {error}", 503,
                            track_id=self.settings.server_side_track)
            return
        await super().on_child_gave_up(spec, error)

    async def start_service(self, id: str, start: Callable[[ActorRef], ActorRef]) -> ActorRef:
        """Start a child that serves the call (recorder, ASR, TTS; see CHILDREN): restarted with
        backoff up to its own limit, then given up without taking the call down."""
        return await self.start_child(ChildSpec(
            id=id,
            start=start,
            restart=CHILDREN[id],
            shutdown=self.settings.child_shutdown_timeout,
            backoff=self.settings.backoff,
            escalate=False,
            intensity=getattr(self.settings, OWN_LIMITS[id][0]) if id in OWN_LIMITS else self.settings.provider_restarts,
            period=getattr(self.settings, OWN_LIMITS[id][1]) if id in OWN_LIMITS else self.settings.provider_period,
        ))

    async def ask_child(self, id: str, message: object, timeout: float = 1.0) -> Any:
        ref = self.child(id)
        if ref is None:
            raise ChildUnavailable(id, "not running")
        try:
            return await ref.ask(message, timeout=timeout)
        except ActorDeadError:
            raise ChildUnavailable(id, "it has stopped") from None
        except TimeoutError:
            raise ChildUnavailable(id, f"no answer within {timeout:g} s") from None

    # --- ending -----------------------------------------------------------------------------

    _end_reason = "hangup"
    _outcome: str | None = None       # what /metrics counts the end as, when not its reason

    def hangup(self, reason: str, initiator: str) -> None:
        """End the call from inside (autohangup, inactivity, a failure)."""
        self._end_by(I.HANGUP, reason, initiator)

    def _end_by(self, inp: CallInput, reason: str, initiator: str) -> None:
        if self.ended:
            return
        self._end(reason, initiator, inp)
        self.stop()

    def _end(self, reason: str, initiator: str, inp: CallInput) -> None:
        """Emit the closing events once; the leg is hung up and children stopped by on_stop."""
        self._pending_input = None
        if self.machine.valid(inp):
            self.machine.process(inp)
        else:
            self.machine.process(I.KILL)
        self._end_reason = reason
        self.services.tally.call_ended(self._outcome or reason)
        self.disarm("accept")
        self.playback.end_all()
        hangup_at = time.time()
        ts = int(hangup_at * 1000)
        # The leg's own figures (an RTP leg's loss and jitter) come before the hangup: nothing follows it.
        leg_metrics = getattr(self.leg, "metrics", None)
        for event in leg_metrics(ts) if leg_metrics is not None else ():
            self.emit(event)
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
            ringing_time=iso8601(self.ringing_at) if self.ringing_at is not None else None,
            from_=attendee(self._party("caller")),
            to=attendee(self._party("callee")),
            extra=self.option.extra if self.option is not None else None,
        ))
        # Nothing follows the hangup; the connection closes once the call has let go of everything
        # (leg, children, recording), so that the session id is free when the client sees the close.
        self._silenced = True
        self.log.info("call ended", reason=reason, initiator=initiator)

    def _party(self, which: str) -> str | None:
        if self.option is not None and getattr(self.option, which):
            return getattr(self.option, which)
        if self.offer is not None:
            return getattr(self.offer, which)
        return None

    def _release_recordings(self) -> None:
        # Its recorder (a child) has closed its files: the names are free before the application's
        # connection closes, so a client may reuse one as soon as it sees the close.
        release = self.services.release_recordings
        if release is not None:
            release(self.session_id)

    def _close_app(self) -> None:
        app, self._app = self._app, None
        if app is not None:
            app.close(self._close_code)

    # --- helpers for the call and its parts --------------------------------------------------

    def emit(self, event: Any) -> None:
        if self._silenced:
            self.log.debug("event after hangup not sent", event_type=type(event).__name__)
            return
        if self._app is not None:
            self._app.emit(event)
        elif not self.ended:
            if len(self._backlog) == self._backlog.maxlen:
                self.backlog_dropped += 1
            self._backlog.append(event)

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
            self.refuse("command", f"{name}: the call has no media yet", 400)
        return track

    def describe(self) -> CallInfo:
        option = None
        if self.option is not None:
            option = api.option_to_json(self.option)
        kind = self.leg.kind if self.leg is not None else "unknown"
        return CallInfo(id=self.session_id, call_type=kind, created_at=iso8601(self.created_at),
                        option=option, state=self.state)


class _LegBroken(Exception):
    """A leg operation raised something other than a refusal: the leg is unusable."""


def _leg_input(ev: object) -> CallInput:
    if isinstance(ev, LegRinging):
        return I.LEG_EARLY_MEDIA if ev.early_media else I.LEG_RINGING
    if isinstance(ev, LegHold):
        return I.LEG_HOLD if ev.held else I.LEG_RESUME
    return _LEG_INPUTS[type(ev)]


_LEG_INPUTS: dict[type, CallInput] = {
    LegAnswered: I.LEG_ANSWERED,
    LegRejected: I.LEG_REJECTED,
    LegHangup: I.LEG_HANGUP,
    LegFailed: I.LEG_FAILED,
    LegTransferRequest: I.LEG_TRANSFER_REQUEST,
    LegTransferred: I.LEG_TRANSFERRED,
    LegTransferFailed: I.LEG_TRANSFER_FAILED,
    LegTransferProgress: I.LEG_TRANSFER_PROGRESS,
    LegTransferBridged: I.LEG_TRANSFER_BRIDGED,
}


def _wire(cmd: Any) -> str:
    return getattr(cmd, "command", type(cmd).__name__.lower())
