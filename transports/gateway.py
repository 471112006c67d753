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

from .config import Config
from .http import GetAddress, HttpServer

log = structlog.get_logger("gateway")


@dataclass
class Gateway:
    config: Config
    ref: ActorRef
    clock: MediaClock
    http_address: tuple[str, int]

    async def stop(self) -> bool:
        stopped = await self.ref.stop(timeout=self.config.supervision.call_shutdown_timeout + 5.0)
        await self.clock.stop()
        return stopped


async def start_gateway(config: Config) -> Gateway:
    clock = MediaClock(ptime_ms=20)
    current: dict[str, ActorRef] = {}

    def start_calls(parent: ActorRef) -> ActorRef:
        ref = CallSupervisor.start(config.max_calls, parent=parent, name="calls")
        current["calls"] = ref
        return ref

    def start_http(parent: ActorRef) -> ActorRef:
        ref = HttpServer.start(config, lambda: current["calls"], clock, parent=parent, name="http")
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
        await clock.stop()
        raise GatewayStartError(f"HTTP server did not start on {config.http_addr}: "
                                f"{HttpServer.start_error or exc!r}") from None
    return Gateway(config=config, ref=ref, clock=clock, http_address=address)


class GatewayStartError(Exception):
    pass
