"""The SIP endpoint on real sockets: SIPp and raw UDP/TCP peers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from protocol.sip.message import Request, Response, make_response, parse_message
from protocol.sip.transaction import RequestReceived, ResponseReceived, Terminated, Timeout, TransportError
from transports.config import SipConfig
from transports.sip_endpoint import EndpointClosed, SipEndpoint, SipTarget, target_for_uri
from tests.support.sipp import Sipp, free_port, scenario
from tests.support.udp import UdpPeer, sip_request
from tests.support.poll import until


async def start_endpoint(**config: object) -> SipEndpoint:
    endpoint = SipEndpoint(host="127.0.0.1", udp_port=0, config=SipConfig(**config))  # type: ignore[arg-type]
    await endpoint.start()
    return endpoint


@pytest.fixture
async def endpoint() -> AsyncIterator[SipEndpoint]:
    ep = await start_endpoint()
    try:
        yield ep
    finally:
        await ep.close()


@pytest.fixture
async def peer() -> AsyncIterator[UdpPeer]:
    p = await UdpPeer.open()
    try:
        yield p
    finally:
        p.close()


async def response(peer: UdpPeer, timeout: float = 2.0) -> Response:
    data, _ = await peer.recv(timeout)
    message = parse_message(data)
    assert isinstance(message, Response), data
    return message


def sipp_args(endpoint: SipEndpoint, transport: str, xml: str, calls: int = 1) -> list[str]:
    port = endpoint.port_for("tcp" if transport.startswith("t") else "udp")
    kind = socket.SOCK_STREAM if transport.startswith("t") else socket.SOCK_DGRAM
    return [f"127.0.0.1:{port}", "-sf", scenario(xml), "-i", "127.0.0.1", "-p", str(free_port(kind)),
            "-t", transport, "-m", str(calls), "-r", "20", "-timeout", "10s", "-timeout_error",
            "-s", "gw"]


# -- SIPp as the peer ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_options_answered_200_with_allow_accept_and_rport(endpoint, tmp_path, transport):
    async with Sipp(sipp_args(endpoint, transport, "options_uac.xml", calls=5), tmp_path) as sipp:
        code = await sipp.wait(30)
    assert code == 0, sipp.errors()
    stats = endpoint.stats()
    assert stats.options_answered == 5
    assert (stats.tcp_messages if transport == "t1" else stats.udp_datagrams) == 5
    assert stats.malformed_answered == 0 and stats.garbage_dropped == 0


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_malformed_requests_answered_505_416_400_then_200(endpoint, tmp_path, transport):
    async with Sipp(sipp_args(endpoint, transport, "malformed_uac.xml"), tmp_path) as sipp:
        code = await sipp.wait(30)
    assert code == 0, sipp.errors()
    stats = endpoint.stats()
    assert stats.malformed_by_status == {505: 1, 416: 1, 400: 1}
    assert stats.options_answered == 1
    if transport == "t1":
        assert stats.tcp_closed.get("framing", 0) == 0  # per-message errors keep the connection


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_oversize_request_answered_513(tmp_path, transport):
    endpoint = await start_endpoint(max_message_size=1024)
    try:
        (tmp_path / "pad.csv").write_text("SEQUENTIAL\n" + "x" * 1500 + ";\n")
        args = sipp_args(endpoint, transport, "oversize_uac.xml") + ["-inf", str(tmp_path / "pad.csv")]
        async with Sipp(args, tmp_path) as sipp:
            code = await sipp.wait(30)
        assert code == 0, sipp.errors()
        stats = endpoint.stats()
        assert stats.malformed_by_status == {513: 1}
        if transport == "t1":
            # Framing is lost after an oversize message on a stream: the connection is closed.
            await until(lambda: endpoint.stats().tcp_closed.get("framing") == 1)
    finally:
        await endpoint.close()


# -- raw datagrams -----------------------------------------------------------------------------------


async def test_garbage_is_dropped_and_counted_and_keepalives_are_ignored(endpoint, peer):
    target = endpoint.udp_address
    garbage = [
        b"hello",
        bytes(range(256)),
        b"\x80\x00\x00\x01" + bytes(168),                                   # an RTP packet
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:1\r\n\r\n",         # a broken response
        sip_request("ACK", port=peer.port).replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1),  # never answer ACK
        sip_request("OPTIONS", port=peer.port)[:40],                        # truncated head
    ]
    for data in garbage:
        peer.send(data, target)
    peer.send(b"\r\n\r\n", target)
    peer.send(sip_request("OPTIONS", port=peer.port), target)
    # The first answer is the OPTIONS's: nothing before it was answered.
    assert (await response(peer)).status == 200
    stats = endpoint.stats()
    assert stats.garbage_dropped == len(garbage)
    assert stats.keepalives == 1
    assert stats.malformed_answered == 0
    assert stats.last_error


async def test_rport_sends_the_response_to_the_source_port(endpoint, peer):
    # The Via names another port (as behind a NAT); rport asks for the one actually seen.
    peer.send(sip_request("OPTIONS", port=peer.port, via_port=peer.port + 1), endpoint.udp_address)
    answer = await response(peer)
    via = answer.via[0]
    assert via.received == "127.0.0.1" and via.rport == peer.port and via.port == peer.port + 1


async def test_without_rport_the_response_goes_to_the_via_port_and_received_is_added(endpoint, peer):
    listener = await UdpPeer.open()
    try:
        request = sip_request("OPTIONS", port=peer.port, via_host="192.0.2.7", via_port=listener.port, rport=False)
        peer.send(request, endpoint.udp_address)
        data, _ = await listener.recv()
        answer = parse_message(data)
        assert isinstance(answer, Response) and answer.status == 200
        assert answer.via[0].received == "127.0.0.1" and answer.via[0].rport is None
        assert peer.queue.empty()
    finally:
        listener.close()


async def test_a_retransmitted_request_gets_the_same_response_again(endpoint, peer):
    request = sip_request("OPTIONS", port=peer.port)
    peer.send(request, endpoint.udp_address)
    first = await response(peer)
    peer.send(request, endpoint.udp_address)
    second = await response(peer)
    assert bytes(first) == bytes(second)
    stats = endpoint.stats()
    assert stats.options_answered == 1 and stats.retransmissions == 1


async def test_requests_nobody_handles(endpoint, peer):
    target = endpoint.udp_address
    cases = [
        (sip_request("BYE", port=peer.port, to_tag="x1"), 481),
        (sip_request("INFO", port=peer.port, to_tag="x1"), 481),
        (sip_request("MESSAGE", port=peer.port), 405),
        (sip_request("FROB", port=peer.port), 501),
        (sip_request("CANCEL", port=peer.port), 481),
        (sip_request("OPTIONS", port=peer.port, to_tag="x1"), 481),
        (sip_request("INVITE", port=peer.port), 503),  # no handler for new calls
    ]
    for data, status in cases:
        peer.send(data, target)
        answer = await response(peer)
        assert answer.status == status, (data[:20], answer)
        if status in (405, 501):
            assert "INVITE" in answer.get("Allow")
    stats = endpoint.stats()
    assert stats.new_calls_refused == 1 and stats.unroutable == 6


async def test_new_call_is_routed_and_cancel_answered(peer):
    events: list[object] = []
    endpoint = SipEndpoint(host="127.0.0.1", udp_port=0,
                           on_new_call=lambda event: events.append,  # type: ignore[arg-type,return-value]
                           config=SipConfig(trying_delay=0.05))
    await endpoint.start()
    try:
        call_id = "routed-1@127.0.0.1"
        invite = sip_request("INVITE", port=peer.port, call_id=call_id, branch="z9hG4bKinv1")
        peer.send(invite, endpoint.udp_address)
        assert (await response(peer)).status == 100  # the transaction's own Trying after 50 ms
        assert isinstance(events[0], RequestReceived) and events[0].request.method == "INVITE"
        # CANCEL carries the INVITE's branch: 200 for it, and the call's handler is told.
        peer.send(sip_request("CANCEL", port=peer.port, call_id=call_id, branch="z9hG4bKinv1"),
                  endpoint.udp_address)
        cancel_ok = await response(peer)
        assert cancel_ok.status == 200 and cancel_ok.cseq.method == "CANCEL"
        await until(lambda: len(events) == 2)
        cancel = events[1]
        assert isinstance(cancel, RequestReceived) and cancel.request.method == "CANCEL"
        endpoint.send_response(make_response(events[0].request, 487, to_tag="gw1"), events[0].key)
        terminated = await response(peer)
        assert terminated.status == 487 and terminated.to.tag == "gw1"
        # In-dialog requests of a registered Call-ID reach the handler, not a 481.
        peer.send(sip_request("INFO", port=peer.port, call_id=call_id, cseq=2, to_tag="gw1"), endpoint.udp_address)
        await until(lambda: len(events) == 3)
        assert events[2].request.method == "INFO"
        assert endpoint.stats().new_calls == 1
    finally:
        await endpoint.close()


async def test_past_max_transactions_new_requests_get_503_retry_after(peer):
    endpoint = await start_endpoint(max_transactions=2)
    try:
        first = sip_request("OPTIONS", port=peer.port)
        for data in (first, sip_request("OPTIONS", port=peer.port), sip_request("OPTIONS", port=peer.port)):
            peer.send(data, endpoint.udp_address)
        answers = [await response(peer) for _ in range(3)]
        assert sorted(a.status for a in answers) == [200, 200, 503]
        refused = next(a for a in answers if a.status == 503)
        assert refused.get("Retry-After") == "5"
        # A retransmission of a live transaction is still answered from it.
        peer.send(first, endpoint.udp_address)
        assert (await response(peer)).status == 200
        stats = endpoint.stats()
        assert stats.overloaded == 1 and stats.transactions == 2
    finally:
        await endpoint.close()


async def test_a_handler_that_raises_is_counted_and_the_endpoint_goes_on(endpoint, peer):
    def broken(event: object) -> None:
        raise RuntimeError("boom")

    endpoint.register("broken@127.0.0.1", broken)
    peer.send(sip_request("INFO", port=peer.port, call_id="broken@127.0.0.1", to_tag="t"), endpoint.udp_address)
    peer.send(sip_request("OPTIONS", port=peer.port), endpoint.udp_address)
    assert (await response(peer)).status == 200
    await until(lambda: endpoint.stats().handler_errors == 1)
    with pytest.raises(ValueError, match="already has a handler"):
        endpoint.register("broken@127.0.0.1", lambda event: None)


# -- the endpoint as a client: real timers ------------------------------------------------------------


def options_to(endpoint: SipEndpoint, target: SipTarget, call_id: str) -> Request:
    from protocol.sip.message import make_request

    return make_request("OPTIONS", f"sip:probe@{target.host}:{target.port}", headers=[
        ("Via", endpoint.via(target)),
        ("Max-Forwards", "70"),
        ("From", f"<sip:gw@{endpoint.advertised_host(target.host)}>;tag=gw7"),
        ("To", f"<sip:probe@{target.host}:{target.port}>"),
        ("Call-ID", call_id),
        ("CSeq", "1 OPTIONS"),
        ("Contact", str(endpoint.contact(target))),
    ])


async def test_client_transaction_retransmits_on_timer_e_and_times_out_on_f(peer):
    endpoint = await start_endpoint(t1=0.05, t2=0.2)
    try:
        events: list[object] = []
        endpoint.register("probe-1", events.append)
        target = SipTarget("127.0.0.1", peer.port)
        request = options_to(endpoint, target, "probe-1")
        key = endpoint.send_request(request, target)
        with pytest.raises(ValueError, match="needs a fresh one"):
            endpoint.send_request(request, target)  # the branch of a live transaction
        arrivals = []
        sent: set[bytes] = set()
        deadline = time.monotonic() + 64 * 0.05 + 1.0
        while not any(isinstance(e, Terminated) for e in events) and time.monotonic() < deadline:
            try:
                data, _ = await peer.recv(timeout=0.3)
            except TimeoutError:
                continue
            arrivals.append(time.monotonic())
            sent.add(data)
        assert len(sent) == 1  # every retransmission is the request, byte for byte
        assert [type(e) for e in events] == [Timeout, Terminated]
        assert events[0].timer == "F" and events[0].key == key
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        # Timer E: T1, 2·T1, 4·T1, then capped at T2 (RFC 3261 §17.1.2.2).
        assert gaps[0] == pytest.approx(0.05, abs=0.04) and gaps[1] == pytest.approx(0.1, abs=0.05)
        assert max(gaps) == pytest.approx(0.2, abs=0.08)
        assert 12 <= len(arrivals) <= 20
        assert endpoint.stats().retransmissions == len(arrivals) - 1
    finally:
        await endpoint.close()


async def test_client_request_over_tcp_and_a_refused_connection(endpoint):
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        received.append(head)
        request = parse_message(head)
        assert isinstance(request, Request)
        writer.write(bytes(make_response(request, 200, to_tag="srv")))
        await writer.drain()
        await reader.read()  # until the endpoint closes (at shutdown)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        events: list[object] = []
        endpoint.register("tcp-1", events.append)
        target = SipTarget("127.0.0.1", port, "tcp")
        endpoint.send_request(options_to(endpoint, target, "tcp-1"), target)
        await until(lambda: any(isinstance(e, ResponseReceived) for e in events))
        assert b"SIP/2.0/TCP" in received[0] and b";transport=tcp" in received[0]
        assert endpoint.stats().tcp_opened == 1

        closed = SipTarget("127.0.0.1", free_port(socket.SOCK_STREAM), "tcp")
        failures: list[object] = []
        endpoint.register("tcp-2", failures.append)
        endpoint.send_request(options_to(endpoint, closed, "tcp-2"), closed)
        await until(lambda: any(isinstance(e, Terminated) for e in failures))
        assert isinstance(failures[0], TransportError)
        assert endpoint.stats().tcp_closed.get("connect") == 1
    finally:
        server.close()
        await endpoint.close()
        await server.wait_closed()


async def test_a_response_whose_connection_closed_goes_over_a_new_one_to_the_via_port():
    invites: list[RequestReceived] = []
    endpoint = SipEndpoint(host="127.0.0.1", udp_port=0, config=SipConfig(trying_delay=None),  # type: ignore[arg-type]
                           on_new_call=lambda event: invites.append)  # type: ignore[arg-type,return-value]
    await endpoint.start()
    arrived: asyncio.Queue[bytes] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrived.put_nowait(await reader.readuntil(b"\r\n\r\n"))
        await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    listening = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(*endpoint.tcp_address)
        writer.write(sip_request("INVITE", port=writer.get_extra_info("sockname")[1], via_port=listening,
                                 transport="TCP", rport=False))
        await until(lambda: len(invites) == 1)
        writer.close()  # the caller's connection goes away before the answer
        await until(lambda: endpoint.stats().tcp_connections == 0)
        event = invites[0]
        endpoint.send_response(make_response(event.request, 180, to_tag="r1"), event.key)
        head = await asyncio.wait_for(arrived.get(), 3)
        assert head.startswith(b"SIP/2.0 180 Ringing") and f"TCP 127.0.0.1:{listening};".encode() in head
        assert endpoint.stats().tcp_opened == 1
    finally:
        server.close()
        await endpoint.close()
        await server.wait_closed()


# -- TCP: keep-alives, framing, limits -------------------------------------------------------------


async def open_tcp(endpoint: SipEndpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*endpoint.tcp_address)


async def test_tcp_ping_is_answered_and_garbage_closes_the_connection(endpoint):
    reader, writer = await open_tcp(endpoint)
    try:
        writer.write(b"\r\n\r\n")
        assert await asyncio.wait_for(reader.readexactly(2), 2) == b"\r\n"
        writer.write(sip_request("OPTIONS", port=writer.get_extra_info("sockname")[1], transport="TCP"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"SIP/2.0 200 OK")
        writer.write(b"hello\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the endpoint
        stats = endpoint.stats()
        assert stats.keepalives == 1 and stats.garbage_dropped == 1
        await until(lambda: endpoint.stats().tcp_closed.get("framing") == 1)
    finally:
        writer.close()


async def test_tcp_connection_limit_and_idle_timeout():
    endpoint = await start_endpoint(tcp_max_connections=2, tcp_idle_timeout=0.3)
    writers = []
    try:
        streams = [await open_tcp(endpoint) for _ in range(3)]
        writers = [w for _, w in streams]
        # The third is over the limit: closed at once.
        assert await asyncio.wait_for(streams[2][0].read(), 2) == b""
        await until(lambda: endpoint.stats().tcp_refused == 1)
        # The other two are closed once idle for 0.3 s.
        for reader, _ in streams[:2]:
            assert await asyncio.wait_for(reader.read(), 3) == b""
        await until(lambda: endpoint.stats().tcp_closed.get("idle") == 2)
        assert endpoint.stats().tcp_connections == 0
    finally:
        for w in writers:
            w.close()
        await endpoint.close()


async def test_closed_endpoint_refuses_sends_and_frees_its_ports():
    endpoint = await start_endpoint()
    udp, tcp = endpoint.udp_address, endpoint.tcp_address
    await endpoint.close()
    with pytest.raises(EndpointClosed):
        endpoint.send_request(options_to(endpoint, SipTarget("127.0.0.1", 9), "x"), SipTarget("127.0.0.1", 9))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(udp)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(tcp)


def test_target_for_uri():
    assert target_for_uri("sip:bob@192.0.2.1") == SipTarget("192.0.2.1", 5060, "udp")
    assert target_for_uri("sip:bob@192.0.2.1:5070;transport=TCP") == SipTarget("192.0.2.1", 5070, "tcp")
    assert target_for_uri("sip:bob@[2001:db8::1]:5080") == SipTarget("2001:db8::1", 5080, "udp")
    assert not target_for_uri("sip:bob@example.com").is_resolved
    with pytest.raises(ValueError, match="sips"):
        target_for_uri("sips:bob@192.0.2.1")


async def test_external_ip_is_advertised_in_via_and_contact():
    endpoint = SipEndpoint(host="127.0.0.1", udp_port=0, external_ip="203.0.113.10")
    await endpoint.start()
    try:
        target = SipTarget("127.0.0.1", 5060)
        assert endpoint.via(target).startswith(f"SIP/2.0/UDP 203.0.113.10:{endpoint.udp_address[1]};branch=z9hG4bK")
        assert endpoint.via(target).endswith(";rport")
        assert str(endpoint.contact(target, "gw")) == f"<sip:gw@203.0.113.10:{endpoint.udp_address[1]}>"
    finally:
        await endpoint.close()


def test_wildcard_bind_advertises_the_routed_local_address():
    # Not started: nothing listens on the wildcard; the route lookup alone is exercised.
    endpoint = SipEndpoint(host="0.0.0.0", udp_port=0)
    assert endpoint.advertised_host("127.0.0.1") == "127.0.0.1"


async def test_ipv6_loopback():
    endpoint = SipEndpoint(host="::1", udp_port=0)
    await endpoint.start()
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.bind(("::1", 0))
        sock.setblocking(False)
        port = sock.getsockname()[1]
        request = sip_request("OPTIONS", port=port, via_host="[::1]")
        await loop.sock_sendto(sock, request, endpoint.udp_address)
        answer = parse_message(await asyncio.wait_for(loop.sock_recv(sock, 65536), 2))
        assert isinstance(answer, Response) and answer.status == 200
        assert answer.via[0].rport == port
        target = SipTarget("::1", port)
        assert endpoint.via(target).startswith(f"SIP/2.0/UDP [::1]:{endpoint.udp_address[1]};")
        assert str(endpoint.contact(target)) == f"<sip:[::1]:{endpoint.udp_address[1]}>"
    finally:
        sock.close()
        await endpoint.close()


async def test_a_response_whose_top_via_is_not_ours_is_dropped_and_counted(endpoint, peer):
    events: list[object] = []
    endpoint.register("via-1", events.append)
    target = SipTarget("127.0.0.1", peer.port)
    key = endpoint.send_request(options_to(endpoint, target, "via-1"), target)
    data, source = await peer.recv()
    request = parse_message(data)
    assert isinstance(request, Request)
    ours = request.via[0].sent_by.encode()
    good = bytes(make_response(request, 200))
    # The same response with another sent-by in its top Via (same branch): not ours, RFC 3261 §18.1.2.
    peer.send(good.replace(b"Via: SIP/2.0/UDP " + ours, b"Via: SIP/2.0/UDP elsewhere.invalid:5070", 1), source)
    await until(lambda: endpoint.stats().foreign_via_responses == 1)
    assert not any(isinstance(e, ResponseReceived) for e in events)
    peer.send(good, source)
    await until(lambda: any(isinstance(e, ResponseReceived) for e in events))
    received, = [e for e in events if isinstance(e, ResponseReceived)]
    assert received.key == key and received.response.status == 200
    assert endpoint.stats().foreign_via_responses == 1 and endpoint.stats().stray_responses == 0


async def test_a_tcp_peer_that_does_not_read_is_cut_off_at_the_write_buffer_limit():
    """sip.tcp_write_buffer: requests queued towards a peer that never reads pile up in the
    kernel, then in our buffer; past the limit the connection is aborted (`slow`) and the
    transactions waiting on it fail with a transport error."""
    accepted: list[asyncio.StreamWriter] = []

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        accepted.append(writer)

    server = await asyncio.start_server(never_read, "127.0.0.1", 0)
    endpoint = await start_endpoint(max_message_size=65536, tcp_write_buffer=65536)
    try:
        port = server.sockets[0].getsockname()[1]
        target = SipTarget("127.0.0.1", port, "tcp")
        events: list[object] = []
        endpoint.register("slow-1", events.append)
        sent = 0
        for n in range(400):                # 400 x 60 kB = 24 MB at most, far beyond any socket buffer
            if endpoint.stats().tcp_closed.get("slow"):
                break
            request = options_to(endpoint, target, "slow-1")
            request.set("CSeq", f"{n + 1} OPTIONS")
            request.body = b"x" * 60000
            request.set("Content-Type", "text/plain")
            endpoint.send_request(request, target)
            sent += 1
            await asyncio.sleep(0.001)     # the connection opens and the kernel takes what it can
        await until(lambda: endpoint.stats().tcp_closed.get("slow") == 1, 5)
        await until(lambda: any(isinstance(e, TransportError) for e in events), 5)
        assert sent < 400
        assert endpoint.stats().tcp_connections == 0
    finally:
        await endpoint.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
