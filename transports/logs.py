"""structlog set-up: JSON lines for machines, a console renderer for people."""

from __future__ import annotations

import logging
import sys

import structlog

from protocol.redact import redact


def redact_secrets(_logger: object, _method: str, event_dict: dict) -> dict:
    """Credentials never reach a log line: secret-named fields and URLs' userinfo are masked."""
    return redact(event_dict)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "console", worker: int | None = None) -> None:
    """`worker`: the index of a WebRTC worker process, carried on each of its lines, since workers
    share their front's stderr."""
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    def name_worker(_logger: object, _method: str, event_dict: dict) -> dict:
        event_dict.setdefault("worker", worker)
        return event_dict

    structlog.configure(
        processors=[
            *([name_worker] if worker is not None else []),
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # One write per line (print() writes the line and its newline apart): the front and its
        # workers share one stderr, and two processes' lines must not interleave mid-line.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # aiohttp's access log goes through stdlib logging at the same level.
    prefix = f"worker={worker} " if worker is not None else ""
    logging.basicConfig(level=_LEVELS[level], stream=sys.stderr, format=f"{prefix}%(levelname)s %(name)s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
