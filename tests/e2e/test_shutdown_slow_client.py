"""SIGTERM with a client that does not read: the drain does not wait on it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]


async def test_sigterm_with_a_client_that_does_not_read_exits_promptly(tmp_path):
    conf = tmp_path / "gw.toml"
    conf.write_text(f'http_addr = "127.0.0.1:0"\nsip_addr = "127.0.0.1"\nudp_port = 0\n'
                    f'log_format = "json"\ndump_root = "{tmp_path}/dumps"\n'
                    f'media_root = "{tmp_path}/media"\nrecorder_root = "{tmp_path}/rec"\n')
    log = tmp_path / "gw.log"
    proc = subprocess.Popen([sys.executable, "-m", "transports.main", "--conf", str(conf)], cwd=ROOT,
                            stderr=open(log, "w"))
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the gateway did not start"
            for line in log.read_text().splitlines():
                if '"gateway ready"' in line:
                    url = "http://" + json.loads(line)["http"]
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{url}/call?id=deaf")
            await ws.send_json({"command": "invite", "option": {"codec": "pcm"}})
            blob = "y" * (256 << 10)
            for _ in range(12):           # events this client never reads fill its window
                await asyncio.wait_for(ws.send_str(json.dumps({"command": "custom", "data": blob})), 5)
            started = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)
            while proc.poll() is None:
                assert time.monotonic() - started < 10, "the gateway did not exit"
                await asyncio.sleep(0.02)
            took = time.monotonic() - started
            await ws.close()
        assert proc.returncode == 0, log.read_text()[-2000:]
        assert took < 4.0, f"SIGTERM took {took:.1f} s with a client that does not read"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
