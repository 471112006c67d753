"""Headless Chromium driven over the Chrome DevTools protocol, on an aiohttp WebSocket.

`Browser.start` launches Debian's `chromium` with a fake microphone file and the flags a WebRTC
test needs headless, finds its DevTools port (`--remote-debugging-port=0` writes it to
DevToolsActivePort), and attaches to the page. `Page.evaluate` runs JavaScript in the page and
returns its value; `until` polls an expression with a deadline; `console` and `errors` hold what
the page logged (console calls, uncaught exceptions). `stop` always ends the browser (terminate,
then kill) and removes nothing it did not create. tests/support/bidi.py has the same surface for
Firefox.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.remote_page import RemotePage

CHROMIUM = shutil.which("chromium")


class CdpError(Exception):
    pass


def chromium_flags(profile: Path, mic: Path) -> list[str]:
    return [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}",
        "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
        "--mute-audio", "--window-size=1280,1100", f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
    ]


class Page(RemotePage):
    """One page target's DevTools session."""

    Error = CdpError

    def failure(self, answer: dict[str, Any]) -> str | None:
        return str(answer["error"]) if "error" in answer else None

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.logged(f"{params.get('type')}: {text}", params.get("type") in ("error", "assert"))
        elif method == "Runtime.exceptionThrown":
            self.logged("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500], True)

    async def evaluate(self, expression: str, timeout: float = 10.0) -> Any:
        result = await self.call("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def set_viewport(self, width: int, height: int) -> None:
        await self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=False)

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", timeout=20.0, format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))


class Browser:
    def __init__(self, proc: subprocess.Popen, http: aiohttp.ClientSession, port: int) -> None:
        self.proc = proc
        self.http = http
        self.port = port

    @classmethod
    async def start(cls, url: str, profile: Path, mic: Path, timeout: float = 30.0) -> tuple[Browser, Page]:
        if CHROMIUM is None:
            raise CdpError("chromium is not installed (Debian package chromium)")
        profile.mkdir(parents=True, exist_ok=True)
        log = open(profile / "chromium.log", "wb")
        proc = subprocess.Popen([CHROMIUM, *chromium_flags(profile, mic), url], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        http = aiohttp.ClientSession()
        browser = None
        try:
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not (port_file.exists() and port_file.read_text().strip()):
                if proc.poll() is not None:
                    raise CdpError(f"chromium exited with {proc.returncode}; see {profile / 'chromium.log'}")
                if time.monotonic() >= deadline:
                    raise CdpError(f"chromium wrote no DevToolsActivePort within {timeout:g} s")
                await asyncio.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            browser = cls(proc, http, port)
            target = None
            while target is None:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    targets = await resp.json()
                target = next((t for t in targets if t.get("type") == "page" and t.get("url", "").startswith(url)),
                              None)
                if target is None:
                    if time.monotonic() >= deadline:
                        raise CdpError(f"no page target for {url} within {timeout:g} s: {targets}")
                    await asyncio.sleep(0.1)
            ws = await http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 << 20)
            page = Page(ws)
            await page.call("Runtime.enable")
            await page.call("Page.enable")
            return browser, page
        except BaseException:
            if browser is not None:
                await browser.stop()
            else:
                await _end(proc)
                await http.close()
            raise

    async def stop(self) -> None:
        await self.http.close()
        await _end(self.proc)


async def _end(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
