"""From per-window VAD decisions to the API's ``speaking`` and ``silence`` events.

A VAD engine judges short windows of audio (32 ms for silero, 20 ms for WebRTC, 16 ms for TEN);
``VadEventMachine`` turns that stream of judgements into events, with time passed in: each window
comes with its start and length in milliseconds of stream time.

A window is *voiced* when the engine's speech probability is above ``voiceThreshold`` (as in the
original active-call, ``score > voice_threshold``), or when a yes/no engine such as WebRTC says so.

Speech and silence are each confirmed only after they have lasted their padding, with ``ratio``
as the hysteresis, the way the original's windowed vote used it:

- While silent, a *speech candidate* starts at the first voiced window. It becomes speech
  (``SpeechStarted``) on a voiced window once it spans at least ``speechPadding`` ms and at
  least ``ratio`` of its audio is voiced. This is the spec's "start detection speechPadding
  milliseconds after speech starts": the event comes that late, but its ``start_time`` is the
  start of the first voiced window, the true onset.
- While speaking, a *silence candidate* starts at the first unvoiced window and becomes silence
  (``SilenceDetected``) on an unvoiced window once it spans at least ``silencePadding`` ms and at
  least ``ratio`` of it is unvoiced. Speech is only ever confirmed after ``speechPadding`` ms, so
  every such silence follows more than ``speechPadding`` ms of speech, as the spec requires.
- When the agreeing share of a candidate falls below ``ratio``, its oldest windows are dropped
  until the share is back and it begins with an agreeing window again (or nothing is left), so a
  candidate always starts where the new state plausibly began. A run of the current state's own
  kind as long as that state's padding (silencePadding of unvoiced audio while silent,
  speechPadding of voiced audio while speaking) ends the candidate outright: that much of the
  old state means it never stopped. With ``ratio`` 0 only this rule applies.

Dating the end of speech. Engines keep saying "speech" for a while after it stops: silero's
recurrent state makes its probability decay over one to three windows (1.0, 0.91, 0.68, 0.17
after a clean end), and WebRTC adds a fixed overhang of several frames. The silence start is
therefore dated back from the first unvoiced window to the start of the run of windows whose
probability was falling (each at least ``FALL_STEP`` below the one before), at most
``DECAY_LIMIT_MS`` back, and further by ``hangover_ms``, which a yes/no engine with a known
overhang states. It is never dated before the speech it ends began. Confirmation itself still
waits for ``silencePadding`` of audio the engine called unvoiced, so these corrections move
timestamps, never decisions.

The silence event follows the spec's fields: ``start_time`` is when the silence began and
``duration`` how long it had lasted when it was confirmed. (The original active-call puts the
start and length of the *speech* that ended in those two fields; that speech start is kept here
as ``speech_start``, which the wire event does not carry but an ASR buffer or a recorder can use.)
The spec's "more than silencePadding milliseconds since the last Silence event" is, in the
original's code, the length of the current run of non-speech, which it restarts at every silence
event; here that is the silence candidate's span.

``silenceTimeout`` (absent or 0: off). In the original active-call it is a no-input timer: while
nobody speaks, a ``silence`` event is sent every ``silenceTimeout`` ms, from the start of the
call's listening or from the end of the last speech, so an application can re-prompt a caller
who says nothing. Here it works the same way, with two choices made explicit:

- the events report the true silence: ``start_time`` is when the silence began and ``duration``
  how long it has lasted so far (the original restarts its start time at every timeout event);
- a short voiced burst that never became speech does not restart the timer (the original
  restarts it on any voiced window, so a cough or a click of noise did), but no timeout fires
  while a speech candidate is pending: if it becomes speech the timer stops, otherwise the
  timeout due meanwhile fires as soon as the candidate is dropped.

Timeout events carry ``speech_start=None``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from protocol.api import VADOption
from protocol.errors import ProtocolError

DECAY_LIMIT_MS = 100.0
"""How far back a falling probability may date the end of speech (about three silero windows)."""

FALL_STEP = 0.01
"""A window continues a falling run when its probability is at least this much below the last.

Smaller steps are the drift of a steady voice (TEN's probability wanders 0.96, 0.95, 0.94 through
a vowel), not the engine letting go of speech that has ended.
"""


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech was confirmed; it began at ``start_time`` (ms of stream time)."""

    start_time: int


@dataclass(frozen=True, slots=True)
class SilenceDetected:
    """Silence that began at ``start_time`` has lasted ``duration`` ms.

    ``speech_start`` is the start of the speech this silence ends, or None for an event of the
    ``silenceTimeout`` timer.
    """

    start_time: int
    duration: int
    speech_start: int | None = None


VadEvent = SpeechStarted | SilenceDetected


@dataclass(frozen=True, slots=True)
class _Window:
    start: float
    end: float
    voiced: bool
    # Start of the run of windows, ending with this one, whose probability kept falling (its own
    # start when it did not fall).
    fall_start: float


class VadEventMachine:
    """Speaking/silence decisions for one audio stream; see the module docstring for the rules."""

    __slots__ = (
        "speech_padding",
        "silence_padding",
        "ratio",
        "voice_threshold",
        "silence_timeout",
        "hangover_ms",
        "_speaking",
        "_speech_start",
        "_silence_start",
        "_next_timeout",
        "_cand",
        "_cand_total",
        "_cand_agree",
        "_opposite_run",
        "_last_end",
        "_last_probability",
        "_fall_start",
    )

    def __init__(self, option: VADOption, *, hangover_ms: float = 0.0) -> None:
        for name in ("ratio", "voice_threshold"):
            value = getattr(option, name)
            if not 0.0 <= value <= 1.0:
                raise ProtocolError(f"vad.{_camel(name)} must be between 0 and 1, got {value}")
        if not 0.0 <= hangover_ms < math.inf:
            raise ProtocolError(f"hangover_ms must be a non-negative number of ms, got {hangover_ms}")
        self.speech_padding = float(option.speech_padding)
        self.silence_padding = float(option.silence_padding)
        self.ratio = float(option.ratio)
        self.voice_threshold = float(option.voice_threshold)
        self.silence_timeout = float(option.silence_timeout) if option.silence_timeout else None
        self.hangover_ms = float(hangover_ms)
        self._speaking = False
        self._speech_start = 0.0
        self._silence_start: float | None = None
        self._next_timeout = 0.0
        self._cand: deque[_Window] = deque()
        self._cand_total = 0.0
        self._cand_agree = 0.0
        self._opposite_run = 0.0
        self._last_end: float | None = None
        self._last_probability: float | None = None
        self._fall_start: float | None = None  # start of the falling run the last window ended

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def speech_start(self) -> int | None:
        """Start of the speech going on now, or None while silent."""
        return round(self._speech_start) if self._speaking else None

    def feed(self, start_ms: float, duration_ms: float, speech: float | bool) -> list[VadEvent]:
        """Take one window: a speech probability in [0, 1], or a yes/no decision (a ``bool``).

        Time never runs backwards: a window that starts before the previous one ended is taken
        to start where that one ended. Returns the events this window caused, oldest first.
        """
        if not duration_ms > 0 or not math.isfinite(duration_ms):
            raise ProtocolError(f"a VAD window needs a positive duration, got {duration_ms}")
        if not math.isfinite(start_ms):
            raise ProtocolError(f"a VAD window needs a finite start time, got {start_ms}")
        if self._last_end is not None and start_ms < self._last_end:
            start_ms = self._last_end
        end_ms = start_ms + duration_ms
        if self._silence_start is None:
            self._silence_start = start_ms
            self._next_timeout = self.silence_timeout or 0.0

        if isinstance(speech, bool):
            voiced = speech
            probability = None
        else:
            probability = float(speech)
            if not 0.0 <= probability <= 1.0:
                raise ProtocolError(f"a speech probability must be between 0 and 1, got {speech}")
            voiced = probability > self.voice_threshold
        last = self._last_probability
        if probability is None or last is None or probability > last - FALL_STEP:
            self._fall_start = None
        elif self._fall_start is None:
            self._fall_start = start_ms
        self._last_probability = probability
        self._last_end = end_ms
        fall_start = start_ms if self._fall_start is None else self._fall_start
        window = _Window(start_ms, end_ms, voiced, fall_start)

        events: list[VadEvent] = []
        agree = voiced != self._speaking
        self._update_candidate(window, agree)
        if self._cand and agree:
            self._maybe_confirm(window, events)
        if not self._speaking and not self._cand and self.silence_timeout:
            assert self._silence_start is not None
            elapsed = end_ms - self._silence_start
            if elapsed >= self._next_timeout:
                events.append(SilenceDetected(round(self._silence_start), round(elapsed), None))
                periods = math.floor(elapsed / self.silence_timeout) + 1
                self._next_timeout = periods * self.silence_timeout
        return events

    def _update_candidate(self, window: _Window, agree: bool) -> None:
        duration = window.end - window.start
        if not self._cand:
            if agree:
                self._cand.append(window)
                self._cand_total = self._cand_agree = duration
                self._opposite_run = 0.0
            return
        self._cand.append(window)
        self._cand_total += duration
        if agree:
            self._cand_agree += duration
            self._opposite_run = 0.0
            return
        self._opposite_run += duration
        own_padding = self.speech_padding if self._speaking else self.silence_padding
        if self._opposite_run >= own_padding:
            self._drop_candidate()
            return
        cand = self._cand
        speaking = self._speaking
        while cand and (self._cand_agree < self.ratio * self._cand_total or not _agrees(cand[0], speaking)):
            old = cand.popleft()
            span = old.end - old.start
            self._cand_total -= span
            if _agrees(old, speaking):
                self._cand_agree -= span
        if not cand:
            self._drop_candidate()

    def _maybe_confirm(self, window: _Window, events: list[VadEvent]) -> None:
        front = self._cand[0]
        padding = self.silence_padding if self._speaking else self.speech_padding
        if window.end - front.start < padding or self._cand_agree < self.ratio * self._cand_total:
            return
        if not self._speaking:
            self._speaking = True
            self._speech_start = front.start
            events.append(SpeechStarted(round(front.start)))
        else:
            decay_from = max(front.fall_start, front.start - DECAY_LIMIT_MS)
            start = max(decay_from - self.hangover_ms, self._speech_start)
            self._speaking = False
            self._silence_start = start
            self._next_timeout = self.silence_timeout or 0.0
            speech_start = round(self._speech_start)
            events.append(SilenceDetected(round(start), round(window.end - start), speech_start))
        self._drop_candidate()

    def _drop_candidate(self) -> None:
        self._cand.clear()
        self._cand_total = self._cand_agree = self._opposite_run = 0.0


def _agrees(window: _Window, speaking: bool) -> bool:
    return window.voiced != speaking


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
