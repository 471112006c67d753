import re
from pathlib import Path

import pytest

from protocol.errors import ProtocolError
from protocol.negotiate import (
    NegotiatedCodec,
    SdpSession,
    answer,
    codec_spec,
    make_offer,
    process_answer,
)
from protocol.sdp import Attribute, parse

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PREFS = ["PCMU", "PCMA", "G722", "telephone-event"]
HEAD = "v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\n"


def fixture(name: str):
    return parse((FIXTURES / "sdp" / name).read_bytes())


def offer_text(*media: str, head: str = HEAD):
    return parse(head + "".join(media))


def session() -> SdpSession:
    return SdpSession("127.0.0.1", session_id=4242, version=1)


def test_chrome_offer_picks_pcmu_and_telephone_event_at_8000():
    sdp, media = answer(fixture("chrome_audio.sdp"), PREFS, "127.0.0.1", 40000, session=session())
    assert media.codec == NegotiatedCodec("PCMU", 0, 8000, 8000)
    assert media.telephone_event_pt == 126
    assert (media.remote_address, media.remote_port) == ("192.168.99.58", 45076)
    assert media.rtcp_mux and media.remote_rtcp is None
    assert (media.direction, media.on_hold, media.ptime, media.index) == ("sendrecv", False, 20, 0)
    assert str(sdp) == (
        "v=0\r\no=- 4242 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 40000 UDP/TLS/RTP/SAVPF 0 126\r\n"
        "a=rtpmap:0 PCMU/8000\r\na=rtpmap:126 telephone-event/8000\r\na=fmtp:126 0-16\r\n"
        "a=ptime:20\r\na=rtcp-mux\r\na=mid:audio\r\na=sendrecv\r\n"
    )
    assert parse(bytes(sdp)) == sdp


def test_firefox_offer_picks_pcmu_and_echoes_event_range():
    sdp, media = answer(fixture("firefox_audio.sdp"), PREFS, "127.0.0.1", 40000)
    assert (media.codec.name, media.codec.payload_type, media.telephone_event_pt) == ("PCMU", 0, 101)
    assert sdp.media[0].formats == ("0", "101")
    assert sdp.media[0].fmtps[101].raw == "0-15"
    assert sdp.media[0].mid == "sdparta_0"


def test_freeswitch_offers_only_pcma():
    _, media = answer(fixture("freeswitch_webrtc.sdp"), PREFS, "127.0.0.1", 40000)
    assert (media.codec.name, media.codec.payload_type, media.telephone_event_pt) == ("PCMA", 8, 101)
    assert (media.remote_address, media.remote_port, media.ptime) == ("1.2.3.4", 16628, 20)


@pytest.mark.parametrize(
    ("name", "codec", "pt", "events", "rtcp"),
    [
        ("asterisk_pjsip.sdp", "PCMU", 0, 101, ("10.17.0.10", 12753)),
        ("asterisk_chan_sip.sdp", "PCMU", 0, 101, ("192.168.0.158", 10289)),
        ("asterisk_webrtc.sdp", "PCMU", 0, 126, ("31.186.99.61", 17203)),
        ("pjsua_answer.sdp", "PCMU", 0, 101, ("192.168.88.121", 4001)),
        ("communigate_hold.sdp", "PCMA", 8, 101, ("192.0.2.10", 37947)),
    ],
)
def test_sip_stacks_negotiate(name, codec, pt, events, rtcp):
    sdp, media = answer(fixture(name), PREFS, "127.0.0.1", 40000)
    assert (media.codec.name, media.codec.payload_type, media.telephone_event_pt) == (codec, pt, events)
    assert media.remote_rtcp == rtcp
    assert not media.rtcp_mux
    assert parse(bytes(sdp)) == sdp


def test_caller_preference_order_decides():
    _, media = answer(fixture("chrome_audio.sdp"), ["PCMA", "PCMU"], "127.0.0.1", 40000)
    assert (media.codec.name, media.codec.payload_type, media.telephone_event_pt) == ("PCMA", 8, None)
    sdp, media = answer(fixture("asterisk_pjsip.sdp"), ["G722", "PCMU", "telephone-event"], "127.0.0.1", 40000)
    assert media.codec == NegotiatedCodec("G722", 9, 8000, 16000)
    # G722's RTP clock is 8000, so telephone-event/8000 goes with it.
    assert media.telephone_event_pt == 101
    assert sdp.media[0].get_all("rtpmap") == ["9 G722/8000", "101 telephone-event/8000"]


def test_static_payload_types_are_recognised_without_rtpmap():
    offer = offer_text("m=audio 5004 RTP/AVP 9 0\n")
    sdp, media = answer(offer, ["G722"], "127.0.0.1", 40000)
    assert (media.codec.name, media.codec.payload_type) == ("G722", 9)
    assert sdp.media[0].formats == ("9",)


def test_g722_written_with_its_sample_rate_still_matches():
    offer = offer_text("m=audio 5004 RTP/AVP 9\na=rtpmap:9 G722/16000\n")
    _, media = answer(offer, ["G722"], "127.0.0.1", 40000)
    assert (media.codec.clock_rate, media.codec.sample_rate) == (8000, 16000)


def test_telephone_event_follows_the_chosen_codec_clock_rate():
    chrome = fixture("chrome_audio.sdp")
    sdp, media = answer(chrome, ["opus", "telephone-event"], "127.0.0.1", 40000)
    assert media.codec == NegotiatedCodec("opus", 111, 48000, 48000, 2, "minptime=10;useinbandfec=1")
    assert media.telephone_event_pt == 110
    assert sdp.media[0].get_all("rtpmap") == ["111 opus/48000/2", "110 telephone-event/48000"]
    assert sdp.media[0].get_all("fmtp") == ["111 minptime=10;useinbandfec=1", "110 0-16"]
    # Offered only at 48000: a PCMU call gets no telephone-event.
    offer = offer_text("m=audio 5004 RTP/AVP 0 110\na=rtpmap:110 telephone-event/48000\n")
    sdp, media = answer(offer, PREFS, "127.0.0.1", 40000)
    assert media.telephone_event_pt is None
    assert sdp.media[0].formats == ("0",)


def test_telephone_event_only_when_asked_for():
    sdp, media = answer(fixture("asterisk_chan_sip.sdp"), ["PCMA"], "127.0.0.1", 40000)
    assert media.telephone_event_pt is None
    assert sdp.media[0].formats == ("8",)


def test_unsupported_streams_are_refused_in_place():
    offer = offer_text(
        "m=video 5006 RTP/AVP 96\na=rtpmap:96 VP8/90000\na=mid:v\n",
        "m=audio 5010 RTP/AVP 3\n",
        "m=audio 5004 RTP/AVP 8 0 101\na=rtpmap:101 telephone-event/8000\n",
        "m=application 5008 UDP/DTLS/SCTP webrtc-datachannel\n",
        "m=audio 5012 RTP/AVP 0\n",
    )
    sdp, media = answer(offer, PREFS, "127.0.0.1", 40000)
    assert media.index == 2
    assert (media.codec.name, media.remote_port) == ("PCMU", 5004)
    lines = [line for line in str(sdp).split("\r\n") if line.startswith("m=")]
    assert lines == [
        "m=video 0 RTP/AVP 96",
        "m=audio 0 RTP/AVP 3",
        "m=audio 40000 RTP/AVP 0 101",
        "m=application 0 UDP/DTLS/SCTP webrtc-datachannel",
        "m=audio 0 RTP/AVP 0",
    ]
    assert sdp.media[0].attributes == (Attribute("mid", "v"),)
    assert sdp.media[3].attributes == ()


def test_already_refused_stream_stays_refused():
    offer = offer_text("m=audio 0 RTP/AVP 0\n", "m=audio 5004 RTP/AVP 0\n")
    sdp, media = answer(offer, PREFS, "127.0.0.1", 40000)
    assert media.index == 1
    assert [m.port for m in sdp.media] == [0, 40000]


@pytest.mark.parametrize(
    "offer",
    [
        offer_text("m=audio 5004 RTP/AVP 3 18\n"),
        offer_text("m=video 5004 RTP/AVP 96\na=rtpmap:96 VP8/90000\n"),
        offer_text(),
        fixture("chrome_video.sdp"),
        fixture("firefox_datachannel.sdp"),
    ],
    ids=["gsm-g729", "video", "no-streams", "chrome-video", "firefox-datachannel"],
)
def test_no_acceptable_codec_anywhere_is_488(offer):
    with pytest.raises(ProtocolError) as info:
        answer(offer, PREFS, "127.0.0.1", 40000)
    assert info.value.status == 488
    assert info.value.message.startswith("no acceptable codec in any stream (offered: ")


def test_no_acceptable_codec_message_lists_the_offer():
    with pytest.raises(ProtocolError) as info:
        answer(offer_text("m=audio 5004 RTP/AVP 3 18\n", "m=video 5006 RTP/AVP 31\n"), PREFS, "127.0.0.1", 1)
    assert info.value.message == (
        "no acceptable codec in any stream (offered: audio RTP/AVP GSM/8000,G729/8000; video RTP/AVP -)"
    )


def test_profiles_can_be_narrowed():
    with pytest.raises(ProtocolError) as info:
        answer(fixture("chrome_audio.sdp"), PREFS, "127.0.0.1", 40000, protos={"RTP/AVP"})
    assert info.value.status == 488


@pytest.mark.parametrize(
    ("media_attr", "session_attr", "connection", "ours", "held"),
    [
        ("a=sendonly\n", "", "10.0.0.1", "recvonly", True),
        ("a=inactive\n", "", "10.0.0.1", "inactive", True),
        ("a=recvonly\n", "", "10.0.0.1", "sendonly", False),
        ("a=sendrecv\n", "", "10.0.0.1", "sendrecv", False),
        ("", "a=sendonly\n", "10.0.0.1", "recvonly", True),
        ("a=sendrecv\n", "a=sendonly\n", "10.0.0.1", "sendrecv", False),
        # RFC 2543 hold: the null address means "do not send to me".
        ("", "", "0.0.0.0", "recvonly", True),
        ("a=sendonly\n", "", "0.0.0.0", "recvonly", True),
        ("a=recvonly\n", "", "0.0.0.0", "inactive", True),
    ],
)
def test_hold_is_detected_and_answered(media_attr, session_attr, connection, ours, held):
    head = f"v=0\no=- 1 2 IN IP4 10.0.0.1\ns=-\nc=IN IP4 {connection}\nt=0 0\n{session_attr}"
    sdp, media = answer(offer_text("m=audio 5004 RTP/AVP 0\n" + media_attr, head=head), PREFS, "127.0.0.1", 40000)
    assert (media.direction, media.on_hold) == (ours, held)
    assert sdp.media[0].direction == ours
    assert sdp.media_direction(0) == ours
    assert media.remote_address == (None if connection == "0.0.0.0" else connection)
    assert media.remote_rtcp == (None if connection == "0.0.0.0" else (connection, 5005))


def test_communigate_hold_reinvite():
    sdp, media = answer(fixture("communigate_hold.sdp"), PREFS, "127.0.0.1", 40000)
    assert (media.direction, media.on_hold) == ("recvonly", True)
    assert sdp.media[0].fmtps[101].raw == "0-16,32-49,64-89"


def test_local_direction_narrows_the_answer():
    _, media = answer(fixture("asterisk_pjsip.sdp"), PREFS, "127.0.0.1", 40000, direction="sendonly")
    assert (media.direction, media.on_hold) == ("sendonly", False)
    _, media = answer(offer_text("m=audio 1 RTP/AVP 0\na=sendonly\n"), PREFS, "127.0.0.1", 2, direction="sendonly")
    assert media.direction == "inactive"


def test_ptime_is_carried():
    sdp, media = answer(offer_text("m=audio 5004 RTP/AVP 0\na=ptime:30\n"), PREFS, "127.0.0.1", 40000, ptime=20)
    assert media.ptime == 30 and sdp.media[0].ptime == 30
    sdp, media = answer(offer_text("m=audio 5004 RTP/AVP 0\n"), PREFS, "127.0.0.1", 40000, ptime=40)
    assert media.ptime == 40 and sdp.media[0].ptime == 40
    sdp, media = answer(offer_text("m=audio 5004 RTP/AVP 0\n"), PREFS, "127.0.0.1", 40000)
    assert media.ptime == 20 and sdp.media[0].ptime == 20


def test_rtcp_mux_only_when_both_want_it():
    sdp, media = answer(fixture("chrome_audio.sdp"), PREFS, "127.0.0.1", 40000, rtcp_mux=False)
    assert not media.rtcp_mux and not sdp.media[0].rtcp_mux
    assert media.remote_rtcp == ("0.0.0.0", 9)


def test_media_attributes_are_appended_to_the_accepted_stream():
    extra = [Attribute("ice-ufrag", "abcd"), Attribute("setup", "active")]
    sdp, _ = answer(fixture("chrome_audio.sdp"), PREFS, "127.0.0.1", 40000, media_attributes=extra)
    assert sdp.media[0].attributes[-2:] == tuple(extra)


def test_ipv6_local_address():
    sdp, _ = answer(fixture("asterisk_pjsip.sdp"), PREFS, "::1", 40000)
    assert str(sdp.connection) == "IN IP6 ::1"
    assert sdp.origin.addrtype == "IP6"


def test_origin_version_is_bumped_on_every_new_sdp():
    s = SdpSession("127.0.0.1", session_id=99, version=5)
    first, _ = answer(fixture("asterisk_pjsip.sdp"), PREFS, "127.0.0.1", 40000, session=s)
    second, _ = answer(fixture("communigate_hold.sdp"), PREFS, "127.0.0.1", 40000, session=s)
    third = make_offer(s, ["PCMU"], "127.0.0.1", 40000)
    assert [(x.origin.session_id, x.origin.session_version) for x in (first, second, third)] == [
        ("99", 5),
        ("99", 6),
        ("99", 7),
    ]
    fresh = SdpSession("10.0.0.2")
    assert 0 <= fresh.session_id < 2**62 and fresh.version == 0


def test_make_offer():
    offer = make_offer(session(), PREFS, "127.0.0.1", 30000)
    assert str(offer) == (
        "v=0\r\no=- 4242 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 30000 RTP/AVP 0 8 9 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:9 G722/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    )
    assert parse(bytes(offer)) == offer


def test_make_offer_with_opus_gets_dynamic_types_and_events_per_clock_rate():
    offer = make_offer(session(), ["opus", "PCMU", "telephone-event"], "127.0.0.1", 30000, rtcp_mux=True)
    media = offer.media[0]
    assert media.formats == ("96", "0", "101", "97")
    assert media.get_all("rtpmap") == ["96 opus/48000/2", "0 PCMU/8000", "101 telephone-event/48000",
                                       "97 telephone-event/8000"]
    assert media.rtcp_mux
    _, chosen = answer(offer, ["PCMU", "telephone-event"], "127.0.0.2", 40000)
    assert (chosen.codec.payload_type, chosen.telephone_event_pt) == (0, 97)


def test_make_offer_rejects_unknown_or_empty_prefs():
    with pytest.raises(ValueError, match="at least one audio codec"):
        make_offer(session(), ["telephone-event"], "127.0.0.1", 30000)
    with pytest.raises(ValueError, match="direction must be one of"):
        make_offer(session(), ["PCMU"], "127.0.0.1", 30000, direction="hold")
    with pytest.raises(ValueError, match="direction must be one of"):
        answer(fixture("asterisk_pjsip.sdp"), PREFS, "127.0.0.1", 1, direction="sendrecv ")
    with pytest.raises(ValueError, match="unknown codec 'speex'"):
        codec_spec("speex")


def test_offer_answer_loop_both_sides_agree():
    ours = SdpSession("127.0.0.1", session_id=1)
    theirs = SdpSession("127.0.0.2", session_id=2)
    offer = make_offer(ours, ["PCMA", "PCMU", "telephone-event"], "127.0.0.1", 30000)
    reply, at_answerer = answer(offer, ["PCMU", "PCMA", "telephone-event"], "127.0.0.2", 40000, session=theirs)
    at_offerer = process_answer(offer, parse(bytes(reply)))
    assert at_answerer.codec == at_offerer.codec == NegotiatedCodec("PCMU", 0, 8000, 8000)
    assert at_answerer.telephone_event_pt == at_offerer.telephone_event_pt == 101
    assert (at_offerer.remote_address, at_offerer.remote_port) == ("127.0.0.2", 40000)
    assert (at_answerer.remote_address, at_answerer.remote_port) == ("127.0.0.1", 30000)
    assert at_offerer.direction == at_answerer.direction == "sendrecv"

    # We put the call on hold with a re-offer; the far end answers recvonly.
    hold = make_offer(ours, ["PCMU", "telephone-event"], "127.0.0.1", 30000, direction="sendonly")
    assert hold.origin.session_version == 1
    reply, at_answerer = answer(hold, ["PCMU", "telephone-event"], "127.0.0.2", 40000, session=theirs)
    assert reply.origin.session_version == 1
    assert (at_answerer.direction, at_answerer.on_hold) == ("recvonly", True)
    at_offerer = process_answer(hold, reply)
    assert (at_offerer.direction, at_offerer.on_hold) == ("sendonly", False)


def test_process_answer_from_pjsua():
    offer = make_offer(session(), ["PCMU", "PCMA", "telephone-event"], "127.0.0.1", 30000)
    media = process_answer(offer, fixture("pjsua_answer.sdp"))
    assert media.codec == NegotiatedCodec("PCMU", 0, 8000, 8000)
    assert media.telephone_event_pt == 101
    assert (media.remote_address, media.remote_port, media.remote_rtcp) == ("192.168.88.121", 4000,
                                                                           ("192.168.88.121", 4001))
    assert (media.direction, media.on_hold, media.ptime) == ("sendrecv", False, 20)


def test_process_answer_uses_the_answerer_payload_types():
    offer = make_offer(session(), ["opus", "PCMU", "telephone-event"], "127.0.0.1", 30000)
    reply = offer_text("m=audio 6000 RTP/AVP 109 120\na=rtpmap:109 OPUS/48000/2\na=rtpmap:120 telephone-event/48000\n"
                       "a=ptime:40\na=recvonly\n")
    media = process_answer(offer, reply)
    assert (media.codec.name, media.codec.payload_type, media.codec.clock_rate) == ("opus", 109, 48000)
    assert media.telephone_event_pt == 120
    assert (media.direction, media.on_hold, media.ptime) == ("sendonly", False, 40)


def test_process_answer_that_holds_us():
    offer = make_offer(session(), PREFS, "127.0.0.1", 30000)
    media = process_answer(offer, offer_text("m=audio 6000 RTP/AVP 8\na=sendonly\n"))
    assert (media.codec.name, media.direction, media.on_hold) == ("PCMA", "recvonly", True)


@pytest.mark.parametrize(
    ("reply", "message", "status"),
    [
        ("m=audio 0 RTP/AVP 0\n", "sdp answer refused the audio stream (port 0)", 488),
        ("m=audio 6000 RTP/AVP 3\n", "sdp answer has no codec that was offered", 488),
        ("m=audio 6000 RTP/AVP 101\na=rtpmap:101 telephone-event/8000\n", "sdp answer has no codec that was offered",
         488),
        ("m=audio 6000 RTP/AVP 0\nm=video 0 RTP/AVP 31\n", "sdp answer has 2 m= lines, the offer had 1", 488),
    ],
)
def test_process_answer_errors(reply, message, status):
    offer = make_offer(session(), PREFS, "127.0.0.1", 30000)
    with pytest.raises(ProtocolError) as info:
        process_answer(offer, offer_text(reply))
    assert (info.value.message, info.value.status) == (message, status)


def _captured_sdp_bodies() -> list[tuple[str, bytes]]:
    """(dir/file, SDP body) of every SIP message with an SDP body under tests/fixtures/sip/captures/."""
    root = FIXTURES / "sip" / "captures"
    bodies = []
    for path in sorted(root.glob("*/*.sip")) if root.is_dir() else []:
        data = path.read_bytes()
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            head, sep, body = data.partition(b"\n\n")
        content_type = re.search(rb"^(?:content-type|c)[ \t]*:[ \t]*([^\r\n;]+)", head, re.I | re.M)
        if content_type and content_type.group(1).strip().lower() == b"application/sdp" and body.strip():
            bodies.append((f"{path.parent.name}/{path.name}", body))
    return bodies


CAPTURED = _captured_sdp_bodies()


def _captured_offer_answer_pairs() -> list[tuple[str, bytes, bytes]]:
    """Each INVITE's SDP with the SDP of the 200 that follows it in the same capture."""
    pairs = []
    pending: dict[str, tuple[str, bytes]] = {}
    for name, body in CAPTURED:
        directory = name.split("/")[0]
        if "INVITE" in name:
            pending[directory] = (name, body)
        elif "-200" in name and directory in pending:
            offer_name, offer = pending.pop(directory)
            pairs.append((f"{offer_name}+{name.split('/')[1]}", offer, body))
    return pairs


PAIRS = _captured_offer_answer_pairs()


@pytest.mark.skipif(not CAPTURED, reason="no SIP captures under tests/fixtures/sip/captures/")
@pytest.mark.parametrize(("name", "body"), CAPTURED, ids=[n for n, _ in CAPTURED])
def test_captured_sip_sdp_negotiates(name, body):
    sdp = parse(body)
    assert parse(bytes(sdp)) == sdp
    assert bytes(sdp) == body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    reply, media = answer(sdp, PREFS, "127.0.0.1", 40000)
    assert media.codec.name in ("PCMU", "PCMA")
    assert media.remote_address == "127.0.0.1"
    assert (media.direction, media.on_hold) == ("sendrecv", False)
    assert len(reply.media) == len(sdp.media)
    assert parse(bytes(reply)) == reply


@pytest.mark.skipif(not PAIRS, reason="no INVITE/200 pairs under tests/fixtures/sip/captures/")
@pytest.mark.parametrize(("name", "offer", "reply"), PAIRS, ids=[n for n, _, _ in PAIRS])
def test_captured_offer_and_answer_agree(name, offer, reply):
    offer_sdp, answer_sdp = parse(offer), parse(reply)
    offered = {c.name for c in offer_sdp.media[0].codecs}
    if not any(c.name in offered for c in answer_sdp.media[0].codecs if c.name != "telephone-event"):
        # sipp's canned UAS answers PCMU whatever was offered (its uac_pcap offers PCMA only).
        with pytest.raises(ProtocolError) as info:
            process_answer(offer_sdp, answer_sdp)
        assert (info.value.message, info.value.status) == ("sdp answer has no codec that was offered", 488)
        return
    media = process_answer(offer_sdp, answer_sdp)
    assert media.codec.payload_type == answer_sdp.media[0].payload_types[0]
    assert (media.remote_address, media.remote_port) == ("127.0.0.1", answer_sdp.media[0].port)
    assert media.direction == "sendrecv"


def test_captures_were_found_when_present():
    root = FIXTURES / "sip" / "captures"
    if any(root.glob("*/*.sip")):
        assert len(CAPTURED) >= 2 and PAIRS
