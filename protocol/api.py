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
- ``bool`` is never a number. Every field the contract types as ``number`` takes fractions:
  a ``float`` field (seconds, milliseconds of padding or timeouts, volume, speed, ratios) keeps
  the number as given; an ``int`` field declared with ``whole`` (Hz, bytes, the recorder's ptime,
  a count of tasks) rounds it to the nearest integer, halves away from zero, before its range is
  checked. Only identifiers (a rejection's SIP code) must be whole: ``486.5`` is an error. A float
  with an integral value (``16000.0``) is the integer, as JSON encoders in some languages write
  every number as a float.
- Integers are non-negative and below 2**63 unless a field says otherwise (sample rates, ptime
  and packet sizes are positive; a rejection's SIP code is 300-699); durations are at most a day.
  ``NaN``, ``Infinity`` and numbers beyond float range are not JSON and are rejected, as are
  strings holding a lone UTF-16 surrogate (``"\\ud800"``), which could not be echoed back in a
  UTF-8 text frame.
- ``CallOption.codec`` is matched case-insensitively and stored lower-case.
- Every error is an ``ApiError`` whose ``field`` is the dotted path of the offending value
  relative to the message (``option.vad.samplerate``, ``data[3]``) and whose message names the
  command or event first: ``invite: option.vad.samplerate: expected integer, got string``.

Option objects record in ``fields_set`` which fields the wire gave (defaults are filled in, so
the values alone cannot tell); ``merge_options`` uses it to lay a ``tts`` command's option over
the call's, field by field.

The types live in ``api_options``, ``api_commands`` and ``api_events`` and the machinery in
``api_codec``; this module is the one to import.

Encoding omits ``None`` only: a default such as ``autoHangup: false`` is written out, so the
receiver never has to know the defaults. Events are written ``event``, ``trackId``,
``timestamp``, then their other fields in declaration order.
"""

from __future__ import annotations

from typing import Any, TypeVar

from protocol.api_codec import (
    ApiError,
    Invalid,
    decode_object,
    dumps,
    encode_into,
    json_type,
    loads,
    merge,
    schema,
    to_api_error,
)
from protocol.api_commands import (
    COMMANDS,
    LEG_COMMANDS,
    Accept,
    AddIceCandidate,
    Bridge,
    Command,
    Custom,
    Hangup,
    History,
    Interrupt,
    Invite,
    Mute,
    Pause,
    Play,
    Refer,
    Reject,
    Resume,
    Ringing,
    SendDtmf,
    Tts,
    Unbridge,
    Unmute,
)
from protocol.api_events import (
    EVENTS,
    AddHistoryEvent,
    AnswerEvent,
    AsrDeltaEvent,
    AsrFinalEvent,
    BinaryEvent,
    CustomEvent,
    DtmfEvent,
    ErrorEvent,
    Event,
    HangupEvent,
    HoldEvent,
    InactivityEvent,
    IncomingEvent,
    InterruptionEvent,
    MetricsEvent,
    OtherEvent,
    PingEvent,
    RejectEvent,
    RingingEvent,
    SilenceEvent,
    SpeakingEvent,
    TrackEndEvent,
    TrackStartEvent,
    TransferRequestEvent,
)
from protocol.api_options import (
    CODEC_SAMPLERATES,
    OPTION_CLASSES,
    Attendee,
    CallOption,
    MediaPassOption,
    RecorderOption,
    ReferOption,
    SipOption,
    SynthesisOption,
    TranscriptionOption,
    VADOption,
)

__all__ = [
    "ApiError",
    # options
    "Attendee", "CallOption", "MediaPassOption", "RecorderOption", "ReferOption", "SipOption",
    "SynthesisOption", "TranscriptionOption", "VADOption", "CODEC_SAMPLERATES", "OPTION_CLASSES",
    # commands
    "Invite", "Accept", "Reject", "Ringing", "Tts", "Play", "Interrupt", "Refer", "Mute",
    "Unmute", "Hangup", "Pause", "Resume", "History", "Custom", "Bridge", "Unbridge",
    "SendDtmf", "AddIceCandidate", "Command", "COMMANDS", "LEG_COMMANDS",
    # events
    "IncomingEvent", "AnswerEvent", "RejectEvent", "RingingEvent", "HangupEvent",
    "SpeakingEvent", "SilenceEvent", "AsrFinalEvent", "AsrDeltaEvent", "TrackStartEvent",
    "TrackEndEvent", "InterruptionEvent", "DtmfEvent", "MetricsEvent", "ErrorEvent",
    "BinaryEvent", "PingEvent", "OtherEvent", "AddHistoryEvent", "CustomEvent",
    "InactivityEvent", "HoldEvent", "TransferRequestEvent", "Event", "EVENTS",
    # codec
    "parse_command", "command_from_json", "command_to_json", "dumps_command",
    "parse_event", "event_from_json", "event_to_json", "dumps_event",
    "parse_option", "parse_call_option", "parse_refer_option", "option_to_json",
    "merge_options", "wire_fields",
]

# Compile every schema now, so a declaration the codec cannot map fails at import, not mid-call.
for _cls in (*OPTION_CLASSES, *COMMANDS.values(), *EVENTS.values()):
    schema(_cls)
del _cls

_O = TypeVar("_O")


def _tagged(obj: Any, tag: str, registry: dict[str, type], noun: str) -> Any:
    if not isinstance(obj, dict):
        message = f"expected a JSON object, got {json_type(obj)}"
        raise ApiError(message, reason=message)
    if tag not in obj:
        reason = f"missing required field '{tag}'"
        raise ApiError(reason, field=tag, reason=reason)
    name = obj[tag]
    if not isinstance(name, str):
        reason = f"expected string, got {json_type(name)}"
        raise ApiError(f"{tag}: {reason}", field=tag, reason=reason)
    cls = registry.get(name)
    if cls is None:
        reason = f"unknown {noun} {name!r}; known {noun}s: {', '.join(sorted(registry))}"
        raise ApiError(reason, field=tag, reason=reason)
    try:
        return decode_object(cls, obj)
    except Invalid as exc:
        raise to_api_error(exc, name) from None


def parse_command(text: str | bytes) -> Command:
    """A command from the text of a WebSocket message. Raises ApiError, and nothing else."""
    return _tagged(loads(text), "command", COMMANDS, "command")


def command_from_json(obj: Any) -> Command:
    """A command from an already decoded JSON value (trusted to come from a strict decoder)."""
    return _tagged(obj, "command", COMMANDS, "command")


def parse_event(text: str | bytes) -> Event:
    """An event from its JSON text, for clients and tests. Raises ApiError, and nothing else."""
    return _tagged(loads(text), "event", EVENTS, "event")


def event_from_json(obj: Any) -> Event:
    return _tagged(obj, "event", EVENTS, "event")


def parse_option(cls: type[_O], obj: Any) -> _O:
    """An option object (``CallOption``, ``VADOption``...) from a decoded JSON value; error
    paths are relative to the object (``vad.samplerate``)."""
    if cls not in OPTION_CLASSES:
        raise TypeError(f"{cls!r} is not an option class")
    try:
        return decode_object(cls, obj)
    except Invalid as exc:
        raise to_api_error(exc, None) from None


def parse_call_option(obj: Any) -> CallOption:
    return parse_option(CallOption, obj)


def parse_refer_option(obj: Any) -> ReferOption:
    return parse_option(ReferOption, obj)


def command_to_json(cmd: Command) -> dict[str, Any]:
    cls = type(cmd)
    if COMMANDS.get(getattr(cls, "command", None)) is not cls:
        raise TypeError(f"not a command: {cmd!r}")
    return encode_into({"command": cls.command}, cmd)


def event_to_json(ev: Event) -> dict[str, Any]:
    cls = type(ev)
    if EVENTS.get(getattr(cls, "event", None)) is not cls:
        raise TypeError(f"not an event: {ev!r}")
    return encode_into({"event": cls.event}, ev)


def option_to_json(opt: Any) -> dict[str, Any]:
    if type(opt) not in OPTION_CLASSES:
        raise TypeError(f"not an option object: {opt!r}")
    return encode_into({}, opt)


def dumps_event(ev: Event) -> str:
    """Compact JSON text of an event. A NaN or infinity inside ``data``/``extra`` raises
    ValueError rather than go out as invalid JSON."""
    return dumps(event_to_json(ev))


def dumps_command(cmd: Command) -> str:
    """Compact JSON text of a command (for clients and tests)."""
    return dumps(command_to_json(cmd))


def merge_options(base: _O | None, override: _O | None) -> _O | None:
    """``override`` laid over ``base``: fields that the wire gave ``override`` (its
    ``fields_set``) win, nested options merge field by field, the rest comes from ``base``.
    Either may be None. An option built in code has an empty ``fields_set`` unless given one,
    so as an override it changes nothing."""
    return merge(base, override)


def wire_fields(cls: type) -> dict[str, str]:
    """Wire name -> attribute name of a message or option class, in encoding order."""
    return {spec.wire: spec.attr for spec in schema(cls).fields}
