"""REGISTER for `[[register_users]]` against SIPp as the registrar, over UDP and over TCP: a refused first attempt is
retried with backoff, the digest challenge is answered, the registration is refreshed before it
runs out, and the binding is removed when the gateway stops."""

from __future__ import annotations

import asyncio

import pytest

from actors import GetChild
from tests.support.sip_tools import sipp_uas
from transports.gateway import start_gateway
from transports.sip_register import GetRegistrations


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_register_retry_challenge_refresh_and_unregister(gateway_config, tmp_path, transport):
    async with sipp_uas(tmp_path, "uas_registrar.xml", rtp_echo=False,
                        transport="t1" if transport == "tcp" else "u1") as (sipp, port):
        gw = await start_gateway(gateway_config(
            register_users=[{"server": f"sip:127.0.0.1:{port}", "username": "1001", "password": "s3cret",
                             "expires": 600, "transport": transport}],
            sip={"register_retry_initial": 0.2}))
        try:
            registrar = await gw.ref.ask(GetChild("register"), timeout=2)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while True:
                status, = await registrar.ask(GetRegistrations(), timeout=2)
                if status.registered >= 2 or loop.time() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert status.state == "registered" and status.registered == 2 and status.failures == 1
            assert status.last_error == "503 Service Unavailable" and 50 < status.expires_in <= 60
        finally:
            await gw.stop()
        assert await sipp.wait(10) == 0, sipp.errors()
