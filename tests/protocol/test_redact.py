"""Credentials masked in JSON values, JSON texts (valid or not) and free text."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.redact import REDACTED, TOO_DEEP, is_secret_key, redact, redact_json_text, redact_text

OPTION = {
    "codec": "pcm",
    "asr": {"provider": "tencent", "appId": "1250000000", "secretId": "AKIDsecretid", "secretKey": "sk-asr"},
    "tts": {"provider": "aliyun", "secretKey": "sk-tts", "extra": {"access_token": "tok-1", "voice": "x",
                                                                 "nested": [{"apiKey": "k-2"}]}},
    "sip": {"username": "alice", "password": "pw-sip", "headers": {"X-Api-Key": "k-3", "X-Trace": "t"}},
    "mediaPass": {"url": "wss://bob:pw-url@media.example/ws?token=tok-q&rate=8000", "inputSampleRate": 8000},
    "vad": {"secretKey": None},
}
SECRETS = ("AKIDsecretid", "sk-asr", "sk-tts", "tok-1", "k-2", "pw-sip", "k-3", "pw-url", "tok-q")


def test_every_credential_of_a_call_option_is_masked_and_the_rest_kept():
    out = redact(OPTION)
    text = json.dumps(out)
    for secret in SECRETS:
        assert secret not in text, secret
    assert out["asr"]["appId"] == "1250000000" and out["asr"]["provider"] == "tencent"
    assert out["asr"]["secretKey"] == REDACTED and out["sip"]["username"] == "alice"
    assert out["tts"]["extra"]["voice"] == "x" and out["sip"]["headers"]["X-Trace"] == "t"
    assert out["mediaPass"]["url"] == f"wss://{REDACTED}@media.example/ws?token={REDACTED}&rate=8000"
    assert out["vad"]["secretKey"] is None       # absent stays visibly absent
    assert OPTION["asr"]["secretKey"] == "sk-asr"  # the input is not changed


def test_secret_key_names():
    for key in ("secretKey", "secret_id", "password", "Authorization", "X-Api-Key", "accessToken", "credential",
                "appKey", "client_secret", "Cookie"):
        assert is_secret_key(key), key
    for key in ("appId", "key", "username", "provider", "url", "speaker", "trackId", "keyword", "session_id",
                "sessionId", "targetSessionId"):
        assert not is_secret_key(key), key


def test_free_text_urls_and_bearer_values():
    assert redact_text("play http://u:p@10.0.0.1/a.wav failed") == f"play http://{REDACTED}@10.0.0.1/a.wav failed"
    assert redact_text("GET /x?id=1&api_key=abc&b=2") == f"GET /x?id=1&api_key={REDACTED}&b=2"
    assert redact_text("Authorization: Bearer abc.def-ghi") == f"Authorization: Bearer {REDACTED}"
    plain = "call answered codec=pcmu rate=8000"
    assert redact_text(plain) is plain


def test_json_text_valid_malformed_and_cut_off():
    cmd = json.dumps({"command": "invite", "option": OPTION})
    out = redact_json_text(cmd)
    assert json.loads(out)["option"]["asr"]["secretKey"] == REDACTED
    assert not any(s in out for s in SECRETS)
    untouched = '{"command": "tts", "text": "hello"}'
    assert redact_json_text(untouched) is untouched
    broken = '{"command": "invite", "option": {"asr": {"secretKey": "sk-1", "x": 1}, "sip": {"password": "pw-2"'
    assert "sk-1" not in redact_json_text(broken) and "pw-2" not in redact_json_text(broken)
    cut = '{"command": "invite", "option": {"asr": {"secretKey": "sk-partial'
    assert "sk-partial" not in redact_json_text(cut)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                    max_leaves=20))
def test_any_json_value_survives_redaction(value):
    out = redact(value)
    json.dumps(out)
    redact_json_text(json.dumps(value))
    redact_json_text(json.dumps(value)[:-1])



@pytest.mark.parametrize("depth", [50, 900, 5000])
def test_json_nested_near_or_past_the_recursion_limit_shows_nothing_unmasked(depth):
    deep = "[" * depth + "]" * depth
    text = '{"command": "custom", "token": "s3cr3t-value", "data": ' + deep + "}"
    out = redact_json_text(text)          # a dump line of that command: never an exception
    assert "s3cr3t-value" not in out
    nested: object = {"password": "s3cr3t-value"}
    for _ in range(depth):
        nested = [nested]
    shown = redact({"extra": nested})
    assert shown == TOO_DEEP or "s3cr3t-value" not in json.dumps(shown)
    if depth == 50:
        assert shown != TOO_DEEP           # ordinary nesting is walked and masked as before
