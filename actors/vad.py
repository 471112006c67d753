"""Voice activity detection on a call's inbound audio: silero (ONNX), WebRTC and TEN.

Detectors are inline processors on the media plane, not actors: the track hands each 20 ms frame
to ``push(frame, now_ms)`` and the detector reports ``SpeechStarted``/``SilenceDetected`` through
its ``on_event`` callback, from a ``VadEventMachine`` (protocol/vad_events.py) that owns the
speaking/silence rules. ``now_ms`` is the stream time of the frame's first sample; window times
are taken from it, so they follow the caller's clock.

Silero is the costly one, and its cost decides how many calls a core carries, so it is shared and
batched. ``SileroEngine`` holds ONE onnxruntime session for the process (one intra-op and one
inter-op thread); each call's ``SileroVad`` keeps only its recurrent state (2x128 floats) and the
tail of its last window (the model's context: 64 samples at 16 kHz, 32 at 8 kHz). ``push`` only
queues a call's complete windows (512 samples at 16 kHz, 256 at 8 kHz, 32 ms either way); once
per media-clock tick the owner calls ``engine.flush()``, which runs the windows of ALL calls that
are due in ONE batched inference per sample rate and hands each call its probability. A call with
more than one window due (frames delivered in a burst) gets them in successive rounds, since each
window needs the state the previous one left.

``flush()`` is ``collect()`` + ``batch.infer()`` + ``deliver(batch)``. Only ``infer`` is heavy,
and it touches nothing but the batch and the session (onnxruntime releases the GIL while it runs),
so the gateway runs that step on the EngineHost's "silero" engine thread (``SileroModel``, given
to the engine as its ``runner``) and the other two on the loop. One batch is in flight at a time: ``collect`` refuses to start another
before the last is delivered, because the next windows of the same calls need the states it
brings back.

WebRTC (webrtcvad-wheels) and TEN (ten-vad) are per call and cheap enough to run inline in
``push``. WebRTC has no probability, only a yes/no per 20 ms frame; its aggressiveness mode comes
from ``voiceThreshold`` (see ``webrtc_mode``), and its built-in overhang is stated to the event
machine so the end of speech is dated correctly. TEN runs on 16 kHz only; 8 kHz input is
upsampled with soxr. TEN is optional: its wheel needs the system's libc++1, and its licence adds
conditions to Apache-2.0 (no deployment that competes with Agora's offerings).

A call's queue of windows is bounded (``max_backlog_ms``, config ``vad_backlog_ms``): when the
engine cannot keep up, or a client sends audio much faster than real time, the oldest windows are
dropped, counted on the detector and the engine, and reported through ``on_lag`` (at most once a
second of stream time) so the call can tell its application that its VAD skipped audio. When a
round leaves some call behind (more than one window due), the engine starts the next round as soon
as the last is delivered, so a burst drains at the speed of inference rather than one window per
call per tick; steady traffic keeps one large batch per tick.

``create_vad(option, on_event, engine=...)`` picks the detector for ``option.type``; an unknown
type or an unsupported sample rate raises ``VadOptionError`` naming it.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog

from protocol.api import VADOption
from protocol.errors import ProtocolError
from protocol.vad_events import VadEvent, VadEventMachine

log = structlog.get_logger("vad")

VAD_TYPES = ("silero", "webrtc", "ten")

# Samples per silero window and per context prefix, by sample rate: the sizes the model was
# trained on; other sizes are rejected by the model or degrade it.
SILERO_WINDOW = {16000: 512, 8000: 256}
SILERO_CONTEXT = {16000: 64, 8000: 32}
SILERO_STATE = 128

WEBRTC_FRAME_MS = 20
WEBRTC_RATES = (8000, 16000, 32000, 48000)
# WebRTC's overhang after speech of more than six frames (kOverHangMax2 in its vad_core.c, for
# 20 ms frames): modes 0 and 1 keep saying "speech" 7 frames after it ends, modes 2 and 3, 5.
WEBRTC_HANGOVER_MS = {0: 140.0, 1: 140.0, 2: 100.0, 3: 100.0}

TEN_RATE = 16000
TEN_HOP = 256  # 16 ms; with 160 the library repeats each probability twice, which hides its slope

EventSink = Callable[[VadEvent], None]
WindowSink = Callable[[float, float, float | bool], None]
"""Optional per-window listener: (start_ms, duration_ms, probability or yes/no)."""
LagSink = Callable[[int, float], None]
"""Optional listener for skipped audio: (windows dropped since the last report, their ms)."""

DEFAULT_BACKLOG_MS = 5000.0
LAG_REPORT_INTERVAL_MS = 1000.0


class VadOptionError(ProtocolError):
    """The call's VAD option asks for something this gateway cannot run."""


class VoiceDetector(Protocol):
    machine: VadEventMachine

    def push(self, frame: np.ndarray, now_ms: float) -> None: ...

    def close(self) -> None: ...


def silero_model_path() -> Path:
    """The ONNX model shipped in the silero-vad wheel (installed without torch: never imported)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise VadOptionError("silero VAD is not available: the silero-vad package is not installed", 500)
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise VadOptionError(f"silero VAD is not available: {path} is missing", 500)
    return path


class _Framer:
    """Cuts a call's frames into fixed windows and dates each from the caller's frame times."""

    __slots__ = ("size", "rate", "_buf", "_buf_start")

    def __init__(self, size: int, rate: int) -> None:
        self.size = size
        self.rate = rate
        self._buf = np.zeros(0, dtype=np.int16)
        self._buf_start = 0.0

    def push(self, frame: np.ndarray, now_ms: float) -> list[tuple[float, np.ndarray]]:
        if frame.dtype != np.int16 or frame.ndim != 1:
            raise ValueError(f"VAD frames are 1-D int16 arrays, got {frame.dtype} of shape {frame.shape}")
        held = len(self._buf)
        # Re-anchored at every frame: held samples are taken to run up to this frame's start.
        self._buf_start = now_ms - held * 1000.0 / self.rate
        # Always a copy: silero windows wait for the next flush, and the caller may reuse its frame.
        self._buf = np.concatenate((self._buf, frame))
        windows = []
        size = self.size
        while len(self._buf) >= size:
            windows.append((self._buf_start, self._buf[:size]))
            self._buf = self._buf[size:]
            self._buf_start += size * 1000.0 / self.rate
        return windows


class _Deliverer:
    """Feeds window results to a call's event machine and its listeners."""

    __slots__ = ("machine", "on_event", "on_window")

    def __init__(
        self, machine: VadEventMachine, on_event: EventSink, on_window: WindowSink | None
    ) -> None:
        self.machine = machine
        self.on_event = on_event
        self.on_window = on_window

    def result(self, start_ms: float, duration_ms: float, speech: float | bool) -> None:
        if self.on_window is not None:
            self.on_window(start_ms, duration_ms, speech)
        for event in self.machine.feed(start_ms, duration_ms, speech):
            self.on_event(event)


class SileroBatch:
    """The windows of one inference round: up to ``max_batch`` calls at one sample rate each."""

    __slots__ = ("rate", "vads", "starts", "inputs", "states", "probabilities", "new_states")

    def __init__(
        self, rate: int, vads: list[SileroVad], starts: list[float], inputs: np.ndarray, states: np.ndarray
    ) -> None:
        self.rate = rate
        self.vads = vads
        self.starts = starts
        self.inputs = inputs
        self.states = states
        self.probabilities: np.ndarray | None = None
        self.new_states: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.vads)


class SileroModel:
    """The silero ONNX session (one intra-op and one inter-op thread). In the gateway it lives on an
    engine thread of the EngineHost, which calls ``infer_all``; onnxruntime releases the GIL while
    it runs, so a batch there runs on the other core instead of stalling the event loop."""

    def __init__(self, model_path: Path | str | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            str(model_path or silero_model_path()), options, providers=["CPUExecutionProvider"]
        )

    def infer(self, batch: SileroBatch) -> None:
        """Run one batch through the session. Touches only the batch: safe off the event loop."""
        feed = {"input": batch.inputs, "state": batch.states, "sr": np.array(batch.rate, dtype=np.int64)}
        output, state = self.session.run(None, feed)
        batch.probabilities = output[:, 0]
        batch.new_states = state

    def infer_all(self, batches: list[SileroBatch]) -> None:
        for batch in batches:
            self.infer(batch)


InferenceRunner = Callable[[list[SileroBatch]], "asyncio.Future[None]"]
"""Runs ``SileroModel.infer_all(batches)`` somewhere else (an engine thread); done when it is."""


class SileroEngine:
    """The windows due of every call on one model; see the module docstring.

    ``max_batch`` caps how many windows one inference takes (None: all that are due); 1 gives one
    inference per window, the unbatched baseline. With a ``runner`` (the gateway's: the model on an
    EngineHost thread) ``start_flush`` infers there; without one, the engine holds a model of its
    own and infers inline (benchmarks and tests).
    """

    def __init__(self, model_path: Path | str | None = None, *, max_batch: int | None = None,
                 runner: InferenceRunner | None = None, max_backlog_ms: float = DEFAULT_BACKLOG_MS) -> None:
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_backlog_ms < 100:
            raise ValueError(f"max_backlog_ms must be at least 100, got {max_backlog_ms}")
        self.max_backlog_ms = float(max_backlog_ms)
        self.model = SileroModel(model_path) if runner is None else None
        self.runner = runner
        self.max_batch = max_batch
        self._due: dict[SileroVad, None] = {}  # calls with windows waiting, in arrival order
        self._in_flight: list[SileroBatch] | None = None
        self.inferences = 0
        self.windows = 0
        self.failed_batches = 0
        self.lost_windows = 0
        self.dropped_windows = 0                # over every call's backlog bound, ever

    @property
    def session(self) -> Any:
        if self.model is None:
            raise RuntimeError("this silero engine infers through its runner; it has no session here")
        return self.model.session

    def __len__(self) -> int:
        """Calls with windows waiting for the next flush."""
        return len(self._due)

    def flush(self) -> int:
        """Run every window due, in batches, and deliver the results. Returns the window count."""
        done = 0
        while True:
            batches = self.collect()
            if batches is None:
                return done
            for batch in batches:
                self.infer(batch)
            self.deliver(batches)
            done += sum(len(b) for b in batches)

    def start_flush(self) -> bool:
        """One round of `flush` with the inference handed to the runner: collect and deliver run
        here (on the event loop), the inference where the runner puts it. Returns False while the
        previous round is still in flight (its windows' next ones need the states it brings)."""
        if self._in_flight is not None:
            return False
        batches = self.collect()
        if batches is None:
            return True
        if self.runner is None:
            for batch in batches:
                self.infer(batch)
            self.deliver(batches)
            return True
        # Calls still due right after collect() hold more than one window: they are behind.
        behind = bool(self._due)
        future = self.runner(batches)

        def done(fut: asyncio.Future[None]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                # The windows are lost (counted); the detectors keep their last state and carry on.
                self.failed_batches += 1
                self.lost_windows += sum(len(b) for b in batches)
                log.error("silero batch failed", error=repr(None if fut.cancelled() else fut.exception()))
                self._in_flight = None
                return
            self.deliver(batches)
            if behind and self._due:
                # Catch up now rather than at the next tick: a call with a burst of windows due
                # needs one round per window. Calls that are not behind wait for the tick, so
                # steady traffic keeps its one large batch per tick.
                self.start_flush()

        future.add_done_callback(done)
        return True

    def backlog_windows(self, rate: int) -> int:
        """The most windows one call may have waiting at `rate`."""
        return max(1, int(self.max_backlog_ms * rate / 1000.0) // SILERO_WINDOW[rate])

    def collect(self) -> list[SileroBatch] | None:
        """Take the next window of every call with one due; None when nothing is due."""
        if self._in_flight is not None:
            raise RuntimeError("the previous silero batch has not been delivered yet")
        if not self._due:
            return None
        by_rate: dict[int, list[SileroVad]] = {}
        for vad in list(self._due):
            by_rate.setdefault(vad.rate, []).append(vad)
        batches = []
        for rate, vads in by_rate.items():
            step = self.max_batch or len(vads)
            for first in range(0, len(vads), step):
                batches.append(self._batch(rate, vads[first:first + step]))
        self._in_flight = batches
        return batches

    def _batch(self, rate: int, vads: list[SileroVad]) -> SileroBatch:
        window, context = SILERO_WINDOW[rate], SILERO_CONTEXT[rate]
        inputs = np.empty((len(vads), context + window), dtype=np.float32)
        states = np.empty((2, len(vads), SILERO_STATE), dtype=np.float32)
        starts = []
        for row, vad in enumerate(vads):
            start, samples = vad._windows.popleft()
            if not vad._windows:
                del self._due[vad]
            starts.append(start)
            inputs[row, :context] = vad._context
            np.multiply(samples, 1.0 / 32768.0, out=inputs[row, context:], casting="unsafe")
            vad._context = inputs[row, window:]  # the last `context` samples of this window
            states[:, row, :] = vad._state
        return SileroBatch(rate, vads, starts, inputs, states)

    def infer(self, batch: SileroBatch) -> None:
        """Run one batch through this engine's own model (inline use)."""
        if self.model is None:
            raise RuntimeError("this silero engine infers through its runner")
        self.model.infer(batch)

    def deliver(self, batches: list[SileroBatch]) -> None:
        """Give each call its state back and its probability to its event machine."""
        if batches is not self._in_flight:
            raise RuntimeError("deliver() takes the batches of the last collect()")
        self._in_flight = None
        for batch in batches:
            if batch.probabilities is None or batch.new_states is None:
                raise RuntimeError("a silero batch was delivered before infer() ran on it")
            self.inferences += 1
            self.windows += len(batch)
            duration = SILERO_WINDOW[batch.rate] * 1000.0 / batch.rate
            for row, vad in enumerate(batch.vads):
                if vad.closed:
                    continue
                vad._state = batch.new_states[:, row, :]
                try:
                    vad._deliver.result(batch.starts[row], duration, float(batch.probabilities[row]))
                except Exception:  # noqa: BLE001 - one call's broken listener must not stall the others
                    log.exception("vad listener failed; detector closed")
                    vad.close()

    def _enqueue(self, vad: SileroVad) -> None:
        self._due[vad] = None

    def _forget(self, vad: SileroVad) -> None:
        self._due.pop(vad, None)


class SileroVad:
    """One call's silero detector: per-call state on the shared ``SileroEngine``."""

    def __init__(
        self,
        option: VADOption,
        engine: SileroEngine,
        on_event: EventSink,
        *,
        on_window: WindowSink | None = None,
        on_lag: LagSink | None = None,
    ) -> None:
        if option.samplerate not in SILERO_WINDOW:
            raise VadOptionError(
                f"silero VAD runs at 8000 or 16000 Hz, not {option.samplerate}: set vad.samplerate"
            )
        self.rate = option.samplerate
        self.engine = engine
        self.machine = VadEventMachine(option)
        self._deliver = _Deliverer(self.machine, on_event, on_window)
        self._framer = _Framer(SILERO_WINDOW[self.rate], self.rate)
        self._windows: deque[tuple[float, np.ndarray]] = deque()
        self._state = np.zeros((2, SILERO_STATE), dtype=np.float32)
        self._context = np.zeros(SILERO_CONTEXT[self.rate], dtype=np.float32)
        self._limit = engine.backlog_windows(self.rate)
        self._on_lag = on_lag
        self._unreported = 0
        self._reported_at: float | None = None
        self.dropped_windows = 0
        self.closed = False

    def push(self, frame: np.ndarray, now_ms: float) -> None:
        """Queue the complete windows this frame finishes; results come at the engine's flush."""
        if self.closed:
            return
        windows = self._framer.push(frame, now_ms)
        if windows:
            self._windows.extend(windows)
            over = len(self._windows) - self._limit
            if over > 0:
                for _ in range(over):
                    self._windows.popleft()
                self.dropped_windows += over
                self.engine.dropped_windows += over
                self._unreported += over
            if self._unreported and self._on_lag is not None and (
                    self._reported_at is None or now_ms - self._reported_at >= LAG_REPORT_INTERVAL_MS):
                dropped, self._unreported, self._reported_at = self._unreported, 0, now_ms
                self._on_lag(dropped, dropped * SILERO_WINDOW[self.rate] * 1000.0 / self.rate)
            self.engine._enqueue(self)

    def close(self) -> None:
        self.closed = True
        self._windows.clear()
        self.engine._forget(self)


def webrtc_mode(voice_threshold: float) -> int:
    """WebRTC's aggressiveness (0-3) for a ``voiceThreshold``: quarters of the 0..1 range.

    The default 0.5 gives mode 2 ("aggressive"); a threshold of 0.75 or more gives the original
    active-call's fixed mode 3.
    """
    return min(3, max(0, int(voice_threshold * 4)))


class WebRtcVad:
    """One call's WebRTC detector: a yes/no per 20 ms frame, decided inline in ``push``."""

    def __init__(
        self, option: VADOption, on_event: EventSink, *, on_window: WindowSink | None = None
    ) -> None:
        import webrtcvad

        if option.samplerate not in WEBRTC_RATES:
            raise VadOptionError(
                f"webrtc VAD runs at 8000, 16000, 32000 or 48000 Hz, not {option.samplerate}: "
                "set vad.samplerate"
            )
        self.rate = option.samplerate
        self.mode = webrtc_mode(option.voice_threshold)
        self._vad = webrtcvad.Vad(self.mode)
        self.machine = VadEventMachine(option, hangover_ms=WEBRTC_HANGOVER_MS[self.mode])
        self._deliver = _Deliverer(self.machine, on_event, on_window)
        self._framer = _Framer(self.rate * WEBRTC_FRAME_MS // 1000, self.rate)
        self.closed = False

    def push(self, frame: np.ndarray, now_ms: float) -> None:
        if self.closed:
            return
        for start, samples in self._framer.push(frame, now_ms):
            speech = self._vad.is_speech(samples.astype("<i2", copy=False).tobytes(), self.rate)
            self._deliver.result(start, WEBRTC_FRAME_MS, bool(speech))

    def close(self) -> None:
        self.closed = True


class TenVad:
    """One call's TEN detector (ten-vad's native library, a handle per call), inline in ``push``."""

    def __init__(
        self, option: VADOption, on_event: EventSink, *, on_window: WindowSink | None = None
    ) -> None:
        if option.samplerate not in (8000, TEN_RATE):
            raise VadOptionError(
                f"ten VAD runs at 16000 Hz (8000 is upsampled), not {option.samplerate}: set vad.samplerate"
            )
        try:
            from ten_vad import TenVad as _Native
        except (ImportError, OSError) as exc:
            raise VadOptionError(f"ten VAD is not available: {exc}", 500) from exc
        try:
            self._vad = _Native(TEN_HOP, option.voice_threshold)
        except OSError as exc:  # libten_vad.so needs libc++1 from the system
            raise VadOptionError(f"ten VAD is not available: {exc}", 500) from exc
        self.rate = option.samplerate
        self._resampler = None
        if self.rate != TEN_RATE:
            import soxr

            # "QQ" (cubic) keeps a steady 20 ms in, 20 ms out; the better filters hand their output
            # over in bursts of 60-100 ms, which would only delay the decisions.
            self._resampler = soxr.ResampleStream(self.rate, TEN_RATE, 1, dtype="int16", quality="QQ")
        self.machine = VadEventMachine(option)
        self._deliver = _Deliverer(self.machine, on_event, on_window)
        self._framer = _Framer(TEN_HOP, TEN_RATE)
        self.closed = False

    def push(self, frame: np.ndarray, now_ms: float) -> None:
        if self.closed:
            return
        if self._resampler is not None:
            end_ms = now_ms + len(frame) * 1000.0 / self.rate
            frame = self._resampler.resample_chunk(frame)
            # soxr's output is aligned with its input; what it holds back is the newest audio.
            now_ms = end_ms - (len(frame) + self._resampler.delay()) * 1000.0 / TEN_RATE
        for start, samples in self._framer.push(frame, now_ms):
            probability, _flag = self._vad.process(np.ascontiguousarray(samples))
            if probability < 0:
                # The library answers its first hop with -1 while it fills its own history.
                continue
            self._deliver.result(start, TEN_HOP * 1000.0 / TEN_RATE, min(1.0, float(probability)))

    def close(self) -> None:
        # Dropping the wrapper destroys the native handle now rather than whenever the call's
        # objects are collected.
        self.closed = True
        self._vad = None


def create_vad(
    option: VADOption,
    on_event: EventSink,
    *,
    engine: SileroEngine | None = None,
    on_window: WindowSink | None = None,
    on_lag: LagSink | None = None,
) -> VoiceDetector:
    """The detector for ``option.type``: silero (on ``engine``, the gateway's shared one),
    webrtc or ten. Raises ``VadOptionError`` for a type or sample rate it cannot run."""
    kind = option.type.strip().lower()
    if kind == "silero":
        if engine is None:
            raise VadOptionError("silero VAD is not available on this gateway", 501)
        return SileroVad(option, engine, on_event, on_window=on_window, on_lag=on_lag)
    if kind == "webrtc":
        return WebRtcVad(option, on_event, on_window=on_window)
    if kind == "ten":
        return TenVad(option, on_event, on_window=on_window)
    raise VadOptionError(f"unknown VAD type {option.type!r}: this gateway runs {', '.join(VAD_TYPES)}")
