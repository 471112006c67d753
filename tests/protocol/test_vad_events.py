"""The speaking/silence machine on hand-made window sequences: exact event windows and times."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.api import VADOption
from protocol.errors import ProtocolError
from protocol.vad_events import DECAY_LIMIT_MS, SilenceDetected, SpeechStarted, VadEventMachine

W = 32.0  # a silero window at 16 or 8 kHz
ON, OFF = 0.9, 0.1


def run(machine: VadEventMachine, probs, step: float = W, t0: float = 0.0):
    """Feed windows of `step` ms from `t0`; return (window index, event) pairs."""
    out = []
    for i, p in enumerate(probs):
        for event in machine.feed(t0 + i * step, step, p):
            out.append((i, event))
    return out


def pattern(text: str) -> list[float]:
    """'1' a voiced window, '0' an unvoiced one (spaces are ignored)."""
    return [ON if c == "1" else OFF for c in text if c in "01"]


def test_speech_confirmed_after_speech_padding_and_dated_at_onset():
    m = VadEventMachine(VADOption())
    events = run(m, pattern("0" * 10 + "1" * 20))
    # Onset at window 10 (320 ms); 256 ms >= 250 is first reached at the end of window 17.
    assert events == [(17, SpeechStarted(320))]
    assert m.speaking and m.speech_start == 320


def test_silence_confirmed_after_silence_padding_and_dated_at_speech_end():
    m = VadEventMachine(VADOption())
    events = run(m, pattern("0" * 10 + "1" * 30 + "0" * 20))
    # Speech ends at window 40 (1280 ms); 128 ms >= 100 at the end of window 43.
    assert events == [(17, SpeechStarted(320)), (43, SilenceDetected(1280, 128, 320))]
    assert not m.speaking and m.speech_start is None


def test_paddings_follow_the_option():
    m = VadEventMachine(VADOption(speech_padding=100, silence_padding=300))
    events = run(m, pattern("1" * 10 + "0" * 16), step=20.0)
    assert events == [(4, SpeechStarted(0)), (24, SilenceDetected(200, 300, 0))]


def test_zero_paddings_decide_on_the_first_window():
    m = VadEventMachine(VADOption(speech_padding=0, silence_padding=0))
    events = run(m, pattern("0110"))
    assert events == [(1, SpeechStarted(32)), (3, SilenceDetected(96, 32, 32))]


def test_burst_shorter_than_speech_padding_is_not_speech():
    m = VadEventMachine(VADOption())
    assert run(m, pattern("000" + "1" * 7 + "0" * 30)) == []  # 224 ms < 250


def test_gap_shorter_than_silence_padding_does_not_end_speech():
    m = VadEventMachine(VADOption())
    events = run(m, pattern("1" * 20 + "000" + "1" * 20))  # 96 ms < 100
    assert events == [(7, SpeechStarted(0))]


def test_gap_as_long_as_silence_padding_ends_speech():
    m = VadEventMachine(VADOption())
    events = run(m, pattern("1" * 20 + "0000" + "1" * 20))
    assert events == [
        (7, SpeechStarted(0)),
        (23, SilenceDetected(640, 128, 0)),
        (31, SpeechStarted(768)),
    ]


def test_ratio_lets_a_candidate_through_its_own_gaps():
    # Two voiced windows in three: 2/3 >= 0.5, so the gaps do not restart the candidate.
    m = VadEventMachine(VADOption())
    events = run(m, pattern("000" + "110" * 6))
    assert events == [(10, SpeechStarted(96))]


def test_a_stricter_ratio_rejects_the_same_gappy_audio():
    m = VadEventMachine(VADOption(ratio=0.8))
    assert run(m, pattern("000" + "110" * 12)) == []


def test_candidate_is_re_anchored_when_its_share_falls_below_ratio():
    # The blip at window 0 is followed by two unvoiced windows (1/3 < 0.5): the candidate drops
    # it and begins again at window 3.
    m = VadEventMachine(VADOption())
    events = run(m, pattern("100" + "1" * 10))
    assert events == [(10, SpeechStarted(96))]


def test_with_ratio_zero_an_unvoiced_run_as_long_as_silence_padding_still_ends_a_candidate():
    m = VadEventMachine(VADOption(ratio=0.0))
    events = run(m, pattern("1" + "0000" + "1" * 10))
    assert events == [(12, SpeechStarted(160))]
    m = VadEventMachine(VADOption(ratio=0.0))
    events = run(m, pattern("1" + "000" + "1" * 10))  # 96 ms: the candidate survives
    assert events == [(7, SpeechStarted(0))]


def test_silence_candidate_votes_too():
    # One voiced window inside the trailing silence: 3 of 4 unvoiced is enough at ratio 0.5 and the
    # silence is dated from its first unvoiced window; at ratio 0.9 it is not.
    probs = pattern("1" * 10 + "0100" + "0" * 10)
    events = run(VadEventMachine(VADOption()), probs)
    assert events[-1] == (13, SilenceDetected(320, 128, 0))
    events = run(VadEventMachine(VADOption(ratio=0.9)), probs)
    assert events[-1] == (15, SilenceDetected(384, 96 + 32, 0))


def test_voice_threshold_decides_what_is_voiced():
    probs = [0.6] * 12
    assert run(VadEventMachine(VADOption(voice_threshold=0.5)), probs) == [(7, SpeechStarted(0))]
    assert run(VadEventMachine(VADOption(voice_threshold=0.6)), probs) == []  # score > threshold


def test_falling_probability_dates_the_end_of_speech_back():
    m = VadEventMachine(VADOption())
    probs = [1.0] * 20 + [0.9, 0.7, 0.3, 0.1, 0.1, 0.1, 0.1]
    events = run(m, probs)
    # First unvoiced window: 22 (704 ms); the decay began at window 20 (640 ms).
    assert events[-1] == (25, SilenceDetected(640, 832 - 640, 0))


def test_drift_smaller_than_fall_step_is_not_decay():
    m = VadEventMachine(VADOption())
    probs = [0.999, 0.995, 0.991, 0.987, 0.983] * 4 + [0.3, 0.1, 0.1, 0.1]
    events = run(m, probs)
    assert events[-1] == (23, SilenceDetected(640, 128, 0))


def test_decay_is_dated_back_at_most_decay_limit():
    m = VadEventMachine(VADOption())
    probs = [1.0] * 20 + [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.3] + [0.1] * 4
    events = run(m, probs)
    first_unvoiced = 26 * W
    assert events[-1][1].start_time == round(first_unvoiced - DECAY_LIMIT_MS)


def test_hangover_of_a_yes_no_engine_is_taken_off_the_silence_start():
    m = VadEventMachine(VADOption(), hangover_ms=100)
    flags = [True] * 30 + [False] * 10
    events = run(m, flags, step=20.0)
    # Engine says unvoiced from 600 ms: the speech ended 100 ms earlier.
    assert events == [(12, SpeechStarted(0)), (34, SilenceDetected(500, 200, 0))]


def test_silence_is_never_dated_before_the_speech_it_ends():
    m = VadEventMachine(VADOption(speech_padding=20), hangover_ms=500)
    events = run(m, [False] * 5 + [True] * 3 + [False] * 6, step=20.0)
    assert events == [(5, SpeechStarted(100)), (12, SilenceDetected(100, 160, 100))]


def test_booleans_ignore_the_probability_threshold():
    m = VadEventMachine(VADOption(voice_threshold=1.0))
    assert run(m, [True] * 13, step=20.0) == [(12, SpeechStarted(0))]


def test_silence_timeout_repeats_while_nobody_speaks():
    m = VadEventMachine(VADOption(silence_timeout=1000))
    events = run(m, [OFF] * 100, step=20.0)
    assert events == [
        (49, SilenceDetected(0, 1000, None)),
        (99, SilenceDetected(0, 2000, None)),
    ]


def test_silence_timeout_counts_from_the_end_of_speech_and_stops_during_speech():
    m = VadEventMachine(VADOption(silence_timeout=500))
    events = run(m, pattern("0" * 30 + "1" * 40 + "0" * 40), step=20.0)
    # Silent from 0, speech 600..1400 ms, silence from 1400 ms: a timeout at 500, the regular
    # event at 1500, the next timeout 500 ms after the silence began; none during the speech.
    assert events == [
        (24, SilenceDetected(0, 500, None)),
        (42, SpeechStarted(600)),
        (74, SilenceDetected(1400, 100, 600)),
        (94, SilenceDetected(1400, 500, None)),
    ]


def test_silence_timeout_waits_for_a_pending_candidate_and_is_not_reset_by_a_blip():
    m = VadEventMachine(VADOption(silence_timeout=1000))
    # A 160 ms blip spans the 1000 ms mark; it is dropped once 100 ms of silence follow it.
    probs = pattern("0" * 46 + "1" * 8 + "0" * 20)
    events = run(m, probs, step=20.0)
    assert events == [(58, SilenceDetected(0, 1180, None))]
    # The next timeout is still on the 1000 ms grid from the silence start.
    events = run(m, pattern("0" * 50), step=20.0, t0=74 * 20.0)
    assert events == [(25, SilenceDetected(0, 2000, None))]


def test_silence_timeout_zero_is_off():
    m = VadEventMachine(VADOption(silence_timeout=0))
    assert run(m, [OFF] * 200, step=20.0) == []


def test_time_never_runs_backwards():
    m = VadEventMachine(VADOption(speech_padding=0))
    m.feed(0, 32, OFF)
    assert m.feed(10, 32, ON) == [SpeechStarted(32)]


@pytest.mark.parametrize(
    ("option", "text"),
    [
        (VADOption(ratio=1.5), "vad.ratio must be between 0 and 1, got 1.5"),
        (VADOption(voice_threshold=-0.1), "vad.voiceThreshold must be between 0 and 1, got -0.1"),
    ],
)
def test_bad_options_are_protocol_errors(option, text):
    with pytest.raises(ProtocolError) as info:
        VadEventMachine(option)
    assert info.value.message == text


def test_bad_windows_are_protocol_errors():
    m = VadEventMachine(VADOption())
    with pytest.raises(ProtocolError, match="positive duration"):
        m.feed(0, 0, 0.5)
    with pytest.raises(ProtocolError, match="between 0 and 1"):
        m.feed(0, 32, 1.5)
    with pytest.raises(ProtocolError, match="finite start"):
        m.feed(float("nan"), 32, 0.5)


@settings(max_examples=300, deadline=None)
@given(
    probs=st.lists(st.floats(0.0, 1.0), max_size=300),
    speech_padding=st.integers(0, 400),
    silence_padding=st.integers(0, 400),
    ratio=st.floats(0.0, 1.0),
    threshold=st.floats(0.0, 1.0),
    timeout=st.one_of(st.none(), st.integers(1, 2000)),
    hangover=st.sampled_from([0.0, 60.0, 140.0]),
    step=st.sampled_from([10.0, 16.0, 20.0, 32.0]),
)
def test_invariants_on_arbitrary_probabilities(
    probs, speech_padding, silence_padding, ratio, threshold, timeout, hangover, step
):
    option = VADOption(
        speech_padding=speech_padding,
        silence_padding=silence_padding,
        ratio=ratio,
        voice_threshold=threshold,
        silence_timeout=timeout,
    )
    m = VadEventMachine(option, hangover_ms=hangover)
    speaking = False
    speech_start = None
    last_silence = 0
    for i, p in enumerate(probs):
        end = (i + 1) * step
        for event in m.feed(i * step, step, p):
            if isinstance(event, SpeechStarted):
                assert not speaking
                assert event.start_time >= last_silence
                assert end - event.start_time >= speech_padding - 0.5
                speaking, speech_start = True, event.start_time
            elif event.speech_start is None:  # a silenceTimeout event
                assert not speaking and timeout is not None
                assert event.duration >= timeout - 0.5
                assert event.start_time == last_silence
            else:
                assert speaking and event.speech_start == speech_start
                assert speech_start <= event.start_time <= end
                assert event.duration >= silence_padding
                assert event.start_time + event.duration == round(end)
                speaking, last_silence = False, event.start_time
        assert m.speaking == speaking
