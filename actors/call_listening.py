"""What a Call hears from its caller: VAD, DTMF and ASR set up at answer, their events, the expiry of
a waitInputTimeout, and the inactivity watch.

Part of the Call actor: it runs in the Call's task. The detectors run on the media plane inside
the Track; they only post messages to the Call, which turns them into events here.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np

from protocol import api
from protocol.codecs import MEDIA_RATE, Resampler
from protocol.denoise import Denoiser
from protocol.dtmf_detect import DtmfDeduplicator, DtmfDetector
from protocol.vad_events import SilenceDetected, SpeechStarted

from .asr import Asr, AsrFailed, AsrText, PrerollRing
from .call_context import CallContext
from .call_messages import CheckInactivity, Dtmf, Vad, VadSkipped, WaitInputExpired, now_ms
from .messages import GetTrackStats
from .ref import ActorRef
from .track import Listen, Subscribe
from .vad import VadOptionError, create_vad


class Listening:
    handles: ClassVar[tuple[type, ...]] = (Vad, VadSkipped, Dtmf, AsrText, AsrFailed, WaitInputExpired,
                                           CheckInactivity)

    def __init__(self, call: CallContext) -> None:
        self.call = call
        self._vad: Any = None
        self._asr_index = 1
        self._asr_utterance_reported = False
        # One key press reaches the call from up to three sources (in-band, RFC 4733, SIP INFO).
        self._dtmf = DtmfDeduplicator()

    async def receive(self, message: object) -> None:
        call = self.call
        if isinstance(message, Vad):
            self._vad_event(message.event)
        elif isinstance(message, VadSkipped):
            # The application decides on turns from speaking/silence: it must know they were
            # decided on part of the audio.
            call.emit(api.MetricsEvent(timestamp=now_ms(), key="vad.skipped", duration=round(message.ms),
                                       data={"windows": message.windows, "backlogMs": round(call.services.silero.max_backlog_ms)}))
        elif isinstance(message, Dtmf):
            if self._dtmf.offer(message.digit, message.at_ms, message.source):
                self.caller_input()
                call.emit(api.DtmfEvent(track_id=call.session_id, timestamp=now_ms(), digit=message.digit))
        elif isinstance(message, AsrText):
            self._asr_text(message)
        elif isinstance(message, AsrFailed):
            call.services.tally.provider_error("asr", message.provider, message.permanent)
            call.emit_error("asr", f"{message.provider}: {message.error}", message.code)
        elif isinstance(message, WaitInputExpired):
            call.emit(api.SilenceEvent(track_id=call.settings.server_side_track, timestamp=now_ms(),
                                       start_time=message.since_ms, duration=message.duration_ms))
        elif isinstance(message, CheckInactivity):
            await self._check_inactivity()

    async def start(self, option: api.CallOption) -> None:
        """Wire the detectors into the track, start ASR, and begin watching for inactivity."""
        ref = self.call.actor_ref
        listeners = []
        if option.vad is not None:
            try:
                detector = create_vad(option.vad, lambda ev: ref.tell(Vad(ev)), engine=self.call.services.silero,
                                      on_lag=lambda windows, ms: ref.tell(VadSkipped(windows, ms)))
            except VadOptionError as exc:
                self.call.refuse("vad", f"vad: {exc}", exc.status)
            else:
                self._vad = detector
                if option.vad.type.strip().lower() == "silero":
                    self.call.clock.after_tick("silero", self.call.services.silero.start_flush)
                if option.vad.samplerate != MEDIA_RATE:
                    down = Resampler(MEDIA_RATE, option.vad.samplerate)
                    listeners.append(lambda frame, at: detector.push(down.process(frame), at))
                else:
                    listeners.append(detector.push)
        tones = DtmfDetector(MEDIA_RATE)

        def inband_dtmf(frame: np.ndarray, at: float) -> None:
            for digit in tones.feed(frame, int(at)):
                ref.tell(Dtmf(digit.digit, digit.start_ms, "inband"))

        denoiser = Denoiser(MEDIA_RATE, 320) if option.denoise else None
        await self.call.ask_child("track", Listen(denoiser=denoiser, listeners=tuple(listeners),
                                                  raw_listeners=(inband_dtmf,)))
        if option.asr is not None:
            await self._start_asr(option.asr)
        if option.inactivity_timeout:
            self._watch_inactivity(option.inactivity_timeout)

    def caller_input(self) -> None:
        """The caller said or pressed something: a pending waitInputTimeout no longer applies."""
        self.call.disarm("wait_input")

    def release(self) -> None:
        vad, self._vad = self._vad, None
        if vad is not None:
            vad.close()

    async def _start_asr(self, option: api.TranscriptionOption) -> None:
        call = self.call
        services = call.services
        wants_grammar = isinstance(option.extra, dict) and ("grammar" in option.extra or "keywords" in option.extra)
        default = services.grammar_asr if wants_grammar and services.grammar_asr else services.default_asr
        name = (option.provider or default or "").lower()
        factory = call.services.asr.get(name)
        if factory is None:
            known = ", ".join(sorted(call.services.asr)) or "none"
            call.refuse("asr", f"asr: unknown provider {option.provider!r} (available: {known})", 400)
            return
        audio = await call.ask_child("track", Subscribe("asr", "heard", capacity=100))
        ring = PrerollRing(2.0)
        session_id = call.session_id
        await call.start_service(
            "asr",
            # A fresh provider for every start: a restart must not inherit a broken client.
            lambda parent: Asr.start(factory(option), option, audio, ring, report=parent.tell_quietly,
                                     session_id=session_id, parent=parent, name="asr"))

    def _vad_event(self, ev: Any) -> None:
        call = self.call
        if isinstance(ev, SpeechStarted):
            self.caller_input()
            call.emit(api.SpeakingEvent(track_id=call.session_id, timestamp=now_ms(), start_time=ev.start_time))
        elif isinstance(ev, SilenceDetected):
            call.emit(api.SilenceEvent(track_id=call.session_id, timestamp=now_ms(), start_time=ev.start_time,
                                       duration=ev.duration))

    def _asr_text(self, msg: AsrText) -> None:
        call = self.call
        self.caller_input()
        ts = now_ms()
        if not self._asr_utterance_reported:
            self._asr_utterance_reported = True
            call.emit(api.MetricsEvent(timestamp=ts, key=f"ttfb.asr.{msg.provider}",
                                       duration=max(0, ts - msg.first_audio_ms),
                                       data={"index": self._asr_index, "provider": msg.provider}))
        cls = api.AsrFinalEvent if msg.final else api.AsrDeltaEvent
        call.emit(cls(track_id=call.session_id, timestamp=ts, index=self._asr_index, text=msg.text,
                      start_time=msg.start_ms, end_time=msg.end_ms))
        if msg.final:
            self._asr_index += 1
            self._asr_utterance_reported = False

    def _watch_inactivity(self, timeout: float) -> None:
        self.call.arm("inactivity", min(1.0, timeout / 4), CheckInactivity())

    async def _check_inactivity(self) -> None:
        call = self.call
        timeout = call.option.inactivity_timeout if call.option is not None else None
        if not timeout or call.child("track") is None or call.ended:
            return
        stats = await call.ask_child("track", GetTrackStats())
        last = stats.last_input_at or call.answer_at or time.time()
        if time.time() - last >= timeout:
            call.emit(api.InactivityEvent(track_id=call.session_id, timestamp=now_ms()))
            call.hangup("inactivity_timeout", "system")
            return
        self._watch_inactivity(timeout)
