"""Credentials out of everything the gateway shows: listings, logs and event dumps.

A value is a credential when its key says so (`secretKey`, `secretId`, `password`, `token`,
`apiKey`, `Authorization`, ... in any nesting, `extra` and SIP `headers` included), when it is the
userinfo of a URL (`ws://user:pw@host`), or a query parameter named like one (`?token=...`).
`appId` is an account identifier, not a secret, and is kept. Pure: no I/O, safe on any input.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["REDACTED", "TOO_DEEP", "is_secret_key", "redact", "redact_json_text", "redact_text"]

REDACTED = "[redacted]"

_EXACT = frozenset({"pwd", "pass", "auth", "sig", "appkey", "accesskeyid", "bearer"})
_PARTS = ("secret", "password", "passwd", "token", "apikey", "credential", "privatekey", "accesskey",
          "authorization", "cookie", "signature")
# Words that betray a credential somewhere in a text: only texts holding one are parsed.
_HINTS = re.compile(r"secret|passw|token|key|credential|auth|cookie|signature|sig=|pwd|@|bearer", re.I)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#@\s\"'<>]+)@")
_QUERY = re.compile(r"(?P<lead>[?&;](?P<name>[A-Za-z0-9_.\-]{1,64})=)(?P<value>[^&#;\s\"'<>]*)")
_BEARER = re.compile(r"(?P<lead>\b(?:Bearer|Basic)\s+)[A-Za-z0-9\-._~+/]+=*", re.I)
# "key": "value" pairs in text that is not valid JSON (a malformed command in a dump), the value
# possibly cut off at the end of the text.
_PAIR = re.compile(r'(?P<lead>"(?P<key>[^"\\]{1,64})"\s*:\s*)"(?:[^"\\]|\\.)*(?:"|\\?$)')


def is_secret_key(key: str) -> bool:
    norm = key.lower().replace("_", "").replace("-", "").replace(".", "")
    return norm in _EXACT or any(part in norm for part in _PARTS)


def redact_text(text: str) -> str:
    """URL userinfo, credential-named query parameters and Bearer/Basic values masked."""
    if not _HINTS.search(text):
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    text = _QUERY.sub(lambda m: f"{m['lead']}{REDACTED}" if is_secret_key(m["name"]) else m[0], text)
    return _BEARER.sub(lambda m: f"{m['lead']}{REDACTED}", text)


# What stands for a value nested too deeply to be walked (JSON a client sent can come close to the
# interpreter's recursion limit): nothing of it is shown rather than something unmasked.
TOO_DEEP = f"{REDACTED}: nested too deeply to be shown"


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with every credential replaced by ``REDACTED``."""
    try:
        return _redact(value)
    except RecursionError:
        return TOO_DEEP


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and is_secret_key(k) and v is not None else _redact(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_json_text(text: str) -> str:
    """The JSON text with its credentials masked; unchanged when it holds none. Text that is not
    JSON (a malformed command) is masked pair by pair."""
    if not _HINTS.search(text):
        return text
    try:
        parsed = json.loads(text)
    except ValueError:
        masked = _PAIR.sub(lambda m: f'{m["lead"]}"{REDACTED}"' if is_secret_key(m["key"]) else m[0], text)
        return redact_text(masked)
    except RecursionError:
        return json.dumps(TOO_DEEP)
    try:
        cleaned = _redact(parsed)
        if cleaned == parsed:
            return text
        return json.dumps(cleaned, ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        return json.dumps(TOO_DEEP)
