"""The `/call` contract, walked field by field from the API's own dataclasses.

Every command, and every field of it down through the option objects, is in exactly one of three
tables: HONOURED (a check that shows its effect on a real call: an event, the audio, a file, a
local peer's view, or a bad value refused with an error that names it), REFUSED_ON_CALL (the
error a `/call` session answers it with) or WITHOUT_EFFECT (accepted and validated, nothing to act
on: the list of docs/behaviour.md, which the table must match). A field added to a dataclass later
fails `test_every_command_and_field_is_classified` until it is put in one of them.

Every event class is either seen on the calls of this walk with every field it has (except the
few docs/behaviour.md names as left out on `/call`), or listed as one only the SIP and WebRTC
legs emit, as docs/behaviour.md says.

The checks look at shared calls (walk_scenarios.py), run once on one gateway and bounded in time.
"""

from __future__ import annotations

import re
import wave
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import jiwer
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web

from actors.engines import EngineHost
from protocol import api
from protocol.api import EVENTS
from tests.e2e import walk_scenarios as sc
from tests.e2e.walk_lab import (
    SST,
    CountingHearing,
    VERBS,
    Lab,
    WalkClient,
    decode_all,
    loud_frames,
    media_pass_app,
    pcm_of,
    pitch,
    voiced_seconds,
    write_wav,
)
from tests.providers.support import Speaking
from tests.providers.tencent_server import TencentServer
from tests.support import api_walk
from tests.support.api_walk import Node, command_with, valid_value, walk_commands, wrong_value
from tests.support.audio import dominant_frequency, frames, rms, tone
from transports.config import parse_config
from transports.gateway import start_gateway

pytestmark = pytest.mark.timeout(150)
on_the_lab = pytest.mark.asyncio(loop_scope="module")   # the tests that share the lab's event loop

NODES = {node.path: node for node in walk_commands()}
Check = Callable[[Lab, str], Awaitable[None]]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("walk")
    media = root / "media"
    write_wav(media / "clip.wav", tone(sc.CLIP_HZ["file"], sc.CLIP_SECONDS, 16000))
    clip = root / "web-clip.wav"
    write_wav(clip, tone(sc.CLIP_HZ["http"], sc.CLIP_SECONDS, 16000))
    config = parse_config({"http_addr": "127.0.0.1:0", "sip_addr": "127.0.0.1", "udp_port": 0,
                           "dump_root": str(root / "dumps"), "media_root": str(media),
                           "recorder_root": str(root / "recorders"), "log_level": "warning",
                           # play and mediaPass reach the walk's own peers on loopback
                           "fetch": {"allow_hosts": ["127.0.0.1"]},
                           # the connection that never places its call serves the whole walk
                           "handshake_timeout": 600.0})
    gateway = await start_gateway(config)
    peers: dict[str, Any] = {}
    replies = {verb: (rate["inputSampleRate"], tone(sc.PASS_PEER_HZ, 1.5, rate["inputSampleRate"]))
               for verb, rate in sc.MEDIA_PASS.items()}
    app = media_pass_app(peers, replies)

    async def serve_clip(request: web.Request) -> web.FileResponse:
        return web.FileResponse(clip, headers={"Content-Type": "audio/wav"})

    app.router.add_get("/clip.wav", serve_clip)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the bound ephemeral port
    hearing_host = EngineHost()
    hearing = CountingHearing(hearing_host)
    tencent = TencentServer(appid=sc.TENCENT["appId"], secret_id=sc.TENCENT["secretId"],
                            secret_key=sc.TENCENT["secretKey"], hearing=hearing, speaking=Speaking(gateway.engines))
    await tencent.start()
    try:
        async with aiohttp.ClientSession() as http:
            walk = Lab(gateway, http, root, port)
            walk.media_peers, walk.tencent, walk.hearing = peers, tencent, hearing
            await sc.warm_up(walk)
            walk.start(sc.TIMED)
            await walk.settle()
            walk.start(sc.ALL)
            try:
                yield walk
            finally:
                await walk.close()
    finally:
        await tencent.stop()
        await runner.cleanup()
        await gateway.stop()
        await hearing_host.stop()


def verb_of(path: str) -> str:
    return path.split(".", 1)[0]


def within(value: float, lo: float, hi: float, what: str) -> None:
    assert lo <= value <= hi, f"{what}: {value} not within {lo}..{hi}"


# --- checks: placing the call -------------------------------------------------------------------------


async def placed(lab: Lab, path: str) -> None:
    heard = await lab.run(sc.listening, verb_of(path))
    answer, = heard.client.of("answer")
    assert answer["trackId"] == heard.client.sid and answer["sdp"] == ""


async def speaks_codec(lab: Lab, role: str) -> None:
    """The leg speaks the role's codec both ways: frame size, the tone decoded with that codec, in-band
    DTMF encoded with it found again."""
    coded = await lab.run(sc.coded, role)
    rate = coded.rate or {"pcmu": 8000, "pcma": 8000, "g722": 16000, "pcm": 16000}[coded.codec]
    expected = {"pcmu": 160, "pcma": 160, "g722": 160}.get(coded.codec, rate // 50 * 2)
    sizes = {len(a) for a in coded.client.audio}
    assert sizes == {expected}, (role, sizes)
    start = coded.client.find("trackStart", playId="tone")
    end = coded.client.find("trackEnd", playId="tone")
    out = decode_all(coded.client.audio[coded.client.positions[start]:coded.client.positions[end]],
                     coded.codec, coded.rate)
    assert abs(dominant_frequency(loud_frames(out), 16000) - sc.CODEC_TONE_HZ) < 15, role
    assert "".join(e["digit"] for e in coded.client.of("dtmf")) == sc.DTMF_DIGITS, role


async def codec(lab: Lab, path: str) -> None:
    """pcmu and pcma (invite), G722 (accept, any case); an unknown codec is refused naming it, and the
    call can be placed again."""
    verb = verb_of(path)
    for role in (verb, "pcma") if verb == "invite" else (verb,):
        await speaks_codec(lab, role)
    client = await lab.run(sc.refused_codec, verb)
    err = client.of("error")[0]
    assert err["sender"] == "command" and "'opus'" in err["error"] and "codec" in err["error"], err


async def samplerate(lab: Lab, path: str) -> None:
    """Raw pcm at the rate given (8 kHz for invite, 24 kHz for accept), both ways."""
    await speaks_codec(lab, f"rate-{verb_of(path)}")


async def parties(lab: Lab, path: str) -> None:
    """`caller` and `callee` become the hangup's `from` and `to` (the contract's Attendee)."""
    rec = await lab.run(sc.recorded, verb_of(path))
    hangup = rec.client.events[-1]
    expected = {
        "invite": ({"username": "alice", "realm": "example.com", "source": "sip:alice@example.com"},
                   {"username": "bot", "realm": "", "source": "bot"}),
        "accept": ({"username": "+4930123", "realm": "", "source": "+4930123"},
                   {"username": "bob", "realm": "example.org", "source": "sip:bob@example.org:5060"}),
    }[verb_of(path)]
    assert (hangup["from"], hangup["to"]) == expected


async def extra(lab: Lab, path: str) -> None:
    """The call's `extra` is kept with its option (/call/lists) and comes back in the hangup."""
    rec = await lab.run(sc.recorded, verb_of(path))
    given = sc.RECORDED[verb_of(path)]["extra"]
    assert rec.listed["option"]["extra"] == given
    assert rec.client.events[-1]["extra"] == given


async def recording(lab: Lab, path: str) -> None:
    rec = await lab.run(sc.recorded, verb_of(path))
    with wave.open(str(rec.path)) as w:
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
        assert (w.getnchannels(), w.getsampwidth()) == (2, 2)
    left = data[:, 0]
    loud = left[np.abs(left) > 2000]
    assert len(loud) > rate, "the caller's two seconds of tone are in the left channel"
    onset = int(np.argmax(np.abs(left) > 2000))
    assert abs(dominant_frequency(left[onset:onset + rate // 2], rate) - sc.RECORD_TONE_HZ) < 10
    assert rms(data[:, 1].astype(np.int16)) < 50, "the gateway played nothing"


async def recorder_file(lab: Lab, path: str) -> None:
    """`{id}` is the session id, `.wav` is added when missing; a path outside recorder_root is refused."""
    rec = await lab.run(sc.recorded, verb_of(path))
    assert rec.path.is_file(), sorted(p.name for p in rec.path.parent.iterdir())
    client = await lab.run(sc.refused_value, verb_of(path), "recorder.recorderFile")
    err, = client.errors()
    assert err["sender"] == "recorder" and "escape" in err["error"], err
    assert not (lab.root / "escape.wav").exists()


async def recorder_samplerate(lab: Lab, path: str) -> None:
    rec = await lab.run(sc.recorded, verb_of(path))
    with wave.open(str(rec.path)) as w:
        assert w.getframerate() == sc.RECORDED[verb_of(path)]["recorder"]["samplerate"]
    await recording(lab, path)


async def recorder_ptime(lab: Lab, path: str) -> None:
    """The file grows once per ptime, by ptime's worth of frames, while the call runs."""
    rec = await lab.run(sc.recorded, verb_of(path))
    option = sc.RECORDED[verb_of(path)]["recorder"]
    ptime, rate = option["ptime"], option["samplerate"]
    steps = [b - a for (_, a), (_, b) in zip(rec.sizes, rec.sizes[1:])]
    gaps = [tb - ta for (ta, _), (tb, _) in zip(rec.sizes, rec.sizes[1:])]
    assert len(steps) >= 3, rec.sizes
    within(float(np.median(steps)), rate * ptime / 1000 * 0.8, rate * ptime / 1000 * 1.2, "frames per write")
    within(float(np.median(gaps)) * 1000, ptime * 0.8, ptime * 1.25, "ms between writes")


# --- checks: listening -----------------------------------------------------------------------------------


async def vad_on(lab: Lab, path: str) -> None:
    """With `vad`, speech gives speaking/silence; the same caller audio without it gives neither."""
    heard = await lab.run(sc.listening, verb_of(path))
    assert heard.vad("speaking") and heard.vad("silence")
    control = await lab.run(sc.recorded, verb_of(path))       # a tone, no vad option
    assert not control.client.of("speaking") and not control.client.of("silence")


def timeouts(heard: sc.Heard) -> list[dict[str, Any]]:
    """The silenceTimeout events before the first speech."""
    first_speech = heard.client.find("speaking")
    return [e for e in heard.client.events[:first_speech] if e["event"] == "silence"]


def origin(heard: sc.Heard) -> float:
    """The start of the call's stream clock (ms), on which the VAD dates what it hears: the start of
    the first timeout's silence, which began with the first frame."""
    return timeouts(heard)[0]["startTime"]


def emission_delay(event: dict[str, Any], decided_at: float) -> float:
    """How long after the stream time it was decided at an event was sent (its timestamp is the
    wall clock, and the stream clock may sit apart from it by a constant)."""
    return event["timestamp"] - decided_at


def window_of(heard: sc.Heard) -> int:
    return {"webrtc": 20, "silero": 32}[heard.option["vad"]["type"]]


def first_window_at_or_after(ms: float, window: int) -> int:
    return int(-(-ms // window) * window)


async def vad_type(lab: Lab, path: str) -> None:
    """The engine decides the windows: WebRTC judges 20 ms, silero 32 ms, so a timeout of silence
    lands on the first window end at or after it. An unknown type is an error naming it."""
    verb = verb_of(path)
    heard = await lab.run(sc.listening, verb)
    vad = heard.option["vad"]
    first = timeouts(heard)[0]
    assert first["duration"] == first_window_at_or_after(vad["silenceTimeout"], window_of(heard)), (vad, first)
    client = await lab.run(sc.refused_value, verb, "vad.type")
    err, = client.errors()
    assert err["sender"] == "vad" and "'fancy'" in err["error"], err


async def vad_samplerate(lab: Lab, path: str) -> None:
    """The VAD runs at the rate given (speech found at its true onset); a rate the engine cannot run
    is an error naming it."""
    verb = verb_of(path)
    heard = await lab.run(sc.listening, verb)
    speaking = heard.vad("speaking")[0]
    onset = origin(heard) + sc.LISTEN_LEAD_S * 1000 + sc.DIGITS_SPEECH_MS[0]
    within(speaking["startTime"] - onset, -80, 80, f"speech onset at {heard.option['vad']['samplerate']} Hz")
    client = await lab.run(sc.refused_value, verb, "vad.samplerate")
    err, = client.errors()
    assert err["sender"] == "vad" and "22050" in err["error"] and "vad.samplerate" in err["error"], err


async def speech_padding(lab: Lab, path: str) -> None:
    """`speaking` is decided speechPadding ms after the onset it reports (on the first window end at
    or after it), then sent as promptly as the first timeout's silence was."""
    heard = await lab.run(sc.listening, verb_of(path))
    pad = heard.option["vad"]["speechPadding"]
    ev = heard.vad("speaking")[0]
    first = timeouts(heard)[0]
    prompt = emission_delay(first, first["startTime"] + first["duration"])
    lag = emission_delay(ev, ev["startTime"]) - prompt
    within(lag, pad - 40, pad + window_of(heard) + 150, "speaking decided after its onset (ms)")


async def silence_padding(lab: Lab, path: str) -> None:
    """The silence that ends speech is confirmed once it has lasted silencePadding ms (dated back to
    where the engine let go of the speech, at most a decay and a WebRTC overhang earlier)."""
    heard = await lab.run(sc.listening, verb_of(path))
    pad = heard.option["vad"]["silencePadding"]
    first_speech = heard.client.find("speaking")
    end = next(e for e in heard.client.events[first_speech:] if e["event"] == "silence")
    within(end["duration"], pad, pad + 240, "the ending silence's duration")
    truth = origin(heard) + sc.LISTEN_LEAD_S * 1000 + sc.DIGITS_SPEECH_MS[1]
    within(end["startTime"] - truth, -200, 120, "the ending silence's start against the true end of speech")


async def silence_timeout(lab: Lab, path: str) -> None:
    """While nobody speaks, a silence every silenceTimeout ms, each with the silence's true start."""
    heard = await lab.run(sc.listening, verb_of(path))
    vad = heard.option["vad"]
    window = window_of(heard)
    got = timeouts(heard)
    due = [first_window_at_or_after(vad["silenceTimeout"] * k, window)
           for k in range(1, 10) if vad["silenceTimeout"] * k + window <= sc.LISTEN_LEAD_S * 1000 + 300]
    assert [e["duration"] for e in got[:len(due)]] == due, got
    assert len({e["startTime"] for e in got}) == 1


async def vad_ratio(lab: Lab, path: str) -> None:
    """Speech gated to 30 % voiced: with ratio 0.9 no speaking; the control (0.1) speaks."""
    treated = await lab.run(sc.ratio, verb_of(path))
    control = await lab.run(sc.ratio, "control")
    assert control.vad("speaking"), control.client.events
    assert treated.vad("speaking") == [], treated.client.events


async def voice_threshold(lab: Lab, path: str) -> None:
    treated = await lab.run(sc.threshold, verb_of(path))
    control = await lab.run(sc.threshold, "control")
    assert control.vad("speaking"), control.client.events
    assert treated.vad("speaking") == [], treated.client.events


async def denoise(lab: Lab, path: str) -> None:
    """White noise at 5 dB: without the denoiser WebRTC VAD hears 'speech' until the noise stops;
    with it, the speech ends where the speech ends."""
    treated = await lab.run(sc.denoise, verb_of(path))
    control = await lab.run(sc.denoise, "control")
    speech_end = 500 + sc.NOISY_SPEECH_END_MS

    def end_of_speech(heard: sc.Heard) -> float:
        first_speech = heard.client.find("speaking")
        end = next(e for e in heard.client.events[first_speech:] if e["event"] == "silence")
        return end["startTime"] - origin(heard)

    within(end_of_speech(treated) - speech_end, -250, 100, "end of speech with denoise")
    assert end_of_speech(control) - speech_end > 150, end_of_speech(control) - speech_end


async def asr_on(lab: Lab, path: str) -> None:
    heard = await lab.run(sc.listening, verb_of(path))
    assert heard.client.of("asrFinal") and heard.client.of("asrDelta")
    control = await lab.run(sc.denoise, "control")       # speech, but no asr option
    assert not control.client.of("asrFinal") and not control.client.of("asrDelta")


async def asr_provider(lab: Lab, path: str) -> None:
    verb = verb_of(path)
    heard = await lab.run(sc.listening, verb)
    assert heard.client.of("asrFinal")
    assert [m["key"] for m in heard.client.of("metrics")] and all(
        m["data"]["provider"] == "pocketsphinx" for m in heard.client.of("metrics"))
    client = await lab.run(sc.refused_value, verb, "asr.provider")
    err, = client.errors()
    assert err["sender"] == "asr" and "'nonesuch'" in err["error"], err


async def asr_language(lab: Lab, path: str) -> None:
    verb = verb_of(path)
    heard = await lab.run(sc.listening, verb)
    assert heard.client.of("asrFinal") and not heard.client.errors()
    client = await lab.run(sc.refused_value, verb, "asr.language")
    err, = client.errors()
    assert err["sender"] == "asr" and "'fr-FR'" in err["error"], err


async def asr_extra(lab: Lab, path: str) -> None:
    """A grammar recognises the digits; a keyword list makes each utterance one of its phrases."""
    verb = verb_of(path)
    heard = await lab.run(sc.listening, verb)
    text = heard.client.of("asrFinal")[0]["text"]
    if "grammar" in heard.option["asr"]["extra"]:
        assert jiwer.wer(sc.DIGITS_SAID, text) <= 0.2, text
    else:
        assert text == sc.DIGITS_SAID, text
    client = await lab.run(sc.refused_value, verb, "asr.extra")
    err, = client.errors()
    assert err["sender"] == "asr" and "grammar" in err["error"], err


async def inactivity(lab: Lab, path: str) -> None:
    verb = verb_of(path)
    client, last_frame = await lab.run(sc.inactive, verb)
    ev, = client.of("inactivity")
    within(client.arrivals[client.events.index(ev)] - last_frame, sc.INACTIVITY[verb] * 1000,
           sc.INACTIVITY[verb] * 1000 + 700, "inactivity after the last frame (ms)")
    assert client.events[-1]["reason"] == "inactivity_timeout"


# --- checks: mediaPass --------------------------------------------------------------------------------------


async def media_pass_on(lab: Lab, path: str) -> None:
    passed = await lab.run(sc.media_passed, verb_of(path))
    assert passed.peer.packets and not passed.client.errors()


async def media_pass_url(lab: Lab, path: str) -> None:
    verb = verb_of(path)
    passed = await lab.run(sc.media_passed, verb)
    assert passed.peer.paths == [f"/media/{verb}"]
    client = await lab.run(sc.refused_value, verb, "mediaPass.url")
    err, = client.errors()
    assert err["sender"] == "mediaPass" and "ftp://127.0.0.1/x" in err["error"], err


async def media_pass_output_rate(lab: Lab, path: str) -> None:
    """The peer gets the caller's tone at outputSampleRate."""
    passed = await lab.run(sc.media_passed, verb_of(path))
    rate = passed.option["outputSampleRate"]
    pcm = pcm_of(passed.peer.packets)
    loud = np.concatenate([f for f in frames(pcm, rate // 50) if rms(f) > 1000])
    assert len(loud) > rate // 2
    assert abs(dominant_frequency(loud, rate) - sc.PASS_CALLER_HZ) < 10


async def media_pass_input_rate(lab: Lab, path: str) -> None:
    """The caller hears the peer's tone, sent at inputSampleRate, at its true pitch."""
    passed = await lab.run(sc.media_passed, verb_of(path))
    loud = loud_frames(pcm_of(passed.client.audio))
    assert len(loud) > 16000 // 2
    assert abs(dominant_frequency(loud, 16000) - sc.PASS_PEER_HZ) < 10


async def media_pass_packet(lab: Lab, path: str) -> None:
    passed = await lab.run(sc.media_passed, verb_of(path))
    assert {len(p) for p in passed.peer.packets} == {passed.option["packetSize"]}


# --- checks: the call's tts option and the tts command ---------------------------------------------------


def heard_tone(audio: np.ndarray, seconds: float, hz: float | None, what: str) -> np.ndarray:
    """The loud frames of `audio`: about `seconds` of them (a starved machine may lose a few frames
    on the way to the client, never add any) at `hz`. Returns them."""
    loud = loud_frames(audio)
    within(len(loud) / 320, seconds * 50 * 0.75, seconds * 50 + 1, f"{what}: 20 ms frames of tone")
    if hz is not None:
        assert abs(dominant_frequency(loud, 16000) - hz) < 10, what
    return loud


def item_level(audio: np.ndarray) -> float:
    return rms(np.concatenate([f for f in frames(audio, 320) if rms(f) > 100]))


async def tts_volume(lab: Lab, path: str) -> None:
    """Volume is linear (5 normal): the call's 10 is twice as loud as an item's own 5."""
    voices = await lab.run(sc.voiced, "invite" if path.startswith("tts.") else verb_of(path))
    within(item_level(voices["call"]) / item_level(voices["volume"]), 1.6, 2.4, "volume 10 against 5")


async def tts_speed(lab: Lab, path: str) -> None:
    voices = await lab.run(sc.voiced, "invite" if path.startswith("tts.") else verb_of(path))
    within(voiced_seconds(voices["speed"]) / voiced_seconds(voices["call"]), 1.25, 1.8, "speech at 1 against 1.5")


async def tts_option_speaker(lab: Lab, path: str) -> None:
    """The call's voice (a female variant of en-us) speaks at about twice the pitch of an item's own
    en-us, whether the item sets it in its option or in the command's `speaker`."""
    voices = await lab.run(sc.voiced, "invite" if path.startswith("tts.") else verb_of(path))
    own, option, command = (pitch(voices[k]) for k in ("call", "voice", "speaker"))
    within(own / option, 1.6, 2.4, "the call's voice against en-us (pitch)")
    within(command / option, 0.9, 1.1, "speaker against option.speaker (pitch)")


async def tts_speaker_refused(lab: Lab, path: str) -> None:
    await tts_option_speaker(lab, path)
    client = await lab.run(sc.refused_value, verb_of(path), "tts.speaker")
    err, = client.errors()
    assert err["sender"] == "tts" and "'no-such-voice'" in err["error"], err


async def tts_call_option(lab: Lab, path: str) -> None:
    await tts_volume(lab, path)


async def tts_provider(lab: Lab, path: str) -> None:
    """The call's provider is used unless an item names its own; an unknown one is an error naming it,
    and that item still ends."""
    client = await lab.run(sc.provided, "invite" if path.startswith("tts.") else verb_of(path))
    err, = client.errors()
    assert err["sender"] == "tts" and "'nosuch'" in err["error"], err
    first, second = (e for e in client.of("trackEnd") if e["trackId"] == SST)
    assert (first["playId"], first["duration"]) == ("p1", 0)
    assert second["playId"] == "p2" and second["duration"] > 300
    assert voiced_seconds(client.item_audio("p2")) > 0.2


async def max_concurrent(lab: Lab, path: str) -> None:
    """With 2 the short synthesis runs beside the long one and waits for it inside the engine; with
    the default 1 it starts when the long one is done, and its first audio comes at once."""
    role = "command" if path.startswith("tts.") else verb_of(path)
    treated = await lab.run(sc.concurrent_syntheses, role)
    control = await lab.run(sc.concurrent_syntheses, "control")
    assert max(treated) > 150 and max(treated) > 3 * max(control), (treated, control)


async def tts_text(lab: Lab, path: str) -> None:
    voices = await lab.run(sc.voiced, "invite")
    assert voiced_seconds(voices["call"]) > 0.5
    client, _ = await lab.run(sc.interrupted, False)
    assert client.of("interruption")[0]["subtitle"] == sc.INTERRUPTED_TEXT


async def tts_speaker(lab: Lab, path: str) -> None:
    await tts_option_speaker(lab, path)


async def tts_play_id(lab: Lab, path: str) -> None:
    client = await lab.run(sc.played)
    start = client.events[client.find("trackStart", playId="b64")]
    end = client.events[client.find("trackEnd", playId="b64")]
    assert start["trackId"] == end["trackId"] == SST


async def tts_base64(lab: Lab, path: str) -> None:
    """`text` is 16 kHz PCM, played as is."""
    client = await lab.run(sc.played)
    audio = client.item_audio("b64")
    heard_tone(audio, 0.4, 1000, "the base64 audio")
    end = client.events[client.find("trackEnd", playId="b64")]
    within(end["duration"], 380, 420, "trackEnd duration")


async def auto_hangup(lab: Lab, path: str) -> None:
    client = await lab.run(sc.auto_hung_up, verb_of(path))
    ends = [e for e in client.of("trackEnd") if e["trackId"] == SST]
    assert len(ends) == 1 and ends[0]["duration"] > 200
    hangup = client.events[-1]
    assert (hangup["event"], hangup["reason"], hangup["initiator"]) == ("hangup", "autohangup", "system")


async def streaming(lab: Lab, path: str) -> None:
    """The pieces of one playId are one item: one trackStart, one trackEnd for both pieces' audio."""
    client, _ = await lab.run(sc.streamed)
    assert len([e for e in client.of("trackStart") if e.get("playId") == "s"]) == 1
    end, = [e for e in client.of("trackEnd") if e.get("playId") == "s"]
    within(end["duration"], 2 * sc.STREAM_PIECE_S * 1000 - 20, 2 * sc.STREAM_PIECE_S * 1000 + 20, "duration")
    loud = heard_tone(client.item_audio("s"), 2 * sc.STREAM_PIECE_S, None, "the pieces")
    half = len(loud) // 2
    assert abs(dominant_frequency(loud[:half - 640], 16000) - 500) < 10      # the first piece, then the second
    assert abs(dominant_frequency(loud[half + 640:], 16000) - 700) < 10


async def end_of_stream(lab: Lab, path: str) -> None:
    """The item stays open after its audio until `endOfStream` closes it."""
    client, ends_before = await lab.run(sc.streamed)
    assert ends_before == 0
    assert len([e for e in client.of("trackEnd") if e.get("playId") == "s"]) == 1


async def wait_input(lab: Lab, path: str) -> None:
    """No input within waitInputTimeout after the item's trackEnd: a silence of the server-side track
    that began at the trackEnd and lasted the timeout. For a streamed tts the item ends with its last
    piece, which may carry the timeout."""
    client = await lab.run(sc.waited)
    ends = [e for e in client.of("trackEnd") if e["trackId"] == SST]
    silences = [e for e in client.of("silence") if e["trackId"] == SST]
    kinds = ("tts", "streamed") if verb_of(path) == "tts" else ("play",)
    for kind in kinds:
        index = list(sc.WAIT_INPUT).index(kind)
        end, silence = ends[index], silences[index]
        timeout_ms = sc.WAIT_INPUT[kind] * 1000
        assert (silence["duration"], silence["startTime"]) == (timeout_ms, end["timestamp"]), (kind, silence, end)
        arrived = client.arrivals[client.events.index(silence)]
        within(arrived - end["timestamp"], timeout_ms, timeout_ms + 300, f"{kind}: silence after the trackEnd (ms)")


async def tts_option(lab: Lab, path: str) -> None:
    """An item's option overrides the call's, field by field (its volume, the call's voice)."""
    await tts_volume(lab, path)


async def play_url(lab: Lab, path: str) -> None:
    """A path under media_root and an http URL play (the URL is the playId); a missing one is an
    error naming it, and its item still ends."""
    client = await lab.run(sc.played)
    for url, hz in (("clip.wav", sc.CLIP_HZ["file"]), (lab.clip_url, sc.CLIP_HZ["http"])):
        heard_tone(client.item_audio(url), sc.CLIP_SECONDS, hz, url)
        end = client.events[client.find("trackEnd", playId=url)]
        within(end["duration"], sc.CLIP_SECONDS * 1000 - 20, sc.CLIP_SECONDS * 1000 + 20, f"{url}: played ms")
    err, = client.errors()
    assert err["sender"] == "play" and err["code"] == 404 and "missing.wav" in err["error"], err
    end = client.events[client.find("trackEnd", playId="missing.wav")]
    assert end["duration"] == 0


async def play_command(lab: Lab, path: str) -> None:
    await play_url(lab, path)


async def tts_command(lab: Lab, path: str) -> None:
    await tts_base64(lab, path)


async def interrupt(lab: Lab, path: str) -> None:
    """The cut item stops (its trackEnd, an interruption with how far it got)."""
    client, cut_at = await lab.run(sc.interrupted, False)
    ev, = client.of("interruption")
    assert ev["playId"] == "cut" and 0 < ev["current"] < ev["totalDuration"]
    end = client.events[client.find("trackEnd", playId="cut")]
    assert end["duration"] < ev["totalDuration"]
    after = pcm_of(client.audio[client.positions[client.events.index(ev)] + 2:])
    assert rms(after) == 0


async def graceful(lab: Lab, path: str) -> None:
    """graceful: the steady tone fades out over 60 ms (a few frames, each quieter than the last)
    instead of stopping dead (the abrupt cut is silent right after its interruption: `interrupt`)."""
    client, cut_at = await lab.run(sc.interrupted, True)
    steady = rms(tone(500, 0.1, 16000))
    levels = [rms(np.frombuffer(a, "<i2")) for a in client.audio[cut_at:cut_at + 20]]
    ending = levels[:next(i for i, level in enumerate(levels) if level < 50)]
    fading = [level for level in ending if level < 0.95 * steady]
    assert 2 <= len(fading) <= 4 and fading == sorted(fading, reverse=True), levels
    assert fading[-1] < 0.5 * steady and all(level == 0 for level in levels[len(ending):]), levels


async def paused_playback(lab: Lab, path: str) -> None:
    """pause holds the item (silence, no trackEnd) and resume goes on; the pause is not played time."""
    client, (held_from, held_to) = await lab.run(sc.paused)
    assert rms(pcm_of(client.audio[held_from:held_to])) == 0
    end = client.events[client.find("trackEnd", playId="p")]
    within(end["duration"], 980, 1020, "played duration")
    assert client.positions[client.events.index(end)] > held_to


async def mute_server_side(lab: Lab, path: str) -> None:
    m = await lab.run(sc.muted)
    assert rms(m.out_muted) == 0 and rms(m.out_unmuted) > 3000


async def mute_track_id(lab: Lab, path: str) -> None:
    """trackId = the server-side track: what the caller hears; = the session: what the gateway hears
    (the VAD hears nothing); another id: an error naming the known ones."""
    m = await lab.run(sc.muted)
    await mute_server_side(lab, path)
    assert m.speaking_while_in_muted == 0 and m.speaking_after_unmute >= 1
    assert m.unknown["code"] == 404 and "'nobody'" in m.unknown["error"] and SST in m.unknown["error"]


async def mute_both(lab: Lab, path: str) -> None:
    m = await lab.run(sc.muted)
    assert rms(m.both_out) == 0 and m.speaking_while_both_muted == 0


async def hangup_fields(lab: Lab, path: str) -> None:
    client = await lab.run(sc.conversed)
    hangup = client.events[-1]
    assert hangup["event"] == "hangup"
    assert {k: hangup[k] for k in sc.HANGUP} == sc.HANGUP


async def history(lab: Lab, path: str) -> None:
    client = await lab.run(sc.conversed)
    ev, = client.of("addHistory")
    assert (ev["speaker"], ev["text"]) == ("user", "I need a taxi")


async def custom(lab: Lab, path: str) -> None:
    client = await lab.run(sc.conversed)
    echoed = [e for e in client.of("custom") if e.get("sender") != "barrier"]
    assert [(e.get("sender"), e["data"]) for e in echoed] == [("bot", {"step": [1, 2]}), (None, "plain")]


async def bridge(lab: Lab, path: str) -> None:
    """Bridged, B hears A's tone; an unknown target is an error naming it."""
    b = await lab.run(sc.bridged)
    loud = np.concatenate([f for f in frames(b.b_heard_bridged, 320) if rms(f) > 1000])
    assert len(loud) > 16000 // 2 and abs(dominant_frequency(loud, 16000) - 700) < 10
    assert b.no_call_error["code"] == 404 and "'nobody'" in b.no_call_error["error"]


async def unbridge(lab: Lab, path: str) -> None:
    """Unbridged from B, B hears nothing of A; a target not bridged is an error naming it."""
    b = await lab.run(sc.bridged)
    assert rms(b.b_heard_unbridged) == 0
    assert b.not_bridged_error["code"] == 404 and "'nobody'" in b.not_bridged_error["error"]


# --- checks: what a cloud provider is sent (Tencent's local server) ---------------------------------


async def cloud_asr(lab: Lab, path: str, variant: str) -> sc.CloudHeard:
    heard = await lab.run(sc.cloud_heard, verb_of(path), variant)
    assert heard.handshake.accepted and heard.client.of("asrFinal"), heard.client.events
    return heard


async def asr_credentials(lab: Lab, path: str) -> None:
    """appId is the path, secretId a parameter, secretKey signs the query (the server checks the
    signature); a wrong key is refused with 401."""
    heard = await cloud_asr(lab, path, "rate")
    assert heard.handshake.path == f"/asr/v2/{sc.TENCENT['appId']}"
    assert heard.handshake.one("secretid") == sc.TENCENT["secretId"]
    client = await lab.run(sc.cloud_refused, verb_of(path), "asr-key")
    err, = client.errors()
    assert (err["sender"], err["code"]) == ("asr", 401), err


async def asr_endpoint(lab: Lab, path: str) -> None:
    """The stream goes to the endpoint given: the local server heard the digits and answered them."""
    heard = await cloud_asr(lab, path, "model")
    assert jiwer.wer(sc.DIGITS_SAID, heard.client.of("asrFinal")[0]["text"]) <= 0.2


async def asr_model_type(lab: Lab, path: str) -> None:
    heard = await cloud_asr(lab, path, "model")
    assert heard.handshake.one("engine_model_type") == "16k_walk"


def streamed_ms(heard: sc.CloudHeard, rate: int) -> float:
    return sum(heard.packets) / 2 / rate * 1000


async def asr_samplerate(lab: Lab, path: str) -> None:
    """8 kHz: the 8 kHz model, fed 8 kHz audio (every second of the call is a second at that rate)."""
    heard = await cloud_asr(lab, path, "rate")
    assert heard.handshake.one("engine_model_type") == "8k_en"
    within(streamed_ms(heard, 8000), len(sc.CLOUD_ASR_AUDIO) / 16 - 400, len(sc.CLOUD_ASR_AUDIO) / 16 + 100,
           "ms of audio the server received at 8 kHz")


async def asr_buffer_size(lab: Lab, path: str) -> None:
    """Audio goes in messages of bufferSize bytes (the last may be shorter)."""
    for variant in ("rate", "model"):
        heard = await cloud_asr(lab, path, variant)
        size = heard.option["bufferSize"]
        assert len(heard.packets) > 10 and set(heard.packets[:-1]) == {size}, (variant, set(heard.packets))


def call_sessions(lab: Lab, verb: str) -> list[dict[str, str]]:
    sessions = sc.cloud_sessions(lab, verb)
    assert sessions, f"no synthesis session of the {verb} call reached the server"
    return sessions


async def cloud_tts(lab: Lab, path: str) -> list[dict[str, str]]:
    client = await lab.run(sc.cloud_voice, verb_of(path))
    assert voiced_seconds(client.item_audio("c1")) > 0.3
    return call_sessions(lab, verb_of(path))


async def tts_credentials(lab: Lab, path: str) -> None:
    """AppId and SecretId are parameters, secretKey signs them (checked by the server), the
    endpoint is where the session went; a wrong key is refused with 401."""
    for session in await cloud_tts(lab, path):
        assert (session["AppId"], session["SecretId"]) == (sc.TENCENT["appId"], sc.TENCENT["secretId"])
    client = await lab.run(sc.cloud_refused, verb_of(path), "tts-key")
    err = client.errors()[0]
    assert (err["sender"], err["code"]) == ("tts", 401), err


async def tts_session_field(lab: Lab, path: str) -> None:
    """The call's field is the session's parameter (samplerate, subtitle, emotion, extra)."""
    verb, name = verb_of(path), path.rsplit(".", 1)[1]
    given = sc.CLOUD_TTS[verb][name]
    parameter, value = {
        "samplerate": lambda: ("SampleRate", str(given)),
        "subtitle": lambda: ("EnableSubtitle", str(given).lower()),
        "emotion": lambda: ("EmotionCategory", given),
        "extra": lambda: ("Walk", given["Walk"]),
    }[name]()
    for session in await cloud_tts(lab, path):
        assert session.get(parameter) == value, (name, session)


async def tts_codec(lab: Lab, path: str) -> None:
    """pcm (any case) is what the gateway plays; another codec is refused naming it."""
    for session in await cloud_tts(lab, path):
        assert session["Codec"] == "pcm"
    client = await lab.run(sc.cloud_refused, verb_of(path), "tts-codec")
    err = client.errors()[0]
    assert err["sender"] == "tts" and err["code"] == 400 and "'mp3'" in err["error"], err


async def tts_item_rate_and_extra(lab: Lab, path: str) -> None:
    """A single tts's own rate and extra reach the provider (a session opened with them)."""
    await lab.run(sc.cloud_voice, "invite")
    sessions = sc.cloud_sessions(lab, sc.CLOUD_ITEM["extra"]["Walk"])
    assert sessions and all(q["SampleRate"] == str(sc.CLOUD_ITEM["samplerate"]) for q in sessions), sessions


# --- the tables ------------------------------------------------------------------------------------------


def on_call_option(checks: dict[str, Check]) -> dict[str, Check]:
    """The same checks for the option of `invite` and of `accept` (each runs its own calls)."""
    return {f"{verb}.option{'.' + name if name else ''}": check for verb in VERBS for name, check in checks.items()}


HONOURED: dict[str, Check] = {
    "invite": placed,
    "accept": placed,
    **on_call_option({
        "": codec,
        "denoise": denoise,
        "callee": parties,
        "caller": parties,
        "codec": codec,
        "recorder": recording,
        "recorder.recorderFile": recorder_file,
        "recorder.samplerate": recorder_samplerate,
        "recorder.ptime": recorder_ptime,
        "vad": vad_on,
        "vad.type": vad_type,
        "vad.samplerate": vad_samplerate,
        "vad.speechPadding": speech_padding,
        "vad.silencePadding": silence_padding,
        "vad.ratio": vad_ratio,
        "vad.voiceThreshold": voice_threshold,
        "vad.silenceTimeout": silence_timeout,
        "asr": asr_on,
        "asr.provider": asr_provider,
        "asr.language": asr_language,
        "asr.extra": asr_extra,
        "asr.appId": asr_credentials,
        "asr.secretId": asr_credentials,
        "asr.secretKey": asr_credentials,
        "asr.modelType": asr_model_type,
        "asr.bufferSize": asr_buffer_size,
        "asr.samplerate": asr_samplerate,
        "asr.endpoint": asr_endpoint,
        "tts": tts_call_option,
        "tts.provider": tts_provider,
        "tts.speaker": tts_speaker_refused,
        "tts.volume": tts_volume,
        "tts.speed": tts_speed,
        "tts.maxConcurrentTasks": max_concurrent,
        "tts.samplerate": tts_session_field,
        "tts.appId": tts_credentials,
        "tts.secretId": tts_credentials,
        "tts.secretKey": tts_credentials,
        "tts.endpoint": tts_credentials,
        "tts.codec": tts_codec,
        "tts.subtitle": tts_session_field,
        "tts.emotion": tts_session_field,
        "tts.extra": tts_session_field,
        "mediaPass": media_pass_on,
        "mediaPass.url": media_pass_url,
        "mediaPass.inputSampleRate": media_pass_input_rate,
        "mediaPass.outputSampleRate": media_pass_output_rate,
        "mediaPass.packetSize": media_pass_packet,
        "extra": extra,
        "inactivityTimeout": inactivity,
        "samplerate": samplerate,
    }),
    "tts": tts_command,
    "tts.text": tts_text,
    "tts.speaker": tts_speaker,
    "tts.playId": tts_play_id,
    "tts.autoHangup": auto_hangup,
    "tts.streaming": streaming,
    "tts.endOfStream": end_of_stream,
    "tts.waitInputTimeout": wait_input,
    "tts.option": tts_option,
    "tts.option.provider": tts_provider,
    "tts.option.speaker": tts_option_speaker,
    "tts.option.volume": tts_volume,
    "tts.option.speed": tts_speed,
    "tts.option.maxConcurrentTasks": max_concurrent,
    "tts.option.samplerate": tts_item_rate_and_extra,
    "tts.option.extra": tts_item_rate_and_extra,
    "tts.base64": tts_base64,
    "play": play_command,
    "play.url": play_url,
    "play.autoHangup": auto_hangup,
    "play.waitInputTimeout": wait_input,
    "interrupt": interrupt,
    "interrupt.graceful": graceful,
    "mute": mute_both,
    "mute.trackId": mute_track_id,
    "unmute": mute_both,
    "unmute.trackId": mute_track_id,
    "hangup": hangup_fields,
    "hangup.reason": hangup_fields,
    "hangup.initiator": hangup_fields,
    "pause": paused_playback,
    "resume": paused_playback,
    "history": history,
    "history.speaker": history,
    "history.text": history,
    "custom": custom,
    "custom.sender": custom,
    "custom.data": custom,
    "bridge": bridge,
    "bridge.targetSessionId": bridge,
    "unbridge": unbridge,
    "unbridge.targetSessionId": unbridge,
}

NOT_INCOMING = "only for an incoming call; this one is outbound"
NO_TRANSFER = "refer: transfer needs a SIP leg; this is a /call session"
NO_DTMF_SIGNALLING = "sendDtmf: a /call session carries DTMF only as audio"
NO_ICE = "addIceCandidate: this session's leg does not take it"
REFUSED_ON_CALL: dict[str, str] = {
    **dict.fromkeys(("addIceCandidate", "addIceCandidate.candidate", "addIceCandidate.sdpMLineIndex",
                     "addIceCandidate.sdpMid", "addIceCandidate.sdpMlineIndex"), NO_ICE),
    **dict.fromkeys(("sendDtmf", "sendDtmf.digits", "sendDtmf.duration"), NO_DTMF_SIGNALLING),
    **dict.fromkeys(("reject", "reject.reason", "reject.code"), f"reject: {NOT_INCOMING}"),
    **dict.fromkeys(("ringing", "ringing.recorder", "ringing.recorder.recorderFile", "ringing.recorder.samplerate",
                     "ringing.recorder.ptime", "ringing.ringtone"), f"ringing: {NOT_INCOMING}"),
    "ringing.earlyMedia": f"ringing with earlyMedia: {NOT_INCOMING}",
    **dict.fromkeys((
        "refer", "refer.caller", "refer.callee", "refer.options", "refer.options.denoise", "refer.options.timeout",
        "refer.options.moh", "refer.options.asr", "refer.options.asr.provider", "refer.options.asr.language",
        "refer.options.asr.appId", "refer.options.asr.secretId", "refer.options.asr.secretKey",
        "refer.options.asr.modelType", "refer.options.asr.bufferSize", "refer.options.asr.samplerate",
        "refer.options.asr.endpoint", "refer.options.asr.extra", "refer.options.asr.startWhenAnswer",
        "refer.options.autoHangup", "refer.options.sip", "refer.options.sip.username", "refer.options.sip.password",
        "refer.options.sip.realm", "refer.options.sip.headers"), NO_TRANSFER),
}

WITHOUT_EFFECT_NAMES = (
    "option.offer", "option.enableIpv6", "option.handshakeTimeout", "option.sip", "option.sip.username",
    "option.sip.password", "option.sip.realm", "option.sip.headers",
    "option.asr.startWhenAnswer",
    "option.vad.maxBufferDurationSecs", "option.vad.endpoint", "option.vad.secretKey", "option.vad.secretId",
    "tts.option.appId", "tts.option.secretId", "tts.option.secretKey", "tts.option.endpoint", "tts.option.codec",
    "tts.option.subtitle", "tts.option.emotion", "hangup.headers",
)


def without_effect_paths(names: tuple[str, ...] | list[str]) -> set[str]:
    """The walk's paths for names of the docs' list: an `option.` name is that field of the call's
    option, in `invite` and in `accept`; any other name is a path as it stands (`tts.option.codec`)."""
    paths = set()
    for name in names:
        if name.startswith("option."):
            paths.update(f"{verb}.{name}" for verb in VERBS)
        else:
            paths.add(name)
    return paths


WITHOUT_EFFECT = without_effect_paths(WITHOUT_EFFECT_NAMES)


# --- classification ---------------------------------------------------------------------------------------


def test_every_command_and_field_is_classified() -> None:
    tables = {"HONOURED": set(HONOURED), "REFUSED_ON_CALL": set(REFUSED_ON_CALL), "WITHOUT_EFFECT": WITHOUT_EFFECT}
    walked = set(NODES)
    for name, keys in tables.items():
        assert keys <= walked, f"{name} names what the API does not have: {sorted(keys - walked)}"
    unclassified = walked - set().union(*tables.values())
    assert not unclassified, f"not classified on /call: {sorted(unclassified)}"
    doubles = {p for p in walked if sum(p in keys for keys in tables.values()) > 1}
    assert not doubles, f"classified twice: {sorted(doubles)}"
    assert len(walked) >= 200


def test_the_fields_without_effect_are_the_documented_ones() -> None:
    section = api_walk.doc_section("Accepted without effect on `/call`")
    names = [name for bullet in api_walk.doc_bullet_names(section) for name in bullet]
    assert len(names) == len(set(names)), names
    assert without_effect_paths(names) == WITHOUT_EFFECT, (
        f"in the doc, not the walk: {sorted(without_effect_paths(names) - WITHOUT_EFFECT)}; "
        f"in the walk, not the doc: {sorted(WITHOUT_EFFECT - without_effect_paths(names))}")


def test_the_refused_commands_are_the_documented_ones() -> None:
    section = api_walk.doc_section("Refused on `/call`")
    documented = {bullet[0] for bullet in api_walk.doc_bullet_names(section)}
    assert documented == {verb_of(p) for p in REFUSED_ON_CALL}
    for bullet in re.split(r"^- ", section, flags=re.M)[1:]:
        command = re.match(r"`([^`]+)`", bullet).group(1)
        assert REFUSED_ON_CALL[command] in re.sub(r"\s+", " ", bullet), (command, bullet)


# --- the walk over a real server ---------------------------------------------------------------------------

FIELDS = [node for node in NODES.values() if node.spec is not None and wrong_value(node.spec) is not None]


async def bare(lab: Lab) -> WalkClient:
    """A connection that never places its call: commands are checked before the call's state."""
    return await lab.connect("walk-bare")


async def refusing(lab: Lab) -> WalkClient:
    return await lab.placed("walk-refused")


@pytest.mark.parametrize("node", FIELDS, ids=[n.path for n in FIELDS])
@on_the_lab
async def test_a_value_of_the_wrong_type_is_refused_naming_the_field(lab: Lab, node: Node) -> None:
    client = await lab.run(bare)
    err = await client.next_error(command_with(node, wrong_value(node.spec)))
    assert (err["sender"], err["code"]) == ("command", 400)
    assert err["error"].startswith(f"{node.command}: {node.wire_path}: expected "), err["error"]
    assert not client.of("answer")


@pytest.mark.parametrize("path", sorted(HONOURED))
@on_the_lab
async def test_honoured(lab: Lab, path: str) -> None:
    await HONOURED[path](lab, path)


@pytest.mark.parametrize("path", sorted(REFUSED_ON_CALL))
@on_the_lab
async def test_refused_on_call(lab: Lab, path: str) -> None:
    """Refused with the error the docs give (after its fields were checked: see the wrong-type test);
    the call is as it was."""
    node = NODES[path]
    client = await lab.run(refusing)
    if node.spec is not None:
        message = command_with(node, valid_value(node.spec))
    else:
        message = {"command": node.command, **api_walk.minimal(api.COMMANDS[node.command])}
    err = await client.next_error(message)
    assert REFUSED_ON_CALL[path] in err["error"], (message, err)
    assert err["code"] == 400 and err["sender"] == "command"
    await client.barrier()
    assert not client.closed and not client.of("hangup")


CALL_SIDE = {"appId": "AppId", "secretId": "SecretId", "codec": "Codec", "subtitle": "EnableSubtitle",
             "emotion": "EmotionCategory"}
"""A session parameter that shows which option a field was read from (secretKey and endpoint show
themselves: a session signed or sent elsewhere would fail)."""


@pytest.mark.parametrize("path", sorted(WITHOUT_EFFECT))
@on_the_lab
async def test_accepted_without_effect(lab: Lab, path: str) -> None:
    """Accepted (no error; the call placed, the item played). A `tts`'s own credentials, endpoint,
    codec, subtitle and emotion are tried on a cloud call: its sessions keep the call's."""
    node = NODES[path]
    value = valid_value(node.spec)
    if node.command == "tts":
        client = await lab.run(sc.cloud_voice, "invite")
        call_option = sc.tencent(lab, **sc.CLOUD_TTS["invite"])
        if value == call_option.get(node.spec.wire):
            value = not value if isinstance(value, bool) else f"{value}-item"
        n = len(client.of("trackEnd"))
        play_id = f"with-{node.spec.wire}"
        await client.send({"command": "tts", "text": "seven eight", "playId": play_id,
                           "option": {node.spec.wire: value}})
        await client.until(lambda: len(client.of("trackEnd")) > n, 10, f"the item {play_id}")
        assert voiced_seconds(client.item_audio(play_id)) > 0.2
        for session in call_sessions(lab, "invite"):
            for field, parameter in CALL_SIDE.items():
                expected = call_option.get(field, "pcm" if field == "codec" else None)
                if expected is not None:
                    assert session.get(parameter) == (str(expected).lower() if field in ("codec", "subtitle")
                                                      else str(expected)), (path, session)
    elif node.command == "hangup":
        # The headers a SIP leg puts on its BYE: a /call session hangs up as it would without them.
        client = await lab.placed(f"walk-{path.replace('.', '-')}")
        await client.send(command_with(node, value))
        await client.until(lambda: client.of("hangup"), 5, "the hangup")
        assert client.of("hangup")[-1]["reason"] == "hangup_command"
    else:
        sid = f"walk-{path.replace('.', '-')}"
        client = await lab.connect(sid)
        message = command_with(node, value, {"option": {"codec": "pcm"}})
        await client.send(message)
        await client.wait_event("answer", timeout=5)
        await client.barrier()
        await client.hangup()
    assert client.errors() == [], client.errors()


# --- events ----------------------------------------------------------------------------------------------------

OTHER_LEGS = {
    "incoming": "an incoming SIP call is announced before its application connects",
    "ringing": "a /call session is answered by its own invite/accept and never rings",
    "reject": "nobody on a /call session can reject it",
    "other": "SIP hold and transfer requests",
    "hold": "a SIP far party puts the call on hold or resumes it",
    "transferRequest": "a SIP far party asks for a transfer (REFER)",
}
LEFT_OUT_ON_CALL = {"hangup.ringingTime", "ping.payload", "answer.refer"}
AS_BINARY_FRAMES = {"binary"}


def test_every_event_is_classified_as_the_docs_say() -> None:
    section = api_walk.doc_section("Events on `/call`")
    bullets = api_walk.doc_bullet_names(section)
    never = next(names for names in bullets if "incoming" in names)
    assert set(never) == set(OTHER_LEGS)
    left_out = {name for names in bullets for name in names if "." in name}
    assert left_out == LEFT_OUT_ON_CALL
    assert any(names == ["binary"] for names in bullets)
    assert set(EVENTS) >= set(OTHER_LEGS) | AS_BINARY_FRAMES
    for name in ("incoming", "ringing"):      # the contract itself says so
        assert re.search(rf"{name.title()} - .*?\nTrigger: .*\(SIP calls only\)", api_walk.API_TXT.read_text())


@pytest.mark.parametrize("name", sorted(set(EVENTS) - set(OTHER_LEGS) - AS_BINARY_FRAMES))
@on_the_lab
async def test_the_event_is_emitted_with_every_field(lab: Lab, name: str) -> None:
    await lab.settle()
    seen = [e for client in lab.clients for e in client.events if e.get("event") == name]
    assert seen, f"no {name!r} event on any call of the walk"
    for event in seen:
        api.event_from_json(event)             # every field of the right type
    present = {key for event in seen for key in event}
    expected = set(api_walk.event_fields(name)) - {p.split(".", 1)[1] for p in LEFT_OUT_ON_CALL
                                                   if p.startswith(f"{name}.")}
    assert present >= expected, f"{name}: never filled on /call: {sorted(expected - present)}"


@on_the_lab
async def test_binary_is_the_audio_frames(lab: Lab) -> None:
    """The `binary` event is the audio itself: binary WebSocket messages, never a JSON event."""
    heard = await lab.run(sc.listening, "invite")
    assert heard.client.audio and {len(a) for a in heard.client.audio} == {640}
    await lab.settle()
    assert not [e for client in lab.clients for e in client.events if e.get("event") == "binary"]
