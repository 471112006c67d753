"""SIP calls in and out of the gateway: the `/call/sip` leg provider and incoming INVITEs.

Outbound, the HTTP server asks ``legs`` for the leg of a new `/call/sip` connection: a ``SipLeg``
that places its call on `invite`. Inbound, the SIP endpoint hands every INVITE that starts a call
to ``on_new_call``, which must answer at once: it builds the call's leg from the INVITE (the leg
buffers what happens until its Call binds it) and returns the leg's handler, then, in a task:

1. starts a Call (direction inbound, the INVITE as its offer) under the CallSupervisor, with a new
   id, the ``dialogId``;
2. POSTs the webhook (transports/webhook.py) to `[handler] url`;
3. the application connects `/call/sip?id=<dialogId>`, attaches to the call and receives
   `incoming` first (the call's backlog holds its events until then).

Refused at once, without a call: 503 when no `[handler] url` is configured or the gateway is
draining (the endpoint answers when ``on_new_call`` returns None), 488 (or 400) for an offer
with nothing the gateway can answer, 420 for a Require the gateway does not support. A call that cannot be started (max_calls) or whose webhook
fails is answered 503 and ends (hangup reason ``webhook_failed``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import aiohttp
import structlog

from actors import ActorDeadError, ActorRef
from actors.call import Call
from actors.call_supervisor import AdmissionRefused, CallStartFailed, DuplicateSession, StartCall
from actors.clock import MediaClock
from actors.leg import LegHangup
from actors.services import CallServices
from protocol.callstate import Direction
from protocol.errors import ProtocolError
from protocol.sip.auth import Credentials
from protocol.sip.transaction import RequestReceived
from protocol.sip.uri import SipUri, parse_uri

from .config import Config
from .http import LegMaker, call_settings
from .rtp_ports import RtpPortAllocator
from .sip_endpoint import DialogHandler, SipEndpoint
from .sip_leg import SipLeg, SipLegEnv, sip_uri_text
from .webhook import WebhookFailed, invite_payload, post_webhook
from .ws_session import Outbox

__all__ = ["SipCalls"]

log = structlog.get_logger("sip.calls")


class SipCalls:
    """The SIP side of the gateway's calls; one per process, outliving endpoint restarts."""

    def __init__(self, config: Config, *, calls: Callable[[], ActorRef | None], clock: MediaClock,
                 services: CallServices) -> None:
        self.config = config
        self.calls = calls
        self.clock = clock
        self.services = services
        self.endpoint: SipEndpoint | None = None
        self.allocator = RtpPortAllocator.from_config(config)
        self.env = SipLegEnv(lambda: self.endpoint, self.allocator, config, self.credentials_for)
        self.draining = False
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # figures (GET /health)
        self.incoming = 0
        self.refused: dict[int, int] = {}
        self.webhooks_failed = 0
        self.last_error: str | None = None

    # --- wiring ------------------------------------------------------------------------------------

    def endpoint_ready(self, endpoint: SipEndpoint) -> None:
        """The SIP endpoint (re)started: legs made from now on use this one."""
        self.endpoint = endpoint

    def legs(self, session_id: str, outbox: Outbox) -> LegMaker:
        """`/call/sip`: the leg of a call the application places (or, with ?id=, the one it attaches to)."""
        env = self.env
        return LegMaker(lambda context: SipLeg(env, context))

    def credentials_for(self, uri: SipUri) -> Credentials | None:
        """A `[[register_users]]` account whose server is the callee's host answers its challenges."""
        for user in self.config.register_users:
            try:
                server = parse_uri(sip_uri_text(user.server))
            except ProtocolError:
                continue
            if server.host.lower() == uri.host.lower():
                return Credentials(user.username, user.password, user.realm)
        return None

    async def close(self) -> None:
        self.draining = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    def stats(self) -> dict[str, object]:
        endpoint = self.endpoint
        return {
            "incoming": self.incoming,
            "refused": dict(self.refused),
            "webhooks_failed": self.webhooks_failed,
            "last_error": self.last_error,
            "rtp_ports": self.allocator.stats(),
            "endpoint": endpoint.stats().to_dict() if endpoint is not None else None,
        }

    # --- incoming calls ------------------------------------------------------------------------------

    def on_new_call(self, event: RequestReceived) -> DialogHandler | None:
        endpoint = self.endpoint
        if self.draining or endpoint is None or not self.config.handler.url:
            self._count_refused(503, "draining" if self.draining else "no [handler] url is configured")
            return None
        leg = SipLeg.incoming(self.env, event, endpoint)
        problem = leg.check_offer()
        if problem is not None:
            status, reason, headers = problem
            self._count_refused(status, reason)

            def refuse(ev: object) -> None:
                if isinstance(ev, RequestReceived) and ev.request is event.request:
                    leg.refuse_incoming(status, reason, headers)
                else:
                    leg.on_sip_event(ev)  # type: ignore[arg-type]

            return refuse
        self.incoming += 1
        dialog_id = str(uuid.uuid4())
        task = asyncio.get_running_loop().create_task(self._start(dialog_id, leg, event), name=f"sip-in {dialog_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("sip invite received", dialog_id=dialog_id, call_id=leg.call_id, caller=str(event.request.from_.uri),
                 callee=str(event.request.to.uri))
        return leg.on_sip_event

    async def _start(self, dialog_id: str, leg: SipLeg, event: RequestReceived) -> None:
        offer = leg.offer()
        settings = call_settings(self.config, "serverSideTrack")
        clock, services = self.clock, self.services

        def start(parent: ActorRef) -> ActorRef:
            return Call.start(dialog_id, leg=leg.bind, clock=clock, direction=Direction.INBOUND, offer=offer,
                              settings=settings, services=services, parent=parent, name=f"call:{dialog_id}")

        supervisor = self.calls()
        try:
            if supervisor is None:
                raise ActorDeadError("no call supervisor")
            await supervisor.ask(StartCall(dialog_id, start, shutdown=self.config.supervision.call_shutdown_timeout),
                                 timeout=5.0)
        except AdmissionRefused as exc:
            self._count_refused(503, str(exc))
            leg.refuse_incoming(503, "Service Unavailable (max_calls reached)")
            return
        except (ActorDeadError, TimeoutError, CallStartFailed, DuplicateSession) as exc:
            self._count_refused(503, repr(exc))
            leg.refuse_incoming(503, "Service Unavailable")
            return
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            await post_webhook(self._http, self.config.handler, invite_payload(dialog_id, event.request))
        except WebhookFailed as exc:
            self.webhooks_failed += 1
            self._count_refused(503, str(exc))
            log.warning("sip webhook failed", dialog_id=dialog_id, error=str(exc))
            # The call exists: the leg answers 503 and reports the end, so the call says why.
            leg.refuse_incoming(503, "Service Unavailable (webhook failed)")
            leg.report_now(LegHangup("webhook_failed", "system"))

    def _count_refused(self, status: int, reason: str) -> None:
        self.refused[status] = self.refused.get(status, 0) + 1
        self.last_error = reason
