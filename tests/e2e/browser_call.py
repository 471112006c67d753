"""One call from a headless browser through the demo page to the gateway, measured.

Run inside a private network namespace holding only loopback (tests/e2e/test_browser_call.py
starts it under `unshare --net --pid --fork`): the gateway runs in this process, the browser opens its demo page
and is driven through it: call, press a key (RFC 4733), send a `tts` and check the browser hears
it, mute and unmute while it plays, interrupt it, hang up, take a screenshot. The call is recorded
by the gateway; the recording's caller channel is what the gateway heard.

- `--browser chromium`: Chromium over the DevTools protocol (tests/support/cdp.py); its fake
  microphone plays `--mic` (a 440 Hz tone, then a spoken sentence), so `speaking` and `asrFinal`
  are awaited too.
- `--browser firefox`: Firefox ESR over WebDriver BiDi (tests/support/bidi.py); Firefox's fake
  microphone takes no file, it is a steady sine tone (bidi.FAKE_TONE_HZ): no speech, so no
  recognition to wait for; the steady tone shows the caller side of `mute` as a gap instead.

Facts are printed as one JSON object on the last line; the test judges.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import wave
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from tests.support import bidi, cdp
from transports.config import parse_config
from transports.gateway import start_gateway

SESSION = "browser-e2e"
VIEWPORT = (1280, 1100)
CHROMIUM_TONE_HZ = 440
LONG_TTS = ("This sentence is long on purpose, so that the page can mute it, unmute it and then "
            "interrupt it while the gateway is still speaking, one word after another, slowly.")


def loud_windows(pcm: np.ndarray, rate: int, seconds: float = 0.5) -> list[tuple[float, float, float]]:
    """(start s, dominant Hz, rms) of each window of `seconds` with any sound in it."""
    size = int(rate * seconds)
    out = []
    for start in range(0, len(pcm) - size + 1, size):
        window = pcm[start:start + size].astype(np.float64)
        rms = float(np.sqrt(np.mean(window ** 2)))
        if rms < 300:
            continue
        spectrum = np.abs(np.fft.rfft(window * np.hanning(size)))
        spectrum[0] = 0
        out.append((start / rate, float(np.argmax(spectrum) * rate / size), rms))
    return out


def longest_gap(windows: list[tuple[float, float, float]], hz: float, seconds: float = 0.5) -> float:
    """The longest stretch (s) without the tone between two windows that hold it."""
    starts = [t for t, f, _ in windows if abs(f - hz) < 10]
    return max((b - a - seconds for a, b in zip(starts, starts[1:])), default=0.0)


def caller_channel(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        rate, channels = w.getframerate(), w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return data.reshape(-1, channels)[:, 0], rate


async def stats(page: Any) -> dict:
    await page.evaluate("updateStats()")
    return await page.evaluate("({...window.demo.stats})")


# getStats audioLevel (0..1) of what the browser plays: the gateway's speech peaks at 0.3-0.8;
# the digital silence it sends muted decodes to a floor of ~0.0005 in both browsers.
SPEAKING = 0.05
QUIET = 0.005


async def level_until(page: Any, check, timeout: float) -> list[float]:
    """audioLevel samples of the page's stats until `check(level)` holds; TimeoutError if not."""
    levels: list[float] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        levels.append((await stats(page)).get("audioLevel", 0))
        if check(levels[-1]):
            return levels
        await asyncio.sleep(0.1)
    raise TimeoutError(f"audio level never reached the expected state within {timeout:g} s: {levels[-10:]}")


async def event_names(page: Any) -> list[str]:
    return await page.evaluate("window.demo.events.map(e => e.event)")


LAYOUT = """(() => {
  const box = (el) => { const r = el.getBoundingClientRect();
    return [Math.round(r.left), Math.round(r.top), Math.round(r.right), Math.round(r.bottom)]; };
  const panels = [...document.querySelectorAll('.panel')].map(box);
  const overlap = panels.some((a, i) => panels.some((b, j) => i < j &&
    a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]));
  return { scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth,
    panels, overlap, fontSize: getComputedStyle(document.body).fontSize };
})()"""


async def layout(page: Any) -> dict:
    return await page.evaluate(LAYOUT)


def has_event(condition: str) -> str:
    return f"window.demo.events.some(e => {condition})"


async def drive(page: Any, base: str, http: aiohttp.ClientSession, facts: dict, artifacts: Path,
                speech: bool, browser: str) -> None:
    await page.until("document.readyState === 'complete' && typeof window.demo === 'object'", 15)
    # legible at a desktop width and at a phone's: nothing wider than the window, panels apart
    facts["layout"] = {"wide": await layout(page)}
    await page.set_viewport(360, 800)
    await page.until("window.innerWidth === 360", 5)
    facts["layout"]["narrow"] = await layout(page)
    await page.set_viewport(*VIEWPORT)
    await page.until(f"window.innerWidth === {VIEWPORT[0]}", 5)
    await page.evaluate(f"document.getElementById('session').value = '{SESSION}'; "
                        "document.getElementById('record').checked = true; "
                        "document.getElementById('asr').checked = true; "
                        "document.getElementById('vad').value = 'silero'; true")
    await page.evaluate("document.getElementById('call').click(); true")
    started = time.monotonic()
    await page.until("window.demo.state === 'live'", 20)
    facts["connected_after_s"] = round(time.monotonic() - started, 3)
    facts["answer_codec"] = (await stats(page)).get("codec")

    if speech:
        # the caller's side: the tone and the sentence play from the fake microphone (looped)
        await page.until(has_event("e.event === 'speaking'"), 30)
        await page.until(has_event("e.event === 'asrFinal'"), 45)
        facts["asr_final"] = await page.evaluate(
            "window.demo.events.filter(e => e.event === 'asrFinal').map(e => e.text)")
        facts["transcript_shown"] = await page.evaluate("document.getElementById('transcript').textContent")

    # a key press from the page's keypad (RTCDTMFSender, RFC 4733)
    await page.evaluate("document.querySelector('#keypad button:nth-child(5)').click(); true")
    await page.until(has_event("e.event === 'dtmf'"), 10)
    facts["dtmf"] = await page.evaluate("window.demo.events.filter(e => e.event === 'dtmf').map(e => e.digit)")

    # the gateway's side: silence, then a tts typed into the page's box
    quiet_before = await stats(page)
    await asyncio.sleep(1.0)
    quiet_after = await stats(page)
    facts["energy_in_1s_of_silence"] = quiet_after["totalAudioEnergy"] - quiet_before["totalAudioEnergy"]
    facts["level_in_silence"] = quiet_after["audioLevel"]
    await page.evaluate("document.getElementById('tts-text').value = 'The quick brown fox jumps over the lazy dog.';"
                        "document.getElementById('tts').click(); true")
    await page.until(has_event("e.event === 'trackStart' && e.trackId === 'serverSideTrack'"), 10)
    tts_start = await stats(page)
    levels = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        levels.append((await stats(page)).get("audioLevel", 0))
        if await page.evaluate(has_event("e.event === 'trackEnd' && e.trackId === 'serverSideTrack'")):
            break
        await asyncio.sleep(0.1)
    tts_end = await stats(page)
    facts["tts_energy"] = tts_end["totalAudioEnergy"] - tts_start["totalAudioEnergy"]
    facts["tts_seconds"] = next((e["duration"] / 1000 for e in await page.evaluate("window.demo.events")
                                 if e["event"] == "trackEnd" and e["trackId"] == "serverSideTrack"), None)
    facts["tts_max_level"] = max(levels, default=0)

    # Mute, Unmute and Interrupt from the page while a long tts plays: the browser hears it, then
    # nothing while muted (both directions: the gateway hears nothing either), then it again, then
    # the interrupt cuts it (an `interruption` event and the item's trackEnd).
    await page.evaluate(f"document.getElementById('tts-text').value = {json.dumps(LONG_TTS)};"
                        "document.getElementById('tts').click(); true")
    await page.until("window.demo.events.filter(e => e.event === 'trackStart' && "
                     "e.trackId === 'serverSideTrack').length === 2", 10)
    facts["long_tts_level"] = max(await level_until(page, lambda v: v > SPEAKING, 10))
    await page.evaluate("document.getElementById('mute').click(); true")
    facts["mute_button"] = await page.evaluate(
        "[document.getElementById('mute').textContent, document.getElementById('mute').getAttribute('aria-pressed')]")
    muted_at = time.monotonic()
    facts["muted_level"] = (await level_until(page, lambda v: v < QUIET, 5))[-1]
    # held long enough that the recording shows it as a gap of several 0.5 s windows
    await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - muted_at)))
    facts["muted_for_s"] = round(time.monotonic() - muted_at, 2)
    await page.evaluate("document.getElementById('mute').click(); true")
    facts["unmute_button"] = await page.evaluate(
        "[document.getElementById('mute').textContent, document.getElementById('mute').getAttribute('aria-pressed')]")
    facts["unmuted_level"] = max(await level_until(page, lambda v: v > SPEAKING, 5))
    await page.evaluate("document.getElementById('interrupt').click(); true")
    await page.until(has_event("e.event === 'interruption'"), 5)
    await page.until("window.demo.events.filter(e => e.event === 'trackEnd' && "
                     "e.trackId === 'serverSideTrack').length === 2", 5)
    facts["interruption"] = await page.evaluate("window.demo.events.find(e => e.event === 'interruption')")
    facts["level_after_interrupt"] = (await level_until(page, lambda v: v < QUIET, 5))[-1]
    before_hangup = await stats(page)
    facts["packets_received"] = before_hangup.get("packetsReceived")
    facts["packets_sent"] = before_hangup.get("packetsSent")

    # hang up from the page: the gateway ends the call, the page closes its connection
    await page.evaluate("document.getElementById('hangup').click(); true")
    await page.until("window.demo.state === 'idle' && document.getElementById('call').disabled === false", 10)
    facts["hangup"] = await page.evaluate("window.demo.events.find(e => e.event === 'hangup') || null")
    facts["status_after"] = await page.evaluate("document.getElementById('status').textContent")
    facts["events"] = await event_names(page)
    facts["page_released"] = await page.evaluate("pc === null && ws === null && mic === null")
    async with http.get(f"{base}/call/lists") as resp:
        facts["calls_after_hangup"] = (await resp.json())["calls"]
    shot = artifacts / f"webrtc-demo-page-{browser}.png"
    await page.screenshot(shot)
    facts["screenshot"] = str(shot)


async def open_browser(args: argparse.Namespace, url: str, profile: Path) -> tuple[Any, Any]:
    if args.browser == "chromium":
        return await cdp.Browser.start(url, profile, Path(args.mic))
    return await bidi.Browser.start(url, profile)


async def main(args: argparse.Namespace) -> dict:
    work = Path(args.work)
    artifacts = Path(args.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    config = parse_config({
        "http_addr": "127.0.0.1:0", "sip_addr": "127.0.0.1", "udp_port": 0, "log_level": "warning",
        "dump_root": str(work / "dumps"), "media_root": str(work / "media"), "recorder_root": str(work / "rec"),
        "webrtc": {"host_addresses": ["127.0.0.1"]},
    })
    speech = args.browser == "chromium"
    tone_hz = CHROMIUM_TONE_HZ if speech else bidi.FAKE_TONE_HZ
    facts: dict = {"ok": False, "browser": args.browser, "tone_hz": tone_hz}
    gateway = await start_gateway(config)
    browser = page = None
    try:
        host, port = gateway.http_address
        base = f"http://{host}:{port}"
        async with aiohttp.ClientSession() as http:
            launched = time.monotonic()
            browser, page = await open_browser(args, f"{base}/", work / "profile")
            # launch until the page was loaded (Firefox: and until its BiDi session was open)
            facts["browser_ready_s"] = round(time.monotonic() - launched, 2)
            facts["browser_session_s"] = round(getattr(browser, "started_s", 0.0), 2) or None
            try:
                await asyncio.wait_for(drive(page, base, http, facts, artifacts, speech, args.browser),
                                       args.deadline)
                facts["ok"] = True
            except Exception as exc:  # noqa: BLE001 - reported to the test with what was gathered
                facts["failure"] = f"{type(exc).__name__}: {exc}"
                try:
                    facts["events"] = await event_names(page)
                    await page.screenshot(artifacts / f"webrtc-demo-page-{args.browser}-failed.png")
                except Exception:  # noqa: BLE001
                    pass
            facts["page_console"] = page.console[-20:]
            facts["page_errors"] = page.errors
    finally:
        if browser is not None:
            stopping = time.monotonic()
            await browser.stop()
            facts["browser_stop_s"] = round(time.monotonic() - stopping, 2)
        elif page is not None:
            await page.close()
        await gateway.stop()
    recording = work / "rec" / f"{SESSION}.wav"
    if recording.exists():
        pcm, rate = caller_channel(recording)
        windows = loud_windows(pcm, rate)
        facts["recording_seconds"] = round(len(pcm) / rate, 2)
        facts["recording_windows"] = [(round(t, 1), round(f, 1), round(r)) for t, f, r in windows]
        tone = [w for w in windows if abs(w[1] - tone_hz) < 10]
        facts["heard_tone"] = {"windows": len(tone), "rms": round(max((w[2] for w in tone), default=0)),
                               "longest_gap_s": round(longest_gap(windows, tone_hz), 2)}
    return facts


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--browser", choices=["chromium", "firefox"], required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--mic", help="the fake microphone's WAV file (Chromium only)")
    parser.add_argument("--deadline", type=float, default=120.0)
    result = asyncio.run(main(parser.parse_args()))
    print(json.dumps(result))
    sys.exit(0)
