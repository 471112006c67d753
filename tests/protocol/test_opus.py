from __future__ import annotations

import numpy as np
import pytest

from protocol.codecs import Decoder, Encoder, codec_info
from protocol.errors import ProtocolError
from protocol.opus import OpusDecoder, OpusEncoder, OpusError, bandwidth_for
from tests.support.audio import dominant_frequency, frames, rms, tone

FRAME_48K = 960
# RFC 6716 table 2: the TOC configurations whose frames last 20 ms (SILK, hybrid, CELT).
TWENTY_MS_CONFIGS = {1, 5, 9, 13, 15, 19, 23, 27, 31}


def toc_config(packet: bytes) -> int:
    return packet[0] >> 3


def is_stereo(packet: bytes) -> bool:
    return bool(packet[0] & 0x04)


def encode_all(enc: OpusEncoder, pcm: np.ndarray) -> list[bytes]:
    return [enc.encode(chunk) for chunk in frames(pcm, enc.frame_samples)]


def test_one_packet_per_20ms_frame_at_about_the_asked_bitrate():
    enc = OpusEncoder(48000, 1, 24000)
    x = tone(440, 2.0, 48000)
    packets = encode_all(enc, x)
    assert len(packets) == 100
    kbps = sum(map(len, packets)) * 8 / 2.0 / 1000
    # VBR around the target; this tone measured 24.2 kbit/s.
    assert 18 < kbps < 30
    assert {p[0] & 0x03 for p in packets} == {0}  # code 0: one frame per packet
    assert {toc_config(p) for p in packets} <= TWENTY_MS_CONFIGS


def test_tone_survives_a_round_trip_and_every_packet_decodes_to_960_samples():
    enc, dec = OpusEncoder(), OpusDecoder()
    x = tone(1000, 1.0, 48000)
    decoded = [dec.decode(p) for p in encode_all(enc, x)]
    assert {len(d) for d in decoded} == {FRAME_48K}
    assert all(d.dtype == np.int16 for d in decoded)
    y = np.concatenate(decoded)
    assert abs(dominant_frequency(y[4800:], 48000) - 1000) < 10
    assert rms(y[4800:]) == pytest.approx(rms(x[4800:]), rel=0.15)


def test_bandwidth_limit_keeps_16k_media_in_wideband_silk():
    # Without a limit a 48 kHz encoder at 32 kbit/s picks hybrid full band (config 15) and spends
    # bits on the empty band above 8 kHz; with 8000 Hz it stays in SILK wide band (configs 8-11).
    x = tone(700, 1.0, 48000)
    assert {toc_config(p) for p in encode_all(OpusEncoder(), x)} == {15}
    limited = encode_all(OpusEncoder(bandwidth_hz=8000), x)
    assert {toc_config(p) for p in limited} <= {8, 9, 10, 11}
    assert bandwidth_for(16000) == 8000 and bandwidth_for(8000) == 4000 and bandwidth_for(48000) == 20000


def test_encoder_takes_16k_input_directly():
    enc, dec = OpusEncoder(16000), OpusDecoder()
    assert enc.frame_samples == 320
    y = np.concatenate([dec.decode(p) for p in encode_all(enc, tone(500, 1.0, 16000))])
    assert len(y) == 50 * FRAME_48K  # the decoder always answers at 48 kHz
    assert abs(dominant_frequency(y[4800:], 48000) - 500) < 10


def test_stereo_packets_are_mixed_down_to_mono():
    enc, dec = OpusEncoder(channels=2, bitrate=64000, application="audio"), OpusDecoder()
    left = tone(440, 1.0, 48000, amplitude=8000)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    packets = [enc.encode(stereo[i:i + FRAME_48K]) for i in range(0, len(left), FRAME_48K)]
    assert all(is_stereo(p) for p in packets)
    y = np.concatenate([dec.decode(p) for p in packets])
    assert y.ndim == 1 and len(y) == len(left)
    # (L + R) / 2 with R silent: half the amplitude of the left channel.
    assert rms(y[4800:]) == pytest.approx(rms(left[4800:]) / 2, rel=0.1)


def test_two_channel_encoder_sends_mono_content_on_both_channels():
    enc, dec = OpusEncoder(channels=2, bitrate=48000), OpusDecoder()
    x = tone(440, 1.0, 48000)
    y = np.concatenate([dec.decode(p) for p in encode_all(enc, x)])
    assert rms(y[4800:]) == pytest.approx(rms(x[4800:]), rel=0.15)


@pytest.mark.parametrize("packet,samples", [
    (bytes([0x00]), 480),          # config 0: SILK NB 10 ms, code 0 with an empty frame (DTX)
    (bytes([0x08]), 960),          # config 1: 20 ms
    (bytes([0x10]), 1920),         # config 2: 40 ms
    (bytes([0x18]), 2880),         # config 3: 60 ms
    (bytes([0x0B, 0x02]), 1920),   # code 3, two CBR frames of 20 ms, each empty
    (bytes([0x0B, 0x06]), 5760),   # code 3, six frames of 20 ms: the 120 ms maximum
])
def test_decoded_length_follows_the_packet_duration(packet, samples):
    assert len(OpusDecoder().decode(packet)) == samples


# Packets that break the framing rules of RFC 6716 §3.4 (R1-R7).
MALFORMED = [
    pytest.param(bytes([0x03, 0x00]), id="code3-zero-frames"),
    pytest.param(bytes([0x01, 0x00, 0x00, 0x00]), id="code1-odd-payload"),
    pytest.param(bytes([0x02, 0xFF, 0xFF, 1, 2, 3]), id="code2-length-past-end"),
    pytest.param(bytes([0x78]) + bytes(1400), id="frame-over-1275-bytes"),
    pytest.param(bytes([0x0B, 0x07]), id="code3-140ms"),
    pytest.param(bytes([0x03, 0x3F]) + bytes(10), id="code3-63-frames"),
]


@pytest.mark.parametrize("packet", MALFORMED)
def test_malformed_packet_raises_protocol_error_and_the_decoder_carries_on(packet):
    enc, dec = OpusEncoder(), OpusDecoder()
    x = tone(440, 0.2, 48000)
    good = encode_all(enc, x)
    dec.decode(good[0])
    with pytest.raises(ProtocolError, match=r"opus: corrupt packet of \d+ bytes \(TOC 0x"):
        dec.decode(packet)
    rest = [dec.decode(p) for p in good[1:]]
    assert {len(r) for r in rest} == {FRAME_48K}
    assert rms(np.concatenate(rest)[FRAME_48K:]) > 0.5 * rms(x)


def test_empty_packet_is_refused_without_closing_the_decoder():
    dec = OpusDecoder()
    with pytest.raises(OpusError, match="empty packet"):
        dec.decode(b"")
    assert len(dec.decode(bytes([0x08]))) == FRAME_48K


def test_decoder_accepts_any_bytes_like_packet():
    packet = OpusEncoder().encode(tone(440, 0.02, 48000))
    assert len(OpusDecoder().decode(memoryview(packet))) == FRAME_48K
    assert len(OpusDecoder().decode(bytearray(packet))) == FRAME_48K


@pytest.mark.parametrize("pcm,match", [
    (np.zeros(959, dtype=np.int16), r"is 960 samples \(or 960x1\), got shape \(959,\)"),
    (np.zeros((960, 2), dtype=np.int16), r"got shape \(960, 2\)"),
    (np.zeros(960, dtype=np.float32), "expected int16 samples, got float32"),
])
def test_encoder_refuses_frames_of_the_wrong_shape_or_type(pcm, match):
    with pytest.raises(OpusError, match=match):
        OpusEncoder().encode(pcm)


@pytest.mark.parametrize("kwargs,match", [
    ({"sample_rate": 44100}, "sample rate must be one of"),
    ({"channels": 3}, "channels must be 1 or 2"),
    ({"bitrate": 5000}, "bitrate must be 6000..510000"),
    ({"complexity": 11}, "complexity must be 0..10"),
    ({"bandwidth_hz": 7000}, "bandwidth must be one of"),
    ({"application": "music"}, "application must be one of"),
])
def test_encoder_refuses_settings_libopus_does_not_have(kwargs, match):
    with pytest.raises(OpusError, match=match):
        OpusEncoder(**kwargs)


def test_registry_runs_opus_at_48k_with_dynamic_payload_type_111():
    info = codec_info("OPUS")
    assert (info.name, info.sample_rate, info.payload_type) == ("opus", 48000, 111)


def test_registry_encoder_and_decoder_speak_16k_media():
    info = codec_info("opus")
    enc, dec = Encoder(info), Decoder(info)
    x = tone(1000, 1.0, 16000)
    packets = [enc.encode(chunk) for chunk in frames(x, 320)]
    assert len(packets) == 50
    assert {toc_config(p) for p in packets} <= {8, 9, 10, 11}  # SILK wide band: media is 16 kHz
    assert not any(is_stereo(p) for p in packets)
    decoded = [dec.decode(p) for p in packets]
    assert {len(d) for d in decoded} == {320}
    y = np.concatenate(decoded)
    assert abs(dominant_frequency(y[1600:], 16000) - 1000) < 10


def test_registry_decoder_reports_corrupt_packets_as_protocol_errors():
    with pytest.raises(ProtocolError):
        Decoder(codec_info("opus")).decode(bytes([0x03, 0x00]))


def test_random_bytes_either_decode_within_120ms_or_raise_protocol_error():
    rng = np.random.default_rng(20240601)
    dec, decoded, refused = OpusDecoder(), 0, 0
    for _ in range(1000):
        packet = rng.integers(0, 256, int(rng.integers(1, 1500)), dtype=np.uint8).tobytes()
        try:
            y = dec.decode(packet)
        except ProtocolError:
            refused += 1
            continue
        decoded += 1
        assert y.dtype == np.int16 and y.ndim == 1
        assert 120 <= len(y) <= 5760 and len(y) % 120 == 0  # 2.5 ms steps up to 120 ms at 48 kHz
    # Opus framing is permissive: about half of random packets are valid (measured 1687 of 3000).
    assert decoded > 200 and refused > 200
    assert len(dec.decode(bytes([0x08]))) == FRAME_48K
