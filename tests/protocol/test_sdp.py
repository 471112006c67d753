from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ProtocolError
from protocol.sdp import (
    Attribute,
    Bandwidth,
    Codec,
    Connection,
    Fmtp,
    MediaDescription,
    Origin,
    RtcpAddress,
    RtpMap,
    SessionDescription,
    SsrcAttribute,
    Timing,
    parse,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sdp"
FIXTURE_FILES = sorted(FIXTURES.glob("*.sdp"))


def fixture(name: str) -> SessionDescription:
    return parse((FIXTURES / name).read_bytes())


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def test_every_source_is_listed_in_the_readme():
    readme = (FIXTURES / "README.md").read_text()
    assert len(FIXTURE_FILES) >= 8
    for path in FIXTURE_FILES:
        assert f"`{path.name}`" in readme


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_fixture_round_trips(path):
    data = path.read_bytes()
    sdp = parse(data)
    assert parse(bytes(sdp)) == sdp
    # These captures are in RFC order, so serialising gives back the very bytes, with CRLF.
    assert bytes(sdp) == data.replace(b"\n", b"\r\n")
    assert str(sdp) == data.decode().replace("\n", "\r\n")
    assert parse(data.replace(b"\n", b"\r\n")) == sdp


def test_chrome_audio_typed_access():
    sdp = fixture("chrome_audio.sdp")
    assert sdp.origin == Origin("-", "863426017819471768", 2, "127.0.0.1", "IN", "IP4")
    assert sdp.name == "-"
    assert sdp.timings == (Timing(0, 0),)
    assert sdp.connection is None
    assert sdp.groups == [["BUNDLE", "audio"]]
    assert sdp.get("msid-semantic") == " WMS TF6VRif1dxuAfe5uefrV2953LhUZt1keYvxU"
    assert len(sdp.media) == 1

    audio = sdp.media[0]
    assert (audio.media, audio.port, audio.proto) == ("audio", 45076, "UDP/TLS/RTP/SAVPF")
    assert audio.payload_types == [111, 103, 104, 9, 0, 8, 106, 105, 13, 110, 112, 113, 126]
    assert audio.connection == Connection("192.168.99.58", "IP4", "IN")
    assert sdp.media_connection(0) == audio.connection
    assert sdp.media_direction(0) == "sendrecv"
    assert audio.rtcp == RtcpAddress(9, "0.0.0.0", "IP4", "IN")
    assert audio.rtcp_mux is True
    assert audio.mid == "audio"
    assert audio.ptime is None and audio.maxptime is None
    assert audio.get("ice-ufrag") == "5+Ix"
    assert audio.get("ice-pwd") == "uK8IlylxzDMUhrkVzdmj0M+v"
    assert audio.get("setup") == "actpass"
    assert audio.get("fingerprint") == (
        "sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:D6:BC"
    )
    assert len(audio.get_all("candidate")) == 4
    assert audio.get_all("candidate")[1] == (
        "1039001212 1 udp 2122194687 192.168.99.58 45076 typ host generation 0 network-id 1 network-cost 10"
    )
    assert audio.rtpmaps[111] == RtpMap(111, "opus", 48000, 2)
    assert audio.fmtps[111].params == {"minptime": "10", "useinbandfec": "1"}
    assert [(c.payload_type, c.name, c.clock_rate, c.channels) for c in audio.codecs] == [
        (111, "opus", 48000, 2),
        (103, "ISAC", 16000, 1),
        (104, "ISAC", 32000, 1),
        (9, "G722", 8000, 1),
        (0, "PCMU", 8000, 1),
        (8, "PCMA", 8000, 1),
        (106, "CN", 32000, 1),
        (105, "CN", 16000, 1),
        (13, "CN", 8000, 1),
        (110, "telephone-event", 48000, 1),
        (112, "telephone-event", 32000, 1),
        (113, "telephone-event", 16000, 1),
        (126, "telephone-event", 8000, 1),
    ]
    assert audio.ssrcs[0] == SsrcAttribute(1944796561, "cname", "/vC4ULAr8vHNjXmq")
    assert [s.attribute for s in audio.ssrcs] == ["cname", "msid", "mslabel", "label"]
    # Every attribute stays, in its place, understood or not.
    assert [a.name for a in audio.attributes][:6] == [
        "rtcp",
        "candidate",
        "candidate",
        "candidate",
        "candidate",
        "ice-ufrag",
    ]
    assert audio.attributes[11] == Attribute("extmap", "1 urn:ietf:params:rtp-hdrext:ssrc-audio-level")
    assert audio.attributes[13] == Attribute("rtcp-mux")


def test_firefox_audio_typed_access():
    sdp = fixture("firefox_audio.sdp")
    assert sdp.origin.username == "mozilla...THIS_IS_SDPARTA-58.0.1"
    assert sdp.origin.session_id == "4934139885953732403"
    assert sdp.direction == "sendrecv"
    audio = sdp.media[0]
    assert audio.direction == "sendrecv"
    assert audio.rtcp == RtcpAddress(38612, "192.168.99.58", "IP4", "IN")
    assert audio.rtpmaps[9] == RtpMap(9, "G722", 8000, 1)
    assert audio.fmtps[109] == Fmtp("109", "maxplaybackrate=48000;stereo=1;useinbandfec=1")
    assert audio.fmtps[101].params == {"0-15": None}
    assert audio.codecs[-1] == Codec(101, "telephone-event", 8000, 1, Fmtp("101", "0-15"))
    assert audio.has("end-of-candidates")
    assert audio.get("end-of-candidates") == ""
    assert audio.get("nonexistent") is None
    assert audio.mid == "sdparta_0"
    assert sdp.media[0].ssrcs == [SsrcAttribute(882128807, "cname", "{ed463ac5-dabf-44d4-8b9f-e14318427b2b}")]


def test_freeswitch_session_level_connection():
    sdp = fixture("freeswitch_webrtc.sdp")
    assert sdp.connection == Connection("1.2.3.4")
    assert sdp.media[0].connection is None
    assert sdp.media_connection(0) == Connection("1.2.3.4")
    assert sdp.media[0].direction is None
    assert sdp.media_direction(0) == "sendrecv"
    assert sdp.media[0].ptime == 20
    assert sdp.media[0].get("setup") == "active"


def test_asterisk_pjsip_ptime_and_static_codecs():
    sdp = fixture("asterisk_pjsip.sdp")
    audio = sdp.media[0]
    assert (audio.ptime, audio.maxptime) == (20, 150)
    assert [c.name for c in audio.codecs] == ["PCMA", "PCMU", "G726-32", "G722", "GSM", "telephone-event"]
    assert audio.rtcp is None and not audio.rtcp_mux


def test_pjsua_bandwidths_and_rtcp():
    sdp = fixture("pjsua_answer.sdp")
    assert sdp.bandwidths == (Bandwidth("AS", 285),)
    assert sdp.media[0].bandwidths == (Bandwidth("TIAS", 256000),)
    assert sdp.get("X-nat") == "0"
    assert sdp.media[0].rtcp == RtcpAddress(4001, "192.168.88.121", "IP4", "IN")
    assert sdp.media[0].ssrcs == [SsrcAttribute(2705443, "cname", "39b32d12074d4dc8")]


def test_non_rtp_media_keeps_its_formats():
    sdp = fixture("firefox_datachannel.sdp")
    app = sdp.media[0]
    assert (app.media, app.proto, app.formats) == ("application", "UDP/DTLS/SCTP", ("webrtc-datachannel",))
    assert not app.is_rtp
    assert app.payload_types == [] and app.codecs == []
    assert app.get("sctp-port") == "5000"


def test_static_payload_types_without_rtpmap():
    sdp = parse(b"v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\nm=audio 5004 RTP/AVP 0 8 9 13 96\n")
    codecs = sdp.media[0].codecs
    # 96 has no rtpmap, so it has no name and is left out.
    assert [(c.payload_type, c.name, c.clock_rate) for c in codecs] == [
        (0, "PCMU", 8000),
        (8, "PCMA", 8000),
        (9, "G722", 8000),
        (13, "CN", 8000),
    ]


def test_direction_media_overrides_session():
    base = "v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\n"
    sdp = parse(base + "a=sendonly\nm=audio 1 RTP/AVP 0\na=recvonly\nm=audio 2 RTP/AVP 0\n")
    assert sdp.direction == "sendonly"
    assert sdp.media_direction(0) == "recvonly"
    assert sdp.media_direction(1) == "sendonly"
    assert parse(base + "m=audio 1 RTP/AVP 0\na=inactive\n").media_direction(0) == "inactive"
    assert parse(base + "m=audio 1 RTP/AVP 0\n").media_direction(0) == "sendrecv"


def test_every_line_type_round_trips():
    text = (
        "v=0\n"
        "o=jdoe 3724394400 3724394405 IN IP4 198.51.100.1\n"
        "s=Call to John Smith\n"
        "i=SDP Offer #1\n"
        "u=http://www.jdoe.example.com/home.html\n"
        "e=Jane Doe <jane@jdoe.example.com>\n"
        "p=+1 617 555-6011\n"
        "c=IN IP4 224.2.17.12/127/2\n"
        "b=CT:128\n"
        "t=3034423619 3042462419\n"
        "r=604800 3600 0 90000\n"
        "r=7d 1h 0 25h\n"
        "t=0 0\n"
        "z=2882844526 -1h 2898848070 0\n"
        "k=prompt\n"
        "a=recvonly\n"
        "m=audio 49170/2 RTP/AVP 0\n"
        "i=main audio\n"
        "c=IN IP6 ff15::101/3\n"
        "b=AS:64\n"
        "k=clear:secret\n"
        "a=ptime:20.0\n"
        "m=video 51372 RTP/AVP 99\n"
        "c=IN IP6 2001:db8::1\n"
        "a=rtpmap:99 h263-1998/90000\n"
    )
    sdp = parse(text)
    assert bytes(sdp) == crlf(text)
    assert parse(bytes(sdp)) == sdp
    assert sdp.information == "SDP Offer #1"
    assert sdp.uri == "http://www.jdoe.example.com/home.html"
    assert sdp.emails == ("Jane Doe <jane@jdoe.example.com>",)
    assert sdp.phones == ("+1 617 555-6011",)
    assert sdp.connection == Connection("224.2.17.12", "IP4", "IN", ttl=127, count=2)
    assert sdp.timings == (
        Timing(3034423619, 3042462419, ("604800 3600 0 90000", "7d 1h 0 25h")),
        Timing(0, 0),
    )
    assert sdp.zone == "2882844526 -1h 2898848070 0"
    assert sdp.key == "prompt"
    audio, video = sdp.media
    assert (audio.port, audio.port_count, audio.information, audio.key) == (49170, 2, "main audio", "clear:secret")
    assert audio.connection == Connection("ff15::101", "IP6", "IN", count=3)
    assert audio.ptime == 20
    assert video.connection == Connection("2001:db8::1", "IP6")


def test_lines_out_of_order_are_accepted_and_written_in_order():
    sdp = parse(b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\nt=0 0\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n")
    assert bytes(sdp) == (
        b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    )
    assert parse(bytes(sdp)) == sdp


def test_unknown_attributes_keep_their_order():
    text = (
        "v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nt=0 0\n"
        "a=x-custom:first\na=tool:thing 1.0\nm=audio 4000 RTP/AVP 0\n"
        "a=x-b\na=rtpmap:0 PCMU/8000\na=x-a:2\na=silenceSupp:off - - - -\na=x-b:again\n"
    )
    sdp = parse(text)
    assert [str(a) for a in sdp.attributes] == ["x-custom:first", "tool:thing 1.0"]
    assert [str(a) for a in sdp.media[0].attributes] == [
        "x-b",
        "rtpmap:0 PCMU/8000",
        "x-a:2",
        "silenceSupp:off - - - -",
        "x-b:again",
    ]
    assert sdp.media[0].get_all("x-b") == ["", "again"]
    assert bytes(sdp) == crlf(text)


def test_blank_and_trailing_lines_are_tolerated():
    sdp = parse(b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\n\r\nt=0 0\r\n\r\n\r\n")
    assert sdp.timings == (Timing(0, 0),)
    assert parse("v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nt=0 0") == sdp


def test_build_from_scratch():
    sdp = SessionDescription(
        origin=Origin("-", "42", 7, "127.0.0.1"),
        connection=Connection("127.0.0.1"),
        media=(
            MediaDescription(
                "audio",
                30000,
                "RTP/AVP",
                ("0", "101"),
                attributes=(
                    Attribute("rtpmap", "0 PCMU/8000"),
                    Attribute("rtpmap", "101 telephone-event/8000"),
                    Attribute("fmtp", "101 0-16"),
                    Attribute("sendrecv"),
                ),
            ),
        ),
    )
    assert str(sdp) == (
        "v=0\r\no=- 42 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 30000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-16\r\na=sendrecv\r\n"
    )
    assert parse(bytes(sdp)) == sdp
    assert SessionDescription.parse(str(sdp)) == sdp


HEAD = "v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nt=0 0\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "sdp line 1: expected 'v=0', got ''"),
        ("v=1\no=- 1 1 IN IP4 10.0.0.1\n", "sdp line 1: expected 'v=0', got 'v=1'"),
        ("o=- 1 1 IN IP4 10.0.0.1\nv=0\n", "sdp line 1: expected 'v=0', got 'o=- 1 1 IN IP4 10.0.0.1'"),
        ("v=0\ns=-\nt=0 0\n", "sdp: missing o= line"),
        ("v=0\no=- 1 x IN IP4 10.0.0.1\n", "sdp line 2: bad o= line 'o=- 1 x IN IP4 10.0.0.1'"),
        ("v=0\no=- 1 1 IN IP4\n", "sdp line 2: bad o= line 'o=- 1 1 IN IP4'"),
        ("v=0\no=- 1 1 IN IP4 10.0.0.1\nm=audio x RTP/AVP 0\n", "sdp line 3: bad m= line 'm=audio x RTP/AVP 0'"),
        (HEAD + "m=audio 70000 RTP/AVP 0\n", "sdp line 5: bad m= line 'm=audio 70000 RTP/AVP 0'"),
        (HEAD + "m=audio 4000 RTP/AVP PCMU\n", "sdp line 5: bad m= line 'm=audio 4000 RTP/AVP PCMU'"),
        (HEAD + "m=audio 4000\n", "sdp line 5: bad m= line 'm=audio 4000'"),
        (HEAD + "m=audio 4000/x RTP/AVP 0\n", "sdp line 5: bad m= line 'm=audio 4000/x RTP/AVP 0'"),
        (HEAD + "c=IN IP4\n", "sdp line 5: bad c= line 'c=IN IP4'"),
        (HEAD + "c=IN IP4 224.2.1.1/x\n", "sdp line 5: bad c= line 'c=IN IP4 224.2.1.1/x'"),
        (HEAD + "c=IN IP6 ff15::1/1/2\n", "sdp line 5: bad c= line 'c=IN IP6 ff15::1/1/2'"),
        (HEAD + "b=AS\n", "sdp line 5: bad b= line 'b=AS'"),
        ("v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nt=now\n", "sdp line 4: bad t= line 't=now'"),
        ("v=0\no=- 1 1 IN IP4 10.0.0.1\nr=7d 1h 0 25h\n", "sdp line 3: r= line before any t= line 'r=7d 1h 0 25h'"),
        (HEAD + "x=1\n", "sdp line 5: unknown line type 'x=1'"),
        (HEAD + "v=0\n", "sdp line 5: unknown line type 'v=0'"),
        (HEAD + "s=again\n", "sdp line 5: repeated s= line 's=again'"),
        (HEAD + "garbage\n", "sdp line 5: not a <type>=<value> line 'garbage'"),
        (HEAD + "a=\n", "sdp line 5: bad a= line 'a='"),
        (HEAD + "a=bad name:1\n", "sdp line 5: bad a= line 'a=bad name:1'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\nt=0 0\n", "sdp line 6: t= line not allowed in a media section 't=0 0'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\nc=IN IP4 1.1.1.1\nc=IN IP4 1.1.1.2\n",
         "sdp line 7: repeated c= line in a media section 'c=IN IP4 1.1.1.2'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\na=rtpmap:0 PCMU\n", "sdp line 6: bad a=rtpmap line 'a=rtpmap:0 PCMU'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\na=rtpmap:x PCMU/8000\n",
         "sdp line 6: bad a=rtpmap line 'a=rtpmap:x PCMU/8000'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\na=rtpmap:0 PCMU/8k\n", "sdp line 6: bad a=rtpmap line 'a=rtpmap:0 PCMU/8k'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\na=rtpmap:0 PCMU/0\n", "sdp line 6: bad a=rtpmap line 'a=rtpmap:0 PCMU/0'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\na=rtpmap:200 X/8000\n",
         "sdp line 6: bad a=rtpmap line 'a=rtpmap:200 X/8000'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\na=fmtp:\n", "sdp line 6: bad a=fmtp line 'a=fmtp:'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\na=ptime:abc\n", "sdp line 6: bad a=ptime line 'a=ptime:abc'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\na=maxptime:0\n", "sdp line 6: bad a=maxptime line 'a=maxptime:0'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\na=ptime:0.4\n", "sdp line 6: bad a=ptime line 'a=ptime:0.4'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\na=ptime:nan\n", "sdp line 6: bad a=ptime line 'a=ptime:nan'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\na=ptime:inf\n", "sdp line 6: bad a=ptime line 'a=ptime:inf'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\na=ptime:1e999\n", "sdp line 6: bad a=ptime line 'a=ptime:1e999'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\na=rtcp:port\n", "sdp line 6: bad a=rtcp line 'a=rtcp:port'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\na=rtcp:4001 IN IP4\n", "sdp line 6: bad a=rtcp line 'a=rtcp:4001 IN IP4'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\na=ssrc:12\n", "sdp line 6: bad a=ssrc line 'a=ssrc:12'"),
        (HEAD + "m=audio 4000 RTP/AVP 0\na=ssrc:99999999999 cname:x\n",
         "sdp line 6: bad a=ssrc line 'a=ssrc:99999999999 cname:x'"),
    ],
)
def test_bad_input_names_the_line(text, message):
    with pytest.raises(ProtocolError) as info:
        parse(text.encode())
    assert info.value.message == message
    assert info.value.status == 400


def test_not_utf8():
    with pytest.raises(ProtocolError) as info:
        parse(b"v=0\no=- 1 1 IN IP4 10.0.0.1\ns=\xff\n")
    assert info.value.message == "sdp is not UTF-8: invalid start byte at byte 30"


def test_lf_and_crlf_give_the_same_description():
    data = (FIXTURES / "asterisk_chan_sip.sdp").read_bytes()
    assert b"\r" not in data
    assert parse(data) == parse(data.replace(b"\n", b"\r\n")) == parse(data.decode())


# Anything a peer sends is either a description or a ProtocolError, never another exception.
_SDP_ALPHABET = st.sampled_from(
    ["v=0", "o=- 1 1 IN IP4 1.2.3.4", "s=-", "t=0 0", "c=IN IP4 1.2.3.4", "c=IN IP6 ::1/2", "m=audio 4000 RTP/AVP 0",
     "m=video 0 RTP/AVP 96", "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "a=rtpmap:0 PCMU/8000",
     "a=rtpmap:96 opus/48000/2", "a=fmtp:96 a=b;c", "a=ptime:20", "a=rtcp:9 IN IP4 0.0.0.0", "a=ssrc:1 cname:x",
     "a=sendonly", "a=x", "b=AS:64", "r=1 2 3", "k=clear:x", "i=info", "z=0 0", "", "a=rtpmap:", "m=", "c=",
     "a=ptime:", "a=rtcp:", "a=ssrc:", "x", "=", "a=:"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_SDP_ALPHABET | st.text(max_size=30), max_size=12), st.sampled_from(["\n", "\r\n"]))
def test_arbitrary_input_parses_or_raises_protocol_error(lines, ending):
    text = ending.join(lines)
    try:
        sdp = parse(text.encode("utf-8", "surrogatepass"))
    except ProtocolError:
        return
    assert parse(bytes(sdp)) == sdp
    # The typed views read only lines checked at parse time, so they cannot fail afterwards.
    for media in sdp.media:
        assert isinstance(media.codecs, list) and isinstance(media.fmtps, dict) and isinstance(media.ssrcs, list)
        assert media.rtcp is None or 0 <= media.rtcp.port <= 65535
        assert media.ptime is None or media.ptime > 0
