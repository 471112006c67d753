"""Playback feeds and the playlist: bounded feeds, producers told to stop, one order for cuts."""

from __future__ import annotations

import numpy as np

from actors.playout import PlaybackEvent, PlayFeed, PlayItem, Playlist, PlaySpec
from protocol.codecs import MEDIA_RATE

FRAME = 320


def pcm(samples: int, value: int = 1000) -> np.ndarray:
    return np.full(samples, value, dtype=np.int16)


def test_a_finite_feed_past_its_capacity_is_cut_and_says_so():
    feed = PlayFeed(1000)
    assert feed.push(pcm(800))
    assert not feed.push(pcm(400))                 # would go past 1000 samples ahead of playback
    assert feed.overflowed and feed.finished and "ahead of playback" in feed.failed
    assert feed.produced == 800 and feed.take(2000).size == 800


def test_a_live_feed_drops_its_oldest_audio_and_counts_it():
    feed = PlayFeed(1000, live=True)
    feed.push(pcm(800, 1))
    assert feed.push(pcm(400, 2))
    assert feed.dropped == 200 and feed.buffered == 1000
    out = feed.take(1000)
    assert (out[:600] == 1).all() and (out[600:] == 2).all()


def test_a_closed_feed_tells_its_producer_to_stop():
    feed = PlayFeed(10_000)
    feed.push(pcm(100))
    feed.close()
    assert not feed.push(pcm(100)) and feed.buffered == 0


def streamed(*pieces: str) -> str:
    feed = PlayFeed(text=pieces[0].strip())
    for piece in pieces[1:]:
        feed.append_text(piece)
    return feed.text


def test_streamed_text_is_joined_with_one_space():
    assert streamed("Hello", "  world. ", "", "How are you?") == "Hello world. How are you?"
    # Pieces that carry their own spaces, as a language model streams them, are not doubled.
    assert streamed("Hello,", " how", " are", " you?") == "Hello, how are you?"
    assert streamed("Hello, ", " world.") == "Hello, world."


def test_a_streamed_piece_starting_with_punctuation_attaches_to_the_word_before():
    assert streamed("Hello", ",", " how", " is", " John", "'s", " day", "?") == "Hello, how is John's day?"
    assert streamed("see", " (note)", ".") == "see (note)."
    # Each piece is spoken on its own: a split word is two words, shown as such.
    assert streamed("Hel", "lo") == "Hel lo"
    assert streamed("", "First") == "First"


def run(playlist: Playlist, frames: int) -> None:
    for _ in range(frames):
        playlist.read(FRAME)


def test_a_cut_reports_the_playing_item_first_graceful_or_not():
    for graceful in (False, True):
        events: list[PlaybackEvent] = []
        playlist = Playlist(events.append)
        feeds = [PlayFeed(), PlayFeed()]
        for token, feed in enumerate(feeds, 1):
            feed.push(pcm(16000))
            feed.finish()
            playlist.enqueue(PlayItem(PlaySpec(token, f"p{token}", "tts"), feed))
        run(playlist, 5)
        cut = playlist.interrupt(graceful)
        assert [item.spec.token for item in cut] == [1, 2]
        run(playlist, 10)                           # the fade, if any, plays out
        finished = [(e.item.token, e.interrupted) for e in events if e.kind == "finished"]
        assert finished == [(1, True), (2, True)]
        assert events[-2].item.played_ms > 0 and events[-1].item.played_ms == 0
        assert all(feed.closed for feed in feeds)   # producers are told to stop


def test_closing_the_playlist_closes_every_feed_without_reports():
    events: list[PlaybackEvent] = []
    playlist = Playlist(events.append)
    feed = PlayFeed()
    feed.push(np.ones(MEDIA_RATE, dtype=np.int16))   # audio to play: trackStart comes with audio
    playlist.enqueue(PlayItem(PlaySpec(1, None, "tts"), feed))
    run(playlist, 1)
    playlist.close()
    assert feed.closed and [e.kind for e in events] == ["started"]
