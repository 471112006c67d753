"""Where the gateway may fetch from on a client's behalf (`play` URLs, `mediaPass` peers).

A URL named by an API client must not become a way into the gateway's own network: its host is
resolved and refused when any of its addresses is loopback, private, link-local (cloud metadata
services live there), shared (CGNAT, Alibaba's metadata), unspecified, multicast or reserved,
unless the host or address is on the configured allow-list. The check runs at every redirect hop
and again inside the HTTP client's resolver, so the address connected to is the address checked
(a DNS answer that changes between check and connect cannot slip through). Credentials in a URL's
userinfo are refused, never sent.

Allow-list entries (`fetch.allow_hosts`): a host name (`media.internal`), an address or network
(`10.0.0.5`, `10.0.0.0/8`, `fd00::/8`), each optionally with a port (`media.internal:8080`,
`127.0.0.1:9000`, `[::1]:9000`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

__all__ = ["FetchPolicy", "FetchRefused", "PolicyResolver", "address_kind"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Metadata services outside the ranges `is_global` already excludes would go here; today every
# known one (169.254.169.254, fd00:ec2::254, 100.100.100.200) is link-local, ULA or shared.
_METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
                       ipaddress.ip_address("100.100.100.200")})


class FetchRefused(Exception):
    """A URL the policy does not allow; the message is for the client and reveals no port state."""


def address_kind(ip: IPAddress) -> str | None:
    """Why an address is internal ("loopback", "private", ...), or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            return address_kind(embedded)
    if ip in _METADATA:
        return "metadata service"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "reserved or shared"
    return None


@dataclass(frozen=True, slots=True)
class _Allowed:
    host: str | None            # a host name, lower case
    net: IPNetwork | None
    port: int | None

    def matches(self, host: str, ip: IPAddress | None, port: int | None) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host is not None:
            return self.host == host
        return ip is not None and self.net is not None and ip in self.net


def _parse_entry(entry: str) -> _Allowed:
    text = entry.strip()
    port: int | None = None
    if text.startswith("["):
        inside, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"fetch.allow_hosts: bad entry {entry!r}")
            port = int(rest[1:])
        text = inside
    elif text.count(":") == 1:
        text, _, port_text = text.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"fetch.allow_hosts: bad port in {entry!r}")
        port = int(port_text)
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"fetch.allow_hosts: port out of range in {entry!r}")
    try:
        return _Allowed(None, ipaddress.ip_network(text, strict=False), port)
    except ValueError:
        pass
    host = text.lower().rstrip(".")
    if not host or "/" in host or any(c.isspace() for c in host):
        raise ValueError(f"fetch.allow_hosts: expected a host, address or network, got {entry!r}")
    return _Allowed(host, None, port)


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


class FetchPolicy:
    def __init__(self, allow_hosts: tuple[str, ...] = ()) -> None:
        self.allowed = tuple(_parse_entry(e) for e in allow_hosts)

    def allow_listed(self, host: str, ip: IPAddress | None, port: int | None) -> bool:
        return any(a.matches(host, ip, port) for a in self.allowed)

    def check_address(self, host: str, address: str, port: int | None) -> None:
        ip = _ip(address)
        if ip is None:
            raise FetchRefused(f"{host}: refused by the fetch policy: not an IP address")
        kind = address_kind(ip)
        if kind is not None and not self.allow_listed(host.lower().rstrip("."), ip, port):
            raise FetchRefused(f"{host}: refused by the fetch policy: it is or resolves to a {kind} address "
                               "(an operator may allow it in fetch.allow_hosts)")

    def check_shape(self, url: URL, schemes: tuple[str, ...]) -> None:
        """Refusals that need no lookup: scheme, missing host, credentials in the URL."""
        if url.scheme not in schemes:
            raise FetchRefused(f"unsupported scheme {url.scheme!r} (expected {', '.join(schemes)})")
        if not url.host:
            raise FetchRefused("URL has no host")
        if url.raw_user is not None or url.raw_password is not None:
            raise FetchRefused("credentials in the URL (user:password@) are not sent; refused")

    async def check(self, url: URL, schemes: tuple[str, ...]) -> None:
        """Refuse `url` unless every address its host resolves to is allowed. A host that does not
        resolve raises OSError (the caller reports it like any unreachable server)."""
        self.check_shape(url, schemes)
        host = url.host or ""
        port = url.port
        name = host.lower().rstrip(".")
        if _ip(host) is not None:
            self.check_address(host, host, port)
            return
        if self.allow_listed(name, None, port):
            return
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for *_rest, sockaddr in infos:
            self.check_address(host, str(sockaddr[0]), port)

    def resolver(self) -> PolicyResolver:
        return PolicyResolver(self)


class PolicyResolver(AbstractResolver):
    """aiohttp's resolver with the policy applied to every answer: what is connected to is checked."""

    def __init__(self, policy: FetchPolicy) -> None:
        self._policy = policy
        self._inner = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        name = host.lower().rstrip(".")
        if not self._policy.allow_listed(name, None, port):
            for result in results:
                self._policy.check_address(name, result["host"], port)
        return results

    async def close(self) -> None:
        await self._inner.close()
