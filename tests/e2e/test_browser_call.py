"""Real browsers call the gateway: headless Chromium and headless Firefox ESR open the demo page
and place a WebRTC call, inside a private network namespace that holds only loopback, so neither
the browser nor the gateway can reach anything else, and a private PID namespace, so nothing the
browser forks outlives the run (`unshare --net --pid --fork`: when the namespace's first process
ends, the kernel kills the rest). tests/e2e/browser_call.py drives the page (Chromium over the
DevTools protocol, Firefox over WebDriver BiDi) and reports facts; these tests judge them. The
page's screenshot after the call is kept under tmp/artifacts/ (webrtc-demo-page-chromium.png,
webrtc-demo-page-firefox.png).

Both check: the page's layout (wide and phone-narrow), the call answered with Opus, the gateway
hearing the microphone's tone (FFT of its recording), a keypad digit (RFC 4733), a tts heard by
the browser (getStats audio level and energy) and silence before it, Mute/Unmute/Interrupt while a
tts plays, hangup ending both sides, and no script errors on the page. What differs: Chromium's
fake microphone plays a file (a 440 Hz tone, then a spoken sentence), so its test also checks
`speaking` and a recognised sentence. Firefox's fake microphone takes no file: it is a steady
1000 Hz sine, so its test checks the gateway hears exactly that tone and that Mute silences the
caller's side too (a gap in the recording), but nothing about speech or recognition."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.browser_call import LONG_TTS, QUIET, SPEAKING
from tests.support.audio import tone
from tests.support.bidi import FAKE_TONE_HZ

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tmp" / "artifacts"
SENTENCE = ROOT / "tests" / "fixtures" / "asr" / "sentence_a.wav"   # "please call me back tomorrow morning"
CHROMIUM_DEADLINE = 150.0
FIREFOX_DEADLINE = 60.0

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None,
                                reason="unshare/ip (util-linux, iproute2) are not installed")


def write_microphone(path: Path) -> None:
    """What Chromium's fake microphone plays, looped: 2 s of 440 Hz, then a spoken sentence."""
    rate = 16000
    with wave.open(str(SENTENCE)) as w:
        assert w.getframerate() == rate and w.getnchannels() == 1
        speech = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    silence = lambda s: np.zeros(int(s * rate), dtype=np.int16)  # noqa: E731
    pcm = np.concatenate([tone(440, 2.0, rate, 9000), silence(0.8), speech, silence(1.5)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


async def run_in_private_network(tmp_path: Path, browser: str, deadline: float, *extra: str) -> dict:
    script = 'ip link set lo up && exec "$0" -m tests.e2e.browser_call "$@"'
    proc = await asyncio.create_subprocess_exec(
        "unshare", "--net", "--pid", "--fork", "sh", "-c", script, sys.executable, "--browser", browser,
        "--work", str(tmp_path / "work"), "--artifacts", str(ARTIFACTS), "--deadline", str(deadline - 30), *extra,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), deadline)
    finally:
        # The driver stops the browser itself; killing the group ends the PID namespace's first
        # process, and with it whatever is left in the namespace.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc.returncode is None:
            await proc.wait()
    text = out.decode(errors="replace")
    (tmp_path / "driver.log").write_text(text)
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, f"driver failed ({proc.returncode}):\n{text[-3000:]}"
    return json.loads(lines[-1])


def assert_the_call(facts: dict) -> None:
    """What both browsers must show."""
    assert facts["ok"], (facts.get("failure"), facts.get("page_console"))
    assert facts["answer_codec"] == "audio/opus"
    # the page is legible: nothing wider than the window, no panel over another, wide or narrow
    for width in ("wide", "narrow"):
        shape = facts["layout"][width]
        assert shape["scrollWidth"] <= shape["clientWidth"] and not shape["overlap"], (width, shape)
    # the gateway heard the microphone's tone (FFT of the recording's caller channel)
    assert facts["heard_tone"]["windows"] >= 2 and facts["heard_tone"]["rms"] > 1000, facts["recording_windows"]
    # a key from the page's keypad (RTCDTMFSender) came back as a dtmf event
    assert facts["dtmf"] == ["5"]
    # the tts sent from the page was heard by the browser: audio energy while it played, none before
    assert facts["tts_seconds"] and facts["tts_seconds"] > 1.0
    assert facts["tts_energy"] > 0.05 and facts["tts_max_level"] > 0.05
    assert facts["energy_in_1s_of_silence"] < 0.001
    # Mute silenced what the browser heard, Unmute brought it back, Interrupt cut the tts
    assert facts["long_tts_level"] > SPEAKING
    assert facts["mute_button"] == ["Unmute", "true"] and facts["muted_level"] < QUIET
    assert facts["unmute_button"] == ["Mute", "false"] and facts["unmuted_level"] > SPEAKING
    assert facts["interruption"]["subtitle"] == LONG_TTS
    assert 0 < facts["interruption"]["current"] < facts["interruption"]["totalDuration"]
    assert facts["level_after_interrupt"] < QUIET
    assert facts["packets_received"] > 200 and facts["packets_sent"] > 200
    # hangup from the page ended both sides
    assert facts["hangup"]["reason"] == "hangup_command" and facts["hangup"]["initiator"] == "user"
    assert facts["events"][-1] == "hangup"
    assert facts["status_after"] == "Call ended: hangup_command"
    assert facts["page_released"] is True
    assert facts["calls_after_hangup"] == []
    # no script errors on the page (console errors, uncaught exceptions)
    assert facts["page_errors"] == []
    shot = Path(facts["screenshot"])
    assert shot.name == f"webrtc-demo-page-{facts['browser']}.png"
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium (Debian package chromium) is not installed")
@pytest.mark.timeout(CHROMIUM_DEADLINE + 30)
async def test_chromium_calls_the_gateway_from_the_demo_page(tmp_path):
    mic = tmp_path / "mic.wav"
    write_microphone(mic)
    facts = await run_in_private_network(tmp_path, "chromium", CHROMIUM_DEADLINE, "--mic", str(mic))
    assert_the_call(facts)
    assert facts["tone_hz"] == 440
    # speaking and a final recognition reached the page (and its transcript box)
    assert "speaking" in facts["events"]
    assert facts["asr_final"] and any(text.strip() for text in facts["asr_final"])
    assert facts["asr_final"][0] in facts["transcript_shown"]


@pytest.mark.skipif(shutil.which("firefox-esr") is None and shutil.which("firefox") is None,
                    reason="firefox (Debian package firefox-esr) is not installed")
@pytest.mark.timeout(FIREFOX_DEADLINE + 30)
async def test_firefox_calls_the_gateway_from_the_demo_page(tmp_path):
    facts = await run_in_private_network(tmp_path, "firefox", FIREFOX_DEADLINE)
    assert_the_call(facts)
    # Firefox's fake microphone is its sine tone; the recording holds it, not a neighbour
    assert facts["tone_hz"] == FAKE_TONE_HZ == 1000
    heard = [f for _, f, _ in facts["recording_windows"]]
    assert sum(abs(f - 1000) < 10 for f in heard) >= 0.8 * len(heard), facts["recording_windows"]
    assert facts["heard_tone"]["windows"] >= 4
    # the steady tone shows Mute held the caller's side too: a gap in the recording about as long
    assert 1.0 <= facts["heard_tone"]["longest_gap_s"] <= facts["muted_for_s"] + 1.0, facts["recording_windows"]
