"""An incoming call exists before its application: it is started by its leg's transport, and the
application connects later with `?id=<the call's id>` and attaches to it."""

from __future__ import annotations

from actors import GetChild, StartCall
from actors.call import Call
from actors.leg import LegOffer
from actors.services import CallServices
from protocol.callstate import Direction
from tests.actors.support import eventually
from tests.conftest import connect
from tests.support.loopback_leg import LoopbackLeg
from transports.http import call_settings


async def incoming_call(gateway, sid: str) -> LoopbackLeg:
    legs: list[LoopbackLeg] = []

    def leg(context):
        made = LoopbackLeg(context)
        made.kind = "sip"          # as the SIP transport's leg presents itself
        legs.append(made)
        return made

    calls = await gateway.ref.ask(GetChild("calls"), timeout=2)
    offer = LegOffer(caller="sip:alice@127.0.0.1", callee="sip:bot@127.0.0.1", sdp="v=0 offer")
    settings = call_settings(gateway.config, "serverSideTrack")
    await calls.ask(StartCall(sid, lambda parent: Call.start(
        sid, leg=leg, clock=gateway.clock, direction=Direction.INBOUND, offer=offer, settings=settings,
        services=CallServices(), parent=parent, name=sid)), timeout=2)
    await eventually(lambda: legs)
    return legs[0]


async def test_the_application_attaches_to_an_incoming_call_and_answers_it(gateway, http):
    leg = await incoming_call(gateway, "dlg-1")
    client = await connect(http, gateway, path="/call/sip", id="dlg-1")
    incoming, = await client.wait_event("incoming")
    assert (incoming["caller"], incoming["callee"], incoming["sdp"]) == (
        "sip:alice@127.0.0.1", "sip:bot@127.0.0.1", "v=0 offer")

    second = await connect(http, gateway, path="/call/sip", id="dlg-1")
    refused, = await second.wait_event("error")
    assert refused["code"] == 409 and "already has an application connection" in refused["error"]
    await second.wait_closed()

    other_type = await connect(http, gateway, path="/call", id="dlg-1")
    refused, = await other_type.wait_event("error")
    assert refused["code"] == 409 and "is a sip call, not a webSocket one" in refused["error"]
    await other_type.wait_closed()

    await client.send({"command": "accept", "option": {"codec": "pcmu"}})
    await client.wait_event("answer")
    assert ("answer",) in leg.asked
    await client.ws.close()
    await eventually(lambda: ("close",) in leg.asked, timeout=5)
    assert ("hangup", "client_disconnected") in leg.asked


async def test_an_application_that_leaves_an_incoming_call_unanswered_declines_it(gateway, http):
    leg = await incoming_call(gateway, "dlg-2")
    client = await connect(http, gateway, path="/call/sip", id="dlg-2")
    await client.wait_event("incoming")
    await client.send({"command": "ringing"})
    await eventually(lambda: ("ring", False) in leg.asked)
    await client.ws.close()
    await eventually(lambda: ("reject", 603, "Decline") in leg.asked, timeout=5)
