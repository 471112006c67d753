"""The SIP endpoint as a child of the gateway's supervision tree.

``SipServer`` owns a ``SipEndpoint``: it binds the listeners in ``on_start`` (a bind failure is a
start failure the supervisor sees), closes them in ``on_stop``/``on_failure``, and answers
``GetSipStats`` and ``GetSipEndpoint``. A restarted server is a new endpoint with new sockets:
``on_ready`` is called with each endpoint as it starts listening, so the code that builds SIP call
legs always hands out the live one (a leg holding a closed endpoint gets ``EndpointClosed``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from actors import ActorRef, ChildSpec, Restart
from actors.base import Actor
from actors.supervisor import Backoff

from .config import Config
from .sip_endpoint import NewCallHandler, SipEndpoint, SipStats

log = structlog.get_logger("sip")


@dataclass(frozen=True, slots=True)
class GetSipStats:
    """Ask for the endpoint's ``SipStats``."""


@dataclass(frozen=True, slots=True)
class GetSipEndpoint:
    """Ask for the live ``SipEndpoint`` (its addresses, its methods for call legs)."""


class SipServer(Actor):
    start_error: BaseException | None = None  # last bind failure, for a clear start-up message

    def __init__(self, config: Config, *, on_new_call: NewCallHandler | None = None,
                 on_ready: Callable[[SipEndpoint], None] | None = None) -> None:
        self.endpoint = SipEndpoint.from_config(config, on_new_call=on_new_call)
        self.on_ready = on_ready

    async def on_start(self) -> None:
        try:
            await self.endpoint.start()
        except OSError as exc:
            SipServer.start_error = exc
            await self.endpoint.close()
            raise
        if self.on_ready is not None:
            self.on_ready(self.endpoint)

    async def on_stop(self) -> None:
        await self.endpoint.close()

    async def on_failure(self, error: BaseException) -> None:
        await self.endpoint.close()

    async def on_receive(self, message: object) -> object:
        if isinstance(message, GetSipStats):
            return self.stats()
        if isinstance(message, GetSipEndpoint):
            return self.endpoint
        return await super().on_receive(message)

    def stats(self) -> SipStats:
        return self.endpoint.stats()


def sip_endpoint_spec(
    config: Config,
    *,
    on_new_call: NewCallHandler | None = None,
    on_ready: Callable[[SipEndpoint], None] | None = None,
    child_id: str = "sip",
    shutdown: float = 5.0,
) -> ChildSpec:
    """The child spec of the SIP endpoint for the gateway's supervisor.

    ``on_new_call`` receives each INVITE that starts a call and returns its dialog handler (None
    answers 503); ``on_ready`` receives the endpoint each time it (re)starts listening. Restarts
    back off from the supervision config's delays, so a port another process holds is retried
    without spinning."""
    sup = config.supervision

    def start(parent: ActorRef) -> ActorRef:
        return SipServer.start(config, on_new_call=on_new_call, on_ready=on_ready, parent=parent, name=child_id)

    return ChildSpec(
        id=child_id,
        start=start,
        restart=Restart.PERMANENT,
        shutdown=shutdown,
        backoff=Backoff(initial=sup.backoff_initial, factor=2.0, maximum=sup.backoff_max),
    )
