"""VAD detectors on real speech: event times against the fixtures' true boundaries, batched
silero inference against one inference per window, 8 kHz, errors."""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from actors.vad import (
    SileroEngine,
    SileroVad,
    VadOptionError,
    WebRtcVad,
    create_vad,
    webrtc_mode,
)
from protocol.api import VADOption
from protocol.vad_events import SilenceDetected, SpeechStarted

AUDIO = Path(__file__).resolve().parent.parent / "fixtures" / "audio"
TOLERANCE_MS = 60


def load(name: str) -> tuple[np.ndarray, int, list[tuple[float, float]]]:
    with wave.open(str(AUDIO / f"{name}.wav"), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
        rate = w.getframerate()
    meta = json.loads((AUDIO / f"{name}.json").read_text())
    assert meta["samplerate"] == rate
    return pcm, rate, [(s["start_ms"], s["end_ms"]) for s in meta["segments"]]


def frames_of(pcm: np.ndarray, rate: int):
    size = rate // 50
    for i in range(len(pcm) // size):
        yield i * 20.0, pcm[i * size:(i + 1) * size]


@pytest.fixture(scope="module")
def engine() -> SileroEngine:
    return SileroEngine()


def detect(kind: str, name: str, engine: SileroEngine, **option) -> tuple[list, list[tuple[float, float]]]:
    pcm, rate, truth = load(name)
    events: list = []
    vad = create_vad(VADOption(type=kind, samplerate=rate, **option), events.append, engine=engine)
    for now, frame in frames_of(pcm, rate):
        vad.push(frame, now)
        engine.flush()  # once per 20 ms tick, as the media clock does
    vad.close()
    return events, truth


@pytest.mark.parametrize("kind", ["silero", "webrtc", "ten"])
@pytest.mark.parametrize("name", ["speech_16k", "speech_8k"])
def test_events_fall_within_60_ms_of_the_true_boundaries(kind, name, engine):
    if kind == "ten":
        pytest.importorskip("ten_vad")
    events, truth = detect(kind, name, engine)
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    silences = [e for e in events if isinstance(e, SilenceDetected)]
    assert len(starts) == len(silences) == len(truth), events
    assert [type(e) for e in events] == [SpeechStarted, SilenceDetected] * len(truth)
    for (true_start, true_end), started, silence in zip(truth, starts, silences):
        assert abs(started.start_time - true_start) <= TOLERANCE_MS, (true_start, started)
        assert abs(silence.start_time - true_end) <= TOLERANCE_MS, (true_end, silence)
        assert silence.speech_start == started.start_time
        assert silence.duration >= 0


def test_silence_timeout_on_real_audio(engine):
    events, truth = detect("silero", "speech_16k", engine, silence_timeout=500)
    timeouts = [e for e in events if isinstance(e, SilenceDetected) and e.speech_start is None]
    # Every silence of the file lasts more than 500 ms: the lead-in, the 900 and 600 ms gaps
    # between utterances and the 1000 ms tail each get one timeout, 500 ms after the silence
    # began (rounded up to the end of a 32 ms window).
    silence_starts = [0.0] + [end for _, end in truth]
    assert len(timeouts) == len(silence_starts)
    for event, true_start in zip(timeouts, silence_starts):
        assert 500 <= event.duration < 500 + 32
        assert abs(event.start_time - true_start) <= TOLERANCE_MS


def run_calls(engine: SileroEngine, signals: list[np.ndarray], rate: int, frames_per_tick: int = 1):
    """Push every call's frames, `frames_per_tick` per tick, flushing once per tick."""
    probs: list[list[float]] = [[] for _ in signals]
    vads = [
        SileroVad(VADOption(samplerate=rate), engine, lambda e: None, on_window=lambda s, d, p, i=i: probs[i].append(p))
        for i in range(len(signals))
    ]
    size = rate // 50
    ticks = min(len(s) for s in signals) // size // frames_per_tick
    for tick in range(ticks):
        for vad, signal in zip(vads, signals):
            for k in range(frames_per_tick):
                n = tick * frames_per_tick + k
                vad.push(signal[n * size:(n + 1) * size], n * 20.0)
        engine.flush()
    return np.array(probs)


def call_signals(rate: int, calls: int) -> list[np.ndarray]:
    pcm, file_rate, _ = load("speech_16k" if rate == 16000 else "speech_8k")
    assert file_rate == rate
    # Different audio per call: shifted and scaled copies, so rows of a batch differ.
    return [np.roll(pcm, i * rate // 7) // (1 + i % 3) for i in range(calls)]


@pytest.mark.parametrize("rate", [16000, 8000])
def test_batched_and_single_inference_give_the_same_probabilities(rate):
    signals = call_signals(rate, 6)
    batched_engine = SileroEngine()
    single_engine = SileroEngine(max_batch=1)
    batched = run_calls(batched_engine, signals, rate)
    single = run_calls(single_engine, signals, rate)
    frame, window = rate // 50, (512 if rate == 16000 else 256)
    assert batched.shape == single.shape == (6, len(signals[0]) // frame * frame // window)
    assert np.max(np.abs(batched - single)) < 1e-4
    assert (batched > 0.5).any() and (batched < 0.5).any()
    # One inference per tick that had windows due, against one per window.
    assert single_engine.inferences == single_engine.windows == batched.size
    assert batched_engine.windows == batched.size
    assert batched_engine.inferences < batched.size / 5


def test_a_burst_of_frames_is_run_window_by_window_in_order():
    signals = call_signals(16000, 3)
    steady = run_calls(SileroEngine(), signals, 16000, frames_per_tick=1)
    burst = run_calls(SileroEngine(), signals, 16000, frames_per_tick=8)  # 160 ms per tick
    n = burst.shape[1]
    assert np.max(np.abs(steady[:, :n] - burst)) < 1e-4


def test_8k_runs_natively_on_256_sample_windows():
    engine = SileroEngine()
    windows: list[tuple[float, float]] = []
    vad = SileroVad(VADOption(samplerate=8000), engine, lambda e: None, on_window=lambda s, d, p: windows.append((s, d)))
    for now, frame in list(frames_of(load("speech_8k")[0], 8000))[:8]:
        vad.push(frame, now)
    batches = engine.collect()
    assert batches is not None and len(batches) == 1
    assert batches[0].inputs.shape == (1, 32 + 256) and batches[0].rate == 8000
    for batch in batches:
        engine.infer(batch)
    engine.deliver(batches)
    engine.flush()
    assert windows == [(i * 32.0, 32.0) for i in range(5)]  # 8 frames of 160 = 1280 samples


def test_calls_at_8_and_16_khz_share_the_engine_in_one_batch_per_rate():
    engine = SileroEngine()
    got: dict[int, int] = {8000: 0, 16000: 0}

    def counter(rate):
        def on_window(start, duration, p):
            got[rate] += 1
        return on_window

    vads = [SileroVad(VADOption(samplerate=r), engine, lambda e: None, on_window=counter(r)) for r in (8000, 16000, 16000)]
    for vad in vads:
        vad.push(np.zeros(vad.rate * 40 // 1000, dtype=np.int16), 0.0)
    batches = engine.collect()
    assert sorted((b.rate, len(b)) for b in batches) == [(8000, 1), (16000, 2)]
    for batch in batches:
        engine.infer(batch)
    engine.deliver(batches)
    assert got == {8000: 1, 16000: 2}


def test_collect_refuses_a_second_batch_before_delivery_and_close_drops_pending():
    engine = SileroEngine()
    a = SileroVad(VADOption(), engine, lambda e: None)
    b = SileroVad(VADOption(), engine, lambda e: None)
    for vad in (a, b):
        vad.push(np.zeros(1600, dtype=np.int16), 0.0)  # three windows each
    batches = engine.collect()
    with pytest.raises(RuntimeError, match="not been delivered"):
        engine.collect()
    for batch in batches:
        engine.infer(batch)
    engine.deliver(batches)
    b.close()
    assert len(engine) == 1
    assert engine.flush() == 2  # a's two remaining windows, in two rounds


def test_a_failing_listener_closes_only_its_own_detector():
    engine = SileroEngine()
    seen: list[float] = []

    def broken(start, duration, p):
        raise RuntimeError("listener bug")

    bad = SileroVad(VADOption(), engine, lambda e: None, on_window=broken)
    good = SileroVad(VADOption(), engine, lambda e: None, on_window=lambda s, d, p: seen.append(s))
    for vad in (bad, good):
        vad.push(np.zeros(1024, dtype=np.int16), 0.0)
    engine.flush()
    assert bad.closed and not good.closed
    assert seen == [0.0, 32.0]


def test_window_times_follow_the_callers_frame_times():
    engine = SileroEngine()
    starts: list[float] = []
    vad = SileroVad(VADOption(), engine, lambda e: None, on_window=lambda s, d, p: starts.append(s))
    frame = np.zeros(320, dtype=np.int16)
    for i in range(5):
        vad.push(frame, 1000.0 + i * 20)
    vad.push(frame, 5000.0)  # the clock jumped (a hold): windows follow it
    vad.push(frame, 5020.0)
    engine.flush()
    # 1600 samples make three windows and 64 samples (4 ms) held over, dated just before the jump.
    assert starts == [1000.0, 1032.0, 1064.0, 5000.0 - 4.0]


def test_frames_may_be_reused_by_the_caller_before_the_flush():
    engine = SileroEngine()
    a_probs: list[float] = []
    b_probs: list[float] = []
    pcm = load("speech_16k")[0][11200:11200 + 3200]
    a = SileroVad(VADOption(), engine, lambda e: None, on_window=lambda s, d, p: a_probs.append(p))
    b = SileroVad(VADOption(), SileroEngine(), lambda e: None, on_window=lambda s, d, p: b_probs.append(p))
    buffer = np.empty(320, dtype=np.int16)
    for i in range(10):
        buffer[:] = pcm[i * 320:(i + 1) * 320]
        a.push(buffer, i * 20.0)
        buffer[:] = 0  # the caller reuses its buffer before the engine runs
        b.push(pcm[i * 320:(i + 1) * 320].copy(), i * 20.0)
        b.engine.flush()
    engine.flush()
    assert np.allclose(a_probs, b_probs, atol=1e-4)


def test_one_session_with_one_thread_and_no_silero_without_an_engine():
    engine = SileroEngine()
    options = engine.session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    vad = create_vad(VADOption(), lambda e: None, engine=engine)
    assert isinstance(vad, SileroVad) and vad.engine is engine
    vad.close()
    with pytest.raises(VadOptionError, match="silero VAD is not available on this gateway"):
        create_vad(VADOption(), lambda e: None)


def test_unknown_vad_type_is_a_clear_error():
    with pytest.raises(VadOptionError) as info:
        create_vad(VADOption(type="fancy"), lambda e: None)
    assert info.value.message == "unknown VAD type 'fancy': this gateway runs silero, webrtc, ten"
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("kind", "rate", "text"),
    [
        ("silero", 44100, "silero VAD runs at 8000 or 16000 Hz, not 44100"),
        ("webrtc", 11025, "webrtc VAD runs at 8000, 16000, 32000 or 48000 Hz, not 11025"),
        ("ten", 48000, "ten VAD runs at 16000 Hz (8000 is upsampled), not 48000: set vad.samplerate"),
    ],
)
def test_unsupported_sample_rates_are_clear_errors(kind, rate, text, engine):
    with pytest.raises(VadOptionError, match=text.replace("(", r"\(").replace(")", r"\)")):
        create_vad(VADOption(type=kind, samplerate=rate), lambda e: None, engine=engine)


def test_type_is_matched_case_insensitively(engine):
    assert isinstance(create_vad(VADOption(type="WebRTC"), lambda e: None, engine=engine), WebRtcVad)


@pytest.mark.parametrize(("threshold", "mode"), [(0.0, 0), (0.3, 1), (0.5, 2), (0.74, 2), (0.75, 3), (1.0, 3)])
def test_webrtc_mode_comes_from_voice_threshold(threshold, mode):
    assert webrtc_mode(threshold) == mode
    assert WebRtcVad(VADOption(type="webrtc", voice_threshold=threshold), lambda e: None).mode == mode


def test_frames_must_be_int16():
    vad = WebRtcVad(VADOption(type="webrtc"), lambda e: None)
    with pytest.raises(ValueError, match="int16"):
        vad.push(np.zeros(320, dtype=np.float32), 0.0)


async def test_flush_on_an_engine_thread_gives_the_same_probabilities_and_keeps_windows_in_order():
    import asyncio
    import threading

    from actors.engines import EngineHost
    from actors.vad import SileroModel

    signals = call_signals(16000, 4)
    reference = run_calls(SileroEngine(), signals, 16000)
    threads: set[str] = set()

    class SpiedModel(SileroModel):
        def infer(self, batch):
            threads.add(threading.current_thread().name)
            super().infer(batch)

    async with EngineHost() as host:
        host.register("silero", SpiedModel)
        engine = SileroEngine(runner=lambda batches: host.submit("silero", "infer_all", batches))
        probs: list[list[float]] = [[] for _ in signals]
        vads = [SileroVad(VADOption(), engine, lambda e: None, on_window=lambda s, d, p, i=i: probs[i].append(p))
                for i in range(len(signals))]
        ticks = min(len(s) for s in signals) // 320
        for tick in range(ticks):
            for vad, signal in zip(vads, signals):
                vad.push(signal[tick * 320:(tick + 1) * 320], tick * 20.0)
            while not engine.start_flush():   # a round still in flight: wait for it, as the next tick would
                await asyncio.sleep(0.001)
        while len(engine) or engine._in_flight is not None:
            if engine._in_flight is None:
                engine.start_flush()
            await asyncio.sleep(0.001)
    got = np.array(probs)
    assert got.shape == reference.shape
    assert np.max(np.abs(got - reference)) < 1e-4
    assert threads == {"engine-silero"}
    assert engine.failed_batches == 0 and engine.lost_windows == 0


def test_a_call_that_falls_behind_drops_its_oldest_audio_and_says_so():
    pcm, rate, _ = load("speech_16k")
    engine = SileroEngine(max_backlog_ms=320)          # 10 windows of 32 ms
    reports: list[tuple[int, float, int]] = []        # (windows, ms, windows dropped so far)
    starts: list[float] = []
    vad = SileroVad(VADOption(), engine, lambda e: None, on_window=lambda s, d, p: starts.append(s),
                    on_lag=lambda windows, ms: reports.append((windows, ms, vad.dropped_windows)))
    frames = list(frames_of(pcm, rate))
    for now, frame in frames[:40]:                     # 800 ms, nothing inferred meanwhile
        vad.push(frame, now)
    assert len(vad._windows) == 10 and vad.dropped_windows == 15 and engine.dropped_windows == 15
    assert reports == [(1, 32.0, 1)]                   # the first loss at once, then once a second
    for now, frame in frames[40:100]:                  # 1.2 s more, still nothing inferred
        vad.push(frame, now)
    assert len(reports) == 2
    # Each report counts every window dropped since the one before.
    assert reports[1][0] == reports[1][2] - reports[0][2] and reports[1][1] == reports[1][0] * 32.0
    engine.flush()
    # What is left is the newest audio, in order.
    assert starts == sorted(starts) and starts[-1] == pytest.approx(61 * 32.0) and len(starts) == 10
    vad.close()


async def test_a_burst_is_caught_up_without_waiting_for_ticks():
    from actors.engines import EngineHost
    from actors.vad import SileroModel

    pcm, rate, _ = load("speech_16k")
    async with EngineHost() as host:
        host.register("silero", SileroModel)
        engine = SileroEngine(runner=lambda batches: host.submit("silero", "infer_all", batches))
        starts: list[float] = []
        vad = SileroVad(VADOption(), engine, lambda e: None, on_window=lambda s, d, p: starts.append(s))
        for now, frame in list(frames_of(pcm, rate))[:100]:    # 2 s delivered at once: 62 windows
            vad.push(frame, now)
        assert engine.start_flush()                    # one tick's round; the rest follow by themselves
        deadline = asyncio.get_running_loop().time() + 10
        while len(starts) < 62:
            assert asyncio.get_running_loop().time() < deadline, f"{len(starts)} of 62 windows after 10 s"
            await asyncio.sleep(0.005)
        assert starts == sorted(starts) and vad.dropped_windows == 0
        vad.close()
