"""Option objects of the JSON API (``CallOption`` and what it nests). Import from ``protocol.api``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.api_codec import DAY_MS, DAY_S, SAMPLE_RATES, duration, fields_set_field, opt_field, quantity, whole

CODEC_SAMPLERATES: dict[str, int] = {"pcmu": 8000, "pcma": 8000, "g722": 16000, "pcm": 16000}
"""Codecs of the WebSocket audio leg and the sample rate of their audio when none is given.

G.722 is listed at its audio rate (16 kHz), not at its 8 kHz RTP clock rate.
"""

_RATE = {"lo": SAMPLE_RATES[0], "hi": SAMPLE_RATES[-1], "unit": "Hz", "choices": SAMPLE_RATES}
RECORDER_PTIME_MS = (20, 500)
MEDIA_PASS_MAX_PACKET = 1 << 20
VOLUME_RANGE = (1, 10)
SPEED_RANGE = (0.5, 2.0)
"""The API's TTS scales: volume 1..10 (5 normal) as the contract states; speed a factor of the
provider's normal rate, 0.5..2 (the range every mainstream provider and the embedded espeak-ng
honour without clamping)."""


@dataclass(frozen=True, slots=True)
class Attendee:
    username: str
    realm: str
    source: str


@dataclass(frozen=True, slots=True)
class SipOption:
    username: str | None = None
    password: str | None = None
    realm: str | None = None
    headers: dict[str, str] | None = None
    fields_set: frozenset[str] = fields_set_field()


@dataclass(frozen=True, slots=True)
class RecorderOption:
    recorder_file: str
    samplerate: int = whole(16000, **_RATE)
    # The recorder drains its taps at least once per media frame (20 ms) and before they are half
    # full (they hold 1 s of audio): a packet time outside that could not be honoured.
    ptime: int = whole(200, lo=RECORDER_PTIME_MS[0], hi=RECORDER_PTIME_MS[1], unit="ms")
    fields_set: frozenset[str] = fields_set_field()


@dataclass(frozen=True, slots=True)
class VADOption:
    # Free text, as in the original: the spec's own example uses "webrtc", outside its list;
    # which engines exist is the media side's decision, not the codec's.
    type: str = "silero"
    samplerate: int = whole(16000, **_RATE)
    speech_padding: float = quantity(250, lo=0, hi=DAY_MS, unit="ms")
    silence_padding: float = quantity(100, lo=0, hi=DAY_MS, unit="ms")
    ratio: float = quantity(0.5, lo=0, hi=1)
    voice_threshold: float = quantity(0.5, lo=0, hi=1)
    max_buffer_duration_secs: float = quantity(50, lo=0, hi=DAY_S, unit="s")
    silence_timeout: float | None = quantity(None, lo=0, hi=DAY_MS, unit="ms")
    endpoint: str | None = None
    secret_key: str | None = None
    secret_id: str | None = None
    fields_set: frozenset[str] = fields_set_field()


@dataclass(frozen=True, slots=True)
class TranscriptionOption:
    provider: str | None = None
    language: str | None = None
    app_id: str | None = None
    secret_id: str | None = None
    secret_key: str | None = None
    model_type: str | None = None
    buffer_size: int | None = whole(None, lo=1, unit="bytes")
    samplerate: int = whole(16000, **_RATE)
    endpoint: str | None = None
    extra: dict[str, Any] | None = None
    start_when_answer: bool = False
    fields_set: frozenset[str] = fields_set_field()


@dataclass(frozen=True, slots=True)
class SynthesisOption:
    """TTS configuration. ``emotion`` is beyond the table but in the spec's own example (and the
    original has it)."""

    provider: str | None = None
    speaker: str | None = None
    volume: float = quantity(5, lo=VOLUME_RANGE[0], hi=VOLUME_RANGE[1])
    speed: float = quantity(1.0, lo=SPEED_RANGE[0], hi=SPEED_RANGE[1])
    samplerate: int = whole(16000, **_RATE)
    app_id: str | None = None
    secret_id: str | None = None
    secret_key: str | None = None
    codec: str | None = None
    subtitle: bool = False
    endpoint: str | None = None
    extra: dict[str, Any] | None = None
    max_concurrent_tasks: int | None = whole(None, lo=1)
    emotion: str | None = None
    fields_set: frozenset[str] = fields_set_field()


@dataclass(frozen=True, slots=True)
class MediaPassOption:
    url: str
    input_sample_rate: int = whole(**_RATE, required=True)
    output_sample_rate: int = whole(**_RATE, required=True)
    # Whole 16-bit samples per message; at most 1 MiB (33 s at 16 kHz): audio waits in the
    # gateway until a packet is full.
    packet_size: int = whole(2560, lo=2, hi=MEDIA_PASS_MAX_PACKET, unit="bytes", multiple=2)
    fields_set: frozenset[str] = fields_set_field()


@dataclass(frozen=True, slots=True)
class ReferOption:
    denoise: bool = False
    timeout: float | None = quantity(None, lo=0, hi=DAY_S, unit="s", lo_open=True)
    moh: str | None = None
    asr: TranscriptionOption | None = None
    auto_hangup: bool = False
    sip: SipOption | None = None
    fields_set: frozenset[str] = fields_set_field()


@dataclass(frozen=True, slots=True)
class CallOption:
    """Call configuration of ``invite`` and ``accept``.

    Beyond the spec, as in the original active-call: ``inactivity_timeout`` (seconds without
    media or commands before the call is ended). Extension of this gateway: ``samplerate``, the
    sample rate of the binary audio on the WebSocket leg; see ``audio_samplerate``.
    ``handshake_timeout`` is in seconds; the wire gives a duration string (``"30s"``) or a number.
    """

    denoise: bool = False
    offer: str | None = None
    callee: str | None = None
    caller: str | None = None
    codec: str = opt_field("pcmu", choices=tuple(CODEC_SAMPLERATES), casefold=True)
    recorder: RecorderOption | None = None
    vad: VADOption | None = None
    asr: TranscriptionOption | None = None
    tts: SynthesisOption | None = None
    media_pass: MediaPassOption | None = None
    handshake_timeout: float | None = duration()
    enable_ipv6: bool = False
    sip: SipOption | None = None
    extra: dict[str, Any] | None = None
    inactivity_timeout: float | None = quantity(None, lo=0, hi=DAY_S, unit="s")
    samplerate: int | None = whole(None, **_RATE)
    fields_set: frozenset[str] = fields_set_field()

    @property
    def audio_samplerate(self) -> int:
        """Sample rate of the WebSocket leg's binary audio: ``samplerate`` if given, else the
        codec's own rate (8000 for pcmu/pcma, 16000 for g722 and raw pcm)."""
        if self.samplerate is not None:
            return self.samplerate
        return CODEC_SAMPLERATES[self.codec]


OPTION_CLASSES: tuple[type, ...] = (
    CallOption, RecorderOption, TranscriptionOption, SynthesisOption, VADOption,
    MediaPassOption, ReferOption, SipOption, Attendee,
)
