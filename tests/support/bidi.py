"""Headless Firefox driven over WebDriver BiDi, its built-in remote agent, on an aiohttp WebSocket.

`Browser.start` launches Debian's `firefox-esr` on a fresh profile whose user.js holds the prefs a
WebRTC test needs headless (a fake microphone, no permission prompt, loopback ICE candidates),
finds its BiDi port (`--remote-debugging-port=0` writes it to WebDriverBiDiServer.json in the
profile), opens a session and navigates its tab to the page. `Page` has the same surface as
tests/support/cdp.py's: `evaluate` runs JavaScript in the page and returns its value as plain
data, `until` polls an expression with a deadline, `screenshot` saves a PNG, and `console` holds
the page's log entries (`log.entryAdded`: console calls and uncaught errors). `stop` always ends
the browser and every process of its group (close, then terminate, then kill).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.remote_page import RemotePage

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")

# Firefox's fake microphone is a sine tone at this frequency (the pref's default in Firefox ESR's
# greprefs.js is 1000 Hz; it is set here so the test does not lean on the default).
FAKE_TONE_HZ = 1000

PREFS: dict[str, Any] = {
    # getUserMedia answers at once with the fake devices: no prompt, no real microphone.
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.navigator.audio.fake_frequency": FAKE_TONE_HZ,
    # The site holds the microphone permission (as after "Allow" and "Remember"): without it
    # Firefox offers only the address of the default route, and the private network has none.
    "permissions.default.microphone": 1,
    # The private network holds only loopback: Firefox gathers 127.0.0.1 only when told to, and
    # names host candidates by plain address (the gateway cannot resolve mDNS names).
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    # Nothing that reaches for the network or asks questions at start-up.
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.normandy.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "browser.region.network.url": "",
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
}


class BidiError(Exception):
    pass


def write_profile(profile: Path, prefs: dict[str, Any]) -> None:
    profile.mkdir(parents=True, exist_ok=True)
    lines = [f"user_pref({json.dumps(name)}, {json.dumps(value)});" for name, value in prefs.items()]
    (profile / "user.js").write_text("\n".join(lines) + "\n")


def plain(remote: dict[str, Any]) -> Any:
    """A BiDi RemoteValue as the JSON-like value it serialises (what CDP's returnByValue gives)."""
    kind = remote.get("type")
    value = remote.get("value")
    if kind in ("undefined", "null"):
        return None
    if kind in ("string", "boolean"):
        return value
    if kind == "number":
        special = {"NaN": math.nan, "-0": -0.0, "Infinity": math.inf, "-Infinity": -math.inf}
        return special.get(value, value) if isinstance(value, str) else value
    if kind == "bigint":
        return int(value)
    if kind in ("array", "set"):
        return [plain(item) for item in value or []]
    if kind in ("object", "map"):
        return {(key if isinstance(key, str) else str(plain(key))): plain(item) for key, item in value or []}
    if kind == "date":
        return value
    # nodes, windows, functions...: nothing a test reads as data
    return {"type": kind}


class Page(RemotePage):
    """One browsing context of a BiDi session."""

    Error = BidiError

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__(ws)
        self.context = ""

    def failure(self, answer: dict[str, Any]) -> str | None:
        return f"{answer.get('error')}: {answer.get('message')}" if answer.get("type") == "error" else None

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "log.entryAdded":
            self.logged(f"{params.get('level')} ({params.get('type')}): {params.get('text')}",
                        params.get("level") == "error")

    async def evaluate(self, expression: str, timeout: float = 10.0) -> Any:
        result = await self.call("script.evaluate", timeout=timeout, expression=expression,
                                 target={"context": self.context}, awaitPromise=True)
        if result.get("type") == "exception":
            details = result.get("exceptionDetails", {})
            raise BidiError(f"{expression!r} raised: {details.get('text')}")
        return plain(result["result"])

    async def set_viewport(self, width: int, height: int) -> None:
        await self.call("browsingContext.setViewport", context=self.context,
                        viewport={"width": width, "height": height})

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("browsingContext.captureScreenshot", timeout=20.0, context=self.context,
                               origin="document")
        path.write_bytes(base64.b64decode(shot["data"]))


class Browser:
    def __init__(self, proc: subprocess.Popen, http: aiohttp.ClientSession) -> None:
        self.proc = proc
        self.http = http
        self.page: Page | None = None
        self.started_s = 0.0   # launch until the BiDi session was open

    @classmethod
    async def start(cls, url: str, profile: Path, prefs: dict[str, Any] | None = None,
                    timeout: float = 30.0, viewport: tuple[int, int] = (1280, 1100)) -> tuple[Browser, Page]:
        if FIREFOX is None:
            raise BidiError("firefox is not installed (Debian package firefox-esr)")
        write_profile(profile, {**PREFS, **(prefs or {})})
        port_file = profile / "WebDriverBiDiServer.json"
        port_file.unlink(missing_ok=True)
        log = open(profile / "firefox.log", "wb")
        launched = time.monotonic()
        # Its own process group: Firefox forks content, socket and utility processes; stop() ends
        # the whole group, whatever the parent did.
        proc = subprocess.Popen(
            [FIREFOX, "--headless", "--no-remote", "--remote-debugging-port=0", "--profile", str(profile),
             "about:blank"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1"})
        log.close()
        http = aiohttp.ClientSession()
        browser = cls(proc, http)
        try:
            deadline = launched + timeout
            port = None
            while port is None:
                if proc.poll() is not None:
                    raise BidiError(f"firefox exited with {proc.returncode}; see {profile / 'firefox.log'}")
                try:
                    port = json.loads(port_file.read_text())["ws_port"]
                except (OSError, ValueError, KeyError):
                    if time.monotonic() >= deadline:
                        raise BidiError(f"firefox wrote no {port_file.name} within {timeout:g} s") from None
                    await asyncio.sleep(0.1)
            ws = await http.ws_connect(f"ws://127.0.0.1:{port}/session", max_msg_size=64 << 20,
                                       timeout=aiohttp.ClientWSTimeout(ws_close=5))
            page = browser.page = Page(ws)
            remaining = lambda: max(1.0, deadline - time.monotonic())  # noqa: E731
            await page.call("session.new", timeout=remaining(), capabilities={})
            browser.started_s = time.monotonic() - launched
            await page.call("session.subscribe", events=["log.entryAdded"])
            tree = await page.call("browsingContext.getTree", maxDepth=0)
            page.context = tree["contexts"][0]["context"]
            await page.set_viewport(*viewport)
            await page.call("browsingContext.navigate", timeout=remaining(), context=page.context, url=url,
                            wait="complete")
            return browser, page
        except BaseException:
            await browser.stop()
            raise

    async def stop(self, grace: float = 10.0) -> None:
        """Ask Firefox to close (it ends its child processes), then make sure its group is gone."""
        if self.page is not None:
            if self.proc.poll() is None:
                try:
                    await self.page.call("browser.close", timeout=5.0)
                except (BidiError, asyncio.TimeoutError, aiohttp.ClientError, ConnectionError):
                    pass
            await self.page.close()
        await self.http.close()
        deadline = time.monotonic() + grace
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.terminate()
            deadline = time.monotonic() + 5
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=5)
