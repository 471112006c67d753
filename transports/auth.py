"""Access control for the HTTP side: API tokens, admin tokens and allowed browser Origins.

With `api_tokens`/`admin_tokens` configured, every route but /health and the demo page's static
files (/ and /static/) needs a token, sent as
`Authorization: Bearer <token>` or, for browsers that cannot set headers on a WebSocket, as the
`token` query parameter. A token is known to the rest of the gateway only by its id (a short hash),
so tokens never reach listings, logs or dumps. Without tokens nothing is checked, and a gateway
that listens beyond loopback says so at start-up.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from actors.messages import Owner

from .config import Config

__all__ = ["Access", "OWNER_HEADER", "OWNER_KEY", "access_middleware", "exposure_warning", "front_middleware",
           "owner_headers", "token_id"]

OWNER_KEY = web.RequestKey("owner", object)  # Owner | None: who the request acts for
PUBLIC_PATHS = frozenset({"/health", "/"})  # liveness probes rarely carry credentials; / is the demo page
PUBLIC_PREFIXES = ("/static/",)             # the demo page's files: no call data, and a browser fetches
#                                             them without the token the page then sends with its calls
ADMIN_PATHS = frozenset({"/metrics"})      # gateway-wide figures: not for one tenant's token
REALM = 'Bearer realm="active-call"'
# A worker process (docs/architecture.md) is reached only by its front, on a Unix socket in a
# directory of the gateway's user: the front has checked the token and the Origin, and names the
# owner it acts for in these headers (no header: the front itself, which reaches every call).
OWNER_HEADER = "X-Active-Call-Owner"
ADMIN_HEADER = "X-Active-Call-Admin"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_id(token: str) -> str:
    """A stable, non-secret name for a token (for ownership, logs and metrics)."""
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Access:
    tokens: tuple[tuple[bytes, Owner], ...]
    origins: frozenset[str]

    @classmethod
    def from_config(cls, config: Config) -> Access:
        tokens = tuple((t.encode(), Owner(token_id(t), admin=False)) for t in config.api_tokens)
        tokens += tuple((t.encode(), Owner(token_id(t), admin=True)) for t in config.admin_tokens)
        return cls(tokens, frozenset(config.allowed_origins))

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def owner_of(self, presented: str) -> Owner | None:
        """The token's owner, or None. Every configured token is compared (in constant time), so
        the answer's timing says nothing about which token came close."""
        given = presented.encode()
        found = None
        for token, owner in self.tokens:
            if hmac.compare_digest(token, given):
                found = owner
        return found


def presented_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return request.query.get("token") or None


def _refuse(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": REALM} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


def access_middleware(access: Access) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
            return await handler(request)
        origin = request.headers.get("Origin")
        if access.origins and origin is not None and origin.rstrip("/") not in access.origins:
            # A page on another site may open a WebSocket with the user's browser (and its
            # ?token=): only the configured sites may.
            return _refuse(403, f"origin {origin!r} is not allowed on this gateway")
        owner = None
        if access.enabled:
            token = presented_token(request)
            if token is None:
                return _refuse(401, "this gateway requires an API token: send 'Authorization: Bearer <token>' "
                                    "or the query parameter 'token'")
            owner = access.owner_of(token)
            if owner is None:
                return _refuse(401, "the API token is not valid")
            if request.path in ADMIN_PATHS and not owner.admin:
                return _refuse(403, f"{request.path} needs an admin token")
        request[OWNER_KEY] = owner
        return await handler(request)

    return check


def exposure_warning(config: Config) -> str | None:
    """The start-up warning for a gateway without tokens that listens beyond loopback, or None."""
    if config.api_tokens or config.admin_tokens:
        return None
    host, _port = config.http_host_port
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (f"NO ACCESS CONTROL: listening on {host} with no api_tokens configured: anyone who can reach "
            "this address can list, kill and listen to every call. Set api_tokens (docs/security.md) "
            "or listen on 127.0.0.1.")


def owner_headers(owner: Owner | None) -> dict[str, str]:
    """The headers a front sends its worker for a request made by `owner`."""
    if owner is None:
        return {}
    return {OWNER_HEADER: owner.id, ADMIN_HEADER: "1" if owner.admin else "0"}


def front_middleware() -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """A worker's access check: the owner is the one its front names (see OWNER_HEADER)."""

    @web.middleware
    async def named(request: web.Request, handler: Handler) -> web.StreamResponse:
        owner_id = request.headers.get(OWNER_HEADER)
        request[OWNER_KEY] = (None if owner_id is None
                              else Owner(owner_id, admin=request.headers.get(ADMIN_HEADER) == "1"))
        return await handler(request)

    return named
