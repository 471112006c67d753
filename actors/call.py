"""The Call actor: one per session, the owner of its state and the supervisor of its media.

Commands arrive as messages (interrupt and hangup on the system lane), events leave through the
`emit` callable the transport handed in. The Call never touches a socket: its leg arrives as a
`LegIO` and its client connection as `emit`/`close` callables.

A crashed call is not restarted (its CallSupervisor child spec is temporary); whatever ends it, the
application receives exactly one `hangup` event (when it is still connected), then the connection
closes and every child stops in reverse start order.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import structlog

from protocol import api
from protocol.codecs import codec_info
from protocol.errors import ProtocolError

from .clock import MediaClock
from .asr import Asr, AsrFailed, AsrText, PrerollRing
from .playout import PipeItem, PlaybackEvent, PlayItem
from .recorder import Recorder, segment_opener
from .services import CallServices, MediaLoadError, SynthRequest
from .tts import CancelSynthesis, Synthesize, Tts, TtsFailed, TtsMetric
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
from .ref import ActorDeadError, ActorRef, ChildExited
from .supervisor import Backoff, ChildSpec, Restart, Supervisor
from .call_supervisor import GetCall
from .track import Enqueue, InterruptPlayback, LegIO, Listen, Mix, SetPaused, Subscribe, Track, Unsubscribe
from .vad import VadOptionError, create_vad, shared_silero_engine
from protocol.codecs import MEDIA_RATE, Resampler
from protocol.denoise import Denoiser
from protocol.dtmf_detect import DtmfDeduplicator, DtmfDetector
from protocol.vad_events import SilenceDetected, SpeechStarted

CALL_TYPES = ("websocket", "sip", "webrtc")


def now_ms() -> int:
    return int(time.time() * 1000)


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
        self._playing: dict[int, PlayItem] = {}      # id(item) -> item, queued or playing
        self._streams: dict[str | None, PlayItem] = {}  # open streaming tts items by playId
        self._current_tts_play_id: str | None = None
        self._loads: set[asyncio.Task[None]] = set()
        self._ringing_recorder: api.RecorderOption | None = None
        self.recording_path: str | None = None
        self._media_pass: Any = None
        self._vad: Any = None
        self._asr_index = 1
        self._asr_utterance_reported = False
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._bridges: dict[str, _Bridge] = {}
        # One key press reaches the call from up to three sources (in-band, RFC 4733, SIP INFO).
        self._dtmf = DtmfDeduplicator()
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
        await self._cancel_loads()
        await self._close_media_pass()
        self._release_listening()
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
            await self._cancel_loads()
            await self._close_media_pass()
            self._release_listening()
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
        if isinstance(message, _BridgeOffer):
            await self._bridge_offer(message)
            return None
        if isinstance(message, _BridgeMade):
            self._bridges[message.call_id] = _Bridge(message.call, message.track, in_peer=message.in_peer,
                                                     in_mine=message.in_mine)
            return None
        if isinstance(message, _BridgeFailed):
            self._error("bridge", f"bridge: call {message.call_id!r} cannot be bridged: {message.reason}", 409)
            return None
        if isinstance(message, _BridgeGone):
            self._bridges.pop(message.call_id, None)
            return None
        if isinstance(message, _Vad):
            self._vad_event(message.event)
            return None
        if isinstance(message, _Dtmf):
            if self._dtmf.offer(message.digit, message.at_ms, message.source):
                self._caller_input()
                self.emit(api.DtmfEvent(track_id=self.session_id, timestamp=now_ms(), digit=message.digit))
            return None
        if isinstance(message, AsrText):
            self._asr_text(message)
            return None
        if isinstance(message, AsrFailed):
            self.emit(api.ErrorEvent(track_id=self.session_id, timestamp=now_ms(), sender="asr",
                                     error=f"{message.provider}: {message.error}", code=message.code))
            return None
        if isinstance(message, _WaitInputExpired):
            self._timers.pop("wait_input", None)
            self.emit(api.SilenceEvent(track_id=self.settings.server_side_track, timestamp=now_ms(),
                                       start_time=message.since_ms, duration=message.duration_ms))
            return None
        if isinstance(message, _CheckInactivity):
            self._timers.pop("inactivity", None)
            await self._check_inactivity()
            return None
        if isinstance(message, _ServiceError):
            self.emit(api.ErrorEvent(track_id=self.session_id, timestamp=now_ms(), sender=message.sender,
                                     error=message.error, code=message.code))
            return None
        if isinstance(message, _PlayFailed):
            self.emit(api.ErrorEvent(track_id=self.settings.server_side_track, timestamp=now_ms(), sender="play",
                                     error=f"play {message.url}: {message.error}", code=message.code))
            return None
        if isinstance(message, PlaybackEvent):
            self._playback(message)
            return None
        if isinstance(message, TtsMetric):
            self.emit(api.MetricsEvent(timestamp=now_ms(), key=f"ttfb.tts.{message.provider}",
                                       duration=message.ttfb_ms,
                                       data={"playId": message.play_id, "provider": message.provider}))
            return None
        if isinstance(message, TtsFailed):
            self.emit(api.ErrorEvent(track_id=self.settings.server_side_track, timestamp=now_ms(), sender="tts",
                                     error=f"{message.provider}: {message.error}", code=message.code))
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
        elif isinstance(cmd, api.Tts):
            await self._tts(cmd)
        elif isinstance(cmd, api.Play):
            await self._play(cmd)
        elif isinstance(cmd, api.Interrupt):
            await self._interrupt(cmd.graceful)
        elif isinstance(cmd, (api.Pause, api.Resume)):
            track = self._need_track(_wire(cmd))
            if track is not None:
                await track.ask(SetPaused(isinstance(cmd, api.Pause)), timeout=1.0)
        elif isinstance(cmd, api.Bridge):
            await self._bridge(cmd.target_session_id)
        elif isinstance(cmd, api.Unbridge):
            await self._unbridge(cmd.target_session_id)
        elif isinstance(cmd, api.History):
            self.emit(api.AddHistoryEvent(timestamp=now_ms(), speaker=cmd.speaker, text=cmd.text))
        elif isinstance(cmd, api.Custom):
            self.emit(api.CustomEvent(timestamp=now_ms(), sender=cmd.sender, data=cmd.data))
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
        track = await self.start_child(spec)
        self.state = "answered"
        self.answer_at = self.track_started_at = time.time()
        ts = now_ms()
        self.emit(api.AnswerEvent(track_id=self.session_id, timestamp=ts, sdp=""))
        self.emit(api.TrackStartEvent(track_id=self.session_id, timestamp=ts))
        self.log.info("call answered", codec=info.name, rate=info.sample_rate)
        # A recorder set while ringing is not overridden by the accept (the API's note on ringing).
        recorder = self._ringing_recorder or option.recorder
        if recorder is not None:
            await self._start_recorder(track, recorder)
        if option.media_pass is not None:
            await self._start_media_pass(track, option.media_pass)
        await self._start_listening(track, option)
        if option.inactivity_timeout:
            self._arm("inactivity", min(1.0, option.inactivity_timeout / 4), _CheckInactivity())

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

    # --- listening: VAD, ASR, inactivity -------------------------------------------------------

    async def _start_listening(self, track: ActorRef, option: api.CallOption) -> None:
        ref = self.actor_ref
        listeners = []
        if option.vad is not None:
            try:
                detector = create_vad(option.vad, lambda ev: ref.tell(_Vad(ev)))
            except VadOptionError as exc:
                self._error("vad", f"vad: {exc}", exc.status)
            else:
                self._vad = detector
                if option.vad.type.strip().lower() == "silero":
                    self.clock.after_tick("silero", shared_silero_engine().flush)
                if option.vad.samplerate != MEDIA_RATE:
                    down = Resampler(MEDIA_RATE, option.vad.samplerate)
                    listeners.append(lambda frame, at: detector.push(down.process(frame), at))
                else:
                    listeners.append(detector.push)
        detector = DtmfDetector(MEDIA_RATE)

        def inband_dtmf(frame: np.ndarray, at: float) -> None:
            for digit in detector.feed(frame, int(at)):
                ref.tell(_Dtmf(digit.digit, digit.start_ms, "inband"))

        denoiser = Denoiser(MEDIA_RATE, 320) if option.denoise else None
        await track.ask(Listen(denoiser=denoiser, listeners=tuple(listeners), raw_listeners=(inband_dtmf,)),
                        timeout=1.0)
        if option.asr is not None:
            await self._start_asr(track, option.asr)

    async def _start_asr(self, track: ActorRef, option: api.TranscriptionOption) -> None:
        name = (option.provider or self.services.default_asr or "").lower()
        factory = self.services.asr.get(name)
        if factory is None:
            known = ", ".join(sorted(self.services.asr)) or "none"
            self._error("asr", f"asr: unknown provider {option.provider!r} (available: {known})", 400)
            return
        audio = await track.ask(Subscribe("asr", "heard", capacity=100), timeout=1.0)
        ring = PrerollRing(2.0)
        spec = ChildSpec(
            id="asr",
            # A fresh provider for every start: a restart must not inherit a broken client.
            start=lambda parent: Asr.start(factory(option), option, audio, ring, report=parent.tell,
                                           session_id=self.session_id, parent=parent, name="asr"),
            restart=Restart.TRANSIENT,
            shutdown=self.settings.child_shutdown_timeout,
            backoff=self.settings.backoff,
            escalate=False,
            intensity=self.settings.provider_restarts,
            period=self.settings.provider_period,
        )
        await self.start_child(spec)

    def _release_listening(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        vad, self._vad = self._vad, None
        if vad is not None:
            vad.close()

    def _arm(self, key: str, delay: float, message: object) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        ref = self.actor_ref
        self._timers[key] = asyncio.get_running_loop().call_later(
            delay, lambda: ref.tell(message) if ref.is_alive() else None)

    def _disarm(self, key: str) -> None:
        handle = self._timers.pop(key, None)
        if handle is not None:
            handle.cancel()

    def _caller_input(self) -> None:
        """The caller said or pressed something: a pending waitInputTimeout no longer applies."""
        self._disarm("wait_input")

    def _vad_event(self, ev: Any) -> None:
        if isinstance(ev, SpeechStarted):
            self._caller_input()
            self.emit(api.SpeakingEvent(track_id=self.session_id, timestamp=now_ms(), start_time=ev.start_time))
        elif isinstance(ev, SilenceDetected):
            self.emit(api.SilenceEvent(track_id=self.session_id, timestamp=now_ms(), start_time=ev.start_time,
                                       duration=ev.duration))

    def _asr_text(self, msg: AsrText) -> None:
        self._caller_input()
        ts = now_ms()
        if not self._asr_utterance_reported:
            self._asr_utterance_reported = True
            self.emit(api.MetricsEvent(timestamp=ts, key=f"ttfb.asr.{msg.provider}",
                                       duration=max(0, ts - msg.first_audio_ms),
                                       data={"index": self._asr_index, "provider": msg.provider}))
        cls = api.AsrFinalEvent if msg.final else api.AsrDeltaEvent
        self.emit(cls(track_id=self.session_id, timestamp=ts, index=self._asr_index, text=msg.text,
                      start_time=msg.start_ms, end_time=msg.end_ms))
        if msg.final:
            self._asr_index += 1
            self._asr_utterance_reported = False

    async def _check_inactivity(self) -> None:
        timeout = self.option.inactivity_timeout if self.option is not None else None
        track = self.child("track")
        if not timeout or track is None or self.state == "ended":
            return
        stats = await track.ask(GetTrackStats(), timeout=1.0)
        last = stats.last_input_at or self.answer_at or time.time()
        if time.time() - last >= timeout:
            self.emit(api.InactivityEvent(track_id=self.session_id, timestamp=now_ms()))
            self._hangup("inactivity_timeout", "system")
            return
        self._arm("inactivity", min(1.0, timeout / 4), _CheckInactivity())

    # --- bridging two calls (media only) -----------------------------------------------------
    # The call that receives `bridge` only looks its peer up and offers its track; the peer does
    # the wiring on both tracks and reports back. Calls never ask each other (only tracks, which
    # ask nobody), so two calls bridging each other at once cannot wait on each other.

    async def _bridge(self, target: str) -> None:
        track = self._need_track("bridge")
        if track is None:
            return
        if target == self.session_id or target in self._bridges:
            self._error("bridge", f"bridge: {target!r} is this call or already bridged to it", 400)
            return
        parent = self.actor_ref.parent
        peer = None if parent is None else await parent.ask(GetCall(target), timeout=1.0)
        if peer is None:
            self._error("bridge", f"bridge: no active call with id {target!r}", 404)
            return
        try:
            peer.tell(_BridgeOffer(self.session_id, self.actor_ref, track))
        except ActorDeadError:
            self._error("bridge", f"bridge: call {target!r} has ended", 404)

    async def _bridge_offer(self, offer: _BridgeOffer) -> None:
        track = self.child("track")
        if track is None or self.state != "answered" or offer.call_id in self._bridges:
            offer.call.tell(_BridgeFailed(self.session_id, "it is not answered or already bridged"))
            return
        try:
            theirs = await offer.track.ask(Subscribe(f"bridge:{self.session_id}", "in", capacity=10), timeout=1.0)
            mine = await track.ask(Subscribe(f"bridge:{offer.call_id}", "in", capacity=10), timeout=1.0)
        except (ActorDeadError, TimeoutError):
            return
        to_them = PipeItem(self.session_id, mine)        # my caller, heard by theirs
        to_me = PipeItem(offer.call_id, theirs)          # their caller, heard by mine
        await offer.track.ask(Mix(to_them), timeout=1.0)
        await track.ask(Mix(to_me), timeout=1.0)
        self._bridges[offer.call_id] = _Bridge(offer.call, offer.track, in_peer=to_them, in_mine=to_me)
        offer.call.tell(_BridgeMade(self.session_id, self.actor_ref, track, in_peer=to_me, in_mine=to_them))

    async def _unbridge(self, target: str | None) -> None:
        peers = list(self._bridges) if target is None else [target]
        for peer_id in peers:
            bridge = self._bridges.pop(peer_id, None)
            if bridge is None:
                self._error("unbridge", f"unbridge: not bridged to {peer_id!r}", 404)
                continue
            track = self.child("track")
            for owner, item, tap_owner, tap in ((bridge.track, bridge.in_peer, track, f"bridge:{peer_id}"),
                                                (track, bridge.in_mine, bridge.track, f"bridge:{self.session_id}")):
                try:
                    if owner is not None:
                        await owner.ask(Mix(item, add=False), timeout=1.0)
                    if tap_owner is not None:
                        await tap_owner.ask(Unsubscribe(tap, "in"), timeout=1.0)
                except (ActorDeadError, TimeoutError):
                    pass  # that call is ending; its track takes its taps and mixes with it
            try:
                bridge.call.tell(_BridgeGone(self.session_id))
            except ActorDeadError:
                pass

    # --- recording and media pass -----------------------------------------------------------

    async def _start_recorder(self, track: ActorRef, option: api.RecorderOption) -> None:
        services = self.services
        if services.open_recording is None or services.resolve_recording is None:
            self._error("recorder", "recorder: recording is not configured on this gateway", 501)
            return
        try:
            path = services.resolve_recording(option.recorder_file, self.session_id)
        except ValueError as exc:
            self._error("recorder", f"recorder: {exc}", 400)
            return
        inbound = await track.ask(Subscribe("recorder", "in", capacity=50), timeout=1.0)
        outbound = await track.ask(Subscribe("recorder", "out", capacity=50), timeout=1.0)
        open_sink = segment_opener(services.open_recording, path, option.samplerate)
        spec = ChildSpec(
            id="recorder",
            start=lambda parent: Recorder.start(inbound, outbound, open_sink, samplerate=option.samplerate,
                                                ptime_ms=option.ptime, parent=parent, name="recorder"),
            restart=Restart.TRANSIENT,
            shutdown=self.settings.child_shutdown_timeout,
            backoff=self.settings.backoff,
            escalate=False,
            intensity=self.settings.provider_restarts,
            period=self.settings.provider_period,
        )
        self.recording_path = path
        await self.start_child(spec)
        self.log.info("recording", path=path)

    async def _start_media_pass(self, track: ActorRef, option: api.MediaPassOption) -> None:
        if self.services.media_pass is None:
            self._error("mediaPass", "mediaPass: not configured on this gateway", 501)
            return
        tap = await track.ask(Subscribe("mediaPass", "in", capacity=50), timeout=1.0)
        item = PlayItem("mediaPass", "pass")
        ref = self.actor_ref

        def on_error(text: str) -> None:
            if ref.is_alive():
                ref.tell(_ServiceError("mediaPass", text, 502))

        try:
            link = self.services.media_pass(option, tap, item, on_error)
        except (ProtocolError, ValueError) as exc:
            self._error("mediaPass", f"mediaPass: {exc}", 400)
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

    # --- playback ---------------------------------------------------------------------------

    def _need_track(self, name: str) -> ActorRef | None:
        track = self.child("track")
        if track is None:
            self._error("command", f"{name}: the call is not answered yet", 400)
        return track

    def _tts_provider(self, option: api.SynthesisOption | None) -> str | None:
        name = (option.provider if option is not None else None) or self.services.default_tts
        if name is None or name.lower() not in self.services.tts:
            known = ", ".join(sorted(self.services.tts)) or "none"
            self._error("tts", f"tts: unknown provider {name!r} (available: {known})", 400)
            return None
        return name.lower()

    async def _tts(self, cmd: api.Tts) -> None:
        track = self._need_track("tts")
        if track is None:
            return
        call_option = self.option.tts if self.option is not None else None
        option = api.merge_options(call_option, cmd.option) or api.SynthesisOption()
        provider = "base64" if cmd.base64 else self._tts_provider(option)
        if provider is None:
            return
        raw = None
        if cmd.base64:
            try:
                raw = base64.b64decode(cmd.text, validate=True)
            except (binascii.Error, ValueError) as exc:
                self._error("tts", f"tts: text is not valid base64: {exc}", 400)
                return
        play_id = cmd.play_id
        item = self._streams.get(play_id) if cmd.streaming else None
        if item is None:
            if play_id is not None and play_id != self._current_tts_play_id and self._tts_active():
                await self._interrupt(graceful=False)
            item = PlayItem(play_id, "tts", text="" if cmd.base64 else cmd.text, auto_hangup=cmd.auto_hangup,
                            wait_input_timeout=cmd.wait_input_timeout)
            self._playing[id(item)] = item
            if cmd.streaming:
                self._streams[play_id] = item
            await track.ask(Enqueue(item), timeout=1.0)
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

    async def _tts_actor(self) -> ActorRef | None:
        tts = self.child("tts")
        if tts is not None:
            return tts
        if "tts" in self.child_ids():
            # Restarting after a crash, or given up: the command is refused, the call goes on.
            self._error("tts", "tts: the synthesis service is restarting or unavailable", 503)
            return None
        factories = self.services.tts
        option = self.option.tts if self.option is not None else None
        spec = ChildSpec(
            id="tts",
            start=lambda parent: Tts.start(lambda name: factories[name](option), report=parent.tell,
                                           session_id=self.session_id, parent=parent, name="tts"),
            restart=Restart.PERMANENT,
            shutdown=self.settings.child_shutdown_timeout,
            backoff=self.settings.backoff,
            escalate=False,
            intensity=self.settings.provider_restarts,
            period=self.settings.provider_period,
        )
        return await self.start_child(spec)

    def _tts_active(self) -> bool:
        return any(item.kind == "tts" for item in self._playing.values())

    async def _play(self, cmd: api.Play) -> None:
        track = self._need_track("play")
        if track is None:
            return
        if self.services.load_media is None:
            self._error("play", "play: media loading is not configured", 501)
            return
        item = PlayItem(cmd.url, "play", auto_hangup=cmd.auto_hangup, wait_input_timeout=cmd.wait_input_timeout)
        self._playing[id(item)] = item
        # `play` replaces whatever plays now, as the original replaces its server-side track.
        cut = await track.ask(Enqueue(item, replace=True), timeout=1.0)
        await self._after_cut(cut, graceful=False)
        load = self.services.load_media
        task = asyncio.get_running_loop().create_task(self._load(load, cmd.url, item), name="play-load")
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)

    async def _load(self, load: Any, url: str, item: PlayItem) -> None:
        try:
            clip = await load(url)
        except MediaLoadError as exc:
            item.finish(error=str(exc))
            self.actor_ref.tell(_PlayFailed(url, str(exc), exc.code))
            return
        except Exception as exc:  # noqa: BLE001 - a loader bug is this play's error, not the call's
            item.finish(error=repr(exc))
            self.actor_ref.tell(_PlayFailed(url, f"cannot play: {exc!r}", 500))
            return
        item.append(clip.pcm)
        item.finish()

    async def _cancel_loads(self) -> None:
        for task in list(self._loads):
            task.cancel()
        if self._loads:
            await asyncio.gather(*self._loads, return_exceptions=True)

    async def _interrupt(self, graceful: bool) -> None:
        track = self.child("track")
        if track is None:
            return
        cut = await track.ask(InterruptPlayback(graceful), timeout=1.0)
        await self._after_cut(cut, graceful)

    async def _after_cut(self, cut: list[PlayItem], graceful: bool) -> None:
        self._streams.clear()
        tts = self.child("tts")
        if tts is not None and any(item.kind == "tts" for item in cut):
            tts.tell(CancelSynthesis())
        current = cut[0] if cut else None
        if current is not None and current.kind == "tts" and current.cut_unfinished:
            self.emit(api.InterruptionEvent(
                track_id=self.settings.server_side_track, timestamp=now_ms(), play_id=current.play_id,
                subtitle=current.text or None, position=current.word_position(),
                total_duration=current.total_ms, current=current.played_ms))

    def _playback(self, ev: PlaybackEvent) -> None:
        item = ev.item
        track_id = self.settings.server_side_track
        if ev.kind == "started":
            self._caller_input()  # a new playback restarts the wait for input
            self.emit(api.TrackStartEvent(track_id=track_id, timestamp=int(ev.at * 1000), play_id=item.play_id))
            return
        self._playing.pop(id(item), None)
        self.emit(api.TrackEndEvent(track_id=track_id, timestamp=int(ev.at * 1000), duration=item.played_ms,
                                    ssrc=self.ssrc, play_id=item.play_id))
        if item.auto_hangup and not ev.interrupted and self.state != "ended":
            self._hangup("autohangup", "system")
        elif item.wait_input_timeout and not ev.interrupted and self.state != "ended":
            ended = int(ev.at * 1000)
            self._arm("wait_input", item.wait_input_timeout,
                      _WaitInputExpired(ended, int(item.wait_input_timeout * 1000)))

    async def on_child_gave_up(self, spec: ChildSpec, error: BaseException | None) -> None:
        if spec.id in ("tts", "recorder", "asr"):
            self.emit(api.ErrorEvent(track_id=self.settings.server_side_track, timestamp=now_ms(), sender=spec.id,
                                     error=f"{spec.id}: gave up after repeated failures: {error}", code=503))
            return
        await super().on_child_gave_up(spec, error)

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


@dataclass(frozen=True, slots=True)
class _BridgeOffer:
    call_id: str
    call: ActorRef
    track: ActorRef


@dataclass(frozen=True, slots=True)
class _BridgeMade:
    call_id: str
    call: ActorRef
    track: ActorRef
    in_peer: PlayItem
    in_mine: PlayItem


@dataclass(frozen=True, slots=True)
class _BridgeFailed:
    call_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class _BridgeGone:
    call_id: str


@dataclass(frozen=True, slots=True)
class _Bridge:
    call: ActorRef
    track: ActorRef          # the peer's track
    in_peer: PlayItem        # my caller, mixed into the peer's track
    in_mine: PlayItem        # the peer's caller, mixed into my track


@dataclass(frozen=True, slots=True)
class _Dtmf:
    digit: str
    at_ms: int
    source: str          # "inband" | "rfc4733" | "info"


@dataclass(frozen=True, slots=True)
class _Vad:
    event: Any


@dataclass(frozen=True, slots=True)
class _WaitInputExpired:
    since_ms: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class _CheckInactivity:
    pass


@dataclass(frozen=True, slots=True)
class _ServiceError:
    sender: str
    error: str
    code: int | None


@dataclass(frozen=True, slots=True)
class _PlayFailed:
    url: str
    error: str
    code: int


def _wire(cmd: Any) -> str:
    return getattr(cmd, "command", type(cmd).__name__.lower())
