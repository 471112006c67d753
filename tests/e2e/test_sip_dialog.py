"""What happens inside an established SIP call, through the real gateway against SIPp: DTMF as
RFC 4733 (SIPp's own captures) and as SIP INFO, hold and resume by re-INVITE, a REFER the
gateway sends (NOTIFY 200; refused with 405 in test_sip_refer_fallback.py) and one it
receives, DTMF the application sends."""

from __future__ import annotations

import time

from protocol.dtmf import TelephoneEvent
from tests.conftest import connect
from tests.e2e.conftest import incoming_call
from tests.support.sip_tools import sipp_uac, sipp_uas, until


async def test_rfc4733_digits_from_sipp_captures(sip_gateway, webhook, http, tmp_path):
    gw = await sip_gateway()
    async with sipp_uac(tmp_path, "dtmf_uac.xml", gw.sip_address[1]) as sipp:
        client, _ = await incoming_call(http, gw, webhook)
        await client.send({"command": "accept", "option": {}})
        await client.wait_event("dtmf", count=3, timeout=10)
        assert await sipp.wait(15) == 0, sipp.errors()
    await client.wait_closed(10)
    assert [e["digit"] for e in client.of("dtmf")] == ["1", "5", "#"]
    rtp, = [e for e in client.of("metrics") if e["key"] == "rtp"]
    assert rtp["data"]["dtmf_received"] == 3
    assert client.of("hangup")[0]["reason"] == "byCaller"


async def test_sip_info_digits(sip_gateway, webhook, peer, http, tmp_path):
    gw = await sip_gateway()
    async with sipp_uac(tmp_path, "uac_info_dtmf.xml", gw.sip_address[1], keys={"rtp_port": peer.port}) as sipp:
        client, _ = await incoming_call(http, gw, webhook)
        await client.send({"command": "accept", "option": {}})
        await client.wait_event("dtmf", count=2, timeout=10)
        assert await sipp.wait(15) == 0, sipp.errors()
    assert [e["digit"] for e in client.of("dtmf")] == ["7", "9"]


async def test_hold_and_resume_by_reinvite(sip_gateway, webhook, peer, http, tmp_path):
    gw = await sip_gateway()
    async with sipp_uac(tmp_path, "uac_hold.xml", gw.sip_address[1], keys={"rtp_port": peer.port}) as sipp:
        client, _ = await incoming_call(http, gw, webhook)
        await client.send({"command": "accept", "option": {}})
        await client.wait_event("answer")
        await until(lambda: len(peer.packets) > 10, 5, "media before the hold")
        held, = await client.wait_event("hold", timeout=10)
        assert held["onHold"] is True
        # On hold the gateway stops sending (the caller said sendonly).
        await until(lambda: len(peer.packets) > 0, 1)
        count = len(peer.packets)
        await client.wait_event("hold", count=2, timeout=10)
        paused = len(peer.packets) - count
        assert client.of("hold")[1]["onHold"] is False
        await until(lambda: len(peer.packets) > count + paused + 10, 5, "media after the resume")
        assert paused <= 3, f"{paused} packets sent while on hold"
        assert await sipp.wait(15) == 0, sipp.errors()
    await client.wait_closed(10)
    assert client.of("hangup")[0]["reason"] == "byCaller"


async def test_refer_received_is_a_transfer_request(sip_gateway, webhook, peer, http, tmp_path):
    gw = await sip_gateway()
    async with sipp_uac(tmp_path, "uac_refer.xml", gw.sip_address[1], keys={"rtp_port": peer.port}) as sipp:
        client, _ = await incoming_call(http, gw, webhook)
        await client.send({"command": "accept", "option": {}})
        request, = await client.wait_event("transferRequest", timeout=10)
        assert request["referTo"] == "sip:agent@127.0.0.1:5999"
        assert request["referredBy"].startswith("<sip:caller@")
        await client.send({"command": "hangup"})
        await client.wait_closed(10)
        assert await sipp.wait(15) == 0, sipp.errors()


async def test_refer_succeeds_and_ends_the_leg(gateway, http, tmp_path):
    async with sipp_uas(tmp_path, "uas_refer.xml") as (sipp, port):
        client = await connect(http, gateway, "/call/sip", id="refer-ok")
        await client.send({"command": "invite", "option": {"callee": f"sip:phone@127.0.0.1:{port}"}})
        await client.wait_event("answer", timeout=10)
        await client.send({"command": "refer", "caller": "sip:bot@gateway.test",
                           "callee": "sip:transfer-target@127.0.0.1:5999", "options": {"timeout": 10}})
        hangup, = await client.wait_event("hangup", timeout=10)
        assert (hangup["reason"], hangup["initiator"]) == ("transferred", "system")
        assert await sipp.wait(10) == 0, sipp.errors()
    assert not client.of("error")
    # The NOTIFY's "SIP/2.0 100 Trying" sipfrag reached the application as the refer's progress.
    progress, = client.of("other")
    assert progress["sender"] == "refer"
    assert progress["extra"] == {"code": 100, "reason": "Trying", "source": "notify"}


async def test_send_dtmf_goes_out_as_rfc4733(sip_gateway, webhook, peer, http, tmp_path):
    gw = await sip_gateway()
    async with sipp_uac(tmp_path, "uac_call.xml", gw.sip_address[1], keys={"rtp_port": peer.port}) as sipp:
        client, _ = await incoming_call(http, gw, webhook)
        await client.send({"command": "accept", "option": {}})
        await client.wait_event("answer")
        await client.send({"command": "sendDtmf", "digits": "42#", "duration": 80})

        def digits() -> list[str]:
            seen: list[str] = []
            for packet in peer.packets:
                if packet.payload_type == 101:
                    event = TelephoneEvent.parse(packet.payload)
                    if event.end and (not seen or seen[-1][1] != packet.timestamp):
                        seen.append((event.digit, packet.timestamp))
            return [d for d, _ in seen]

        await until(lambda: digits() == ["4", "2", "#"], 5, "three RFC 4733 digits at the caller")
        await client.send({"command": "sendDtmf", "digits": "x"})
        error, = await client.wait_event("error")
        assert error["code"] == 400 and "x" in error["error"]
        await client.send({"command": "hangup"})
        await client.wait_closed(10)
        assert await sipp.wait(10) == 0, sipp.errors()


async def test_send_dtmf_goes_out_as_sip_info_without_telephone_event(sip_gateway, webhook, peer, http, tmp_path):
    gw = await sip_gateway()
    async with sipp_uac(tmp_path, "uac_info_dtmf_out.xml", gw.sip_address[1], keys={"rtp_port": peer.port},
                        extra=("-trace_msg",)) as sipp:
        client, _ = await incoming_call(http, gw, webhook)
        await client.send({"command": "accept", "option": {}})
        answer, = await client.wait_event("answer")
        assert "telephone-event" not in answer["sdp"]
        await client.send({"command": "sendDtmf", "digits": "4#", "duration": 80})
        # SIPp checks each INFO (application/dtmf-relay, Signal=4 then Signal=#) and answers 200.
        await until(lambda: any(b"Signal=#" in log.read_bytes() for log in tmp_path.glob("*_messages.log")), 5,
                    "SIPp receiving the second INFO")
        await client.send({"command": "hangup"})
        await client.wait_closed(10)
        assert await sipp.wait(10) == 0, sipp.errors()
    assert not client.of("error")
    # No RFC 4733 packet went out: the digits travelled only as SIP INFO.
    assert not [p for p in peer.packets if p.payload_type == 101]


async def test_a_200_never_acked_is_retransmitted_then_the_call_ends_with_bye(sip_gateway, webhook, peer, http,
                                                                              tmp_path):
    gw = await sip_gateway(sip={"t1": 0.05, "t2": 0.2})         # timer L = 64 * T1 = 3.2 s
    async with sipp_uac(tmp_path, "uac_no_ack.xml", gw.sip_address[1], keys={"rtp_port": peer.port},
                        extra=("-trace_msg",)) as sipp:
        client, _ = await incoming_call(http, gw, webhook)
        await client.send({"command": "accept", "option": {}})
        await client.wait_event("answer")
        answered = time.monotonic()
        hangup, = await client.wait_event("hangup", timeout=10)
        waited = time.monotonic() - answered
        assert await sipp.wait(10) == 0, sipp.errors()          # the BYE reached it and was answered
    assert (hangup["reason"], hangup["initiator"]) == ("ack_timeout", "system")
    assert 2.5 < waited < 6.0, waited
    log = b"".join(path.read_bytes() for path in tmp_path.glob("*_messages.log"))
    assert log.count(b"SIP/2.0 200 OK") >= 5            # the 200 and its retransmissions (timer G)
