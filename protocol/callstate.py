"""A call's state as a transition table (in the manner of h11's ``_state.py``).

Pure: the inputs are the application's commands, what the leg reports, the application's connection
coming and going, and timers; the table says which are valid in which state and where they lead.
An input that is not valid changes nothing and raises ``InvalidTransition`` with a text fit for an
`error` event. The Call actor consults the machine before it acts, and feeds it what its leg says.

A call has a direction, fixed when it is created: ``OUTBOUND`` calls are placed by the application
(`invite`; on `/call` also `accept`, which the original treats alike), ``INBOUND`` calls arrive from
the leg (an incoming INVITE or offer) and wait for the application to `ringing`/`accept`/`reject`.
Some inputs exist in one direction only (an outgoing call is not `accept`ed, an incoming one does
not receive a remote answer); the table keys carry the direction.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from protocol import api
from protocol.errors import ProtocolError
from protocol.sip.uri import parse_name_addr

__all__ = [
    "CallInput",
    "CallState",
    "CallStateMachine",
    "Direction",
    "InvalidTransition",
    "TABLE",
    "command_input",
]


class Direction(enum.Enum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"


class CallState(enum.Enum):
    NEW = "new"                    # outbound, before `invite`
    CALLING = "calling"            # outbound, invite sent, nothing heard back yet
    INCOMING = "incoming"          # inbound, offered, the application has not answered
    RINGING = "ringing"
    EARLY_MEDIA = "early media"
    ANSWERED = "answered"
    ON_HOLD = "on hold"
    TRANSFERRING = "transferring"
    ENDED = "ended"


class CallInput(enum.Enum):
    # commands
    INVITE = "invite"
    ACCEPT = "accept"
    REJECT = "reject"
    RING = "ringing"                       # `ringing` without early media
    RING_EARLY_MEDIA = "ringing with earlyMedia"
    HANGUP = "hangup"
    TTS = "tts"
    PLAY = "play"
    INTERRUPT = "interrupt"
    PAUSE = "pause"
    RESUME = "resume"
    MUTE = "mute"
    UNMUTE = "unmute"
    REFER = "refer"
    BRIDGE = "bridge"
    UNBRIDGE = "unbridge"
    HISTORY = "history"
    CUSTOM = "custom"
    SEND_DTMF = "sendDtmf"
    # what the leg reports
    LEG_RINGING = "leg ringing"
    LEG_EARLY_MEDIA = "leg early media"
    LEG_ANSWERED = "leg answered"
    LEG_REJECTED = "leg rejected"
    LEG_HANGUP = "leg hangup"
    LEG_FAILED = "leg failed"
    LEG_HOLD = "leg hold"
    LEG_RESUME = "leg resume"
    LEG_TRANSFER_REQUEST = "leg transfer request"
    LEG_TRANSFERRED = "leg transferred"
    LEG_TRANSFER_FAILED = "leg transfer failed"
    LEG_TRANSFER_PROGRESS = "leg transfer progress"
    LEG_TRANSFER_BRIDGED = "leg transfer bridged"
    # the application's connection, timers and operators
    APP_ATTACH = "attach"
    APP_DETACH = "detach"
    ACCEPT_TIMEOUT = "accept timeout"
    KILL = "kill"


S, I, D = CallState, CallInput, Direction

LIVE = tuple(s for s in CallState if s is not S.ENDED)
# Where the caller can hear the gateway: playback and the media commands make sense.
MEDIA = (S.EARLY_MEDIA, S.ANSWERED, S.ON_HOLD, S.TRANSFERRING)
MEDIA_COMMANDS = (I.TTS, I.PLAY, I.INTERRUPT, I.PAUSE, I.RESUME, I.MUTE, I.UNMUTE)
NOT_ANSWERED_INBOUND = (S.INCOMING, S.RINGING, S.EARLY_MEDIA)
NOT_ANSWERED_OUTBOUND = (S.CALLING, S.RINGING, S.EARLY_MEDIA)


def _rules() -> Iterable[tuple[tuple[Direction, ...], tuple[CallState, ...], tuple[CallInput, ...], CallState | None]]:
    """(directions, states, inputs, next state); None keeps the state."""
    both = (D.OUTBOUND, D.INBOUND)
    # Whatever the state, until the end: these end the call or leave it as it is.
    yield both, LIVE, (I.HANGUP, I.KILL, I.LEG_HANGUP, I.LEG_FAILED, I.APP_DETACH), S.ENDED
    yield both, LIVE, (I.HISTORY, I.CUSTOM, I.APP_ATTACH), None
    # Placing a call.
    yield (D.OUTBOUND,), (S.NEW,), (I.INVITE, I.ACCEPT), S.CALLING
    yield (D.OUTBOUND,), (S.CALLING, S.RINGING), (I.LEG_RINGING,), S.RINGING
    yield (D.OUTBOUND,), (S.EARLY_MEDIA,), (I.LEG_RINGING,), None
    yield (D.OUTBOUND,), NOT_ANSWERED_OUTBOUND, (I.LEG_EARLY_MEDIA,), S.EARLY_MEDIA
    yield (D.OUTBOUND,), NOT_ANSWERED_OUTBOUND, (I.LEG_ANSWERED,), S.ANSWERED
    yield (D.OUTBOUND,), NOT_ANSWERED_OUTBOUND, (I.LEG_REJECTED,), S.ENDED
    # Answering one.
    yield (D.INBOUND,), (S.INCOMING, S.RINGING), (I.RING,), S.RINGING
    yield (D.INBOUND,), (S.EARLY_MEDIA,), (I.RING,), None
    yield (D.INBOUND,), NOT_ANSWERED_INBOUND, (I.RING_EARLY_MEDIA,), S.EARLY_MEDIA
    yield (D.INBOUND,), NOT_ANSWERED_INBOUND, (I.ACCEPT,), S.ANSWERED
    yield (D.INBOUND,), NOT_ANSWERED_INBOUND, (I.REJECT, I.ACCEPT_TIMEOUT), S.ENDED
    # In the call.
    yield both, MEDIA, MEDIA_COMMANDS, None
    yield both, (S.ANSWERED, S.ON_HOLD), (I.BRIDGE, I.UNBRIDGE), None
    # Digits reach an IVR in early media as well as in the call.
    yield both, (S.EARLY_MEDIA, S.ANSWERED), (I.SEND_DTMF,), None
    yield both, (S.ANSWERED, S.ON_HOLD), (I.REFER,), S.TRANSFERRING
    yield both, (S.ANSWERED, S.ON_HOLD, S.TRANSFERRING), (I.LEG_TRANSFER_REQUEST,), None
    yield both, (S.ANSWERED,), (I.LEG_HOLD,), S.ON_HOLD
    yield both, (S.ON_HOLD, S.TRANSFERRING), (I.LEG_HOLD,), None
    yield both, (S.ON_HOLD,), (I.LEG_RESUME,), S.ANSWERED
    yield both, (S.ANSWERED, S.TRANSFERRING), (I.LEG_RESUME,), None
    yield both, (S.TRANSFERRING,), (I.LEG_TRANSFERRED,), S.ENDED
    yield both, (S.TRANSFERRING,), (I.LEG_TRANSFER_FAILED,), S.ANSWERED
    # A REFER refused with 405/501: the gateway calls the target itself and bridges it to the caller.
    yield both, (S.TRANSFERRING,), (I.LEG_TRANSFER_PROGRESS,), None
    yield both, (S.TRANSFERRING,), (I.LEG_TRANSFER_BRIDGED,), S.ANSWERED


def _build() -> dict[tuple[Direction, CallState, CallInput], CallState]:
    table: dict[tuple[Direction, CallState, CallInput], CallState] = {}
    for directions, states, inputs, target in _rules():
        for direction in directions:
            for state in states:
                for inp in inputs:
                    key = (direction, state, inp)
                    if key in table:
                        raise AssertionError(f"two rules for {key}")
                    table[key] = state if target is None else target
    return table


TABLE: dict[tuple[Direction, CallState, CallInput], CallState] = _build()
"""(direction, state, input) -> next state. A key that is absent is an invalid input."""


class InvalidTransition(ProtocolError):
    """An input the call's state does not allow; nothing changed."""

    def __init__(self, message: str, state: CallState, inp: CallInput, status: int = 400) -> None:
        super().__init__(message, status)
        self.state = state
        self.input = inp


_INITIAL = {D.OUTBOUND: S.NEW, D.INBOUND: S.INCOMING}


class CallStateMachine:
    """The state of one call. ``check`` says whether an input is valid now; ``process`` applies it."""

    def __init__(self, direction: Direction) -> None:
        self.direction = direction
        self.state = _INITIAL[direction]
        # Changes of state only (inputs that keep it are not recorded): short for any call.
        self.history: list[tuple[CallState, CallInput, CallState]] = []

    def valid(self, inp: CallInput) -> bool:
        return (self.direction, self.state, inp) in TABLE

    def check(self, inp: CallInput) -> CallState:
        """The state ``inp`` would lead to; raises ``InvalidTransition`` if it is not valid now."""
        target = TABLE.get((self.direction, self.state, inp))
        if target is None:
            raise InvalidTransition(self._refusal(inp), self.state, inp)
        return target

    def process(self, inp: CallInput) -> CallState:
        """Apply ``inp``; returns the new state (``InvalidTransition`` leaves the state as it was)."""
        target = self.check(inp)
        if target is not self.state:
            self.history.append((self.state, inp, target))
        self.state = target
        return target

    @property
    def ended(self) -> bool:
        return self.state is S.ENDED

    @property
    def answered(self) -> bool:
        return self.state in (S.ANSWERED, S.ON_HOLD, S.TRANSFERRING)

    def _refusal(self, inp: CallInput) -> str:
        if self.state is S.ENDED:
            return f"{inp.value}: the call has ended"
        where = sorted({state.value for (d, state, i) in TABLE if d is self.direction and i is inp},
                       key=lambda v: [s.value for s in CallState].index(v))
        if not where:
            other = "an incoming" if self.direction is D.OUTBOUND else "an outgoing"
            return f"{inp.value}: only for {other} call; this one is {self.direction.value}"
        valid = ", ".join(where)
        if S.ANSWERED.value in where and self.state in (S.NEW, S.CALLING, S.INCOMING, S.RINGING):
            return f"{inp.value}: the call is not answered yet (it is {self.state.value}; valid when {valid})"
        return f"{inp.value}: not valid while the call is {self.state.value} (valid when {valid})"


_COMMAND_INPUTS: dict[type, CallInput] = {
    api.Invite: I.INVITE,
    api.Accept: I.ACCEPT,
    api.Reject: I.REJECT,
    api.Hangup: I.HANGUP,
    api.Tts: I.TTS,
    api.Play: I.PLAY,
    api.Interrupt: I.INTERRUPT,
    api.Pause: I.PAUSE,
    api.Resume: I.RESUME,
    api.Mute: I.MUTE,
    api.Unmute: I.UNMUTE,
    api.Refer: I.REFER,
    api.Bridge: I.BRIDGE,
    api.Unbridge: I.UNBRIDGE,
    api.History: I.HISTORY,
    api.Custom: I.CUSTOM,
    api.SendDtmf: I.SEND_DTMF,
}


def command_input(command: object) -> CallInput:
    """The machine's input for an API command."""
    if isinstance(command, api.Ringing):
        return I.RING_EARLY_MEDIA if command.early_media else I.RING
    try:
        return _COMMAND_INPUTS[type(command)]
    except KeyError:
        raise ProtocolError(f"no call input for {type(command).__name__}", 501) from None


def attendee(party: str | None) -> api.Attendee | None:
    """The `hangup` event's `from`/`to` for a caller or callee as the application gave it:
    username and realm of a SIP URI (or name-addr), the text itself as `source`. A text that is not
    a SIP URI ("alice", "+4930123") is all username, with an empty realm."""
    if not party:
        return None
    try:
        uri = parse_name_addr(party).uri
    except ProtocolError:
        return api.Attendee(username=party, realm="", source=party)
    return api.Attendee(username=uri.user or "", realm=uri.host, source=party)
