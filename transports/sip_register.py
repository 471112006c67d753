"""Registrations of `[[register_users]]` with their registrars (RFC 3261 §10).

Each account is one ``Registration``: a task that sends REGISTER (one Call-ID for the account's
life, CSeq counting up), answers 401/407 with digest credentials, and once registered refreshes
before the granted time runs out (at 80 % of it, at most 30 s early). A failure (an error status,
no answer, a transport error, a challenge it cannot answer) is retried after
``sip.register_retry_initial`` seconds, doubling up to ``sip.register_retry_max``. Stopping
sends REGISTER with ``Expires: 0`` for every account that is registered and waits (up to
``sip.bye_timeout``) for the answers.

``Registrar`` is the actor of the gateway's tree that owns the registrations: it starts after the
SIP endpoint and stops before it, so the un-REGISTERs still go out.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from actors.base import Actor
from protocol.errors import ProtocolError
from protocol.sip.auth import Credentials, DigestClient
from protocol.sip.message import Request, Response, make_request
from protocol.sip.transaction import ResponseReceived, Terminated, Timeout, TransactionKey, TransportError
from protocol.sip.uri import NameAddr, SipUri, parse_uri

from .config import Config, RegisterUser
from .sip_endpoint import EndpointClosed, SipEndpoint, SipEvent, SipTarget, target_for_uri
from .sip_leg import sip_uri_text

__all__ = ["GetRegistrations", "Registrar", "Registration", "RegistrationStatus"]

log = structlog.get_logger("sip.register")

_AUTH_ATTEMPTS = 2


@dataclass(frozen=True, slots=True)
class RegistrationStatus:
    server: str
    username: str
    state: str                   # idle | registering | registered | retrying | unregistered
    expires_in: float | None     # seconds left of the granted registration
    registered: int              # successful REGISTERs (first and refreshes)
    failures: int
    last_error: str | None


class Registration:
    def __init__(self, user: RegisterUser, endpoint: Callable[[], SipEndpoint | None], config: Config) -> None:
        self.user = user
        self.endpoint = endpoint
        self.config = config
        self.server: SipUri = parse_uri(sip_uri_text(user.server))
        self.aor = parse_uri(f"sip:{user.username}@{self.server.host}")
        self.call_id = f"{secrets.token_hex(10)}@active-call"
        self.from_tag = secrets.token_hex(5)
        self.cseq = 0
        self.digest = DigestClient(Credentials(user.username, user.password, user.realm))
        self.state = "idle"
        self.expires_at: float | None = None
        self.registered = 0
        self.failures = 0
        self.last_error: str | None = None
        self._waiting: dict[TransactionKey, asyncio.Future[Response | None]] = {}
        self._handled_by: SipEndpoint | None = None
        self._contact: NameAddr | None = None
        self.log = log.bind(server=user.server, username=user.username)

    def status(self) -> RegistrationStatus:
        left = None if self.expires_at is None else max(0.0, self.expires_at - time.monotonic())
        return RegistrationStatus(self.user.server, self.user.username, self.state, left, self.registered,
                                  self.failures, self.last_error)

    async def run(self) -> None:
        """Register, refresh, and retry with backoff until cancelled."""
        sip = self.config.sip
        delay = sip.register_retry_initial
        while True:
            await self._endpoint_ready()
            self.state = "registering" if self.state != "registered" else "registered"
            granted = await self._register(self.user.expires)
            if granted is None:
                self.failures += 1
                self.state = "retrying"
                self.expires_at = None
                self.log.warning("sip registration failed", error=self.last_error, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, sip.register_retry_max)
                continue
            delay = sip.register_retry_initial
            self.registered += 1
            self.state = "registered"
            self.expires_at = time.monotonic() + granted
            self.log.info("sip registered", expires=granted)
            await asyncio.sleep(max(0.5, granted - min(30.0, granted * 0.2)))

    async def _endpoint_ready(self) -> None:
        """Wait for a listening endpoint (it starts just before us, and restarts on failure)."""
        while True:
            endpoint = self.endpoint()
            if endpoint is not None and endpoint.started and not endpoint.closed:
                return
            await asyncio.sleep(0.05)

    async def unregister(self) -> None:
        if self.state != "registered":
            return
        granted = await self._register(0)
        self.state = "unregistered"
        self.expires_at = None
        self.log.info("sip unregistered", answered=granted is not None)

    # -- one REGISTER, with its challenges --------------------------------------------------------

    async def _register(self, expires: int) -> int | None:
        """The granted seconds, or None (``last_error`` says why)."""
        auth = self._preemptive()
        for _ in range(_AUTH_ATTEMPTS + 1):
            response = await self._send(expires, auth)
            if response is None:
                return None
            if response.status in (401, 407):
                try:
                    request_uri = str(self._request_uri())
                    auth = self.digest.respond(response, "REGISTER", request_uri)
                except (ProtocolError, LookupError) as exc:
                    self.last_error = f"challenge not answered: {exc}"
                    return None
                if not auth:
                    self.last_error = f"{response.status} with no challenge for our credentials"
                    return None
                continue
            if 200 <= response.status < 300:
                return self._granted(response, expires)
            self.last_error = f"{response.status} {response.reason}"
            return None
        self.last_error = "credentials refused"
        return None

    def _preemptive(self) -> list[tuple[str, str]]:
        try:
            return self.digest.preemptive("REGISTER", str(self._request_uri()))
        except (ProtocolError, LookupError):
            return []

    def _request_uri(self) -> SipUri:
        return parse_uri(f"sip:{self.server.host_port}")

    def _granted(self, response: Response, asked: int) -> int:
        """Expires granted for our Contact (a registrar lists every binding of the AOR): its
        expires parameter, else the Expires header, else what we asked for."""
        ours = self._contact
        for contact in response.contact:
            if contact.expires is not None and contact.address is not None and ours is not None \
                    and contact.address.uri.host == ours.uri.host and contact.address.uri.port == ours.uri.port:
                return contact.expires
        header = response.get("Expires")
        if header is not None and header.strip().isdigit():
            return int(header.strip())
        return asked

    async def _send(self, expires: int, auth: list[tuple[str, str]]) -> Response | None:
        endpoint = self.endpoint()
        if endpoint is None or endpoint.closed or not endpoint.started:
            self.last_error = "the SIP endpoint is not running"
            return None
        try:
            target = await endpoint.resolve(target_for_uri(self.server, transport=self.user.transport))
        except (LookupError, ValueError) as exc:
            self.last_error = str(exc)
            return None
        if self._handled_by is not endpoint:
            endpoint.register(self.call_id, self._on_event)
            self._handled_by = endpoint
        self.cseq += 1
        contact = self._contact = endpoint.contact(target, self.user.contact_user or self.user.username)
        request = make_request("REGISTER", self._request_uri(), headers=[
            ("Via", endpoint.via(target)),
            ("Max-Forwards", "70"),
            ("From", f"<{self.aor}>;tag={self.from_tag}"),
            ("To", f"<{self.aor}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} REGISTER"),
            ("Contact", str(contact)),
            ("Expires", str(expires)),
            ("Allow", endpoint.allow),
            ("User-Agent", endpoint.user_agent),
            *auth,
        ])
        return await self._transact(endpoint, request, target)

    async def _transact(self, endpoint: SipEndpoint, request: Request, target: SipTarget) -> Response | None:
        future: asyncio.Future[Response | None] = asyncio.get_running_loop().create_future()
        try:
            key = endpoint.send_request(request, target)
        except (ValueError, EndpointClosed) as exc:
            self.last_error = repr(exc)
            return None
        self._waiting[key] = future
        try:
            response = await future
        finally:
            self._waiting.pop(key, None)
        if response is None and self.last_error is None:
            self.last_error = "no answer"
        return response

    def _on_event(self, event: SipEvent) -> None:
        if isinstance(event, ResponseReceived):
            if event.response.status < 200:
                return
            future = self._waiting.get(event.key)
            if future is not None and not future.done():
                future.set_result(event.response)
        elif isinstance(event, (Timeout, TransportError, Terminated)):
            future = self._waiting.get(event.key)
            if future is not None and not future.done():
                if not isinstance(event, Terminated):
                    self.last_error = "no answer" if isinstance(event, Timeout) else "transport error"
                future.set_result(None)

    def release(self) -> None:
        endpoint = self._handled_by
        if endpoint is not None and not endpoint.closed:
            endpoint.unregister(self.call_id)
        self._handled_by = None


@dataclass(frozen=True, slots=True)
class GetRegistrations:
    """Ask the Registrar for a ``RegistrationStatus`` per account."""


class Registrar(Actor):
    """Keeps every `[[register_users]]` account registered while the gateway runs."""

    def __init__(self, config: Config, endpoint: Callable[[], SipEndpoint | None]) -> None:
        self.config = config
        self.registrations = [Registration(user, endpoint, config) for user in config.register_users]
        self._tasks: list[asyncio.Task[None]] = []

    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(r.run(), name=f"register {r.user.username}@{r.user.server}")
                       for r in self.registrations]

    async def on_stop(self) -> None:
        await self._stop(unregister=True)

    async def on_failure(self, error: BaseException) -> None:
        await self._stop(unregister=False)

    async def _stop(self, *, unregister: bool) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if unregister and self.registrations:
            pending = [asyncio.ensure_future(r.unregister()) for r in self.registrations]
            _, late = await asyncio.wait(pending, timeout=self.config.sip.bye_timeout)
            for task in late:
                task.cancel()
        for registration in self.registrations:
            registration.release()

    async def on_receive(self, message: object) -> object:
        if isinstance(message, GetRegistrations):
            return [r.status() for r in self.registrations]
        return await super().on_receive(message)
