"""A Call driven through a leg that is not the WebSocket one: an in-memory loopback leg plugged in
through the seam alone (tests/support/loopback_leg.py), outbound and inbound, with an application
connection that attaches and detaches by message."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from actors import CallSupervisor, GetChild, StartCall
from actors.base import _Callback
from actors.call import Call, CallSettings
from actors.clock import MediaClock
from actors.leg import LegOffer
from actors.track import Subscribe
from actors.messages import AppConnection, Attach, AttachRefused, ClientCommand, Describe, Detach, UrgentCommand
from protocol import api
from protocol.callstate import Direction
from protocol.codecs import Decoder, Encoder
from tests.actors.support import eventually
from tests.support.loopback_leg import LoopbackLeg


class App:
    """The application's side: events in order, and whether its connection was closed."""

    def __init__(self) -> None:
        self.events: list = []
        self.closed = False

    def connection(self) -> AppConnection:
        return AppConnection(self.events.append, self._close)

    def _close(self, code: int = 1000) -> None:
        self.closed = True
        self.close_code = code

    def of(self, cls) -> list:
        return [e for e in self.events if isinstance(e, cls)]

    def names(self) -> list[str]:
        return [type(e).event for e in self.events]


@pytest.fixture
async def rig():
    clock = MediaClock()
    sup = CallSupervisor.start(10)
    legs: dict[str, LoopbackLeg] = {}

    async def start(session_id: str, *, app: App | None = None, direction=Direction.OUTBOUND, offer=None,
                    settings=CallSettings(), **leg_options):
        def make_leg(context):
            leg = legs[session_id] = LoopbackLeg(context, **leg_options)
            return leg

        call = await sup.ask(StartCall(session_id, lambda parent: Call.start(
            session_id, leg=make_leg, clock=clock, direction=direction, offer=offer, settings=settings,
            app=None if app is None else app.connection(), parent=parent, name=session_id)), timeout=2)
        await eventually(lambda: session_id in legs)
        return call, legs[session_id]

    yield start
    await sup.stop()
    await clock.stop()


def tone(codec, frames: int) -> list[bytes]:
    """A 440 Hz tone as the far party sends it: 20 ms payloads in `codec` (encoded from 16 kHz)."""
    enc = Encoder(codec)
    n = 320
    t = np.arange(n * frames) / 16000
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    return [enc.encode(pcm[i * n:(i + 1) * n]) for i in range(frames)]


async def test_outbound_through_ringing_early_media_answer_audio_dtmf_and_remote_hangup(rig):
    app = App()
    call, leg = await rig("out1", app=app)
    call.tell(ClientCommand(api.Invite(api.CallOption(callee="sip:bob@127.0.0.1", codec="pcmu"))))
    await eventually(lambda: ("dial", "sip:bob@127.0.0.1") in leg.asked)
    leg.far_rings()
    await eventually(lambda: app.of(api.RingingEvent))
    assert app.of(api.RingingEvent)[0].early_media is False
    leg.far_answers()
    await eventually(lambda: app.of(api.AnswerEvent))
    assert app.of(api.AnswerEvent)[0].sdp == "v=0 loopback"
    assert (await call.ask(Describe())).state == "answered"

    # audio both ways: the far party's tone is heard by the call, the track paces frames back
    track = await call.ask(GetChild("track"))
    heard = await track.ask(Subscribe("test", "in", capacity=50))
    sent_before = len(leg.to_peer)
    for payload in tone(leg.codec, 25):
        leg.from_peer.append(payload)
    await eventually(lambda: len(heard) >= 25 and len(leg.to_peer) >= sent_before + 25, timeout=5)
    pcm = np.concatenate(heard.drain())
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    assert abs(np.argmax(spectrum) * 16000 / len(pcm) - 440) < 10
    assert all(len(p) == 160 for p in leg.to_peer)          # one 20 ms PCMU frame per tick
    assert len(Decoder(leg.codec).decode(leg.to_peer[-1])) == 320   # at the 16 kHz media rate

    leg.far_presses("5", 1000)
    leg.far_presses("5", 1010, source="info")   # the same press signalled twice counts once
    await eventually(lambda: app.of(api.DtmfEvent))
    leg.far_holds(True)
    await eventually(lambda: any(e.on_hold is True for e in app.of(api.HoldEvent)))
    assert (await call.ask(Describe())).state == "on hold"
    leg.far_holds(False)
    leg.far_hangs_up("bye")
    await call.wait_stopped()

    assert [d.digit for d in app.of(api.DtmfEvent)] == ["5"]
    hangup, = app.of(api.HangupEvent)
    assert (hangup.reason, hangup.initiator) == ("bye", "callee")
    assert hangup.ringing_time is not None and hangup.answer_time is not None
    assert app.names()[-2:] == ["trackEnd", "hangup"] and app.closed
    # the far party ended it: the call closes the leg without hanging it up again
    assert ("close",) in leg.asked and not any(a[0] == "hangup" for a in leg.asked)


async def test_hangup_from_the_application_hangs_the_leg_up_then_closes_it(rig):
    app = App()
    call, leg = await rig("out2", app=app, answer_at_once=True)
    call.tell(ClientCommand(api.Invite(api.CallOption())))
    await eventually(lambda: app.of(api.AnswerEvent))
    call.tell(UrgentCommand(api.Hangup(reason="done")))
    await call.wait_stopped()
    assert [a for a in leg.asked if a[0] in ("hangup", "close")] == [("hangup", "done"), ("close",)]


async def test_commands_not_valid_in_the_state_are_refused_and_change_nothing(rig):
    app = App()
    call, leg = await rig("out3", app=app)
    call.tell(ClientCommand(api.Tts(text="too early")))
    call.tell(ClientCommand(api.Accept(api.CallOption())))          # an outbound call: accept dials
    await eventually(lambda: ("dial", None) in leg.asked)
    call.tell(ClientCommand(api.Reject(reason="no")))
    call.tell(ClientCommand(api.Invite(api.CallOption())))
    await eventually(lambda: len(app.of(api.ErrorEvent)) == 3)
    texts = [e.error for e in app.of(api.ErrorEvent)]
    assert texts[0].startswith("tts: the call is not answered yet (it is new")
    assert texts[1] == "reject: only for an incoming call; this one is outbound"
    assert texts[2].startswith("invite: not valid while the call is calling")
    assert (await call.ask(Describe())).state == "calling" and call.is_alive()


async def test_an_incoming_call_waits_for_its_application_then_is_answered(rig):
    offer = LegOffer(caller="sip:alice@127.0.0.1", callee="sip:bot@127.0.0.1", sdp="v=0 offer")
    call, leg = await rig("in1", direction=Direction.INBOUND, offer=offer)
    app = App()
    await call.ask(Attach(app.connection()))
    assert app.names() == ["incoming"]
    assert (app.events[0].caller, app.events[0].sdp) == ("sip:alice@127.0.0.1", "v=0 offer")
    with pytest.raises(AttachRefused, match="already has an application connection"):
        await call.ask(Attach(App().connection()))

    call.tell(ClientCommand(api.Ringing(early_media=True)))
    await eventually(lambda: ("ring", True) in leg.asked)
    await eventually(lambda: app.of(api.TrackStartEvent))     # early media starts the track
    call.tell(ClientCommand(api.Accept(api.CallOption(codec="pcmu"))))
    await eventually(lambda: app.of(api.AnswerEvent))
    assert (await call.ask(Describe())).state == "answered"
    assert len(app.of(api.TrackStartEvent)) == 1
    call.tell(Detach())
    await call.wait_stopped()
    assert not app.of(api.HangupEvent)      # detached: nobody is left to tell
    assert ("hangup", "client_disconnected") in leg.asked


async def test_an_incoming_call_nobody_accepts_is_answered_408(rig):
    offer = LegOffer(caller="a", callee="b")
    call, leg = await rig("in2", direction=Direction.INBOUND, offer=offer, settings=CallSettings(accept_timeout=0.2))
    await call.wait_stopped()
    assert ("reject", 408, "Request Timeout") in leg.asked
    assert ("close",) in leg.asked and not any(a[0] == "hangup" for a in leg.asked)


async def test_an_application_that_leaves_before_answering_declines_the_call(rig):
    offer = LegOffer(caller="a", callee="b")
    call, leg = await rig("in3", direction=Direction.INBOUND, offer=offer)
    app = App()
    await call.ask(Attach(app.connection()))
    call.tell(ClientCommand(api.Ringing()))
    await eventually(lambda: ("ring", False) in leg.asked)
    call.tell(Detach())
    await call.wait_stopped()
    assert ("reject", 603, "Decline") in leg.asked


async def test_a_reject_from_the_application_ends_the_incoming_call(rig):
    call, leg = await rig("in4", direction=Direction.INBOUND, offer=LegOffer("a", "b"))
    app = App()
    await call.ask(Attach(app.connection()))
    call.tell(ClientCommand(api.Reject(reason="busy here", code=486)))
    await call.wait_stopped()
    assert ("reject", 486, "busy here") in leg.asked
    hangup, = app.of(api.HangupEvent)
    assert (hangup.reason, hangup.initiator) == ("busy here", "user")


async def test_events_wait_in_a_bounded_backlog_until_the_application_attaches(rig):
    settings = CallSettings(detached_backlog=3)
    call, leg = await rig("in5", direction=Direction.INBOUND, offer=LegOffer("a", "b"), settings=settings)
    for i in range(5):
        call.tell(ClientCommand(api.Custom(data=i)))
    await eventually(lambda: (lambda st: st.system_depth + st.normal_depth)(call.mailbox_stats()) == 0)
    app = App()
    await call.ask(Attach(app.connection()))
    assert [getattr(e, "data", None) for e in app.of(api.CustomEvent)] == [2, 3, 4]
    err, = app.of(api.ErrorEvent)
    assert err.code == 507 and "3 events were dropped" in err.error


async def test_a_track_killed_while_a_command_asks_it_ends_the_call_with_a_reason(rig):
    app = App()
    call, leg = await rig("kill1", app=app, answer_at_once=True)
    call.tell(ClientCommand(api.Invite(api.CallOption())))
    await eventually(lambda: app.of(api.AnswerEvent))
    track = await call.ask(GetChild("track"))
    gate = asyncio.Event()
    track.tell(_Callback(gate.wait, ()))          # the track is busy: the next ask waits in its mailbox
    call.tell(ClientCommand(api.Mute()))
    await eventually(lambda: (lambda st: st.system_depth + st.normal_depth)(track.mailbox_stats()) >= 1)
    await track.stop(timeout=0.05)                # killed while the mute is waiting for it
    await call.wait_stopped()
    hangup, = app.of(api.HangupEvent)
    assert (hangup.reason, hangup.initiator) == ("media_failure", "system")
    errors = [e.error for e in app.of(api.ErrorEvent)]
    assert errors and all("internal" not in e for e in errors)
    assert any(e.startswith("media track") for e in errors)
    assert call.exit.reason == "normal"
