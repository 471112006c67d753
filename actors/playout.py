"""What the gateway plays to a call: a queue of playback items read by the media clock.

Each playback (one `tts` playId, one `play`, a mediaPass peer) has two ends. Its producer (a
synthesis, a file decode, a mediaPass link) holds a `PlayFeed`: a bounded buffer it pushes 16 kHz
PCM, word marks and text into, and finishes. The Track holds the `PlayItem` that reads that feed at
exactly one frame per tick: the items are the Track's, and no producer ever sees one. The `Playlist`
is the server-side track: it owns the queue, pause, interrupt (with an optional short fade) and
reports each item's start and end as an `ItemReport` snapshot (position, subtitle, durations), so
that nobody outside the Track reads an item while it plays.

A feed is bounded by samples buffered ahead of playback. A finite source (tts, play) that goes past
the bound is cut there: `push` answers False and the feed records the overflow, so its producer
stops and says so. A live source (mediaPass) drops its oldest audio instead, counted. When the
Track drops an item (interrupted, the call ending) the feed is closed and `push` answers False:
the producer stops working for nobody.

Feeds are written by producers on the event loop and read by the clock tick on the same loop;
both sides are synchronous methods, so neither sees the other half-way through a change.
"""

from __future__ import annotations

import time
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from protocol.codecs import MEDIA_RATE

from .pipes import AudioPipe

FADE_MS = 60  # graceful interrupt: a short fade, long enough to avoid a click, short enough to feel instant
DEFAULT_FEED_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class WordMark:
    """The `index`-th word of the item's text starts at `sample` (MEDIA_RATE samples from item start)."""

    index: int
    sample: int


class PlayFeed:
    """The producer's end of one playback. Producers call `push`/`mark_word`/`append_text`/`finish`
    and stop when `push` answers False; the Track's PlayItem takes the audio."""

    def __init__(self, capacity: int = int(DEFAULT_FEED_SECONDS * MEDIA_RATE), *, live: bool = False,
                 text: str = "") -> None:
        if capacity < 1:
            raise ValueError("a feed holds at least one sample")
        self.capacity = capacity
        self.live = live
        self.text = text
        self._chunks: deque[np.ndarray] = deque()
        self._offset = 0                       # read position inside _chunks[0]
        self.buffered = 0                      # samples pushed and not yet taken
        self.produced = 0                      # samples accepted in total
        self.taken = 0
        self.dropped = 0                       # samples lost: live overflow
        self.overflowed = False                # a finite source went past the capacity and was cut
        self.finished = False                  # the producer will push nothing more
        self.failed: str | None = None
        self.closed = False                    # the consumer is gone
        self.words: list[WordMark] = []

    # producer side
    def push(self, pcm: np.ndarray) -> bool:
        """Add audio; False means stop producing (the consumer is gone, or a finite feed is full)."""
        if self.closed or self.finished:
            return False
        if len(pcm) == 0:
            return True
        if self.buffered + len(pcm) > self.capacity:
            if not self.live:
                self.overflowed = True
                self.finish(f"more than {self.capacity / MEDIA_RATE:g} s of audio ahead of playback; "
                            "the rest was not played")
                return False
            self._drop_oldest(self.buffered + len(pcm) - self.capacity)
        self._chunks.append(pcm)
        self.buffered += len(pcm)
        self.produced += len(pcm)
        return True

    def mark_word(self, index: int, sample: int) -> None:
        self.words.append(WordMark(index, sample))

    def append_text(self, text: str) -> None:
        """A further piece of a streamed text. Each piece is spoken on its own, so it is trimmed and
        starts a new word: one space before it. A piece that begins with punctuation and no space
        (a language model's ``","``, ``"?"``, ``"'s"``) attaches to the word before it instead."""
        piece = text.strip()
        if not piece:
            return
        if not self.text:
            self.text = piece
        elif not text[0].isspace() and unicodedata.category(piece[0]).startswith("P"):
            self.text += piece
        else:
            self.text += " " + piece

    def finish(self, error: str | None = None) -> None:
        if not self.finished:
            self.finished = True
            if error is not None:
                self.failed = error

    # consumer side
    def take(self, samples: int) -> np.ndarray:
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
        self.taken += len(out)
        return out

    def close(self) -> None:
        """The consumer is done with it: drop what is buffered; producers are told to stop."""
        self.closed = True
        self._chunks.clear()
        self._offset = 0
        self.buffered = 0

    def _drop_oldest(self, samples: int) -> None:
        while samples > 0 and self._chunks:
            head = self._chunks[0]
            left = len(head) - self._offset
            if left <= samples:
                self._chunks.popleft()
                self._offset = 0
                samples -= left
                self.buffered -= left
                self.dropped += left
            else:
                self._offset += samples
                self.buffered -= samples
                self.dropped += samples
                samples = 0


@dataclass(frozen=True, slots=True)
class PlaySpec:
    """What the Track needs to know of a playback: the owner's token for it, and how to report it."""

    token: int
    play_id: str | None
    kind: str                              # "tts" | "play" | "pass" | "bridge"


@dataclass(frozen=True, slots=True)
class ItemReport:
    """A snapshot of an item, taken by the Track when it starts, ends or is cut."""

    token: int
    play_id: str | None
    kind: str
    played_ms: int
    total_ms: int
    text: str
    position: int                          # index of the word being spoken (0 before the first)
    cut_unfinished: bool
    failed: str | None


class PlayItem:
    """The Track's side of one playback: reads its feed and keeps what playing it did."""

    def __init__(self, spec: PlaySpec, feed: PlayFeed) -> None:
        self.spec = spec
        self.feed = feed
        self.played = 0                        # samples handed to the clock
        self.cut_unfinished = False            # interrupted before it had played everything
        self.started = False                   # its first audio has been played (trackStart sent)

    @property
    def done(self) -> bool:
        return self.feed.finished and self.feed.buffered == 0

    @property
    def empty_failure(self) -> bool:
        """Finished with an error before producing any audio: nothing to play."""
        return self.done and self.feed.produced == 0 and self.feed.failed is not None

    def read(self, samples: int) -> np.ndarray:
        out = self.feed.take(samples)
        self.played += len(out)
        return out

    def drop(self) -> None:
        self.feed.close()
        self.feed.finish()

    def word_position(self) -> int:
        reached = [w.index for w in self.feed.words if w.sample <= self.played]
        return max(reached) if reached else 0

    def report(self) -> ItemReport:
        return ItemReport(
            token=self.spec.token, play_id=self.spec.play_id, kind=self.spec.kind,
            played_ms=self.played * 1000 // MEDIA_RATE, total_ms=self.feed.produced * 1000 // MEDIA_RATE,
            text=self.feed.text, position=self.word_position(), cut_unfinished=self.cut_unfinished,
            failed=self.feed.failed)


class PipeItem(PlayItem):
    """A continuous source read from an audio pipe another track fills (a bridged call's caller).
    It never finishes by itself: it is done when the pipe closes (that call's track stopped)."""

    def __init__(self, spec: PlaySpec, pipe: AudioPipe[np.ndarray]) -> None:
        super().__init__(spec, PlayFeed(live=True))
        self.pipe = pipe

    @property
    def done(self) -> bool:
        return self.pipe.closed and len(self.pipe) == 0

    def read(self, samples: int) -> np.ndarray:
        while self.feed.buffered < samples:
            frame = self.pipe.pop_nowait()
            if frame is None:
                break
            self.feed.push(frame)
        return super().read(samples)


@dataclass(frozen=True, slots=True)
class PlaybackEvent:
    """Reported by the Playlist to its owner (delivered through the owner's mailbox)."""

    kind: str                     # "started" | "finished"
    item: ItemReport
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
        self._after_fade: list[PlayItem] = []   # cut while the current item fades: reported after it

    # control (called by the Track actor's message handlers)
    def enqueue(self, item: PlayItem) -> None:
        self.queue.append(item)

    def replace(self, item: PlayItem) -> list[PlayItem]:
        """Stop everything now and play `item` next. Returns the items cut, current first."""
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
        queued = cut[1:] if self.current is not None else cut
        for item in queued:
            item.drop()
        if self.current is not None:
            if graceful and self._fade_left == 0:
                self._fade_total = self._fade_left = FADE_MS * MEDIA_RATE // 1000
                # One order for every cut: the current item's end is reported first, so the queued
                # ones wait for the end of its fade.
                self._after_fade.extend(queued)
                return cut
            self._end_current(interrupted=True)
        for item in queued:
            # Queued items never started; they still end, so every playId gets its trackEnd.
            self.report(PlaybackEvent("finished", item.report(), interrupted=True))
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
        self._started(item, out)
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
                self._started(nxt, more)
                out = np.concatenate((out, more))
        return out

    def _started(self, item: PlayItem, out: np.ndarray) -> None:
        # trackStart means audio: an item still loading (or failing to) is current but silent.
        if not item.started and len(out):
            item.started = True
            self.report(PlaybackEvent("started", item.report()))

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
            if item.empty_failure:
                # Nothing to play (the producer failed before any audio): end it unheard.
                self.report(PlaybackEvent("finished", item.report(), interrupted=False))
                continue
            self.current = item
            return True
        return False

    def _end_current(self, interrupted: bool) -> None:
        item = self.current
        self.current = None
        self._fade_left = self._fade_total = 0
        if item is not None:
            if interrupted:
                item.drop()
            self.report(PlaybackEvent("finished", item.report(), interrupted=interrupted))
        after, self._after_fade = self._after_fade, []
        for queued in after:
            self.report(PlaybackEvent("finished", queued.report(), interrupted=True))

    def close(self) -> None:
        """The track is going: every item still queued or playing is dropped (no reports: the
        owner ends what it had started itself)."""
        for item in ([self.current] if self.current is not None else []) + list(self.queue):
            item.drop()
        self.current = None
        self.queue.clear()
        self._after_fade.clear()

    @property
    def active(self) -> bool:
        return self.current is not None or bool(self.queue)
