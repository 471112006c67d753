#!/usr/bin/env python3
"""Measure codec cost per 20 ms frame, and the streaming resampler against soxr.

    .venv/bin/python scripts/bench_codecs.py --frames 1000 [--repeats 3] [--sweep]

Codecs: ``encode_us``/``decode_us`` are CPU time (this process) per 20 ms frame of 16 kHz media
through the gateway's own `Encoder`/`Decoder`, resampling included, best of ``--repeats`` passes
over the speech fixture; ``kbps`` is what the encoder put on the wire for that speech;
``delay_ms`` and PESQ (NB and WB) are of 16 kHz media -> codec -> 16 kHz on the whole fixture.
Opus is also split into its parts (libopus at 48 kHz, the two resampling stages), and libopus fed
16 kHz directly (which would drop the resampler from the encoding side) is timed and scored.

Resamplers: ours (`protocol.codecs.Resampler`, 24 taps per phase), the same with 48 taps per
phase (what a longer filter would buy), and soxr 1.1.0's `ResampleStream` at each quality. For
each: ``us`` per 20 ms frame per direction; ``held_ms``, the most output the stream owes at a
frame boundary (latency it adds by batching, on top of its filter delay); ``delay_ms`` of
16k -> 8k -> 16k; PESQ (NB and WB) of that round trip on the speech fixture; ``sinad_db`` of a
seven-tone signal in 300-3400 Hz (aliasing, imaging and rounding; delay and gain fitted away);
``gain_db`` of the round trip at 2950 and 3310 Hz; ``alias_db``, what a 4.2 or 4.6 kHz tone
leaves in the 8 kHz signal.

``--sweep`` adds Opus complexity 0..10 at the gateway's settings: µs per frame and PESQ-WB.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import wave
from pathlib import Path
from typing import Callable

import numpy as np
import soxr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol.codecs import Decoder, Encoder, Resampler, codec_info  # noqa: E402
from protocol.opus import OpusDecoder, OpusEncoder, bandwidth_for  # noqa: E402

try:
    from pesq import pesq
except ImportError:  # the cost figures need no PESQ; the quality columns then read null
    pesq = None

RATE = 16000
FRAME = RATE // 50
FIXTURE = ROOT / "tests" / "fixtures" / "audio" / "speech_16k.wav"
CODEC_NAMES = ("pcm", "pcmu", "pcma", "g722", "opus")
SOXR_QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")
DIRECTIONS = ((16000, 8000), (8000, 16000), (16000, 48000), (48000, 16000))
TONES_HZ = (310, 730, 1270, 1830, 2390, 2950, 3310)


def load_speech() -> np.ndarray:
    with wave.open(str(FIXTURE), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def media_frames(speech: np.ndarray, count: int, rate: int = RATE) -> list[np.ndarray]:
    """`count` consecutive 20 ms frames of the fixture at `rate`, looping it as needed."""
    pcm = speech if rate == RATE else Resampler(RATE, rate).process(speech)
    step = rate // 50
    looped = np.tile(pcm, count * step // len(pcm) + 1)
    return [looped[i * step:(i + 1) * step] for i in range(count)]


def best_us(run: Callable[[], int], repeats: int) -> float:
    """CPU µs per item of the fastest pass; `run` does one pass and returns its item count."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        count = run()
        best = min(best, (time.process_time() - start) / count * 1e6)
    return round(best, 1)


def mos(reference: np.ndarray, degraded: np.ndarray, mode: str) -> tuple[float | None, int]:
    n = min(len(reference), len(degraded))
    size = 1 << (2 * n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(degraded[:n].astype(np.float64), size)
                        * np.conj(np.fft.rfft(reference[:n].astype(np.float64), size)), size)
    lag = int(np.argmax(corr[:800]))
    if pesq is None:
        return None, lag
    n = min(len(reference), len(degraded) - lag)
    score = pesq(RATE, reference[:n].astype(np.float32), degraded[lag:lag + n].astype(np.float32), mode)
    return round(float(score), 3), lag


# --- codecs -----------------------------------------------------------------------------------

def bench_codec(name: str, frames: list[np.ndarray], repeats: int) -> dict[str, float]:
    info = codec_info(name)
    encoder = Encoder(info)
    packets = [encoder.encode(f) for f in frames]

    def encode() -> int:
        enc = Encoder(info)
        for f in frames:
            enc.encode(f)
        return len(frames)

    def decode() -> int:
        dec = Decoder(info)
        for p in packets:
            dec.decode(p)
        return len(packets)

    return {
        "encode_us": best_us(encode, repeats),
        "decode_us": best_us(decode, repeats),
        "kbps": round(sum(map(len, packets)) * 8 / (len(packets) * 0.02) / 1000, 1),
    }


def bench_opus_parts(speech: np.ndarray, count: int, repeats: int) -> dict[str, float | None]:
    frames_48k = media_frames(speech, count, 48000)
    frames_16k = media_frames(speech, count)
    gateway = bandwidth_for(RATE)
    encoder = OpusEncoder(bandwidth_hz=gateway)
    packets = [encoder.encode(f) for f in frames_48k]

    def timed(make: Callable[[], Callable[[np.ndarray], object]], items: list) -> float:
        def one_pass() -> int:
            step = make()
            for item in items:
                step(item)
            return len(items)
        return best_us(one_pass, repeats)

    # The same speech with libopus fed 16 kHz directly: no resampler on the encoding side.
    direct, dec, down = OpusEncoder(RATE), OpusDecoder(), Resampler(48000, RATE)
    whole = [speech[i:i + FRAME] for i in range(0, len(speech) - FRAME + 1, FRAME)]
    y = np.concatenate([down.process(dec.decode(direct.encode(f))) for f in whole])
    return {
        "libopus_encode_48k_us": timed(lambda: OpusEncoder(bandwidth_hz=gateway).encode, frames_48k),
        "libopus_encode_16k_direct_us": timed(lambda: OpusEncoder(RATE).encode, frames_16k),
        "libopus_decode_48k_us": timed(lambda: OpusDecoder().decode, packets),
        "resample_16k_48k_us": timed(lambda: Resampler(RATE, 48000).process, frames_16k),
        "resample_48k_16k_us": timed(lambda: Resampler(48000, RATE).process, frames_48k),
        "pesq_wb_16k_direct": mos(speech, y, "wb")[0],
    }


def sweep_opus(speech: np.ndarray, count: int, repeats: int) -> list[dict[str, float | None]]:
    frames_48k = media_frames(speech, count, 48000)
    whole = [speech[i:i + FRAME] for i in range(0, len(speech) - FRAME + 1, FRAME)]
    rows = []
    for complexity in range(11):
        def make() -> OpusEncoder:
            return OpusEncoder(complexity=complexity, bandwidth_hz=bandwidth_for(RATE))

        def encode() -> int:
            enc = make()
            for f in frames_48k:
                enc.encode(f)
            return len(frames_48k)

        enc, dec = make(), OpusDecoder()
        up, down = Resampler(RATE, 48000), Resampler(48000, RATE)
        packets = [enc.encode(up.process(f)) for f in whole]
        y = np.concatenate([down.process(dec.decode(p)) for p in packets])
        rows.append({
            "complexity": complexity,
            "encode_us": best_us(encode, repeats),
            "kbps": round(sum(map(len, packets)) * 8 / (len(packets) * 0.02) / 1000, 1),
            "pesq_wb": mos(speech, y, "wb")[0],
        })
    return rows


# --- resamplers -------------------------------------------------------------------------------

class Taps48(Resampler):
    TAPS = 48


class SoxrStream:
    def __init__(self, in_rate: int, out_rate: int, quality: str) -> None:
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)

    def process(self, pcm: np.ndarray) -> np.ndarray:
        return self._stream.resample_chunk(pcm)


def factory(kind: str) -> Callable[[int, int], object]:
    if kind == "ours":
        return Resampler
    if kind == "ours_taps48":
        return Taps48
    quality = kind.removeprefix("soxr_")
    return lambda in_rate, out_rate: SoxrStream(in_rate, out_rate, quality)


def chunks(pcm: np.ndarray, size: int) -> list[np.ndarray]:
    return [pcm[i:i + size] for i in range(0, len(pcm) - size + 1, size)]


def round_trip(make: Callable[[int, int], object], pcm: np.ndarray) -> np.ndarray:
    down, up = make(RATE, 8000), make(8000, RATE)
    return np.concatenate([up.process(down.process(c)) for c in chunks(pcm, FRAME)])


def held_ms(make: Callable[[int, int], object], in_rate: int, out_rate: int) -> float:
    stream, step = make(in_rate, out_rate), in_rate // 50
    produced, worst = 0, 0
    for i in range(1, 51):
        produced += len(stream.process(np.zeros(step, dtype=np.int16)))
        worst = max(worst, i * step * out_rate // in_rate - produced)
    return round(worst * 1000 / out_rate, 3)


def sinad_and_gains(make: Callable[[int, int], object]) -> tuple[float, dict[str, float]]:
    t = np.arange(2 * RATE) / RATE
    amplitude = 20000 / len(TONES_HZ)
    x = np.rint(sum(np.sin(2 * np.pi * f * t + k) for k, f in enumerate(TONES_HZ)) * amplitude)
    y = round_trip(make, x.astype(np.int16)).astype(np.float64)
    edge = RATE // 5
    tt = np.arange(len(y)) / RATE
    basis = np.column_stack([fn(2 * np.pi * f * tt) for f in TONES_HZ for fn in (np.sin, np.cos)])[edge:-edge]
    coef, *_ = np.linalg.lstsq(basis, y[edge:-edge], rcond=None)
    fitted = basis @ coef
    sinad = 10 * np.log10(np.sum(fitted ** 2) / np.sum((y[edge:-edge] - fitted) ** 2))
    gains = {str(f): round(float(20 * np.log10(np.hypot(coef[2 * i], coef[2 * i + 1]) / amplitude)), 2)
             for i, f in enumerate(TONES_HZ) if f in (2950, 3310)}
    return round(float(sinad), 1), gains


def alias_db(make: Callable[[int, int], object], freq: float) -> float:
    x = np.rint(np.sin(2 * np.pi * freq * np.arange(2 * RATE) / RATE) * 16000).astype(np.int16)
    stream = make(RATE, 8000)
    y = np.concatenate([stream.process(c) for c in chunks(x, FRAME)])[1600:].astype(np.float64)
    return round(float(20 * np.log10(max(np.sqrt(np.mean(y ** 2)), 1e-9) / (16000 / np.sqrt(2)))), 1)


def bench_resampler(kind: str, speech: np.ndarray, count: int, repeats: int) -> dict[str, object]:
    make = factory(kind)
    us, held = {}, {}
    for in_rate, out_rate in DIRECTIONS:
        frames = media_frames(speech, count, in_rate)

        def one_pass() -> int:
            stream = make(in_rate, out_rate)
            for f in frames:
                stream.process(f)
            return len(frames)

        key = f"{in_rate}>{out_rate}"
        us[key] = best_us(one_pass, repeats)
        held[key] = held_ms(make, in_rate, out_rate)
    y = round_trip(make, speech)
    nb, lag = mos(speech, y, "nb")
    wb, _ = mos(speech, y, "wb")
    sinad, gains = sinad_and_gains(make)
    return {
        "us": us, "held_ms": held, "delay_ms": round(lag * 1000 / RATE, 2),
        "pesq_nb": nb, "pesq_wb": wb, "sinad_db": sinad, "gain_db": gains,
        "alias_db": {"4200": alias_db(make, 4200), "4600": alias_db(make, 4600)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=500, help="20 ms frames per timed pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best one counts")
    parser.add_argument("--sweep", action="store_true", help="also sweep Opus complexity 0..10")
    args = parser.parse_args()
    if args.frames < 1 or args.repeats < 1:
        parser.error("--frames and --repeats must be at least 1")

    speech = load_speech()
    frames = media_frames(speech, args.frames)
    results: dict[str, object] = {
        "frames": args.frames, "repeats": args.repeats, "python": platform.python_version(),
        "pesq": pesq is not None,
    }
    codecs = {name: bench_codec(name, frames, args.repeats) for name in CODEC_NAMES}
    results["codecs"] = codecs
    for name in CODEC_NAMES:
        info = codec_info(name)
        encoder, decoder = Encoder(info), Decoder(info)
        whole = [speech[i:i + FRAME] for i in range(0, len(speech) - FRAME + 1, FRAME)]
        y = np.concatenate([decoder.decode(encoder.encode(f)) for f in whole])
        codecs[name]["pesq_nb"], lag = mos(speech, y, "nb")
        codecs[name]["pesq_wb"] = mos(speech, y, "wb")[0]
        codecs[name]["delay_ms"] = round(lag * 1000 / RATE, 2)
    for name, row in codecs.items():
        print(f"{name:6s} encode {row['encode_us']:7.1f} µs  decode {row['decode_us']:7.1f} µs  "
              f"{row['kbps']:5.1f} kbit/s  delay {row['delay_ms']:4.2f} ms  "
              f"PESQ nb {row['pesq_nb']} wb {row['pesq_wb']}")
    print("(per 20 ms frame of 16 kHz media, resampling included; PESQ of 16 kHz media -> codec -> 16 kHz)")
    parts = bench_opus_parts(speech, args.frames, args.repeats)
    results["opus_parts"] = parts
    print("opus parts  " + "  ".join(f"{k} {v}" for k, v in parts.items()))

    resamplers = {}
    for kind in ("ours", "ours_taps48", *(f"soxr_{q}" for q in SOXR_QUALITIES)):
        row = resamplers[kind] = bench_resampler(kind, speech, args.frames, args.repeats)
        print(f"{kind:12s} µs {row['us']}  held ms {row['held_ms']}  delay {row['delay_ms']} ms  "
              f"PESQ nb {row['pesq_nb']} wb {row['pesq_wb']}  SINAD {row['sinad_db']} dB  "
              f"gain {row['gain_db']}  alias {row['alias_db']}")
    results["resamplers"] = resamplers

    if args.sweep:
        rows = sweep_opus(speech, args.frames, args.repeats)
        results["opus_complexity"] = rows
        for row in rows:
            print(f"opus complexity {row['complexity']:2d}: encode {row['encode_us']:6.1f} µs  "
                  f"{row['kbps']} kbit/s  PESQ-WB {row['pesq_wb']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
