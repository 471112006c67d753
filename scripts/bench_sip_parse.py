#!/usr/bin/env python3
"""Measure the signalling and packet parsers: µs per operation.

    .venv/bin/python scripts/bench_sip_parse.py --iterations 20000

Each measurement is a named callable in MEASUREMENTS, timed as the best of five runs of
``--iterations`` operations. SIP figures use a typical INVITE with an SDP offer (~750 bytes):
``sip_parse_invite_us`` parses a fresh message each time (unique branch, tag and Call-ID, so no
parse cache helps), ``sip_parse_retransmission_us`` parses the same bytes again (caches warm, as
for a retransmission), ``sip_serialise_*`` turn a parsed or a built message into bytes, and
``sip_make_response_us`` builds a 200 OK for the INVITE. The last line of output is one JSON
object with every figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol.sip import make_request, make_response, parse_message  # noqa: E402

REPEATS = 5

SDP = (
    b"v=0\r\n"
    b"o=- 3848276298 3848276298 IN IP4 192.0.2.20\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.20\r\n"
    b"t=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 8 9 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:9 G722/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)

INVITE_HEAD = (
    "INVITE sip:service@192.0.2.10:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK{n:016x};rport\r\n"
    "Max-Forwards: 70\r\n"
    "Contact: <sip:alice@192.0.2.20:5060;transport=udp>\r\n"
    "To: <sip:service@192.0.2.10:5060>\r\n"
    'From: "Alice" <sip:alice@192.0.2.20:5060>;tag={n:010d}\r\n'
    "Call-ID: {n:020d}@192.0.2.20\r\n"
    "CSeq: 1 INVITE\r\n"
    "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO\r\n"
    "Supported: replaces, timer\r\n"
    "User-Agent: Softphone 5.1\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n"
    "\r\n"
)


def invite(n: int) -> bytes:
    return INVITE_HEAD.format(n=n, length=len(SDP)).encode() + SDP


def best_us(iterations: int, run: Callable[[int], None]) -> float:
    """Best of REPEATS timings of ``run(iterations)``, in µs per iteration."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        run(iterations)
        best = min(best, time.perf_counter() - start)
    return best / iterations * 1e6


# -- SIP ---------------------------------------------------------------------------------------


def _sip_parse_invite(iterations: int) -> Callable[[int], None]:
    datas = [invite(i) for i in range(iterations * REPEATS)]
    position = iter(range(0, len(datas), iterations))

    def run(count: int) -> None:
        start = next(position)
        for data in datas[start : start + count]:
            parse_message(data)

    return run


def _sip_parse_retransmission(iterations: int) -> Callable[[int], None]:
    data = invite(7)

    def run(count: int) -> None:
        for _ in range(count):
            parse_message(data)

    return run


def _sip_serialise_parsed(iterations: int) -> Callable[[int], None]:
    message = parse_message(invite(7))

    def run(count: int) -> None:
        for _ in range(count):
            bytes(message)

    return run


def _sip_serialise_built(iterations: int) -> Callable[[int], None]:
    parsed = parse_message(invite(7))
    message = make_request("INVITE", parsed.uri, headers=list(parsed.headers), body=parsed.body)

    def run(count: int) -> None:
        for _ in range(count):
            bytes(message)

    return run


def _sip_make_response(iterations: int) -> Callable[[int], None]:
    request = parse_message(invite(7))
    contact = [("Contact", "<sip:service@192.0.2.10:5060>")]

    def run(count: int) -> None:
        for _ in range(count):
            bytes(make_response(request, 200, to_tag="as83kd9bs", headers=contact, body=SDP))

    return run


# -- RTP ---------------------------------------------------------------------------------------


def _rtp_packet():
    from protocol.rtp import RtpPacket

    return RtpPacket(0, 4242, 160 * 4242, 0x12345678, bytes(range(160)), marker=False)


def _rtp_parse(iterations: int) -> Callable[[int], None]:
    from protocol.rtp import RtpPacket

    data = bytes(_rtp_packet())
    assert len(data) == 172  # 12-byte header + 160 bytes: 20 ms of PCMU

    def run(count: int) -> None:
        parse = RtpPacket.parse
        for _ in range(count):
            parse(data)

    return run


def _rtp_build(iterations: int) -> Callable[[int], None]:
    from protocol.rtp import RtpPacket

    payload = _rtp_packet().payload

    def run(count: int) -> None:
        for i in range(count):
            bytes(RtpPacket(0, i & 0xFFFF, 160 * i & 0xFFFFFFFF, 0x12345678, payload))

    return run


# Append a (name, factory) pair to add a figure: factory(iterations) returns run(count).
MEASUREMENTS: list[tuple[str, Callable[[int], Callable[[int], None]]]] = [
    ("sip_parse_invite_us", _sip_parse_invite),
    ("sip_parse_retransmission_us", _sip_parse_retransmission),
    ("sip_serialise_parsed_us", _sip_serialise_parsed),
    ("sip_serialise_built_us", _sip_serialise_built),
    ("sip_make_response_us", _sip_make_response),
]
if (ROOT / "protocol" / "rtp.py").exists():
    MEASUREMENTS += [("rtp_parse_pcmu_20ms_us", _rtp_parse), ("rtp_build_pcmu_20ms_us", _rtp_build)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000, help="operations per timed run")
    args = parser.parse_args()
    figures: dict[str, object] = {
        "python": platform.python_version(),
        "iterations": args.iterations,
        "invite_bytes": len(invite(0)),
    }
    for name, factory in MEASUREMENTS:
        figures[name] = round(best_us(args.iterations, factory(args.iterations)), 3)
        print(f"{name:32s} {figures[name]:10.3f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
