"""The calls the contract walk looks at (see walk_lab.py for how they are run).

Every option scenario places one call per verb (`invite`, `accept`) with the values under test,
and where an effect only shows against the default, one control call beside them; all of them
hear the same audio at the same time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.e2e.walk_lab import (
    SST,
    Lab,
    MediaPassPeer,
    WalkClient,
    exclusive,
    load_wav,
    stream,
    tone,
    tts_tone,
    wav_frames_on_disk,
    zeros,
)

DIGITS_GRAMMAR = ("#JSGF V1.0;\ngrammar digits;\n"
                  "public <digits> = ( zero | oh | one | two | three | four | five | six | seven | eight | nine )+ ;\n")
DIGITS = load_wav("asr/digits_a.wav")              # "one two three four five", speech 400..1950 ms
DIGITS_SAID = "one two three four five"
DIGITS_SPEECH_MS = (400.0, 1950.4)
DTMF = load_wav("listening/dtmf_clean_16k.wav")    # 159#*0
DTMF_DIGITS = "159#*0"
NOISY = load_wav("listening/noisy_white_5db_16k.wav")   # white noise throughout, speech 500..4685 ms
NOISY_SPEECH_END_MS = 4685.4
SPEECH = load_wav("audio/speech_16k.wav")


@dataclass
class Heard:
    """A call that listened to `audio` streamed from wall time `t0` (ms)."""

    client: WalkClient
    t0: float
    option: dict[str, Any]

    def vad(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.client.of(name) if e["trackId"] == self.client.sid]


async def warm_up(lab: Lab) -> None:
    """Load what the first call of each kind would otherwise load while others stream in real time
    (silero, pocketsphinx with a grammar and with keywords, espeak-ng, the media decoder)."""
    client = await lab.placed("warm-up", vad={"type": "silero"},
                              asr={"extra": {"keywords": [DIGITS_SAID]}}, tts={"speaker": "en-us"})
    await client.send({"command": "tts", "text": "Warm.", "playId": "w"})
    await client.send({"command": "play", "url": "clip.wav"})
    grammar = await lab.placed("warm-up-grammar", asr={"extra": {"grammar": DIGITS_GRAMMAR}})
    await stream(grammar, DIGITS[:16000])
    await client.until(lambda: len(client.of("trackEnd")) >= 2, 20, "the warm-up playbacks")
    await client.hangup()
    await grammar.hangup()


# --- listening -------------------------------------------------------------------------------------

LISTEN_LEAD_S = 1.5        # silence before the digits: the silenceTimeout events fall in it
LISTENING: dict[str, dict[str, Any]] = {
    "invite": {"vad": {"type": "webrtc", "samplerate": 32000, "speechPadding": 60, "silencePadding": 400,
                       "silenceTimeout": 600},
               "asr": {"provider": "sphinx", "language": "en-US", "extra": {"grammar": DIGITS_GRAMMAR}}},
    "accept": {"vad": {"type": "silero", "samplerate": 8000, "speechPadding": 480, "silencePadding": 800,
                       "silenceTimeout": 1300},
               "asr": {"provider": "pocketsphinx", "language": "en",
                       "extra": {"keywords": [DIGITS_SAID, "six seven eight"]}}},
}
# The digits with the fixture's background noise cut away around the words: a VAD that has heard
# digital silence takes a noise floor's sudden start for speech (WebRTC does, with a short
# speechPadding), and the checks measure against the true onset of the words.
SPOKEN_DIGITS = DIGITS.copy()
SPOKEN_DIGITS[:int((DIGITS_SPEECH_MS[0] - 10) * 16)] = 0
SPOKEN_DIGITS[int((DIGITS_SPEECH_MS[1] + 30) * 16):] = 0
LISTEN_AUDIO = np.concatenate([zeros(LISTEN_LEAD_S), SPOKEN_DIGITS, zeros(1.5), DTMF, zeros(0.6)])
PING_INTERVAL_S = 0.5


async def listening(lab: Lab, verb: str) -> Heard:
    option = LISTENING[verb]
    client = await lab.placed(f"listen-{verb}", verb, params={"pingInterval": PING_INTERVAL_S}, **option)
    t0 = await stream(client, LISTEN_AUDIO)
    await client.wait_event("asrFinal", timeout=10)
    await client.until(lambda: len(client.of("dtmf")) >= len(DTMF_DIGITS), 5, "the DTMF digits")
    await client.hangup()
    return Heard(client, t0, option)


DENOISE_AUDIO = np.concatenate([zeros(0.5), NOISY, zeros(1.0)])


async def denoise(lab: Lab, role: str) -> Heard:
    """`role` is a verb (denoise on) or "control" (an invite without it); WebRTC VAD hears white noise
    with speech in it."""
    # The timeout's first silence marks the start of the call's stream clock.
    option = {"denoise": role != "control", "vad": {"type": "webrtc", "silenceTimeout": 300}}
    client = await lab.placed(f"denoise-{role}", "invite" if role == "control" else role, **option)
    t0 = await stream(client, DENOISE_AUDIO)

    def speech_ended() -> bool:
        spoke = [i for i, e in enumerate(client.events) if e["event"] == "speaking"]
        return bool(spoke) and any(e["event"] == "silence" for e in client.events[spoke[0]:])

    await client.until(speech_ended, 5, "the end of speech")
    await client.hangup()
    return Heard(client, t0, option)


def gated(pcm: np.ndarray, on_ms: int, off_ms: int) -> np.ndarray:
    """Speech let through `on_ms` in every `on_ms + off_ms`: less than half of it voiced."""
    out = pcm.copy()
    t = np.arange(len(out)) * 1000 // 16000
    out[(t % (on_ms + off_ms)) >= on_ms] = 0
    return out


GATED_AUDIO = np.concatenate([zeros(0.5), gated(SPEECH[int(3.3 * 16000):int(5.0 * 16000)], 60, 140), zeros(1.5)])


async def ratio(lab: Lab, role: str) -> Heard:
    """Speech gated to 30 % duty: with `ratio` 0.9 no candidate ever has enough voiced windows to become
    speech; the control (0.1) confirms it. Long paddings keep the gaps from dropping the candidate."""
    value = 0.1 if role == "control" else 0.9
    option = {"vad": {"type": "webrtc", "ratio": value, "speechPadding": 600, "silencePadding": 1000}}
    client = await lab.placed(f"ratio-{role}", "invite" if role == "control" else role, **option)
    t0 = await stream(client, GATED_AUDIO)
    await client.barrier()
    await client.hangup()
    return Heard(client, t0, option)


THRESHOLD_AUDIO = np.concatenate([zeros(0.5), DIGITS, zeros(0.6)])


async def threshold(lab: Lab, role: str) -> Heard:
    """Silero's probability never exceeds a voiceThreshold of 1; the control keeps the default 0.5."""
    option = {"vad": {"type": "silero"} if role == "control" else {"type": "silero", "voiceThreshold": 1}}
    client = await lab.placed(f"threshold-{role}", "invite" if role == "control" else role, **option)
    t0 = await stream(client, THRESHOLD_AUDIO)
    await client.barrier()
    await client.hangup()
    return Heard(client, t0, option)


# --- recording and the parties -----------------------------------------------------------------------

RECORDED: dict[str, dict[str, Any]] = {
    "invite": {"recorder": {"recorderFile": "walk/{id}", "samplerate": 8000, "ptime": 100},
               "caller": "sip:alice@example.com", "callee": "bot", "extra": {"ticket": 42}},
    "accept": {"recorder": {"recorderFile": "walk/{id}-accepted.wav", "samplerate": 24000, "ptime": 400},
               "caller": "+4930123", "callee": "sip:bob@example.org:5060", "extra": {"queue": ["a", "b"]}},
}
RECORDED_FILES = {"invite": "walk/rec-invite.wav", "accept": "walk/rec-accept-accepted.wav"}
RECORD_TONE_HZ = 700


@dataclass
class Recorded:
    client: WalkClient
    path: Path
    sizes: list[tuple[float, int]]         # (monotonic time, frames in the header) each time it grew
    listed: dict[str, Any]                 # the call in /call/lists while it ran


async def recorded(lab: Lab, verb: str) -> Recorded:
    option = RECORDED[verb]
    client = await lab.placed(f"rec-{verb}", verb, **option)
    path = lab.recorder_root / RECORDED_FILES[verb]
    sizes: list[tuple[float, int]] = []

    async def watch() -> None:
        loop = asyncio.get_running_loop()
        while True:
            n = wav_frames_on_disk(path)
            if n is not None and (not sizes or sizes[-1][1] != n):
                sizes.append((loop.time(), n))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        await stream(client, tone(RECORD_TONE_HZ, 2.0, 16000))
        listed = await lab.listed(client.sid)
    finally:
        watcher.cancel()
    await client.hangup()
    return Recorded(client, path, sizes, listed)


# --- codecs --------------------------------------------------------------------------------------------

CODECS: dict[str, dict[str, Any]] = {
    "invite": {"codec": "pcmu"},
    "accept": {"codec": "G722"},                     # matched case-insensitively
    "pcma": {"codec": "pcma"},
    "rate-invite": {"codec": "pcm", "samplerate": 8000},
    "rate-accept": {"codec": "pcm", "samplerate": 24000},
}
CODEC_TONE_HZ = 1000


@dataclass
class Coded:
    client: WalkClient
    codec: str
    rate: int | None


async def coded(lab: Lab, role: str) -> Coded:
    option = CODECS[role]
    verb = "accept" if role.endswith("accept") else "invite"
    client = await lab.placed(f"codec-{role}", verb, **option)
    codec, rate = option["codec"].lower(), option.get("samplerate")
    await client.send(tts_tone(CODEC_TONE_HZ, 0.4, playId="tone"))
    await stream(client, np.concatenate([DTMF, zeros(0.3)]), codec, rate)
    await client.until(lambda: any(e.get("playId") == "tone" for e in client.of("trackEnd")), 5, "the tone")
    await client.until(lambda: len(client.of("dtmf")) >= len(DTMF_DIGITS), 5, "the DTMF digits")
    await client.hangup()
    return Coded(client, codec, rate)


# --- mediaPass ----------------------------------------------------------------------------------------

MEDIA_PASS: dict[str, dict[str, int]] = {
    "invite": {"inputSampleRate": 8000, "outputSampleRate": 32000, "packetSize": 640},
    "accept": {"inputSampleRate": 24000, "outputSampleRate": 8000, "packetSize": 1000},
}
PASS_CALLER_HZ = 600      # what the caller says, carried to the peer
PASS_PEER_HZ = 900        # what the peer says back, carried to the caller


@dataclass
class Passed:
    client: WalkClient
    peer: MediaPassPeer
    option: dict[str, Any]


async def media_passed(lab: Lab, verb: str) -> Passed:
    option = {"url": f"ws://127.0.0.1:{lab.web_port}/media/{verb}", **MEDIA_PASS[verb]}
    client = await lab.placed(f"pass-{verb}", verb, mediaPass=option)
    await stream(client, tone(PASS_CALLER_HZ, 1.5, 16000))
    await client.barrier()
    await client.hangup()
    return Passed(client, lab.media_peers.setdefault(verb, MediaPassPeer()), option)


# --- playback -------------------------------------------------------------------------------------------

CLIP_HZ = {"file": 440, "http": 660}
CLIP_SECONDS = 0.4


async def played(lab: Lab) -> WalkClient:
    """`play` from media_root and from an http URL, a missing one, and a base64 `tts`."""
    client = await lab.placed("play")
    for n, command in enumerate([
        tts_tone(1000, 0.4, playId="b64"),
        {"command": "play", "url": "clip.wav"},
        {"command": "play", "url": lab.clip_url},
        {"command": "play", "url": "missing.wav"},
    ], start=1):
        await client.send(command)
        await client.until(lambda: len(client.of("trackEnd")) >= n, 5, f"trackEnd #{n}")
    await client.hangup()
    return client


STREAM_PIECE_S = 0.3


async def streamed(lab: Lab) -> tuple[WalkClient, int]:
    """Two streamed pieces of one playId: the item stays open between them, however long the wait,
    and `endOfStream` closes it. Returns the client and how many trackEnds there were before the
    last piece (after the first piece had played out)."""
    client = await lab.placed("stream")
    await client.send(tts_tone(500, STREAM_PIECE_S, playId="s", streaming=True))
    start = await client.wait_event("trackStart", count=2, timeout=5)
    mark = client.positions[client.events.index(start[1])]
    # The first piece plays out, then 0.4 s more of the open item.
    await client.until(lambda: len(client.audio) - mark >= STREAM_PIECE_S * 50 + 20, 5, "the first piece")
    ends_before = len([e for e in client.of("trackEnd") if e.get("playId") == "s"])
    await client.send(tts_tone(700, STREAM_PIECE_S, playId="s", streaming=True, endOfStream=True))
    await client.until(lambda: any(e.get("playId") == "s" for e in client.of("trackEnd")), 5, "the stream's end")
    await client.hangup()
    return client, ends_before


WAIT_INPUT = {"tts": 0.5, "play": 0.7, "streamed": 0.6}


async def waited(lab: Lab) -> WalkClient:
    """waitInputTimeout on a `tts`, on a `play` and on the last piece of a streamed `tts` (the piece
    that ends the item): a silence of the server-side track after each item's trackEnd."""
    client = await lab.placed("wait")

    def silences() -> int:
        return len([e for e in client.of("silence") if e["trackId"] == SST])

    await client.send(tts_tone(500, 0.2, playId="w1", waitInputTimeout=WAIT_INPUT["tts"]))
    await client.until(lambda: silences() >= 1, 5, "silence 1")
    await client.send({"command": "play", "url": "clip.wav", "waitInputTimeout": WAIT_INPUT["play"]})
    await client.until(lambda: silences() >= 2, 5, "silence 2")
    await client.send(tts_tone(600, 0.2, playId="w3", streaming=True))
    await client.send(tts_tone(600, 0.2, playId="w3", streaming=True, endOfStream=True,
                               waitInputTimeout=WAIT_INPUT["streamed"]))
    await client.until(lambda: silences() >= 3, 5, "silence 3")
    await client.hangup()
    return client


INTERRUPTED_TEXT = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                    "sixteen seventeen eighteen nineteen twenty")


async def interrupted(lab: Lab, graceful: bool) -> tuple[WalkClient, int]:
    """A playback cut by `interrupt`; returns the client and the audio position of the cut (frames
    received when the interrupt was sent). Abrupt: espeak-ng speech (its interruption has word
    marks); graceful: a steady tone, so the fade is plain to measure."""
    client = await lab.placed(f"interrupt-{graceful}".lower())
    if graceful:
        await client.send(tts_tone(500, 3.0, playId="cut"))
    else:
        await client.send({"command": "tts", "text": INTERRUPTED_TEXT, "playId": "cut"})
    starts = await client.wait_event("trackStart", count=2, timeout=10)
    mark = client.positions[client.events.index(starts[1])]
    await client.until(lambda: len(client.audio) - mark >= 50, 5, "a second of playback")
    cut_at = len(client.audio)
    await client.send({"command": "interrupt", "graceful": graceful})
    await client.wait_event("interruption", timeout=5)
    await client.until(lambda: len(client.audio) - cut_at >= 20, 5, "audio after the cut")
    await client.hangup()
    return client, cut_at


async def paused(lab: Lab) -> tuple[WalkClient, tuple[int, int]]:
    """`pause` for 0.4 s in the middle of a 1 s tone; returns the client and the frame span paused."""
    client = await lab.placed("pause")
    await client.send(tts_tone(1000, 1.0, playId="p"))
    starts = await client.wait_event("trackStart", count=2, timeout=5)
    mark = client.positions[client.events.index(starts[1])]
    await client.until(lambda: len(client.audio) - mark >= 15, 5, "the tone playing")
    await client.send({"command": "pause"})
    await client.barrier()
    held_from = len(client.audio) + 2
    await client.until(lambda: len(client.audio) - held_from >= 20, 5, "the pause")
    held_to = len(client.audio)
    await client.send({"command": "resume"})
    await client.until(lambda: any(e.get("playId") == "p" for e in client.of("trackEnd")), 5, "the tone's end")
    await client.hangup()
    return client, (held_from, held_to)


async def auto_hung_up(lab: Lab, command: str) -> WalkClient:
    client = await lab.placed(f"autohangup-{command}")
    if command == "tts":
        await client.send(tts_tone(800, 0.3, playId="bye", autoHangup=True))
    else:
        await client.send({"command": "play", "url": "clip.wav", "autoHangup": True})
    await client.wait_closed(timeout=5)
    return client


# --- voices ----------------------------------------------------------------------------------------------

VOICE_TEXT = "Seven seas, and a quiet morning."
VOICE_CALL = {"speaker": "en-us+f5", "volume": 10, "speed": 1.5}    # a female variant: twice the pitch
VOICE_ITEMS: dict[str, dict[str, Any]] = {
    "call": {},                                        # everything from the call's tts option
    "volume": {"option": {"volume": 5}},
    "speed": {"option": {"speed": 1}},
    "voice": {"option": {"speaker": "en-us"}},
    "speaker": {"speaker": "en-us"},                   # the command's own speaker field
}


async def voiced(lab: Lab, verb: str) -> dict[str, np.ndarray]:
    """The same sentence spoken under the call's tts option and under each override; item name ->
    its audio. All items share a playId, so they queue rather than cut each other."""
    client = await lab.placed(f"voice-{verb}", verb, tts=VOICE_CALL)
    for n, extra in enumerate(VOICE_ITEMS.values(), start=1):
        await client.send({"command": "tts", "text": VOICE_TEXT, "playId": "v", **extra})
        await client.until(lambda: len(client.of("trackEnd")) >= n, 10, f"voice item {n}")
    assert client.errors() == [], client.errors()
    await client.hangup()
    return {name: client.item_audio("v", i) for i, name in enumerate(VOICE_ITEMS)}


async def provided(lab: Lab, verb: str) -> WalkClient:
    """A call whose tts option names a provider that does not exist, then an item that names one."""
    client = await lab.placed(f"provider-{verb}", verb, tts={"provider": "nosuch"})
    await client.send({"command": "tts", "text": "Hello.", "playId": "p1"})
    await client.until(lambda: len(client.of("trackEnd")) >= 1, 5, "the refused item's end")
    await client.send({"command": "tts", "text": "Hello.", "playId": "p2", "option": {"provider": "espeak-ng"}})
    await client.until(lambda: len(client.of("trackEnd")) >= 2, 10, "the spoken item's end")
    await client.hangup()
    return client


LONG_TEXT = " ".join(["the quick brown fox jumps over the lazy dog"] * 30)


@exclusive
async def concurrent_syntheses(lab: Lab, role: str) -> list[int]:
    """A long synthesis and a short one queued behind it: the short one's time to first audio shows
    whether it had to wait for the long one (maxConcurrentTasks 1) or ran beside it on the engine
    thread, queued inside it (2). `role`: a verb (the call's option says 2), "command" (the second
    command's option says 2), "control" (the default, 1). Returns both ttfb values, in ms."""
    verb = role if role in ("invite", "accept") else "invite"
    tts = {"maxConcurrentTasks": 2} if role in ("invite", "accept") else {}
    client = await lab.placed(f"mct-{role}", verb, tts=tts)
    second = {"option": {"maxConcurrentTasks": 2}} if role == "command" else {}
    await client.send({"command": "tts", "text": LONG_TEXT, "playId": "m"})
    await client.send({"command": "tts", "text": "Short.", "playId": "m", **second})

    def ttfb() -> list[dict[str, Any]]:
        return [m for m in client.of("metrics") if m["key"].startswith("ttfb.tts.")]

    await client.until(lambda: len(ttfb()) >= 2, 20, "both syntheses' first audio")
    await client.hangup()
    return [m["duration"] for m in ttfb()]


# --- the rest of the commands ---------------------------------------------------------------------------


@dataclass
class Muted:
    client: WalkClient
    out_muted: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    out_unmuted: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    speaking_while_in_muted: int = 0
    speaking_after_unmute: int = 0
    both_out: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    speaking_while_both_muted: int = 0
    unknown: dict[str, Any] = field(default_factory=dict)


SPOKEN = DIGITS[int(0.3 * 16000):int(2.1 * 16000)]


async def muted(lab: Lab) -> Muted:
    client = await lab.placed("mute", vad={"type": "webrtc"})
    out = Muted(client)
    await client.send(tts_tone(1000, 8.0, playId="hum"))
    await client.wait_event("trackStart", count=2, timeout=5)

    async def frames_after_barrier(n: int) -> np.ndarray:
        await client.barrier()
        mark = len(client.audio) + 2          # frames already on their way
        await client.until(lambda: len(client.audio) >= mark + n, 5, f"{n} frames")
        return np.concatenate([np.frombuffer(a, "<i2") for a in client.audio[mark:mark + n]])

    def speaking() -> int:
        return len(client.of("speaking"))

    await client.send({"command": "mute", "trackId": SST})
    out.out_muted = await frames_after_barrier(10)
    await client.send({"command": "unmute", "trackId": SST})
    out.out_unmuted = await frames_after_barrier(10)

    await client.send({"command": "mute", "trackId": client.sid})
    await client.barrier()
    before = speaking()
    await stream(client, np.concatenate([SPOKEN, zeros(0.4)]))
    out.speaking_while_in_muted = speaking() - before
    await client.send({"command": "unmute", "trackId": client.sid})
    await client.barrier()
    before = speaking()
    await stream(client, np.concatenate([SPOKEN, zeros(0.4)]))
    out.speaking_after_unmute = speaking() - before

    await client.send({"command": "mute"})
    out.both_out = await frames_after_barrier(10)
    before = speaking()
    await stream(client, np.concatenate([SPOKEN, zeros(0.4)]))
    out.speaking_while_both_muted = speaking() - before
    await client.send({"command": "unmute"})
    out.unknown = await client.next_error({"command": "mute", "trackId": "nobody"})
    await client.hangup()
    return out


@dataclass
class Bridged:
    a: WalkClient
    b: WalkClient
    b_heard_bridged: np.ndarray
    b_heard_unbridged: np.ndarray
    not_bridged_error: dict[str, Any]
    no_call_error: dict[str, Any]


async def bridged(lab: Lab) -> Bridged:
    a = await lab.placed("bridge-a")
    b = await lab.placed("bridge-b")
    no_call = await a.next_error({"command": "bridge", "targetSessionId": "nobody"})
    await a.send({"command": "bridge", "targetSessionId": "bridge-b"})
    await a.barrier()
    await b.barrier()
    mark = len(b.audio)
    await stream(a, tone(700, 1.0, 16000))
    heard = np.concatenate([np.frombuffer(x, "<i2") for x in b.audio[mark:]])
    not_bridged = await a.next_error({"command": "unbridge", "targetSessionId": "nobody"})
    await a.send({"command": "unbridge", "targetSessionId": "bridge-b"})
    await a.barrier()
    await b.barrier()
    mark = len(b.audio)
    await stream(a, tone(700, 0.6, 16000))
    after = np.concatenate([np.frombuffer(x, "<i2") for x in b.audio[mark:]])
    await a.hangup()
    await b.hangup()
    return Bridged(a, b, heard, after, not_bridged, no_call)


HANGUP = {"reason": "walk_done", "initiator": "walker"}


async def conversed(lab: Lab) -> WalkClient:
    """history, custom and a hangup with its own reason and initiator."""
    client = await lab.placed("session")
    await client.send({"command": "history", "speaker": "user", "text": "I need a taxi"})
    await client.send({"command": "custom", "sender": "bot", "data": {"step": [1, 2]}})
    await client.send({"command": "custom", "data": "plain"})
    await client.until(lambda: len(client.of("custom")) >= 2 and bool(client.of("addHistory")), 5, "the echoes")
    await client.hangup(**HANGUP)
    return client


INACTIVITY = {"invite": 1.0, "accept": 1.5}


async def inactive(lab: Lab, verb: str) -> tuple[WalkClient, float]:
    """Returns the client and the wall time (ms) the caller's last frame was sent at."""
    client = await lab.placed(f"idle-{verb}", verb, inactivityTimeout=INACTIVITY[verb])
    t0 = await stream(client, zeros(0.3))
    await client.wait_closed(timeout=INACTIVITY[verb] + 5)
    return client, t0 + 280                     # the 15th frame of 20 ms


# --- refusals of bad values, per verb -----------------------------------------------------------------

REFUSED_VALUES: dict[str, dict[str, Any]] = {
    "vad.type": {"vad": {"type": "fancy"}},
    "vad.samplerate": {"vad": {"type": "silero", "samplerate": 22050}},
    "asr.provider": {"asr": {"provider": "nonesuch"}},
    "asr.language": {"asr": {"language": "fr-FR"}},
    "asr.extra": {"asr": {"extra": {"grammar": 5}}},
    "tts.speaker": {"tts": {"speaker": "no-such-voice"}},
    "recorder.recorderFile": {"recorder": {"recorderFile": "../../escape"}},
    "mediaPass.url": {"mediaPass": {"url": "ftp://127.0.0.1/x", "inputSampleRate": 16000, "outputSampleRate": 16000}},
}


async def refused_value(lab: Lab, verb: str, name: str) -> WalkClient:
    """A call placed with one bad value: the call goes on, an `error` names what was wrong. For the
    tts speaker, a `tts` is needed for the voice to be looked up."""
    sid = f"bad-{verb}-{name}".replace(".", "-")
    client = await lab.placed(sid, verb, **REFUSED_VALUES[name])
    if name.startswith("tts."):
        await client.send({"command": "tts", "text": "Hello.", "playId": "x"})
        await client.wait_event("trackEnd", timeout=10)
    await client.until(lambda: bool(client.errors()), 5, "the error")
    await client.hangup()
    return client


async def refused_codec(lab: Lab, verb: str) -> WalkClient:
    client = await lab.connect(f"bad-{verb}-codec")
    await client.send({"command": verb, "option": {"codec": "opus"}})
    await client.wait_event("error", timeout=5)
    await client.send({"command": verb, "option": {"codec": "pcm"}})
    await client.wait_event("answer", timeout=5)     # the refused invite left the call as it was
    await client.hangup()
    return client


# --- a cloud provider: Tencent's local server sees what the gateway sends ------------------------------

TENCENT = {"appId": "1250000009", "secretId": "AKIDwalk", "secretKey": "tencent-walk"}
CLOUD_ASR: dict[tuple[str, str], dict[str, Any]] = {
    # (verb, variant): the model from samplerate and language, or named by modelType; each stream
    # has a message size of its own, which identifies it on the server.
    ("invite", "rate"): {"samplerate": 8000, "bufferSize": 960},
    ("invite", "model"): {"modelType": "16k_walk", "bufferSize": 1600},
    ("accept", "rate"): {"samplerate": 8000, "bufferSize": 1120},
    ("accept", "model"): {"modelType": "16k_walk", "bufferSize": 1920},
}
CLOUD_ASR_AUDIO = np.concatenate([SPOKEN_DIGITS, zeros(1.0)])
CLOUD_TTS: dict[str, dict[str, Any]] = {
    "invite": {"samplerate": 8000, "subtitle": True, "emotion": "calm", "codec": "pcm", "extra": {"Walk": "invite"}},
    "accept": {"samplerate": 24000, "subtitle": True, "emotion": "happy", "codec": "PCM", "extra": {"Walk": "accept"}},
}
CLOUD_ITEM = {"samplerate": 16000, "extra": {"Walk": "item"}}      # a single tts's own option


def tencent(lab: Lab, **fields: Any) -> dict[str, Any]:
    return {"provider": "tencent", "endpoint": lab.tencent.url, "language": "en", **TENCENT, **fields}


@dataclass
class CloudHeard:
    client: WalkClient
    option: dict[str, Any]
    handshake: Any                         # the recognition handshake the server accepted
    packets: list[int]                     # the size of each audio message it received


async def cloud_heard(lab: Lab, verb: str, variant: str) -> CloudHeard:
    option = {**CLOUD_ASR[verb, variant], "extra": {"hotword_id": f"walk-{verb}-{variant}"}}
    client = await lab.placed(f"cloud-asr-{verb}-{variant}", verb, asr=tencent(lab, **option))
    await stream(client, CLOUD_ASR_AUDIO)
    await client.wait_event("asrFinal", timeout=10)
    await client.hangup()
    shakes = [h for h in lab.tencent.handshakes if h.one("hotword_id") == option["extra"]["hotword_id"]]
    assert len(shakes) == 1, f"{len(shakes)} recognition handshakes for {client.sid}"
    # Each variant's bufferSize is its own: the stream whose first message has that size is this one.
    streams = [p for p in lab.hearing.packets if p and p[0] == option["bufferSize"]]
    assert len(streams) == 1, f"no stream (or several) in messages of {option['bufferSize']} bytes"
    return CloudHeard(client, option, shakes[0], streams[0])


async def cloud_voice(lab: Lab, verb: str) -> WalkClient:
    """A call whose tts option names the cloud provider with every field it maps, one item spoken
    with the call's option and (invite) one with an item's own rate and extra. The call stays up:
    the fields a single tts does not change are tried on it later."""
    client = await lab.placed(f"cloud-tts-{verb}", verb, tts=tencent(lab, **CLOUD_TTS[verb]))
    await client.send({"command": "tts", "text": "one two three", "playId": "c1"})
    await client.until(lambda: len(client.of("trackEnd")) >= 1, 10, "the first cloud item")
    if verb == "invite":
        await client.send({"command": "tts", "text": "four five six", "playId": "c2", "option": CLOUD_ITEM})
        await client.until(lambda: len(client.of("trackEnd")) >= 2, 10, "the second cloud item")
    assert client.errors() == [], client.errors()
    return client


def cloud_sessions(lab: Lab, walk: str) -> list[dict[str, str]]:
    """The synthesis sessions the server opened whose extra parameter `Walk` is `walk`."""
    return [q for q in lab.tencent.sessions if q.get("Walk") == walk]


async def cloud_refused(lab: Lab, verb: str, kind: str) -> WalkClient:
    """A cloud call with one thing wrong: `asr-key`, `tts-key` (a wrong secret key) or `tts-codec`
    (a codec other than pcm)."""
    if kind == "asr-key":
        client = await lab.placed(f"cloud-{kind}-{verb}", verb, asr=tencent(lab, secretKey="wrong"))
    else:
        wrong = {"secretKey": "wrong"} if kind == "tts-key" else {"codec": "mp3"}
        client = await lab.placed(f"cloud-{kind}-{verb}", verb, tts=tencent(lab, **wrong))
        await client.send({"command": "tts", "text": "Hello.", "playId": "x"})
    await client.until(lambda: bool(client.errors()), 10, "the provider's error")
    await client.hangup()
    return client


TIMED = [
    *((listening, v) for v in ("invite", "accept")),
    *((denoise, r) for r in ("invite", "accept", "control")),
    (waited,),
]
"""The scenarios whose checks read the gateway's clocks to tens of milliseconds: run first, with
nothing else in the process (a decoder being built elsewhere holds the interpreter for a quarter
of a second, and the call's stream clock would jump by that much)."""

ALL = [
    *((listening, v) for v in ("invite", "accept")),
    *((denoise, r) for r in ("invite", "accept", "control")),
    *((ratio, r) for r in ("invite", "accept", "control")),
    *((threshold, r) for r in ("invite", "accept", "control")),
    *((recorded, v) for v in ("invite", "accept")),
    *((coded, r) for r in CODECS),
    *((media_passed, v) for v in ("invite", "accept")),
    (played,), (streamed,), (waited,), (interrupted, False), (interrupted, True), (paused,),
    (auto_hung_up, "tts"), (auto_hung_up, "play"),
    *((voiced, v) for v in ("invite", "accept")),
    *((provided, v) for v in ("invite", "accept")),
    (muted,), (bridged,), (conversed,),
    *((inactive, v) for v in ("invite", "accept")),
    *((cloud_heard, v, variant) for v in ("invite", "accept") for variant in ("rate", "model")),
    *((cloud_voice, v) for v in ("invite", "accept")),
    *((cloud_refused, v, kind) for v in ("invite", "accept") for kind in ("asr-key", "tts-key", "tts-codec")),
    *((concurrent_syntheses, r) for r in ("invite", "accept", "command", "control")),
]
"""Every scenario, started together when the lab opens."""
