"""One call from headless Chromium through the demo page to the gateway, measured.

Run inside a private network namespace holding only loopback (tests/e2e/test_browser_call.py
starts it under `unshare -n`): the gateway runs in this process, Chromium opens its demo page with
a fake microphone file (a 440 Hz tone, then a spoken sentence), and the page is driven over the
DevTools protocol: call, wait for `speaking` and `asrFinal`, press a key (RFC 4733), send a `tts`,
hang up, take a screenshot. The call is recorded by the gateway; the recording's caller channel
is what the gateway heard. Facts are printed as one JSON object on the last line; the test judges.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import wave
from pathlib import Path

import aiohttp
import numpy as np

from tests.support.cdp import Browser, Page
from transports.config import parse_config
from transports.gateway import start_gateway

SESSION = "browser-e2e"


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


def caller_channel(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        rate, channels = w.getframerate(), w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return data.reshape(-1, channels)[:, 0], rate


async def stats(page: Page) -> dict:
    await page.evaluate("updateStats()")
    return await page.evaluate("({...window.demo.stats})")


async def event_names(page: Page) -> list[str]:
    return await page.evaluate("window.demo.events.map(e => e.event)")


async def drive(page: Page, base: str, http: aiohttp.ClientSession, facts: dict, artifacts: Path) -> None:
    await page.until("document.readyState === 'complete' && typeof window.demo === 'object'", 15)
    await page.evaluate(f"document.getElementById('session').value = '{SESSION}'; "
                        "document.getElementById('record').checked = true; "
                        "document.getElementById('asr').checked = true; "
                        "document.getElementById('vad').value = 'silero'; true")
    await page.evaluate("document.getElementById('call').click(); true")
    started = time.monotonic()
    await page.until("window.demo.state === 'live'", 20)
    facts["connected_after_s"] = round(time.monotonic() - started, 3)
    facts["answer_codec"] = (await stats(page)).get("codec")

    # the caller's side: the tone and the sentence play from the fake microphone (looped)
    await page.until("window.demo.events.some(e => e.event === 'speaking')", 30)
    await page.until("window.demo.events.some(e => e.event === 'asrFinal')", 45)
    facts["asr_final"] = await page.evaluate(
        "window.demo.events.filter(e => e.event === 'asrFinal').map(e => e.text)")
    facts["transcript_shown"] = await page.evaluate("document.getElementById('transcript').textContent")

    # a key press from the page's keypad (RTCDTMFSender, RFC 4733)
    await page.evaluate("document.querySelector('#keypad button:nth-child(5)').click(); true")
    await page.until("window.demo.events.some(e => e.event === 'dtmf')", 10)
    facts["dtmf"] = await page.evaluate("window.demo.events.filter(e => e.event === 'dtmf').map(e => e.digit)")

    # the gateway's side: silence, then a tts typed into the page's box
    quiet_before = await stats(page)
    await asyncio.sleep(1.0)
    quiet_after = await stats(page)
    facts["energy_in_1s_of_silence"] = quiet_after["totalAudioEnergy"] - quiet_before["totalAudioEnergy"]
    await page.evaluate("document.getElementById('tts-text').value = 'The quick brown fox jumps over the lazy dog.';"
                        "document.getElementById('tts').click(); true")
    await page.until("window.demo.events.some(e => e.event === 'trackStart' && e.trackId === 'serverSideTrack')", 10)
    tts_start = await stats(page)
    levels = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        levels.append((await stats(page)).get("audioLevel", 0))
        if await page.evaluate("window.demo.events.some(e => e.event === 'trackEnd' && e.trackId === "
                               "'serverSideTrack')"):
            break
        await asyncio.sleep(0.1)
    tts_end = await stats(page)
    facts["tts_energy"] = tts_end["totalAudioEnergy"] - tts_start["totalAudioEnergy"]
    facts["tts_seconds"] = next((e["duration"] / 1000 for e in await page.evaluate("window.demo.events")
                                 if e["event"] == "trackEnd" and e["trackId"] == "serverSideTrack"), None)
    facts["tts_max_level"] = max(levels, default=0)
    facts["packets_received"] = tts_end.get("packetsReceived")
    facts["packets_sent"] = tts_end.get("packetsSent")

    # hang up from the page: the gateway ends the call, the page closes its connection
    await page.evaluate("document.getElementById('hangup').click(); true")
    await page.until("window.demo.state === 'idle' && document.getElementById('call').disabled === false", 10)
    facts["hangup"] = await page.evaluate("window.demo.events.find(e => e.event === 'hangup') || null")
    facts["status_after"] = await page.evaluate("document.getElementById('status').textContent")
    facts["events"] = await event_names(page)
    async with http.get(f"{base}/call/lists") as resp:
        facts["calls_after_hangup"] = (await resp.json())["calls"]
    shot = artifacts / "webrtc-demo-page.png"
    await page.screenshot(shot)
    facts["screenshot"] = str(shot)


async def main(args: argparse.Namespace) -> dict:
    work = Path(args.work)
    artifacts = Path(args.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    config = parse_config({
        "http_addr": "127.0.0.1:0", "sip_addr": "127.0.0.1", "udp_port": 0, "log_level": "warning",
        "dump_root": str(work / "dumps"), "media_root": str(work / "media"), "recorder_root": str(work / "rec"),
        "webrtc": {"host_addresses": ["127.0.0.1"]},
    })
    facts: dict = {"ok": False}
    gateway = await start_gateway(config)
    browser = page = None
    try:
        host, port = gateway.http_address
        base = f"http://{host}:{port}"
        async with aiohttp.ClientSession() as http:
            browser, page = await Browser.start(f"{base}/", work / "profile", Path(args.mic))
            try:
                await asyncio.wait_for(drive(page, base, http, facts, artifacts), args.deadline)
                facts["ok"] = True
            except Exception as exc:  # noqa: BLE001 - reported to the test with what was gathered
                facts["failure"] = f"{type(exc).__name__}: {exc}"
                try:
                    facts["events"] = await event_names(page)
                    await page.screenshot(artifacts / "webrtc-demo-page-failed.png")
                except Exception:  # noqa: BLE001
                    pass
            facts["page_console"] = page.console[-20:]
    finally:
        if page is not None:
            await page.close()
        if browser is not None:
            await browser.stop()
        await gateway.stop()
    recording = work / "rec" / f"{SESSION}.wav"
    if recording.exists():
        pcm, rate = caller_channel(recording)
        windows = loud_windows(pcm, rate)
        facts["recording_seconds"] = round(len(pcm) / rate, 2)
        facts["recording_windows"] = [(round(t, 1), round(f, 1), round(r)) for t, f, r in windows]
        tone = [w for w in windows if abs(w[1] - 440) < 10]
        facts["heard_440"] = {"windows": len(tone), "rms": round(max((w[2] for w in tone), default=0))}
    return facts


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", required=True)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--mic", required=True)
    parser.add_argument("--deadline", type=float, default=120.0)
    result = asyncio.run(main(parser.parse_args()))
    print(json.dumps(result))
    sys.exit(0)
