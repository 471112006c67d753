"""Commands of the JSON API: what an application sends. Import from ``protocol.api``."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from protocol.api_codec import DAY_S, opt_field, quantity, whole
from protocol.api_options import CallOption, RecorderOption, ReferOption, SynthesisOption


@dataclass(frozen=True, slots=True)
class Invite:
    command: ClassVar[str] = "invite"
    option: CallOption


@dataclass(frozen=True, slots=True)
class Accept:
    command: ClassVar[str] = "accept"
    option: CallOption


@dataclass(frozen=True, slots=True)
class Reject:
    command: ClassVar[str] = "reject"
    reason: str
    # A rejection is a final non-2xx SIP response; anything else could not be sent as one.
    code: int | None = opt_field(None, lo=300, hi=699)


@dataclass(frozen=True, slots=True)
class Ringing:
    command: ClassVar[str] = "ringing"
    recorder: RecorderOption | None = None
    early_media: bool = False
    ringtone: str | None = None


@dataclass(frozen=True, slots=True)
class Tts:
    command: ClassVar[str] = "tts"
    text: str
    speaker: str | None = None
    play_id: str | None = None
    auto_hangup: bool = False
    streaming: bool = False
    end_of_stream: bool = False
    wait_input_timeout: float | None = quantity(None, lo=0, hi=DAY_S, unit="s")
    option: SynthesisOption | None = None
    base64: bool = False


@dataclass(frozen=True, slots=True)
class Play:
    command: ClassVar[str] = "play"
    url: str
    auto_hangup: bool = False
    wait_input_timeout: float | None = quantity(None, lo=0, hi=DAY_S, unit="s")


@dataclass(frozen=True, slots=True)
class Interrupt:
    command: ClassVar[str] = "interrupt"
    graceful: bool = False


@dataclass(frozen=True, slots=True)
class Refer:
    command: ClassVar[str] = "refer"
    caller: str
    callee: str
    options: ReferOption | None = None


@dataclass(frozen=True, slots=True)
class Mute:
    command: ClassVar[str] = "mute"
    track_id: str | None = None


@dataclass(frozen=True, slots=True)
class Unmute:
    command: ClassVar[str] = "unmute"
    track_id: str | None = None


@dataclass(frozen=True, slots=True)
class Hangup:
    command: ClassVar[str] = "hangup"
    reason: str | None = None
    initiator: str | None = None
    # Extra headers of the BYE (SIP legs), as the original carries them.
    headers: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class SendDtmf:
    """Send DTMF to the far party (SIP legs: RFC 4733 when negotiated, else SIP INFO). Not in the
    original, which has no command for it."""

    command: ClassVar[str] = "sendDtmf"
    digits: str
    duration: int = whole(100, lo=40, hi=8000, unit="ms")   # per digit


@dataclass(frozen=True, slots=True)
class Pause:
    command: ClassVar[str] = "pause"


@dataclass(frozen=True, slots=True)
class Resume:
    command: ClassVar[str] = "resume"


@dataclass(frozen=True, slots=True)
class History:
    command: ClassVar[str] = "history"
    speaker: str
    text: str


@dataclass(frozen=True, slots=True)
class Custom:
    command: ClassVar[str] = "custom"
    sender: str | None = None
    data: Any = None


@dataclass(frozen=True, slots=True)
class Bridge:
    command: ClassVar[str] = "bridge"
    target_session_id: str


@dataclass(frozen=True, slots=True)
class Unbridge:
    command: ClassVar[str] = "unbridge"
    target_session_id: str | None = None


@dataclass(frozen=True, slots=True)
class AddIceCandidate:
    """A trickled ICE candidate of a WebRTC peer (the browser's ``RTCIceCandidate`` fields).

    ``candidate`` empty or absent signals the end of the peer's candidates. The m-line is named
    by ``sdpMid`` or by its index; ``sdpMlineIndex`` is accepted for the index as well, as
    clients that copy the field name from other signalling spell it so."""

    command: ClassVar[str] = "addIceCandidate"
    candidate: str | None = None
    sdp_mid: str | None = None
    sdp_m_line_index: int | None = opt_field(None, lo=0, hi=65535)
    sdp_mline_index: int | None = opt_field(None, lo=0, hi=65535)

    @property
    def mline_index(self) -> int | None:
        return self.sdp_m_line_index if self.sdp_m_line_index is not None else self.sdp_mline_index

    @property
    def end_of_candidates(self) -> bool:
        return not self.candidate


Command = Union[
    Invite, Accept, Reject, Ringing, Tts, Play, Interrupt, Refer, Mute, Unmute, Hangup,
    Pause, Resume, History, Custom, Bridge, Unbridge, SendDtmf, AddIceCandidate,
]

COMMANDS: dict[str, type] = {cls.command: cls for cls in typing.get_args(Command)}

# Commands addressed to the call's leg rather than to the call: the connection hands them to its
# leg's own hook (transports/http.py) and they never reach the Call or its state machine.
LEG_COMMANDS: tuple[type, ...] = (AddIceCandidate,)
