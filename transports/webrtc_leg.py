"""The `/call/webrtc` leg: a browser (or any WebRTC peer) on aiortc.

The peer's SDP offer comes in `invite`/`accept` (`option.offer`); the leg answers it at once, and
the `answer` event carries the gateway's SDP answer. ICE candidates the peer trickles arrive as
`addIceCandidate` commands on the same WebSocket: the connection hands them to the leg's
`CandidateInbox`, which holds them until the offer is applied (they often arrive before it).

The leg answers with one audio codec, the Track's codec for the call: the codec the application
named in `option.codec` if it gave one (pcmu, pcma, g722), otherwise the first of the offer's
codecs the gateway carries (Opus, in a browser's offer). telephone-event is answered beside it,
so RFC 4733 digits from the browser (`RTCDTMFSender`) become `dtmf` events.

How a WebRTC call ends:
- the application hangs up or its WebSocket closes: the Call hangs the leg up, which closes the
  peer connection (DTLS close_notify to the browser);
- the browser closes its peer connection: `LegHangup("peer_closed")`;
- ICE or DTLS fails, the peer is not connected within `webrtc.ice_timeout`, or a connected peer
  sends nothing at all (no RTP, no RTCP) for `webrtc.disconnect_timeout`: `LegFailed` with the
  cause, which the Call turns into an `error` event and a `media_failure` hangup.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog
from aiortc import RTCIceCandidate, RTCPeerConnection, RTCSessionDescription
from aiortc import sdp as aiortc_sdp

from actors.leg import LegAnswered, LegContext, LegDtmf, LegFailed, LegHangup, LegMedia, LegRefused
from protocol import api
from protocol.codecs import CodecInfo

from .config import IceServer, WebRtcConfig
from .leg_maker import LegMaker, LegProvider
from .webrtc_ice import rtc_configuration
from .ws_session import Outbox
from .webrtc_media import (
    InboundAudio,
    OutboundAudio,
    gateway_codec,
    is_telephone_event,
    restrict_audio,
)

log = structlog.get_logger("webrtc")

__all__ = ["CandidateInbox", "WebRtcLeg", "WebRtcSettings", "parse_candidate", "webrtc_legs"]

WATCH_INTERVAL = 1.0        # seconds between two looks at the connection's timeouts
PTIME_MS = 20               # what the gateway sends; received packets may be any multiple


@dataclass(frozen=True, slots=True)
class WebRtcSettings:
    config: WebRtcConfig
    ice_servers: tuple[IceServer, ...] = ()    # for the gateway's own peer connections


def parse_candidate(cmd: api.AddIceCandidate) -> RTCIceCandidate | None:
    """aiortc's candidate for an `addIceCandidate` command; None for the end of candidates.
    LegRefused (400) names what is wrong with it."""
    if cmd.end_of_candidates:
        return None
    text = cmd.candidate.strip()  # type: ignore[union-attr]
    if text.startswith("candidate:"):
        text = text[len("candidate:"):]
    bits = text.split()
    try:
        if len(bits) < 8 or bits[6] != "typ":
            raise ValueError
        candidate = aiortc_sdp.candidate_from_sdp(text)
    except ValueError:
        raise LegRefused(f"addIceCandidate: candidate: not an ICE candidate attribute: {cmd.candidate!r}",
                         400) from None
    if cmd.sdp_mid is None and cmd.mline_index is None:
        raise LegRefused("addIceCandidate: needs sdpMid or sdpMLineIndex", 400)
    candidate.sdpMid = cmd.sdp_mid
    candidate.sdpMLineIndex = cmd.mline_index
    return candidate


def offered_ptime(offer: str) -> int | None:
    """The `a=ptime` of the offer's audio section (aiortc's parser does not keep it)."""
    section = None
    for line in offer.splitlines():
        if line.startswith("m="):
            section = "audio" if line.startswith("m=audio") else "other"
        elif section == "audio" and line.startswith("a=ptime:"):
            value = line[len("a=ptime:"):].strip()
            return int(value) if value.isdigit() and 0 < int(value) <= 120 else None
    return None


class CandidateInbox:
    """The trickled candidates of one connection, on their way from the WebSocket to its leg.

    `add` never waits (the connection's reader must stay free for `hangup`): a candidate is
    checked, then queued, and one task hands the queue to the peer connection in order once the
    offer is applied (candidates often arrive before it). At most `webrtc.max_candidates` are
    taken per call; the next is refused (413)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0
        self.failed = 0
        self._pending: deque[RTCIceCandidate | None] = deque()
        self._pc: RTCPeerConnection | None = None
        self._task: asyncio.Task[None] | None = None

    def add(self, cmd: api.AddIceCandidate) -> None:
        candidate = parse_candidate(cmd)
        if self.taken >= self.limit:
            raise LegRefused(f"addIceCandidate: more than {self.limit} candidates for one call "
                             "(webrtc.max_candidates)", 413)
        self.taken += 1
        self._pending.append(candidate)
        self._kick()

    def ready(self, pc: RTCPeerConnection) -> None:
        """The offer is applied: what waited goes to the peer connection, later ones straight on."""
        self._pc = pc
        self._kick()

    def _kick(self) -> None:
        if self._pc is not None and self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="webrtc-candidates")

    async def _drain(self) -> None:
        while self._pending and self._pc is not None:
            candidate = self._pending.popleft()
            try:
                await self._pc.addIceCandidate(candidate)
            except Exception as exc:  # noqa: BLE001 - one bad candidate must not stop the others
                self.failed += 1
                log.warning("ice candidate not added", candidate=str(candidate), error=repr(exc))

    async def close(self) -> None:
        self._pending.clear()
        self._pc = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class WebRtcLeg:
    kind = "webrtc"

    def __init__(self, context: LegContext, settings: WebRtcSettings, inbox: CandidateInbox,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.context = context
        self.settings = settings
        self.inbox = inbox
        self._now = now
        self.pc: RTCPeerConnection | None = None
        self.codec: CodecInfo | None = None
        self.inbound: InboundAudio | None = None
        self.outbound: OutboundAudio | None = None
        self.answered_at: float | None = None
        self.connected_at: float | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._done = False          # the leg reported its end (or was told to end): nothing more
        self.log = log.bind(session_id=context.session_id)

    # --- media plane -----------------------------------------------------------------------------

    def pull(self) -> bytes | None:
        inbound = self.inbound
        return None if inbound is None else inbound.pull(self._now())

    def send(self, payload: bytes) -> None:
        outbound = self.outbound
        if outbound is not None:
            outbound.push(payload)

    # --- control plane ---------------------------------------------------------------------------

    async def dial(self, option: api.CallOption) -> LegAnswered:
        return LegAnswered(await self._answer_offer(option))

    async def answer(self, option: api.CallOption) -> LegMedia:
        return await self._answer_offer(option)

    async def ring(self, command: api.Ringing) -> LegMedia | None:
        raise LegRefused("a /call/webrtc call is placed by its peer's offer; there is nothing to ring", 400)

    async def reject(self, code: int, reason: str) -> None:
        raise LegRefused("a /call/webrtc call is placed by its peer's offer; there is nothing to reject", 400)

    async def send_dtmf(self, digits: str, duration_ms: int) -> None:
        raise LegRefused("a /call/webrtc leg sends no RFC 4733 digits (aiortc's sender carries one codec); "
                         "play the tones as audio instead", 501)

    async def transfer(self, command: api.Refer) -> None:
        raise LegRefused("transfer needs a SIP leg; this is a /call/webrtc session", 400)

    async def hangup(self, reason: str, headers: Mapping[str, str] | None = None) -> None:
        """WebRTC has no hangup signalling of its own: closing the peer connection tells the peer
        (DTLS close_notify); the application hears the `hangup` event on its WebSocket."""
        self._done = True
        await self._close_pc()

    async def close(self) -> None:
        self._done = True
        await self.inbox.close()
        await self._close_pc()
        inbound, outbound = self.inbound, self.outbound
        if inbound is not None and outbound is not None:
            j = inbound.stats().jitter
            self.log.info("webrtc leg closed", packets_in=inbound.packets, dtmf_packets=inbound.dtmf_packets,
                          dropped_payload_type=inbound.dropped_payload_type, played=j.played, gaps=j.gaps,
                          late=j.late, skipped=j.skipped, resyncs=j.resyncs, frames_out=outbound.sent,
                          frames_out_dropped=outbound.dropped, candidates_failed=self.inbox.failed)

    # --- the offer -------------------------------------------------------------------------------

    async def _answer_offer(self, option: api.CallOption) -> LegMedia:
        if self.pc is not None:
            raise LegRefused("the WebRTC peer connection is already negotiated", 400)
        if not option.offer:
            raise LegRefused("option.offer: a /call/webrtc call needs the peer's SDP offer", 400)
        try:
            offer = aiortc_sdp.SessionDescription.parse(option.offer)
        except (ValueError, IndexError, KeyError) as exc:
            raise LegRefused(f"option.offer: not a valid SDP offer: {exc!r}", 400) from None
        audio = next((m for m in offer.media if m.kind == "audio"), None)
        if audio is None:
            raise LegRefused("option.offer: no audio m-line; the gateway answers audio only", 488)
        chosen = self._choose_codec(audio.rtp.codecs, option)
        # One telephone-event: at the audio codec's clock as Chrome offers it, else the one offered
        # (Firefox offers only telephone-event/8000, also beside Opus).
        offered_events = [c for c in audio.rtp.codecs if is_telephone_event(c)]
        event = next((c for c in offered_events if c.clockRate == chosen.clockRate),
                     offered_events[0] if offered_events else None)
        events = {} if event is None else {event.payloadType: event.clockRate}
        ptime = offered_ptime(option.offer) or PTIME_MS
        codec = gateway_codec(chosen)
        assert codec is not None

        cfg = self.settings.config
        pc = RTCPeerConnection(rtc_configuration(self.settings.ice_servers))
        self.pc = pc
        outbound = OutboundAudio(chosen.clockRate, chosen.clockRate * PTIME_MS // 1000, cfg.outbound_frames)
        transceiver = pc.addTransceiver(outbound, direction="sendrecv")
        pc.on("connectionstatechange", self._state_changed)
        offer_sdp = restrict_audio(option.offer, [chosen.payloadType] + list(events))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:  # noqa: BLE001 - aiortc raises several kinds for an offer it cannot take
            await self._close_pc()
            self.pc = None          # the call is still new: a corrected offer may follow
            raise LegRefused(f"option.offer: {exc}", 488) from None

        inbound = InboundAudio(chosen.payloadType, chosen.clockRate, ptime,
                               telephone_events=events, jitter_target_ms=cfg.jitter_target_ms,
                               jitter_max_ms=cfg.jitter_max_ms, dtmf_timeout=cfg.dtmf_timeout,
                               on_digit=self._digit, now=self._now)
        self._intercept(transceiver, inbound)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        self.inbox.ready(pc)
        self.codec, self.inbound, self.outbound = codec, inbound, outbound
        self.answered_at = self._now()
        self._watch = asyncio.get_running_loop().call_later(WATCH_INTERVAL, self._check)
        self.log.info("webrtc answered", codec=codec.name, payload_type=chosen.payloadType,
                      telephone_events=sorted(events))
        return LegMedia(codec, pc.localDescription.sdp)

    def _choose_codec(self, offered: list, option: api.CallOption):
        carried = [c for c in offered if gateway_codec(c) is not None]
        if not carried:
            names = ", ".join(sorted({c.mimeType.split("/")[-1] for c in offered})) or "none"
            raise LegRefused(f"option.offer: no codec the gateway carries (offered: {names}; "
                             "carried: opus, G722, PCMU, PCMA)", 488)
        if "codec" not in option.fields_set:
            return carried[0]
        for c in carried:
            if gateway_codec(c).name == option.codec:  # type: ignore[union-attr]
                return c
        offered_names = ", ".join(gateway_codec(c).name for c in carried)  # type: ignore[union-attr]
        raise LegRefused(f"option.codec: {option.codec} is not in the offer (it offers {offered_names})", 488)

    def _intercept(self, transceiver, inbound: InboundAudio) -> None:
        """Take the received packets from aiortc before its jitter buffer and decoder thread
        (see webrtc_media); RTCP still goes to aiortc, and counts as a sign of life."""
        receiver, sender = transceiver.receiver, transceiver.sender
        receiver._handle_rtp_packet = inbound.handle_rtp  # noqa: SLF001 - the documented seam, pinned aiortc
        for part in (receiver, sender):
            original = part._handle_rtcp_packet  # noqa: SLF001

            async def on_rtcp(packet, original=original) -> None:
                inbound.seen()
                await original(packet)

            part._handle_rtcp_packet = on_rtcp  # noqa: SLF001

    # --- what happens on the connection ----------------------------------------------------------

    def _state_changed(self) -> None:
        pc = self.pc
        if pc is None or self._done:
            return
        state = pc.connectionState
        self.log.info("webrtc connection", state=state)
        if state == "connected" and self.connected_at is None:
            self.connected_at = self._now()
        elif state == "failed":
            self._fail("ICE or DTLS failed")
        elif state == "closed":
            self._done = True
            self.context.report(LegHangup("peer_closed", "callee"))

    def _check(self) -> None:
        self._watch = None
        if self._done:
            return
        cfg = self.settings.config
        now = self._now()
        if self.connected_at is None:
            if self.answered_at is not None and now - self.answered_at >= cfg.ice_timeout:
                self._fail(f"ICE did not connect within {cfg.ice_timeout:g} s")
                return
        else:
            inbound = self.inbound
            last = self.connected_at
            if inbound is not None and inbound.last_packet_at is not None:
                last = max(last, inbound.last_packet_at)
            if now - last >= cfg.disconnect_timeout:
                self._fail(f"nothing received from the peer for {cfg.disconnect_timeout:g} s (disconnected)")
                return
        self._watch = asyncio.get_running_loop().call_later(WATCH_INTERVAL, self._check)

    def _fail(self, error: str) -> None:
        if self._done:
            return
        self._done = True
        self.log.warning("webrtc leg failed", error=error)
        self.context.report(LegFailed(error))

    def _digit(self, digit: str) -> None:
        self.context.report(LegDtmf(digit, int(time.time() * 1000), "rfc4733"))

    async def _close_pc(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        pc = self.pc
        if pc is not None:
            await pc.close()


def webrtc_legs(settings: WebRtcSettings) -> LegProvider:
    """The LegProvider of `/call/webrtc`: per connection, the leg factory and the hook that takes
    its `addIceCandidate` commands."""

    def provider(session_id: str, outbox: Outbox) -> LegMaker:
        inbox = CandidateInbox(settings.config.max_candidates)
        return LegMaker(lambda context: WebRtcLeg(context, settings, inbox),
                        commands={api.AddIceCandidate: inbox.add})

    return provider
