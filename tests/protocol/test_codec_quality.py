"""Perceptual quality of every codec's round trip, and of the streaming resampler next to soxr.

MOS-LQO by PESQ (ITU-T P.862 narrow band, P.862.2 wide band) on the espeak-ng speech fixture.
Thresholds sit a little below the measured scores written beside them; the scores are
deterministic for a given libopus/G722/numpy, so a drop means the audio path changed.

The fixture is formant-synthesised speech: only -29 dB of its energy lies above 4 kHz (real speech
has several times more), so wide-band PESQ barely penalises the narrow-band codecs here and G.711
scores above G.722 in wide-band mode. Rank codecs across bands with real recordings, not this file.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
import soxr
from pesq import pesq

from protocol.codecs import (
    Decoder,
    Encoder,
    Resampler,
    alaw_decode,
    alaw_encode,
    codec_info,
    ulaw_decode,
    ulaw_encode,
)
from tests.support.audio import frames

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "audio"


def load(name: str) -> tuple[np.ndarray, int]:
    with wave.open(str(FIXTURES / name), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16), w.getframerate()


@pytest.fixture(scope="module")
def speech_16k() -> np.ndarray:
    pcm, rate = load("speech_16k.wav")
    assert rate == 16000 and len(pcm) > 5 * rate
    return pcm


@pytest.fixture(scope="module")
def speech_8k() -> np.ndarray:
    pcm, rate = load("speech_8k.wav")
    assert rate == 8000 and len(pcm) > 5 * rate
    return pcm


def lag_of(reference: np.ndarray, degraded: np.ndarray, max_lag: int = 800) -> int:
    """Delay of `degraded` behind `reference` in samples, from the peak of their cross-correlation."""
    n = min(len(reference), len(degraded))
    size = 1 << (2 * n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(degraded[:n].astype(np.float64), size)
                        * np.conj(np.fft.rfft(reference[:n].astype(np.float64), size)), size)
    return int(np.argmax(corr[:max_lag]))


def mos(rate: int, reference: np.ndarray, degraded: np.ndarray, mode: str) -> tuple[float, int]:
    """PESQ MOS-LQO after removing the path's delay, and that delay in samples."""
    lag = lag_of(reference, degraded)
    n = min(len(reference), len(degraded) - lag)
    score = pesq(rate, reference[:n].astype(np.float32), degraded[lag:lag + n].astype(np.float32), mode)
    return score, lag


def through(encoder: Encoder, decoder: Decoder, pcm: np.ndarray) -> np.ndarray:
    return np.concatenate([decoder.decode(encoder.encode(chunk)) for chunk in frames(pcm, 320)])


def test_pesq_scores_the_untouched_fixture_at_its_ceiling(speech_8k, speech_16k):
    # The scale's ceiling on this file: 4.549 NB at 8 kHz, 4.644 WB at 16 kHz.
    assert mos(8000, speech_8k, speech_8k, "nb")[0] > 4.5
    assert mos(16000, speech_16k, speech_16k, "wb")[0] > 4.6


@pytest.mark.parametrize("name,encode,decode,threshold", [
    ("pcmu", ulaw_encode, ulaw_decode, 4.2),   # measured 4.277 (G.711 is typically ~4.3 NB)
    ("pcma", alaw_encode, alaw_decode, 4.2),   # measured 4.257
])
def test_g711_alone_narrow_band(speech_8k, name, encode, decode, threshold):
    score, lag = mos(8000, speech_8k, decode(encode(speech_8k)), "nb")
    assert lag == 0
    assert score > threshold


@pytest.mark.parametrize("name,mode,threshold,max_delay_ms", [
    # 16 kHz media -> 8 kHz codec -> 16 kHz: measured 4.238 (pcmu) and 4.247 (pcma) NB with the
    # 24-tap resampler; 4.4 ms delay with the 48-tap one (two stages); in WB mode 4.060 and 4.084.
    ("pcmu", "nb", 4.15, 5.0),
    ("pcma", "nb", 4.15, 5.0),
    # G.722 at 64 kbit/s: measured 3.964 WB (4.114 NB), 1.4 ms delay (its QMF). The G722 package is
    # bit-exact with FFmpeg's adpcm_g722 on this file, so the score is the codec's, not a port's.
    ("g722", "wb", 3.85, 2.0),
    # Opus 32 kbit/s, complexity 6, wide band, through 16k -> 48k -> 16k: measured 4.504 WB, 8.4 ms
    # delay (libopus's 6.5 ms look-ahead plus the resamplers).
    ("opus", "wb", 4.4, 9.5),
])
def test_gateway_round_trip_of_each_codec(speech_16k, name, mode, threshold, max_delay_ms):
    info = codec_info(name)
    y = through(Encoder(info), Decoder(info), speech_16k)
    assert len(y) == len(speech_16k) // 320 * 320
    score, lag = mos(16000, speech_16k, y, mode)
    assert lag / 16 < max_delay_ms
    assert score > threshold


def test_opus_beats_g722_at_half_the_bitrate_in_wide_band(speech_16k):
    # Measured 4.504 against 3.964; a regression that sends opus hybrid/full band or drops its
    # bitrate would close that gap.
    scores = {name: mos(16000, speech_16k, through(Encoder(codec_info(name)), Decoder(codec_info(name)),
                                                    speech_16k), "wb")[0]
              for name in ("opus", "g722")}
    assert scores["opus"] > scores["g722"] + 0.3


# --- The streaming resampler next to soxr ------------------------------------------------------

class SoxrStream:
    """soxr.ResampleStream behind the Resampler's `process`, one per direction."""

    def __init__(self, in_rate: int, out_rate: int, quality: str) -> None:
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)

    def process(self, pcm: np.ndarray) -> np.ndarray:
        return self._stream.resample_chunk(pcm)


def make(kind: str, in_rate: int, out_rate: int):
    return Resampler(in_rate, out_rate) if kind == "ours" else SoxrStream(in_rate, out_rate, kind)


def narrow_round_trip(kind: str, pcm: np.ndarray) -> np.ndarray:
    down, up = make(kind, 16000, 8000), make(kind, 8000, 16000)
    return np.concatenate([up.process(down.process(chunk)) for chunk in frames(pcm, 320)])


def held_back_ms(kind: str, in_rate: int, out_rate: int, seconds: float = 1.0) -> float:
    """Most output, in ms, that a stream owes at any 20 ms frame boundary: latency it adds by batching."""
    stream = make(kind, in_rate, out_rate)
    step = in_rate // 50
    pcm = np.zeros(int(seconds * in_rate), dtype=np.int16)
    produced, worst = 0, 0
    for i, chunk in enumerate(frames(pcm, step), start=1):
        produced += len(stream.process(chunk))
        worst = max(worst, i * step * out_rate // in_rate - produced)
    return worst * 1000 / out_rate


TONES_HZ = (310, 730, 1270, 1830, 2390, 2950, 3310)


def in_band_sinad(kind: str, seconds: float = 2.0) -> tuple[float, dict[int, float]]:
    """Signal to noise-and-distortion of a seven-tone signal inside 300-3400 Hz after 16k -> 8k -> 16k.

    Each tone is fitted by least squares (so delay and the filter's gain at that frequency are not
    counted as noise); what is left is aliasing, imaging and rounding. The fitted gains come back
    too: they show the pass band's droop.
    """
    rate = 16000
    t = np.arange(int(seconds * rate)) / rate
    amplitude = 20000 / len(TONES_HZ)
    x = np.rint(sum(np.sin(2 * np.pi * f * t + k) for k, f in enumerate(TONES_HZ)) * amplitude)
    y = narrow_round_trip(kind, x.astype(np.int16)).astype(np.float64)
    edge = rate // 5
    tt = np.arange(len(y)) / rate
    basis = np.column_stack([fn(2 * np.pi * f * tt) for f in TONES_HZ for fn in (np.sin, np.cos)])[edge:-edge]
    coef, *_ = np.linalg.lstsq(basis, y[edge:-edge], rcond=None)
    fitted = basis @ coef
    sinad = 10 * np.log10(np.sum(fitted ** 2) / np.sum((y[edge:-edge] - fitted) ** 2))
    gains = {f: 20 * np.log10(np.hypot(coef[2 * i], coef[2 * i + 1]) / amplitude)
             for i, f in enumerate(TONES_HZ)}
    return float(sinad), gains


def alias_db(kind: str, freq: float) -> float:
    """Level, relative to the input tone, that a tone above 4 kHz leaves in the 8 kHz signal."""
    x = np.rint(np.sin(2 * np.pi * freq * np.arange(32000) / 16000) * 16000).astype(np.int16)
    stream = make(kind, 16000, 8000)
    y = np.concatenate([stream.process(chunk) for chunk in frames(x, 320)])[1600:].astype(np.float64)
    return float(20 * np.log10(max(np.sqrt(np.mean(y ** 2)), 1e-9) / (16000 / np.sqrt(2))))


@pytest.mark.parametrize("kind,nb_threshold", [
    ("ours", 4.5),   # measured 4.546 NB, 4.366 WB
    ("HQ", 4.5),     # soxr streaming: measured 4.548 NB, 4.352 WB
])
def test_narrow_band_round_trip_keeps_speech_intact(speech_16k, kind, nb_threshold):
    score, _ = mos(16000, speech_16k, narrow_round_trip(kind, speech_16k), "nb")
    assert score > nb_threshold


def test_soxr_quick_quality_is_not_fit_for_telephony(speech_16k):
    # QQ is the one soxr stream without batching, and it has no anti-alias filter: measured 3.760
    # NB here, in-band SINAD 15.8 dB, a 4.6 kHz tone folds back at 0 dB.
    score, _ = mos(16000, speech_16k, narrow_round_trip("QQ", speech_16k), "nb")
    assert score < 4.0
    assert in_band_sinad("QQ")[0] < 25
    assert alias_db("QQ", 4600) > -3


def test_our_fir_is_flat_in_band_and_rejects_aliasing():
    sinad, gains = in_band_sinad("ours")
    # Measured with 48 taps per phase: SINAD 79.1 dB (soxr HQ 77.3); round-trip gain 0.00 dB up to
    # 2950 Hz, -0.69 dB at 3310 Hz (soxr HQ 0.0 dB); a 4.6 kHz tone aliases at -65.9 dB and a
    # 4.2 kHz tone at -35.6 dB (soxr HQ -86.7 dB). With 24 taps it drooped 3.2 dB at 3310 Hz and
    # let a 4.2 kHz tone fold back at -15 dB.
    assert sinad > 75
    assert gains[2950] > -0.1
    assert gains[3310] > -1.0
    assert alias_db("ours", 4600) < -60
    assert alias_db("ours", 4200) < -30
    hq_sinad, hq_gains = in_band_sinad("HQ")
    assert hq_sinad > 75 and hq_gains[3310] > -0.1 and alias_db("HQ", 4600) < -80


@pytest.mark.parametrize("kind,in_rate,out_rate,low,high", [
    # Measured, 16k->8k / 8k->16k / 16k->48k / 48k->16k: ours 0 / 0 / 0 / 0 ms; soxr QQ 0.125 /
    # 0.25 / 0.1 / 0; LQ 61 / 61 / 20 / 20; MQ 115 / 115 / 38 / 38; HQ 114 / 114 / 37 / 37;
    # VHQ 110 / 110 / 76 / 76. Only QQ keeps pace with 20 ms frames, and QQ has no filter.
    ("ours", 16000, 8000, 0, 0),
    ("ours", 8000, 16000, 0, 0),
    ("ours", 16000, 48000, 0, 0),
    ("ours", 48000, 16000, 0, 0),
    ("QQ", 16000, 8000, 0, 1),
    ("QQ", 8000, 16000, 0, 1),
    ("LQ", 16000, 8000, 40, 80),
    ("MQ", 16000, 8000, 90, 140),
    ("HQ", 16000, 8000, 90, 140),
    ("HQ", 8000, 16000, 90, 140),
    ("HQ", 16000, 48000, 25, 50),
    ("VHQ", 16000, 8000, 90, 140),
])
def test_which_streams_batch_their_output(kind, in_rate, out_rate, low, high):
    assert low <= held_back_ms(kind, in_rate, out_rate) <= high
