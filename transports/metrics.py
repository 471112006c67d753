"""`GET /metrics`: the gateway's figures in the Prometheus text format (prometheus-client).

Figures are read when scraped, from where they already live (the call supervisor, the media
clock, the engine threads, the media loader, the dump writer), plus the few this module counts
itself: inbound frames dropped (the per-call input pipes count into one `Counters`) and the event
loop's lag (a monitor task). Each scrape builds a fresh registry: several gateways in one process
(the tests) never share series.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from actors.pipes import AudioPipe
from actors.tally import Histogram, Tally

__all__ = ["CONTENT_TYPE", "CountedPipe", "Counters", "LoopLagMonitor", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class Counters:
    """Process-wide counts kept by the transports."""

    inbound_frames_dropped: int = 0
    outbound_frames_dropped: int = 0     # of connections that have closed (live ones are added when scraped)


class CountedPipe(AudioPipe[np.ndarray]):
    """A call's inbound pipe that adds its drops (the caller sent faster than the call consumed)
    to the gateway's counter as they happen."""

    __slots__ = ("_counters",)

    def __init__(self, capacity: int, counters: Counters, name: str = "") -> None:
        super().__init__(capacity, name=name)
        self._counters = counters

    def push(self, item: np.ndarray) -> None:
        before = self._dropped
        super().push(item)
        if self._dropped != before:
            self._counters.inbound_frames_dropped += self._dropped - before


@dataclass
class LoopLagMonitor:
    """How late the event loop wakes a task that asked to sleep `interval`: every delay a call's
    media, commands and events see on top of their own work."""

    interval: float = 0.1
    buckets: tuple[float, ...] = LAG_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS) + 1))
    total: float = 0.0
    samples: int = 0
    last: float = 0.0
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def observe(self, lag: float) -> None:
        self.last = lag
        self.total += lag
        self.samples += 1
        for i, bound in enumerate(self.buckets):
            if lag <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    async def _run(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(self.interval)
            self.observe(max(0.0, time.monotonic() - start - self.interval))

    def family(self) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return HistogramMetricFamily("activecall_event_loop_lag_seconds",
                                     "How late the event loop ran a task after a 100 ms sleep",
                                     buckets=cumulative, sum_value=self.total)


class _Snapshot:
    """A registry collector over figures gathered (asynchronously) just before the scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    if labels:
        family = GaugeMetricFamily(name, doc, labels=list(labels))
        family.add_metric(list(labels.values()), value)
        return family
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def render(figures: dict[str, Any]) -> bytes:
    """The text exposition of `figures` (as gathered by the HTTP server's /metrics handler)."""
    families: list[Metric] = []
    live = GaugeMetricFamily("activecall_calls_live", "Calls running now, by leg type", labels=["type"])
    for call_type, count in sorted(figures["calls_by_type"].items()):
        live.add_metric([call_type], count)
    families.append(live)
    admissions = figures["admissions"]
    families += [
        _gauge("activecall_calls_max", "The admission limit (max_calls)", admissions["max_calls"]),
        _counter("activecall_admissions_refused", "Calls refused at max_calls", admissions["refused"]),
        _counter("activecall_inbound_frames_dropped",
                 "Caller audio frames dropped because the call did not consume them in time",
                 figures["inbound_frames_dropped"]),
        _counter("activecall_outbound_frames_dropped",
                 "Audio frames for /call clients dropped because the client read them too slowly",
                 figures["outbound_frames_dropped"]),
        _counter("activecall_binary_frames_dropped",
                 "Binary frames received on a connection whose leg takes no audio from it",
                 figures["binary_frames_dropped"]),
    ]
    clock = figures["clock"]
    families += [
        _counter("activecall_clock_ticks", "Media clock ticks", clock["ticks"]),
        _counter("activecall_clock_late_ticks", "Media clock ticks that ran after their deadline", clock["late_ticks"]),
        _counter("activecall_clock_skipped_ticks", "Media clock ticks skipped to catch up after a stall",
                 clock["skipped"]),
        _gauge("activecall_clock_tracks", "Tracks paced by the media clock", clock["tracks"]),
    ]
    lateness = GaugeMetricFamily("activecall_clock_lateness_seconds",
                                 "How late clock ticks ran after their deadline over the last ~60 s",
                                 labels=["quantile"])
    for label, key in (("0.5", "lateness_ms_p50"), ("0.99", "lateness_ms_p99"), ("1", "lateness_ms_max")):
        lateness.add_metric([label], clock[key] / 1000)
    families.append(lateness)
    families.append(figures["loop_lag"].family())
    families.append(_gauge("activecall_event_loop_lag_last_seconds", "The last event loop lag measured",
                           figures["loop_lag"].last))
    for metric, doc in (("submitted", "Jobs submitted"), ("completed", "Jobs completed"),
                        ("cancelled", "Jobs cancelled"), ("failed", "Jobs failed"),
                        ("busy_seconds", "Engine-thread seconds spent in jobs"),
                        ("refused", "Jobs refused because the engine's queue was full")):
        family = CounterMetricFamily(f"activecall_engine_{metric}", f"{doc}, per engine thread", labels=["engine"])
        for stats in figures["engines"]:
            family.add_metric([stats.name], getattr(stats, metric))
        families.append(family)
    queued = GaugeMetricFamily("activecall_engine_queued", "Jobs submitted and not finished, per engine thread",
                               labels=["engine"])
    running = GaugeMetricFamily("activecall_engine_running", "Whether the engine thread runs", labels=["engine"])
    for stats in figures["engines"]:
        queued.add_metric([stats.name], stats.queued)
        running.add_metric([stats.name], 1 if stats.running else 0)
    families += [queued, running]
    media = figures["media"]
    families += [
        _gauge("activecall_media_cache_bytes", "Decoded play clips held by the cache", media["cache_bytes"]),
        _gauge("activecall_media_decode_bytes", "PCM held by play decodes in progress", media["decode_bytes"]),
        _counter("activecall_media_decode_refused", "play loads refused at the decode memory ceiling",
                 media["decode_refused"]),
    ]
    dump = figures["dump"]
    families += [
        _gauge("activecall_dump_queued_bytes", "Event dump lines waiting for the writer thread", dump["pending"]),
        _counter("activecall_dump_lost_lines", "Event dump lines not written because the writer fell behind",
                 dump["lost_lines"]),
        _counter("activecall_dump_written_bytes", "Event dump bytes written", dump["written_bytes"]),
        _gauge("activecall_recordings_claimed", "Recording paths held by live calls", figures["recordings"]),
        _gauge("activecall_open_fds", "Open file descriptors of the process", figures["open_fds"] or 0),
        _gauge("activecall_asyncio_tasks", "asyncio tasks of the process", figures["tasks"]),
    ]
    vad = figures.get("vad")
    if vad is not None:
        families += [
            _counter("activecall_vad_windows", "Silero VAD windows inferred, all calls", vad["windows"]),
            _counter("activecall_vad_inferences", "Silero VAD batched inferences (one per media tick with "
                     "windows due, at most)", vad["inferences"]),
            _counter("activecall_vad_windows_dropped", "Silero VAD windows dropped past a call's vad_backlog_ms "
                     "(each call is told by a vad.skipped metrics event)", vad["dropped_windows"]),
            _counter("activecall_vad_windows_lost", "Silero VAD windows of batches whose inference failed",
                     vad["lost_windows"]),
        ]
    families += _tally_families(figures["tally"], figures["engines"])
    queues = figures["event_queues"]
    families += [
        _gauge("activecall_event_queue_bytes", "Event bytes queued for clients, all connections", sum(queues)),
        _gauge("activecall_event_queue_bytes_max", "Event bytes queued for the most backed-up connection",
               max(queues, default=0)),
    ]
    families += _worker_families(figures.get("workers", []), figures.get("worker_request_errors", 0))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))
    return generate_latest(registry)


def _histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    cumulative, running = [], 0
    for bound, count in zip((*hist.buckets, float("inf")), hist.counts):
        running += count
        cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=hist.total)


def _tally_families(tally: Tally, engines: list[Any]) -> list[Metric]:
    ended = CounterMetricFamily("activecall_calls_ended", "Calls ended, by outcome (the hangup reason; "
                                "a hangup or reject command counts as hangup_command or rejected)",
                                labels=["outcome"])
    for outcome, count in sorted(tally.calls_ended.items()):
        ended.add_metric([outcome], count)
    errors = CounterMetricFamily("activecall_provider_errors", "ASR/TTS provider failures reported to calls",
                                 labels=["service", "provider", "kind"])
    for (service, provider, kind), count in sorted(tally.provider_errors.items()):
        errors.add_metric([service, provider, kind], count)
    restarts = CounterMetricFamily("activecall_actor_restarts", "Supervised children started again after they "
                                   "ended: a call's asr/tts/recorder/mediaPass, gateway.<child>, engine.<name>",
                                   labels=["kind"])
    counts = dict(tally.restarts)
    for stats in engines:
        if getattr(stats, "restarts", 0):
            counts[f"engine.{stats.name}"] = stats.restarts
    for kind, count in sorted(counts.items()):
        restarts.add_metric([kind], count)
    jitter = _histogram("activecall_call_playout_jitter_seconds",
                        "Each ended call's playout jitter: the p99 of its media ticks' deviation from 20 ms",
                        tally.playout_jitter)
    return [ended, errors, restarts, jitter]
def _worker_families(workers: list[dict[str, Any]], errors: int) -> list[Metric]:
    """The worker processes of WebRTC calls (webrtc.workers), one series per worker."""
    up = GaugeMetricFamily("activecall_worker_up", "Whether the worker process answers and takes calls",
                           labels=["worker"])
    calls = GaugeMetricFamily("activecall_worker_calls", "Calls placed on the worker process", labels=["worker"])
    restarts = CounterMetricFamily("activecall_worker_restarts", "Times the worker process was started again",
                                   labels=["worker"])
    lost = CounterMetricFamily("activecall_worker_calls_lost", "Calls ended because their worker process died",
                               labels=["worker"])
    late = CounterMetricFamily("activecall_worker_clock_late_ticks",
                               "Media clock ticks of the worker process that ran after their deadline",
                               labels=["worker"])
    lateness = GaugeMetricFamily("activecall_worker_clock_lateness_p99_seconds",
                                 "p99 of how late the worker process's clock ticks ran (last ~60 s)", labels=["worker"])
    vad_windows = CounterMetricFamily("activecall_worker_vad_windows", "Silero VAD windows the worker process "
                                      "inferred", labels=["worker"])
    vad_dropped = CounterMetricFamily("activecall_worker_vad_windows_dropped", "Silero VAD windows the worker "
                                      "process dropped past a call's vad_backlog_ms", labels=["worker"])
    for w in workers:
        label = [str(w["index"])]
        up.add_metric(label, 1 if w["ready"] else 0)
        calls.add_metric(label, w["calls"])
        restarts.add_metric(label, w["restarts"])
        lost.add_metric(label, w.get("lost_calls", 0))
        clock = w.get("clock")
        if clock is not None:
            late.add_metric(label, clock["late_ticks"])
            lateness.add_metric(label, clock["lateness_ms_p99"] / 1000)
        vad = w.get("vad")
        if vad is not None:
            vad_windows.add_metric(label, vad["windows"])
            vad_dropped.add_metric(label, vad["dropped_windows"])
    return [up, calls, restarts, lost, late, lateness, vad_windows, vad_dropped,
            _counter("activecall_worker_request_errors", "REST requests to worker processes that failed", errors)]


@dataclass
class Telemetry:
    """Where /metrics reads from: the parts that outlive a call, handed in by the gateway."""

    engines: Any                       # actors.engines.EngineHost
    media: Any                         # transports.media_loader.MediaLoader
    claims: Any                        # transports.recording_paths.RecordingClaims
    vad: Any = None                    # actors.vad.SileroEngine: every call's silero windows
    tally: Tally = field(default_factory=Tally)   # what calls and supervisors count as it happens
    counters: Counters = field(default_factory=Counters)
    loop_lag: LoopLagMonitor = field(default_factory=LoopLagMonitor)
