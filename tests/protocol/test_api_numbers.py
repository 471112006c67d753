"""Every number field of every command and option, generated from the API's own dataclasses: a
field the contract types as `number` takes fractions (rounded where its unit has none), and each
field's range is stated and enforced. A field added later is covered without touching this file.
"""

from __future__ import annotations

from typing import Any

import pytest

from protocol import api, api_codec
from protocol.api import (COMMANDS, OPTION_CLASSES, AddIceCandidate, ApiError, Reject, command_from_json,
                          parse_option)
from protocol.api_codec import DURATION, FLOAT, INT, NESTED, STR, schema

# Identifiers rather than quantities: a fraction of them means nothing, so it is refused.
STRICT_INTEGERS = {(Reject, "code"), (AddIceCandidate, "sdpMLineIndex"), (AddIceCandidate, "sdpMlineIndex")}


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
    if spec.choices is not None:
        return spec.choices[0]
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
        base = in_range_int(spec)
        below_half = decode(cls, spec.wire, base + 0.4)
        assert getattr(below_half, attr) == base and type(getattr(below_half, attr)) is int
        # Halves go away from zero, as people round (Python's round() would give the even one).
        if spec.choices is not None:
            assert getattr(decode(cls, spec.wire, base - 0.5), attr) == base
        elif spec.multiple is None and (spec.hi is None or base + 1 <= spec.hi):
            assert getattr(decode(cls, spec.wire, base + 0.5), attr) == base + 1
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


# --- ranges ------------------------------------------------------------------------------------


def test_every_number_field_states_its_range() -> None:
    for cls, spec in FIELDS:
        assert spec.lo is not None or spec.choices is not None, f"{cls.__name__}.{spec.wire} has no range"


def outside(spec: Any) -> list[Any]:
    """Values just outside the field's range."""
    if spec.choices is not None:
        return [spec.choices[0] - 1, spec.choices[-1] + 1, spec.choices[0] + 1]
    step = 1 if spec.kind == INT else 0.25
    values = [spec.lo if spec.lo_open else spec.lo - step]
    if spec.hi is not None and spec.hi != api_codec.INT_MAX:
        values.append(spec.hi + step)
    return values


@pytest.mark.parametrize("cls,spec", FIELDS, ids=IDS)
def test_out_of_range_is_refused_naming_the_field_and_the_range(cls: type, spec: Any) -> None:
    for value in outside(spec):
        with pytest.raises(ApiError) as info:
            decode(cls, spec.wire, value)
        err = info.value
        assert err.field.endswith(spec.wire), err
        if spec.choices is not None:
            assert all(str(c) in err.reason for c in spec.choices), err.reason
        else:
            assert api_codec._number(spec.lo) in err.reason, err.reason
            if spec.hi is not None and spec.hi != api_codec.INT_MAX:
                assert api_codec._number(spec.hi) in err.reason, err.reason


@pytest.mark.parametrize("cls,spec", FIELDS, ids=IDS)
def test_the_ends_of_the_range_are_accepted(cls: type, spec: Any) -> None:
    attr = attr_of(cls, spec.wire)
    ends = list(spec.choices) if spec.choices is not None else [spec.lo, spec.hi]
    for value in ends:
        if value is None or value == api_codec.INT_MAX or (value == spec.lo and spec.lo_open):
            continue
        assert getattr(decode(cls, spec.wire, value), attr) == value


def tts_option(**fields: Any) -> Any:
    return command_from_json({"command": "tts", "text": "a", "option": fields}).option


@pytest.mark.parametrize("value", [0, 0.99, 10.01, 11, -1])
def test_volume_outside_one_to_ten_is_refused(value: float) -> None:
    with pytest.raises(ApiError) as info:
        tts_option(volume=value)
    assert (info.value.field, info.value.reason) == (
        "option.volume", f"expected number from 1 to 10, got {api_codec._number(value)}")


@pytest.mark.parametrize("value", [0, -1, -0.5, 0.49, 2.01])
def test_speed_outside_its_range_is_refused(value: float) -> None:
    with pytest.raises(ApiError) as info:
        tts_option(speed=value)
    assert (info.value.field, info.value.reason) == (
        "option.speed", f"expected number from 0.5 to 2, got {api_codec._number(value)}")


def test_volume_and_speed_within_range() -> None:
    opt = tts_option(volume=5.5, speed=0.75)
    assert (opt.volume, opt.speed) == (5.5, 0.75)


@pytest.mark.parametrize("given,seconds", [
    (30, 30.0), (1.5, 1.5), ("30s", 30.0), ("30", 30.0), ("1.5s", 1.5), ("500ms", 0.5), ("2m", 120.0),
    ("1h", 3600.0), (" 10 S ", 10.0), (".5s", 0.5), (86400, 86400.0),
])
def test_handshake_timeout_takes_a_duration_or_seconds(given: Any, seconds: float) -> None:
    opt = api.parse_call_option({"handshakeTimeout": given})
    assert opt.handshake_timeout == seconds
    # Written back the way the contract writes it.
    assert api.option_to_json(opt)["handshakeTimeout"] == f"{api_codec._number(seconds)}s"
    assert api.parse_call_option(api.option_to_json(opt)).handshake_timeout == seconds


@pytest.mark.parametrize("given,reason", [
    ("abc", 'expected a duration such as "30s", "1.5s" or "500ms", or a number of seconds, got \'abc\''),
    ("30 seconds", 'expected a duration such as "30s", "1.5s" or "500ms", or a number of seconds, '
                   "got '30 seconds'"),
    ("-5s", 'expected a duration such as "30s", "1.5s" or "500ms", or a number of seconds, got \'-5s\''),
    ("", 'expected a duration such as "30s", "1.5s" or "500ms", or a number of seconds, got \'\''),
    (0, "expected duration > 0 and <= 86400 (s), got 0"),
    ("0s", "expected duration > 0 and <= 86400 (s), got '0s'"),
    (-1, "expected duration > 0 and <= 86400 (s), got -1"),
    ("2d", 'expected a duration such as "30s", "1.5s" or "500ms", or a number of seconds, got \'2d\''),
    ("25h", "expected duration > 0 and <= 86400 (s), got '25h'"),
    (True, 'expected a duration such as "30s" or a number of seconds, got boolean'),
])
def test_handshake_timeout_refuses_what_is_not_a_duration(given: Any, reason: str) -> None:
    with pytest.raises(ApiError) as info:
        command_from_json({"command": "invite", "option": {"handshakeTimeout": given}})
    assert (info.value.field, info.value.reason) == ("option.handshakeTimeout", reason)
    assert str(info.value) == f"invite: option.handshakeTimeout: {reason}"


def test_a_sample_rate_is_a_standard_rate() -> None:
    assert api.parse_call_option({"recorder": {"recorderFile": "f", "samplerate": 44100.2}}).recorder.samplerate \
        == 44100
    with pytest.raises(ApiError) as info:
        api.parse_call_option({"recorder": {"recorderFile": "f", "samplerate": 44101}})
    assert info.value.reason == (
        "expected one of 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000 (Hz), got 44101")


def test_media_pass_packets_hold_whole_samples() -> None:
    base = {"url": "ws://127.0.0.1:1/m", "inputSampleRate": 16000, "outputSampleRate": 16000}
    assert parse_option(api.MediaPassOption, {**base, "packetSize": 639.6}).packet_size == 640
    with pytest.raises(ApiError) as info:
        parse_option(api.MediaPassOption, {**base, "packetSize": 2561})
    assert (info.value.field, info.value.reason) == ("packetSize", "expected a multiple of 2 (bytes), got 2561")


def test_every_accepted_sample_rate_is_one_the_resampler_can_serve() -> None:
    import numpy as np

    from protocol.codecs import MEDIA_RATE, Resampler

    for rate in api_codec.SAMPLE_RATES:
        there, back = Resampler(MEDIA_RATE, rate), Resampler(rate, MEDIA_RATE)
        out = there.process(np.zeros(320, np.int16))
        assert abs(len(out) - 320 * rate / MEDIA_RATE) <= 1
        back.process(out)
