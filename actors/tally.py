"""Process-wide counts that calls and supervisors add to as things happen; `/metrics` reads them.

Labels are bounded on purpose: a hangup reason or a provider name a client made up is counted
under ``other``, so that no client can grow the series (and the gateway's memory) without limit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

# How calls end (docs/behaviour.md, the hangup table): every reason the gateway itself gives.
# A `hangup` or `reject` command's own reason is the client's text: the call counts it as
# `hangup_command` or `rejected`.
HANGUP_REASONS = frozenset({
    "hangup_command", "rejected", "killed", "client_disconnected", "client_too_slow", "shutdown",
    "media_failure", "internal_error", "byCallee", "byCaller", "canceled", "webhook_failed", "timeout",
    "dialog_gone", "accept_timeout", "transferred", "autohangup", "inactivity_timeout", "peer_closed",
})
OTHER = "other"
# Playout jitter of one call (the p99 of its clock ticks' deviation from 20 ms), in seconds.
JITTER_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    samples: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.total += value
        self.samples += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1


@dataclass
class Tally:
    """Counts of one gateway (tests run several in one process: each has its own)."""

    calls_ended: Counter[str] = field(default_factory=Counter)                  # outcome
    provider_errors: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # service, provider, kind
    restarts: Counter[str] = field(default_factory=Counter)                     # kind
    playout_jitter: Histogram = field(default_factory=lambda: Histogram(JITTER_BUCKETS))
    known_providers: frozenset[str] = frozenset()

    def call_ended(self, outcome: str) -> None:
        self.calls_ended[outcome if outcome in HANGUP_REASONS else OTHER] += 1

    def provider_error(self, service: str, provider: str, permanent: bool) -> None:
        name = provider if provider in self.known_providers else OTHER
        self.provider_errors[(service, name, "permanent" if permanent else "transient")] += 1

    def restarted(self, kind: str) -> None:
        self.restarts[kind] += 1

    def with_providers(self, names: Collection[str]) -> Tally:
        self.known_providers = frozenset(names)
        return self
