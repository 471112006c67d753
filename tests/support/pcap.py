"""Read the UDP payloads of a classic libpcap file (Ethernet, IPv4), with their capture times."""

from __future__ import annotations

import struct
from pathlib import Path

_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


def udp_payloads(path: Path) -> list[tuple[float, bytes]]:
    """(seconds since the first packet, UDP payload) for each IPv4/UDP packet in ``path``."""
    data = path.read_bytes()
    magic, _, _, _, _, _, linktype = _GLOBAL.unpack_from(data)
    if magic != 0xA1B2C3D4 or linktype != 1:
        raise ValueError(f"{path}: expected a little-endian microsecond pcap of Ethernet frames")
    out: list[tuple[float, bytes]] = []
    pos = _GLOBAL.size
    first: float | None = None
    while pos + _RECORD.size <= len(data):
        seconds, micros, length, _ = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        frame = data[pos : pos + length]
        pos += length
        if len(frame) < 14 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        if ip[9] != 17:  # not UDP
            continue
        udp = ip[(ip[0] & 0x0F) * 4 :]
        stamp = seconds + micros / 1e6
        first = stamp if first is None else first
        out.append((stamp - first, bytes(udp[8:])))
    return out
