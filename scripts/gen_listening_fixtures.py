#!/usr/bin/env python3
"""Make the audio fixtures for the in-band DTMF detector and the noise suppressor, with their truth.

    .venv/bin/python scripts/gen_listening_fixtures.py [--out tests/fixtures/listening]

DTMF: the key sequence of KEYS, each tone and gap of a known length, the two frequencies at the
levels a telephone sends (Q.23: high group 2 dB above the low group), written as
  dtmf_clean_16k.wav   the tones as generated;
  dtmf_g711_8k.wav     the same, resampled to 8 kHz and coded to G.711 mu-law by sox, decoded to
                       16-bit PCM (what a telephony leg carries);
  dtmf_g711_16k.wav    that mu-law signal resampled back to 16 kHz by sox;
  dtmf_noisy_16k.wav   the clean tones plus white noise at DTMF_SNR_DB (tone power over the tone
                       segments against the noise power);
  dtmf_speech_16k.wav  the same keys in groups with espeak-ng speech between them.
Each has a .json beside it with the key presses (digit, start_ms, end_ms).

Speech without keys: speech_*.wav, espeak-ng sentences in several voices and speeds (digits
spoken as words among them), for the "no false key press" tests; speech.json lists them.

Noise suppression: clean_speech_16k.wav (a sentence after LEAD_MS of silence) and, for each noise
kind (white, brown, babble of several espeak-ng voices) and each SNR in DENOISE_SNR_DB,
noisy_<kind>_<snr>db_16k.wav = clean + noise scaled so that the clean file's power over the noise's
power is that SNR. denoise.json records the layout.

Everything random has a fixed seed; espeak-ng (1.51) and sox make the speech and the G.711 path.
Needs the Debian packages espeak-ng, sox and libsox-fmt-all.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from fixture_audio import ms, read_wav, sox, speak, write_json, write_wav

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000

ROW_HZ = (697.0, 770.0, 852.0, 941.0)
COL_HZ = (1209.0, 1336.0, 1477.0, 1633.0)
KEYPAD = ("123A", "456B", "789C", "*0#D")

KEYS = "159#*0"
TONE_MS = (80, 100, 120, 90, 110, 85)   # each within 80..120 ms
GAP_MS = (60, 100, 80, 70, 90)          # each within 60..100 ms
LEAD_MS = 300
TAIL_MS = 300
RAMP_MS = 2                             # raised-cosine on/off ramps: no clicks, as a real sender
# 0 dBm0 is the sine 3.17 dB below the full-scale one (G.711); senders put the high group higher.
AMPLITUDE_0DBM0 = 32768.0 * 10 ** (-3.17 / 20)
LOW_GROUP_DBM0 = -9.0
HIGH_GROUP_DBM0 = -7.0
DTMF_SNR_DB = 15.0
SEED = 20240917

# (file stem, espeak-ng voice, words per minute, text); about 20 s in all.
SPEECH: list[tuple[str, str, int, str]] = [
    ("speech_us_m", "en-us", 160,
     "Thank you for calling. Please say or enter your account number, followed by the pound key."),
    ("speech_us_f", "en-us+f3", 175,
     "My number is five five five, one two three, four six seven nine. Call me back at eight."),
    ("speech_gb_m", "en-gb+m3", 140,
     "Press one for sales, two for support, or stay on the line to speak to an operator."),
    ("speech_gb_f", "en-gb+f4", 190,
     "The meeting moved to nine thirty on Thursday; bring the figures for the second quarter."),
    ("speech_us_child", "en-us+f5", 150,
     "Hello? Hello! Can you hear me? I am calling about the delivery that never arrived."),
]
SPEECH_RMS = 3000.0      # about -21 dBFS: a typical speech level on the media plane

DENOISE_TEXT = "Please hold the line while I look up your order and check the delivery date."
DENOISE_VOICE = "en-us"
DENOISE_WPM = 160
DENOISE_SNR_DB = (5, 10)
BABBLE: list[tuple[str, str]] = [
    ("en-us+m1", "We should meet again next week to go over the budget and the plan."),
    ("en-gb+f2", "The train was late again this morning, so I missed the first talk."),
    ("en-us+m4", "Could you send me the report before lunch, if it is not too much trouble?"),
    ("en-gb+f3", "I think the weather will turn later today, bring an umbrella with you."),
    ("en-us+m2", "They opened a new restaurant down the street, the food is really good."),
    ("en-gb+m5", "Remember to water the plants and lock the back door when you leave."),
]


def to_int16(x: np.ndarray) -> np.ndarray:
    if np.max(np.abs(x)) > 32767:
        raise SystemExit("a fixture would clip: lower its level")
    return np.rint(x).astype(np.int16)


def at_rms(x: np.ndarray, target: float) -> np.ndarray:
    x = x.astype(np.float64)  # int16 speech would overflow when squared
    return x * (target / np.sqrt(np.mean(x ** 2)))


def key_frequencies(digit: str) -> tuple[float, float]:
    for r, row in enumerate(KEYPAD):
        if digit in row:
            return ROW_HZ[r], COL_HZ[row.index(digit)]
    raise ValueError(digit)


def dtmf_tone(digit: str, ms: int, rng: np.random.Generator) -> np.ndarray:
    low, high = key_frequencies(digit)
    n = RATE * ms // 1000
    t = np.arange(n) / RATE
    a_low = AMPLITUDE_0DBM0 * 10 ** (LOW_GROUP_DBM0 / 20)
    a_high = AMPLITUDE_0DBM0 * 10 ** (HIGH_GROUP_DBM0 / 20)
    phases = rng.uniform(0, 2 * np.pi, 2)
    x = a_low * np.sin(2 * np.pi * low * t + phases[0]) + a_high * np.sin(2 * np.pi * high * t + phases[1])
    ramp = RATE * RAMP_MS // 1000
    edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    x[:ramp] *= edge
    x[n - ramp:] *= edge[::-1]
    return x


def silence(ms: int) -> np.ndarray:
    return np.zeros(RATE * ms // 1000)


def lay_out(parts: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, list[dict[str, object]]]:
    """Concatenate (digit or "", samples) parts; the presses are where the digit parts lie."""
    presses: list[dict[str, object]] = []
    pos = 0
    for digit, x in parts:
        if digit:
            low, high = key_frequencies(digit)
            presses.append({
                "digit": digit,
                "start_ms": ms(pos, RATE),
                "end_ms": ms(pos + len(x), RATE),
                "low_hz": low,
                "high_hz": high,
            })
        pos += len(x)
    return np.concatenate([x for _, x in parts]), presses


def dtmf_sequence(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    parts: list[tuple[str, np.ndarray]] = [("", silence(LEAD_MS))]
    for i, digit in enumerate(KEYS):
        parts.append((digit, dtmf_tone(digit, TONE_MS[i], rng)))
        parts.append(("", silence(GAP_MS[i] if i < len(GAP_MS) else TAIL_MS)))
    return parts


def tone_power(x: np.ndarray, presses: list[dict[str, object]]) -> float:
    spans = [x[round(float(p["start_ms"]) * RATE / 1000):round(float(p["end_ms"]) * RATE / 1000)] for p in presses]
    return float(np.mean(np.concatenate(spans) ** 2))


def describe_dtmf(name: str, rate: int, samples: int, presses: list[dict[str, object]], **extra: object) -> dict:
    return {
        "file": name,
        "samplerate": rate,
        "duration_ms": ms(samples, rate),
        "generator": "scripts/gen_listening_fixtures.py",
        "digits": "".join(str(p["digit"]) for p in presses),
        "low_group_dbm0": LOW_GROUP_DBM0,
        "high_group_dbm0": HIGH_GROUP_DBM0,
        "presses": presses,
        **extra,
    }


def make_dtmf(out: Path, workdir: Path, rng: np.random.Generator) -> None:
    clean, presses = lay_out(dtmf_sequence(rng))
    clean16 = to_int16(clean)
    files: list[tuple[str, np.ndarray, int, dict[str, object]]] = [("dtmf_clean_16k.wav", clean16, RATE, {})]

    write_wav(workdir / "clean.wav", clean16, RATE)
    ulaw = workdir / "ulaw.wav"
    sox(str(workdir / "clean.wav"), "-r", "8000", "-e", "mu-law", "-b", "8", str(ulaw))
    sox(str(ulaw), "-e", "signed-integer", "-b", "16", str(workdir / "g711_8k.wav"))
    sox(str(ulaw), "-r", str(RATE), "-e", "signed-integer", "-b", "16", str(workdir / "g711_16k.wav"))
    for name, path in (("dtmf_g711_8k.wav", "g711_8k.wav"), ("dtmf_g711_16k.wav", "g711_16k.wav")):
        pcm, rate = read_wav(workdir / path)
        files.append((name, pcm, rate, {"path": "16 kHz -> sox 8 kHz mu-law -> 16-bit PCM" +
                                        (" -> sox 16 kHz" if rate == RATE else "")}))

    noise = rng.normal(0.0, 1.0, len(clean))
    noise *= np.sqrt(tone_power(clean, presses) / 10 ** (DTMF_SNR_DB / 10))
    files.append(("dtmf_noisy_16k.wav", to_int16(clean + noise), RATE,
                  {"noise": "white", "snr_db": DTMF_SNR_DB, "snr_reference": "tone power over the tone segments"}))

    # Speech between groups of keys; the same tones (lengths, gaps, levels) as the clean file.
    tones = [p for p in dtmf_sequence(np.random.default_rng(SEED)) if p[0]]
    talk = [speak(text, workdir, voice=voice, wpm=wpm, rate=RATE) for _, voice, wpm, text in SPEECH[:4]]
    talk = [at_rms(t, SPEECH_RMS) for t in talk]
    parts: list[tuple[str, np.ndarray]] = [("", silence(LEAD_MS)), ("", talk[0]), ("", silence(120))]
    for g in range(3):
        first, second = tones[2 * g], tones[2 * g + 1]
        parts += [first, ("", silence(GAP_MS[2 * g])), second, ("", silence(150)), ("", talk[g + 1][:RATE * 2]),
                  ("", silence(120))]
    parts.append(("", silence(TAIL_MS)))
    mixed, mixed_presses = lay_out(parts)
    files.append(("dtmf_speech_16k.wav", to_int16(mixed), RATE,
                  {"speech": [f"{voice} {wpm} wpm" for _, voice, wpm, _ in SPEECH[:4]],
                   "speech_rms": SPEECH_RMS}))

    for name, pcm, rate, extra in files:
        write_wav(out / name, pcm, rate)
        press_list = mixed_presses if name == "dtmf_speech_16k.wav" else presses
        meta = describe_dtmf(name, rate, len(pcm), press_list, **extra)
        write_json((out / name).with_suffix(".json"), meta)
        print(f"{out / name}: {len(pcm) / rate:.2f} s, keys {meta['digits']}")


def make_speech(out: Path, workdir: Path) -> None:
    entries = []
    for stem, voice, wpm, text in SPEECH:
        x = at_rms(speak(text, workdir, voice=voice, wpm=wpm, rate=RATE), SPEECH_RMS)
        pcm = to_int16(np.concatenate([silence(200), x, silence(200)]))
        write_wav(out / f"{stem}.wav", pcm, RATE)
        entries.append({"file": f"{stem}.wav", "voice": voice, "words_per_minute": wpm, "text": text,
                        "duration_ms": ms(len(pcm), RATE)})
        print(f"{out / stem}.wav: {len(pcm) / RATE:.2f} s")
    meta = {"generator": "scripts/gen_listening_fixtures.py", "samplerate": RATE, "speech_rms": SPEECH_RMS,
            "total_ms": round(sum(float(e["duration_ms"]) for e in entries), 3), "files": entries}
    write_json(out / "speech.json", meta)


def brown_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    # Integrated white noise; the leak keeps it from drifting to DC (corner near 5 Hz).
    white = rng.normal(0.0, 1.0, n)
    y = np.empty(n)
    acc = 0.0
    leak = 1.0 - 2 * np.pi * 5 / RATE
    for i in range(n):
        acc = leak * acc + white[i]
        y[i] = acc
    return y - y.mean()


def babble_noise(n: int, workdir: Path, rng: np.random.Generator) -> np.ndarray:
    total = np.zeros(n)
    for voice, text in BABBLE:
        talker = at_rms(speak(text, workdir, voice=voice, wpm=170, rate=RATE), 1.0)
        reps = int(np.ceil(n / len(talker))) + 1
        looped = np.tile(talker, reps)
        start = int(rng.integers(0, len(talker)))
        total += looped[start:start + n]
    return total


def make_denoise(out: Path, workdir: Path, rng: np.random.Generator) -> None:
    speech = at_rms(speak(DENOISE_TEXT, workdir, voice=DENOISE_VOICE, wpm=DENOISE_WPM, rate=RATE), SPEECH_RMS)
    lead, tail = 500, 300
    clean = np.concatenate([silence(lead), speech, silence(tail)])
    write_wav(out / "clean_speech_16k.wav", to_int16(clean), RATE)
    power = float(np.mean(clean ** 2))
    noises = {
        "white": rng.normal(0.0, 1.0, len(clean)),
        "brown": brown_noise(len(clean), rng),
        "babble": babble_noise(len(clean), workdir, rng),
    }
    files = []
    for kind, noise in noises.items():
        for snr in DENOISE_SNR_DB:
            scaled = noise * np.sqrt(power / 10 ** (snr / 10) / np.mean(noise ** 2))
            name = f"noisy_{kind}_{snr}db_16k.wav"
            write_wav(out / name, to_int16(clean + scaled), RATE)
            files.append({"file": name, "noise": kind, "snr_db": snr})
            print(f"{out / name}")
    meta = {
        "generator": "scripts/gen_listening_fixtures.py",
        "samplerate": RATE,
        "clean": "clean_speech_16k.wav",
        "text": DENOISE_TEXT,
        "voice": DENOISE_VOICE,
        "speech_start_ms": lead,
        "speech_end_ms": round((len(clean) * 1000 / RATE) - tail, 3),
        "snr_reference": "power of the whole clean file over the power of the added noise",
        "noisy": files,
    }
    write_json(out / "denoise.json", meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "listening")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        make_dtmf(args.out, workdir, np.random.default_rng(SEED))
        make_speech(args.out, workdir)
        make_denoise(args.out, workdir, rng)


if __name__ == "__main__":
    main()
