"""The HTTP side of the gateway: the API WebSockets (/call, /call/sip, /call/webrtc) and REST.

The HttpServer is an actor of the gateway's supervision tree: it owns the listening socket, and
each WebSocket connection hands its call to the CallSupervisor. The handler itself only moves
bytes: text frames are parsed into commands and told to the Call, binary frames go into the leg's
bounded pipe, events come back through the session's Outbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog
from aiohttp import WSMsgType, web

from actors import ActorDeadError, ActorRef
from actors.base import Actor
from actors.call import Call, CallSettings, iso8601, now_ms
from actors.call_supervisor import (
    AdmissionRefused,
    CallStartFailed,
    DuplicateSession,
    GetAdmissions,
    GetCall,
    ListCalls,
    NotYourCall,
    StartCall,
)
from actors.clock import MediaClock
from actors.leg import LegContext, LegRefused
from actors.messages import (
    AppConnection,
    Attach,
    AttachRefused,
    BadCommand,
    CallInfo,
    ClientCommand,
    Describe,
    Detach,
    Drained,
    Kill,
    Owner,
    UrgentCommand,
)
from actors.pipes import AudioPipe
from actors.services import CallServices
from actors.supervisor import Backoff
from protocol import api
from protocol.redact import redact

from .auth import OWNER_KEY, Access, access_middleware, exposure_warning, front_middleware, owner_headers
from .config import Config
from .event_dump import DumpWriter, EventDump
from .leg_maker import LegMaker, LegProvider
from .metrics import CONTENT_TYPE, CountedPipe, Counters, Telemetry, render
from .ws_leg import UnavailableLeg, WebSocketLeg
from .relay import REASON_HEADER, Relay, RelayedCall, kill_on_worker, worker_get, worker_url
from .worker_pool import CallLeft, GetWorkers, NoWorker, PlaceCall, WorkerAddress, worker_session
from .ws_session import ApiWebSocket, Outbox, session_id_ok

log = structlog.get_logger("http")
# The silero engine's counters /health and /metrics show (the front's and each worker's).
VAD_FIGURES = ("windows", "inferences", "dropped_windows", "lost_windows")

# Wire names of the call types, as the original active-call serialises them.
CALL_TYPE_WIRE = {"websocket": "webSocket", "sip": "sip", "webrtc": "webrtc"}
URGENT_COMMANDS = (api.Interrupt, api.Hangup)
# How long a finished connection may take to receive what is still queued before it is dropped.
CLOSE_GRACE = 2.0
STATIC_ROOT = Path(__file__).resolve().parents[1] / "static"   # the demo page beside the package


def websocket_legs(session_id: str, outbox: Outbox, counters: Counters | None = None, capacity: int = 50) -> LegMaker:
    """`/call`: the audio rides the application's own WebSocket, into a pipe of `capacity` frames
    (`audio_in_frames`). With `counters`, the frames its inbound pipe drops are counted for /metrics."""
    pipe: AudioPipe[bytes] = (AudioPipe(capacity, name=f"{session_id}.ws-in") if counters is None
                              else CountedPipe(capacity, counters, name=f"{session_id}.ws-in"))

    def leg(context: LegContext) -> WebSocketLeg:
        return WebSocketLeg(context, pipe, outbox.audio)

    return LegMaker(leg, pipe.push)


@dataclass(frozen=True, slots=True)
class CallParams:
    session_id: str
    dump: bool
    ping_interval: float
    server_side_track: str
    owner: Owner | None = None     # the API token that opens the call owns it


def call_settings(config: Config, server_side_track: str) -> CallSettings:
    sup = config.supervision
    return CallSettings(server_side_track=server_side_track, child_shutdown_timeout=sup.child_shutdown_timeout,
                        provider_restarts=sup.provider_restarts, provider_period=sup.provider_period,
                        backoff=Backoff(initial=sup.backoff_initial, factor=2.0, maximum=sup.backoff_max),
                        accept_timeout=config.accept_timeout, handshake_timeout=config.handshake_timeout,
                        media_pass_restarts=sup.media_pass_restarts, media_pass_period=sup.media_pass_period,
                        playback_buffer_seconds=config.playback_buffer_seconds,
                        tts_text_bytes=config.tts_text_bytes)


class BadParams(Exception):
    pass


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on", ""):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise BadParams(f"query parameter {name}: expected true or false, got {value!r}")


def parse_call_params(query: dict[str, str]) -> CallParams:
    session_id = query.get("id") or str(uuid.uuid4())
    if not session_id_ok(session_id):
        raise BadParams("query parameter id: must be 1..128 characters without '/' or NUL")
    dump = _parse_bool("dump", query["dump"]) if "dump" in query else True
    raw_ping = query.get("pingInterval", query.get("ping"))
    ping = 20.0
    if raw_ping is not None:
        try:
            ping = float(raw_ping)
        except ValueError:
            raise BadParams(f"query parameter pingInterval: expected seconds, got {raw_ping!r}") from None
        if not 0 <= ping <= 86400:
            raise BadParams(f"query parameter pingInterval: must be 0..86400 seconds, got {raw_ping}")
    track = query.get("serverSideTrack", query.get("server_side_track")) or "serverSideTrack"
    return CallParams(session_id, dump, ping, track)


class CallRouter:
    """Routes and handlers; `calls` gives the current CallSupervisor ref."""

    def __init__(self, config: Config, calls: Callable[[], ActorRef], clock: MediaClock,
                 services: CallServices, legs: Mapping[str, LegProvider] | None = None,
                 telemetry: Telemetry | None = None,
                 health: Callable[[], Mapping[str, object]] | None = None,
                 workers: Callable[[], ActorRef | None] | None = None, behind_front: bool = False) -> None:
        self.config = config
        self.calls = calls
        # The WorkerPool's current ref when WebRTC calls run in worker processes (webrtc.workers).
        self.workers = workers if config.webrtc.workers > 0 else None
        self.behind_front = behind_front    # this process is a worker: its front checked the requests
        self.worker_errors = 0              # REST requests to a worker that failed (lists, health)
        self.health_extra = health     # the transports' own figures (SIP endpoint, RTP ports) for /health
        self.clock = clock
        self.services = services
        # Call types whose transport is not here answer invite/accept with 501 (UnavailableLeg).
        self.telemetry = telemetry if telemetry is not None else Telemetry(engines=None, media=None, claims=None)
        counted = functools.partial(websocket_legs, counters=self.telemetry.counters,
                                    capacity=config.audio_in_frames)
        self.legs: Mapping[str, LegProvider] = {"websocket": counted, **(legs or {})}
        self.started_at = time.time()
        self.binary_dropped = 0
        self.outboxes: set[Outbox] = set()    # of the open API connections (queued event bytes)
        self.dump_writer = DumpWriter(config.dump.queue_bytes)

    def open_dump(self, session_id: str) -> EventDump:
        return EventDump(self.config.dump_root, session_id, self.dump_writer, self.config.dump.max_bytes)

    def app(self) -> web.Application:
        check = front_middleware() if self.behind_front else access_middleware(Access.from_config(self.config))
        app = web.Application(middlewares=[check])
        r = app.router
        for path, call_type in (("/call", "websocket"), ("/call/sip", "sip"), ("/call/webrtc", "webrtc")):
            handler = self._ws_handler(call_type)
            r.add_get(path, handler)
            r.add_get(path + "/", handler)  # clients that build URLs with a trailing slash
        r.add_get("/call/lists", self.list_calls)
        r.add_post("/call/kill/{id}", self.kill_call)
        r.add_get("/iceservers", self.ice_servers)
        r.add_get("/health", self.health)
        r.add_get("/metrics", self.metrics)
        # The demo page: index at /, its files under /static/ (only when the directory exists).
        static = self.static_root()
        r.add_get("/", self.demo_page)
        if static.is_dir():
            r.add_static("/static/", static, follow_symlinks=False)
        # The original active-call's forms, so its existing clients keep working.
        r.add_get("/list", self.list_calls_original)
        r.add_get("/kill/{id}", self.kill_call_original)
        return app

    # --- the demo page ------------------------------------------------------------------------

    def static_root(self) -> Path:
        root = self.config.static_root
        return Path(root) if root else STATIC_ROOT

    async def demo_page(self, request: web.Request) -> web.StreamResponse:
        index = self.static_root() / "index.html"
        if not index.is_file():
            return web.json_response({"error": f"the demo page is not installed ({index} is missing)"}, status=404)
        return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

    # --- REST ---------------------------------------------------------------------------------

    async def _call_refs(self, owner: Owner | None = None) -> list[ActorRef]:
        """The live calls `owner` may see (None: all), in start order (a call that ended meanwhile
        is left out)."""
        sup = self.calls()
        ids = await sup.ask(ListCalls(owner), timeout=2.0)
        refs = await asyncio.gather(*(sup.ask(GetCall(i), timeout=2.0) for i in ids))
        return [ref for ref in refs if ref is not None]

    async def _describe_all(self, owner: Owner | None) -> list[CallInfo]:
        """This process's own calls (a call relayed to a worker is listed by its worker)."""
        refs = [ref for ref in await self._call_refs(owner) if ref.actor_class is not RelayedCall]

        async def describe(ref: ActorRef) -> CallInfo | None:
            try:
                return await ref.ask(Describe(), timeout=1.0)
            except (ActorDeadError, TimeoutError):
                return None  # ended while we were listing

        infos = await asyncio.gather(*(describe(ref) for ref in refs))
        return [i for i in infos if i is not None]

    async def list_calls(self, request: web.Request) -> web.Response:
        calls = [
            {"id": i.id, "call_type": CALL_TYPE_WIRE.get(i.call_type, i.call_type), "created_at": i.created_at,
             "option": redact(i.option)}
            for i in await self._describe_all(request[OWNER_KEY])
        ]
        for answer in await self._from_workers("/call/lists", request[OWNER_KEY]):
            calls += answer.get("calls", [])
        return web.json_response({"calls": calls})

    async def list_calls_original(self, request: web.Request) -> web.Response:
        calls = [
            {"id": i.id, "callType": CALL_TYPE_WIRE.get(i.call_type, i.call_type), "cs.option": redact(i.option),
             "ringTime": None, "startTime": i.created_at}
            for i in await self._describe_all(request[OWNER_KEY])
        ]
        for answer in await self._from_workers("/list", request[OWNER_KEY]):
            calls += answer.get("active_calls", [])
        return web.json_response({"active_calls": calls})

    async def _ready_workers(self) -> list[WorkerAddress]:
        pool = self.workers() if self.workers is not None else None
        if pool is None:
            return []
        try:
            figures = await pool.ask(GetWorkers(), timeout=2.0)
        except (ActorDeadError, TimeoutError):
            return []
        return [WorkerAddress(w["index"], w["path"], w["pid"]) for w in figures if w["ready"]]

    async def _from_workers(self, path: str, owner: Owner | None) -> list[dict]:
        """Each ready worker's JSON answer to GET `path` for `owner`; a worker that does not answer
        is left out, logged and counted (activecall_worker_request_errors)."""
        workers = await self._ready_workers()
        answers = await asyncio.gather(*(worker_get(w, path, owner) for w in workers), return_exceptions=True)
        out = []
        for worker, answer in zip(workers, answers):
            if isinstance(answer, BaseException):
                self.worker_errors += 1
                log.warning("worker did not answer", worker=worker.index, path=path, error=repr(answer))
            elif isinstance(answer, dict):
                out.append(answer)
        return out

    async def end_all_calls(self, reason: str) -> None:
        try:
            refs = await self._call_refs()
        except (ActorDeadError, TimeoutError):
            return  # the call supervisor is already gone; its own stop ended the calls
        for ref in refs:
            try:
                ref.tell(Kill(reason=reason, initiator="system"))
            except ActorDeadError:
                pass
        await asyncio.gather(*(asyncio.wait_for(ref.wait_stopped(), self.config.supervision.call_shutdown_timeout)
                               for ref in refs), return_exceptions=True)

    async def _kill(self, session_id: str, owner: Owner | None, reason: str = "killed") -> bool:
        """True if the call was told to end; raises NotYourCall for another token's call. A call
        relayed to a worker is reached through its RelayedCall."""
        ref = await self.calls().ask(GetCall(session_id, owner=owner), timeout=2.0)
        if ref is None:
            return False
        try:
            ref.tell(Kill(reason=reason, initiator="system"))
        except ActorDeadError:
            return False
        return True

    async def kill_call(self, request: web.Request) -> web.Response:
        session_id = request.match_info["id"]
        # A worker's front names the reason (the drain ends calls with `shutdown`).
        reason = request.headers.get(REASON_HEADER, "killed")[:64] if self.behind_front else "killed"
        try:
            killed = await self._kill(session_id, request[OWNER_KEY], reason)
        except NotYourCall as exc:
            return web.json_response({"error": str(exc)}, status=403)
        if not killed:
            return web.json_response({"error": f"no active call with id {session_id!r}"}, status=404)
        return web.json_response(True)

    async def kill_call_original(self, request: web.Request) -> web.Response:
        session_id = request.match_info["id"]
        try:
            status = "killed" if await self._kill(session_id, request[OWNER_KEY]) else "not_found"
        except NotYourCall as exc:
            return web.json_response({"status": "forbidden", "id": session_id, "error": str(exc)}, status=403)
        return web.json_response({"status": status, "id": session_id})

    async def ice_servers(self, request: web.Request) -> web.Response:
        return web.json_response([s.to_json() for s in self.config.ice_servers])

    async def health(self, request: web.Request) -> web.Response:
        ids = await self.calls().ask(ListCalls(), timeout=2.0)
        extra = dict(self.health_extra()) if self.health_extra is not None else {}
        return web.json_response({
            **extra,
            "status": "ok",
            "calls": len(ids),
            "max_calls": self.config.max_calls,
            "uptime": round(time.time() - self.started_at, 3),
            # Resource figures an operator (and the leak tests) watch across calls.
            "tasks": len(asyncio.all_tasks()),
            "open_fds": _open_fds(),
            "clocked_tracks": len(self.clock),
            "clock": self.clock.stats(),
            "vad": self._vad_figures(),
            **({"workers": await self._worker_figures(clock=True)} if self.workers is not None else {}),
        })

    def _vad_figures(self) -> dict[str, int] | None:
        vad = self.telemetry.vad
        return None if vad is None else {key: getattr(vad, key) for key in VAD_FIGURES}

    async def _worker_figures(self, clock: bool = False) -> list[dict]:
        """The pool's figures per worker (not where its socket is); with `clock`, each ready
        worker's media clock figures from its own /health."""
        pool = self.workers() if self.workers is not None else None
        try:
            workers = await pool.ask(GetWorkers(), timeout=2.0) if pool is not None else []
        except (ActorDeadError, TimeoutError):
            return []
        out = [{k: v for k, v in w.items() if k != "path"} for w in workers]
        if clock:
            ready = [(o, WorkerAddress(w["index"], w["path"], w["pid"])) for o, w in zip(out, workers) if w["ready"]]
            answers = await asyncio.gather(*(worker_get(a, "/health", None) for _, a in ready),
                                           return_exceptions=True)
            for (o, a), answer in zip(ready, answers):
                if isinstance(answer, BaseException) or not isinstance(answer, dict):
                    self.worker_errors += 1
                    log.warning("worker did not answer", worker=a.index, path="/health", error=repr(answer))
                else:
                    o["clock"] = answer.get("clock")
                    o["vad"] = answer.get("vad")
        return out

    async def metrics(self, request: web.Request) -> web.Response:
        sup = self.calls()
        admissions = await sup.ask(GetAdmissions(), timeout=2.0)
        refs = await self._call_refs()

        async def describe(ref: ActorRef) -> CallInfo | None:
            try:
                return await ref.ask(Describe(), timeout=1.0)
            except (ActorDeadError, TimeoutError):
                return None  # ended while we were looking

        by_type = dict.fromkeys(CALL_TYPE_WIRE, 0)
        for info in await asyncio.gather(*(describe(ref) for ref in refs)):
            if info is not None:
                by_type[info.call_type] = by_type.get(info.call_type, 0) + 1
        t = self.telemetry
        engines = [t.engines.stats(name) for name in t.engines.names()] if t.engines is not None else []
        body = render({
            "calls_by_type": by_type, "admissions": admissions,
            "inbound_frames_dropped": t.counters.inbound_frames_dropped,
            "outbound_frames_dropped": t.counters.outbound_frames_dropped + sum(o.audio_dropped for o in self.outboxes),
            "clock": self.clock.stats(),
            "loop_lag": t.loop_lag, "engines": engines,
            "media": {"cache_bytes": t.media.cached_bytes if t.media else 0,
                      "decode_bytes": t.media.budget.used if t.media else 0,
                      "decode_refused": t.media.budget.refused if t.media else 0},
            "dump": {"pending": self.dump_writer.pending, "lost_lines": self.dump_writer.lost_lines,
                     "written_bytes": self.dump_writer.written_bytes},
            "binary_frames_dropped": self.binary_dropped,
            "tally": t.tally, "event_queues": [o.queued_bytes for o in self.outboxes],
            "workers": await self._worker_figures(clock=True) if self.workers is not None else [],
            "worker_request_errors": self.worker_errors,
            "recordings": len(t.claims) if t.claims is not None else 0, "open_fds": _open_fds(),
            "tasks": len(asyncio.all_tasks()),
            "vad": self._vad_figures(),
        })
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    # --- the API WebSocket --------------------------------------------------------------------

    def _ws_handler(self, call_type: str) -> Callable[[web.Request], object]:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                params = parse_call_params(dict(request.query))
            except BadParams as exc:
                return web.json_response({"error": str(exc)}, status=400)
            params = dataclasses.replace(params, owner=request[OWNER_KEY])
            if call_type == "webrtc" and self.workers is not None:
                return await self._serve_relayed(request, params)
            return await self._serve_call(request, call_type, params)

        return handler

    async def _serve_call(self, request: web.Request, call_type: str, params: CallParams) -> web.StreamResponse:
        # Text arrives as bytes: invalid UTF-8 is a malformed command (an `error`, the call goes
        # on), not a protocol violation that closes the socket.
        ws = ApiWebSocket(max_msg_size=self.config.frame_close_bytes, autoping=True, decode_text=False)
        await ws.prepare(request)
        sid = params.session_id
        clog = log.bind(session_id=sid, call_type=call_type)
        current: list[ActorRef] = []

        def too_slow(reason: str) -> None:
            # The client stopped reading its events: the call cannot be served; it hangs up.
            for ref in current:
                if ref.is_alive():
                    ref.tell(Kill(reason="client_too_slow", initiator="system"))

        outbox = Outbox(ws, audio_capacity=self.config.audio_out_frames, event_budget=self.config.event_queue_bytes,
                        on_too_slow=too_slow)
        self.outboxes.add(outbox)
        dump = self.open_dump(sid) if params.dump else None

        def emit(event: object) -> None:
            text = api.dumps_event(event)
            if dump is not None:
                dump.event(text)
            outbox.event(text)

        ws.before_refusal = self._frame_refusal(sid, emit, outbox, clog)
        provider = self.legs.get(call_type)
        if provider is not None:
            maker = provider(sid, outbox)
        else:
            maker = LegMaker(lambda context: UnavailableLeg(context, call_type))
        settings = call_settings(self.config, params.server_side_track)

        def start(parent: ActorRef) -> ActorRef:
            return Call.start(sid, leg=maker.factory, clock=self.clock, settings=settings, services=self.services,
                              admitted=False, parent=parent, name=f"call:{sid}")

        call: ActorRef | None = None
        created = False
        ping_task: asyncio.Task[None] | None = None
        try:
            try:
                call, created = await self._call_for(sid, call_type, start, params.owner)
                await call.ask(Attach(AppConnection(emit=emit, close=outbox.close)), timeout=5.0)
            except (AdmissionRefused, DuplicateSession, CallStartFailed, AttachRefused, NotYourCall, ActorDeadError,
                    TimeoutError) as exc:
                if isinstance(exc, (DuplicateSession, AttachRefused)):
                    code, close_code, reason = 409, 1008, str(exc)
                elif isinstance(exc, NotYourCall):
                    code, close_code, reason = 403, 1008, str(exc)
                elif isinstance(exc, AdmissionRefused):
                    code, close_code, reason = 503, 1013, str(exc)
                elif isinstance(exc, CallStartFailed):
                    code, close_code, reason = 500, 1011, str(exc)
                else:  # the call supervisor is stopping (drain) or not answering
                    code, close_code, reason = 503, 1013, "the gateway is shutting down or overloaded"
                if call is not None and created and call.is_alive():
                    call.tell(Detach())   # started for this connection, which it never got
                call = None               # otherwise not ours to end: it belongs to another connection
                emit(api.ErrorEvent(track_id=sid, timestamp=now_ms(), sender="server",
                                    error=f"call refused: {reason}", code=code))
                clog.warning("call refused", error=reason)
                outbox.close(code=close_code)
                await outbox.wait_closed(CLOSE_GRACE)
                return ws
            current.append(call)
            if outbox.too_slow:
                too_slow("")
            # Whatever ends the call (even a crash before its hangup), the client connection closes.
            call.add_watcher(lambda _exit: outbox.close())
            if params.ping_interval > 0:
                ping_task = asyncio.create_task(self._ping(emit, params.ping_interval))
            await self._read(ws, call, maker, dump, clog)
        finally:
            if ping_task is not None:
                ping_task.cancel()
            if call is not None and call.is_alive():
                try:
                    call.tell(Detach())
                except ActorDeadError:
                    pass
                try:
                    await asyncio.wait_for(call.wait_stopped(), self.config.supervision.call_shutdown_timeout)
                except asyncio.TimeoutError:
                    clog.error("call did not stop after its client left; stopping it")
                    await call.stop(timeout=1.0)
            outbox.close()
            await outbox.wait_closed(CLOSE_GRACE)
            self.outboxes.discard(outbox)
            self.telemetry.counters.outbound_frames_dropped += outbox.audio_dropped
            if dump is not None:
                dump.close()
        return ws

    def _frame_refusal(self, sid: str, emit: Callable[[object], None], outbox: Outbox,
                       clog: structlog.typing.FilteringBoundLogger) -> Callable[[int], Awaitable[str]]:
        """What a client reads before its connection is closed for a frame aiohttp refuses."""

        async def refused_frame(code: int) -> str:
            limit = self.config.frame_close_bytes
            if code == 1009:
                reason, status = f"frame larger than the {limit}-byte limit (frame_close_bytes); closing", 413
            else:
                reason, status = "malformed WebSocket frame; closing", 400
            clog.warning("frame refused; closing", code=code, error=reason)
            emit(api.ErrorEvent(track_id=sid, timestamp=now_ms(), sender="server", error=reason, code=status))
            await outbox.flush(CLOSE_GRACE)
            return reason

        return refused_frame

    async def _serve_relayed(self, request: web.Request, params: CallParams) -> web.StreamResponse:
        """A WebRTC call placed on a worker process (transports/relay.py)."""
        # As for a call in this process: text frames are relayed as bytes (the worker answers
        # invalid UTF-8 and commands over text_frame_bytes with an `error`, and the call goes on),
        # and a frame aiohttp refuses is announced before the close.
        ws = ApiWebSocket(max_msg_size=self.config.frame_close_bytes, autoping=True, decode_text=False)
        await ws.prepare(request)
        sid = params.session_id
        clog = log.bind(session_id=sid, call_type="webrtc")
        held: list[ActorRef] = []

        def too_slow(reason: str) -> None:
            for ref in held:
                if ref.is_alive():
                    ref.tell(Kill(reason="client_too_slow", initiator="system"))

        outbox = Outbox(ws, event_budget=self.config.event_queue_bytes, on_too_slow=too_slow)

        def emit(event: object) -> None:
            outbox.event(api.dumps_event(event))

        ws.before_refusal = self._frame_refusal(sid, emit, outbox, clog)

        async def refuse(code: int, close_code: int, reason: str) -> web.StreamResponse:
            emit(api.ErrorEvent(track_id=sid, timestamp=now_ms(), sender="server",
                                error=f"call refused: {reason}", code=code))
            clog.warning("call refused", error=reason)
            outbox.close(code=close_code)
            await outbox.wait_closed(CLOSE_GRACE)
            return ws

        def binary() -> None:
            self.binary_dropped += 1

        pool = self.workers() if self.workers is not None else None
        worker: WorkerAddress | None = None
        relayed: ActorRef | None = None
        relay: Relay | None = None
        created = iso8601(time.time())
        try:
            try:
                if pool is None:
                    raise NoWorker("no worker process is ready for a WebRTC call")
                worker = await pool.ask(PlaceCall(sid), timeout=2.0)
                kill = functools.partial(kill_on_worker, worker, sid)
                placed = worker

                def start(parent: ActorRef) -> ActorRef:
                    return RelayedCall.start(sid, placed, created, kill, parent=parent, name=f"relay:{sid}")

                relayed = await self.calls().ask(StartCall(sid, start, owner=params.owner), timeout=5.0)
            except (DuplicateSession, AdmissionRefused, CallStartFailed, NoWorker, ActorDeadError,
                    TimeoutError) as exc:
                if isinstance(exc, DuplicateSession):
                    return await refuse(409, 1008, str(exc))
                if isinstance(exc, CallStartFailed):
                    return await refuse(500, 1011, str(exc))
                if isinstance(exc, (AdmissionRefused, NoWorker)):
                    return await refuse(503, 1013, str(exc))
                return await refuse(503, 1013, "the gateway is shutting down or overloaded")
            held.append(relayed)
            if outbox.too_slow:
                too_slow("")
            relay = Relay(sid, worker, outbox, emit, created, binary, self.config.supervision.call_shutdown_timeout)
            try:
                async with worker_session(worker.path) as session:
                    await relay.run(ws, session, worker_url("/call/webrtc", dict(request.query)),
                                    owner_headers(params.owner), self.config.frame_close_bytes)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                if relay.upstream is None:
                    return await refuse(503, 1013, f"worker {worker.index} is not reachable ({exc!r})")
                if not relay.saw_hangup and not relay.client_left:
                    relay.lost()
        finally:
            if relayed is not None and relayed.is_alive():
                try:
                    relayed.tell(Detach())
                except ActorDeadError:
                    pass
                try:
                    await asyncio.wait_for(relayed.wait_stopped(), 2.0)
                except asyncio.TimeoutError:
                    await relayed.stop(timeout=1.0)
            if worker is not None and pool is not None:
                try:
                    pool.tell(CallLeft(sid, lost=relay is not None and relay.lost_worker))
                except ActorDeadError:
                    pass
            outbox.close()
            await outbox.wait_closed(CLOSE_GRACE)
        return ws

    async def _call_for(self, sid: str, call_type: str, start: Callable[[ActorRef], ActorRef],
                        owner: Owner | None = None) -> tuple[ActorRef, bool]:
        """The call this connection is for, and whether it was made for it: an existing one waiting
        for its application (an incoming call announced by webhook, `?id=<dialogId>`), else a new one.
        An existing call of another API token is refused (NotYourCall); one the gateway made itself
        (no owner yet) becomes the attaching token's."""
        existing = await self.calls().ask(GetCall(sid, owner=owner, claim=True), timeout=2.0)
        if existing is None:
            # Held for this connection, not yet a call: it takes a max_calls slot when it places one.
            return await self.calls().ask(StartCall(sid, start, owner=owner, admitted=False), timeout=5.0), True
        info = await existing.ask(Describe(), timeout=2.0)
        if info.call_type != call_type:
            raise AttachRefused(f"session {sid!r} is a {CALL_TYPE_WIRE.get(info.call_type, info.call_type)} call, "
                                f"not a {CALL_TYPE_WIRE.get(call_type, call_type)} one")
        return existing, False

    async def _read(self, ws: web.WebSocketResponse, call: ActorRef, maker: LegMaker,
                    dump: EventDump | None, clog: structlog.typing.FilteringBoundLogger) -> None:
        binary = maker.binary
        limit = self.config.text_frame_bytes
        ahead, ahead_bytes = 0, 0        # commands told to the call since it was last known to be idle
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                data: bytes = msg.data
                ahead += 1
                ahead_bytes += len(data)
                if ahead >= self.config.command_queue or ahead_bytes >= self.config.command_queue_bytes:
                    # The call is behind its client: stop reading until it has caught up, so a fast
                    # client fills its own TCP window, not the call's mailbox.
                    if not await _caught_up(call):
                        break
                    ahead, ahead_bytes = 1, len(data)
                if len(data) > limit:
                    # Not parsed, not dumped (it would spend the dump's budget): the error says it all.
                    message: object = BadCommand(f"command of {len(data)} bytes is larger than the {limit}-byte "
                                                 "limit (text_frame_bytes); it was not read", 413)
                    try:
                        call.tell(message)
                    except ActorDeadError:
                        break
                    continue
                if dump is not None:
                    dump.command(data.decode("utf-8", "replace"))
                try:
                    cmd = api.parse_command(data)
                except api.ApiError as exc:
                    message = BadCommand(str(exc))
                else:
                    if isinstance(cmd, api.LEG_COMMANDS):
                        message = _leg_command(maker, cmd)
                        if message is None:
                            continue
                    else:
                        message = UrgentCommand(cmd) if isinstance(cmd, URGENT_COMMANDS) else ClientCommand(cmd)
                try:
                    call.tell(message)
                except ActorDeadError:
                    break
            elif msg.type == WSMsgType.BINARY:
                if binary is not None:
                    binary(msg.data)
                else:
                    self.binary_dropped += 1
            elif msg.type == WSMsgType.ERROR:
                clog.info("websocket error", error=repr(ws.exception()))
                break

    async def _ping(self, emit: Callable[[object], None], interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            emit(api.PingEvent(timestamp=now_ms()))


async def _caught_up(call: ActorRef) -> bool:
    """Wait until `call` has handled what was told to it; False if it ended meanwhile. A call that
    stays busy for a minute (it should not) is read again rather than waited on for ever."""
    for _ in range(12):
        try:
            await call.ask(Drained(), timeout=5.0)
            return True
        except TimeoutError:
            continue      # busy for long (a slow leg operation): still alive, keep waiting
        except ActorDeadError:
            return False
    log.warning("call did not catch up with its commands within 60 s; reading on", call=repr(call))
    return True


def _leg_command(maker: LegMaker, cmd: object) -> BadCommand | None:
    """Hand a leg command to the connection's leg; what comes back for the call is the error
    event of a refusal (the call emits it, in order with its other events)."""
    hook = maker.commands.get(type(cmd))
    wire = getattr(cmd, "command", type(cmd).__name__)
    if hook is None:
        return BadCommand(f"{wire}: this session's leg does not take it", 400)
    try:
        hook(cmd)
    except LegRefused as exc:
        return BadCommand(exc.message, exc.code)
    return None


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


class HttpServer(Actor):
    """Owns the listening socket; stopping it stops accepting and closes open connections."""

    start_error: BaseException | None = None  # last bind failure, for a clear start-up message

    def __init__(self, config: Config, calls: Callable[[], ActorRef], clock: MediaClock,
                 services: CallServices, legs: Mapping[str, LegProvider] | None = None,
                 telemetry: Telemetry | None = None,
                 health: Callable[[], Mapping[str, object]] | None = None,
                 workers: Callable[[], ActorRef | None] | None = None, unix_path: str | None = None) -> None:
        self.config = config
        # On a Unix socket the server is a worker process's, reached only by its front.
        self.unix_path = unix_path
        self.router = CallRouter(config, calls, clock, services, legs, telemetry, health, workers=workers,
                                 behind_front=unix_path is not None)
        self.runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None

    async def on_start(self) -> None:
        host, port = self.config.http_host_port
        self.runner = web.AppRunner(self.router.app(), handle_signals=False, access_log=None,
                                    shutdown_timeout=self.config.supervision.call_shutdown_timeout)
        await self.runner.setup()
        self.router.dump_writer.start()
        self.router.telemetry.loop_lag.start()
        site: web.BaseSite = (web.TCPSite(self.runner, host, port, reuse_address=True) if self.unix_path is None
                              else web.UnixSite(self.runner, self.unix_path))
        try:
            await site.start()
        except OSError as exc:
            HttpServer.start_error = exc
            await self.runner.cleanup()
            await self.router.dump_writer.stop()
            await self.router.telemetry.loop_lag.stop()
            raise
        if self.unix_path is not None:
            self.address = (self.unix_path, 0)
            log.info("http listening", socket=self.unix_path)
            return
        sockets = site._server.sockets if site._server is not None else []  # noqa: SLF001 - bound port for :0
        self.address = sockets[0].getsockname()[:2] if sockets else (host, port)
        log.info("http listening", address=f"{self.address[0]}:{self.address[1]}")
        warning = exposure_warning(self.config) if self.unix_path is None else None
        if warning is not None:
            log.warning(warning)

    async def on_stop(self) -> None:
        if self.runner is None:
            return
        # Drain in order: stop accepting, end every call this server carries (each sends its
        # hangup and closes its WebSocket), then close what is left. Waiting for the handlers
        # without ending their calls first would only run into the shutdown timeout.
        for site in list(self.runner.sites):
            await site.stop()
        await self.router.end_all_calls(reason="shutdown")
        await self.runner.cleanup()
        self.runner = None
        await self.router.dump_writer.stop()  # after the handlers: their last lines are queued
        await self.router.telemetry.loop_lag.stop()

    async def on_failure(self, error: BaseException) -> None:
        # A restarted server starts its own writer thread and lag monitor: these must not linger.
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()
        await self.router.dump_writer.stop()
        await self.router.telemetry.loop_lag.stop()

    async def on_receive(self, message: object) -> object:
        if isinstance(message, GetAddress):
            return self.address
        return await super().on_receive(message)


@dataclass(frozen=True, slots=True)
class GetAddress:
    pass
