"""In-band DTMF: key presses found in the call's audio, and one key press out of several reports.

`DtmfDetector` listens to one direction of one call (16-bit PCM at any rate that is a multiple of
100 Hz, 8 kHz and up) and reports each key press once. `DtmfDeduplicator` merges the reports of
the same press that reach the gateway in-band, as RFC 4733 telephone-events and as SIP INFO.

How the detector decides (ITU-T Q.23 frequencies, Q.24 recognition guidance)
-----------------------------------------------------------------------------
The audio is cut into 10 ms blocks. For each block one matrix product gives the single-bin DFT
(what a Goertzel filter yields at the end of the block) at the eight key frequencies and at their
second harmonics. A "hit" is a pair of consecutive blocks that both carry the same row tone and
column tone and pass every test below; it stands for those 20 ms. The tests, with `DtmfLimits`
defaults:

* frequency: the phase each tone advances from one block to the next gives its frequency to a
  fraction of a hertz, but only modulo 100 Hz; the phase across the two halves of a block (a
  coarser estimate, unambiguous within +-100 Hz) picks the right lap, so 1633 Hz - 61 Hz is not
  read as 1633 Hz + 39 Hz. A tone within +-2.5 % of nominal is accepted: Q.24 asks for
  acceptance within +-1.5 % and rejection beyond +-3.5 %, and on the generated recordings the
  estimate strays by at most 0.5 %, so 2.5 % keeps both margins;
* level: each tone at least -30 dBm0 after correcting for its frequency offset (0 dBm0 is the
  sine 3.17 dB below full scale, as in G.711);
* twist: the high-group tone at most 8 dB below the low-group one (normal twist: lines lose more
  of the high group) and at most 4 dB above it (reverse twist);
* energy ratio: the two tones hold at least 80 % of the energy of the two blocks. Key presses
  measured 0.93-1.06 (clean, G.711, 15 dB of white noise); the speech fixtures' block pairs that
  passed every other test measured at most 0.58;
* second harmonics: neither tone has a second harmonic within 15 dB of itself, once what the two
  tones themselves leak into those bins is subtracted (twice 697 Hz lies 58 Hz from 1336 Hz);
  voiced speech is a harmonic series, a DTMF sender is not;
* stability: each tone's level changes by at most 3 dB from one block to the next, so a block
  the tone only partly covers does not count, and neither does a gliding formant.

A key press starts after `min_hits` consecutive hits of one digit (2 for the 40 ms minimum
duration): a tone of 40 ms or more is recognised at any alignment to the blocks, one of 20 ms or
less never. It lasts while hits of that digit keep coming, judged meanwhile with limits widened
by `hold_margin_db` (frequency tolerance by a fifth, energy ratio floor by 0.1): a tone sitting
on a limit would otherwise flicker in and out and count as several presses. A run of non-hit
blocks as long as the minimum pause (40 ms: 4 blocks) ends it, so interruptions of up to 10 ms
are bridged and any pause of 40 ms or more separates two presses of the same key. A different
digit confirmed while one is held ends it and starts the new one.

Cost: a frame too quiet for any tone costs one dot product; otherwise one (blocks x N) by
(N x 32) matrix product, and Python scalars for the blocks that already look like a tone pair.
"""

from __future__ import annotations

import cmath
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from protocol.dtmf import DIGITS
from protocol.errors import ProtocolError

ROW_HZ = (697.0, 770.0, 852.0, 941.0)
COL_HZ = (1209.0, 1336.0, 1477.0, 1633.0)
KEYPAD = ("123A", "456B", "789C", "*0#D")
BLOCK_MS = 10
ALIAS_HZ = 1000 // BLOCK_MS   # a phase advance over one block is known modulo this
AMPLITUDE_0DBM0 = 32768.0 * 10 ** (-3.17 / 20)
# The cheap first screen before the pair tests: the two strongest bins, uncorrected for any
# frequency offset, must hold this share of a block's energy. A 1633 Hz tone 3 % off (the held
# tolerance) keeps 41 % of its bin power; with 6 dB of reverse twist the pair still holds 0.53.
PRESCREEN_RATIO = 0.4


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    """One key press. ``start_ms`` is the start of the first block that carried it; ``end_ms``
    the end of the last one, known only when the detector reports presses at their end."""

    digit: str
    start_ms: int
    end_ms: int | None = None


@dataclass(frozen=True, slots=True)
class DtmfLimits:
    """Recognition limits; the module docstring explains each and why its default."""

    min_level_dbm0: float = -30.0
    frequency_tolerance: float = 0.025
    normal_twist_db: float = 8.0
    reverse_twist_db: float = 4.0
    min_tone_ratio: float = 0.8
    max_harmonic_db: float = -15.0
    stability_db: float = 3.0
    min_duration_ms: int = 40
    min_pause_ms: int = 40
    hold_margin_db: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 < self.frequency_tolerance < 0.05:
            raise ProtocolError(f"DTMF frequency tolerance {self.frequency_tolerance} is not within (0, 0.05)")
        if self.normal_twist_db < 0 or self.reverse_twist_db < 0 or self.stability_db <= 0:
            raise ProtocolError("DTMF twist and stability limits must be positive")
        if not 0.0 < self.min_tone_ratio <= 1.0:
            raise ProtocolError(f"DTMF tone ratio {self.min_tone_ratio} is not within (0, 1]")
        if self.min_duration_ms < 3 * BLOCK_MS:
            raise ProtocolError(f"DTMF minimum duration must be at least {3 * BLOCK_MS} ms")
        if self.min_pause_ms < 2 * BLOCK_MS:
            raise ProtocolError(f"DTMF minimum pause must be at least {2 * BLOCK_MS} ms")
        if self.hold_margin_db < 0:
            raise ProtocolError("DTMF hold margin must not be negative")

    @property
    def min_hits(self) -> int:
        # A tone of D ms covers at least D // 10 - 1 whole blocks, which make D // 10 - 2 hits.
        return self.min_duration_ms // BLOCK_MS - 2

    @property
    def pause_blocks(self) -> int:
        # A pause of P ms covers at least P // 10 - 1 whole blocks, and every pair touching one
        # of them misses: P // 10 misses.
        return self.min_pause_ms // BLOCK_MS


def _kernel(offset_hz: float, n: int, rate: int) -> complex:
    """Response of an n-sample rectangular DFT bin to a complex tone offset_hz away from it."""
    x = math.pi * offset_hz / rate
    if abs(x) < 1e-12:
        return complex(n)
    return cmath.exp(1j * x * (n - 1)) * (math.sin(x * n) / math.sin(x))


@dataclass(frozen=True, slots=True)
class _Gate:
    """The limits of one pair test in the units the detector computes them in."""

    tolerance: float         # relative frequency offset
    min_amp: float           # linear amplitude
    twist_low: float         # dB, high group over low group
    twist_high: float
    min_ratio: float
    max_harmonic: float      # linear, harmonic over fundamental
    max_step: float          # power ratio between blocks

    @classmethod
    def of(cls, limits: DtmfLimits, margin_db: float = 0.0) -> _Gate:
        held = margin_db > 0
        return cls(
            tolerance=limits.frequency_tolerance * (1.2 if held else 1.0),
            min_amp=AMPLITUDE_0DBM0 * 10 ** ((limits.min_level_dbm0 - margin_db) / 20),
            twist_low=-limits.normal_twist_db - margin_db,
            twist_high=limits.reverse_twist_db + margin_db,
            min_ratio=limits.min_tone_ratio - (0.1 if held else 0.0),
            max_harmonic=10 ** ((limits.max_harmonic_db + margin_db) / 20),
            max_step=10 ** ((limits.stability_db + margin_db) / 10),
        )


class DtmfDetector:
    """Key presses in one stream of 16-bit PCM; see the module docstring for the rules.

    ``feed(frame, now_ms)`` takes the next frame (any length; 20 ms on the media plane) with the
    time of its first sample, and returns the presses it completes: with ``emit="start"`` (the
    default) a press is reported as soon as it is recognised, without ``end_ms``; with
    ``emit="end"`` it is reported once it is over, with both times. ``finish()`` ends the stream
    (reporting a press still held in "end" mode).
    """

    __slots__ = (
        "sample_rate", "limits", "emit", "_n", "_basis", "_half_basis", "_advance", "_half_advance",
        "_freqs", "_strict", "_held", "_min_energy", "_pending", "_prev", "_prev_energy", "_prev_rc",
        "_run_digit", "_run", "_run_start", "_active", "_active_start", "_active_end", "_misses",
    )

    def __init__(self, sample_rate: int = 16000, *, limits: DtmfLimits | None = None,
                 emit: Literal["start", "end"] = "start") -> None:
        if sample_rate < 8000 or sample_rate % 100:
            raise ProtocolError(
                f"DTMF detection needs a sample rate of 8000 Hz or more in steps of 100, got {sample_rate}")
        if emit not in ("start", "end"):
            raise ProtocolError(f"DTMF emit must be 'start' or 'end', got {emit!r}")
        self.sample_rate = sample_rate
        self.limits = limits or DtmfLimits()
        self.emit = emit
        n = self._n = sample_rate * BLOCK_MS // 1000
        self._freqs = ROW_HZ + COL_HZ + tuple(2 * f for f in ROW_HZ + COL_HZ)
        w = 2 * np.pi * np.outer(np.arange(n), self._freqs) / sample_rate
        # Interleaved cos/-sin columns: each pair of the product is one DFT bin's (re, im).
        basis = np.empty((n, 32))
        basis[:, 0::2] = np.cos(w)
        basis[:, 1::2] = -np.sin(w)
        self._basis = basis
        half = n // 2
        basis = np.empty((half, 16))
        basis[:, 0::2] = np.cos(w[:half, :8])
        basis[:, 1::2] = -np.sin(w[:half, :8])
        self._half_basis = basis
        # Remove the phase a tone exactly on its bin advances over one block, and over half a one.
        self._advance = [cmath.exp(-2j * math.pi * f * n / sample_rate) for f in self._freqs[:8]]
        self._half_advance = [cmath.exp(-2j * math.pi * f * half / sample_rate) for f in self._freqs[:8]]
        self._strict = _Gate.of(self.limits)
        self._held = _Gate.of(self.limits, self.limits.hold_margin_db)
        # Below this no block can hold even one tone at the (held) minimum level.
        self._min_energy = n * self._held.min_amp ** 2 / 2
        self._pending = np.zeros(0, dtype=np.int16)
        self._prev: list[float] | None = None
        self._prev_energy = 0.0
        self._prev_rc: tuple[int, int] | None = None
        self._run_digit: str | None = None
        self._run = 0
        self._run_start = 0.0
        self._active: str | None = None
        self._active_start = 0.0
        self._active_end = 0.0
        self._misses = 0

    def feed(self, frame: np.ndarray, now_ms: int) -> list[DtmfDigit]:
        if frame.ndim != 1:
            raise ProtocolError(f"DTMF detector takes mono frames, got shape {frame.shape}")
        n = self._n
        start_ms = float(now_ms)
        if self._pending.size:
            start_ms -= self._pending.size * 1000 / self.sample_rate
            frame = np.concatenate((self._pending, frame))
        count = len(frame) // n
        rest = len(frame) - count * n
        self._pending = frame[count * n:].copy() if rest else self._pending[:0]
        if not count:
            return []
        samples = frame[: count * n].astype(np.float64)
        total = float(samples @ samples)
        events: list[DtmfDigit] = []
        if total < self._min_energy:
            for i in range(count):
                events += self._step(None, start_ms + i * BLOCK_MS)
            self._prev = self._prev_rc = None
            return events
        blocks = samples.reshape(count, n)
        bins = blocks @ self._basis
        powers = (bins * bins).tolist()
        energies = [total] if count == 1 else np.einsum("ij,ij->i", blocks, blocks).tolist()
        min_energy, screen = self._min_energy, PRESCREEN_RATIO * n / 2
        for i in range(count):
            rc = row = None
            energy = energies[i]
            if energy >= min_energy:
                p = powers[i]
                rows = [p[0] + p[1], p[2] + p[3], p[4] + p[5], p[6] + p[7]]
                cols = [p[8] + p[9], p[10] + p[11], p[12] + p[13], p[14] + p[15]]
                best_r, best_c = max(rows), max(cols)
                if best_r + best_c >= screen * energy:
                    rc = (rows.index(best_r), cols.index(best_c))
                    row = bins[i].tolist()
            hit = None
            if rc is not None and rc == self._prev_rc:
                held = self._active is not None and KEYPAD[rc[0]][rc[1]] == self._active
                hit = self._pair(self._prev, row, blocks[i], self._prev_energy, energy, rc, held)
            events += self._step(hit, start_ms + i * BLOCK_MS)
            self._prev, self._prev_rc, self._prev_energy = row, rc, energy
        return events

    def finish(self) -> list[DtmfDigit]:
        """End of the stream: reports a press still held (in "end" mode) and forgets all state."""
        events = self._close() if self._active is not None else []
        self._pending = self._pending[:0]
        self._prev = None
        self._prev_rc = None
        self._run_digit = None
        self._run = 0
        return events

    def _pair(self, prev: list[float], cur: list[float], block: np.ndarray, e_prev: float, e_cur: float,
              rc: tuple[int, int], held: bool) -> str | None:
        """The digit of two consecutive blocks (DFT bins as interleaved re, im; the samples of the
        second) if they pass; a digit already held is judged with the widened limits."""
        gate = self._held if held else self._strict
        n, rate = self._n, self.sample_rate
        r, c = rc[0], 4 + rc[1]
        p_prev, p_cur = complex(prev[2 * r], prev[2 * r + 1]), complex(cur[2 * r], cur[2 * r + 1])
        q_prev, q_cur = complex(prev[2 * c], prev[2 * c + 1]), complex(cur[2 * c], cur[2 * c + 1])
        half = n // 2
        halves = (block[: 2 * half].reshape(2, half) @ self._half_basis).tolist()
        offsets = []
        for k, b_prev, b_cur in ((r, p_prev, p_cur), (c, q_prev, q_cur)):
            fine = cmath.phase(b_cur * b_prev.conjugate() * self._advance[k]) * ALIAS_HZ / (2 * math.pi)
            h0, h1 = complex(halves[0][2 * k], halves[0][2 * k + 1]), complex(halves[1][2 * k], halves[1][2 * k + 1])
            coarse = cmath.phase(h1 * h0.conjugate() * self._half_advance[k]) * rate / (2 * math.pi * half)
            # The block-to-block phase gives the offset only modulo ALIAS_HZ; the coarser estimate
            # across the two halves of a block (unambiguous within twice that) picks the lap.
            fine += ALIAS_HZ * round((coarse - fine) / ALIAS_HZ)
            if abs(fine) > gate.tolerance * self._freqs[k]:
                return None
            offsets.append(fine)
        off_r, off_c = offsets
        f_r, f_c = self._freqs[r], self._freqs[c]
        pr0, pr1 = abs(p_prev) ** 2, abs(p_cur) ** 2
        pc0, pc1 = abs(q_prev) ** 2, abs(q_cur) ** 2
        step = gate.max_step
        if not (pr1 <= pr0 * step and pr0 <= pr1 * step and pc1 <= pc0 * step and pc0 <= pc1 * step):
            return None
        k_r = _kernel(off_r, n, rate)
        k_c = _kernel(off_c, n, rate)
        g_r, g_c = abs(k_r) ** 2, abs(k_c) ** 2
        # Amplitude of a real tone from its bin: |bin| = amplitude * |kernel| / 2.
        amp_r = math.sqrt((pr0 + pr1) / 2 / g_r) * 2
        amp_c = math.sqrt((pc0 + pc1) / 2 / g_c) * 2
        if amp_r < gate.min_amp or amp_c < gate.min_amp:
            return None
        twist = 20 * math.log10(amp_c / amp_r)
        if not gate.twist_low <= twist <= gate.twist_high:
            return None
        # A real tone of amplitude A holds n * A**2 / 2 of a block's energy.
        tone_energy = 2 * n * ((pr0 + pr1) / g_r + (pc0 + pc1) / g_c)
        if tone_energy < gate.min_ratio * (e_prev + e_cur):
            return None
        nu_r, nu_c = f_r + off_r, f_c + off_c
        # Each tone leaks into the other's bin (1209 Hz is only 2.7 bins from 941 Hz), so the two
        # complex amplitudes are solved together before their leakage into the harmonic bins is
        # subtracted; one tone's amplitude alone would leave a residue near -20 dB.
        k_rc, k_cr = _kernel(nu_c - f_r, n, rate), _kernel(nu_r - f_c, n, rate)
        det = k_r * k_c - k_rc * k_cr
        leaks = [(_kernel(nu_r - self._freqs[8 + i], n, rate), _kernel(nu_c - self._freqs[8 + i], n, rate))
                 for i in (r, c)]
        limit = gate.max_harmonic * n
        for bins, s_r, s_c in ((prev, p_prev, q_prev), (cur, p_cur, q_cur)):
            a_r = (s_r * k_c - s_c * k_rc) / det
            a_c = (s_c * k_r - s_r * k_cr) / det
            for h, a, (l_r, l_c) in ((8 + r, a_r, leaks[0]), (8 + c, a_c, leaks[1])):
                if abs(complex(bins[2 * h], bins[2 * h + 1]) - a_r * l_r - a_c * l_c) > limit * abs(a):
                    return None
        return KEYPAD[rc[0]][rc[1]]

    def _step(self, hit: str | None, block_ms: float) -> list[DtmfDigit]:
        """Advance the press state by one block; ``hit`` is the digit of the pair ending here."""
        if hit is not None and hit == self._run_digit:
            self._run += 1
        elif hit is not None:
            self._run_digit, self._run, self._run_start = hit, 1, block_ms - BLOCK_MS
        else:
            self._run_digit, self._run = None, 0
        confirmed = self._run >= self.limits.min_hits
        events: list[DtmfDigit] = []
        if self._active is not None:
            if hit == self._active:
                self._misses = 0
                self._active_end = block_ms + BLOCK_MS
                return events
            self._misses += 1
            if confirmed:
                events += self._close()
            elif self._misses >= self.limits.pause_blocks:
                return self._close()
            else:
                return events
        if confirmed:
            self._active = self._run_digit
            self._active_start = self._run_start
            self._active_end = block_ms + BLOCK_MS
            self._misses = 0
            if self.emit == "start":
                events.append(DtmfDigit(self._active, round(self._active_start)))
        return events

    def _close(self) -> list[DtmfDigit]:
        digit, start, end = self._active, self._active_start, self._active_end
        self._active = None
        if self.emit == "end" and digit is not None:
            return [DtmfDigit(digit, round(start), round(end))]
        return []


@dataclass(slots=True)
class _Press:
    digit: str
    at_ms: int
    sources: set[str]


class DtmfDeduplicator:
    """Tells whether a reported digit is a new key press or another report of one already seen.

    The rule: each source (``inband``, ``rfc4733``, ``info``, or any other name) reports every
    press at most once, so a report is a duplicate exactly when an earlier press of the same
    digit, reported at most ``window_ms`` away (either side: the sources' latencies differ), has
    not yet been reported by this source. It then joins the oldest such press; otherwise it is a
    new press. Two presses of the same key inside the window therefore stay two presses as long
    as each source reports both, whatever order the reports arrive in; reports of the same source
    are never merged. The window has to cover the spread of the sources' latencies for one press
    (in-band recognition lags the tone's start by 30-40 ms; an INFO may be sent at the key's
    release and cross the signalling path), hence the 500 ms default.
    """

    __slots__ = ("window_ms", "_presses", "_latest")

    MAX_TRACKED = 64

    def __init__(self, window_ms: int = 500) -> None:
        if window_ms < 0:
            raise ProtocolError(f"DTMF de-duplication window must not be negative, got {window_ms}")
        self.window_ms = window_ms
        self._presses: deque[_Press] = deque(maxlen=self.MAX_TRACKED)
        self._latest: int | None = None

    def offer(self, digit: str, at_ms: int, source: str) -> bool:
        """True when this report is a new key press, False when it repeats one already counted."""
        if len(digit) != 1 or digit.upper() not in DIGITS:
            raise ProtocolError(f"not a DTMF digit: {digit!r}")
        digit = digit.upper()
        self._latest = at_ms if self._latest is None else max(self._latest, at_ms)
        # A later report may be dated up to a window before the latest one and match a press up
        # to a window before that; anything older can no longer be matched.
        horizon = self._latest - 2 * self.window_ms
        while self._presses and self._presses[0].at_ms < horizon:
            self._presses.popleft()
        for press in self._presses:
            if press.digit == digit and source not in press.sources and abs(at_ms - press.at_ms) <= self.window_ms:
                press.sources.add(source)
                return False
        self._presses.append(_Press(digit, at_ms, {source}))
        return True
