"""The JSON codec behind ``protocol.api``, driven by dataclass declarations.

A message class declares its fields once, with type hints; this module compiles them into a
schema (wire name, kind, bounds) and decodes/encodes from it. The decoding rules are documented
in ``protocol.api``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Union

from protocol.errors import ProtocolError


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


# --- field declarations ----------------------------------------------------------------------

INT_MAX = 2**63 - 1

DAY_S = 86_400
DAY_MS = DAY_S * 1000
SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
"""Bounds shared by many fields: a duration is at most a day; an audio sample rate is one of the
standard rates, each of which the gateway's resampler converts to and from its 16 kHz media rate
(an arbitrary rate such as 44101 Hz is a ratio it cannot build)."""


def opt_field(default: Any = None, *, lo: int | None = 0, hi: int | None = INT_MAX, **meta: Any) -> Any:
    """An optional field with bounds (integers) or ``choices``/``casefold`` (strings)."""
    return field(default=default, metadata={"lo": lo, "hi": hi, **meta})


def quantity(default: Any = None, *, lo: float, hi: float | None, unit: str | None = None,
             lo_open: bool = False) -> Any:
    """A ``float`` field: any JSON number within ``lo``..``hi`` (``lo`` excluded if ``lo_open``)."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "unit": unit, "lo_open": lo_open})


def whole(default: Any = None, *, lo: int, hi: int | None = INT_MAX, unit: str | None = None,
          multiple: int | None = None, choices: tuple[int, ...] | None = None, required: bool = False) -> Any:
    """An ``int`` field counted in a unit that has no fractions (Hz, bytes, whole milliseconds of a
    packet, tasks): any JSON number is accepted and rounded to the nearest integer, halves away
    from zero, before the bounds (and ``multiple``, ``choices``) are checked."""
    meta = {"lo": lo, "hi": hi, "unit": unit, "rounded": True, "multiple": multiple, "choices": choices}
    return field(metadata=meta) if required else field(default=default, metadata=meta)


def duration(default: Any = None, *, hi: float = DAY_S) -> Any:
    """A ``float`` field of seconds written either as a number of seconds or as a duration string
    (``"30s"``, ``"1.5s"``, ``"500ms"``, ``"2m"``, ``"1h"``; a bare ``"30"`` is seconds). Greater
    than 0 and at most ``hi`` seconds. Encoded as a string of seconds (``"30s"``)."""
    return field(default=default, metadata={"lo": 0, "hi": hi, "unit": "s", "lo_open": True, "duration": True})


def fields_set_field() -> Any:
    """The attribute names the wire gave, filled by the decoder; not itself on the wire and not
    part of equality. It lets an override be laid over a base without mistaking a filled-in
    default for a choice."""
    return field(default=frozenset(), compare=False, repr=False, metadata={"wire": None})


# --- schema ----------------------------------------------------------------------------------

STR, INT, FLOAT, BOOL, OBJECT, STR_MAP, ANY, BYTES, NESTED, DURATION = range(10)

_EXPECTED = {
    STR: "string", INT: "integer", FLOAT: "number", BOOL: "boolean", OBJECT: "object",
    STR_MAP: "object", ANY: "value", BYTES: "array", NESTED: "object",
    DURATION: "duration",
}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    attr: str
    wire: str
    kind: int
    required: bool
    nested: type | None
    lo: float | None
    hi: float | None
    choices: tuple[Any, ...] | None
    casefold: bool
    unit: str | None = None
    lo_open: bool = False
    rounded: bool = False
    multiple: int | None = None


@dataclass(frozen=True, slots=True)
class Schema:
    fields: tuple[FieldSpec, ...]
    tracks_presence: bool


def camel(attr: str) -> str:
    # A trailing underscore only dodges a Python keyword (``from_``).
    head, *rest = attr.rstrip("_").split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _kind_of(hint: Any) -> tuple[int, type | None]:
    if hint is Any:
        return ANY, None
    if hint is str:
        return STR, None
    if hint is bool:
        return BOOL, None
    if hint is int:
        return INT, None
    if hint is float:
        return FLOAT, None
    if hint is bytes:
        return BYTES, None
    if typing.get_origin(hint) is dict:
        return (STR_MAP if typing.get_args(hint)[1] is str else OBJECT), None
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return NESTED, hint
    raise TypeError(f"no JSON mapping for {hint!r}")


def _compile(cls: type) -> Schema:
    hints = typing.get_type_hints(cls)
    specs = []
    presence = False
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "wire" in meta and meta["wire"] is None:
            presence = presence or f.name == "fields_set"
            continue
        hint = hints[f.name]
        if typing.get_origin(hint) in (Union, types.UnionType):
            (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        kind, nested = _kind_of(hint)
        if meta.get("duration"):
            kind = DURATION
        # A float has no implicit bounds; an integer is non-negative and fits 64 bits unless
        # its declaration says otherwise.
        implicit_lo, implicit_hi = (None, None) if kind in (FLOAT, DURATION) else (0, INT_MAX)
        specs.append(
            FieldSpec(
                attr=f.name,
                wire=meta.get("wire", camel(f.name)),
                kind=kind,
                required=f.default is MISSING and f.default_factory is MISSING,
                nested=nested,
                lo=meta.get("lo", implicit_lo),
                hi=meta.get("hi", implicit_hi),
                choices=meta.get("choices"),
                casefold=meta.get("casefold", False),
                unit=meta.get("unit"),
                lo_open=meta.get("lo_open", False),
                rounded=meta.get("rounded", False),
                multiple=meta.get("multiple"),
            )
        )
    return Schema(tuple(specs), presence)


_SCHEMAS: dict[type, Schema] = {}


def schema(cls: type) -> Schema:
    found = _SCHEMAS.get(cls)
    if found is None:
        found = _SCHEMAS[cls] = _compile(cls)
    return found


# --- decoding --------------------------------------------------------------------------------

Path = tuple[Union[str, int], ...]


class Invalid(Exception):
    """Raised deep in the decoder; turned into an ApiError where the message's name is known."""

    def __init__(self, path: Path, reason: str, missing: str | None = None) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason
        self.missing = missing


def dotted(path: Path) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def to_api_error(exc: Invalid, context: str | None) -> ApiError:
    """``context`` (the command or event name) leads the message when there is one."""
    where = dotted(exc.path)
    message = ": ".join(p for p in (context, where, exc.reason) if p)
    field_path = dotted(exc.path + (exc.missing,)) if exc.missing is not None else where or None
    return ApiError(message, field=field_path, reason=exc.reason)


def json_type(value: Any) -> str:
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


def _number(value: float | int) -> str:
    """A number as a user wrote it: 16000 and 16000.0 both read ``16000``."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _range_text(spec: FieldSpec, noun: str) -> str:
    """The accepted range, as an error states it: ``integer from 300 to 699``, ``number > 0 and
    <= 86400 (s)``, ``integer >= 1``. INT_MAX as the upper bound is a limit of the wire, not of
    the field, and is only named when it is the bound that was crossed."""
    lo, hi = spec.lo, spec.hi
    lo_text = None if lo is None else f"{'>' if spec.lo_open else '>='} {_number(lo)}"
    if hi is None or hi == INT_MAX:
        text = f"{noun} {lo_text}" if lo_text else noun
    elif lo is None:
        text = f"{noun} <= {_number(hi)}"
    elif spec.lo_open:
        text = f"{noun} {lo_text} and <= {_number(hi)}"
    else:
        text = f"{noun} from {_number(lo)} to {_number(hi)}"
    return f"{text} ({spec.unit})" if spec.unit else text


def _check_range(spec: FieldSpec, value: float | int, shown: str, noun: str, path: Path) -> None:
    lo, hi = spec.lo, spec.hi
    if lo is not None and (value <= lo if spec.lo_open else value < lo):
        raise Invalid(path, f"expected {_range_text(spec, noun)}, got {shown}")
    if hi is not None and value > hi:
        if hi == INT_MAX and (lo is None or value > lo):
            raise Invalid(path, f"expected {noun} <= {hi}, got {shown}")
        raise Invalid(path, f"expected {_range_text(spec, noun)}, got {shown}")


def round_half_away(value: float) -> int:
    """The nearest integer, halves away from zero (2.5 -> 3, -2.5 -> -3), as people round; Python's
    ``round`` goes to the even neighbour (2.5 -> 2)."""
    magnitude = math.floor(abs(value) + 0.5)
    return magnitude if value >= 0 else -magnitude


def _decode_int(spec: FieldSpec, value: Any, path: Path) -> int:
    noun = "number" if spec.rounded else "integer"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(path, f"expected {noun}, got {json_type(value)}")
    shown = _number(value)
    if isinstance(value, float):
        if not value.is_integer():
            if not spec.rounded:
                raise Invalid(path, f"expected integer, got number {value!r}")
            shown = f"{value!r} (rounds to {round_half_away(value)})"
            value = round_half_away(value)
        else:
            value = int(value)
    unit = f" ({spec.unit})" if spec.unit else ""
    if spec.choices is not None:
        # The list is the range, and says more than its two ends.
        if value not in spec.choices:
            known = ", ".join(str(c) for c in spec.choices)
            raise Invalid(path, f"expected one of {known}{unit}, got {shown}")
        return value
    _check_range(spec, value, shown, noun, path)
    if spec.multiple is not None and value % spec.multiple:
        raise Invalid(path, f"expected a multiple of {spec.multiple}{unit}, got {shown}")
    return value


def _decode_float(spec: FieldSpec, value: Any, path: Path) -> float:
    # Kept as given (an int stays an int): it is a number either way, and it encodes back as the
    # client wrote it.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(path, f"expected number, got {json_type(value)}")
    _check_range(spec, value, _number(value), "number", path)
    return value


_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h)?\s*", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _decode_duration(spec: FieldSpec, value: Any, path: Path) -> float:
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise Invalid(path, 'expected a duration such as "30s", "1.5s" or "500ms", or a number of '
                                f"seconds, got {value!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "s").lower()]
        _check_range(spec, seconds, f"{value!r}", "duration", path)
        return seconds
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(path, f'expected a duration such as "30s" or a number of seconds, got {json_type(value)}')
    _check_range(spec, value, _number(value), "duration", path)
    return float(value)


def encode_duration(seconds: float) -> str:
    """Seconds as the contract writes a duration: ``"30s"``, ``"1.5s"``."""
    return f"{_number(float(seconds))}s"


def _decode_value(spec: FieldSpec, value: Any, path: Path) -> Any:
    kind = spec.kind
    if kind == STR:
        if not isinstance(value, str):
            raise Invalid(path, f"expected string, got {json_type(value)}")
        if spec.choices is not None:
            key = value.lower() if spec.casefold else value
            if key not in spec.choices:
                known = ", ".join(repr(c) for c in spec.choices)
                raise Invalid(path, f"expected one of {known}, got {value!r}")
            return key
        return value
    if kind == INT:
        return _decode_int(spec, value, path)
    if kind == FLOAT:
        return _decode_float(spec, value, path)
    if kind == DURATION:
        return _decode_duration(spec, value, path)
    if kind == BOOL:
        if not isinstance(value, bool):
            raise Invalid(path, f"expected boolean, got {json_type(value)}")
        return value
    if kind == NESTED:
        return decode_object(spec.nested, value, path)
    if kind == OBJECT:
        if not isinstance(value, dict):
            raise Invalid(path, f"expected object, got {json_type(value)}")
        return value
    if kind == STR_MAP:
        if not isinstance(value, dict):
            raise Invalid(path, f"expected object, got {json_type(value)}")
        for key, item in value.items():
            if not isinstance(item, str):
                raise Invalid(path + (key,), f"expected string, got {json_type(item)}")
        return value
    if kind == BYTES:
        if not isinstance(value, list):
            raise Invalid(path, f"expected array, got {json_type(value)}")
        for index, item in enumerate(value):
            if type(item) is not int or not 0 <= item <= 255:
                raise Invalid(path + (index,), f"expected byte 0-255, got {json_type(item)} {item!r}")
        return bytes(value)
    return value  # ANY: any JSON value, kept as given


def decode_object(cls: type, obj: Any, path: Path = ()) -> Any:
    if not isinstance(obj, dict):
        raise Invalid(path, f"expected object, got {json_type(obj)}")
    compiled = schema(cls)
    kwargs: dict[str, Any] = {}
    for spec in compiled.fields:
        value = obj.get(spec.wire)
        if value is None:
            if spec.required:
                if spec.wire in obj:
                    raise Invalid(path + (spec.wire,), f"expected {_EXPECTED[spec.kind]}, got null")
                raise Invalid(path, f"missing required field '{spec.wire}'", missing=spec.wire)
            continue
        kwargs[spec.attr] = _decode_value(spec, value, path + (spec.wire,))
    if compiled.tracks_presence:
        kwargs["fields_set"] = frozenset(kwargs)
    return cls(**kwargs)


# --- JSON text -------------------------------------------------------------------------------

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _error(message: str) -> ApiError:
    return ApiError(message, reason=message)


def _reject_constant(name: str) -> Any:
    raise _error(f"invalid JSON: {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _error(f"invalid JSON: number {text} is out of range")
    return value


def _lone_surrogate(value: Any) -> str | None:
    # Iterative: json.loads accepts nesting close to the recursion limit.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                return item[exc.start]
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def loads(text: str | bytes) -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity, no numbers beyond float range, no lone
    surrogates. Raises ApiError and nothing else."""
    try:
        if isinstance(text, (bytes, bytearray, memoryview)):
            text = bytes(text).decode("utf-8")
        else:
            text.encode("utf-8")
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        # A lone surrogate ("\ud800") is legal JSON but not Unicode: echoed back in an event it
        # would make the outgoing text frame unencodable, so it is refused at the door.
        if "\\u" in text and _SURROGATE_ESCAPE.search(text):
            bad = _lone_surrogate(value)
            if bad is not None:
                raise _error(f"invalid JSON: lone surrogate \\u{ord(bad):04x} in a string")
        return value
    except ApiError:
        raise
    except UnicodeDecodeError as exc:
        message = f"invalid JSON: not UTF-8 ({exc.reason} at byte {exc.start})"
    except UnicodeEncodeError as exc:
        message = f"invalid JSON: lone surrogate \\u{ord(exc.object[exc.start]):04x} in the text"
    except json.JSONDecodeError as exc:
        message = f"invalid JSON: {exc}"
    except ValueError:
        # The only other ValueError json raises: an integer literal past Python's digit limit.
        message = "invalid JSON: integer literal too long"
    except RecursionError:
        message = "invalid JSON: nested too deeply"
    raise _error(message)


def dumps(obj: dict[str, Any]) -> str:
    # allow_nan=False: a NaN inside data/extra would be invalid JSON for every client.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# --- encoding --------------------------------------------------------------------------------


def encode_into(out: dict[str, Any], obj: Any) -> dict[str, Any]:
    """``obj``'s fields added to ``out`` in declaration order, camelCase, None left out."""
    for spec in schema(type(obj)).fields:
        value = getattr(obj, spec.attr)
        if value is None:
            continue
        if spec.kind == NESTED:
            value = encode_into({}, value)
        elif spec.kind == BYTES:
            value = list(value)
        elif spec.kind == DURATION:
            value = encode_duration(value)
        out[spec.wire] = value
    return out


def merge(base: Any, override: Any) -> Any:
    """``override`` laid over ``base``: the fields the wire gave ``override`` win, nested option
    objects merge field by field, everything else comes from ``base``."""
    if base is None:
        return override
    if override is None:
        return base
    if type(base) is not type(override) or not schema(type(base)).tracks_presence:
        raise TypeError(f"cannot merge {type(override).__name__} over {type(base).__name__}")
    changes: dict[str, Any] = {}
    for spec in schema(type(base)).fields:
        if spec.attr not in override.fields_set:
            continue
        value = getattr(override, spec.attr)
        if spec.kind == NESTED:
            value = merge(getattr(base, spec.attr), value)
        changes[spec.attr] = value
    return dataclasses.replace(base, **changes, fields_set=base.fields_set | override.fields_set)
