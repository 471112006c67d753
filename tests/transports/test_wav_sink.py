"""WAV sink (valid after every write, even when the process is killed) and recording path rules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from transports.recording_paths import RecordingPathError, resolve_recording, safe_session_id
from transports.wav_sink import HEADER_SIZE, WavSink, open_recording, segment_path

ROOT = Path(__file__).resolve().parents[2]


def ramp(n: int, start: int) -> np.ndarray:
    return (np.arange(start, start + n) % 30000).astype(np.int16)


def read_wav(path: str | Path) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        params = w.getparams()
        data = np.frombuffer(w.readframes(params.nframes), dtype="<i2")
    return params, data.reshape(-1, params.nchannels)


# --- the sink -------------------------------------------------------------------------------------

def test_header_is_valid_after_each_write_while_open(tmp_path):
    path = tmp_path / "call.wav"
    sink = WavSink(str(path), 16000)
    params, data = read_wav(path)
    assert (params.nchannels, params.sampwidth, params.framerate, params.nframes) == (2, 2, 16000, 0)
    written = 0
    for i, n in enumerate((320, 3200, 1, 777)):
        left, right = ramp(n, written), -ramp(n, written)
        sink.write(left, right)
        written += n
        params, data = read_wav(path)  # the sink is still open
        assert params.nframes == written
        assert np.array_equal(data[-n:, 0], left) and np.array_equal(data[-n:, 1], right)
        assert os.path.getsize(path) == HEADER_SIZE + 4 * written == sink.bytes_written
    assert sink.frames_written == written
    sink.close()
    sink.close()  # idempotent
    assert sink.closed
    assert read_wav(path)[0].nframes == written


def test_write_checks_its_input(tmp_path):
    sink = WavSink(str(tmp_path / "a.wav"), 8000)
    with pytest.raises(ValueError, match="channel lengths differ"):
        sink.write(np.zeros(3, np.int16), np.zeros(4, np.int16))
    sink.write(np.zeros(0, np.int16), np.zeros(0, np.int16))
    assert sink.frames_written == 0
    sink.close()
    with pytest.raises(ValueError, match="closed"):
        sink.write(np.zeros(1, np.int16), np.zeros(1, np.int16))
    with pytest.raises(ValueError):
        WavSink(str(tmp_path / "b.wav"), 8000, channels=3)
    with pytest.raises(ValueError):
        WavSink(str(tmp_path / "c.wav"), 0)


def test_mono_sink_mixes_both_sides_with_saturation(tmp_path):
    path = tmp_path / "mono.wav"
    with WavSink(str(path), 16000, channels=1) as sink:
        sink.write(np.array([1000, 30000, -30000], np.int16), np.array([-200, 10000, -10000], np.int16))
    params, data = read_wav(path)
    assert params.nchannels == 1
    assert data[:, 0].tolist() == [800, 32767, -32768]


def test_size_limit_of_the_format_raises_instead_of_wrapping(tmp_path):
    sink = WavSink(str(tmp_path / "big.wav"), 16000)
    sink._data_bytes = 0xFFFFFFFF - 36 - 2  # as if ~18 h had been written already
    with pytest.raises(OverflowError, match="4 GiB"):
        sink.write(np.zeros(1, np.int16), np.zeros(1, np.int16))
    sink.close()


def test_sink_does_not_write_through_a_symlink(tmp_path):
    target = tmp_path / "elsewhere.wav"
    target.write_bytes(b"precious")
    (tmp_path / "call.wav").symlink_to(target)
    with pytest.raises(OSError):
        WavSink(str(tmp_path / "call.wav"), 16000)
    assert target.read_bytes() == b"precious"


_WRITER = """
import sys, time
import numpy as np
from transports.wav_sink import WavSink
sink = WavSink(sys.argv[1], 16000)
for i in range(2000):
    n = 3200
    block = ((np.arange(n) + i * n) % 30000).astype(np.int16)
    sink.write(block, -block)
    print(i + 1, flush=True)
    time.sleep(0.002)
"""


def test_file_of_a_killed_process_is_readable(tmp_path):
    path = tmp_path / "killed.wav"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        done = 0
        while done < 5:
            line = proc.stdout.readline()
            assert line, "writer ended before five writes"
            done = int(line)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    params, data = read_wav(path)
    # Killed mid-stream: at least the writes it reported, in whole chunks, exactly as written.
    assert params.nframes >= 5 * 3200 and params.nframes % 3200 == 0
    expected = (np.arange(params.nframes) % 30000).astype(np.int16)
    assert np.array_equal(data[:, 0], expected)
    assert np.array_equal(data[:, 1], -expected)


def test_segments_sit_beside_the_first_file(tmp_path):
    assert segment_path("/r/call-1.wav", 0) == "/r/call-1.wav"
    assert segment_path("/r/call-1.wav", 1) == "/r/call-1.part1.wav"
    assert segment_path("/r/call-1.wav", 12) == "/r/call-1.part12.wav"
    assert segment_path("/r/noext", 2) == "/r/noext.part2.wav"
    with pytest.raises(ValueError):
        segment_path("/r/a.wav", -1)
    base = tmp_path / "deep" / "er" / "call.wav"
    first = open_recording(str(base), 8000, 0)
    second = open_recording(str(base), 8000, 1)
    first.write(np.ones(10, np.int16), np.ones(10, np.int16))
    second.write(np.ones(20, np.int16), np.ones(20, np.int16))
    first.close()
    second.close()
    assert first.path == str(base) and second.path == str(tmp_path / "deep" / "er" / "call.part1.wav")
    assert read_wav(first.path)[0][:4] == (2, 2, 8000, 10)
    assert read_wav(second.path)[0][:4] == (2, 2, 8000, 20)


# --- recording paths ---------------------------------------------------------------------------

def test_id_is_substituted_and_relative_paths_land_under_the_root(tmp_path):
    root = tmp_path / "rec"
    real_root = os.path.realpath(root)
    assert resolve_recording("calls/{id}.wav", "abc-123", str(root)) == f"{real_root}/calls/abc-123.wav"
    assert resolve_recording("{id}", "abc", str(root)) == f"{real_root}/abc.wav"
    assert resolve_recording("x/{id}-{id}", "s", str(root)) == f"{real_root}/x/s-s.wav"
    assert resolve_recording("loud.WAV", "s", str(root)) == f"{real_root}/loud.WAV"
    assert resolve_recording("take.mp3", "s", str(root)) == f"{real_root}/take.mp3.wav"
    assert resolve_recording("./a/../b/c.wav", "s", str(root)) == f"{real_root}/b/c.wav"


def test_absolute_paths_only_under_the_root(tmp_path):
    root = tmp_path / "rec"
    real_root = os.path.realpath(root)
    assert resolve_recording(f"{root}/in/{{id}}.wav", "s1", str(root)) == f"{real_root}/in/s1.wav"
    with pytest.raises(RecordingPathError) as err:
        resolve_recording(f"{tmp_path}/other/x.wav", "s1", str(root))
    assert str(tmp_path / "other" / "x.wav") in str(err.value) and real_root in str(err.value)
    with pytest.raises(RecordingPathError):
        resolve_recording("/etc/passwd", "s1", str(root))
    with pytest.raises(RecordingPathError):  # a sibling whose name merely starts like the root
        resolve_recording(f"{root}2/x.wav", "s1", str(root))


def test_dot_dot_escape_is_refused(tmp_path):
    root = tmp_path / "rec"
    for bad in ("../escape.wav", "a/../../escape", "../rec2/x.wav", "..", "calls/", ".", "", "a\x00b"):
        with pytest.raises(RecordingPathError, match="recorderFile"):
            resolve_recording(bad, "s", str(root))
    assert isinstance(RecordingPathError("x"), ValueError)


def test_session_id_cannot_add_path_components(tmp_path):
    root = tmp_path / "rec"
    real_root = os.path.realpath(root)
    assert resolve_recording("{id}", "../../etc/passwd", str(root)) == f"{real_root}/______etc_passwd.wav"
    assert resolve_recording("calls/{id}", "..", str(root)) == f"{real_root}/calls/__.wav"
    assert safe_session_id("") == "_"
    assert safe_session_id(".") == "_"
    assert safe_session_id("a/b\\c\x00d") == "a_b_c_d"
    assert "/" not in safe_session_id("/..//..") and ".." not in safe_session_id("...")


def test_symlink_escape_is_refused(tmp_path):
    root = tmp_path / "rec"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "file.wav").symlink_to(outside / "x.wav")
    with pytest.raises(RecordingPathError, match="outside the recorder root"):
        resolve_recording("link/{id}.wav", "s", str(root))
    with pytest.raises(RecordingPathError):
        resolve_recording("file.wav", "s", str(root))
    # A link that stays inside the root is followed, and the real path is what is returned.
    (root / "inside").mkdir()
    (root / "alias").symlink_to(root / "inside", target_is_directory=True)
    assert resolve_recording("alias/{id}", "s", str(root)) == os.path.realpath(root / "inside" / "s.wav")


def test_root_reached_through_a_symlink(tmp_path):
    real = tmp_path / "real-root"
    real.mkdir()
    (tmp_path / "root-link").symlink_to(real, target_is_directory=True)
    assert resolve_recording("{id}", "s", str(tmp_path / "root-link")) == os.path.realpath(real / "s.wav")
    assert resolve_recording(f"{tmp_path}/root-link/a.wav", "s", str(tmp_path / "root-link")) == (
        os.path.realpath(real / "a.wav")
    )
