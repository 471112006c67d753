"""`active-call --conf config.toml [--http ADDR:PORT] [--sip ADDR:PORT]`: run the gateway."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import sys
import threading
from typing import Any

import structlog

from .config import Config, ConfigError, load_config, parse_config, split_host_port, with_env_ice_servers
from .gateway import GatewayStartError, start_gateway
from .logs import configure_logging


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="active-call", description="Voice-call gateway")
    p.add_argument("--conf", help="path to config.toml (default: embedded defaults)")
    p.add_argument("--http", help="HTTP listen address ADDR:PORT (overrides http_addr)")
    p.add_argument("--sip", help="SIP listen address ADDR:PORT (overrides sip_addr and udp_port)")
    # A worker process for WebRTC calls, started by a front's WorkerPool (transports/worker_pool.py).
    p.add_argument("--worker", metavar="SOCKET", help=argparse.SUPPRESS)
    p.add_argument("--worker-config", help=argparse.SUPPRESS)
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.http:
        split_host_port(args.http, "--http")
        out["http_addr"] = args.http
    if args.sip:
        host, port = split_host_port(args.sip, "--sip")
        out["sip_addr"], out["udp_port"] = host, port
    return out


async def serve(config: Config, worker_socket: str | None = None) -> int:
    log = structlog.get_logger("main")
    try:
        gateway = await start_gateway(config, worker_socket=worker_socket)
    except GatewayStartError as exc:
        log.error("gateway failed to start", error=str(exc))
        return 1
    # What exists once the gateway is up (modules, codec tables, the tree) lives as long as the
    # process: moved out of the collector's reach, a full collection scans only what calls create,
    # and its pause (~20 ms for the start-up heap alone) no longer lands on the media clock's ticks.
    gc.freeze()
    stop = asyncio.Event()
    front_gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    if worker_socket is None:
        host, port = gateway.http_address
        sip_host, sip_port = gateway.sip_address
        log.info("gateway ready", http=f"{host}:{port}", sip=f"{sip_host}:{sip_port}", max_calls=config.max_calls)
        print(f"demo page: {demo_url(host, port)}", flush=True)
        signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
    else:
        log.info("worker ready", socket=worker_socket, pid=os.getpid())
        # Its front stops it with SIGTERM; a Ctrl-C in the terminal is the front's to handle.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signals = (signal.SIGTERM,)
        def gone() -> None:
            front_gone.set()
            stop.set()

        watch_front(lambda: loop.call_soon_threadsafe(gone))
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(gateway.ref.wait_stopped())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if waiter.done():
        log.error("gateway supervisor gave up; exiting")
        await gateway.media.close()
        return 1
    log.info("shutting down: draining calls")
    stopper.cancel()
    await gateway.stop()
    if worker_socket is not None and front_gone.is_set():
        # Nobody is left to remove the front's runtime directory (its socket and config): the
        # workers do, whichever ends last.
        shutil.rmtree(os.path.dirname(worker_socket), ignore_errors=True)
    waiter.cancel()
    log.info("stopped")
    return 0


def watch_front(gone: Any) -> None:
    """Call `gone` once stdin (a pipe from the front) reaches end of file: the front has exited,
    even by SIGKILL, and the worker drains instead of living on as an orphan."""

    def read() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        gone()

    threading.Thread(target=read, name="front-watch", daemon=True).start()


def load_worker_config(path: str) -> Config:
    with open(path) as fh:
        return parse_config(json.load(fh))


def demo_url(host: str, port: int) -> str:
    """Where a browser on this machine finds the demo page (a wildcard bind is reached on loopback)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.worker:
            if not args.worker_config:
                raise ConfigError("--worker needs --worker-config")
            config = load_worker_config(args.worker_config)
        else:
            config = with_env_ice_servers(load_config(args.conf, overrides_from(args)), os.environ)
    except ConfigError as exc:
        print(f"active-call: config error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format, worker=args.worker_index if args.worker else None)
    # uvloop's socket paths cost a fraction of the stock loop's per frame, which is what per-call
    # cost is made of; the stock loop remains the fallback where uvloop cannot be installed.
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(config, args.worker))
    return uvloop.run(serve(config, args.worker))


if __name__ == "__main__":
    sys.exit(main())
