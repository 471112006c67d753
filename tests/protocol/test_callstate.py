"""The call state table, checked cell by cell against a matrix written out by hand.

Each row is a state, each column an input (the order of COLUMNS). A letter is the state the input
leads to, `.` means valid and the state stays, `-` means refused (error, nothing changes).
"""

from __future__ import annotations

import pytest

from protocol import api
from protocol.errors import ProtocolError
from protocol.callstate import (
    TABLE,
    CallInput as I,
    CallState as S,
    CallStateMachine,
    Direction,
    InvalidTransition,
    command_input,
)

COLUMNS = [
    I.INVITE, I.ACCEPT, I.REJECT, I.RING, I.RING_EARLY_MEDIA, I.HANGUP,
    I.TTS, I.PLAY, I.INTERRUPT, I.PAUSE, I.RESUME, I.MUTE, I.UNMUTE,
    I.REFER, I.BRIDGE, I.UNBRIDGE, I.HISTORY, I.CUSTOM, I.SEND_DTMF,
    I.LEG_RINGING, I.LEG_EARLY_MEDIA, I.LEG_ANSWERED, I.LEG_REJECTED, I.LEG_HANGUP, I.LEG_FAILED,
    I.LEG_HOLD, I.LEG_RESUME, I.LEG_TRANSFER_REQUEST, I.LEG_TRANSFERRED, I.LEG_TRANSFER_FAILED,
    I.LEG_TRANSFER_PROGRESS, I.LEG_TRANSFER_BRIDGED,
    I.APP_ATTACH, I.APP_DETACH, I.ACCEPT_TIMEOUT, I.KILL,
]
LETTERS = {"N": S.NEW, "C": S.CALLING, "I": S.INCOMING, "R": S.RINGING, "E": S.EARLY_MEDIA,
           "A": S.ANSWERED, "H": S.ON_HOLD, "T": S.TRANSFERRING, "X": S.ENDED}

#            inv acc rej rng rne hup | tts ply int pau res mut unm | ref brg ubr his cus dtm | lrg lem lan lrj lhu lfa | lho lre ltq ltd ltf ltp ltb | att det ato kil
OUTBOUND = {
    S.NEW:          "C C - - - X   - - - - - - -   - - - . . -   - - - - X X   - - - - - - -   . X - X",
    S.CALLING:      "- - - - - X   - - - - - - -   - - - . . -   R E A X X X   - - - - - - -   . X - X",
    S.INCOMING:     "- - - - - X   - - - - - - -   - - - . . -   - - - - X X   - - - - - - -   . X - X",
    S.RINGING:      "- - - - - X   - - - - - - -   - - - . . -   . E A X X X   - - - - - - -   . X - X",
    S.EARLY_MEDIA:  "- - - - - X   . . . . . . .   - - - . . .   . . A X X X   - - - - - - -   . X - X",
    S.ANSWERED:     "- - - - - X   . . . . . . .   T . . . . .   - - - - X X   H . . - - - -   . X - X",
    S.ON_HOLD:      "- - - - - X   . . . . . . .   T . . . . -   - - - - X X   . A . - - - -   . X - X",
    S.TRANSFERRING: "- - - - - X   . . . . . . .   - - - . . -   - - - - X X   . . . X A . A   . X - X",
    S.ENDED:        "- - - - - -   - - - - - - -   - - - - - -   - - - - - -   - - - - - - -   - - - -",
}
INBOUND = {
    S.NEW:          "- - - - - X   - - - - - - -   - - - . . -   - - - - X X   - - - - - - -   . X - X",
    S.CALLING:      "- - - - - X   - - - - - - -   - - - . . -   - - - - X X   - - - - - - -   . X - X",
    S.INCOMING:     "- A X R E X   - - - - - - -   - - - . . -   - - - - X X   - - - - - - -   . X X X",
    S.RINGING:      "- A X . E X   - - - - - - -   - - - . . -   - - - - X X   - - - - - - -   . X X X",
    S.EARLY_MEDIA:  "- A X . . X   . . . . . . .   - - - . . .   - - - - X X   - - - - - - -   . X X X",
    S.ANSWERED:     "- - - - - X   . . . . . . .   T . . . . .   - - - - X X   H . . - - - -   . X - X",
    S.ON_HOLD:      "- - - - - X   . . . . . . .   T . . . . -   - - - - X X   . A . - - - -   . X - X",
    S.TRANSFERRING: "- - - - - X   . . . . . . .   - - - . . -   - - - - X X   . . . X A . A   . X - X",
    S.ENDED:        "- - - - - -   - - - - - - -   - - - - - -   - - - - - -   - - - - - - -   - - - -",
}


def expected(direction: Direction, state: S, inp: I) -> S | None:
    row = (OUTBOUND if direction is Direction.OUTBOUND else INBOUND)[state].split()
    assert len(row) == len(COLUMNS), f"{direction} {state}: {len(row)} cells"
    cell = row[COLUMNS.index(inp)]
    if cell == "-":
        return None
    return state if cell == "." else LETTERS[cell]


def machine_in(direction: Direction, state: S) -> CallStateMachine:
    m = CallStateMachine(direction)
    m.state = state
    return m


def test_the_matrix_names_every_input_and_every_state():
    assert sorted(COLUMNS, key=lambda i: i.value) == sorted(I, key=lambda i: i.value)
    assert set(OUTBOUND) == set(S) == set(INBOUND)


@pytest.mark.parametrize("direction", list(Direction))
@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("inp", list(I))
def test_every_state_and_input(direction, state, inp):
    want = expected(direction, state, inp)
    m = machine_in(direction, state)
    assert TABLE.get((direction, state, inp)) is want
    if want is None:
        with pytest.raises(InvalidTransition) as info:
            m.process(inp)
        assert m.state is state, "a refused input changes nothing"
        assert info.value.status == 400
        assert info.value.message.startswith(inp.value + ":")
    else:
        assert m.process(inp) is want
        assert m.state is want


def test_a_call_starts_new_when_placed_and_incoming_when_offered():
    assert CallStateMachine(Direction.OUTBOUND).state is S.NEW
    assert CallStateMachine(Direction.INBOUND).state is S.INCOMING


def test_the_websocket_call_path_and_its_history_of_changes():
    m = CallStateMachine(Direction.OUTBOUND)
    for inp in (I.INVITE, I.LEG_ANSWERED, I.TTS, I.TTS, I.HANGUP):
        m.process(inp)
    assert m.ended
    assert [(a.value, i.value, b.value) for a, i, b in m.history] == [
        ("new", "invite", "calling"), ("calling", "leg answered", "answered"),
        ("answered", "hangup", "ended")]


def test_an_incoming_call_rung_with_early_media_then_answered_then_held():
    m = CallStateMachine(Direction.INBOUND)
    assert m.process(I.RING) is S.RINGING
    assert m.process(I.RING_EARLY_MEDIA) is S.EARLY_MEDIA
    assert m.process(I.PLAY) is S.EARLY_MEDIA
    assert m.process(I.ACCEPT) is S.ANSWERED
    assert m.answered
    assert m.process(I.LEG_HOLD) is S.ON_HOLD
    assert m.process(I.LEG_RESUME) is S.ANSWERED


def test_refusals_say_what_is_wrong():
    m = CallStateMachine(Direction.OUTBOUND)
    with pytest.raises(InvalidTransition, match=r"^tts: the call is not answered yet \(it is new; valid when early "
                                                r"media, answered, on hold, transferring\)$"):
        m.process(I.TTS)
    m.process(I.INVITE)
    m.process(I.LEG_ANSWERED)
    with pytest.raises(InvalidTransition, match=r"^leg transferred: not valid while the call is answered \(valid when transferring\)$"):
        m.process(I.LEG_TRANSFERRED)
    with pytest.raises(InvalidTransition, match=r"^reject: only for an incoming call; this one is outbound$"):
        m.process(I.REJECT)
    m.process(I.HANGUP)
    with pytest.raises(InvalidTransition, match=r"^invite: the call has ended$"):
        m.process(I.INVITE)


def test_second_invite_is_refused_while_calling_or_answered():
    m = CallStateMachine(Direction.OUTBOUND)
    m.process(I.INVITE)
    with pytest.raises(InvalidTransition, match="not valid while the call is calling"):
        m.process(I.INVITE)
    m.process(I.LEG_ANSWERED)
    with pytest.raises(InvalidTransition, match="not valid while the call is answered"):
        m.process(I.ACCEPT)


def test_every_command_has_an_input():
    option = api.CallOption()
    samples = [api.Invite(option), api.Accept(option), api.Reject("busy"), api.Ringing(), api.Tts("hi"),
               api.Play("a.wav"), api.Interrupt(), api.Refer("a", "b"), api.Mute(), api.Unmute(),
               api.Hangup(), api.Pause(), api.Resume(), api.History("user", "hi"), api.Custom(),
               api.Bridge("x"), api.Unbridge(), api.SendDtmf("1")]
    # Leg commands (addIceCandidate) go to the leg, never to the call's state.
    assert {type(c) for c in samples} == set(api.COMMANDS.values()) - set(api.LEG_COMMANDS)
    with pytest.raises(ProtocolError, match="no call input for AddIceCandidate"):
        command_input(api.AddIceCandidate("candidate:1 1 udp 1 127.0.0.1 9 typ host", "0"))
    inputs = {command_input(c) for c in samples}
    assert I.RING in inputs and command_input(api.Ringing(early_media=True)) is I.RING_EARLY_MEDIA
    assert len(inputs) == len(samples)
