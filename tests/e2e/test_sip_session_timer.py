"""RFC 4028 session timers on incoming calls, against SIPp: the interval and refresher answered,
refreshes by UPDATE and by re-INVITE when the gateway is the refresher, BYE when a session the
caller refreshes expires, 422 with Min-SE for an interval below the gateway's minimum."""

from __future__ import annotations

import time

from tests.e2e.conftest import incoming_call
from tests.support.sip_tools import sipp_uac

SHORT = {"min_se": 1}       # the tests' sessions last seconds (the default minimum is 90 s)


async def test_a_session_the_caller_lets_expire_ends_with_bye(sip_gateway, webhook, peer, http, tmp_path):
    gw = await sip_gateway(sip=SHORT)
    # Require: timer is not refused (420) any more: the 200 names the 3 s session (SIPp checks it).
    async with sipp_uac(tmp_path, "uac_session_expires.xml", gw.sip_address[1], keys={"rtp_port": peer.port}) as sipp:
        client, _ = await incoming_call(http, gw, webhook)
        await client.send({"command": "accept", "option": {}})
        await client.wait_event("answer")
        answered = time.monotonic()
        hangup, = await client.wait_event("hangup", timeout=10)
        lasted = time.monotonic() - answered
        assert await sipp.wait(10) == 0, sipp.errors()
    assert (hangup["reason"], hangup["initiator"]) == ("session_expired", "system")
    # Expiry is 2 s after the last refresh (3 s less a third); the caller's UPDATE at 1 s moved it.
    assert 2.6 < lasted < 5.0, lasted


async def test_the_gateway_refreshes_by_update(sip_gateway, webhook, peer, http, tmp_path):
    gw = await sip_gateway(sip=SHORT)
    async with sipp_uac(tmp_path, "uac_session_refresh_update.xml", gw.sip_address[1],
                        keys={"rtp_port": peer.port}) as sipp:
        client, _ = await incoming_call(http, gw, webhook)
        await client.send({"command": "accept", "option": {}})
        hangup, = await client.wait_event("hangup", timeout=10)
        assert await sipp.wait(10) == 0, sipp.errors()     # two UPDATEs with the session seen
    assert hangup["reason"] == "byCaller"


async def test_the_gateway_refreshes_by_reinvite_without_update(sip_gateway, webhook, peer, http, tmp_path):
    gw = await sip_gateway(sip=SHORT)
    async with sipp_uac(tmp_path, "uac_session_refresh_reinvite.xml", gw.sip_address[1],
                        keys={"rtp_port": peer.port}) as sipp:
        client, _ = await incoming_call(http, gw, webhook)
        await client.send({"command": "accept", "option": {}})
        hangup, = await client.wait_event("hangup", timeout=10)
        assert await sipp.wait(10) == 0, sipp.errors()     # re-INVITE with SDP, 200, ACK
    assert hangup["reason"] == "byCaller"
    assert not client.of("error")


async def test_an_interval_below_min_se_is_answered_422(sip_gateway, webhook, tmp_path):
    gw = await sip_gateway()
    async with sipp_uac(tmp_path, "uac_session_too_small.xml", gw.sip_address[1], keys={"rtp_port": 9}) as sipp:
        assert await sipp.wait(10) == 0, sipp.errors()
    assert not webhook.bodies          # refused before any call was made
