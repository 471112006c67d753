"""The fetch policy: which addresses are internal, allow-list entries, the resolver's check."""

from __future__ import annotations

import ipaddress

import pytest
from yarl import URL

from transports.fetch_policy import FetchPolicy, FetchRefused, address_kind


@pytest.mark.parametrize("address,kind", [
    ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fd12::1", "private"),
    ("169.254.169.254", "metadata service"), ("fd00:ec2::254", "metadata service"),
    ("100.100.100.200", "metadata service"), ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.1", "multicast"),
    ("100.64.0.1", "reserved or shared"), ("240.0.0.1", "private"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("2002:7f00:1::1", "loopback"),
    ("8.8.8.8", None), ("2606:4700:4700::1111", None), ("93.184.216.34", None),
])
def test_address_kinds(address, kind):
    assert address_kind(ipaddress.ip_address(address)) == kind


def test_allow_list_entries_with_and_without_ports():
    policy = FetchPolicy(("media.internal", "10.0.0.0/8", "127.0.0.1:9000", "[::1]:9001"))
    policy.check_address("media.internal", "192.168.1.1", 80)      # allowed by name, any address
    policy.check_address("x", "10.200.0.1", 443)                      # inside an allowed network
    policy.check_address("127.0.0.1", "127.0.0.1", 9000)
    policy.check_address("::1", "::1", 9001)
    for host, address, port in (("127.0.0.1", "127.0.0.1", 9001), ("::1", "::1", 9000),
                                ("other.internal", "192.168.1.1", 80), ("x", "169.254.169.254", 80)):
        with pytest.raises(FetchRefused, match="fetch policy"):
            policy.check_address(host, address, port)
    for bad in ("a b", "127.0.0.1:x", "[::1]9", "10.0.0.0/33:1", "h:0", ""):
        with pytest.raises(ValueError):
            FetchPolicy((bad,))


async def test_check_refuses_internal_names_literals_and_userinfo():
    policy = FetchPolicy()
    for url in ("http://127.0.0.1/a.wav", "http://[::1]:8080/a", "http://localhost:1/x", "http://LOCALHOST:2/x",
                "ws://[::ffff:127.0.0.1]/x", "http://169.254.169.254/latest/meta-data/"):
        with pytest.raises(FetchRefused):
            await policy.check(URL(url), ("http", "https", "ws"))
    with pytest.raises(FetchRefused, match="credentials"):
        await policy.check(URL("http://u:p@8.8.8.8/a.wav"), ("http",))
    with pytest.raises(FetchRefused, match="scheme"):
        await policy.check(URL("ftp://8.8.8.8/a.wav"), ("http",))
    await policy.check(URL("http://8.8.8.8/a.wav"), ("http",))      # public literal: no lookup, allowed
    await FetchPolicy(("localhost",)).check(URL("http://localhost:1/x"), ("http",))


async def test_the_connection_resolver_applies_the_policy():
    refused = FetchPolicy().resolver()
    with pytest.raises(FetchRefused):
        await refused.resolve("localhost", 80)
    allowed = FetchPolicy(("127.0.0.1",)).resolver()
    results = await allowed.resolve("localhost", 80)
    assert {r["host"] for r in results} <= {"127.0.0.1", "::1"} and results
    await refused.close()
    await allowed.close()
