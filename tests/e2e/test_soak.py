"""A short soak (scripts/soak.py): calls with VAD, a recording and TTS each, on the gateway process;
afterwards the process is back to its start figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# RSS after the calls and an idle second, against the start (both after a warm-up round): measured
# +1.1 to +1.5 MiB over five runs of this size (the allocator keeps what the run's peak touched).
RSS_MARGIN_MIB = 4.0


@pytest.mark.timeout(120)
def test_four_calls_with_vad_recorder_and_tts_leave_nothing_behind():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), "--calls", "4", "--seconds", "4",
                          "--idle", "1", "--warmup", "2"], capture_output=True, text=True, timeout=110)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"\n{result['start']} -> end {result['end']} -> after idle {result['after_idle']}")
    start, end, idle = result["start"], result["end"], result["after_idle"]
    # The run did what it says: every call spoke, listened, recorded and hung up normally.
    assert result["hangups_ok"] == 4 and result["error_events"] == 0
    assert result["speaking_events"] >= 4 and result["tts_track_ends"] >= 4
    assert result["recordings"] == 4 and result["recorded_s_min"] >= 3.5
    assert end["calls"] == 4 and end["fds"] > start["fds"] and end["tasks"] > start["tasks"]
    assert result["gateway_exit"] == 0 and result["log_problems"] == []
    # ... and let go of all of it.
    assert "unsettled" not in idle and idle["calls"] == 0
    assert idle["tasks"] == start["tasks"]
    assert idle["threads"] == start["threads"]
    assert idle["fds"] == start["fds"]
    assert idle["rss_mib"] - start["rss_mib"] < RSS_MARGIN_MIB, (start, idle)
