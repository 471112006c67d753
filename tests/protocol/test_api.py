"""The JSON API types against the spec: its examples, its field tables, and hostile input."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import api
from protocol.api import (
    COMMANDS,
    EVENTS,
    Accept,
    AddHistoryEvent,
    AnswerEvent,
    ApiError,
    Attendee,
    BinaryEvent,
    Bridge,
    CallOption,
    Custom,
    CustomEvent,
    DtmfEvent,
    Hangup,
    HangupEvent,
    History,
    InactivityEvent,
    Interrupt,
    Invite,
    MediaPassOption,
    MetricsEvent,
    Mute,
    Pause,
    Play,
    RecorderOption,
    Refer,
    ReferOption,
    Reject,
    Resume,
    Ringing,
    RingingEvent,
    SipOption,
    SynthesisOption,
    TranscriptionOption,
    Tts,
    Unbridge,
    Unmute,
    VADOption,
    command_from_json,
    command_to_json,
    dumps_command,
    dumps_event,
    event_from_json,
    event_to_json,
    merge_options,
    option_to_json,
    parse_call_option,
    parse_command,
    parse_event,
    parse_option,
    parse_refer_option,
    wire_fields,
)
from protocol.errors import ProtocolError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "api"
SPEC_TABLES = json.loads((FIXTURES / "spec_tables.json").read_text())
OPTION_CLASSES = {
    cls.__name__: cls
    for cls in (CallOption, RecorderOption, TranscriptionOption, SynthesisOption, VADOption,
                MediaPassOption, ReferOption, SipOption, Attendee)
}

# Fields the gateway has beyond the spec's tables (from the original active-call, or its own).
EXTENSIONS: dict[type, set[str]] = {
    CallOption: {"inactivityTimeout", "samplerate"},
    SynthesisOption: {"emotion"},  # in the spec's own SynthesisOption example
    Hangup: {"headers"},           # the BYE's extra headers, as the original carries them
    AnswerEvent: {"refer"},        # the original's flag: the bridged target of a `refer` answered
    RingingEvent: {"refer"},       # the original's flag: a `refer`'s progress
}


def fixture_paths(kind: str) -> list[Path]:
    return sorted((FIXTURES / kind).glob("*.json"))


def field_by_wire(cls: type) -> dict[str, dataclasses.Field]:
    attrs = {f.name: f for f in dataclasses.fields(cls)}
    return {wire: attrs[attr] for wire, attr in wire_fields(cls).items()}


def nested_class(cls: type, wire: str) -> type | None:
    hint = typing.get_type_hints(cls)[field_by_wire(cls)[wire].name]
    for arg in (hint, *typing.get_args(hint)):
        if arg in OPTION_CLASSES.values():
            return arg
    return None


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def assert_covers(cls: type, given: dict, encoded: dict) -> None:
    """``encoded`` says what ``given`` says, and whatever it adds is the field's default."""
    fields = field_by_wire(cls)
    for key, value in given.items():
        if key in ("command", "event"):
            assert encoded[key] == value
            continue
        assert key in encoded, f"{cls.__name__}.{key} lost on encode"
        nested = nested_class(cls, key)
        if nested is not None:
            assert_covers(nested, value, encoded[key])
        else:
            assert encoded[key] == value and type(encoded[key]) is type(value), key
    for key in encoded.keys() - given.keys() - {"command", "event"}:
        assert encoded[key] == default_of(fields[key]), f"{cls.__name__}.{key} is not a default"


# --- the spec's examples -----------------------------------------------------------------------


@pytest.mark.parametrize("path", fixture_paths("commands"), ids=lambda p: p.stem)
def test_spec_command_examples_round_trip(path: Path) -> None:
    text = path.read_text()
    given = json.loads(text)
    cmd = parse_command(text)
    assert type(cmd) is COMMANDS[path.stem] and cmd.command == path.stem
    encoded = command_to_json(cmd)
    assert_covers(type(cmd), given, encoded)
    assert next(iter(encoded)) == "command"
    assert parse_command(dumps_command(cmd)) == cmd


@pytest.mark.parametrize("path", fixture_paths("events"), ids=lambda p: p.stem)
def test_spec_event_examples_round_trip_exactly(path: Path) -> None:
    text = path.read_text()
    given = json.loads(text)
    ev = parse_event(text)
    assert type(ev) is EVENTS[path.stem]
    encoded = event_to_json(ev)
    # The spec's event examples spell out every field, so nothing may be added or lost.
    assert encoded == given
    head = ["event", "trackId", "timestamp"] if "trackId" in given else ["event", "timestamp"]
    assert list(encoded)[: len(head)] == head
    assert parse_event(dumps_event(ev)) == ev


@pytest.mark.parametrize("path", fixture_paths("options"), ids=lambda p: p.stem)
def test_spec_option_examples_round_trip(path: Path) -> None:
    cls = OPTION_CLASSES[path.stem]
    given = json.loads(path.read_text())
    opt = parse_option(cls, given)
    assert type(opt) is cls
    encoded = option_to_json(opt)
    assert_covers(cls, given, encoded)
    assert parse_option(cls, encoded) == opt


def test_spec_example_values_land_in_the_right_attributes() -> None:
    invite = parse_command((FIXTURES / "commands" / "invite.json").read_text())
    assert isinstance(invite, Invite)
    opt = invite.option
    assert opt.denoise is True and opt.callee == "sip:alice@192.168.3.197:12345"
    assert opt.vad == VADOption(type="silero", silence_timeout=5000)
    assert opt.asr == TranscriptionOption(provider="tencent")
    assert opt.tts == SynthesisOption(provider="tencent", speaker="601003")
    assert opt.sip == SipOption()
    assert opt.codec == "pcmu" and opt.enable_ipv6 is False and opt.recorder is None

    ringing = parse_command((FIXTURES / "commands" / "ringing.json").read_text())
    assert ringing == Ringing(
        recorder=RecorderOption("/path/to/recording.wav", 16000, 200),
        early_media=True,
        ringtone="http://example.com/ringtone.wav",
    )
    refer = parse_command((FIXTURES / "commands" / "refer.json").read_text())
    assert refer == Refer(
        "sip:alice@example.com",
        "sip:charlie@example.com",
        ReferOption(denoise=True, timeout=30, moh="http://example.com/hold_music.wav", auto_hangup=True),
    )
    hangup = parse_event((FIXTURES / "events" / "hangup.json").read_text())
    assert isinstance(hangup, HangupEvent)
    assert hangup.from_ == Attendee("alice", "example.com", "sip:alice@example.com")
    assert hangup.to is None and hangup.answer_time == "2024-01-01T12:00:05Z"
    binary = parse_event((FIXTURES / "events" / "binary.json").read_text())
    assert binary == BinaryEvent(track_id="track-abc123", timestamp=1640995200000, data=b"")
    media = parse_option(MediaPassOption, json.loads((FIXTURES / "options" / "MediaPassOption.json").read_text()))
    assert media == MediaPassOption("ws://localhost:9090/media", 16000, 16000, 2560)


def test_rest_call_list_option_is_a_call_option() -> None:
    listing = json.loads((FIXTURES / "rest" / "call_lists.json").read_text())
    given = listing["calls"][0]["option"]
    opt = parse_call_option(given)
    assert (opt.caller, opt.callee) == ("1234567890", "0987654321")
    assert_covers(CallOption, given, option_to_json(opt))


# --- the spec's tables -------------------------------------------------------------------------


def spec_classes() -> list[tuple[str, type, list[dict]]]:
    out = []
    for name, rows in SPEC_TABLES["commands"].items():
        out.append((f"command {name}", COMMANDS[name], rows))
    for name, rows in SPEC_TABLES["events"].items():
        out.append((f"event {name}", EVENTS[name], rows))
    for name, rows in SPEC_TABLES["options"].items():
        out.append((f"option {name}", OPTION_CLASSES[name], rows))
    return out


def spec_default(text: str | None) -> Any:
    if text in (None, "-"):
        return None
    return json.loads(text)


def python_kind(cls: type, f: dataclasses.Field) -> Any:
    hint = typing.get_type_hints(cls)[f.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return typing.get_origin(hint) or hint


SPEC_TYPES = {"string": {str}, "number": {int, float}, "boolean": {bool}, "object": {dict}, "array": {bytes}}


@pytest.mark.parametrize("label,cls,rows", spec_classes(), ids=[c[0] for c in spec_classes()])
def test_fields_types_defaults_match_the_spec_table(label: str, cls: type, rows: list[dict]) -> None:
    fields = field_by_wire(cls)
    spec_rows = [r for r in rows if r["field"] not in ("command", "event")]
    assert set(fields) - {r["field"] for r in spec_rows} == EXTENSIONS.get(cls, set())
    for row in spec_rows:
        f = fields[row["field"]]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kind = python_kind(cls, f)
        expected_types = SPEC_TYPES.get(row["type"]) or {OPTION_CLASSES[row["type"]]}
        if f.metadata.get("duration"):
            # A duration string ("30s") on the wire, or a number of seconds; seconds inside.
            assert row["type"] == "string" and kind is float, row
            continue
        assert kind in expected_types, (row, kind)
        if row["required"] is not None:
            assert required == row["required"], row
            if not required:
                assert default_of(f) == spec_default(row["default"]), row
        else:
            # Event tables mark optional fields in the description; the rest are always sent.
            optional = "optional)" in row["description"]
            assert (not required and default_of(f) is None) == optional, row


def test_brief_defaults() -> None:
    assert (CallOption().codec, CallOption().denoise, CallOption().enable_ipv6) == ("pcmu", False, False)
    assert VADOption() == VADOption("silero", 16000, 250, 100, 0.5, 0.5, 50)
    assert (SynthesisOption().volume, SynthesisOption().speed, SynthesisOption().samplerate) == (5, 1.0, 16000)
    assert TranscriptionOption().start_when_answer is False
    assert RecorderOption("f.wav") == RecorderOption("f.wav", 16000, 200)


def test_registries_and_message_shapes() -> None:
    assert set(COMMANDS) == {
        "invite", "accept", "reject", "ringing", "tts", "play", "interrupt", "refer", "mute",
        "unmute", "hangup", "pause", "resume", "history", "custom", "bridge", "unbridge",
        "sendDtmf", "addIceCandidate",
    }
    assert set(EVENTS) == {
        "incoming", "answer", "reject", "ringing", "hangup", "speaking", "silence", "asrFinal",
        "asrDelta", "trackStart", "trackEnd", "interruption", "dtmf", "metrics", "error",
        "binary", "ping", "other", "addHistory", "custom", "inactivity", "hold",
        "transferRequest",
    }
    for cls in (*COMMANDS.values(), *EVENTS.values(), *OPTION_CLASSES.values()):
        assert cls.__dataclass_params__.frozen and hasattr(cls, "__slots__"), cls
    for cls in EVENTS.values():
        names = tuple(wire_fields(cls))
        head = ("trackId", "timestamp") if "trackId" in names else ("timestamp",)
        assert names[: len(head)] == head, cls
        assert cls.__name__.endswith("Event")
    with pytest.raises(dataclasses.FrozenInstanceError):
        Tts("x").text = "y"  # type: ignore[misc]


def test_extra_commands_of_the_original() -> None:
    cases = {
        '{"command":"pause"}': Pause(),
        '{"command":"resume"}': Resume(),
        '{"command":"history","speaker":"user","text":"hi"}': History("user", "hi"),
        '{"command":"custom","sender":"app","data":[1,{"a":null}]}': Custom("app", [1, {"a": None}]),
        '{"command":"custom"}': Custom(),
        '{"command":"bridge","targetSessionId":"s2"}': Bridge("s2"),
        '{"command":"unbridge"}': Unbridge(),
        '{"command":"unbridge","targetSessionId":"s2"}': Unbridge("s2"),
    }
    for text, expected in cases.items():
        assert parse_command(text) == expected
        assert command_to_json(expected) == json.loads(text)


def test_add_ice_candidate_in_the_browsers_shape() -> None:
    text = ('{"command":"addIceCandidate","candidate":"candidate:1 1 udp 2113937151 127.0.0.1 50000 typ host",'
            '"sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd"}')
    cmd = parse_command(text)
    assert cmd == api.AddIceCandidate("candidate:1 1 udp 2113937151 127.0.0.1 50000 typ host", "0", 0)
    assert cmd.mline_index == 0 and not cmd.end_of_candidates
    assert isinstance(cmd, api.LEG_COMMANDS)
    # the other spelling of the index, and the end of candidates (empty or no candidate)
    other = parse_command('{"command":"addIceCandidate","candidate":"","sdpMlineIndex":1}')
    assert other.mline_index == 1 and other.sdp_mid is None and other.end_of_candidates
    assert parse_command('{"command":"addIceCandidate"}').end_of_candidates
    assert command_to_json(cmd) == {"command": "addIceCandidate", "candidate": cmd.candidate, "sdpMid": "0",
                                    "sdpMLineIndex": 0}
    with pytest.raises(ApiError, match=r"addIceCandidate: sdpMLineIndex: expected integer from 0 to 65535, got -1"):
        parse_command('{"command":"addIceCandidate","candidate":"x","sdpMLineIndex":-1}')
    with pytest.raises(ApiError, match=r"addIceCandidate: candidate: expected string, got integer"):
        parse_command('{"command":"addIceCandidate","candidate":5}')


def test_extra_events_of_the_original() -> None:
    cases = [
        (AddHistoryEvent(timestamp=5, speaker="bot", text="hello"),
         {"event": "addHistory", "timestamp": 5, "speaker": "bot", "text": "hello"}),
        (CustomEvent(timestamp=5, sender="app", data={"k": [1, 2]}),
         {"event": "custom", "timestamp": 5, "sender": "app", "data": {"k": [1, 2]}}),
        (InactivityEvent(track_id="t1", timestamp=5),
         {"event": "inactivity", "trackId": "t1", "timestamp": 5}),
    ]
    for ev, wire in cases:
        assert event_to_json(ev) == wire
        assert parse_event(json.dumps(wire)) == ev


# --- encoding ------------------------------------------------------------------------------------


def test_encode_omits_none_and_keeps_defaults() -> None:
    assert command_to_json(Tts("hi")) == {
        "command": "tts", "text": "hi", "autoHangup": False, "streaming": False,
        "endOfStream": False, "base64": False,
    }
    assert command_to_json(Hangup()) == {"command": "hangup"}
    assert command_to_json(Mute("t1")) == {"command": "mute", "trackId": "t1"}
    assert command_to_json(Unmute()) == {"command": "unmute"}
    assert command_to_json(Interrupt()) == {"command": "interrupt", "graceful": False}
    assert command_to_json(Play("u", wait_input_timeout=3)) == {
        "command": "play", "url": "u", "autoHangup": False, "waitInputTimeout": 3,
    }
    assert command_to_json(Reject("Busy Here", 486)) == {"command": "reject", "reason": "Busy Here", "code": 486}
    assert option_to_json(CallOption(media_pass=MediaPassOption("ws://x", 8000, 16000))) == {
        "denoise": False, "codec": "pcmu", "enableIpv6": False,
        "mediaPass": {"url": "ws://x", "inputSampleRate": 8000, "outputSampleRate": 16000, "packetSize": 2560},
    }


def test_dumps_event_is_compact_and_ordered() -> None:
    ev = DtmfEvent(track_id="t1", timestamp=1640995200000, digit="#")
    assert dumps_event(ev) == '{"event":"dtmf","trackId":"t1","timestamp":1640995200000,"digit":"#"}'
    hangup = HangupEvent(
        track_id="t1", timestamp=9, start_time="2024-01-01T12:00:00Z", hangup_time="2024-01-01T12:05:30Z",
        reason="byBye", to=Attendee("bob", "example.com", "sip:bob@example.com"), extra={"k": "v"},
    )
    assert json.loads(dumps_event(hangup)) == {
        "event": "hangup", "trackId": "t1", "timestamp": 9, "startTime": "2024-01-01T12:00:00Z",
        "hangupTime": "2024-01-01T12:05:30Z", "reason": "byBye",
        "to": {"username": "bob", "realm": "example.com", "source": "sip:bob@example.com"},
        "extra": {"k": "v"},
    }
    assert "你好" in dumps_event(api.AsrFinalEvent(track_id="t", timestamp=1, index=0, text="你好"))


def test_binary_event_bytes_are_an_array_on_the_wire() -> None:
    ev = BinaryEvent(track_id="t", timestamp=3, data=b"\x00\x7f\xff")
    assert event_to_json(ev)["data"] == [0, 127, 255]
    assert parse_event(dumps_event(ev)) == ev


def test_non_finite_numbers_are_never_sent() -> None:
    with pytest.raises(ValueError):
        dumps_event(MetricsEvent(timestamp=1, key="k", duration=1, data={"x": math.nan}))


def test_encoders_refuse_foreign_objects() -> None:
    with pytest.raises(TypeError):
        command_to_json(DtmfEvent(track_id="t", timestamp=1, digit="1"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        event_to_json(Tts("x"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        option_to_json(Tts("x"))
    with pytest.raises(TypeError):
        parse_option(Tts, {})


def test_call_option_audio_samplerate() -> None:
    assert CallOption().audio_samplerate == 8000
    assert CallOption(codec="pcma").audio_samplerate == 8000
    assert CallOption(codec="g722").audio_samplerate == 16000
    assert CallOption(codec="pcm").audio_samplerate == 16000
    assert CallOption(codec="pcm", samplerate=24000).audio_samplerate == 24000
    assert parse_call_option({"codec": "PCM", "samplerate": 8000}).audio_samplerate == 8000


def test_options_remember_which_fields_the_wire_gave() -> None:
    opt = parse_call_option({"codec": "pcma", "tts": {"speaker": "x"}, "vad": {}})
    assert opt.fields_set == {"codec", "tts", "vad"}
    assert opt.tts.fields_set == {"speaker"} and opt.vad.fields_set == frozenset()
    # Presence is bookkeeping: neither on the wire nor part of equality.
    assert "fieldsSet" not in option_to_json(opt) and "fields_set" not in option_to_json(opt)
    assert opt == CallOption(codec="pcma", tts=SynthesisOption(speaker="x"), vad=VADOption())


def test_merge_options_lays_given_fields_over_the_base() -> None:
    call = parse_call_option(
        {"tts": {"provider": "tencent", "speaker": "601003", "samplerate": 8000, "volume": 7}}
    ).tts
    tts = parse_command('{"command":"tts","text":"hi","option":{"speaker":"xiaoyan","speed":1.5}}')
    merged = merge_options(call, tts.option)
    assert merged == SynthesisOption(provider="tencent", speaker="xiaoyan", samplerate=8000, volume=7, speed=1.5)
    assert merged.fields_set == {"provider", "speaker", "samplerate", "volume", "speed"}
    assert merge_options(None, tts.option) is tts.option and merge_options(call, None) is call
    # Nested options merge field by field.
    base = parse_refer_option({"asr": {"provider": "aliyun", "language": "zh-CN"}, "timeout": 30})
    over = parse_refer_option({"asr": {"language": "en-US"}, "autoHangup": True})
    assert merge_options(base, over) == ReferOption(
        timeout=30, auto_hangup=True, asr=TranscriptionOption(provider="aliyun", language="en-US")
    )
    # Built in code, an option gave nothing on the wire, so it overrides nothing.
    assert merge_options(call, SynthesisOption(speaker="other")) == call
    with pytest.raises(TypeError):
        merge_options(call, VADOption())


# --- decoding rules ------------------------------------------------------------------------------


def test_unknown_fields_are_ignored_and_not_kept() -> None:
    cmd = parse_command(
        '{"command":"tts","text":"hi","cacheKey":"k","option":{"provider":"p","pitch":3}}'
    )
    assert cmd == Tts("hi", option=SynthesisOption(provider="p"))
    encoded = command_to_json(cmd)
    assert "cacheKey" not in encoded and "pitch" not in encoded["option"]
    assert not any(hasattr(cmd, name) for name in ("cacheKey", "cache_key", "__dict__"))


def test_null_means_absent_for_optional_fields() -> None:
    assert parse_command('{"command":"tts","text":"a","autoHangup":null,"speaker":null}') == Tts("a")
    assert parse_command('{"command":"ringing","recorder":null,"earlyMedia":null}') == Ringing()


def test_number_rules() -> None:
    # A number field keeps the number as given, and encodes back the same.
    opt = parse_call_option({"vad": {"ratio": 1, "voiceThreshold": 0.25}, "tts": {"speed": 2}})
    assert (opt.vad.ratio, opt.vad.voice_threshold, opt.tts.speed) == (1, 0.25, 2)
    assert option_to_json(opt)["vad"]["voiceThreshold"] == 0.25
    tts = parse_command('{"command":"tts","text":"a","waitInputTimeout":1.5}')
    assert tts.wait_input_timeout == 1.5
    # A whole-unit field (Hz) takes an integral float as int, and rounds a fraction.
    assert parse_call_option({"vad": {"samplerate": 16000.0}}).vad.samplerate == 16000
    assert type(parse_call_option({"vad": {"samplerate": 7999.5}}).vad.samplerate) is int


def test_codec_is_case_insensitive_and_stored_lower_case() -> None:
    assert parse_call_option({"codec": "G722"}).codec == "g722"


ERROR_CASES: list[tuple[str | bytes, str, str | None, str]] = [
    # (input, message, field, reason)
    ("{", "invalid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)", None,
     "invalid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ("", "invalid JSON: Expecting value: line 1 column 1 (char 0)", None,
     "invalid JSON: Expecting value: line 1 column 1 (char 0)"),
    (b'{"command":"\xff"}', "invalid JSON: not UTF-8 (invalid start byte at byte 12)", None,
     "invalid JSON: not UTF-8 (invalid start byte at byte 12)"),
    ('{"command":"tts","text":NaN}', "invalid JSON: NaN is not allowed", None, "invalid JSON: NaN is not allowed"),
    ('[-Infinity]', "invalid JSON: -Infinity is not allowed", None, "invalid JSON: -Infinity is not allowed"),
    ('{"x":1e400}', "invalid JSON: number 1e400 is out of range", None, "invalid JSON: number 1e400 is out of range"),
    ('{"x":' + "9" * 5000 + "}", "invalid JSON: integer literal too long", None,
     "invalid JSON: integer literal too long"),
    ("[" * 100_000, "invalid JSON: nested too deeply", None, "invalid JSON: nested too deeply"),
    ('{"command":"tts","text":"\\udc00"}', "invalid JSON: lone surrogate \\udc00 in a string", None,
     "invalid JSON: lone surrogate \\udc00 in a string"),
    ('{"command":"tts","text":"\ud800"}', "invalid JSON: lone surrogate \\ud800 in the text", None,
     "invalid JSON: lone surrogate \\ud800 in the text"),
    ("[]", "expected a JSON object, got array", None, "expected a JSON object, got array"),
    ('"tts"', "expected a JSON object, got string", None, "expected a JSON object, got string"),
    ("null", "expected a JSON object, got null", None, "expected a JSON object, got null"),
    ('{"text":"hi"}', "missing required field 'command'", "command", "missing required field 'command'"),
    ('{"command":7}', "command: expected string, got integer", "command", "expected string, got integer"),
    ('{"command":"dial"}',
     "unknown command 'dial'; known commands: accept, addIceCandidate, bridge, custom, hangup, history, "
     "interrupt, invite, mute, pause, play, refer, reject, resume, ringing, sendDtmf, tts, unbridge, unmute", "command",
     "unknown command 'dial'; known commands: accept, addIceCandidate, bridge, custom, hangup, history, "
     "interrupt, invite, mute, pause, play, refer, reject, resume, ringing, sendDtmf, tts, unbridge, unmute"),
    ('{"command":"tts"}', "tts: missing required field 'text'", "text", "missing required field 'text'"),
    ('{"command":"invite"}', "invite: missing required field 'option'", "option", "missing required field 'option'"),
    ('{"command":"refer","caller":"a"}', "refer: missing required field 'callee'", "callee",
     "missing required field 'callee'"),
    ('{"command":"invite","option":{"recorder":{"samplerate":8000}}}',
     "invite: option.recorder: missing required field 'recorderFile'", "option.recorder.recorderFile",
     "missing required field 'recorderFile'"),
    ('{"command":"accept","option":{"mediaPass":{"url":"ws://m","inputSampleRate":8000}}}',
     "accept: option.mediaPass: missing required field 'outputSampleRate'", "option.mediaPass.outputSampleRate",
     "missing required field 'outputSampleRate'"),
    ('{"command":"tts","text":null}', "tts: text: expected string, got null", "text", "expected string, got null"),
    ('{"command":"tts","text":5}', "tts: text: expected string, got integer", "text", "expected string, got integer"),
    ('{"command":"invite","option":{"vad":{"samplerate":"16000"}}}',
     "invite: option.vad.samplerate: expected number, got string", "option.vad.samplerate",
     "expected number, got string"),
    ('{"command":"invite","option":{"vad":{"samplerate":true}}}',
     "invite: option.vad.samplerate: expected number, got boolean", "option.vad.samplerate",
     "expected number, got boolean"),
    ('{"command":"invite","option":{"vad":{"ratio":false}}}',
     "invite: option.vad.ratio: expected number, got boolean", "option.vad.ratio", "expected number, got boolean"),
    ('{"command":"tts","text":"a","waitInputTimeout":"1.5"}',
     "tts: waitInputTimeout: expected number, got string", "waitInputTimeout", "expected number, got string"),
    ('{"command":"tts","text":"a","waitInputTimeout":-1}',
     "tts: waitInputTimeout: expected number from 0 to 86400 (s), got -1", "waitInputTimeout",
     "expected number from 0 to 86400 (s), got -1"),
    ('{"command":"play","url":"a","waitInputTimeout":1e19}',
     "play: waitInputTimeout: expected number from 0 to 86400 (s), got 1e+19",
     "waitInputTimeout", "expected number from 0 to 86400 (s), got 1e+19"),
    ('{"command":"reject","reason":"x","code":486.5}', "reject: code: expected integer, got number 486.5", "code",
     "expected integer, got number 486.5"),
    ('{"command":"tts","text":"a","autoHangup":"yes"}', "tts: autoHangup: expected boolean, got string",
     "autoHangup", "expected boolean, got string"),
    ('{"command":"tts","text":"a","autoHangup":1}', "tts: autoHangup: expected boolean, got integer",
     "autoHangup", "expected boolean, got integer"),
    ('{"command":"tts","text":"a","option":[]}', "tts: option: expected object, got array", "option",
     "expected object, got array"),
    ('{"command":"reject","reason":"ok","code":200}', "reject: code: expected integer from 300 to 699, got 200",
     "code", "expected integer from 300 to 699, got 200"),
    ('{"command":"reject","reason":"x","code":700}', "reject: code: expected integer from 300 to 699, got 700",
     "code", "expected integer from 300 to 699, got 700"),
    ('{"command":"ringing","recorder":{"recorderFile":"f","ptime":0}}',
     "ringing: recorder.ptime: expected number from 20 to 500 (ms), got 0", "recorder.ptime",
     "expected number from 20 to 500 (ms), got 0"),
    ('{"command":"ringing","recorder":{"recorderFile":"f","ptime":19.4}}',
     "ringing: recorder.ptime: expected number from 20 to 500 (ms), got 19.4 (rounds to 19)", "recorder.ptime",
     "expected number from 20 to 500 (ms), got 19.4 (rounds to 19)"),
    ('{"command":"invite","option":{"codec":"opus"}}',
     "invite: option.codec: expected one of 'pcmu', 'pcma', 'g722', 'pcm', got 'opus'", "option.codec",
     "expected one of 'pcmu', 'pcma', 'g722', 'pcm', got 'opus'"),
    ('{"command":"invite","option":{"sip":{"headers":{"X-Tenant":7}}}}',
     "invite: option.sip.headers.X-Tenant: expected string, got integer", "option.sip.headers.X-Tenant",
     "expected string, got integer"),
    ('{"command":"invite","option":{"extra":"k=v"}}', "invite: option.extra: expected object, got string",
     "option.extra", "expected object, got string"),
    ('{"command":"refer","caller":"a","callee":"b","options":{"asr":{"bufferSize":"big"}}}',
     "refer: options.asr.bufferSize: expected number, got string", "options.asr.bufferSize",
     "expected number, got string"),
    ('{"command":"bridge","targetSessionId":["s"]}', "bridge: targetSessionId: expected string, got array",
     "targetSessionId", "expected string, got array"),
]


@pytest.mark.parametrize("text,message,field,reason", ERROR_CASES, ids=range(len(ERROR_CASES)))
def test_command_errors_are_precise(text: str | bytes, message: str, field: str | None, reason: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_command(text)
    err = info.value
    assert (str(err), err.message, err.field, err.reason, err.status) == (message, message, field, reason, 400)
    assert isinstance(err, ProtocolError)


def test_event_errors_are_precise() -> None:
    cases = [
        ('{"timestamp":1}', "missing required field 'event'", "event"),
        ('{"event":"beep","timestamp":1}',
         "unknown event 'beep'; known events: addHistory, answer, asrDelta, asrFinal, binary, custom, dtmf, "
         "error, hangup, hold, inactivity, incoming, interruption, metrics, other, ping, reject, ringing, silence, "
         "speaking, trackEnd, trackStart, transferRequest", "event"),
        ('{"event":"dtmf","trackId":"t","digit":"1"}', "dtmf: missing required field 'timestamp'", "timestamp"),
        ('{"event":"binary","trackId":"t","timestamp":1,"data":[1,2,256]}',
         "binary: data[2]: expected byte 0-255, got integer 256", "data[2]"),
        ('{"event":"binary","trackId":"t","timestamp":1,"data":[true]}',
         "binary: data[0]: expected byte 0-255, got boolean True", "data[0]"),
        ('{"event":"binary","trackId":"t","timestamp":1,"data":"AAE="}',
         "binary: data: expected array, got string", "data"),
        ('{"event":"hangup","trackId":"t","timestamp":1,"startTime":"a","hangupTime":"b","from":{"username":"u"}}',
         "hangup: from: missing required field 'realm'", "from.realm"),
    ]
    for text, message, field in cases:
        with pytest.raises(ApiError) as info:
            parse_event(text)
        assert (str(info.value), info.value.field) == (message, field)


def test_option_errors_have_paths_relative_to_the_option() -> None:
    with pytest.raises(ApiError) as info:
        parse_call_option({"vad": {"samplerate": "x"}})
    assert (str(info.value), info.value.field) == ("vad.samplerate: expected number, got string", "vad.samplerate")
    with pytest.raises(ApiError) as info:
        parse_option(RecorderOption, {})
    assert (str(info.value), info.value.field) == ("missing required field 'recorderFile'", "recorderFile")
    with pytest.raises(ApiError) as info:
        parse_refer_option([])
    assert (str(info.value), info.value.field) == ("expected object, got array", None)


def test_decoded_values_are_accepted_without_text() -> None:
    assert command_from_json({"command": "accept", "option": {}}) == Accept(CallOption())
    assert event_from_json({"event": "ping", "timestamp": 3}) == api.PingEvent(timestamp=3)
    assert parse_command(b'{"command":"pause"}') == Pause()


# --- hostile input -------------------------------------------------------------------------------

# Lone surrogates are legal in JSON text but not Unicode: they must be refused, not echoed.
CHARS = st.characters(exclude_categories=()) | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF,
                                                            exclude_categories=())
TEXT = st.text(CHARS, max_size=8) | st.text(max_size=8)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=16,
)


def plausible(draw: st.DrawFn, cls: type, depth: int = 0) -> dict:
    """A JSON object for ``cls`` whose fields are mostly well-typed, sometimes absent, sometimes junk."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for wire, f in field_by_wire(cls).items():
        choice = draw(st.integers(0, 19))
        if choice < 4:
            continue
        if choice == 4:
            out[wire] = draw(JSON_VALUES)
            continue
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        kind = hint if typing.get_origin(hint) is dict or not args else args[0]
        if kind in OPTION_CLASSES.values():
            out[wire] = plausible(draw, kind, depth + 1) if depth < 3 else {}
        elif kind is str:
            out[wire] = draw(st.sampled_from(["pcmu", "G722", "opus"]) | TEXT)
        elif kind is bool:
            out[wire] = draw(st.booleans())
        elif kind is int:
            out[wire] = draw(
                st.integers(0, 70000) | st.integers(-2, 2**64) | st.sampled_from([8000.0, 0.5, 300, 486, 700])
            )
        elif kind is float:
            out[wire] = draw(st.floats(allow_nan=False, allow_infinity=False) | st.integers())
        elif kind is bytes:
            out[wire] = draw(st.lists(st.integers(-1, 256), max_size=4))
        elif typing.get_origin(kind) is dict:
            out[wire] = draw(st.dictionaries(TEXT, TEXT | JSON_VALUES, max_size=3))
        else:
            out[wire] = draw(JSON_VALUES)
    if draw(st.booleans()):
        out[draw(TEXT)] = draw(JSON_VALUES)
    return out


@st.composite
def command_objects(draw: st.DrawFn) -> Any:
    name = draw(st.sampled_from(sorted(COMMANDS)))
    return {"command": name, **plausible(draw, COMMANDS[name])}


@st.composite
def event_objects(draw: st.DrawFn) -> Any:
    name = draw(st.sampled_from(sorted(EVENTS)))
    return {"event": name, **plausible(draw, EVENTS[name])}


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(JSON_VALUES | st.dictionaries(st.just("command"), JSON_VALUES) | command_objects())
def test_arbitrary_json_values_raise_only_api_error(value: Any) -> None:
    text = json.dumps(value)
    try:
        cmd = parse_command(text)
    except ApiError:
        return
    # Whatever is accepted re-encodes to valid UTF-8 JSON and parses back to the same command.
    again = dumps_command(cmd)
    again.encode("utf-8")
    assert parse_command(again) == cmd


@FUZZ
@given(st.text(CHARS, max_size=64) | st.binary(max_size=64))
def test_arbitrary_text_and_bytes_raise_only_api_error(data: str | bytes) -> None:
    try:
        parse_command(data)
    except ApiError:
        pass


@FUZZ
@given(event_objects())
def test_events_raise_only_api_error_and_round_trip(value: Any) -> None:
    try:
        ev = parse_event(json.dumps(value))
    except ApiError:
        return
    assert parse_event(dumps_event(ev)) == ev


def test_api_module_is_pure() -> None:
    code = "import sys, protocol.api; print(sorted({'asyncio', 'socket'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         cwd=Path(__file__).resolve().parents[2], check=True)
    assert out.stdout.strip() == "[]"
