"""Real traffic: SIPp and baresip messages captured on loopback parse and round-trip exactly,
and a live SIPp uac/uas run parses message by message."""

from __future__ import annotations

import importlib.util
import random
import shutil
from pathlib import Path

import pytest

from protocol.sip import Request, Response, StreamParser, make_response, parse_message

CAPTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sip" / "captures"
RUNS = ("sipp-udp", "sipp-tcp", "sipp-pcap", "baresip")


def _capture_module():
    spec = importlib.util.spec_from_file_location("sip_capture", CAPTURES / "capture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(run: str) -> list[Path]:
    return sorted((CAPTURES / run).glob("*.sip"))


ALL_FILES = [path for run in RUNS for path in _files(run)]


def test_every_run_was_captured():
    assert {run: len(_files(run)) for run in RUNS} == {
        "sipp-udp": 18,
        "sipp-tcp": 12,
        "sipp-pcap": 6,
        "baresip": 6,
    }


@pytest.mark.parametrize("path", ALL_FILES, ids=[f"{p.parent.name}/{p.name}" for p in ALL_FILES])
def test_captured_message_parses_and_round_trips(path):
    data = path.read_bytes()
    msg = parse_message(data)
    assert bytes(msg) == data
    assert parse_message(bytes(msg)) == msg
    label = path.stem.split("-", 2)[2]
    if isinstance(msg, Request):
        assert msg.method == label and msg.cseq.method == label
    else:
        assert isinstance(msg, Response) and str(msg.status) == label
    assert msg.content_length == len(msg.body)
    assert msg.via[0].host == "127.0.0.1" and msg.via[0].branch.startswith("z9hG4bK")
    assert msg.call_id and msg.from_.tag


def test_baresip_invite():
    msg = parse_message(_files("baresip")[0].read_bytes())
    assert msg.method == "INVITE" and msg.uri.user == "service" and msg.uri.host == "127.0.0.1"
    assert msg.via[0].rport is True and msg.via[0].transport == "UDP"
    (contact,) = msg.contact
    assert contact.address.uri.user.startswith("baresip-0x")
    assert msg.get_all("Allow") == [
        "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "NOTIFY", "SUBSCRIBE", "INFO", "MESSAGE", "REFER",
    ]
    assert msg.get("Supported") is None and msg.get_all("Supported") == []
    assert msg.max_forwards == 70
    assert msg.content_type == "application/sdp" and msg.body.startswith(b"v=0\r\n")
    assert msg.get("User-Agent") == "baresip v1.0.0 (x86_64/linux)"


def test_sipp_uas_answers_match_the_requests_they_answer():
    for run in ("sipp-udp", "sipp-pcap", "baresip"):
        messages = [parse_message(p.read_bytes()) for p in _files(run)]
        requests = {(m.call_id, m.cseq.number, m.cseq.method): m for m in messages if isinstance(m, Request)}
        for response in (m for m in messages if isinstance(m, Response)):
            request = requests[(response.call_id, response.cseq.number, response.cseq.method)]
            assert [str(v) for v in response.via] == [str(v) for v in request.via]
            assert response.from_ == request.from_
            assert response.to.uri.matches(request.to.uri) and response.to.tag


def test_make_response_to_a_captured_invite_matches_what_sipp_sent():
    invite, _, ok = (parse_message(p.read_bytes()) for p in _files("sipp-udp")[:3])
    tag = ok.to.tag
    ours = make_response(invite, 200, to_tag=tag, headers=[("Contact", ok.get("Contact"))])
    assert ours.status == 200 and ours.reason == "OK"
    for name in ("Via", "From", "To", "Call-ID", "CSeq", "Contact"):
        assert ours.get_all(name) == ok.get_all(name), name
    assert parse_message(bytes(ours)) == ours


def test_tcp_capture_reframed_from_arbitrary_segments():
    datas = [p.read_bytes() for p in _files("sipp-tcp")]
    stream = b"\r\n\r\n".join(datas)  # with keep-alive pings between messages
    rng = random.Random(4475)
    for _ in range(20):
        parser = StreamParser()
        got = []
        i = 0
        while i < len(stream):
            n = rng.randint(1, 300)
            got += parser.feed(stream[i : i + n])
            i += n
        assert [bytes(m) for m in got] == datas
        assert parser.pings == len(datas) - 1 and parser.take_errors() == []


@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian package sip-tester) is not installed")
def test_live_sipp_uac_against_uas(tmp_path):
    capture = _capture_module()
    uac, uas = capture.run_sipp_pair(
        tmp_path, calls=2, transport="u1", timeout=20, uas_timewait_ms=100
    )
    assert len(uac) == len(uas) == 12
    sent_by_uac = [m for _, direction, m in uac if direction == "sent"]
    received_by_uas = [m for _, direction, m in uas if direction == "received"]
    assert sent_by_uac == received_by_uas
    for _, _, data in uac + uas:
        msg = parse_message(data)
        assert bytes(msg) == data and parse_message(bytes(msg)) == msg
    methods = [parse_message(m).method for m in sent_by_uac]
    assert methods == ["INVITE", "ACK", "BYE"] * 2
