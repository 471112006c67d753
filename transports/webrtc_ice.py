"""ICE for the WebRTC leg: which host addresses aioice gathers, and the configured ICE servers in
aiortc's form.

aioice gathers a host candidate on every interface address except loopback, and has no parameter
to choose them. A gateway that serves browsers on the same machine (and every test, which runs
on 127.0.0.1 or inside a private network namespace holding only loopback) needs 127.0.0.1; a
gateway on a multi-homed host may want to offer one public address only. `use_host_addresses`
installs that choice in aioice's address lookup. It is process-wide, as the lookup is: one
process carries one gateway configuration.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

from .config import IceServer

__all__ = ["host_addresses", "rtc_configuration", "use_host_addresses"]

_discover = aioice.ice.get_host_addresses
_chosen: tuple[str, ...] = ()


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if not _chosen:
        return _discover(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    out = []
    for address in _chosen:
        version = ipaddress.ip_address(address).version
        if (version == 4 and use_ipv4) or (version == 6 and use_ipv6):
            out.append(address)
    return out


def use_host_addresses(addresses: Iterable[str]) -> None:
    """Gather host candidates on exactly these addresses (loopback allowed); empty: aioice's own
    choice, every interface address but loopback."""
    global _chosen
    chosen = tuple(addresses)
    for address in chosen:
        ipaddress.ip_address(address)  # ValueError for anything that is not an address
    _chosen = chosen
    aioice.ice.get_host_addresses = _host_addresses


def host_addresses() -> list[str]:
    """The addresses the next peer connection gathers host candidates on."""
    return _host_addresses(True, True)


def rtc_configuration(servers: Iterable[IceServer]) -> RTCConfiguration:
    """aiortc's configuration for a gateway peer connection. An empty list means no STUN or TURN
    at all: aiortc would otherwise fall back to a public STUN server."""
    return RTCConfiguration(iceServers=[
        RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential) for s in servers
    ])
