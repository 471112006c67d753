"""In-band DTMF detection on generated recordings and on synthetic edge cases; the de-duplicator."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from protocol.codecs import Decoder, Encoder, codec_info, ulaw_decode
from protocol.dtmf_detect import (
    AMPLITUDE_0DBM0,
    COL_HZ,
    KEYPAD,
    ROW_HZ,
    DtmfDeduplicator,
    DtmfDetector,
    DtmfDigit,
    DtmfLimits,
)
from protocol.errors import ProtocolError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "listening"
RATE = 16000
FRAME = 320
SPEECH = sorted(p.name for p in FIXTURES.glob("speech_*.wav"))


def read_wav(name: str) -> tuple[np.ndarray, int]:
    with wave.open(str(FIXTURES / name), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy(), w.getframerate()


def truth(name: str) -> list[dict]:
    return json.loads((FIXTURES / name).with_suffix(".json").read_text())["presses"]


def detect(pcm: np.ndarray, rate: int = RATE, frame_ms: float = 20, **kwargs) -> list[DtmfDigit]:
    det = DtmfDetector(rate, **kwargs)
    size = round(rate * frame_ms / 1000)
    found: list[DtmfDigit] = []
    for i in range(0, len(pcm), size):
        found += det.feed(pcm[i:i + size], round(i * 1000 / rate))
    return found + det.finish()


def key_tone(digit: str, ms: float, *, rate: int = RATE, low_dbm0: float = -9.0, high_dbm0: float = -7.0,
             low_dev: float = 0.0, high_dev: float = 0.0, harmonic_db: float | None = None,
             extra_hz: float | None = None, phase: float = 0.4) -> np.ndarray:
    """A key's two tones (optionally off frequency, with a second harmonic of the low tone or an
    extra tone at the low tone's level), as float samples."""
    r = next(i for i, row in enumerate(KEYPAD) if digit in row)
    low, high = ROW_HZ[r] * (1 + low_dev), COL_HZ[KEYPAD[r].index(digit)] * (1 + high_dev)
    t = np.arange(round(rate * ms / 1000)) / rate
    a_low = AMPLITUDE_0DBM0 * 10 ** (low_dbm0 / 20)
    x = a_low * np.sin(2 * np.pi * low * t + phase)
    x += AMPLITUDE_0DBM0 * 10 ** (high_dbm0 / 20) * np.sin(2 * np.pi * high * t + 2 * phase)
    if harmonic_db is not None:
        x += a_low * 10 ** (harmonic_db / 20) * np.sin(2 * np.pi * 2 * low * t)
    if extra_hz is not None:
        x += a_low * np.sin(2 * np.pi * extra_hz * t)
    return x


def pcm_of(*parts: np.ndarray) -> np.ndarray:
    return np.rint(np.concatenate(parts)).astype(np.int16)


def gap(ms: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(round(rate * ms / 1000))


def digits(found: list[DtmfDigit]) -> str:
    return "".join(d.digit for d in found)


# --- Recordings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["dtmf_clean_16k.wav", "dtmf_g711_16k.wav", "dtmf_g711_8k.wav",
                                  "dtmf_noisy_16k.wav", "dtmf_speech_16k.wav"])
def test_each_key_press_of_a_recording_is_reported_once_near_its_start(name):
    pcm, rate = read_wav(name)
    presses = truth(name)
    found = detect(pcm, rate)
    assert digits(found) == "159#*0" == "".join(p["digit"] for p in presses)
    for got, want in zip(found, presses):
        # A press is dated by the first 10 ms block wholly inside it.
        assert want["start_ms"] - 1 <= got.start_ms <= want["start_ms"] + 10, (got, want)
        assert got.end_ms is None


def test_reporting_at_the_end_gives_each_press_its_span():
    pcm, _ = read_wav("dtmf_noisy_16k.wav")
    found = detect(pcm, emit="end")
    assert digits(found) == "159#*0"
    for got, want in zip(found, truth("dtmf_noisy_16k.wav")):
        assert want["start_ms"] - 1 <= got.start_ms <= want["start_ms"] + 10
        assert want["end_ms"] - 10 <= got.end_ms <= want["end_ms"] + 1


def test_the_gateways_own_g711_path_keeps_every_key():
    # 16 kHz -> the gateway's PCMU encoder (resample to 8 kHz, mu-law) -> its decoder, frame by frame.
    pcm, _ = read_wav("dtmf_clean_16k.wav")
    encoder, decoder = Encoder(codec_info("pcmu")), Decoder(codec_info("pcmu"))
    wire = [encoder.encode(pcm[i:i + FRAME]) for i in range(0, len(pcm), FRAME)]
    assert digits(detect(np.concatenate([decoder.decode(p) for p in wire]))) == "159#*0"
    # And at 8 kHz, straight from the mu-law bytes as a telephony leg carries them.
    assert digits(detect(np.concatenate([ulaw_decode(p) for p in wire]), 8000)) == "159#*0"


def test_frame_size_does_not_change_what_is_found():
    pcm, _ = read_wav("dtmf_speech_16k.wav")
    reference = detect(pcm)
    for frame_ms in (7.3125, 10, 33, 60):
        assert detect(pcm, frame_ms=frame_ms) == reference


@pytest.mark.parametrize("name", SPEECH)
def test_speech_never_makes_a_key_press(name):
    pcm, _ = read_wav(name)
    assert detect(pcm) == []
    encoder, decoder = Encoder(codec_info("pcmu")), Decoder(codec_info("pcmu"))
    wire = [encoder.encode(pcm[i:i + FRAME]) for i in range(0, len(pcm) - FRAME + 1, FRAME)]
    assert detect(np.concatenate([decoder.decode(p) for p in wire])) == []
    assert detect(np.concatenate([ulaw_decode(p) for p in wire]), 8000) == []


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("noisy_*.wav")) + ["clean_speech_16k.wav"])
def test_noisy_speech_never_makes_a_key_press(name):
    pcm, _ = read_wav(name)
    assert detect(pcm) == []


def test_speech_fixtures_cover_twenty_seconds_of_several_voices():
    meta = json.loads((FIXTURES / "speech.json").read_text())
    assert meta["total_ms"] >= 20000
    assert len({f["voice"] for f in meta["files"]}) >= 4
    assert sorted(f["file"] for f in meta["files"]) == SPEECH


# --- Recognition limits (DtmfLimits defaults) --------------------------------------------------

FREQUENCIES = [("low", r, KEYPAD[i][0]) for i, r in enumerate(ROW_HZ)] + \
              [("high", c, KEYPAD[0][j]) for j, c in enumerate(COL_HZ)]


@pytest.mark.parametrize("group,hz,digit", FREQUENCIES)
def test_frequency_tolerance_accepts_1_5_percent_and_rejects_3_5_and_5_percent(group, hz, digit):
    def found(dev: float) -> str:
        tone = key_tone(digit, 100, **{f"{group}_dev": dev})
        return digits(detect(pcm_of(gap(50), tone, gap(50))))

    for dev in (-0.015, 0.015, -0.02, 0.02):
        assert found(dev) == digit, f"{hz} Hz {dev:+.1%} should be accepted"
    for dev in (-0.035, 0.035, -0.05, 0.05):
        assert found(dev) == "", f"{hz} Hz {dev:+.1%} should be rejected"


def nominal(digit: str) -> tuple[float, float]:
    r = next(i for i, row in enumerate(KEYPAD) if digit in row)
    return ROW_HZ[r], COL_HZ[KEYPAD[r].index(digit)]


@pytest.mark.parametrize("group,hz,digit", FREQUENCIES)
def test_a_tone_beyond_3_5_percent_is_never_taken_for_its_key_at_any_twist(group, hz, digit):
    # Offsets past +-50 Hz alias in the block-to-block phase (1633 - 61 Hz reads as +39 Hz); the
    # half-block estimate resolves them. A tone that lands near another key's frequency is that key.
    for dev in np.arange(0.035, 0.1501, 0.005):
        for sign in (1, -1):
            for twist in (-8, -6, -4, -2, 0, 2, 4):
                low_dbm0, high_dbm0 = (-6.0 - twist, -6.0) if twist >= 0 else (-6.0, -6.0 + twist)
                tone = key_tone(digit, 100, low_dbm0=low_dbm0, high_dbm0=high_dbm0, **{f"{group}_dev": sign * dev})
                found = digits(detect(pcm_of(gap(50), tone, gap(50))))
                case = f"{hz} Hz {sign * dev:+.1%}, twist {twist} dB: {found!r}"
                assert len(found) <= 1, case
                if found:
                    low, high = nominal(digit)
                    low, high = (low * (1 + sign * dev), high) if group == "low" else (low, high * (1 + sign * dev))
                    want_low, want_high = nominal(found)
                    assert abs(low / want_low - 1) <= 0.035 and abs(high / want_high - 1) <= 0.035, case


def test_a_tone_sitting_on_a_limit_is_one_press_not_several():
    # Estimates scatter around a limit block by block; a held digit is judged with widened limits.
    edges = [dict(low_dbm0=-6.0, high_dbm0=-14.0), dict(low_dbm0=-10.0, high_dbm0=-6.0),
             dict(low_dbm0=-30.0, high_dbm0=-30.0), dict(low_dev=0.025), dict(high_dev=-0.025)]
    for edge in edges:
        for phase in np.linspace(0, 3, 7):
            found = digits(detect(pcm_of(gap(30), key_tone("8", 400, phase=phase, **edge), gap(60))))
            assert found in ("", "8"), (edge, phase, found)


@pytest.mark.parametrize("digit", list("147*2580369#ABCD"))
def test_every_key_at_its_nominal_frequencies(digit):
    assert digits(detect(pcm_of(gap(30), key_tone(digit, 60), gap(30)))) == digit


def test_twist_limits_normal_8_db_reverse_4_db():
    def found(low: float, high: float) -> str:
        return digits(detect(pcm_of(gap(50), key_tone("5", 100, low_dbm0=low, high_dbm0=high), gap(50))))

    assert found(-6.0, -13.5) == "5"    # high group 7.5 dB below: normal twist within 8 dB
    assert found(-6.0, -14.5) == ""     # 8.5 dB below
    assert found(-9.5, -6.0) == "5"     # high group 3.5 dB above: reverse twist within 4 dB
    assert found(-10.5, -6.0) == ""     # 4.5 dB above


def test_minimum_level_is_minus_30_dbm0_per_tone():
    def found(level: float) -> str:
        return digits(detect(pcm_of(gap(50), key_tone("9", 100, low_dbm0=level, high_dbm0=level), gap(50))))

    assert found(-28.0) == "9"
    assert found(-32.0) == ""


def test_a_strong_second_harmonic_is_not_a_key():
    def found(harmonic_db: float | None) -> str:
        return digits(detect(pcm_of(gap(50), key_tone("1", 100, harmonic_db=harmonic_db), gap(50))))

    # 2 x 697 Hz = 1394 Hz sits 58 Hz from 1336 Hz: the tones' own leakage there is subtracted.
    assert found(None) == "1"
    assert found(-25.0) == "1"
    assert found(-6.0) == ""


def test_a_third_tone_breaks_the_energy_ratio():
    assert digits(detect(pcm_of(gap(50), key_tone("6", 100, extra_hz=500.0), gap(50)))) == ""
    assert digits(detect(pcm_of(gap(50), key_tone("6", 100), gap(50)))) == "6"


@pytest.mark.parametrize("rate", [8000, 16000])
def test_40_ms_tones_are_found_at_every_alignment_and_20_ms_tones_never(rate):
    for offset in np.arange(0, 10, 0.5):
        lead = gap(20 + offset, rate)
        assert digits(detect(pcm_of(lead, key_tone("0", 40, rate=rate), gap(60, rate)), rate)) == "0", offset
        assert digits(detect(pcm_of(lead, key_tone("0", 20, rate=rate), gap(60, rate)), rate)) == "", offset


def test_a_40_ms_pause_separates_presses_of_one_key_and_a_10_ms_dropout_does_not():
    for offset in np.arange(0, 10, 0.5):
        lead = gap(20 + offset)
        tone = key_tone("#", 60)
        assert digits(detect(pcm_of(lead, tone, gap(40), tone, gap(60)))) == "##", offset
        assert digits(detect(pcm_of(lead, tone, gap(10), tone, gap(60)))) == "#", offset


def test_a_different_key_without_a_pause_is_a_new_press():
    found = detect(pcm_of(gap(30), key_tone("4", 80), key_tone("8", 80), gap(60)), emit="end")
    assert digits(found) == "48"
    assert found[0].end_ms <= found[1].start_ms


def test_finish_reports_a_press_still_held_when_reporting_at_the_end():
    det = DtmfDetector(emit="end")
    pcm = pcm_of(gap(20), key_tone("7", 100))
    assert det.feed(pcm, 1000) == []
    assert det.finish() == [DtmfDigit("7", 1020, 1120)]
    assert det.finish() == []


def test_bad_input_is_refused():
    with pytest.raises(ProtocolError):
        DtmfDetector(11025)
    with pytest.raises(ProtocolError):
        DtmfDetector(emit="middle")
    with pytest.raises(ProtocolError):
        DtmfDetector().feed(np.zeros((2, 160), dtype=np.int16), 0)
    with pytest.raises(ProtocolError):
        DtmfLimits(frequency_tolerance=0.06)
    with pytest.raises(ProtocolError):
        DtmfLimits(min_duration_ms=20)


# --- De-duplication ----------------------------------------------------------------------------

def test_one_press_reported_by_three_sources_counts_once():
    dedup = DtmfDeduplicator(window_ms=500)
    assert dedup.offer("5", 1000, "rfc4733") is True
    assert dedup.offer("5", 1035, "inband") is False
    assert dedup.offer("5", 1400, "info") is False


def test_reports_of_one_source_are_never_merged():
    dedup = DtmfDeduplicator(window_ms=500)
    assert dedup.offer("1", 0, "inband") is True
    assert dedup.offer("1", 200, "inband") is True


def test_a_report_outside_the_window_is_a_new_press():
    dedup = DtmfDeduplicator(window_ms=300)
    assert dedup.offer("2", 0, "rfc4733") is True
    assert dedup.offer("2", 301, "inband") is True
    assert dedup.offer("2", 600, "info") is False   # joins the press at 301


def test_two_quick_presses_of_one_key_stay_two_whatever_the_report_order():
    orders = [
        [("inband", 0), ("rfc4733", 10), ("inband", 200), ("rfc4733", 210)],
        [("inband", 0), ("inband", 200), ("rfc4733", 10), ("rfc4733", 210)],
        [("rfc4733", 10), ("rfc4733", 210), ("inband", 40), ("inband", 240), ("info", 350), ("info", 450)],
    ]
    for reports in orders:
        dedup = DtmfDeduplicator(window_ms=500)
        assert sum(dedup.offer("1", at, source) for source, at in reports) == 2, reports


def test_different_digits_are_never_duplicates_and_case_does_not_matter():
    dedup = DtmfDeduplicator()
    assert dedup.offer("a", 0, "info") is True
    assert dedup.offer("A", 20, "inband") is False
    assert dedup.offer("B", 25, "rfc4733") is True
    assert dedup.offer("#", 30, "rfc4733") is True
    assert dedup.offer("*", 35, "inband") is True


def test_a_report_dated_before_the_first_one_still_matches():
    dedup = DtmfDeduplicator(window_ms=200)
    assert dedup.offer("9", 1000, "info") is True
    assert dedup.offer("9", 900, "rfc4733") is False


def test_old_presses_are_forgotten():
    dedup = DtmfDeduplicator(window_ms=100)
    for i in range(1000):
        assert dedup.offer("3", i * 1000, "inband") is True
    assert len(dedup._presses) <= 2


def test_the_deduplicator_refuses_what_is_not_a_digit():
    with pytest.raises(ProtocolError):
        DtmfDeduplicator().offer("E", 0, "inband")
    with pytest.raises(ProtocolError):
        DtmfDeduplicator().offer("12", 0, "inband")
    with pytest.raises(ProtocolError):
        DtmfDeduplicator(window_ms=-1)
