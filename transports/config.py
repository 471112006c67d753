"""Gateway configuration: `config.toml` read with tomli into frozen dataclasses.

Unknown keys are refused at start-up with the key and the file named: a typo in a production config
must not silently fall back to a default. CLI flags override the file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli


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
    gateway_restarts: int = 3           # restarts of the gateway's own children within gateway_period,
    gateway_period: float = 60.0        # past which the process exits (status 1)


@dataclass(frozen=True, slots=True)
class Config:
    http_addr: str = "0.0.0.0:8080"
    sip_addr: str = "0.0.0.0"
    udp_port: int = 13050
    external_ip: str | None = None
    rtp_start_port: int = 12000
    rtp_end_port: int = 42000
    ice_servers: tuple[IceServer, ...] = ()
    media_root: str = "./var/media"
    recorder_root: str = "./var/recorders"
    dump_root: str = "./var/dumps"
    max_calls: int = 1000
    accept_timeout: float = 50.0       # seconds an incoming call waits for `accept`/`reject` (then 408)
    playback_buffer_seconds: float = 300.0  # synthesised audio one tts may hold ahead of playback
    recorder_pending_bytes: int = 64 << 20  # recording audio waiting for the disk, whole process
    log_level: str = "info"
    log_format: str = "console"
    handler: HandlerConfig = field(default_factory=HandlerConfig)
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)

    @property
    def http_host_port(self) -> tuple[str, int]:
        return split_host_port(self.http_addr, "http_addr")


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
    if cfg.max_calls < 1:
        raise ConfigError(f"max_calls: must be at least 1, got {cfg.max_calls}")
    if not 0 < cfg.rtp_start_port < cfg.rtp_end_port <= 65535:
        raise ConfigError(
            f"rtp_start_port/rtp_end_port: need 0 < start < end <= 65535, got {cfg.rtp_start_port}..{cfg.rtp_end_port}"
        )


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
