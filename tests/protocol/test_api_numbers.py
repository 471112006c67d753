"""Every number field of every command and option, generated from the API's own dataclasses: a
field the contract types as `number` takes fractions (rounded where its unit has none), and each
field's range is stated and enforced. A field added later is covered without touching this file.
"""

from __future__ import annotations

from typing import Any

import pytest

from protocol import api
from protocol.api import COMMANDS, OPTION_CLASSES, ApiError, Reject, command_from_json, parse_option
from protocol.api_codec import DURATION, FLOAT, INT, NESTED, STR, schema

# Identifiers rather than quantities: a fraction of them means nothing, so it is refused.
STRICT_INTEGERS = {(Reject, "code")}


def numeric_fields() -> list[tuple[type, Any]]:
    out = []
    for cls in (*COMMANDS.values(), *OPTION_CLASSES):
        for spec in schema(cls).fields:
            if spec.kind in (INT, FLOAT, DURATION):
                out.append((cls, spec))
    return out


FIELDS = numeric_fields()
IDS = [f"{cls.__name__}.{spec.wire}" for cls, spec in FIELDS]


def in_range_int(spec: Any) -> int:
    return int(spec.lo) if spec.lo is not None else 0


def minimal(cls: type) -> dict[str, Any]:
    """The smallest valid JSON object of ``cls``: its required fields and nothing else."""
    obj: dict[str, Any] = {}
    for spec in schema(cls).fields:
        if not spec.required:
            continue
        if spec.kind == STR:
            obj[spec.wire] = "x"
        elif spec.kind == INT:
            obj[spec.wire] = in_range_int(spec)
        elif spec.kind == NESTED:
            obj[spec.wire] = minimal(spec.nested)
        else:
            raise AssertionError(f"no filler for required {cls.__name__}.{spec.wire}")
    return obj


def decode(cls: type, wire: str, value: Any) -> Any:
    obj = {**minimal(cls), wire: value}
    if cls in COMMANDS.values():
        return command_from_json({"command": cls.command, **obj})
    return parse_option(cls, obj)


def attr_of(cls: type, wire: str) -> str:
    return api.wire_fields(cls)[wire]


def fraction_within(spec: Any) -> float:
    lo = spec.lo if spec.lo is not None else 0
    value = lo + 0.25
    if spec.hi is not None and value > spec.hi:
        value = (lo + spec.hi) / 2
    assert value != int(value)
    return value


def test_every_contract_number_is_covered() -> None:
    # Every integer field is either rounded (a quantity in a whole unit) or a listed identifier.
    strict = {(cls, spec.wire) for cls, spec in FIELDS if spec.kind == INT and not spec.rounded}
    assert strict == STRICT_INTEGERS
    assert len(FIELDS) >= 20


@pytest.mark.parametrize("cls,spec", FIELDS, ids=IDS)
def test_a_fraction_is_accepted_or_refused_by_rule(cls: type, spec: Any) -> None:
    attr = attr_of(cls, spec.wire)
    if spec.kind == FLOAT:
        value = fraction_within(spec)
        decoded = decode(cls, spec.wire, value)
        assert getattr(decoded, attr) == value
        assert api.encode_into({}, decoded)[spec.wire] == value
    elif spec.kind == DURATION:
        assert getattr(decode(cls, spec.wire, 1.5), attr) == 1.5
    elif spec.rounded:
        lo = in_range_int(spec)
        below_half = decode(cls, spec.wire, lo + 0.4)
        assert getattr(below_half, attr) == lo and type(getattr(below_half, attr)) is int
        if spec.multiple is None and (spec.hi is None or lo + 1 <= spec.hi):
            # Halves go away from zero, as people round (Python's round() would give the even one).
            assert getattr(decode(cls, spec.wire, lo + 0.5), attr) == lo + 1
    else:
        with pytest.raises(ApiError) as info:
            decode(cls, spec.wire, in_range_int(spec) + 0.5)
        assert info.value.field.endswith(spec.wire) and "expected integer" in info.value.reason


@pytest.mark.parametrize("cls,spec", FIELDS, ids=IDS)
def test_a_number_field_refuses_what_is_not_a_number(cls: type, spec: Any) -> None:
    for value in (True, [1], {"n": 1}) + (() if spec.kind == DURATION else ("1",)):
        with pytest.raises(ApiError) as info:
            decode(cls, spec.wire, value)
        assert info.value.field.endswith(spec.wire), info.value
