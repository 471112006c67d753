"""The `/call` leg: audio as binary frames on the application's own WebSocket.

The leg has no signalling of its own: it answers at once on `invite`/`accept` in the codec the
option names (no SDP), it has no incoming calls to ring or reject, no DTMF signalling (in-band
tones are found in the audio by the call) and nothing to transfer to. Frames from the client go
into a bounded pipe that the call's track drains on each media tick; frames to the client go to
the connection's outbox, which drops the oldest audio when the client reads too slowly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from actors.leg import LegAnswered, LegContext, LegMedia, LegRefused
from actors.pipes import AudioPipe
from protocol import api
from protocol.codecs import codec_info
from protocol.errors import ProtocolError

__all__ = ["UnavailableLeg", "WebSocketLeg"]


class WebSocketLeg:
    kind = "websocket"

    def __init__(self, context: LegContext, inbound: AudioPipe[bytes], send: Callable[[bytes], None]) -> None:
        self.context = context
        self.inbound = inbound
        self._send = send

    def pull(self) -> bytes | None:
        return self.inbound.pop_nowait()

    def send(self, payload: bytes) -> None:
        self._send(payload)

    async def dial(self, option: api.CallOption) -> LegAnswered:
        return LegAnswered(self._media(option))

    async def answer(self, option: api.CallOption) -> LegMedia:
        return self._media(option)

    async def ring(self, command: api.Ringing) -> LegMedia | None:
        raise LegRefused("a /call session has no incoming call to ring", 400)

    async def reject(self, code: int, reason: str) -> None:
        raise LegRefused("a /call session has no incoming call to reject", 400)

    async def send_dtmf(self, digits: str, duration_ms: int) -> None:
        raise LegRefused("a /call session carries DTMF only as audio", 400)

    async def transfer(self, command: api.Refer) -> None:
        raise LegRefused("transfer needs a SIP leg; this is a /call session", 400)

    async def hangup(self, reason: str, headers: Mapping[str, str] | None = None) -> None:
        """Nothing to signal: the application's connection closes after the hangup event."""

    async def close(self) -> None:
        self.inbound.close()

    @staticmethod
    def _media(option: api.CallOption) -> LegMedia:
        try:
            return LegMedia(codec_info(option.codec, option.samplerate), sdp="")
        except ProtocolError as exc:
            raise LegRefused(f"option.codec: {exc}", 400) from None


class UnavailableLeg:
    """A call type this gateway cannot carry: every attempt to place or answer it is refused
    with 501, and the call can still be hung up cleanly."""

    def __init__(self, context: LegContext, kind: str) -> None:
        self.context = context
        self.kind = kind

    def pull(self) -> bytes | None:
        return None

    def send(self, payload: bytes) -> None:
        pass

    def _refused(self) -> LegRefused:
        return LegRefused(f"the /call/{self.kind} leg is not available in this version of the gateway", 501)

    async def dial(self, option: api.CallOption) -> None:
        raise self._refused()

    async def answer(self, option: api.CallOption) -> LegMedia:
        raise self._refused()

    async def ring(self, command: api.Ringing) -> LegMedia | None:
        raise self._refused()

    async def reject(self, code: int, reason: str) -> None:
        raise self._refused()

    async def send_dtmf(self, digits: str, duration_ms: int) -> None:
        raise self._refused()

    async def transfer(self, command: api.Refer) -> None:
        raise self._refused()

    async def hangup(self, reason: str, headers: Mapping[str, str] | None = None) -> None:
        pass

    async def close(self) -> None:
        pass
