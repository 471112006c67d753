"""The transports together, as a SIP call leg will use them: SIPp calls in (RFC 4733 DTMF from
its captures) and SIPp answers a call placed through the endpoint (RTP echoed back), over UDP and
TCP. The small user agents here are test doubles of the call leg, built only from the public
surface: SipEndpoint, RtpSession and the protocol layer."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator

import pytest

from protocol.negotiate import SdpSession, answer, make_offer, process_answer
from protocol.sdp import SessionDescription
from protocol.sip.dialog import Dialog, DialogConfirmed, InviteDialogs, RetransmittedAnswer
from protocol.sip.message import make_request
from protocol.sip.transaction import AckReceived, RequestReceived, ResponseReceived
from transports.config import RtpConfig, SipConfig
from transports.rtp_ports import RtpPortAllocator
from transports.rtp_session import RtpSession
from transports.sip_endpoint import SipEndpoint, SipEvent, SipTarget, target_for_uri
from tests.support.sipp import Sipp, free_media_port, free_port, scenario, wait_echo
from tests.transports.test_rtp_ports import free_block
from tests.support.poll import until

PREFS = ["PCMU", "PCMA", "telephone-event"]


@pytest.fixture
async def allocator() -> AsyncIterator[RtpPortAllocator]:
    start = free_block(16)
    yield RtpPortAllocator("127.0.0.1", start, start + 15)


class AnsweringLeg:
    """Answers one INVITE: 180, then 200 with an SDP answer for its RtpSession; 200 to BYE."""

    def __init__(self, endpoint: SipEndpoint, session: RtpSession) -> None:
        self.endpoint = endpoint
        self.session = session
        self.dialog: Dialog | None = None
        self.methods: list[str] = []
        self.acked = False
        self.ended = False

    def __call__(self, event: SipEvent) -> None:
        if isinstance(event, AckReceived):
            self.acked = True
            return
        if not isinstance(event, RequestReceived):
            return
        request = event.request
        self.methods.append(request.method)
        if request.method == "INVITE":
            peer = event.addr[0] if event.addr else "127.0.0.1"
            transport = request.via[0].transport.lower()
            contact = self.endpoint.contact(SipTarget(peer, 5060, transport), "gw")
            self.dialog = Dialog.uas(request, secrets.token_hex(4), local_contact=contact)
            offer = SessionDescription.parse(request.body)
            sdp, media = answer(offer, PREFS, self.endpoint.advertised_host(peer), self.session.port)
            self.session.start(media)
            self.endpoint.send_response(self.dialog.create_response(request, 180), event.key)
            self.endpoint.send_response(
                self.dialog.create_response(request, 200, headers=[("Content-Type", "application/sdp")],
                                            body=bytes(sdp)), event.key)
        elif request.method == "BYE":
            assert self.dialog is not None and self.dialog.receive_request(request) is None
            self.endpoint.send_response(self.dialog.create_response(request, 200), event.key)
            self.ended = True


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_inbound_call_with_rfc4733_digits_from_sipp(allocator, tmp_path, transport):
    digits: list[str] = []
    session = await RtpSession.open(allocator, RtpConfig(), on_dtmf=digits.append)
    legs: list[AnsweringLeg] = []

    def on_new_call(event: RequestReceived):
        legs.append(AnsweringLeg(endpoint, session))
        return legs[-1]

    endpoint = SipEndpoint(host="127.0.0.1", udp_port=0, on_new_call=on_new_call, config=SipConfig())
    await endpoint.start()
    ticker = asyncio.create_task(_tick(session))
    try:
        kind = socket.SOCK_STREAM if transport == "t1" else socket.SOCK_DGRAM
        port = endpoint.port_for("tcp" if transport == "t1" else "udp")
        args = [f"127.0.0.1:{port}", "-sf", scenario("dtmf_uac.xml"), "-i", "127.0.0.1",
                "-p", str(free_port(kind)), "-mi", "127.0.0.1", "-mp", str(free_media_port()),
                "-t", transport, "-m", "1", "-s", "gw", "-timeout", "15s", "-timeout_error"]
        async with Sipp(args, tmp_path) as sipp:
            code = await sipp.wait(30)
        assert code == 0, sipp.errors()
        await until(lambda: len(digits) == 3)
        assert digits == ["1", "5", "#"]
        (leg,) = legs
        assert leg.methods == ["INVITE", "BYE"] and leg.acked and leg.ended
        stats = session.stats()
        assert stats.codec == "PCMU" and stats.dtmf_received == 3  # our preference among those offered and stats.remote is not None
        sip = endpoint.stats()
        assert sip.new_calls == 1 and sip.garbage_dropped == 0 and sip.unroutable == 0
    finally:
        ticker.cancel()
        session.close()
        await endpoint.close()


async def _tick(session: RtpSession) -> None:
    while True:
        session.pull()
        await asyncio.sleep(0.02)


class CallingLeg:
    """Places one call through the endpoint: INVITE with our offer, ACK, BYE at the end."""

    def __init__(self, endpoint: SipEndpoint, session: RtpSession, target: SipTarget) -> None:
        self.endpoint = endpoint
        self.session = session
        self.target = target
        self.sdp = SdpSession(endpoint.advertised_host(target.host))
        self.offer = make_offer(self.sdp, PREFS, self.sdp.address, session.port)
        self.call_id = secrets.token_hex(8)
        self.statuses: list[int] = []
        self.dialog: Dialog | None = None
        self.bye_answered = False
        uri = f"sip:echo@{target.host}:{target.port}" + (";transport=tcp" if target.transport == "tcp" else "")
        self.invite = make_request("INVITE", uri, headers=[
            ("Via", endpoint.via(target)),
            ("Max-Forwards", "70"),
            ("From", f"<sip:gw@{self.sdp.address}>;tag={secrets.token_hex(4)}"),
            ("To", f"<{uri}>"),
            ("Call-ID", self.call_id),
            ("CSeq", "1 INVITE"),
            ("Contact", str(endpoint.contact(target, "gw"))),
            ("Content-Type", "application/sdp"),
        ], body=bytes(self.offer))
        self.dialogs = InviteDialogs(self.invite, local_contact=endpoint.contact(target, "gw"))

    def call(self) -> None:
        self.endpoint.register(self.call_id, self)
        self.endpoint.send_request(self.invite, self.target)

    def hang_up(self) -> None:
        assert self.dialog is not None
        bye = self.dialog.create_request("BYE", via=self.endpoint.via(self.target))
        self.endpoint.send_request(bye, self._next_hop())

    def _next_hop(self) -> SipTarget:
        assert self.dialog is not None
        return target_for_uri(self.dialog.remote_target, transport=self.target.transport)

    def __call__(self, event: SipEvent) -> None:
        if not isinstance(event, ResponseReceived):
            return
        response = event.response
        self.statuses.append(response.status)
        if response.cseq.method == "BYE":
            self.bye_answered = response.status == 200
            self.endpoint.unregister(self.call_id)
            return
        outcome = self.dialogs.receive_response(response)
        if isinstance(outcome, DialogConfirmed | RetransmittedAnswer):
            self.dialog = outcome.dialog
            ack = outcome.dialog.create_ack(response, via=self.endpoint.via(self.target))
            self.endpoint.send_ack(ack, self._next_hop())
            if isinstance(outcome, DialogConfirmed):
                self.session.start(process_answer(self.offer, SessionDescription.parse(response.body)))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_outbound_call_to_sipp_with_rtp_echo(allocator, tmp_path, transport):
    endpoint = SipEndpoint(host="127.0.0.1", udp_port=0)
    await endpoint.start()
    session = await RtpSession.open(allocator, RtpConfig())
    media_port = free_media_port()
    sipp_port = free_port(socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM)
    args = ["-sf", scenario("uas_echo.xml"), "-i", "127.0.0.1", "-p", str(sipp_port), "-mi", "127.0.0.1",
            "-mp", str(media_port), "-rtp_echo", "-t", "t1" if transport == "tcp" else "u1", "-m", "1"]
    try:
        async with Sipp(args, tmp_path) as sipp:
            await wait_echo(media_port)
            leg = CallingLeg(endpoint, session, SipTarget("127.0.0.1", sipp_port, transport))
            leg.call()
            await until(lambda: 200 in leg.statuses and session.media is not None)
            assert leg.statuses[:3] == [100, 180, 200]
            heard: list[int] = []
            start = time.monotonic()
            for n in range(100):
                now = time.monotonic()
                session.send(n.to_bytes(2, "big") * 80, now)
                payload = session.pull(now)
                if payload is not None:
                    heard.append(int.from_bytes(payload[:2], "big"))
                await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))
            await until(lambda: session.stats().packets_received == 100)
            leg.hang_up()
            await until(lambda: leg.bye_answered)
            code = await sipp.wait(15)
            assert code == 0, sipp.errors()
        assert heard == list(range(len(heard))) and len(heard) >= 90
        stats = session.stats()
        assert stats.codec == "PCMU" and stats.packets_lost == 0 and stats.remote == f"127.0.0.1:{media_port}"
        sip = endpoint.stats()
        assert sip.transport_errors == 0 and (sip.tcp_opened == 1) == (transport == "tcp")
    finally:
        session.close()
        await endpoint.close()
