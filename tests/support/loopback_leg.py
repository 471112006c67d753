"""An in-memory leg: the far party is the test. It proves a leg plugs into a Call through the seam
alone (actors/leg.py): answer later or at once, audio both ways, DTMF and hold reported by the
far side, a remote hangup, and a record of what the Call asked of it."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from actors.leg import LegAnswered, LegContext, LegDtmf, LegHangup, LegHold, LegMedia, LegRinging
from protocol import api
from protocol.codecs import CodecInfo, codec_info


class LoopbackLeg:
    kind = "loopback"

    def __init__(self, context: LegContext, *, codec: CodecInfo | None = None, answer_at_once: bool = False,
                 sdp: str = "v=0 loopback") -> None:
        self.context = context
        self.codec = codec or codec_info("pcmu", 8000)
        self.answer_at_once = answer_at_once
        self.sdp = sdp
        self.from_peer: deque[bytes] = deque(maxlen=100)
        self.to_peer: list[bytes] = []
        self.asked: list[tuple] = []
        self.closed = False

    # media plane
    def pull(self) -> bytes | None:
        return self.from_peer.popleft() if self.from_peer else None

    def send(self, payload: bytes) -> None:
        self.to_peer.append(payload)

    # control plane
    async def dial(self, option: api.CallOption):
        self.asked.append(("dial", option.callee))
        return LegAnswered(self.media()) if self.answer_at_once else None

    async def ring(self, command: api.Ringing):
        self.asked.append(("ring", command.early_media))
        return self.media() if command.early_media else None

    async def answer(self, option: api.CallOption) -> LegMedia:
        self.asked.append(("answer",))
        return self.media()

    async def reject(self, code: int, reason: str) -> None:
        self.asked.append(("reject", code, reason))

    async def send_dtmf(self, digits: str, duration_ms: int) -> None:
        self.asked.append(("dtmf", digits))

    async def transfer(self, command: api.Refer) -> None:
        self.asked.append(("transfer", command.callee))

    async def hangup(self, reason: str, headers: Mapping[str, str] | None = None) -> None:
        self.asked.append(("hangup", reason))

    async def close(self) -> None:
        self.asked.append(("close",))
        self.closed = True

    # the far party's side
    def media(self) -> LegMedia:
        return LegMedia(self.codec, self.sdp)

    def far_rings(self, early_media: bool = False) -> None:
        self.context.report(LegRinging(self.media() if early_media else None))

    def far_answers(self) -> None:
        self.context.report(LegAnswered(self.media()))

    def far_presses(self, digit: str, at_ms: int, source: str = "rfc4733") -> None:
        self.context.report(LegDtmf(digit, at_ms, source))

    def far_holds(self, held: bool) -> None:
        self.context.report(LegHold(held))

    def far_hangs_up(self, reason: str = "bye") -> None:
        self.context.report(LegHangup(reason, "callee"))
