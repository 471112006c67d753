"""One live writer per recording path: claims, segment names, release when the call ends."""

from __future__ import annotations

import pytest

from transports.recording_paths import RecordingClaims, RecordingPathError


def test_a_path_is_held_by_its_call_until_released():
    claims = RecordingClaims()
    assert claims.claim("/r/a.wav", "s1") == "/r/a.wav"
    claims.claim("/r/a.wav", "s1")                         # the same call again: fine
    for other in ("/r/a.wav", "/r/a.part3.wav"):
        with pytest.raises(RecordingPathError, match="another call"):
            claims.claim(other, "s2")
    claims.claim("/r/b.wav", "s2")
    claims.release_session("s1")
    claims.claim("/r/a.wav", "s2")
    claims.release_session("s2")
    claims.release_session("never-seen")
    assert len(claims) == 0


HOLDER = """
import sys
from transports.recording_paths import RecordingClaims
claims = RecordingClaims(lock_dir=sys.argv[1])
claims.claim(sys.argv[2], "holder")
print("held", flush=True)
if sys.stdin.readline().strip() == "release":
    claims.release_session("holder")
    print("released", flush=True)
sys.stdin.readline()
"""


def holder(lock_dir, path):
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir), path], text=True,
                            cwd=Path(__file__).resolve().parents[2], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_claim_holds_across_processes_sharing_the_lock_directory(tmp_path):
    locks = tmp_path / ".claims"
    proc = holder(locks, "/r/a.wav")
    try:
        ours = RecordingClaims(lock_dir=str(locks))
        for name in ("/r/a.wav", "/r/a.part2.wav"):
            with pytest.raises(RecordingPathError, match="another call"):
                ours.claim(name, "s1")
        assert len(ours) == 0                              # a refused claim leaves nothing behind
        ours.claim("/r/b.wav", "s1")                       # other names are free
        proc.stdin.write("release\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "released"
        ours.claim("/r/a.wav", "s2")
        # now the other process is the one refused
        other = RecordingClaims(lock_dir=str(locks))
        with pytest.raises(RecordingPathError, match="another call"):
            other.claim("/r/a.part7.wav", "s3")
        ours.release_session("s1")
        ours.release_session("s2")
        assert list(locks.iterdir()) == []                 # released claims leave no files
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def test_a_claim_of_a_killed_process_is_free_at_once(tmp_path):
    locks = tmp_path / ".claims"
    proc = holder(locks, "/r/a.wav")
    ours = RecordingClaims(lock_dir=str(locks))
    with pytest.raises(RecordingPathError, match="another call"):
        ours.claim("/r/a.wav", "s1")
    proc.kill()
    proc.wait(timeout=10)
    # the kernel dropped its lock with the process; its lock file is left, and taken over
    assert len(list(locks.iterdir())) == 1
    ours.claim("/r/a.wav", "s1")
    ours.release_session("s1")
    assert list(locks.iterdir()) == []


def test_a_lock_directory_that_cannot_be_made_is_a_clear_refusal(tmp_path):
    (tmp_path / "file").write_text("")
    claims = RecordingClaims(lock_dir=str(tmp_path / "file" / ".claims"))
    with pytest.raises(RecordingPathError, match="cannot be taken"):
        claims.claim("/r/a.wav", "s1")
    assert len(claims) == 0
