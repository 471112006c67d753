"""SIP timer values (RFC 3261 §17 and Table 4, RFC 6026) and a small deadline registry.

Time is a float of seconds supplied by the caller; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TimerConfig", "Timers"]


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """T1/T2/T4 and the values derived from them.

    ``timer_d`` is the INVITE client's wait for response retransmissions over unreliable
    transports: at least 32 s (RFC 3261 §17.1.1.2), independent of T1.

    ``trying_delay`` is how long an INVITE server transaction waits for the TU's first response
    before it sends 100 Trying itself (§17.2.1 "if the TU will not respond within 200 ms");
    0 sends it at once, None never.
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_d: float = 32.0
    trying_delay: float | None = 0.2

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.t4 >= 0 and self.timer_d >= 0):
            raise ValueError(f"inconsistent timer values {self!r}")
        if self.trying_delay is not None and self.trying_delay < 0:
            raise ValueError("trying_delay must be >= 0 or None")

    @property
    def transaction_timeout(self) -> float:
        """64·T1: timers B, F, H, J (unreliable), L and M."""
        return 64 * self.t1

    def d(self, reliable: bool) -> float:
        return 0.0 if reliable else self.timer_d

    def i(self, reliable: bool) -> float:
        return 0.0 if reliable else self.t4

    def j(self, reliable: bool) -> float:
        return 0.0 if reliable else self.transaction_timeout

    def k(self, reliable: bool) -> float:
        return 0.0 if reliable else self.t4


class Timers:
    """Named deadlines of one state machine. At most one deadline per name."""

    __slots__ = ("_deadlines",)

    def __init__(self) -> None:
        self._deadlines: dict[str, float] = {}

    def arm(self, name: str, deadline: float) -> None:
        self._deadlines[name] = deadline

    def cancel(self, *names: str) -> None:
        for name in names:
            self._deadlines.pop(name, None)

    def clear(self) -> None:
        self._deadlines.clear()

    def deadline(self, name: str) -> float | None:
        return self._deadlines.get(name)

    def earliest(self) -> float | None:
        return min(self._deadlines.values(), default=None)

    def pop_due(self, now: float) -> tuple[str, float] | None:
        """Remove and return the earliest (name, deadline) at or before ``now``, if any."""
        if not self._deadlines:
            return None
        name = min(self._deadlines, key=self._deadlines.__getitem__)
        deadline = self._deadlines[name]
        if deadline > now:
            return None
        del self._deadlines[name]
        return name, deadline

    def __contains__(self, name: str) -> bool:
        return name in self._deadlines

    def __repr__(self) -> str:
        return f"Timers({self._deadlines!r})"
