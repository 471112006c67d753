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
