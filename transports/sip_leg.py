"""The SIP call leg (`/call/sip`): one dialog per call, its media on an RtpSession.

A ``SipLeg`` implements the Leg seam (actors/leg.py). Its signalling runs on the SIP endpoint's
transaction layer: the leg registers itself as the handler of its Call-ID and gets every request,
response, ACK and transaction event of that Call-ID, synchronously, on the event loop. Dialog
state (tags, CSeq, route set, remote target) is ``protocol.sip.dialog``; SDP offer/answer is
``protocol.negotiate``; digest answers are ``protocol.sip.auth``. The media plane is the
RtpSession, which the call's Track pulls and feeds on every media tick.

Outbound (``dial``): INVITE with our offer; 1xx without SDP reports ringing, 183 (any 1xx) with
SDP starts early media, 2xx is ACKed and reports the answer; 401/407 are answered once with
digest credentials; another final response is a rejection with its code and reason. A hangup
before the answer sends CANCEL (as soon as a provisional response allows it; a 2xx that crosses
it is ACKed and ended with BYE), after the answer BYE.

Inbound (``SipLeg.incoming``): built from the INVITE before its Call exists, it buffers what it
would report until the Call binds it. ``ring`` sends 180, or 183 with our answer (early media);
``answer`` 200 with the same answer; ``reject`` its status; CANCEL from the caller sends 487 and
reports a hangup.

In the dialog, both ways: BYE ends the call; INFO with application/dtmf-relay or
application/dtmf reports a digit (as RFC 4733 events do, from the RtpSession); a re-INVITE or
UPDATE with sendonly/inactive/0.0.0.0 reports a hold (and a later one the resume); REFER from the
peer is accepted (202, NOTIFY) and reported as a transfer request; ``transfer`` sends REFER and
reports the NOTIFYs' progress and outcome. A peer that refuses REFER (405/501) gets the original's
fallback: the leg calls the target itself with a second SipLeg and relays RTP payloads between the
two (same codec, no transcoding) once it answers; either side's hangup ends the other. DTMF goes out as RFC 4733 when telephone-event was negotiated,
else as SIP INFO.

Session timers (RFC 4028) are negotiated when the peer asks for them (``protocol.sip.session_timer``):
the leg refreshes at half the interval when it is the refresher (UPDATE, else re-INVITE), and
sends BYE shortly before a session the peer should refresh expires.

Choices (docs/sip.md): no reliable provisional responses (RFC 3262) and no session timer imposed
by the gateway on a peer that does not ask for one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from actors.leg import (
    LegAnswered,
    LegContext,
    LegDtmf,
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
from protocol import api
from protocol.codecs import CodecInfo, codec_info
from protocol.dtmf import parse_dtmf_info
from protocol.errors import ProtocolError
from protocol.negotiate import NegotiatedMedia, SdpSession, answer, make_offer, process_answer
from protocol.sdp import SessionDescription
from protocol.sip.auth import Credentials, DigestClient
from protocol.sip.dialog import (
    Dialog,
    DialogConfirmed,
    DialogState,
    ForkedAnswer,
    InviteDialogs,
    RetransmittedAnswer,
    build_cancel,
)
from protocol.sip.message import Request, Response, make_request, make_response
from protocol.sip.session_timer import (
    SessionTimer,
    TooSmall,
    expiry_margin,
    from_response,
    negotiate_uas,
)
from protocol.sip.transaction import (
    AckReceived,
    RequestReceived,
    ResponseReceived,
    Terminated,
    Timeout,
    TransactionKey,
    TransactionState,
    TransportError,
)
from protocol.sip.uri import NameAddr, SipUri, parse_name_addr, parse_uri

from .config import Config
from .rtp_ports import RtpPortAllocator, RtpPortsExhausted
from .rtp_session import RtpSession
from .sip_endpoint import EndpointClosed, SipEndpoint, SipEvent, SipTarget, target_for_uri

__all__ = ["SipLeg", "SipLegEnv", "sip_uri_text"]

log = structlog.get_logger("sip.leg")

_HEADER_NAME = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# Headers the leg writes itself: an application's `sip.headers` may not replace them.
_RESERVED = frozenset({"via", "from", "to", "call-id", "cseq", "contact", "content-type", "content-length",
                       "max-forwards", "route", "record-route", "authorization", "proxy-authorization"})
_DTMF_TYPES = "application/dtmf-relay, application/dtmf"
_AUTH_ATTEMPTS = 2          # 401/407 answered at most this often per request (a wrong password loops)
_REFER_FALLBACK = (405, 501)  # a REFER refused so: the gateway calls the target itself
_LINGER = 32.0              # 64*T1: a closed leg keeps its Call-ID this long at most for late messages


@dataclass
class SipLegEnv:
    """What every SIP leg of the gateway shares: the live endpoint, RTP ports and configuration,
    and the credentials of `[[register_users]]` for calls to their servers."""

    endpoint: Callable[[], SipEndpoint | None]
    allocator: RtpPortAllocator
    config: Config
    credentials_for: Callable[[SipUri], Credentials | None] = lambda uri: None

    def live_endpoint(self) -> SipEndpoint:
        endpoint = self.endpoint()
        if endpoint is None or endpoint.closed or not endpoint.started:
            raise LegRefused("the SIP endpoint is not running", 503)
        return endpoint


@dataclass
class _Pending:
    """A request we sent and are waiting for the outcome of."""

    request: Request
    done: asyncio.Future[Response | None] | None = None
    auth_tries: int = 0


def sip_uri_text(party: str) -> str:
    """A callee/caller as the application wrote it, as a URI: "bob@host" and "host:5060" get
    "sip:", a name-addr keeps its URI."""
    text = party.strip()
    if text.startswith("<") or '"' in text:
        return str(parse_name_addr(text).uri)
    if not re.match(r"^(sips?|tel):", text, re.IGNORECASE):
        text = "sip:" + text
    return text


def _codec_of(media: NegotiatedMedia) -> CodecInfo:
    return codec_info(media.codec.name.lower())


def _now_ms() -> int:
    return int(time.time() * 1000)


class SipLeg:
    """A call's SIP dialog and RTP stream behind the Leg seam."""

    kind = "sip"

    def __init__(self, env: SipLegEnv, context: LegContext | None = None) -> None:
        self.env = env
        self.context = context
        self.config = env.config
        self._reports: list[object] = []              # before a Call binds an incoming leg
        self.log = log.bind(session_id=context.session_id if context else None)
        self.call_id = ""
        self.role = "uac"
        self.state = "idle"        # idle | calling | early | confirmed | ended
        self._endpoint: SipEndpoint | None = None
        self._registered = False
        self._transport = "udp"
        self._peer: SipTarget | None = None           # where the dialog's first request came from / went to
        self._dialog: Dialog | None = None
        self._rtp: RtpSession | None = None
        self._sdp = SdpSession("0.0.0.0")
        self._local_sdp: SessionDescription | None = None
        self._media: NegotiatedMedia | None = None
        self._held = False
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._pending: dict[TransactionKey, _Pending] = {}
        self.closed = False
        # outbound
        self._invite: Request | None = None
        self._invite_key: TransactionKey | None = None
        self._invite_dialogs: InviteDialogs | None = None
        self._offer: SessionDescription | None = None
        self._digest: DigestClient | None = None
        self._auth_tries = 0
        self._cancel_wanted = False
        self._ringing_reported = False
        self._early = False
        # inbound
        self._offer_text = ""
        self._final_sent = False
        self._acked = False
        self._bye_after_ack = False
        self._hangup_headers: Mapping[str, str] | None = None
        self._late_offer = False
        # transfer (our REFER)
        self._refer_key: TransactionKey | None = None
        self._refer_done = True
        self._refer_command: api.Refer | None = None
        # the fallback of a refused REFER: our own call to the target, bridged to this leg's media
        self._bridge: SipLeg | None = None
        self._bridged = False
        self._bridge_frames: deque[bytes] = deque()
        self.bridge_figures = {"to_target": 0, "to_caller": 0, "dropped": 0}
        # RFC 4028 session timer: the negotiated session, the refresh we sent, what the peer allows
        self._session: SessionTimer | None = None
        self._we_refresh = False
        self._refresh_key: TransactionKey | None = None
        self._refresh_cseq = 0
        self._peer_allow: frozenset[str] = frozenset()
        self.session_refreshes_sent = 0
        self.session_refreshes_received = 0
        # figures
        self.dtmf_info_received = 0
        self.dtmf_info_sent = 0
        self.requests_refused: dict[int, int] = {}

    # --- the Call binds the leg -------------------------------------------------------------------

    def bind(self, context: LegContext) -> SipLeg:
        """Attach an incoming leg to the Call made for it; what happened meanwhile is reported now."""
        self.context = context
        self.log = log.bind(session_id=context.session_id, call_id=self.call_id)
        reports, self._reports = self._reports, []
        for event in reports:
            context.report(event)
        return self

    def report_now(self, event: object) -> None:
        """Report ``event`` to the Call (or keep it until the Call binds the leg)."""
        self._report(event)

    def _report(self, event: object) -> None:
        if self.context is None:
            self._reports.append(event)
        else:
            self.context.report(event)

    # --- media plane -------------------------------------------------------------------------------

    def pull(self) -> bytes | None:
        rtp = self._rtp
        if rtp is None:
            return None
        payload = rtp.pull()
        if payload is not None and self._bridged:
            bridge = self._bridge
            if bridge is not None:
                bridge.send(payload)        # the caller, heard by the transfer target (same codec)
                self.bridge_figures["to_target"] += 1
        return payload

    def send(self, payload: bytes) -> None:
        rtp = self._rtp
        if rtp is None:
            return
        bridge = self._bridge
        if self._bridged and bridge is not None:
            # Bridged: the caller hears the target; a tick without a target frame carries what the
            # call plays (silence, or a `tts`/`play` the application sends over the bridge).
            frames = self._bridge_frames
            limit = self.config.rtp.bridge_max_queued
            for _ in range(limit):
                heard = bridge.pull()
                if heard is None:
                    break
                if len(frames) >= limit:
                    frames.popleft()
                    self.bridge_figures["dropped"] += 1
                frames.append(heard)
            if frames:
                payload = frames.popleft()
                self.bridge_figures["to_caller"] += 1
        rtp.send(payload)

    def metrics(self, timestamp: int) -> list[api.MetricsEvent]:
        """The RTP figures (loss, jitter, RTCP) as a `metrics` event, for the call's end."""
        rtp = self._rtp
        if rtp is None or rtp.media is None:
            return []
        event = rtp.stats().metrics_event(timestamp)
        if any(self.bridge_figures.values()):
            # A transfer bridged by the gateway (refused REFER): the frames relayed each way.
            event = dataclasses.replace(event, data={**event.data, "bridge": dict(self.bridge_figures)})
        return [event]

    # --- outbound ----------------------------------------------------------------------------------

    async def dial(self, option: api.CallOption, *, codecs: list[str] | None = None) -> None:
        if self.state != "idle":
            raise LegRefused("invite: this SIP leg has already placed its call", 400)
        if not option.callee:
            raise LegRefused("invite: option.callee is required on /call/sip (e.g. sip:bob@example.com)", 400)
        endpoint = self.env.live_endpoint()
        try:
            uri = parse_uri(sip_uri_text(option.callee))
            target = target_for_uri(uri)
        except (ProtocolError, ValueError) as exc:
            raise LegRefused(f"invite: option.callee: {getattr(exc, 'message', exc)}", 400) from None
        extra = _extra_headers(option.sip.headers if option.sip else None, "invite: option.sip.headers")
        timeout = option.handshake_timeout          # seconds (the API decodes "30s", "500ms", numbers)
        try:
            target = await endpoint.resolve(target)
        except LookupError as exc:
            raise LegRefused(f"invite: {exc}", 404) from None
        self._peer = target
        self._transport = target.transport
        host = endpoint.advertised_host(target.host)
        caller = self._from_header(option.caller, host)
        await self._open_rtp()
        assert self._rtp is not None
        self._sdp = SdpSession(host)
        self._offer = make_offer(self._sdp, codecs or self.config.rtp.codecs, host, self._rtp.port,
                                 ptime=self.config.rtp.ptime)
        self._local_sdp = self._offer
        self.call_id = f"{secrets.token_hex(10)}@active-call"
        self.log = self.log.bind(call_id=self.call_id)
        self._digest = self._credentials(option.sip, uri)
        contact = endpoint.contact(target, "active-call")
        self._invite = make_request("INVITE", uri, headers=[
            ("Via", endpoint.via(target)),
            ("Max-Forwards", "70"),
            ("From", f"{caller};tag={secrets.token_hex(5)}"),
            ("To", f"<{uri}>"),
            ("Call-ID", self.call_id),
            ("CSeq", "1 INVITE"),
            ("Contact", str(contact)),
            ("Allow", endpoint.allow),
            ("Supported", "timer"),
            ("User-Agent", endpoint.user_agent),
            *extra,
            ("Content-Type", "application/sdp"),
        ], body=bytes(self._offer))
        self._invite_dialogs = InviteDialogs(self._invite, local_contact=contact)
        self._endpoint = endpoint
        endpoint.register(self.call_id, self.on_sip_event)
        self._registered = True
        self.state = "calling"
        self._invite_key = self._send(self._invite, target)
        self._arm("ring", timeout or self.config.sip.ring_timeout, self._ring_timeout)
        self.log.info("sip invite sent", callee=str(uri), target=f"{target.host}:{target.port}/{target.transport}")
        return None

    def _from_header(self, caller: str | None, host: str) -> str:
        if not caller:
            return f"<sip:active-call@{_host_text(host)}>"
        try:
            return f"<{parse_uri(sip_uri_text(caller))}>"
        except ProtocolError as exc:
            raise LegRefused(f"invite: option.caller: {exc.message}", 400) from None

    def _credentials(self, sip: api.SipOption | None, uri: SipUri) -> DigestClient | None:
        if sip is not None and sip.username and sip.password is not None:
            return DigestClient(Credentials(sip.username, sip.password, sip.realm))
        creds = self.env.credentials_for(uri)
        return DigestClient(creds) if creds is not None else None

    def _ring_timeout(self) -> None:
        if self.state in ("calling", "early"):
            self.log.info("sip call not answered in time")
            self._cancel_invite()
            self.state = "ended"
            self._report(LegRejected(408, "Request Timeout (not answered in time)"))

    # --- inbound -----------------------------------------------------------------------------------

    @classmethod
    def incoming(cls, env: SipLegEnv, event: RequestReceived, endpoint: SipEndpoint) -> SipLeg:
        """A leg for a new INVITE, before its Call exists (``bind`` attaches the Call)."""
        leg = cls(env)
        request = event.request
        leg.role = "uas"
        leg.state = "early"
        leg.call_id = request.call_id
        leg._endpoint = endpoint
        leg._registered = True              # the endpoint registers the handler on_new_call returns
        leg._invite = request
        leg._invite_key = event.key
        leg._transport = request.via[0].transport.lower()
        source = event.addr or (request.via[0].host, request.via[0].port or 5060)
        leg._peer = SipTarget(source[0], source[1], leg._transport if leg._transport in ("udp", "tcp") else "udp")
        contact = endpoint.contact(leg._peer, "active-call")
        leg._dialog = Dialog.uas(request, secrets.token_hex(5), local_contact=contact)
        leg._offer_text = request.body.decode("utf-8", "replace")
        leg._late_offer = not request.body
        leg.log = log.bind(call_id=leg.call_id)
        return leg

    def offer(self) -> LegOffer:
        assert self._invite is not None
        request = self._invite
        headers = {name: value for name, value in request.headers if name.lower().startswith("x-")}
        return LegOffer(caller=str(request.from_.uri), callee=str(request.to.uri), sdp=self._offer_text,
                        headers=headers)

    def check_offer(self) -> tuple[int, str, list[tuple[str, str]]] | None:
        """Whether the INVITE can be answered at all (done before a call is made for it): None, or
        the status, reason and headers to refuse it with. Of the extensions only session timers are
        supported (RFC 4028; a Session-Expires below sip.min_se is answered 422 with Min-SE); a
        Require naming another, e.g. 100rel, is answered 420 with Unsupported (RFC 3261 §8.2.2.3)."""
        assert self._invite is not None
        required = [token.strip() for value in self._invite.get_all("Require") for token in value.split(",")
                    if token.strip() and token.strip().lower() != "timer"]
        if required:
            return 420, "Bad Extension", [("Unsupported", ", ".join(required))]
        self._peer_allow = _allowed(self._invite)
        refused = self._negotiate_session(self._invite)
        if refused is not None:
            return refused
        if self._late_offer:
            return None
        try:
            offer = SessionDescription.parse(self._offer_text)
            answer(offer, self.config.rtp.codecs, "127.0.0.1", 9)
        except ProtocolError as exc:
            return (488 if exc.status == 488 else 400), f"Not Acceptable Here ({exc.message})"[:200], []
        return None

    def refuse_incoming(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None) -> None:
        """Answer the INVITE with a final status before (or instead of) a call; the leg is done."""
        self._respond_invite(status, reason, headers=headers)
        self.state = "ended"
        self._release()

    async def ring(self, command: api.Ringing) -> LegMedia | None:
        self._need_uas("ringing")
        if command.early_media:
            media = await self._local_answer()
            self._respond_invite(183, "Session Progress", sdp=True)
            return media
        self._respond_invite(180, "Ringing")
        return None

    async def answer(self, option: api.CallOption) -> LegMedia:
        self._need_uas("accept")
        media = await self._local_answer()
        self._respond_invite(200, "OK", sdp=True)
        self.state = "confirmed"
        self._arm_session()
        return media

    async def reject(self, code: int, reason: str) -> None:
        if self.role != "uas" or self._final_sent:
            return
        self._respond_invite(code, reason or None)
        self.state = "ended"

    def _need_uas(self, what: str) -> None:
        if self.role != "uas":
            raise LegRefused(f"{what}: only for an incoming call", 400)
        if self._final_sent or self.state == "ended":
            raise LegRefused(f"{what}: the incoming call has already been answered or ended", 409)

    async def _local_answer(self) -> LegMedia:
        """Our answer to the caller's offer (the same in 183 and 200), or our offer for a late-offer
        INVITE (the answer comes with the ACK)."""
        endpoint = self.env.live_endpoint()
        if self._rtp is None:
            await self._open_rtp()
        assert self._rtp is not None and self._peer is not None
        host = endpoint.advertised_host(self._peer.host)
        if self._local_sdp is None:
            self._sdp = SdpSession(host)
            if self._late_offer:
                # One audio codec only: the track starts on it before the caller's answer (in the ACK).
                prefs = [self._first_codec(), "telephone-event"]
                self._local_sdp = make_offer(self._sdp, prefs, host, self._rtp.port, ptime=self.config.rtp.ptime)
                self._offer = self._local_sdp
            else:
                try:
                    sdp, media = answer(SessionDescription.parse(self._offer_text), self.config.rtp.codecs, host,
                                        self._rtp.port, session=self._sdp, ptime=self.config.rtp.ptime)
                except ProtocolError as exc:
                    raise LegRefused(f"the caller's offer cannot be answered: {exc.message}", 488) from None
                self._local_sdp = sdp
                self._apply_media(media)
        if self._media is None:
            # Late offer: RTP starts with the answer in the ACK, in the one codec we offered.
            return LegMedia(codec_info(self._first_codec().lower()), str(self._local_sdp))
        return LegMedia(_codec_of(self._media), str(self._local_sdp))

    def _first_codec(self) -> str:
        return next(c for c in self.config.rtp.codecs if c.lower() != "telephone-event")

    def _respond_invite(self, status: int, reason: str | None = None, *, sdp: bool = False,
                        headers: list[tuple[str, str]] | None = None) -> None:
        assert self._invite is not None and self._dialog is not None
        if self._final_sent:
            return
        endpoint = self._endpoint
        if endpoint is None or endpoint.closed:
            return
        extra = list(headers or [])
        body = b""
        if sdp and self._local_sdp is not None:
            extra.append(("Content-Type", "application/sdp"))
            body = bytes(self._local_sdp)
        if status >= 200 or status == 183:
            extra.insert(0, ("Allow", endpoint.allow))
        if 200 <= status < 300:
            extra[1:1] = self._session_headers()
        response = self._dialog.create_response(self._invite, status, reason, headers=extra, body=body)
        if status >= 200:
            self._final_sent = True
        try:
            endpoint.send_response(response, self._invite_key)
        except (LookupError, EndpointClosed) as exc:
            self.log.info("sip response not sent", status=status, error=repr(exc))

    # --- control plane common to both directions -----------------------------------------------

    async def send_dtmf(self, digits: str, duration_ms: int) -> None:
        if self.state not in ("early", "confirmed") or self._rtp is None:
            raise LegRefused("sendDtmf: the call has no media yet", 400)
        rtp = self._rtp
        if rtp.media is not None and rtp.media.telephone_event_pt is not None:
            try:
                rtp.send_dtmf(digits, duration_ms)
            except ValueError as exc:
                raise LegRefused(f"sendDtmf: {exc}", 400) from None
            return
        if self.state != "confirmed":
            raise LegRefused("sendDtmf: no telephone-event negotiated and no dialog for SIP INFO yet", 400)
        for digit in digits.upper():
            if digit not in "0123456789*#ABCD":
                raise LegRefused(f"sendDtmf: {digit!r} is not a DTMF digit (0-9, *, #, A-D)", 400)
        for digit in digits.upper():
            body = f"Signal={digit}\r\nDuration={duration_ms}\r\n".encode()
            self._send_in_dialog("INFO", headers=[("Content-Type", "application/dtmf-relay")], body=body)
            self.dtmf_info_sent += 1

    async def transfer(self, command: api.Refer) -> None:
        if self.state != "confirmed" or self._dialog is None:
            raise LegRefused("refer: the SIP call is not established", 400)
        if not self._refer_done:
            raise LegRefused("refer: a transfer is already in progress", 409)
        if self._bridge is not None:
            raise LegRefused("refer: the call is already bridged to a transfer target", 409)
        try:
            target = parse_uri(sip_uri_text(command.callee))
        except ProtocolError as exc:
            raise LegRefused(f"refer: callee: {exc.message}", 400) from None
        options = command.options
        extra = _extra_headers(options.sip.headers if options and options.sip else None, "refer: options.sip.headers")
        referred_by = self._dialog.local_uri.uri
        if command.caller:
            try:
                referred_by = parse_uri(sip_uri_text(command.caller))
            except ProtocolError:
                pass
        headers = [("Refer-To", f"<{target}>"), ("Referred-By", f"<{referred_by}>"), *extra]
        self._refer_key = self._send_in_dialog("REFER", headers=headers)
        self._refer_done = False
        self._refer_command = command
        timeout = options.timeout if options is not None and options.timeout else self.config.sip.refer_timeout
        self._arm("refer", float(timeout), self._refer_timeout)
        self.log.info("sip refer sent", target=str(target))

    def _refer_timeout(self) -> None:
        self._refer_outcome(408, "Request Timeout (transfer outcome not received in time)")

    def _refer_outcome(self, code: int, reason: str) -> None:
        if self._refer_done:
            return
        self._refer_done = True
        self._disarm("refer")
        if self._bridge is not None and not self._bridged:
            self._end_bridge("refer_failed")       # the target did not answer in time
        if 200 <= code < 300:
            self.log.info("sip transfer succeeded")
            self._report(LegTransferred())
        else:
            self.log.info("sip transfer failed", code=code, reason=reason)
            self._report(LegTransferFailed(code, reason))

    # --- RFC 4028 session timers -------------------------------------------------------------------

    def _negotiate_session(self, request: Request) -> tuple[int, str, list[tuple[str, str]]] | None:
        """The session a request from the peer asks for (None: accepted, else how to refuse it)."""
        sip = self.config.sip
        try:
            outcome = negotiate_uas(request, our_max=sip.session_expires, our_min=sip.min_se)
        except ProtocolError as exc:
            return 400, f"Bad Request ({exc.message})"[:120], []
        if isinstance(outcome, TooSmall):
            self.log.info("sip session interval too small", asked=request.get("Session-Expires"),
                          min_se=outcome.min_se)
            return 422, "Session Interval Too Small", [("Min-SE", str(outcome.min_se))]
        # The refresher is named per transaction: we are the UAS of the peer's request.
        self._session = outcome
        self._we_refresh = outcome is not None and outcome.refresher == "uas"
        return None

    def _session_headers(self) -> list[tuple[str, str]]:
        session = self._session
        if session is None:
            return []
        headers = [("Session-Expires", session.header()), ("Supported", "timer")]
        if session.refresher == "uac":
            headers.append(("Require", "timer"))    # RFC 4028 §9: the UAC is to refresh
        return headers

    def _session_from_response(self, response: Response) -> None:
        """The session a 2xx to our INVITE or refresh settles on (we are that transaction's UAC)."""
        try:
            session = from_response(response)
        except ProtocolError as exc:
            self.log.info("sip session-expires unusable", error=exc.message)
            session = None
        self._session = session
        self._we_refresh = session is not None and session.refresher == "uac"
        self._arm_session()

    def _arm_session(self) -> None:
        self._disarm("session")
        session = self._session
        if session is None or self.state != "confirmed":
            return
        if self._we_refresh:
            self._arm("session", session.interval / 2, self._refresh_session)
        else:
            self._arm("session", session.interval - expiry_margin(session.interval), self._session_expired)

    def _refresh_session(self) -> None:
        session = self._session
        if session is None or self.state != "confirmed" or self._refresh_key is not None:
            return
        headers = [("Session-Expires", f"{session.interval};refresher=uac"),
                   ("Supported", "timer")]
        if "UPDATE" in self._peer_allow:
            key = self._send_in_dialog("UPDATE", headers=headers)
        else:
            sdp = bytes(self._current_sdp())
            key = self._send_in_dialog("INVITE", headers=[*headers, ("Content-Type", "application/sdp")], body=sdp)
        self._refresh_key = key
        if key is None:
            return
        self.session_refreshes_sent += 1
        # Without a 2xx to this refresh, the session ends when it expires.
        self._arm("session", session.interval / 2 - expiry_margin(session.interval), self._session_expired)
        self.log.info("sip session refresh sent", interval=session.interval,
                      method="UPDATE" if "UPDATE" in self._peer_allow else "INVITE")

    def _on_refresh_response(self, response: Response, key: TransactionKey) -> None:
        pending = self._pending.get(key)
        method = response.cseq.method
        if method == "INVITE" and 200 <= response.status < 300:
            dialog = self._dialog
            endpoint = self._endpoint
            if dialog is not None and endpoint is not None:
                target = self._hop(dialog)
                try:
                    endpoint.send_ack(dialog.create_ack(response, via=endpoint.via(target)), target)
                except (ValueError, EndpointClosed) as exc:
                    self.log.info("sip ack not sent", error=repr(exc))
            if response.cseq.number == self._refresh_cseq:
                return          # a retransmitted 2xx: ACKed again, nothing else
            self._refresh_cseq = response.cseq.number
        if response.status < 200:
            return
        self._refresh_key = None
        if pending is not None and self._dialog is not None:
            self._dialog.receive_response(pending.request, response)
        if 200 <= response.status < 300:
            if method == "INVITE" and response.body and self._offer is not None:
                try:
                    self._apply_media(process_answer(self._offer, SessionDescription.parse(response.body)))
                except ProtocolError as exc:
                    self.log.info("sip refresh answer unusable", error=exc.message)
            self._session_from_response(response)
            return
        self.log.info("sip session refresh refused", status=response.status)
        if response.status in (408, 481) and self.state == "confirmed":
            self.state = "ended"
            self._report(LegHangup("timeout" if response.status == 408 else "dialog_gone", "system"))

    def _session_expired(self) -> None:
        if self.state != "confirmed":
            return
        self.log.info("sip session expired without a refresh")
        self.state = "ended"
        asyncio.get_running_loop().create_task(self._bye())
        self._report(LegHangup("session_expired", "system"))

    # --- the fallback of a refused REFER: call the target ourselves and bridge it ----------------

    def _refer_fallback(self, status: int, reason: str) -> None:
        """The peer refused REFER (405/501): as the original does, the gateway places the call to
        the target itself, in the caller's codec, and bridges the two media streams; the music on
        hold goes on until the target answers. The refer timer still bounds the whole transfer."""
        command = self._refer_command
        if command is None or self._media is None or self._rtp is None:
            self._refer_outcome(status, reason)
            return
        session_id = self.context.session_id if self.context is not None else self.call_id
        self.log.info("sip refer refused, calling the target", status=status, target=command.callee)
        target = SipLeg(self.env, LegContext(session_id=session_id, report=self._on_bridge_event))
        self._bridge = target
        self._report(LegTransferProgress(status, reason or "REFER refused", "fallback"))
        asyncio.get_running_loop().create_task(self._dial_bridge(target, command))

    async def _dial_bridge(self, target: SipLeg, command: api.Refer) -> None:
        options = command.options
        sip = options.sip if options is not None and options.sip is not None else api.SipOption()
        headers = dict(sip.headers or {})
        headers.setdefault("X-Referred-Id", self.context.session_id if self.context is not None else self.call_id)
        option = api.CallOption(callee=command.callee, caller=command.caller or None,
                                sip=dataclasses.replace(sip, headers=headers))
        assert self._media is not None
        try:
            await target.dial(option, codecs=[self._media.codec.name, "telephone-event"])
        except LegRefused as exc:
            if self._bridge is target:
                self._bridge = None
            await target.close()
            self._refer_outcome(exc.code, exc.message)

    def _on_bridge_event(self, event: object) -> None:
        """What the target's leg reports (synchronously, on the loop)."""
        target = self._bridge
        if target is None:
            return
        if isinstance(event, LegRinging):
            if not self._refer_done:
                code = 183 if event.media is not None else 180
                self._report(LegTransferProgress(code, "Session Progress" if code == 183 else "Ringing", "invite"))
        elif isinstance(event, LegAnswered):
            if self._refer_done or self.closed or self.state == "ended":
                self._end_bridge("refer_over")         # answered after the refer timed out
                return
            ours, theirs = self._media, target._media
            if ours is None or theirs is None or ours.codec.name.lower() != theirs.codec.name.lower() \
                    or ours.ptime != theirs.ptime:
                self._end_bridge("codec")
                self._refer_outcome(488, "Not Acceptable Here (the target answered in another codec or ptime)")
                return
            self._refer_done = True
            self._disarm("refer")
            self._bridged = True
            self.log.info("sip transfer bridged", codec=theirs.codec.name)
            self._report(LegTransferBridged(event.media.sdp))
        elif isinstance(event, LegRejected):
            self._forget_bridge(target)
            self._refer_outcome(event.code, event.reason)
        elif isinstance(event, (LegHangup, LegFailed)):
            bridged = self._bridged
            self._forget_bridge(target)
            if not bridged:
                self._refer_outcome(503, f"Service Unavailable (the call to the target failed: {event})")
                return
            # The target hung up: the caller's side ends too.
            self.log.info("sip transfer target hung up")
            if self.state != "ended":
                self.state = "ended"
                asyncio.get_running_loop().create_task(self._bye())
                self._report(LegHangup("byRefer", "callee"))
        else:
            self.log.info("sip transfer target event not relayed", event=type(event).__name__)

    def _forget_bridge(self, target: SipLeg) -> None:
        if self._bridge is target:
            self._bridge = None
            self._bridged = False
            self._bridge_frames.clear()
        asyncio.get_running_loop().create_task(target.close())

    def _end_bridge(self, reason: str) -> None:
        """Hang up the call to the transfer target (if any): the caller's side has ended."""
        target = self._bridge
        if target is None:
            return
        self._bridge = None
        self._bridged = False
        self._bridge_frames.clear()

        async def end() -> None:
            try:
                await target.hangup(reason)
            finally:
                await target.close()

        asyncio.get_running_loop().create_task(end())

    async def hangup(self, reason: str, headers: Mapping[str, str] | None = None) -> None:
        """End the dialog as its state requires; waits (up to sip.bye_timeout) for the BYE's answer."""
        self._hangup_headers = headers
        self._end_bridge(reason)
        if self.state == "ended" or self.state == "idle":
            self.state = "ended"
            return
        if self.role == "uac" and self.state in ("calling", "early") and self._dialog_confirmed() is None:
            self._cancel_invite()
            self.state = "ended"
            return
        if self.role == "uas" and not self._final_sent:
            code, text = (503, "Service Unavailable") if reason == "shutdown" else (480, "Temporarily Unavailable")
            self._respond_invite(code, text)
            self.state = "ended"
            return
        if self.role == "uas" and not self._acked:
            # RFC 3261 §15: the callee does not send BYE before the ACK of its 2xx (or timer L).
            self._bye_after_ack = True
            self.state = "ended"
            return
        await self._bye()

    async def _bye(self) -> None:
        self.state = "ended"
        if self._dialog is None or self._dialog.terminated:
            return
        done: asyncio.Future[Response | None] = asyncio.get_running_loop().create_future()
        extra = _extra_headers(self._hangup_headers, "hangup: headers", strict=False)
        key = self._send_in_dialog("BYE", headers=extra, done=done)
        if key is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(done), self.config.sip.bye_timeout)
        except TimeoutError:
            self.log.info("sip bye not answered in time")

    def _dialog_confirmed(self) -> Dialog | None:
        dialog = self._dialog
        return dialog if dialog is not None and dialog.state is DialogState.CONFIRMED else None

    def _cancel_invite(self) -> None:
        """CANCEL the INVITE now if a provisional response allows it, else as soon as one does."""
        self._cancel_wanted = True
        endpoint = self._endpoint
        if endpoint is None or self._invite is None or self._invite_key is None or endpoint.closed:
            return
        transaction = endpoint.transaction(self._invite_key)
        if transaction is None or not getattr(transaction, "cancellable", False):
            return
        cancel = build_cancel(self._invite)
        assert self._peer is not None
        try:
            key = endpoint.send_request(cancel, self._peer)
        except (ValueError, EndpointClosed) as exc:
            self.log.info("sip cancel not sent", error=repr(exc))
            return
        self._pending[key] = _Pending(cancel)

    async def close(self) -> None:
        self._release()

    def _release(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._end_bridge("closed")
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._rtp is not None:
            self._rtp.close()
        # The Call-ID stays routed to us while our transactions finish (a BYE's or CANCEL's
        # answer, a 2xx crossing our CANCEL), then is let go.
        if self._registered:
            asyncio.get_running_loop().call_later(_LINGER, self._unregister)
        self._maybe_unregister()

    def _maybe_unregister(self) -> None:
        if self.closed and not self._pending and (self.role == "uas" or self.state == "ended") \
                and not self._invite_pending():
            self._unregister()

    def _invite_pending(self) -> bool:
        """An outbound INVITE still waiting for its final answer (a 2xx may still need ACK/BYE)."""
        endpoint = self._endpoint
        if self.role != "uac" or endpoint is None or self._invite_key is None or endpoint.closed:
            return False
        transaction = endpoint.transaction(self._invite_key)
        return transaction is not None and transaction.state in (TransactionState.CALLING,
                                                                 TransactionState.PROCEEDING)

    def _unregister(self) -> None:
        endpoint = self._endpoint
        if self._registered and endpoint is not None:
            self._registered = False
            endpoint.unregister(self.call_id)

    # --- what the endpoint delivers ---------------------------------------------------------------

    def on_sip_event(self, event: SipEvent) -> None:
        if isinstance(event, ResponseReceived):
            self._on_response(event.response, event.key)
        elif isinstance(event, RequestReceived):
            self._on_request(event)
        elif isinstance(event, AckReceived):
            self._on_ack(event)
        elif isinstance(event, Timeout):
            self._on_timeout(event)
        elif isinstance(event, TransportError):
            self._on_failure(event.key, 503, "Service Unavailable (transport error)")
        elif isinstance(event, Terminated):
            self._pending.pop(event.key, None)
            self._maybe_unregister()

    # responses

    def _on_response(self, response: Response, key: TransactionKey) -> None:
        method = response.cseq.method
        if key == self._refresh_key and key is not None:
            self._on_refresh_response(response, key)
            return
        if method == "INVITE" and key == self._invite_key:
            self._on_invite_response(response)
            return
        if method == "INVITE":
            # A retransmitted 2xx of an INVITE we re-sent with credentials, or of a fork: ACK it.
            self._on_invite_response(response)
            return
        pending = self._pending.get(key)
        if response.status < 200 or pending is None:
            return
        if response.status in (401, 407) and pending.auth_tries < _AUTH_ATTEMPTS and self._digest is not None \
                and method not in ("CANCEL", "ACK"):
            if self._resend_with_auth(pending, response):
                return
        if pending.done is not None and not pending.done.done():
            pending.done.set_result(response)
        if self._dialog is not None:
            self._dialog.receive_response(pending.request, response)
        if method == "REFER" and key == self._refer_key and response.status >= 300:
            if response.status in _REFER_FALLBACK and not self._refer_done:
                self._refer_fallback(response.status, response.reason)
            else:
                self._refer_outcome(response.status, response.reason)
        if method in ("BYE", "CANCEL") or response.status < 300:
            return
        self.log.info("sip in-dialog request refused", method=method, status=response.status)
        if response.status in (408, 481) and self.state == "confirmed":
            # The far party lost the dialog, or the request could not reach it (RFC 3261 §12.2.1.2).
            self.state = "ended"
            self._report(LegHangup("timeout" if response.status == 408 else "dialog_gone", "system"))

    def _resend_with_auth(self, pending: _Pending, response: Response) -> bool:
        request = pending.request
        assert self._digest is not None and self._dialog is not None
        try:
            auth = self._digest.respond(response, request.method, str(request.uri), request.body)
        except (ProtocolError, LookupError) as exc:
            self.log.info("sip challenge not answered", error=str(exc))
            return False
        if not auth:
            return False
        key = self._send_in_dialog(request.method, headers=[
            (n, v) for n, v in request.headers if n.lower() not in _IN_DIALOG_BUILT] + auth,
            body=request.body, done=pending.done)
        if key is not None:
            self._pending[key].auth_tries = pending.auth_tries + 1
            if request.method == "REFER":
                self._refer_key = key
        return key is not None

    def _on_invite_response(self, response: Response) -> None:
        status = response.status
        endpoint = self._endpoint
        dialogs = self._invite_dialogs
        if endpoint is None or dialogs is None or endpoint.closed:
            return
        if response.cseq.number != dialogs.invite.cseq.number:
            return          # the answer to an INVITE we replaced (digest): its transaction ACKs it
        if status in (401, 407) and self.state in ("calling", "early") and not self._cancel_wanted:
            if self._retry_invite_with_auth(response):
                return
        try:
            outcome = dialogs.receive_response(response)
        except (ProtocolError, ValueError) as exc:
            self.log.info("sip invite response unusable", error=str(exc))
            return
        if status < 200:
            if status == 100:
                return
            if self._cancel_wanted:
                self._cancel_invite()
                return
            self._provisional(response)
            return
        if status >= 300:
            if self.state in ("calling", "early") and not self._cancel_wanted:
                self.state = "ended"
                self._disarm("ring")
                self._report(LegRejected(status, response.reason or "Rejected"))
            self._maybe_unregister()
            return
        # 2xx: ACK every one (§13.2.2.4); the first is the call, a later one from another fork is ended.
        if isinstance(outcome, (DialogConfirmed, RetransmittedAnswer, ForkedAnswer)):
            dialog = outcome.dialog
            target = self._hop(dialog)
            ack = dialog.create_ack(response, via=endpoint.via(target))
            try:
                endpoint.send_ack(ack, target)
            except (ValueError, EndpointClosed) as exc:
                self.log.info("sip ack not sent", error=repr(exc))
            if isinstance(outcome, ForkedAnswer):
                self._end_dialog(dialog)
                return
            if isinstance(outcome, RetransmittedAnswer):
                return
            self._dialog = dialog
            self._disarm("ring")
            if self._cancel_wanted or self.closed or self.state == "ended":
                # Our CANCEL crossed the 2xx: the call was answered after we gave up on it.
                self.state = "ended"
                self._end_dialog(dialog)
                return
            try:
                self._take_answer(response, final=True)
            except ProtocolError as exc:
                self.log.warning("sip answer unusable", error=exc.message)
                self.state = "ended"
                self._end_dialog(dialog)
                self._report(LegFailed(f"the answer's SDP cannot be used: {exc.message}"))
                return
            self.state = "confirmed"
            self._peer_allow = _allowed(response)
            self._session_from_response(response)
            assert self._media is not None
            self.log.info("sip call answered", codec=self._media.codec.name)
            self._report(LegAnswered(LegMedia(_codec_of(self._media), response.body.decode("utf-8", "replace"))))

    def _provisional(self, response: Response) -> None:
        if self.state not in ("calling", "early"):
            return
        self.state = "early"
        if response.body and response.content_type and "sdp" in response.content_type.lower() and not self._early:
            try:
                self._take_answer(response, final=False)
            except ProtocolError as exc:
                self.log.info("sip early media sdp unusable", error=exc.message)
            else:
                self._early = True
                assert self._media is not None
                self._report(LegRinging(LegMedia(_codec_of(self._media), response.body.decode("utf-8", "replace"))))
                return
        if not self._ringing_reported and not self._early:
            self._ringing_reported = True
            self._report(LegRinging(None))

    def _take_answer(self, response: Response, *, final: bool) -> None:
        """Apply the far party's SDP answer (183 or 2xx) to the RTP session."""
        assert self._offer is not None
        if not response.body:
            if self._media is None:
                raise ProtocolError("the 2xx carries no SDP answer and no early media came before it")
            return
        media = process_answer(self._offer, SessionDescription.parse(response.body))
        self._apply_media(media)

    def _retry_invite_with_auth(self, response: Response) -> bool:
        if self._digest is None or self._auth_tries >= _AUTH_ATTEMPTS or self._invite is None:
            return False
        old = self._invite
        try:
            auth = self._digest.respond(response, "INVITE", str(old.uri), old.body)
        except (ProtocolError, LookupError) as exc:
            self.log.info("sip challenge not answered", error=str(exc))
            return False
        if not auth:
            return False
        endpoint = self._endpoint
        assert endpoint is not None and self._peer is not None
        self._auth_tries += 1
        headers = [(n, v) for n, v in old.headers
                   if n.lower() not in ("via", "cseq", "authorization", "proxy-authorization", "content-length")]
        cseq = old.cseq.number + 1
        invite = make_request("INVITE", old.uri, headers=[
            ("Via", endpoint.via(self._peer)), ("CSeq", f"{cseq} INVITE"), *headers, *auth], body=old.body)
        self._invite = invite
        self._invite_dialogs = InviteDialogs(invite, local_contact=self._invite_dialogs.local_contact
                                             if self._invite_dialogs else None)
        self._invite_key = self._send(invite, self._peer)
        self.log.info("sip invite re-sent with credentials", status=response.status)
        return True

    def _end_dialog(self, dialog: Dialog) -> None:
        endpoint = self._endpoint
        if endpoint is None or dialog.terminated:
            return
        target = self._hop(dialog)
        bye = dialog.create_request("BYE", via=endpoint.via(target))
        key = self._send(bye, target)
        if key is not None:
            self._pending[key] = _Pending(bye)

    # requests

    def _on_request(self, event: RequestReceived) -> None:
        request = event.request
        method = request.method
        if method == "INVITE" and self.role == "uas" and request.to.tag is None:
            return                       # our own initial INVITE, delivered first
        if method == "CANCEL":
            self._on_cancel()
            return
        dialog = self._dialog
        if dialog is None or self.closed:
            self._answer(event, 481, "Call/Transaction Does Not Exist")
            return
        status = dialog.receive_request(request)
        if status is not None:
            self._answer(event, status)
            return
        if method == "BYE":
            self._answer(event, 200)
            self._on_remote_bye()
        elif method == "INFO":
            self._on_info(event)
        elif method in ("INVITE", "UPDATE"):
            self._on_reoffer(event)
        elif method == "REFER":
            self._on_refer(event)
        elif method == "NOTIFY":
            self._on_notify(event)
        else:
            self._answer(event, 405, headers=[("Allow", self._endpoint.allow if self._endpoint else "")])

    def _on_cancel(self) -> None:
        if self.role != "uas" or self._final_sent:
            return
        self._respond_invite(487, "Request Terminated")
        self.state = "ended"
        self.log.info("sip call cancelled by the caller")
        self._report(LegHangup("canceled", "caller"))

    def _on_remote_bye(self) -> None:
        was = self.state
        self.state = "ended"
        if was == "ended":
            return
        who = "caller" if self.role == "uas" else "callee"
        self.log.info("sip bye received")
        self._end_bridge("byCaller")
        self._report(LegHangup("byCaller" if who == "caller" else "byCallee", who))

    def _on_info(self, event: RequestReceived) -> None:
        request = event.request
        if not request.body:
            self._answer(event, 200)        # an empty INFO: a keep-alive
            return
        content_type = request.content_type or ""
        try:
            info = parse_dtmf_info(content_type, request.body)
        except ProtocolError as exc:
            status = 415 if exc.status == 415 else 400
            self._answer(event, status, exc.message[:100], headers=[("Accept", _DTMF_TYPES)] if status == 415 else None)
            return
        self._answer(event, 200)
        self.dtmf_info_received += 1
        self._report(LegDtmf(info.digit, _now_ms(), "info"))

    def _on_reoffer(self, event: RequestReceived) -> None:
        """A re-INVITE or UPDATE: a new offer (hold, resume, a new address), or a refresh."""
        request = event.request
        endpoint = self._endpoint
        if endpoint is None or self._rtp is None or self._media is None:
            self._answer(event, 491 if request.method == "INVITE" else 500, "Request Pending")
            return
        # Every re-INVITE/UPDATE refreshes the session (RFC 4028 §9): negotiated again, timer re-armed.
        refused = self._negotiate_session(request)
        if refused is not None:
            self._answer(event, refused[0], refused[1], headers=refused[2])
            return
        self.session_refreshes_received += 1
        timer = self._session_headers()
        if not request.body:
            # A refresh, or an offerless re-INVITE (our offer goes in the 200, the answer in the ACK).
            body = b"" if request.method == "UPDATE" else bytes(self._current_sdp())
            self._answer(event, 200, sdp=body, headers=timer)
            self._arm_session()
            return
        try:
            offer = SessionDescription.parse(request.body)
            # The track's codec is fixed for the call: answer with the one we have.
            prefs = [self._media.codec.name, "telephone-event"]
            host = endpoint.advertised_host(self._peer.host if self._peer else None)
            sdp, media = answer(offer, prefs, host, self._rtp.port, session=self._sdp, ptime=self._media.ptime)
        except ProtocolError as exc:
            self._answer(event, 488, f"Not Acceptable Here ({exc.message})"[:120])
            return
        self._local_sdp = sdp
        self._answer(event, 200, sdp=bytes(sdp), headers=timer)
        self._arm_session()
        self._apply_media(media)

    def _current_sdp(self) -> SessionDescription:
        assert self._rtp is not None and self._media is not None
        endpoint = self._endpoint
        assert endpoint is not None
        host = endpoint.advertised_host(self._peer.host if self._peer else None)
        self._local_sdp = make_offer(self._sdp, [self._media.codec.name, "telephone-event"], host, self._rtp.port,
                                     ptime=self._media.ptime)
        self._offer = self._local_sdp
        return self._local_sdp

    def _apply_media(self, media: NegotiatedMedia) -> None:
        previous = self._media
        self._media = media
        if self._rtp is not None and not self._rtp.closed:
            self._rtp.start(media)
        if previous is not None and media.on_hold != self._held:
            self._held = media.on_hold
            self.log.info("sip hold" if media.on_hold else "sip resume")
            self._report(LegHold(media.on_hold))
        elif previous is None:
            self._held = media.on_hold

    def _on_refer(self, event: RequestReceived) -> None:
        request = event.request
        refer_to = request.get("Refer-To")
        if not refer_to:
            self._answer(event, 400, "Missing Refer-To")
            return
        self._answer(event, 202, "Accepted")
        try:
            target = str(parse_name_addr(refer_to).uri)
        except ProtocolError:
            target = refer_to.strip().strip("<>")
        headers = {"Refer-To": refer_to}
        referred_by = request.get("Referred-By")
        if referred_by:
            headers["Referred-By"] = referred_by
        # RFC 3515 §2.4.4: the implicit subscription's first NOTIFY. The gateway does not place the
        # new call itself (the application decides), so it reports Trying and ends the subscription.
        self._send_in_dialog("NOTIFY", headers=[
            ("Event", "refer"), ("Subscription-State", "terminated;reason=noresource"),
            ("Content-Type", "message/sipfrag;version=2.0")], body=b"SIP/2.0 100 Trying\r\n")
        self.log.info("sip refer received", target=target)
        self._report(LegTransferRequest(target, headers))

    def _on_notify(self, event: RequestReceived) -> None:
        request = event.request
        event_header = (request.get("Event") or "").split(";")[0].strip().lower()
        if event_header != "refer":
            self._answer(event, 489, "Bad Event")
            return
        self._answer(event, 200)
        match = re.match(rb"\s*SIP/2\.0\s+(\d{3})\s*([^\r\n]*)", request.body or b"")
        state = (request.get("Subscription-State") or "").split(";")[0].strip().lower()
        if match:
            code = int(match.group(1))
            reason = match.group(2).decode("utf-8", "replace")
            if code >= 200:
                self._refer_outcome(code, reason)
                return
            self.log.info("sip transfer progress", code=code, reason=reason)
            if not self._refer_done:
                self._report(LegTransferProgress(code, reason, "notify"))
        if state == "terminated":
            self._refer_outcome(503, "Service Unavailable (subscription ended without an outcome)")

    def _on_ack(self, event: AckReceived) -> None:
        if self.role != "uas":
            return
        self._acked = True
        request = event.request
        if request.body and self._offer is not None and (self._late_offer or self._media is not None):
            try:
                media = process_answer(self._offer, SessionDescription.parse(request.body))
            except ProtocolError as exc:
                self.log.info("sip answer in ACK unusable", error=exc.message)
            else:
                self._late_offer = False
                self._apply_media(media)
        if self._bye_after_ack:
            self._bye_after_ack = False
            asyncio.get_running_loop().create_task(self._bye())

    # failures of our own transactions

    def _on_timeout(self, event: Timeout) -> None:
        if event.key == self._invite_key:
            if event.timer == "L":
                # Our 200 OK was never ACKed: the session ends (RFC 3261 §13.3.1.4).
                if self.state != "ended":
                    self.log.info("sip 200 OK never acknowledged: ending the call")
                    self.state = "confirmed"
                    asyncio.get_running_loop().create_task(self._bye())
                    self._report(LegHangup("ack_timeout", "system"))
                return
            if event.timer == "B":
                self._on_failure(event.key, 408, "Request Timeout (no response)")
            return
        self._on_failure(event.key, 408, "Request Timeout")

    def _on_failure(self, key: TransactionKey, code: int, reason: str) -> None:
        if key == self._invite_key and self.role == "uac":
            if self.state in ("calling", "early") and not self._cancel_wanted:
                self.state = "ended"
                self._disarm("ring")
                self._report(LegRejected(code, reason))
            return
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        if pending.done is not None and not pending.done.done():
            pending.done.set_result(None)
        if key == self._refer_key:
            self._refer_outcome(code, reason)
        elif pending.request.method not in ("BYE", "CANCEL") and self._dialog is not None:
            # An in-dialog request that timed out ends the dialog (RFC 3261 §12.2.1.2).
            self._dialog.request_timed_out()
            if self.state == "confirmed":
                self.state = "ended"
                self._report(LegHangup("timeout", "system"))
        self._maybe_unregister()

    # --- sending ----------------------------------------------------------------------------------

    def _send(self, request: Request, target: SipTarget) -> TransactionKey | None:
        endpoint = self._endpoint
        if endpoint is None:
            return None
        try:
            return endpoint.send_request(request, target)
        except (ValueError, EndpointClosed) as exc:
            self.log.info("sip request not sent", method=request.method, error=repr(exc))
            return None

    def _send_in_dialog(self, method: str, *, headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                        done: asyncio.Future[Response | None] | None = None) -> TransactionKey | None:
        dialog = self._dialog
        endpoint = self._endpoint
        if dialog is None or endpoint is None or dialog.terminated or endpoint.closed:
            if done is not None and not done.done():
                done.set_result(None)
            return None
        target = self._hop(dialog)
        request = dialog.create_request(method, via=endpoint.via(target), headers=headers or (), body=body)
        key = self._send(request, target)
        if key is None:
            if done is not None and not done.done():
                done.set_result(None)
            return None
        self._pending[key] = _Pending(request, done)
        return key

    def _hop(self, dialog: Dialog) -> SipTarget:
        """The next hop of an in-dialog request: the first route, else the remote target; a host
        that is not an address (or a peer behind NAT with a private Contact) falls back to where
        the dialog's first message came from or went to."""
        uri = dialog.route_set[0].uri if dialog.route_set else dialog.remote_target
        transport = (uri.param("transport") or self._transport).lower()
        if transport not in ("udp", "tcp"):
            transport = "udp"
        try:
            target = target_for_uri(uri, transport=transport)
        except ValueError:
            target = None
        if target is None or not target.is_resolved:
            assert self._peer is not None
            return SipTarget(self._peer.host, self._peer.port, transport)
        return target

    def _answer(self, event: RequestReceived, status: int, reason: str | None = None, *,
                headers: list[tuple[str, str]] | None = None, sdp: bytes | None = None) -> None:
        endpoint = self._endpoint
        if endpoint is None or endpoint.closed:
            return
        extra = list(headers or [])
        body = b""
        if sdp:
            extra.append(("Content-Type", "application/sdp"))
            body = sdp
        if status >= 300:
            self.requests_refused[status] = self.requests_refused.get(status, 0) + 1
        dialog = self._dialog
        if dialog is not None and not (status == 481 and self.closed):
            response = dialog.create_response(event.request, status, reason, headers=extra, body=body)
        else:
            response = make_response(event.request, status, reason, to_tag=secrets.token_hex(5), headers=extra)
        try:
            endpoint.send_response(response, event.key)
        except (LookupError, EndpointClosed) as exc:
            self.log.info("sip response not sent", status=status, error=repr(exc))

    # --- helpers ------------------------------------------------------------------------------------

    async def _open_rtp(self) -> None:
        def on_dtmf(digit: str) -> None:
            self._report(LegDtmf(digit, _now_ms(), "rfc4733"))

        try:
            self._rtp = await RtpSession.open(self.env.allocator, self.config.rtp, on_dtmf=on_dtmf)
        except RtpPortsExhausted as exc:
            raise LegRefused(f"no RTP port free: {exc}", 503) from None

    def _arm(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self._disarm(name)
        self._timers[name] = asyncio.get_running_loop().call_later(delay, self._fire, name, callback)

    def _fire(self, name: str, callback: Callable[[], None]) -> None:
        self._timers.pop(name, None)
        if not self.closed:
            callback()

    def _disarm(self, name: str) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()


# Headers an in-dialog request gets from its dialog (a re-sent one must not carry them twice).
_IN_DIALOG_BUILT = frozenset({"via", "max-forwards", "route", "from", "to", "call-id", "cseq", "contact",
                              "content-length", "authorization", "proxy-authorization"})


def _allowed(message: Request | Response) -> frozenset[str]:
    """The methods a peer's Allow lists (upper case)."""
    return frozenset(token.strip().upper() for value in message.get_all("Allow") for token in value.split(",")
                     if token.strip())


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _extra_headers(headers: Mapping[str, str] | None, where: str, *, strict: bool = True) -> list[tuple[str, str]]:
    """An application's extra SIP headers, checked: a bad name or value is refused (strict) or
    left out (a hangup's headers: the BYE still goes)."""
    out: list[tuple[str, str]] = []
    for name, value in (headers or {}).items():
        problem = None
        if not _HEADER_NAME.fullmatch(name):
            problem = f"{name!r} is not a header name"
        elif name.lower() in _RESERVED:
            problem = f"{name} is written by the gateway itself"
        elif not isinstance(value, str) or any(c in value for c in "\r\n\x00"):
            problem = f"{name}: the value must be one line of text"
        if problem is not None:
            if strict:
                raise LegRefused(f"{where}: {problem}", 400)
            log.info("sip header left out", where=where, problem=problem)
            continue
        out.append((name, value))
    return out
