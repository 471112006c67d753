"""The Recorder: two taps into a two-channel WAV on disk, aligned on the wall clock, restartable."""

from __future__ import annotations

import asyncio
import os
import wave

import numpy as np
import pytest

from actors import AudioPipe, ChildSpec, GetRestartCounts, Restart, Supervisor
from actors.recorder import (
    GetRecorderStats,
    Recorder,
    RecorderStats,
    StereoAligner,
    segment_opener,
)
from protocol.errors import ProtocolError
from tests.actors.support import eventually
from transports.wav_sink import WavSink, open_recording

FRAME = 320  # 20 ms at 16 kHz


def tone(frames: int, rate: int = 16000, amplitude: int = 8000) -> list[np.ndarray]:
    """A 1 kHz tone cut into 20 ms frames (cosine: the first sample is the peak)."""
    n = np.arange(frames * FRAME)
    pcm = (amplitude * np.cos(2 * np.pi * 1000 * n / rate)).astype(np.int16)
    return [pcm[i * FRAME:(i + 1) * FRAME] for i in range(frames)]


def silence(frames: int) -> list[np.ndarray]:
    return [np.zeros(FRAME, np.int16) for _ in range(frames)]


def read_wav(path: str) -> tuple[int, np.ndarray, np.ndarray]:
    with wave.open(path, "rb") as w:
        assert (w.getnchannels(), w.getsampwidth()) == (2, 2)
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    return rate, data[:, 0], data[:, 1]


def onset(channel: np.ndarray, threshold: int = 1000) -> int:
    loud = np.flatnonzero(np.abs(channel.astype(np.int32)) > threshold)
    assert len(loud), "no tone in this channel"
    return int(loud[0])


def peak_hz(channel: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(channel.astype(np.float64)))
    return float(np.argmax(spectrum)) * rate / len(channel)


def pipes(capacity: int = 100) -> tuple[AudioPipe[np.ndarray], AudioPipe[np.ndarray]]:
    return AudioPipe(capacity, name="in"), AudioPipe(capacity, name="out")


# --- alignment (pure) ----------------------------------------------------------------------------

def numbered(count: int, first: int) -> list[np.ndarray]:
    """Frames whose samples count up from `first` (never zero), to see any inserted silence."""
    return [np.arange(first + i * FRAME, first + (i + 1) * FRAME, dtype=np.int64).astype(np.int16)
            for i in range(count)]


def test_jitter_between_the_taps_inserts_no_silence():
    aligner = StereoAligner(max_lead=16000)
    lefts, rights = [], []
    sent = 1
    # The caller's frames arrive 9, 11, 9, 11... per flush; the paced output 10 each time.
    for flush in range(8):
        count = 9 if flush % 2 == 0 else 11
        aligner.push(numbered(count, sent), numbered(10, 20000 + flush * 10 * FRAME))
        sent += count * FRAME
        left, right = aligner.take(10 * FRAME)
        assert len(left) == len(right) == 10 * FRAME
        lefts.append(left)
        rights.append(right)
    left, right = np.concatenate(lefts), np.concatenate(rights)
    # Only the very first flush ran short on the left, by one frame: silence there, none after.
    expected = np.arange(1, 1 + 80 * FRAME).astype(np.int16)
    assert np.array_equal(left[:9 * FRAME], expected[:9 * FRAME])
    assert not left[9 * FRAME:10 * FRAME].any()
    assert np.array_equal(left[10 * FRAME:], expected[9 * FRAME:79 * FRAME])
    assert np.array_equal(right, np.arange(20000, 20000 + 80 * FRAME).astype(np.int16))
    assert aligner.held == (FRAME, 0)  # the caller's last frame waits for the next flush
    assert aligner.dropped == 0


def test_a_silent_side_is_padded_to_the_clock():
    aligner = StereoAligner(max_lead=16000)
    aligner.push([], numbered(5, 1))
    left, right = aligner.take(5 * FRAME)
    assert not left.any() and len(left) == 5 * FRAME
    assert np.array_equal(right, np.concatenate(numbered(5, 1)))
    left, right = aligner.take(FRAME)  # nothing arrived at all: silence on both, time still passes
    assert len(left) == len(right) == FRAME and not left.any() and not right.any()
    assert aligner.take(-5)[0].size == 0


def test_a_late_side_gets_silence_once_then_its_audio_is_carried():
    aligner = StereoAligner(max_lead=16000)
    frames = numbered(30, 1)
    aligner.push([], numbered(10, 1))
    left, _ = aligner.take(10 * FRAME)           # the caller is 200 ms late: silence for now
    assert not left.any()
    aligner.push(frames[:20], numbered(10, 1))   # ...then its backlog arrives at once
    left, _ = aligner.take(10 * FRAME)
    assert np.array_equal(left, np.concatenate(frames[:10]))
    aligner.push(frames[20:], numbered(10, 1))   # back to real time: no more silence
    left, _ = aligner.take(10 * FRAME)
    assert np.array_equal(left, np.concatenate(frames[10:20]))
    assert aligner.held == (10 * FRAME, 0) and aligner.dropped == 0


def test_a_side_far_ahead_of_the_clock_loses_its_oldest_audio():
    aligner = StereoAligner(max_lead=2 * FRAME)
    frames = numbered(10, 1)
    aligner.push(frames, [])
    left, right = aligner.take(FRAME)
    assert aligner.dropped == 7 * FRAME
    assert np.array_equal(left, frames[7])
    assert not right.any()
    assert aligner.held == (2 * FRAME, 0)
    left, right = aligner.take_all()
    assert np.array_equal(left, np.concatenate(frames[8:])) and len(right) == 2 * FRAME and not right.any()


# --- the actor on real files ---------------------------------------------------------------------

async def record_at_once(
    path: str, inbound_frames: list[np.ndarray], outbound_frames: list[np.ndarray], samplerate: int = 16000
) -> RecorderStats:
    """Queue everything, start a recorder and stop it before its first timed flush."""
    inbound, outbound = pipes()
    for frame in inbound_frames:
        inbound.push(frame)
    for frame in outbound_frames:
        outbound.push(frame)
    ref = Recorder.start(inbound, outbound, segment_opener(open_recording, path, samplerate),
                         samplerate=samplerate, ptime_ms=1000)
    stats = await ref.ask(GetRecorderStats())
    assert isinstance(stats, RecorderStats) and stats.flushes == 0
    assert await ref.stop()
    assert len(inbound) == len(outbound) == 0 and not inbound.closed
    return stats


@pytest.mark.parametrize("direction", ["in", "out"])
async def test_tone_lands_in_its_own_channel_at_its_offset(tmp_path, direction):
    path = str(tmp_path / f"{direction}.wav")
    n_silent, n_tone = 7, 10
    signal = silence(n_silent) + tone(n_tone)
    quiet = silence(n_silent + n_tone)
    if direction == "in":
        await record_at_once(path, signal, quiet)
    else:
        await record_at_once(path, quiet, signal)
    rate, left, right = read_wav(path)
    assert rate == 16000 and len(left) == (n_silent + n_tone) * FRAME
    loud, quiet_side = (left, right) if direction == "in" else (right, left)
    assert onset(loud) == n_silent * FRAME
    assert not quiet_side.any()
    assert peak_hz(loud[n_silent * FRAME:], rate) == pytest.approx(1000, abs=5)
    assert np.array_equal(loud[n_silent * FRAME:], np.concatenate(tone(n_tone)))


async def test_the_shorter_side_is_padded_at_the_end(tmp_path):
    path = str(tmp_path / "pad.wav")
    await record_at_once(path, tone(3), silence(8))
    _, left, right = read_wav(path)
    assert len(left) == len(right) == 8 * FRAME
    assert np.array_equal(left[:3 * FRAME], np.concatenate(tone(3))) and not left[3 * FRAME:].any()


async def test_8khz_recording_is_resampled(tmp_path):
    path = str(tmp_path / "narrow.wav")
    n_silent, n_tone = 5, 20
    await record_at_once(path, silence(n_silent) + tone(n_tone), silence(n_silent + n_tone), samplerate=8000)
    rate, left, right = read_wav(path)
    assert rate == 8000
    assert len(left) == (n_silent + n_tone) * FRAME // 2
    assert abs(onset(left) - n_silent * 160) <= 16  # the resampler's filter delay is 12 samples (1.5 ms)
    body = left[n_silent * 160 + 40:]
    assert peak_hz(body, 8000) == pytest.approx(1000, abs=10)
    # Level kept through the filter: a 8000-peak cosine has an RMS of ~5657.
    assert np.sqrt(np.mean(body.astype(np.float64) ** 2)) == pytest.approx(8000 / np.sqrt(2), rel=0.03)
    assert not right.any()


async def feed(
    inbound: AudioPipe[np.ndarray], outbound: AudioPipe[np.ndarray],
    frames_in: list[np.ndarray], frames_out: list[np.ndarray],
) -> None:
    """One frame per 20 ms into each tap, on absolute deadlines, as the track's tick does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time()
    for frame_in, frame_out in zip(frames_in, frames_out):
        inbound.push(frame_in)
        outbound.push(frame_out)
        deadline += 0.02
        await asyncio.sleep(max(0.0, deadline - loop.time()))


async def test_timed_flushes_keep_a_valid_file_on_the_wall_clock(tmp_path):
    path = str(tmp_path / "live.wav")
    inbound, outbound = pipes(capacity=50)
    n_silent, n_tone = 10, 20
    loop = asyncio.get_running_loop()
    ref = Recorder.start(inbound, outbound, segment_opener(open_recording, path, 16000), ptime_ms=100)
    started = loop.time()
    feeder = asyncio.create_task(
        feed(inbound, outbound, silence(n_silent) + tone(n_tone), silence(n_silent + n_tone))
    )
    try:
        await eventually(lambda: os.path.exists(path) and os.path.getsize(path) > 44 + 4 * 3 * FRAME)
        # Mid-recording, with the file still open: a valid WAV holding every flushed sample.
        stats = await ref.ask(GetRecorderStats())
        assert isinstance(stats, RecorderStats) and stats.flushes >= 1
        with wave.open(path, "rb") as w:
            assert w.getnchannels() == 2 and w.getnframes() * 4 == os.path.getsize(path) - 44
        await asyncio.wait_for(feeder, 5)
    finally:
        feeder.cancel()
    stats = await ref.ask(GetRecorderStats())
    await ref.stop()
    elapsed = loop.time() - started
    _, left, right = read_wav(path)
    assert stats.flush_ms == 100 and stats.flushes >= 4
    assert stats.bytes_written == 4 * stats.samples_written and stats.dropped_samples == 0
    assert stats.cpu_us_per_flush > 0
    # The file covers the recorder's lifetime (plus at most what was still queued at the stop).
    assert len(left) / 16000 == pytest.approx(elapsed, abs=0.08)
    assert abs(onset(left) - n_silent * FRAME) <= 3 * FRAME
    assert not right.any()
    tone_at = onset(left)
    assert np.array_equal(left[tone_at:tone_at + n_tone * FRAME], np.concatenate(tone(n_tone)))


async def test_a_cancelled_recorder_still_completes_and_closes_its_file(tmp_path):
    path = str(tmp_path / "cancelled.wav")
    inbound, outbound = pipes()
    opened: list[WavSink] = []

    def open_sink() -> WavSink:
        opened.append(open_recording(path, 16000, 0))
        return opened[-1]

    ref = Recorder.start(inbound, outbound, open_sink, ptime_ms=1000)
    await eventually(lambda: len(opened) == 1)
    for frame in tone(4):
        inbound.push(frame)
    ref._task.cancel()  # type: ignore[union-attr]  # what a timed-out stop does
    await ref.wait_stopped()
    assert ref.exit is not None and ref.exit.reason == "shutdown"
    assert opened[0].closed
    _, left, right = read_wav(path)
    assert np.array_equal(left, np.concatenate(tone(4))) and not right.any()


class FailingSink:
    """A real sink whose n-th write fails as a full disk would."""

    def __init__(self, sink: WavSink, fail_on: int) -> None:
        self.sink = sink
        self.path = sink.path
        self.fail_on = fail_on
        self.writes = 0

    def write(self, left: np.ndarray, right: np.ndarray) -> None:
        self.writes += 1
        if self.writes == self.fail_on:
            raise OSError(28, "No space left on device")
        self.sink.write(left, right)

    def close(self) -> None:
        self.sink.close()


async def test_restart_under_a_supervisor_opens_the_next_segment(tmp_path):
    path = str(tmp_path / "calls" / "s1.wav")
    opened: list[WavSink | FailingSink] = []

    def open_sink(path: str, samplerate: int, segment: int) -> WavSink | FailingSink:
        sink = open_recording(path, samplerate, segment)
        wrapped = FailingSink(sink, fail_on=2) if segment == 0 else sink
        opened.append(wrapped)
        return wrapped

    inbound, outbound = pipes()
    opener = segment_opener(open_sink, path, 16000)  # one counter for every instance

    def start(parent):
        return Recorder.start(inbound, outbound, opener, ptime_ms=20, parent=parent, name="recorder")

    sup = Supervisor.start([ChildSpec("recorder", start, restart=Restart.TRANSIENT)])
    try:
        for frame in tone(5):
            inbound.push(frame)
        await eventually(lambda: len(opened) == 2)
        assert await sup.ask(GetRestartCounts()) == {"recorder": 1}
        for frame in tone(5):
            outbound.push(frame)
        await eventually(lambda: len(outbound) == 0)
    finally:
        assert await sup.stop()
    first, second = opened
    assert isinstance(first, FailingSink) and first.sink.closed  # closed by on_failure
    assert isinstance(second, WavSink) and second.closed
    assert second.path == str(tmp_path / "calls" / "s1.part1.wav")
    rate0, left0, right0 = read_wav(path)
    rate1, left1, right1 = read_wav(second.path)
    assert rate0 == rate1 == 16000
    assert len(left0) == first.sink.frames_written > 0  # the chunk written before the failure
    assert len(left1) == second.frames_written > 0
    # The caller's audio is in the two files in order, less at most the one chunk the failing
    # write refused; the output pushed after the restart is all in the second file.
    peaks = 2 * 20  # samples at +-8000 per 20 ms frame of the 1 kHz cosine
    caller = np.concatenate((left0, left1)).astype(np.int32)
    assert 3 * peaks <= np.count_nonzero(np.abs(caller) == 8000) <= 5 * peaks
    assert np.count_nonzero(np.abs(right1.astype(np.int32)) == 8000) == 5 * peaks
    assert not right0.any()


def test_flush_interval_is_clamped_to_the_pipes_and_the_frame():
    inbound, outbound = pipes(capacity=10)
    opener = segment_opener(open_recording, "/nonexistent/never-opened.wav", 16000)
    assert Recorder(inbound, outbound, opener, ptime_ms=200).flush_ms == 100
    assert Recorder(inbound, outbound, opener, ptime_ms=50).flush_ms == 50
    assert Recorder(inbound, outbound, opener, ptime_ms=1).flush_ms == 20
    with pytest.raises(ProtocolError):
        Recorder(inbound, outbound, opener, samplerate=44101)
    with pytest.raises(ValueError):
        Recorder(inbound, outbound, opener, samplerate=0)
