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


Command = Union[
    Invite, Accept, Reject, Ringing, Tts, Play, Interrupt, Refer, Mute, Unmute, Hangup,
    Pause, Resume, History, Custom, Bridge, Unbridge, SendDtmf,
]

COMMANDS: dict[str, type] = {cls.command: cls for cls in typing.get_args(Command)}
