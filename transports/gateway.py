"""Assembles the gateway's supervision tree from its configuration.

```
gateway (one_for_one)
├── clock    MediaClockActor   the 20 ms ticker every track of the process runs on
├── engines  EngineHostActor   engine threads: espeak-ng, pocketsphinx, whisper, silero (batched VAD)
├── sip      SipServer         the SIP endpoint: UDP/TCP listeners, transactions, Call-ID routing
├── register Registrar         keeps [[register_users]] registered (un-REGISTERs before sip stops)
├── calls    CallSupervisor    one temporary child per call, behind max_calls
├── workers  WorkerPool        worker processes for WebRTC calls (webrtc.workers; none by default)
└── http     HttpServer        the API WebSockets and REST
```

Start order is dependency order; stopping runs in reverse, so the gateway stops accepting before
it drains its calls, the calls are gone (each SIP call has sent its BYE or final response) before
the SIP endpoint closes, and the engines and the clock stop last. While draining, a new INVITE is
answered 503. Restarts are
one for one: the clock object and the engine host outlive their actors (a restarted clock resumes
ticking for the tracks registered on it, a restarted engine host starts engine threads again on
their next job), and the HTTP server looks the current CallSupervisor up on every request, so no
restart needs another child restarted with it. Everything the tree runs is under it: nothing is
left for `Gateway.stop` but the media cache and the tree itself.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import structlog

from actors import ActorDeadError, ActorRef, GetChild
from actors.call_supervisor import CallSupervisor
from actors.clock import MediaClock, MediaClockActor
from actors.engines import EngineHost, EngineHostActor
from actors.services import CallServices
from actors.tally import Tally
from actors.supervisor import Backoff, ChildSpec, Restart, Strategy, Supervisor
from actors.vad import SileroEngine, SileroModel

from .config import Config
from .fetch_policy import FetchPolicy
from .http import GetAddress, HttpServer
from .leg_maker import LegProvider
from .media_loader import MediaLoader
from .media_pass import media_pass_starter
from .metrics import Telemetry
from .providers.registry import provider_factories, whisper_settings
from .recording_paths import CLAIMS_DIR, RecordingClaims, resolve_recording
from .sip_calls import SipCalls
from .sip_register import Registrar
from .sip_server import GetSipEndpoint, SipServer, sip_endpoint_spec
from .file_writer import FileWriter, WrittenSink
from .wav_sink import open_recording, segment_path
from .webrtc_ice import use_host_addresses
from .webrtc_leg import WebRtcSettings, webrtc_legs
from .worker_pool import GetWorkers, WorkerPool

log = structlog.get_logger("gateway")

TREE = ("clock", "engines", "sip", "register", "calls", "workers", "http")
SILERO_ENGINE = "silero"


@dataclass
class Gateway:
    config: Config
    ref: ActorRef
    clock: MediaClock
    http_address: tuple[str, int]
    engines: EngineHost
    media: MediaLoader
    writer: FileWriter
    sip: SipCalls

    @property
    def sip_address(self) -> tuple[str, int]:
        """Where the SIP endpoint listens (UDP; TCP on the same port unless tcp_port says otherwise)."""
        endpoint = self.sip.endpoint
        if endpoint is None or endpoint.udp_address is None:
            raise RuntimeError("the SIP endpoint is not listening")
        return endpoint.udp_address

    async def stop(self) -> bool:
        self.sip.draining = True      # INVITEs arriving during the drain are answered 503
        # Worker processes drain after the calls (each within webrtc.worker_drain_timeout).
        workers = self.config.webrtc.worker_drain_timeout + 5.0 if self.config.webrtc.workers else 0.0
        stopped = await self.ref.stop(timeout=self.config.supervision.call_shutdown_timeout + 10.0 + workers)
        await self.sip.close()
        await self.media.close()
        await asyncio.to_thread(self.writer.stop)
        return stopped


def build_services(config: Config, engines: EngineHost, media: MediaLoader, writer: FileWriter,
                   claims: RecordingClaims) -> CallServices:
    """The real providers, loaders and sinks every call uses, from the configuration."""

    def open_written(path: str, samplerate: int, segment: int) -> WrittenSink:
        return writer.wrap(lambda: open_recording(path, samplerate, segment), segment_path(path, segment))

    engines.register(SILERO_ENGINE, SileroModel)
    silero = SileroEngine(runner=lambda batches: engines.submit(SILERO_ENGINE, "infer_all", batches),
                          max_backlog_ms=config.vad_backlog_ms)
    providers = provider_factories(config, engines)
    return CallServices(
        tts=providers.tts,
        default_tts="espeak",
        load_media=media.load,
        open_recording=open_written,
        # One live writer per recording path: the claim is freed when its call ends.
        resolve_recording=lambda path, session_id: claims.claim(
            resolve_recording(path, session_id, config.recorder_root), session_id),
        release_recordings=claims.release_session,
        media_pass=lambda option, tap, feed, on_error: media_pass_starter(
            option, tap, feed, on_error,
            connect_timeout=config.fetch.connect_timeout, policy=FetchPolicy(config.fetch.allow_hosts)),
        asr=providers.asr,
        # Open vocabulary: Whisper tiny.en (WER 0.175 against pocketsphinx's 0.489 on the same
        # fixtures, 0.204 against 0.861 as telephone audio: docs/asr.md); a grammar or keywords:
        # pocketsphinx, which does them.
        default_asr="whisper",
        grammar_asr="pocketsphinx",
        silero=silero,
        # Provider errors are counted by provider name when it is one of these (else `other`).
        tally=Tally().with_providers({*providers.tts, *providers.asr, "base64"}),
    )


def transport_legs(config: Config) -> dict[str, LegProvider]:
    """The legs the transports offer the HTTP server by call type (`/call` is its own)."""
    webrtc = config.webrtc
    use_host_addresses(webrtc.host_addresses)
    servers = config.ice_servers if webrtc.gather_with_ice_servers else ()
    return {"webrtc": webrtc_legs(WebRtcSettings(webrtc, servers))}


def gateway_children(config: Config, clock: MediaClock, engines: EngineHost, services: CallServices,
                     current: dict[str, ActorRef], claims: RecordingClaims | None = None,
                     telemetry: Telemetry | None = None, sip: SipCalls | None = None,
                     worker_socket: str | None = None) -> list[ChildSpec]:
    """The gateway's children, in start order (TREE). With `worker_socket`, the gateway is a
    worker process: its HTTP server listens on that Unix socket, for its front only."""
    sup = config.supervision
    claims = claims if claims is not None else RecordingClaims()
    telemetry = telemetry if telemetry is not None else Telemetry(engines=engines, media=None, claims=claims,
                                                                  tally=services.tally, vad=services.silero)
    sip = sip if sip is not None else SipCalls(config, calls=lambda: current.get("calls"), clock=clock,
                                               services=services)
    legs = transport_legs(config)

    def started(id: str, ref: ActorRef) -> ActorRef:
        current[id] = ref
        return ref

    return [
        ChildSpec(id="clock", restart=Restart.PERMANENT, shutdown=2.0,
                  start=lambda parent: started("clock", MediaClockActor.start(clock, parent=parent, name="clock"))),
        ChildSpec(id="engines", restart=Restart.PERMANENT, shutdown=10.0,
                  start=lambda parent: started("engines", EngineHostActor.start(engines, parent=parent,
                                                                                name="engines"))),
        sip_endpoint_spec(config, on_new_call=sip.on_new_call, on_ready=sip.endpoint_ready, child_id="sip",
                          shutdown=sup.call_shutdown_timeout),
        ChildSpec(id="register", restart=Restart.PERMANENT, shutdown=config.sip.bye_timeout + 1.0,
                  backoff=Backoff(initial=sup.backoff_initial, factor=2.0, maximum=sup.backoff_max),
                  start=lambda parent: Registrar.start(config, lambda: sip.endpoint, parent=parent, name="register")),
        ChildSpec(id="calls", restart=Restart.PERMANENT, shutdown=sup.call_shutdown_timeout + 1.0,
                  # A call's end frees its recording paths.
                  start=lambda parent: started("calls", CallSupervisor.start(
                      config.max_calls, claims.release_session, max_pending=config.max_pending_calls,
                      parent=parent, name="calls"))),
        # Stopped after http (which ends the calls relayed to the workers), before the calls.
        ChildSpec(id="workers", restart=Restart.PERMANENT,
                  shutdown=config.webrtc.worker_drain_timeout + 5.0,
                  start=lambda parent: started("workers", WorkerPool.start(config, parent=parent, name="workers"))),
        ChildSpec(id="http", restart=Restart.PERMANENT, shutdown=sup.call_shutdown_timeout + 2.0,
                  start=lambda parent: started("http", HttpServer.start(config, lambda: current["calls"], clock,
                                                                        services, legs={"sip": sip.legs, **legs},
                                                                        telemetry=telemetry,
                                                                        health=lambda: {"sip": sip.stats()},
                                                                        workers=lambda: current.get("workers"),
                                                                        unix_path=worker_socket,
                                                                        parent=parent, name="http"))),
    ]


def whisper_engine_names(config: Config) -> list[str]:
    return whisper_settings(config).engine_names()


_PRELOADS: set[asyncio.Future[None]] = set()


def _preloaded(task: asyncio.Future[None]) -> None:
    _PRELOADS.discard(task)
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        # The first call that asks for Whisper gets the same failure as a permanent asr error.
        log.warning("whisper model did not load", error=repr(error.__cause__ or error))


async def start_gateway(config: Config, worker_socket: str | None = None) -> Gateway:
    sup = config.supervision
    clock = MediaClock(ptime_ms=20)
    engines = EngineHost(restart_intensity=sup.engine_restarts, restart_period=sup.engine_period)
    fetch = config.fetch
    media = MediaLoader(config.media_root, policy=FetchPolicy(fetch.allow_hosts), max_redirects=fetch.max_redirects,
                        timeout=fetch.timeout, connect_timeout=fetch.connect_timeout, max_bytes=fetch.max_bytes,
                        max_duration=fetch.max_seconds, decode_memory=fetch.decode_memory,
                        cache_bytes=fetch.cache_bytes)
    writer = FileWriter(config.recorder_pending_bytes)
    # Shared by every process writing under this root: a front and its WebRTC workers (or two
    # gateways) never write one recording at once.
    claims = RecordingClaims(lock_dir=os.path.join(os.path.abspath(config.recorder_root), CLAIMS_DIR))
    services = build_services(config, engines, media, writer, claims)
    telemetry = Telemetry(engines=engines, media=media, claims=claims, tally=services.tally, vad=services.silero)
    current: dict[str, ActorRef] = {}
    sip = SipCalls(config, calls=lambda: current.get("calls"), clock=clock, services=services)
    children = gateway_children(config, clock, engines, services, current, claims, telemetry, sip, worker_socket)
    ref = Supervisor.start(children, strategy=Strategy.ONE_FOR_ONE, intensity=sup.gateway_restarts,
                           period=sup.gateway_period, name="gateway",
                           on_restart=lambda id: services.tally.restarted(f"gateway.{id}"))
    if config.whisper.preload:
        # Loading the model holds the GIL for ~90 ms (its tokenizer); at start, not in a call.
        preload = asyncio.ensure_future(engines.start(whisper_engine_names(config)[0]))
        _PRELOADS.add(preload)      # the loop keeps only a weak reference to a task
        preload.add_done_callback(_preloaded)
    try:
        # Both answer once listening: a gateway that returns takes SIP and HTTP at once.
        sip_server = await ref.ask(GetChild("sip"), timeout=10.0)
        await sip_server.ask(GetSipEndpoint(), timeout=10.0)
        http = await ref.ask(GetChild("http"), timeout=10.0)
        address = await http.ask(GetAddress(), timeout=10.0)
        if config.webrtc.workers:
            await wait_workers(ref, config)
    except WorkersNotReady as exc:
        await ref.stop(timeout=config.webrtc.worker_drain_timeout + 10.0)
        await sip.close()
        await media.close()
        await asyncio.to_thread(writer.stop)
        raise GatewayStartError(str(exc)) from None
    except (ActorDeadError, TimeoutError, AttributeError) as exc:
        await ref.stop(timeout=5.0)
        await sip.close()
        await media.close()
        await asyncio.to_thread(writer.stop)
        if SipServer.start_error is not None and sip.endpoint is None:
            raise GatewayStartError(f"SIP endpoint did not start on {config.sip_addr}:{config.udp_port}: "
                                    f"{SipServer.start_error!r}") from None
        raise GatewayStartError(f"HTTP server did not start on {config.http_addr}: "
                                f"{HttpServer.start_error or exc!r}") from None
    return Gateway(config=config, ref=ref, clock=clock, http_address=address, engines=engines, media=media,
                   writer=writer, sip=sip)


class GatewayStartError(Exception):
    pass


class WorkersNotReady(Exception):
    pass


async def wait_workers(ref: ActorRef, config: Config) -> None:
    """Until every worker process answers on its socket (a gateway that returns takes WebRTC calls
    on all of them), within webrtc.worker_start_timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.webrtc.worker_start_timeout + 1.0
    figures: list[dict[str, object]] = []
    while loop.time() < deadline:
        try:
            pool = await ref.ask(GetChild("workers"), timeout=2.0)
            figures = await pool.ask(GetWorkers(), timeout=2.0) if pool is not None else []
        except (ActorDeadError, TimeoutError):
            figures = []
        if figures and all(w["ready"] for w in figures):
            return
        await asyncio.sleep(0.05)
    raise WorkersNotReady(f"worker processes not ready within {config.webrtc.worker_start_timeout} s "
                          f"(webrtc.worker_start_timeout): {figures}")
