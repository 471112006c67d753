"""A real browser calls the gateway: headless Chromium opens the demo page and places a WebRTC call,
inside a private network namespace that holds only loopback (`unshare -n`), so neither the browser
nor the gateway can reach anything else. tests/e2e/browser_call.py drives it and reports facts;
this test judges them. The page's screenshot after the call is kept under tmp/artifacts/."""

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

from tests.support.audio import tone

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tmp" / "artifacts"
SENTENCE = ROOT / "tests" / "fixtures" / "asr" / "sentence_a.wav"   # "please call me back tomorrow morning"
DEADLINE = 150.0

pytestmark = [
    pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium (Debian package chromium) is not installed"),
    pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None,
                       reason="unshare/ip (util-linux, iproute2) are not installed"),
    pytest.mark.timeout(DEADLINE + 30),
]


def write_microphone(path: Path) -> None:
    """What the browser's fake microphone plays, looped: 2 s of 440 Hz, then a spoken sentence."""
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


async def run_in_private_network(tmp_path: Path) -> dict:
    mic = tmp_path / "mic.wav"
    write_microphone(mic)
    script = ('ip link set lo up && exec "$0" -m tests.e2e.browser_call --work "$1" --artifacts "$2" '
              '--mic "$3" --deadline "$4"')
    proc = await asyncio.create_subprocess_exec(
        "unshare", "-n", "sh", "-c", script, sys.executable, str(tmp_path / "work"), str(ARTIFACTS), str(mic),
        str(DEADLINE - 30), cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), DEADLINE)
    finally:
        # The driver stops Chromium itself; whatever of its process group is left goes too.
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


async def test_chromium_calls_the_gateway_from_the_demo_page(tmp_path):
    facts = await run_in_private_network(tmp_path)
    assert facts["ok"], facts.get("failure")
    assert facts["answer_codec"] == "audio/opus"
    # the gateway heard the microphone's 440 Hz (FFT of the recording's caller channel)
    assert facts["heard_440"]["windows"] >= 2 and facts["heard_440"]["rms"] > 1000, facts["recording_windows"]
    # speaking and a final recognition reached the page (and its transcript box)
    assert "speaking" in facts["events"]
    assert facts["asr_final"] and any(text.strip() for text in facts["asr_final"])
    assert facts["asr_final"][0] in facts["transcript_shown"]
    # a key from the page's keypad (RTCDTMFSender) came back as a dtmf event
    assert facts["dtmf"] == ["5"]
    # the tts sent from the page was heard by the browser: audio energy while it played, none before
    assert facts["tts_seconds"] and facts["tts_seconds"] > 1.0
    assert facts["tts_energy"] > 0.05 and facts["tts_max_level"] > 0.05
    assert facts["energy_in_1s_of_silence"] < 0.001
    assert facts["packets_received"] > 200 and facts["packets_sent"] > 200
    # hangup from the page ended both sides
    assert facts["hangup"]["reason"] == "hangup_command" and facts["hangup"]["initiator"] == "user"
    assert facts["events"][-1] == "hangup"
    assert facts["status_after"] == "Call ended: hangup_command"
    assert facts["calls_after_hangup"] == []
    shot = Path(facts["screenshot"])
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
