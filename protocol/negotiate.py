"""Offer/answer (RFC 3264) for one audio stream, with codecs from a caller's preference list.

The gateway carries one audio stream per call and sends one codec on it, so an answer accepts the
first audio stream it can serve, names exactly one codec there (plus telephone-event at that
codec's clock rate when wanted), and rejects every other stream with port 0, keeping the m= lines
in the offer's order as RFC 3264 section 6 requires.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from protocol.errors import ProtocolError
from protocol.sdp import (
    DIRECTIONS,
    Attribute,
    Codec,
    Connection,
    MediaDescription,
    Origin,
    SessionDescription,
    Timing,
)

NOT_ACCEPTABLE = 488

# Every RTP profile is accepted by default; securing the transport (SDES, DTLS) is the transport's
# business, and a leg that cannot do it passes a narrower set so such streams are refused.
RTP_PROFILES = frozenset(
    {
        "RTP/AVP",
        "RTP/AVPF",
        "RTP/SAVP",
        "RTP/SAVPF",
        "UDP/TLS/RTP/SAVP",
        "UDP/TLS/RTP/SAVPF",
        "TCP/TLS/RTP/SAVPF",
    }
)

DEFAULT_PTIME = 20
TELEPHONE_EVENT = "telephone-event"
# Codecs that ride along with a real one and are never "the" codec of a stream.
_AUXILIARY = frozenset({"telephone-event", "cn", "red", "ulpfec", "rtx"})
_FIRST_DYNAMIC_PT = 96


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """A codec the gateway can carry. ``clock_rate`` is the RTP clock, ``sample_rate`` the audio's."""

    name: str
    clock_rate: int
    sample_rate: int
    channels: int = 1
    static_pt: int | None = None
    fmtp: str | None = None

    def matches(self, codec: Codec) -> bool:
        if codec.name.lower() != self.name.lower() or codec.channels != self.channels:
            return False
        # Some stacks write G722/16000, the sampling rate, where RFC 3551 fixed the clock at 8000.
        if self.name == "G722":
            return codec.clock_rate in (8000, 16000)
        return codec.clock_rate == self.clock_rate


KNOWN_CODECS: dict[str, CodecSpec] = {
    "pcmu": CodecSpec("PCMU", 8000, 8000, static_pt=0),
    "pcma": CodecSpec("PCMA", 8000, 8000, static_pt=8),
    "g722": CodecSpec("G722", 8000, 16000, static_pt=9),
    "opus": CodecSpec("opus", 48000, 48000, channels=2, fmtp="minptime=10;useinbandfec=1"),
}


def codec_spec(name: str) -> CodecSpec:
    """The spec of a codec by name ("PCMU", "pcma", "G722", "opus"); ValueError if unknown."""
    try:
        return KNOWN_CODECS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; known: {sorted(KNOWN_CODECS)}") from None


@dataclass(frozen=True, slots=True)
class NegotiatedCodec:
    name: str
    payload_type: int
    clock_rate: int
    sample_rate: int
    channels: int = 1
    fmtp: str | None = None


@dataclass(frozen=True, slots=True)
class NegotiatedMedia:
    """What both sides agreed on for the audio stream, seen from this side.

    ``direction`` is what this side does (``sendonly``: we send, the far end does not). ``on_hold``
    is true when the far end asked not to be sent media (sendonly, inactive, or ``c=0.0.0.0``).
    ``remote_address`` is None when the far end gave the null address.
    """

    index: int
    codec: NegotiatedCodec
    telephone_event_pt: int | None
    remote_address: str | None
    remote_port: int
    remote_rtcp: tuple[str, int] | None
    rtcp_mux: bool
    ptime: int
    direction: str
    on_hold: bool


class SdpSession:
    """The ``o=`` line of this side for one call: a fixed id and a version bumped on every new SDP."""

    __slots__ = ("address", "session_id", "username", "version", "_issued")

    def __init__(
        self,
        address: str,
        session_id: int | None = None,
        version: int = 0,
        username: str = "-",
    ) -> None:
        self.address = address
        self.session_id = secrets.randbits(62) if session_id is None else session_id
        self.version = version
        self.username = username
        self._issued = False

    def next_origin(self) -> Origin:
        """The origin for the next offer or answer; the first keeps ``version``, each later one bumps it."""
        if self._issued:
            self.version += 1
        self._issued = True
        return Origin(self.username, str(self.session_id), self.version, self.address, "IN", _addrtype(self.address))


def _addrtype(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _flags(direction: str) -> tuple[bool, bool]:
    return direction in ("sendrecv", "sendonly"), direction in ("sendrecv", "recvonly")


def _direction(send: bool, recv: bool) -> str:
    if send and recv:
        return "sendrecv"
    if send:
        return "sendonly"
    return "recvonly" if recv else "inactive"


def _reverse_view(remote_direction: str, remote_connection: Connection | None, wanted: str) -> tuple[str, bool]:
    """This side's direction given the far end's, and whether the far end holds us."""
    remote_send, remote_recv = _flags(remote_direction)
    # RFC 2543 hold: c=0.0.0.0 means "do not send to me", whatever the direction attribute says.
    if remote_connection is not None and remote_connection.is_null:
        remote_recv = False
    want_send, want_recv = _flags(wanted)
    return _direction(want_send and remote_recv, want_recv and remote_send), not remote_recv


def _remote_rtcp(media: MediaDescription, address: str | None, mux: bool) -> tuple[str, int] | None:
    if mux or address is None:
        return None
    rtcp = media.rtcp
    if rtcp is None:
        return address, media.port + 1
    return rtcp.address or address, rtcp.port


def _rtpmap_value(pt: int, spec_name: str, clock_rate: int, channels: int) -> str:
    text = f"{pt} {spec_name}/{clock_rate}"
    return f"{text}/{channels}" if channels != 1 else text


def _session(session: SdpSession, address: str, medias: Sequence[MediaDescription]) -> SessionDescription:
    return SessionDescription(
        origin=session.next_origin(),
        name="-",
        connection=Connection(address, _addrtype(address)),
        timings=(Timing(0, 0),),
        media=tuple(medias),
    )


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")


def _specs(prefs: Iterable[str]) -> tuple[list[CodecSpec], bool]:
    audio = []
    telephone_event = False
    for name in prefs:
        if name.lower() == TELEPHONE_EVENT:
            telephone_event = True
        else:
            audio.append(codec_spec(name))
    return audio, telephone_event


def make_offer(
    session: SdpSession,
    prefs: Sequence[str],
    local_addr: str,
    local_port: int,
    *,
    ptime: int = DEFAULT_PTIME,
    direction: str = "sendrecv",
    proto: str = "RTP/AVP",
    rtcp_mux: bool = False,
    telephone_event_pt: int = 101,
    media_attributes: Iterable[Attribute] = (),
) -> SessionDescription:
    """An offer of one audio stream with the codecs of ``prefs`` in that order.

    ``telephone-event`` in ``prefs`` offers it once per distinct clock rate of the audio codecs,
    the first at ``telephone_event_pt``. Each call takes a new origin version from ``session``,
    so a re-offer (e.g. ``direction="sendonly"`` to hold) is numbered after the last SDP.
    """
    _check_direction(direction)
    specs, with_events = _specs(prefs)
    if not specs:
        raise ValueError("an offer needs at least one audio codec")
    used = {s.static_pt for s in specs if s.static_pt is not None}
    if with_events:
        used.add(telephone_event_pt)

    def dynamic_pt() -> int:
        pt = _FIRST_DYNAMIC_PT
        while pt in used:
            pt += 1
        used.add(pt)
        return pt

    formats: list[int] = []
    attrs: list[Attribute] = []
    for spec in specs:
        pt = spec.static_pt if spec.static_pt is not None else dynamic_pt()
        formats.append(pt)
        attrs.append(Attribute("rtpmap", _rtpmap_value(pt, spec.name, spec.clock_rate, spec.channels)))
        if spec.fmtp:
            attrs.append(Attribute("fmtp", f"{pt} {spec.fmtp}"))
    if with_events:
        rates = list(dict.fromkeys(s.clock_rate for s in specs))
        for n, rate in enumerate(rates):
            pt = telephone_event_pt if n == 0 else dynamic_pt()
            formats.append(pt)
            attrs.append(Attribute("rtpmap", f"{pt} {TELEPHONE_EVENT}/{rate}"))
            attrs.append(Attribute("fmtp", f"{pt} 0-16"))
    attrs.append(Attribute("ptime", str(ptime)))
    if rtcp_mux:
        attrs.append(Attribute("rtcp-mux"))
    attrs.append(Attribute(direction))
    attrs.extend(media_attributes)
    media = MediaDescription("audio", local_port, proto, tuple(map(str, formats)), attributes=tuple(attrs))
    return _session(session, local_addr, [media])


def _rejected(media: MediaDescription) -> MediaDescription:
    # A refused stream keeps its formats (RFC 3264 section 6) and its mid, so BUNDLE peers can match it.
    mid = media.get("mid")
    attrs = (Attribute("mid", mid),) if mid is not None else ()
    formats = media.formats or ("0",)
    return MediaDescription(media.media, 0, media.proto, formats, attributes=attrs)


def _choose(media: MediaDescription, specs: Sequence[CodecSpec]) -> tuple[CodecSpec, Codec] | None:
    codecs = media.codecs
    for spec in specs:
        for codec in codecs:
            if spec.matches(codec):
                return spec, codec
    return None


def _telephone_event(media: MediaDescription, clock_rate: int) -> Codec | None:
    for codec in media.codecs:
        if codec.name.lower() == TELEPHONE_EVENT and codec.clock_rate == clock_rate:
            return codec
    return None


def answer(
    offer: SessionDescription,
    prefs: Sequence[str],
    local_addr: str,
    local_port: int,
    *,
    session: SdpSession | None = None,
    ptime: int | None = None,
    direction: str = "sendrecv",
    protos: Collection[str] = RTP_PROFILES,
    rtcp_mux: bool = True,
    media_attributes: Iterable[Attribute] = (),
) -> tuple[SessionDescription, NegotiatedMedia]:
    """Answer ``offer`` (RFC 3264): accept the first audio stream with a codec from ``prefs``.

    Codecs are tried in the order of ``prefs``; ``telephone-event`` in ``prefs`` accepts the
    offer's telephone-event payload type at the chosen codec's clock rate. ``direction`` is what
    this side wants; the answer's direction is that, narrowed by the offer's (a sendonly offer is
    answered recvonly, inactive with inactive, ``c=0.0.0.0`` as a hold). The answer carries the
    offer's ptime, or ``ptime`` when the offer has none. ``rtcp_mux`` accepts an offered rtcp-mux.
    Raises ProtocolError with status 488 when no stream can be accepted.
    """
    _check_direction(direction)
    specs, with_events = _specs(prefs)
    session = session if session is not None else SdpSession(local_addr)
    medias: list[MediaDescription] = []
    negotiated: NegotiatedMedia | None = None
    for index, media in enumerate(offer.media):
        choice = None
        if negotiated is None and media.media == "audio" and media.port != 0 and media.proto in protos:
            choice = _choose(media, specs)
        if choice is None:
            medias.append(_rejected(media))
            continue
        spec, codec = choice
        events = _telephone_event(media, spec.clock_rate) if with_events else None
        remote_conn = offer.media_connection(index)
        ours, on_hold = _reverse_view(offer.media_direction(index), remote_conn, direction)
        mux = rtcp_mux and media.rtcp_mux
        send_ptime = media.ptime or ptime or DEFAULT_PTIME

        attrs = [Attribute("rtpmap", _rtpmap_value(codec.payload_type, spec.name, spec.clock_rate, spec.channels))]
        if codec.fmtp is not None:
            attrs.append(Attribute("fmtp", str(codec.fmtp)))
        formats = [str(codec.payload_type)]
        if events is not None:
            formats.append(str(events.payload_type))
            attrs.append(Attribute("rtpmap", f"{events.payload_type} {TELEPHONE_EVENT}/{events.clock_rate}"))
            event_range = events.fmtp.raw if events.fmtp is not None and events.fmtp.raw else "0-16"
            attrs.append(Attribute("fmtp", f"{events.payload_type} {event_range}"))
        attrs.append(Attribute("ptime", str(send_ptime)))
        if mux:
            attrs.append(Attribute("rtcp-mux"))
        if media.mid is not None:
            attrs.append(Attribute("mid", media.mid))
        attrs.append(Attribute(ours))
        attrs.extend(media_attributes)
        medias.append(MediaDescription(media.media, local_port, media.proto, tuple(formats), attributes=tuple(attrs)))

        remote_address = None if remote_conn is None or remote_conn.is_null else remote_conn.address
        negotiated = NegotiatedMedia(
            index=index,
            codec=NegotiatedCodec(
                spec.name,
                codec.payload_type,
                spec.clock_rate,
                spec.sample_rate,
                spec.channels,
                codec.fmtp.raw if codec.fmtp is not None else None,
            ),
            telephone_event_pt=events.payload_type if events is not None else None,
            remote_address=remote_address,
            remote_port=media.port,
            remote_rtcp=_remote_rtcp(media, remote_address, mux),
            rtcp_mux=mux,
            ptime=send_ptime,
            direction=ours,
            on_hold=on_hold,
        )
    if negotiated is None:
        offered = "; ".join(
            f"{m.media} {m.proto} " + (",".join(f"{c.name}/{c.clock_rate}" for c in m.codecs) or "-")
            for m in offer.media
        )
        raise ProtocolError(f"no acceptable codec in any stream (offered: {offered or 'no streams'})", NOT_ACCEPTABLE)
    return _session(session, local_addr, medias), negotiated


def process_answer(
    offer: SessionDescription, answer_sdp: SessionDescription, *, direction: str | None = None
) -> NegotiatedMedia:
    """Read the far end's answer to our ``offer``: its codec, address, port, direction, telephone-event.

    The codec is the first of the answer's formats that we offered (by name and clock rate); we
    send with the answer's payload type for it. ``direction`` is what we offered (read from the
    offer when None). Raises ProtocolError (488) when the answer refused the audio stream.
    """
    if len(answer_sdp.media) != len(offer.media):
        raise ProtocolError(
            f"sdp answer has {len(answer_sdp.media)} m= lines, the offer had {len(offer.media)}", NOT_ACCEPTABLE
        )
    index = next(
        (i for i, m in enumerate(offer.media) if m.media == "audio" and m.port != 0),
        None,
    )
    if index is None:
        raise ProtocolError("sdp offer has no audio stream to match the answer against")
    ours = offer.media[index]
    theirs = answer_sdp.media[index]
    if theirs.port == 0:
        raise ProtocolError("sdp answer refused the audio stream (port 0)", NOT_ACCEPTABLE)

    offered = [c for c in ours.codecs if c.name.lower() not in _AUXILIARY]

    def was_offered(codec: Codec) -> bool:
        return any(
            o.name.lower() == codec.name.lower()
            and o.channels == codec.channels
            and (o.clock_rate == codec.clock_rate or o.name.upper() == "G722")
            for o in offered
        )

    codec = next((c for c in theirs.codecs if c.name.lower() not in _AUXILIARY and was_offered(c)), None)
    if codec is None:
        raise ProtocolError("sdp answer has no codec that was offered", NOT_ACCEPTABLE)
    spec = KNOWN_CODECS.get(codec.name.lower())
    clock_rate = spec.clock_rate if spec is not None else codec.clock_rate
    sample_rate = spec.sample_rate if spec is not None else codec.clock_rate
    events = _telephone_event(theirs, clock_rate)

    conn = answer_sdp.media_connection(index)
    remote_address = None if conn is None or conn.is_null else conn.address
    ours_direction = direction or offer.media_direction(index)
    mine_now, on_hold = _reverse_view(answer_sdp.media_direction(index), conn, ours_direction)
    mux = ours.rtcp_mux and theirs.rtcp_mux
    return NegotiatedMedia(
        index=index,
        codec=NegotiatedCodec(
            spec.name if spec is not None else codec.name,
            codec.payload_type,
            clock_rate,
            sample_rate,
            codec.channels,
            codec.fmtp.raw if codec.fmtp is not None else None,
        ),
        telephone_event_pt=events.payload_type if events is not None else None,
        remote_address=remote_address,
        remote_port=theirs.port,
        remote_rtcp=_remote_rtcp(theirs, remote_address, mux),
        rtcp_mux=mux,
        ptime=theirs.ptime or ours.ptime or DEFAULT_PTIME,
        direction=mine_now,
        on_hold=on_hold,
    )
