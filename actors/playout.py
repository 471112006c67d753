"""What the gateway plays to a call: a queue of playback items read by the media clock.

A `PlayItem` is one `tts` (one playId) or one `play`: a lossless buffer its producer (a synthesis,
a file decode, a media-pass link) appends 16 kHz PCM to, read at exactly one frame per tick by the
leg's Track. The `Playlist` is the server-side track: it owns the queue, pause, interrupt (with an
optional short fade) and the bookkeeping the `interruption` event reports (position, subtitle).

Items are written by producers on the event loop and read by the clock tick on the same loop;
both are synchronous methods, so neither sees the other half-way through a change.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from protocol.codecs import MEDIA_RATE

from .pipes import AudioPipe

FADE_MS = 60  # graceful interrupt: a short fade, long enough to avoid a click, short enough to feel instant


@dataclass(frozen=True, slots=True)
class WordMark:
    """The `index`-th word of the item's text starts at `sample` (MEDIA_RATE samples from item start)."""

    index: int
    sample: int


class PlayItem:
    """One playback. Producers call `append`/`mark_word`/`finish`; the Playlist reads it."""

    def __init__(self, play_id: str | None, kind: str, *, text: str = "", auto_hangup: bool = False,
                 wait_input_timeout: float | None = None) -> None:
        self.play_id = play_id
        self.kind = kind                       # "tts" | "play" | "pass"
        self.text = text
        self.auto_hangup = auto_hangup
        self.wait_input_timeout = wait_input_timeout
        self._chunks: deque[np.ndarray] = deque()
        self._offset = 0                       # read position inside _chunks[0]
        self.buffered = 0                      # samples appended and not yet read
        self.produced = 0                      # samples appended in total
        self.played = 0                        # samples handed to the clock
        self.finished = False                  # the producer will append nothing more
        self.failed: str | None = None
        self.words: list[WordMark] = []
        self.cut_unfinished = False            # interrupted before it had played everything

    # producer side
    def append(self, pcm: np.ndarray) -> None:
        if self.finished or len(pcm) == 0:
            return
        self._chunks.append(pcm)
        self.buffered += len(pcm)
        self.produced += len(pcm)

    def mark_word(self, index: int, sample: int) -> None:
        self.words.append(WordMark(index, sample))

    def append_text(self, text: str) -> None:
        self.text = f"{self.text} {text}".strip() if self.text else text

    def finish(self, error: str | None = None) -> None:
        self.finished = True
        if error is not None:
            self.failed = error

    # consumer side
    @property
    def done(self) -> bool:
        return self.finished and self.buffered == 0

    def read(self, samples: int) -> np.ndarray:
        """Up to `samples` of audio; fewer (possibly none) when the producer is behind."""
        if self.buffered == 0:
            return np.zeros(0, dtype=np.int16)
        parts = []
        need = samples
        while need and self._chunks:
            head = self._chunks[0]
            take = min(need, len(head) - self._offset)
            parts.append(head[self._offset:self._offset + take])
            self._offset += take
            need -= take
            if self._offset == len(head):
                self._chunks.popleft()
                self._offset = 0
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self.buffered -= len(out)
        self.played += len(out)
        return out

    def drop(self) -> None:
        self._chunks.clear()
        self._offset = 0
        self.buffered = 0

    # reporting
    @property
    def played_ms(self) -> int:
        return self.played * 1000 // MEDIA_RATE

    @property
    def total_ms(self) -> int:
        return self.produced * 1000 // MEDIA_RATE

    def word_position(self) -> int:
        """Index of the word being spoken at the current play position (0 before the first)."""
        reached = [w.index for w in self.words if w.sample <= self.played]
        return max(reached) if reached else 0


class PipeItem(PlayItem):
    """A continuous source read from an audio pipe another track fills (a bridged call's caller).
    It never finishes by itself: it is done when the pipe closes (that call's track stopped)."""

    def __init__(self, play_id: str, pipe: AudioPipe[np.ndarray]) -> None:
        super().__init__(play_id, "bridge")
        self.pipe = pipe

    @property
    def done(self) -> bool:
        return self.pipe.closed and len(self.pipe) == 0

    def read(self, samples: int) -> np.ndarray:
        while self.buffered < samples:
            frame = self.pipe.pop_nowait()
            if frame is None:
                break
            super().append(frame)
        return super().read(samples)


@dataclass(frozen=True, slots=True)
class PlaybackEvent:
    """Reported by the Playlist to its owner (delivered through the owner's mailbox)."""

    kind: str                     # "started" | "finished"
    item: PlayItem
    interrupted: bool = False
    at: float = field(default_factory=time.time)


class Playlist:
    """The server-side track's playout: the current item, a queue, pause and interrupt.

    `report` is called with PlaybackEvent from the clock tick; it must only enqueue (tell).
    """

    def __init__(self, report: Callable[[PlaybackEvent], None]) -> None:
        self.report = report
        self.current: PlayItem | None = None
        self.queue: deque[PlayItem] = deque()
        self.paused = False
        self._fade_left = 0           # samples of fade-out remaining; > 0 means interrupting
        self._fade_total = 0

    # control (called by the Track actor's message handlers)
    def enqueue(self, item: PlayItem) -> None:
        self.queue.append(item)

    def replace(self, item: PlayItem) -> list[PlayItem]:
        """Stop everything now and play `item` next. Returns the items cut."""
        cut = self.interrupt(graceful=False)
        self.queue.append(item)
        return cut

    def interrupt(self, graceful: bool) -> list[PlayItem]:
        """Cut the current item and clear the queue. Returns every item cut, current first.

        Not graceful: the next frame is silence. Graceful: the current item fades out over
        FADE_MS, then stops; queued items are dropped at once either way.
        """
        cut = []
        if self.current is not None:
            cut.append(self.current)
        cut.extend(self.queue)
        for item in cut:
            item.cut_unfinished = not item.done
        self.queue.clear()
        for item in cut[1 if self.current is not None else 0:]:
            # Queued items never started; they still end, so every playId gets its trackEnd.
            item.drop()
            item.finish()
            self.report(PlaybackEvent("finished", item, interrupted=True))
        if self.current is not None:
            if graceful and self._fade_left == 0:
                self._fade_total = self._fade_left = FADE_MS * MEDIA_RATE // 1000
            else:
                self._end_current(interrupted=True)
        return cut

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    # the clock side
    def read(self, samples: int) -> np.ndarray | None:
        if self.current is None and not self._advance():
            return None
        if self.paused:
            return None
        item = self.current
        assert item is not None
        out = item.read(samples)
        if self._fade_left > 0:
            out = self._fade(out)
            if self._fade_left == 0:
                self._end_current(interrupted=True)
                return out
        if item.done:
            self._end_current(interrupted=False)
            if len(out) < samples and self._advance() and not self.paused:
                nxt = self.current
                assert nxt is not None
                more = nxt.read(samples - len(out))
                out = np.concatenate((out, more))
        return out

    def _fade(self, out: np.ndarray) -> np.ndarray:
        n = min(len(out), self._fade_left)
        start = self._fade_left / self._fade_total
        gains = np.linspace(start, start - n / self._fade_total, n, endpoint=False)
        faded = out.astype(np.float32)
        faded[:n] *= gains
        faded[n:] = 0
        self._fade_left -= n if n else self._fade_left  # an empty read ends the fade at once
        return faded.astype(np.int16)

    def _advance(self) -> bool:
        while self.queue:
            item = self.queue.popleft()
            if item.done and item.produced == 0 and item.failed is not None:
                # Nothing to play (the producer failed before any audio): end it unheard.
                self.report(PlaybackEvent("finished", item, interrupted=False))
                continue
            self.current = item
            self.report(PlaybackEvent("started", item))
            return True
        return False

    def _end_current(self, interrupted: bool) -> None:
        item = self.current
        self.current = None
        self._fade_left = self._fade_total = 0
        if item is not None:
            if interrupted:
                item.drop()
                item.finish()
            self.report(PlaybackEvent("finished", item, interrupted=interrupted))

    @property
    def active(self) -> bool:
        return self.current is not None or bool(self.queue)
