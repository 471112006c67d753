import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.jitter import Gap, JitterBuffer
from protocol.rtp import RtpPacket

TICK = 0.02
SPF = 160


def packet(n: int, *, ssrc: int = 1, seq0: int = 1000, ts0: int = 5000) -> RtpPacket:
    """The n-th 20 ms PCMU packet of a stream; the payload names it."""
    return RtpPacket(0, (seq0 + n) & 0xFFFF, (ts0 + SPF * n) & 0xFFFFFFFF, ssrc, f"p{n}".encode())


def run(buffer: JitterBuffer, arrivals: list[tuple[float, RtpPacket]], ticks: int) -> list:
    """Push each packet at its arrival time and pop once per tick (every 20 ms from t=0)."""
    pending = sorted(arrivals, key=lambda a: a[0])
    out = []
    for k in range(ticks):
        now = k * TICK
        while pending and pending[0][0] <= now + 1e-9:
            at, p = pending.pop(0)
            buffer.push(p, at)
        result = buffer.pop(now)
        out.append(result.decode() if isinstance(result, bytes) else result)
    return out


def steady(n: int, **kw) -> list[tuple[float, RtpPacket]]:
    return [(i * TICK + 0.001, packet(i, **kw)) for i in range(n)]


def test_in_order_stream_plays_after_the_target_delay():
    buffer = JitterBuffer(8000, 20, target_delay_ms=60)
    out = run(buffer, steady(5), ticks=10)
    assert out == [None, None, None, "p0", "p1", "p2", "p3", "p4", Gap(5000 + 5 * SPF), Gap(5000 + 6 * SPF)]
    stats = buffer.stats()
    assert (stats.received, stats.played, stats.gaps, stats.late, stats.duplicates) == (5, 5, 2, 0, 0)


def test_nothing_before_the_first_packet():
    buffer = JitterBuffer(8000)
    assert [buffer.pop(t * TICK) for t in range(5)] == [None] * 5


def test_reordered_packets_are_put_back_in_order():
    arrivals = [(0.001, packet(0)), (0.021, packet(2)), (0.025, packet(1)), (0.061, packet(4)), (0.062, packet(3))]
    out = run(JitterBuffer(8000, 20, 60), arrivals, ticks=8)
    assert out[3:8] == ["p0", "p1", "p2", "p3", "p4"]


def test_missing_packet_becomes_a_gap():
    arrivals = [a for a in steady(5) if a[1].sequence_number != 1002]
    buffer = JitterBuffer(8000, 20, 60)
    out = run(buffer, arrivals, ticks=8)
    assert out[3:8] == ["p0", "p1", Gap(5000 + 2 * SPF), "p3", "p4"]
    assert buffer.stats().gaps == 1


def test_late_packets_are_dropped_and_counted():
    # After a 150 ms stall, packets 1-4 arrive past their playout time; 5 is still in time.
    arrivals = [(0.001, packet(0))] + [(0.15, packet(i)) for i in range(1, 6)]
    buffer = JitterBuffer(8000, 20, 60)
    out = run(buffer, arrivals, ticks=9)
    assert out[3:9] == ["p0", Gap(5160), Gap(5320), Gap(5480), Gap(5640), "p5"]
    stats = buffer.stats()
    assert (stats.late, stats.played, stats.gaps) == (4, 2, 4)
    assert buffer.push(packet(2), now=0.2) is False
    assert buffer.stats().late == 5


def test_duplicates_are_dropped_and_counted():
    buffer = JitterBuffer(8000, 20, 60)
    assert buffer.push(packet(0), 0.0) is True
    assert buffer.push(packet(1), 0.01) is True
    assert buffer.push(packet(1), 0.012) is False
    assert buffer.pop(0.06) == b"p0"
    # A copy of a packet already played is a duplicate too, not a late packet.
    assert buffer.push(packet(0), 0.07) is False
    stats = buffer.stats()
    assert (stats.duplicates, stats.late, stats.depth) == (2, 0, 1)


def test_sequence_and_timestamp_wrap():
    arrivals = steady(6, seq0=65533, ts0=2**32 - 2 * SPF)
    out = run(JitterBuffer(8000, 20, 40), arrivals, ticks=8)
    assert out[2:8] == ["p0", "p1", "p2", "p3", "p4", "p5"]


def test_ssrc_change_resets_the_buffer():
    buffer = JitterBuffer(8000, 20, 60)
    first = steady(6, ssrc=1)
    # A new source (e.g. after a transfer) with unrelated numbering, from t=0.101.
    second = [(0.101 + i * TICK, packet(i, ssrc=2, seq0=7, ts0=999_999)) for i in range(4)]
    out = run(buffer, first + second, ticks=14)
    # The first source plays until the second arrives; its buffered rest (p3-p5) is dropped and the
    # new source plays after the target delay.
    assert out[3:6] == ["p0", "p1", "p2"]
    assert out[6:9] == [Gap(999_999 - 3 * SPF), Gap(999_999 - 2 * SPF), Gap(999_999 - SPF)]
    assert out[9:13] == ["p0", "p1", "p2", "p3"]
    stats = buffer.stats()
    assert (stats.ssrc_changes, stats.skipped, stats.resyncs) == (1, 3, 0)


def test_silence_suppression_keeps_timing():
    # Talkspurt, 200 ms with no packets, then a talkspurt whose timestamps kept real time.
    arrivals = steady(3) + [(0.26 + i * TICK + 0.001, packet(13 + i)) for i in range(3)]
    buffer = JitterBuffer(8000, 20, 60)
    out = run(buffer, arrivals, ticks=20)
    assert out[3:6] == ["p0", "p1", "p2"]
    assert all(isinstance(x, Gap) for x in out[6:16])
    assert out[16:19] == ["p13", "p14", "p15"]
    assert buffer.stats().resyncs == 0


def test_timestamp_jump_resyncs():
    # The sender restarts its timestamps (same SSRC): far behind the playout point.
    arrivals = steady(4) + [(0.141 + i * TICK, packet(i, ts0=10)) for i in range(4)]
    buffer = JitterBuffer(8000, 20, 60)
    out = run(buffer, arrivals, ticks=15)
    assert out[3:7] == ["p0", "p1", "p2", "p3"]
    assert out[7] == Gap(5000 + 4 * SPF)
    assert out[8:11] == [Gap((10 - 3 * SPF) % 2**32), Gap((10 - 2 * SPF) % 2**32), Gap((10 - SPF) % 2**32)]
    assert out[11:15] == ["p0", "p1", "p2", "p3"]
    assert buffer.stats().resyncs == 1


def test_timestamp_jump_forward_resyncs():
    arrivals = steady(2) + [(0.101 + i * TICK, packet(1000 + i)) for i in range(3)]
    buffer = JitterBuffer(8000, 20, 60)
    out = run(buffer, arrivals, ticks=12)
    assert out[3:6] == ["p0", "p1", Gap(5000 + 2 * SPF)]
    assert out[6:9] == [Gap(5000 + 997 * SPF), Gap(5000 + 998 * SPF), Gap(5000 + 999 * SPF)]
    assert out[9:12] == ["p1000", "p1001", "p1002"]
    assert buffer.stats().resyncs == 1


def test_fast_sender_is_trimmed_back_to_the_target():
    # The sender's clock runs 5 % fast: the buffer fills until it passes max_delay, then skips.
    buffer = JitterBuffer(8000, 20, target_delay_ms=60, max_delay_ms=200)
    arrivals = [(i * 0.019, packet(i)) for i in range(400)]
    out = run(buffer, arrivals, ticks=400)
    played = [int(x[1:]) for x in out if isinstance(x, str)]
    assert played == sorted(played)
    stats = buffer.stats()
    assert stats.resyncs >= 1 and stats.skipped >= 1
    assert stats.depth <= 10
    assert stats.played + stats.skipped + stats.depth == 400


def test_burst_before_playout_is_trimmed():
    buffer = JitterBuffer(8000, 20, target_delay_ms=40, max_delay_ms=100)
    for i in range(20):
        buffer.push(packet(i), 0.0)
    stats = buffer.stats()
    assert (stats.depth, stats.skipped, stats.delay_ms) == (5, 15, 100.0)
    assert [buffer.pop(0.04 + k * TICK) for k in range(5)] == [b"p15", b"p16", b"p17", b"p18", b"p19"]


def test_not_time_yet_and_a_caller_far_behind():
    buffer = JitterBuffer(8000, 20, 60)
    buffer.push(packet(0), 0.0)
    buffer.push(packet(1), 0.02)
    assert buffer.pop(0.049) is None
    assert buffer.pop(0.06) == b"p0"
    assert buffer.pop(0.061) is None  # twice in one tick
    assert buffer.pop(0.08) == b"p1"
    assert isinstance(buffer.pop(5.0), Gap)  # a stalled caller restarts the cadence
    assert buffer.pop(5.001) is None
    assert isinstance(buffer.pop(5.02), Gap)


def test_stats_depth_and_delay():
    buffer = JitterBuffer(8000, 20, 60)
    for i in range(3):
        buffer.push(packet(i), i * TICK)
    stats = buffer.stats()
    assert (stats.depth, stats.delay_ms) == (3, 60.0)
    buffer.pop(0.06)
    assert (buffer.stats().depth, buffer.stats().delay_ms) == (2, 40.0)


def test_reset_forgets_the_stream():
    buffer = JitterBuffer(16000, 20, 40)
    assert buffer.samples_per_frame == 320
    buffer.push(RtpPacket(9, 1, 320, 5, b"a"), 0.0)
    buffer.reset()
    assert buffer.pop(1.0) is None
    assert buffer.stats().depth == 0


def test_bad_configuration():
    with pytest.raises(ValueError):
        JitterBuffer(8000, 0)
    with pytest.raises(ValueError):
        JitterBuffer(0, 20)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(-3, 40),  # frame index (negative: before the first; jumps: far ones below)
            st.floats(0, 0.3),  # network delay
            st.sampled_from([1, 1, 1, 2]),  # SSRC
        ),
        max_size=60,
    ),
    st.sampled_from([0, 1000, 2**32 - 5 * SPF]),
)
def test_any_arrival_pattern_keeps_the_books(frames, ts0):
    buffer = JitterBuffer(8000, 20, 60, max_delay_ms=200)
    arrivals = [(i * TICK + delay, packet(i if i < 35 else i * 50, ssrc=ssrc, ts0=ts0)) for i, delay, ssrc in frames]
    out = run(buffer, arrivals, ticks=80)
    stats = buffer.stats()
    assert stats.received == len(frames)
    assert stats.received == stats.played + stats.late + stats.duplicates + stats.skipped + stats.depth
    assert stats.played == sum(isinstance(x, str) for x in out)
    assert stats.gaps == sum(isinstance(x, Gap) for x in out)
    # Once playout has begun, every tick yields a frame or a gap.
    first = next((k for k, x in enumerate(out) if x is not None), len(out))
    assert all(x is not None for x in out[first:])
