"""RTP port pairs: even RTP / odd RTCP, busy ports skipped, exhaustion, release and rotation."""

from __future__ import annotations

import socket

import pytest

from transports.rtp_ports import RtpPortAllocator, RtpPortsExhausted


def free_block(size: int) -> int:
    """An even port p with p..p+size-1 all free on 127.0.0.1 (checked by binding each)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            start = probe.getsockname()[1] & ~1
        if start + size > 65535:
            continue
        socks = []
        try:
            for port in range(start, start + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block of UDP ports on 127.0.0.1")


def test_pairs_are_even_rtp_and_odd_rtcp_and_bound():
    start = free_block(8)
    allocator = RtpPortAllocator("127.0.0.1", start, start + 7)
    pair = allocator.allocate()
    try:
        assert pair.port % 2 == 0 and pair.rtcp_port == pair.port + 1
        assert pair.rtp.getsockname() == ("127.0.0.1", pair.port)
        assert pair.rtcp.getsockname() == ("127.0.0.1", pair.port + 1)
        assert start <= pair.port < pair.rtcp_port <= start + 7
    finally:
        pair.release()
    assert allocator.in_use == 0


def test_odd_bounds_keep_pairs_inside_the_range():
    start = free_block(8)
    allocator = RtpPortAllocator("127.0.0.1", start + 1, start + 6)  # odd start, even end
    assert (allocator.first, allocator.last) == (start + 2, start + 4)
    assert allocator.capacity == 2
    with pytest.raises(ValueError, match="no even/odd pair"):
        RtpPortAllocator("127.0.0.1", start + 1, start + 2)


def test_a_port_held_by_another_socket_is_skipped():
    start = free_block(8)
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", start + 1))  # the RTCP port of the first pair
    allocator = RtpPortAllocator("127.0.0.1", start, start + 7)
    try:
        pair = allocator.allocate()
        assert pair.port == start + 2
        assert allocator.busy_skipped == 1
        pair.release()
    finally:
        holder.close()


def test_exhaustion_is_a_clear_error_and_release_gives_the_pair_back():
    start = free_block(4)
    allocator = RtpPortAllocator("127.0.0.1", start, start + 3)
    a, b = allocator.allocate(), allocator.allocate()
    try:
        with pytest.raises(RtpPortsExhausted, match=f"no free RTP port pair in {start}..{start + 3}"):
            allocator.allocate()
        assert allocator.exhausted == 1
        a.release()
        again = allocator.allocate()
        assert again.port == a.port
        again.release()
    finally:
        a.release()
        b.release()
    assert allocator.stats() == {"capacity": 2, "in_use": 0, "allocated": 3, "busy_skipped": 0, "exhausted": 1}


def test_a_released_port_is_the_last_to_be_reused():
    start = free_block(8)
    allocator = RtpPortAllocator("127.0.0.1", start, start + 7)
    first = allocator.allocate()
    first.release()
    ports = []
    for _ in range(3):
        pair = allocator.allocate()
        ports.append(pair.port)
        pair.release()
    assert ports == [start + 2, start + 4, start + 6]
    assert allocator.allocate().port == start  # wrapped around
