"""The JSON WebSocket API: every command, event and option object, and their codec.

Each message is a frozen, slotted dataclass whose attributes are the snake_case form of the wire
names (``play_id`` <-> ``playId``; ``from_`` <-> ``from``). The codec is driven by the dataclass
fields and their type hints, so a field is declared once and the parser, the encoder and the
error paths follow from it.

Decoding rules (they are the contract with applications, so they are spelled out):

- Unknown fields are ignored and not kept anywhere: clients written against newer or older
  versions of the API keep working, and nothing unvalidated travels further into the gateway.
- ``null`` for an optional field means "absent" (its default applies); for a required field it is
  a type error.
- ``bool`` is never a number. An integer is accepted where a float is expected. A float with an
  integral value (``16000.0``) is accepted for an integer field and stored as ``int``: it is
  lossless, and JSON encoders in some languages write every number as a float. ``1.5`` for an
  integer field is an error.
- Integers are non-negative and below 2**63 unless a field says otherwise (sample rates, ptime
  and packet sizes are positive; a rejection's SIP code is 300-699; ``volume`` may be negative
  because providers use signed scales). ``NaN``, ``Infinity`` and numbers beyond float range are
  not JSON and are rejected.
- ``CallOption.codec`` is matched case-insensitively and stored lower-case.
- Every error is an ``ApiError`` whose ``field`` is the dotted path of the offending value
  relative to the message (``option.vad.samplerate``, ``data[3]``) and whose message names the
  command or event first: ``invite: option.vad.samplerate: expected integer, got string``.

Encoding omits ``None`` only: a default such as ``autoHangup: false`` is written out, so the
receiver never has to know the defaults. Events are written ``event``, ``trackId``,
``timestamp``, then their other fields in declaration order.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Union

from protocol.errors import ProtocolError

__all__ = [
    "ApiError",
    "Attendee",
    "CallOption",
    "MediaPassOption",
    "RecorderOption",
    "ReferOption",
    "SipOption",
    "SynthesisOption",
    "TranscriptionOption",
    "VADOption",
    "CODEC_SAMPLERATES",
    "Invite",
    "Accept",
    "Reject",
    "Ringing",
    "Tts",
    "Play",
    "Interrupt",
    "Refer",
    "Mute",
    "Unmute",
    "Hangup",
    "Pause",
    "Resume",
    "History",
    "Custom",
    "Bridge",
    "Unbridge",
    "Command",
    "COMMANDS",
    "IncomingEvent",
    "AnswerEvent",
    "RejectEvent",
    "RingingEvent",
    "HangupEvent",
    "SpeakingEvent",
    "SilenceEvent",
    "AsrFinalEvent",
    "AsrDeltaEvent",
    "TrackStartEvent",
    "TrackEndEvent",
    "InterruptionEvent",
    "DtmfEvent",
    "MetricsEvent",
    "ErrorEvent",
    "BinaryEvent",
    "PingEvent",
    "OtherEvent",
    "AddHistoryEvent",
    "CustomEvent",
    "InactivityEvent",
    "Event",
    "EVENTS",
    "parse_command",
    "command_from_json",
    "command_to_json",
    "parse_event",
    "event_from_json",
    "event_to_json",
    "dumps_event",
    "parse_option",
    "option_to_json",
    "parse_call_option",
    "parse_refer_option",
    "dumps_command",
    "wire_fields",
]


class ApiError(ProtocolError):
    """A command, event or option that does not match the API.

    ``field`` is the dotted path of the offending value (``"option.vad.samplerate"``), or None
    when the message as a whole is at fault (not JSON, not an object). ``reason`` is what is
    wrong with it, without the location.
    """

    def __init__(self, message: str, field: str | None = None, reason: str | None = None) -> None:
        super().__init__(message, status=400)
        self.field = field
        self.reason = reason if reason is not None else message


# Field constraints travel in dataclass field metadata so the declaration stays the single source.
_INT_MAX = 2**63 - 1


def _opt(default: Any = None, *, lo: int | None = 0, hi: int | None = _INT_MAX, **meta: Any) -> Any:
    return field(default=default, metadata={"lo": lo, "hi": hi, **meta})


def _req(*, lo: int | None = 0, hi: int | None = _INT_MAX, **meta: Any) -> Any:
    return field(metadata={"lo": lo, "hi": hi, **meta})


# ---------------------------------------------------------------------------------------------
# Option objects
# ---------------------------------------------------------------------------------------------

CODEC_SAMPLERATES: dict[str, int] = {"pcmu": 8000, "pcma": 8000, "g722": 16000, "pcm": 16000}
"""Codecs of the WebSocket audio leg and the sample rate of their audio when none is given.

G.722 is listed at its audio rate (16 kHz), not at its 8 kHz RTP clock rate.
"""


@dataclass(frozen=True, slots=True)
class Attendee:
    username: str
    realm: str
    source: str


@dataclass(frozen=True, slots=True)
class SipOption:
    username: str | None = None
    password: str | None = None
    realm: str | None = None
    headers: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class RecorderOption:
    recorder_file: str
    samplerate: int = _opt(16000, lo=1)
    ptime: int = _opt(200, lo=1)


@dataclass(frozen=True, slots=True)
class VADOption:
    # Free text, as in the original: the spec's own example uses "webrtc", outside its list;
    # which engines exist is the media side's decision, not the codec's.
    type: str = "silero"
    samplerate: int = _opt(16000, lo=1)
    speech_padding: int = 250
    silence_padding: int = 100
    ratio: float = 0.5
    voice_threshold: float = 0.5
    max_buffer_duration_secs: int = 50
    silence_timeout: int | None = None
    endpoint: str | None = None
    secret_key: str | None = None
    secret_id: str | None = None


@dataclass(frozen=True, slots=True)
class TranscriptionOption:
    provider: str | None = None
    language: str | None = None
    app_id: str | None = None
    secret_id: str | None = None
    secret_key: str | None = None
    model_type: str | None = None
    buffer_size: int | None = None
    samplerate: int = _opt(16000, lo=1)
    endpoint: str | None = None
    extra: dict[str, Any] | None = None
    start_when_answer: bool = False


@dataclass(frozen=True, slots=True)
class SynthesisOption:
    provider: str | None = None
    speaker: str | None = None
    volume: int = _opt(5, lo=-(2**31), hi=2**31 - 1)
    speed: float = 1.0
    samplerate: int = _opt(16000, lo=1)
    app_id: str | None = None
    secret_id: str | None = None
    secret_key: str | None = None
    codec: str | None = None
    subtitle: bool = False
    endpoint: str | None = None
    extra: dict[str, Any] | None = None
    max_concurrent_tasks: int | None = _opt(None, lo=1)


@dataclass(frozen=True, slots=True)
class MediaPassOption:
    url: str
    input_sample_rate: int = _req(lo=1)
    output_sample_rate: int = _req(lo=1)
    packet_size: int = _opt(2560, lo=1)


@dataclass(frozen=True, slots=True)
class ReferOption:
    denoise: bool = False
    timeout: int | None = None
    moh: str | None = None
    asr: TranscriptionOption | None = None
    auto_hangup: bool = False
    sip: SipOption | None = None


@dataclass(frozen=True, slots=True)
class CallOption:
    """Call configuration of ``invite`` and ``accept``.

    Beyond the spec, as in the original active-call: ``inactivity_timeout`` (seconds without
    media or commands before the call is ended). Extension of this gateway: ``samplerate``, the
    sample rate of the binary audio on the WebSocket leg; see ``audio_samplerate``.
    """

    denoise: bool = False
    offer: str | None = None
    callee: str | None = None
    caller: str | None = None
    codec: str = _opt("pcmu", choices=tuple(CODEC_SAMPLERATES), casefold=True)
    recorder: RecorderOption | None = None
    vad: VADOption | None = None
    asr: TranscriptionOption | None = None
    tts: SynthesisOption | None = None
    media_pass: MediaPassOption | None = None
    handshake_timeout: str | None = None
    enable_ipv6: bool = False
    sip: SipOption | None = None
    extra: dict[str, Any] | None = None
    inactivity_timeout: int | None = None
    samplerate: int | None = _opt(None, lo=1)

    @property
    def audio_samplerate(self) -> int:
        """Sample rate of the WebSocket leg's binary audio: ``samplerate`` if given, else the
        codec's own rate (8000 for pcmu/pcma, 16000 for g722 and raw pcm)."""
        if self.samplerate is not None:
            return self.samplerate
        return CODEC_SAMPLERATES[self.codec]


# ---------------------------------------------------------------------------------------------
# Commands (application -> gateway)
# ---------------------------------------------------------------------------------------------


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
    code: int | None = _opt(None, lo=300, hi=699)


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
    wait_input_timeout: int | None = None
    option: SynthesisOption | None = None
    base64: bool = False


@dataclass(frozen=True, slots=True)
class Play:
    command: ClassVar[str] = "play"
    url: str
    auto_hangup: bool = False
    wait_input_timeout: int | None = None


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
    Pause, Resume, History, Custom, Bridge, Unbridge,
]

COMMANDS: dict[str, type] = {cls.command: cls for cls in typing.get_args(Command)}


# ---------------------------------------------------------------------------------------------
# Events (gateway -> application). Timestamps are milliseconds, given by the caller.
# ---------------------------------------------------------------------------------------------


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
class InactivityEvent:
    event: ClassVar[str] = "inactivity"
    track_id: str
    timestamp: int


Event = Union[
    IncomingEvent, AnswerEvent, RejectEvent, RingingEvent, HangupEvent, SpeakingEvent,
    SilenceEvent, AsrFinalEvent, AsrDeltaEvent, TrackStartEvent, TrackEndEvent,
    InterruptionEvent, DtmfEvent, MetricsEvent, ErrorEvent, BinaryEvent, PingEvent, OtherEvent,
    AddHistoryEvent, CustomEvent, InactivityEvent,
]

EVENTS: dict[str, type] = {cls.event: cls for cls in typing.get_args(Event)}

_OPTIONS: tuple[type, ...] = (
    CallOption, RecorderOption, TranscriptionOption, SynthesisOption, VADOption,
    MediaPassOption, ReferOption, SipOption, Attendee,
)


# ---------------------------------------------------------------------------------------------
# The schema: compiled once from the dataclass declarations
# ---------------------------------------------------------------------------------------------

_STR, _INT, _FLOAT, _BOOL, _OBJECT, _STR_MAP, _ANY, _BYTES, _NESTED = range(9)


@dataclass(frozen=True, slots=True)
class _Field:
    attr: str
    wire: str
    kind: int
    required: bool
    nested: type | None
    lo: int | None
    hi: int | None
    choices: tuple[str, ...] | None
    casefold: bool


def _camel(attr: str) -> str:
    # A trailing underscore only dodges a Python keyword (``from_``).
    head, *rest = attr.rstrip("_").split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _kind_of(hint: Any) -> tuple[int, type | None]:
    if hint is Any:
        return _ANY, None
    if hint is str:
        return _STR, None
    if hint is bool:
        return _BOOL, None
    if hint is int:
        return _INT, None
    if hint is float:
        return _FLOAT, None
    if hint is bytes:
        return _BYTES, None
    if typing.get_origin(hint) is dict:
        return (_STR_MAP if typing.get_args(hint)[1] is str else _OBJECT), None
    if isinstance(hint, type) and hint in _OPTIONS:
        return _NESTED, hint
    raise TypeError(f"no JSON mapping for {hint!r}")


def _compile(cls: type) -> tuple[_Field, ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        hint = hints[f.name]
        if typing.get_origin(hint) in (Union, types.UnionType):
            (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        kind, nested = _kind_of(hint)
        meta = f.metadata
        out.append(
            _Field(
                attr=f.name,
                wire=meta.get("wire", _camel(f.name)),
                kind=kind,
                required=f.default is MISSING and f.default_factory is MISSING,
                nested=nested,
                lo=meta.get("lo", 0),
                hi=meta.get("hi", _INT_MAX),
                choices=meta.get("choices"),
                casefold=meta.get("casefold", False),
            )
        )
    return tuple(out)


_SCHEMA: dict[type, tuple[_Field, ...]] = {
    cls: _compile(cls) for cls in (*_OPTIONS, *COMMANDS.values(), *EVENTS.values())
}


def wire_fields(cls: type) -> tuple[str, ...]:
    """The wire names of a message or option class, in encoding order."""
    return tuple(f.wire for f in _SCHEMA[cls])


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------

Path = tuple[Union[str, int], ...]


class _Invalid(Exception):
    """Raised deep in the decoder; turned into an ApiError where the message's name is known."""

    def __init__(self, path: Path, reason: str, missing: str | None = None) -> None:
        self.path = path
        self.reason = reason
        self.missing = missing


def _dotted(path: Path) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _api_error(exc: _Invalid, context: str | None) -> ApiError:
    where = _dotted(exc.path)
    if exc.missing is not None:
        full = exc.path + (exc.missing,)
        parts = [context, where or None, exc.reason]
        return ApiError(": ".join(p for p in parts if p), field=_dotted(full), reason=exc.reason)
    parts = [context, where or None, exc.reason]
    return ApiError(": ".join(p for p in parts if p), field=where or None, reason=exc.reason)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _check_int(value: Any, spec: _Field | None, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(path, f"expected integer, got {_json_type(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise _Invalid(path, f"expected integer, got number {value!r}")
        value = int(value)
    lo = spec.lo if spec is not None else 0
    hi = spec.hi if spec is not None else _INT_MAX
    if lo is not None and value < lo:
        raise _Invalid(path, f"expected integer >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise _Invalid(path, f"expected integer <= {hi}, got {value}")
    return value


def _decode_value(spec: _Field, value: Any, path: Path) -> Any:
    kind = spec.kind
    if kind == _STR:
        if not isinstance(value, str):
            raise _Invalid(path, f"expected string, got {_json_type(value)}")
        if spec.choices is not None:
            key = value.lower() if spec.casefold else value
            if key not in spec.choices:
                known = ", ".join(repr(c) for c in spec.choices)
                raise _Invalid(path, f"expected one of {known}, got {value!r}")
            return key
        return value
    if kind == _INT:
        return _check_int(value, spec, path)
    if kind == _FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(path, f"expected number, got {_json_type(value)}")
        return float(value)
    if kind == _BOOL:
        if not isinstance(value, bool):
            raise _Invalid(path, f"expected boolean, got {_json_type(value)}")
        return value
    if kind == _NESTED:
        return _decode_object(spec.nested, value, path)
    if kind == _OBJECT:
        if not isinstance(value, dict):
            raise _Invalid(path, f"expected object, got {_json_type(value)}")
        return value
    if kind == _STR_MAP:
        if not isinstance(value, dict):
            raise _Invalid(path, f"expected object, got {_json_type(value)}")
        for key, item in value.items():
            if not isinstance(item, str):
                raise _Invalid(path + (key,), f"expected string, got {_json_type(item)}")
        return value
    if kind == _BYTES:
        if not isinstance(value, list):
            raise _Invalid(path, f"expected array, got {_json_type(value)}")
        for index, item in enumerate(value):
            if type(item) is not int or not 0 <= item <= 255:
                raise _Invalid(path + (index,), f"expected byte 0-255, got {_json_type(item)} {item!r}")
        return bytes(value)
    return value  # _ANY: any JSON value, kept as given


def _decode_object(cls: type, obj: Any, path: Path) -> Any:
    if not isinstance(obj, dict):
        raise _Invalid(path, f"expected object, got {_json_type(obj)}")
    kwargs = {}
    for spec in _SCHEMA[cls]:
        value = obj.get(spec.wire)
        if value is None:
            if spec.required:
                if spec.wire in obj:
                    raise _Invalid(path + (spec.wire,), f"expected {_EXPECTED[spec.kind]}, got null")
                raise _Invalid(path, f"missing required field '{spec.wire}'", missing=spec.wire)
            continue
        kwargs[spec.attr] = _decode_value(spec, value, path + (spec.wire,))
    return cls(**kwargs)


_EXPECTED = {
    _STR: "string", _INT: "integer", _FLOAT: "number", _BOOL: "boolean", _OBJECT: "object",
    _STR_MAP: "object", _ANY: "value", _BYTES: "array", _NESTED: "object",
}


def _reject_constant(name: str) -> Any:
    raise ApiError(f"invalid JSON: {name} is not allowed", reason=f"invalid JSON: {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        message = f"invalid JSON: number {text} is out of range"
        raise ApiError(message, reason=message)
    return value


def _loads(text: str | bytes) -> Any:
    try:
        if isinstance(text, (bytes, bytearray, memoryview)):
            text = bytes(text).decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except ApiError:
        raise
    except UnicodeDecodeError as exc:
        message = f"invalid JSON: not UTF-8 ({exc.reason} at byte {exc.start})"
    except json.JSONDecodeError as exc:
        message = f"invalid JSON: {exc}"
    except ValueError:
        # The only other ValueError json raises: an integer literal past Python's digit limit.
        message = "invalid JSON: integer literal too long"
    except RecursionError:
        message = "invalid JSON: nested too deeply"
    raise ApiError(message, reason=message)


def _from_json(obj: Any, tag: str, registry: dict[str, type], noun: str) -> Any:
    if not isinstance(obj, dict):
        message = f"expected a JSON object, got {_json_type(obj)}"
        raise ApiError(message, reason=message)
    if tag not in obj:
        reason = f"missing required field '{tag}'"
        raise ApiError(reason, field=tag, reason=reason)
    name = obj[tag]
    if not isinstance(name, str):
        reason = f"expected string, got {_json_type(name)}"
        raise ApiError(f"{tag}: {reason}", field=tag, reason=reason)
    cls = registry.get(name)
    if cls is None:
        reason = f"unknown {noun} {name!r}; known {noun}s: {', '.join(sorted(registry))}"
        raise ApiError(reason, field=tag, reason=reason)
    try:
        return _decode_object(cls, obj, ())
    except _Invalid as exc:
        raise _api_error(exc, name) from None


def command_from_json(obj: Any) -> Command:
    """A command from an already decoded JSON value."""
    return _from_json(obj, "command", COMMANDS, "command")


def parse_command(text: str | bytes) -> Command:
    """A command from the text of a WebSocket message. Raises ApiError, and nothing else."""
    return command_from_json(_loads(text))


def event_from_json(obj: Any) -> Event:
    """An event from an already decoded JSON value."""
    return _from_json(obj, "event", EVENTS, "event")


def parse_event(text: str | bytes) -> Event:
    """An event from its JSON text, for clients and tests. Raises ApiError, and nothing else."""
    return event_from_json(_loads(text))


def parse_option(cls: type, obj: Any) -> Any:
    """An option object (``CallOption``, ``VADOption``...) from a decoded JSON value; error
    paths are relative to the object (``vad.samplerate``)."""
    if cls not in _OPTIONS:
        raise TypeError(f"{cls!r} is not an option class")
    try:
        return _decode_object(cls, obj, ())
    except _Invalid as exc:
        raise _api_error(exc, None) from None


def parse_call_option(obj: Any) -> CallOption:
    return parse_option(CallOption, obj)


def parse_refer_option(obj: Any) -> ReferOption:
    return parse_option(ReferOption, obj)


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def _encode_into(out: dict[str, Any], obj: Any) -> dict[str, Any]:
    for spec in _SCHEMA[type(obj)]:
        value = getattr(obj, spec.attr)
        if value is None:
            continue
        if spec.kind == _NESTED:
            value = _encode_into({}, value)
        elif spec.kind == _BYTES:
            value = list(value)
        out[spec.wire] = value
    return out


def command_to_json(cmd: Command) -> dict[str, Any]:
    cls = type(cmd)
    if COMMANDS.get(getattr(cls, "command", None)) is not cls:
        raise TypeError(f"not a command: {cmd!r}")
    return _encode_into({"command": cls.command}, cmd)


def event_to_json(ev: Event) -> dict[str, Any]:
    cls = type(ev)
    if EVENTS.get(getattr(cls, "event", None)) is not cls:
        raise TypeError(f"not an event: {ev!r}")
    return _encode_into({"event": cls.event}, ev)


def option_to_json(opt: Any) -> dict[str, Any]:
    if type(opt) not in _OPTIONS:
        raise TypeError(f"not an option object: {opt!r}")
    return _encode_into({}, opt)


def dumps_event(ev: Event) -> str:
    """Compact JSON text of an event. A NaN or infinity inside ``data``/``extra`` raises
    ValueError: it would be invalid JSON for every client."""
    return json.dumps(event_to_json(ev), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps_command(cmd: Command) -> str:
    """Compact JSON text of a command (for clients and tests)."""
    return json.dumps(command_to_json(cmd), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
