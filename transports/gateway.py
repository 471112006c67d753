"""Assembles the gateway's supervision tree from its configuration.

Gateway (rest_for_one): calls first, then the HTTP server that feeds them. If the CallSupervisor
is restarted, the HTTP server restarts after it and picks up the new ref; stopping runs in reverse,
so the gateway stops accepting before it drains its calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from actors import ActorDeadError, ActorRef, GetChild
from actors.call_supervisor import CallSupervisor
from actors.clock import MediaClock
from actors.supervisor import ChildSpec, Restart, Strategy, Supervisor

from actors.engines import EngineHost
from actors.services import CallServices

from .config import Config
from .http import GetAddress, HttpServer
from .media_loader import MediaLoader
from .media_pass import MediaPassLink
from .providers.espeak import espeak_factories
from .providers.pocketsphinx import pocketsphinx_factories
from .recording_paths import resolve_recording
from .wav_sink import open_recording

log = structlog.get_logger("gateway")


@dataclass
class Gateway:
    config: Config
    ref: ActorRef
    clock: MediaClock
    http_address: tuple[str, int]
    engines: EngineHost
    media: MediaLoader

    async def stop(self) -> bool:
        stopped = await self.ref.stop(timeout=self.config.supervision.call_shutdown_timeout + 5.0)
        await release(self.clock, self.engines, self.media)
        return stopped


async def release(clock: MediaClock, engines: EngineHost, media: MediaLoader) -> None:
    """What outlives the supervision tree: the clock, the engine threads, the media cache."""
    await media.close()
    await engines.stop()
    await clock.stop()


def build_services(config: Config, engines: EngineHost, media: MediaLoader) -> CallServices:
    """The real providers, loaders and sinks every call uses, from the configuration."""
    return CallServices(
        tts=espeak_factories(engines),
        default_tts="espeak",
        load_media=media.load,
        open_recording=open_recording,
        resolve_recording=lambda path, session_id: resolve_recording(path, session_id, config.recorder_root),
        media_pass=lambda option, tap, item, on_error: MediaPassLink(
            option, tap, item, on_error,
            backoff_initial=config.supervision.backoff_initial, backoff_max=config.supervision.backoff_max),
        asr=pocketsphinx_factories(engines),
        default_asr="pocketsphinx",
    )


async def start_gateway(config: Config) -> Gateway:
    clock = MediaClock(ptime_ms=20)
    engines = EngineHost()
    media = MediaLoader(config.media_root)
    services = build_services(config, engines, media)
    current: dict[str, ActorRef] = {}

    def start_calls(parent: ActorRef) -> ActorRef:
        ref = CallSupervisor.start(config.max_calls, parent=parent, name="calls")
        current["calls"] = ref
        return ref

    def start_http(parent: ActorRef) -> ActorRef:
        ref = HttpServer.start(config, lambda: current["calls"], clock, services, parent=parent, name="http")
        current["http"] = ref
        return ref

    children = [
        ChildSpec(id="calls", start=start_calls, restart=Restart.PERMANENT,
                  shutdown=config.supervision.call_shutdown_timeout + 1.0),
        ChildSpec(id="http", start=start_http, restart=Restart.PERMANENT, shutdown=5.0),
    ]
    ref = Supervisor.start(children, strategy=Strategy.REST_FOR_ONE, intensity=3, period=60.0, name="gateway")
    try:
        http = await ref.ask(GetChild("http"), timeout=10.0)
        address = await http.ask(GetAddress(), timeout=10.0)
    except (ActorDeadError, TimeoutError) as exc:
        await ref.stop(timeout=5.0)
        await release(clock, engines, media)
        raise GatewayStartError(f"HTTP server did not start on {config.http_addr}: "
                                f"{HttpServer.start_error or exc!r}") from None
    return Gateway(config=config, ref=ref, clock=clock, http_address=address, engines=engines, media=media)


class GatewayStartError(Exception):
    pass
