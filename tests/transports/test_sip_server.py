"""The SIP endpoint as a supervised child: start, stats, stop, and a bind failure retried."""

from __future__ import annotations

import socket
import time

from actors import GetChild, GetRestartCounts, Strategy, Supervisor
from transports.config import parse_config
from transports.sip_endpoint import SipEndpoint
from transports.sip_server import GetSipEndpoint, GetSipStats, SipServer, sip_endpoint_spec
from tests.support.udp import UdpPeer, sip_request
from tests.support.poll import until


def config(port: int = 0, **extra: object):
    return parse_config({"sip_addr": "127.0.0.1", "udp_port": port,
                         "supervision": {"backoff_initial": 0.05, "backoff_max": 0.2}, **extra})


async def test_the_endpoint_runs_under_a_supervisor_and_stops_with_it():
    ready: list[SipEndpoint] = []
    sup = Supervisor.start([sip_endpoint_spec(config(), on_ready=ready.append)],
                           strategy=Strategy.ONE_FOR_ONE, name="test-gateway")
    try:
        await until(lambda: bool(ready))
        endpoint = ready[0]
        child = await sup.ask(GetChild("sip"))
        assert await child.ask(GetSipEndpoint()) is endpoint
        peer = await UdpPeer.open()
        try:
            peer.send(sip_request("OPTIONS", port=peer.port), endpoint.udp_address)
            data, _ = await peer.recv()
            assert data.startswith(b"SIP/2.0 200 OK")
        finally:
            peer.close()
        stats = await child.ask(GetSipStats())
        assert stats.options_answered == 1
    finally:
        assert await sup.stop(timeout=5.0)
    assert endpoint.closed
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(endpoint.udp_address)  # the port is free again


async def test_a_port_held_elsewhere_fails_the_start_and_is_retried_with_backoff():
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    ready: list[SipEndpoint] = []
    SipServer.start_error = None
    sup = Supervisor.start([sip_endpoint_spec(config(port), on_ready=ready.append)],
                           intensity=10, period=10.0, name="test-gateway")
    try:
        await until(lambda: SipServer.start_error is not None)
        assert isinstance(SipServer.start_error, OSError)
        assert not ready
        holder.close()  # the other process lets go: the next restart binds
        await until(lambda: bool(ready))
        assert ready[0].udp_address == ("127.0.0.1", port)
        counts = await sup.ask(GetRestartCounts())
        assert counts["sip"] >= 1
    finally:
        holder.close()
        await sup.stop(timeout=5.0)


def test_spec_shape():
    spec = sip_endpoint_spec(config(), child_id="sip-a", shutdown=3.0)
    assert spec.id == "sip-a" and spec.shutdown == 3.0 and spec.backoff is not None
