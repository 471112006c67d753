"""A time-driven jitter buffer for one audio stream.

Packets are placed by RTP timestamp; the caller calls ``pop(now)`` once per ptime and gets the
payload due at that tick, a ``Gap`` when that frame is missing (conceal or play silence), or None
before playout has started. Playout starts ``target_delay_ms`` after the first packet arrives and
then advances one frame per tick whatever arrives, so the caller's clock paces the stream.

A packet that arrives after its frame was played is late and dropped; one that lands more than
``max_delay_ms`` ahead of the playout point (a sender running fast, a burst after a stall, a
timestamp jump) moves playout forward so it sits at the target delay again, and the frames
skipped are counted. A packet far behind playout (a timestamp jump backwards) does the same.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from protocol.rtp import RtpPacket, TimestampUnwrapper

_RECENT_PLAYED = 64


@dataclass(frozen=True, slots=True)
class Gap:
    """The frame at ``timestamp`` (RTP units) is missing at its playout time."""

    timestamp: int


@dataclass(frozen=True, slots=True)
class JitterStats:
    received: int
    played: int
    gaps: int
    late: int
    duplicates: int
    skipped: int
    resyncs: int
    ssrc_changes: int
    depth: int
    delay_ms: float


class JitterBuffer:
    """Reorders and paces the packets of one stream; see the module docstring for the policy."""

    __slots__ = (
        "clock_rate",
        "ptime_ms",
        "samples_per_frame",
        "_period",
        "_delay",
        "_delay_frames",
        "_max_span",
        "_frames",
        "_seqs",
        "_unwrap",
        "_ssrc",
        "_next_ts",
        "_next_due",
        "_recent",
        "_recent_set",
        "_received",
        "_played",
        "_gaps",
        "_late",
        "_duplicates",
        "_skipped",
        "_resyncs",
        "_ssrc_changes",
    )

    def __init__(
        self,
        clock_rate: int,
        ptime_ms: int = 20,
        target_delay_ms: int = 60,
        max_delay_ms: int | None = None,
    ) -> None:
        if ptime_ms <= 0 or clock_rate <= 0 or target_delay_ms < 0:
            raise ValueError("clock_rate and ptime_ms must be positive, target_delay_ms not negative")
        self.clock_rate = clock_rate
        self.ptime_ms = ptime_ms
        self.samples_per_frame = clock_rate * ptime_ms // 1000
        self._period = ptime_ms / 1000.0
        self._delay = target_delay_ms / 1000.0
        self._delay_frames = -(-target_delay_ms // ptime_ms)
        if max_delay_ms is None:
            max_delay_ms = max(4 * target_delay_ms, target_delay_ms + 200)
        max_frames = max(self._delay_frames + 1, max_delay_ms // ptime_ms)
        self._max_span = max_frames * self.samples_per_frame
        self._frames: dict[int, bytes] = {}
        self._seqs: dict[int, int] = {}
        self._unwrap = TimestampUnwrapper()
        self._ssrc: int | None = None
        self._next_ts: int | None = None
        self._next_due: float | None = None
        self._recent: deque[int] = deque()
        self._recent_set: set[int] = set()
        self._received = self._played = self._gaps = self._late = 0
        self._duplicates = self._skipped = self._resyncs = self._ssrc_changes = 0

    def push(self, packet: RtpPacket, now: float) -> bool:
        """Offer a packet; False when it is dropped (late or duplicate)."""
        self._received += 1
        if self._ssrc is None:
            self._ssrc = packet.ssrc
        elif packet.ssrc != self._ssrc:
            self._ssrc = packet.ssrc
            self._ssrc_changes += 1
            self._skipped += len(self._frames)
            self._frames.clear()
            self._seqs.clear()
            self._forget_played()
            self._unwrap = TimestampUnwrapper()
            if self._next_ts is not None:
                ext = self._unwrap.unwrap(packet.timestamp)
                self._resync(ext, counted=False)
                return self._store(ext, packet)
        ext = self._unwrap.unwrap(packet.timestamp)
        if self._next_due is None:
            self._next_due = now + self._delay
            return self._store(ext, packet)
        # Before the first pop the playout point is the earliest frame held.
        reference = self._next_ts
        if reference is None and self._frames:
            reference = min(self._frames)
        if reference is not None:
            offset = ext - reference
            if offset < -self._max_span or offset >= self._max_span:
                self._resync(ext)
            elif offset < 0 and self._next_ts is not None:
                if packet.sequence_number in self._recent_set:
                    self._duplicates += 1
                else:
                    self._late += 1
                return False
        if ext in self._frames:
            self._duplicates += 1
            return False
        return self._store(ext, packet)

    def pop(self, now: float) -> bytes | Gap | None:
        """The payload due at this tick, a Gap if it is missing, or None when it is not time yet."""
        due = self._next_due
        if due is None or now < due - self._period / 2:
            return None
        # Lock the cadence to the caller's ticks once they are within half a period of it (a due
        # time half-way between two ticks must not make float rounding pick one tick or the other
        # from call to call); a caller more than a second behind restarts it instead of bursting.
        if abs(now - due) <= self._period / 2 + 1e-6 or now - due >= 1.0:
            self._next_due = now + self._period
        else:
            self._next_due = due + self._period
        if self._next_ts is None:
            if not self._frames:
                return None
            self._next_ts = min(self._frames)
        target = self._next_ts
        half = self.samples_per_frame // 2
        best = min(self._frames) if self._frames else None
        if best is not None and best <= target + half:
            payload = self._frames.pop(best)
            seq = self._seqs.pop(best)
            self._remember_played(seq)
            self._next_ts = best + self.samples_per_frame
            self._played += 1
            return payload
        self._next_ts = target + self.samples_per_frame
        self._gaps += 1
        return Gap(target & 0xFFFFFFFF)

    def reset(self) -> None:
        """Forget everything buffered and the playout clock (e.g. after a re-INVITE changed the stream)."""
        self._frames.clear()
        self._seqs.clear()
        self._forget_played()
        self._unwrap = TimestampUnwrapper()
        self._ssrc = None
        self._next_ts = None
        self._next_due = None

    def stats(self) -> JitterStats:
        delay_ms = 0.0
        if self._frames:
            start = self._next_ts if self._next_ts is not None else min(self._frames)
            span = max(self._frames) - start + self.samples_per_frame
            delay_ms = span * 1000.0 / self.clock_rate
        return JitterStats(
            received=self._received,
            played=self._played,
            gaps=self._gaps,
            late=self._late,
            duplicates=self._duplicates,
            skipped=self._skipped,
            resyncs=self._resyncs,
            ssrc_changes=self._ssrc_changes,
            depth=len(self._frames),
            delay_ms=delay_ms,
        )

    def _store(self, ext: int, packet: RtpPacket) -> bool:
        self._frames[ext] = packet.payload
        self._seqs[ext] = packet.sequence_number
        return True

    def _resync(self, ext: int, counted: bool = True) -> None:
        # Put the packet at the target delay from the playout point; the ticks in between are gaps.
        if counted:
            self._resyncs += 1
        new_next = ext - self._delay_frames * self.samples_per_frame
        for ts in [t for t in self._frames if t < new_next]:
            del self._frames[ts]
            del self._seqs[ts]
            self._skipped += 1
        self._next_ts = new_next

    def _remember_played(self, seq: int) -> None:
        self._recent.append(seq)
        self._recent_set.add(seq)
        if len(self._recent) > _RECENT_PLAYED:
            self._recent_set.discard(self._recent.popleft())

    def _forget_played(self) -> None:
        self._recent.clear()
        self._recent_set.clear()
