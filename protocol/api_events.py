"""Events of the JSON API: what the gateway sends. Timestamps are milliseconds given by the
caller. Import from ``protocol.api``."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

from protocol.api_options import Attendee


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    event: ClassVar[str] = "incoming"
    track_id: str
    timestamp: int
    caller: str
    callee: str
    sdp: str


@dataclass(frozen=True, slots=True)
class AnswerEvent:
    event: ClassVar[str] = "answer"
    track_id: str
    timestamp: int
    sdp: str
    refer: bool | None = None       # True: the transfer target of a `refer` answered (the original's flag)


@dataclass(frozen=True, slots=True)
class RejectEvent:
    event: ClassVar[str] = "reject"
    track_id: str
    timestamp: int
    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class RingingEvent:
    event: ClassVar[str] = "ringing"
    track_id: str
    timestamp: int
    early_media: bool = False
    refer: bool | None = None       # True: progress of a `refer`, not of this call (the original's flag)


@dataclass(frozen=True, slots=True)
class HangupEvent:
    """End of the call. The ``*_time`` fields are ISO 8601 strings, as on the wire."""

    event: ClassVar[str] = "hangup"
    track_id: str
    timestamp: int
    start_time: str
    hangup_time: str
    reason: str | None = None
    initiator: str | None = None
    answer_time: str | None = None
    ringing_time: str | None = None
    from_: Attendee | None = None
    to: Attendee | None = None
    extra: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class SpeakingEvent:
    event: ClassVar[str] = "speaking"
    track_id: str
    timestamp: int
    start_time: int


@dataclass(frozen=True, slots=True)
class SilenceEvent:
    event: ClassVar[str] = "silence"
    track_id: str
    timestamp: int
    start_time: int
    duration: int


@dataclass(frozen=True, slots=True)
class AsrFinalEvent:
    event: ClassVar[str] = "asrFinal"
    track_id: str
    timestamp: int
    index: int
    text: str
    start_time: int | None = None
    end_time: int | None = None


@dataclass(frozen=True, slots=True)
class AsrDeltaEvent:
    event: ClassVar[str] = "asrDelta"
    track_id: str
    timestamp: int
    index: int
    text: str
    start_time: int | None = None
    end_time: int | None = None


@dataclass(frozen=True, slots=True)
class TrackStartEvent:
    event: ClassVar[str] = "trackStart"
    track_id: str
    timestamp: int
    play_id: str | None = None


@dataclass(frozen=True, slots=True)
class TrackEndEvent:
    event: ClassVar[str] = "trackEnd"
    track_id: str
    timestamp: int
    duration: int
    ssrc: int
    play_id: str | None = None


@dataclass(frozen=True, slots=True)
class InterruptionEvent:
    event: ClassVar[str] = "interruption"
    track_id: str
    timestamp: int
    total_duration: int
    current: int
    play_id: str | None = None
    subtitle: str | None = None
    position: int | None = None


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    event: ClassVar[str] = "dtmf"
    track_id: str
    timestamp: int
    digit: str


@dataclass(frozen=True, slots=True)
class MetricsEvent:
    event: ClassVar[str] = "metrics"
    timestamp: int
    key: str
    duration: int
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    event: ClassVar[str] = "error"
    track_id: str
    timestamp: int
    sender: str
    error: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class BinaryEvent:
    """Audio bytes; on the wire an array of integers 0-255."""

    event: ClassVar[str] = "binary"
    track_id: str
    timestamp: int
    data: bytes


@dataclass(frozen=True, slots=True)
class PingEvent:
    event: ClassVar[str] = "ping"
    timestamp: int
    payload: str | None = None


@dataclass(frozen=True, slots=True)
class OtherEvent:
    event: ClassVar[str] = "other"
    track_id: str
    timestamp: int
    sender: str
    extra: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AddHistoryEvent:
    event: ClassVar[str] = "addHistory"
    timestamp: int
    speaker: str
    text: str
    sender: str | None = None


@dataclass(frozen=True, slots=True)
class CustomEvent:
    event: ClassVar[str] = "custom"
    timestamp: int
    sender: str | None = None
    data: Any = None


@dataclass(frozen=True, slots=True)
class HoldEvent:
    """The far party put the call on hold (``onHold`` true) or resumed it, as the original sends."""

    event: ClassVar[str] = "hold"
    track_id: str
    timestamp: int
    on_hold: bool


@dataclass(frozen=True, slots=True)
class TransferRequestEvent:
    """The far party asked to transfer the call (an incoming REFER), as the original sends."""

    event: ClassVar[str] = "transferRequest"
    track_id: str
    timestamp: int
    refer_to: str
    referred_by: str | None = None


@dataclass(frozen=True, slots=True)
class InactivityEvent:
    event: ClassVar[str] = "inactivity"
    track_id: str
    timestamp: int


Event = Union[
    IncomingEvent, AnswerEvent, RejectEvent, RingingEvent, HangupEvent, SpeakingEvent,
    SilenceEvent, AsrFinalEvent, AsrDeltaEvent, TrackStartEvent, TrackEndEvent,
    InterruptionEvent, DtmfEvent, MetricsEvent, ErrorEvent, BinaryEvent, PingEvent, OtherEvent,
    AddHistoryEvent, CustomEvent, InactivityEvent, HoldEvent, TransferRequestEvent,
]

EVENTS: dict[str, type] = {cls.event: cls for cls in typing.get_args(Event)}
