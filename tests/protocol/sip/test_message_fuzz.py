"""Property: mutated real messages give a message or a ProtocolError — never another exception,
never a slow parse — and whatever parses serialises to something that parses back equal."""

from __future__ import annotations

import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import ProtocolError
from protocol.sip import StreamParser, parse_message
from protocol.sip.message import MAX_MESSAGE_SIZE

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sip"
SEEDS = [
    p.read_bytes()
    for p in sorted(FIXTURES.glob("rfc4475/*.dat")) + sorted(FIXTURES.glob("captures/*/*.sip"))
]
# CPU seconds per parse of an input of at most 64 KiB: process time, so that other processes
# sharing the machine do not count against the parser.
PARSE_BUDGET = 0.050
RUN_BYTES = b' ";,<>:%\\@[]\t'


def _flip(data: bytes, pos: int, value: int) -> bytes:
    if not data:
        return data
    i = pos % len(data)
    return data[:i] + bytes([value]) + data[i + 1 :]


def _truncate(data: bytes, pos: int, _: int) -> bytes:
    return data[: pos % (len(data) + 1)]


def _insert(data: bytes, pos: int, value: int) -> bytes:
    i = pos % (len(data) + 1)
    return data[:i] + bytes([value]) * (1 + value % 4) + data[i:]


def _delete(data: bytes, pos: int, value: int) -> bytes:
    i = pos % (len(data) + 1)
    return data[:i] + data[i + 1 + value % 8 :]


def _duplicate_line(data: bytes, pos: int, value: int) -> bytes:
    lines = data.split(b"\r\n")
    i = pos % len(lines)
    return b"\r\n".join(lines[: i + 1] + [lines[i]] * (1 + value % 3) + lines[i + 1 :])


def _drop_line(data: bytes, pos: int, _: int) -> bytes:
    lines = data.split(b"\r\n")
    del lines[pos % len(lines)]
    return b"\r\n".join(lines)


def _swap_lines(data: bytes, pos: int, value: int) -> bytes:
    lines = data.split(b"\r\n")
    i, j = pos % len(lines), value % len(lines)
    lines[i], lines[j] = lines[j], lines[i]
    return b"\r\n".join(lines)


def _blow_up_line(data: bytes, pos: int, value: int) -> bytes:
    """Repeat one line until the datagram nears the size limit: the worst case for time."""
    lines = data.split(b"\r\n")
    i = pos % len(lines)
    count = max(1, (MAX_MESSAGE_SIZE - len(data) - value) // (len(lines[i]) + 2))
    return b"\r\n".join(lines[: i + 1] + [lines[i]] * count + lines[i + 1 :])[:MAX_MESSAGE_SIZE]


def _grow_line(data: bytes, pos: int, value: int) -> bytes:
    """Lengthen one line with a run of a single byte (quotes, separators, spaces...)."""
    i = pos % (len(data) + 1)
    run = RUN_BYTES[value % len(RUN_BYTES) : value % len(RUN_BYTES) + 1] * (value * 40)
    return (data[:i] + run + data[i:])[:MAX_MESSAGE_SIZE]


MUTATIONS = [_flip, _truncate, _insert, _delete, _duplicate_line, _drop_line, _swap_lines, _blow_up_line, _grow_line]

mutation = st.tuples(
    st.sampled_from(MUTATIONS),
    st.integers(min_value=0, max_value=1 << 20),
    st.integers(min_value=0, max_value=255),
)


def _parse_timed(data: bytes):
    start = time.process_time()
    try:
        result = parse_message(data)
    except ProtocolError as e:
        result = e
    elapsed = time.process_time() - start
    assert elapsed < PARSE_BUDGET, f"parse of {len(data)} bytes took {elapsed * 1000:.1f} ms"
    return result


@settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(seed=st.sampled_from(SEEDS), mutations=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_messages_parse_or_raise_protocol_error(seed, mutations):
    data = seed
    for apply, pos, value in mutations:
        data = apply(data, pos, value)
    assert len(data) <= MAX_MESSAGE_SIZE + 8 * 64
    result = _parse_timed(data)
    if isinstance(result, ProtocolError):
        assert isinstance(result.status, int) and 400 <= result.status < 600 and result.message
        return
    again = _parse_timed(bytes(result))
    assert again == result
    # Every typed view either answers or raises ProtocolError.
    for view in ("via", "from_", "to", "call_id", "cseq", "contact", "route", "record_route",
                 "max_forwards", "content_type", "content_length"):
        try:
            getattr(result, view)
        except ProtocolError:
            pass


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    seeds=st.lists(st.sampled_from(SEEDS), min_size=1, max_size=3),
    mutations=st.lists(mutation, max_size=2),
    cut=st.integers(min_value=1, max_value=700),
)
def test_mutated_streams_frame_or_raise_protocol_error(seeds, mutations, cut):
    stream = b"\r\n\r\n".join(seeds)
    for apply, pos, value in mutations:
        stream = apply(stream, pos, value)
    parser = StreamParser()
    start = time.process_time()
    try:
        for i in range(0, len(stream), cut):
            for message in parser.feed(stream[i : i + cut]):
                assert parse_message(bytes(message)) == message
    except ProtocolError:
        pass
    for error in parser.take_errors():
        assert isinstance(error, ProtocolError)
    assert time.process_time() - start < PARSE_BUDGET * (1 + len(stream) // 4096)
