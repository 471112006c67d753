"""The gateway as the benchmarks and the soak run it: `active-call` in a process of its own, with
its config, log, media and recordings in one directory, ready once its log says `gateway ready`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fixture_audio import write_wav

READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class Gateway:
    proc: subprocess.Popen
    url: str          # http://host:port, no trailing slash
    sip_port: int
    log: Path         # its JSON log (stderr)


def base_config(home: Path, max_calls: int) -> str:
    """The lines every run shares: loopback, any free ports, JSON logs, every root inside `home`."""
    return (f'http_addr = "127.0.0.1:0"\nsip_addr = "127.0.0.1"\nudp_port = 0\nmax_calls = {max_calls}\n'
            f'log_level = "info"\nlog_format = "json"\n'
            f'dump_root = "{home}/dumps"\nmedia_root = "{home}/media"\n')


def wait_ready(proc: subprocess.Popen, ready: Callable[[], Any], log: Path, name: str,
               timeout: float = READY_TIMEOUT) -> Any:
    """Poll `ready()` until it gives something other than None; the process exiting first, or the
    deadline passing, ends the run with the tail of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited early: {log.read_text()[-2000:]}")
        found = ready()
        if found is not None:
            return found
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise SystemExit(f"{name} did not become ready: {log.read_text()[-2000:]}")


def start_gateway(home: Path, config: str) -> Gateway:
    """Write `config` to home/gateway.toml and run the gateway there until it is ready."""
    conf = home / "gateway.toml"
    conf.write_text(config)
    log = home / "gateway.log"
    exe = Path(sys.executable).parent / "active-call"
    with open(log, "w") as err:
        proc = subprocess.Popen([str(exe), "--conf", str(conf)], stderr=err, stdout=subprocess.DEVNULL, cwd=home)

    def ready() -> dict | None:
        records, _ = log_records(log, '"gateway ready"')
        return next((r for r in records if r.get("event") == "gateway ready"), None)

    record = wait_ready(proc, ready, log, "gateway")
    return Gateway(proc, f"http://{record['http']}", int(record["sip"].rsplit(":", 1)[1]), log)


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM (the gateway drains its calls), SIGKILL if it has not exited by `timeout`; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def log_records(log: Path, mentioning: str = "") -> tuple[list[dict], int]:
    """The JSON records among the log's lines that contain `mentioning`, and how many of those
    lines were not a JSON object (a traceback, a line cut short or run into another process's
    write: the workers share the log)."""
    records, other = [], 0
    for line in log.read_text().splitlines():
        if mentioning not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            other += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            other += 1
    return records, other


def write_tone(path: Path, hz: float, rate: int, seconds: float = 15.0) -> None:
    """A mono 16-bit WAV of a sine, for `play` to play."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    write_wav(path, np.sin(2 * np.pi * hz * t) * 6000, rate)
