"""Credentials given in commands never come back out: not in listings, logs nor event dumps."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.e2e.test_cli_sessions import GatewayProcess

SECRETS = ("AKIDsecretid", "sk-asr-key", "sk-tts-key", "tok-extra", "pw-sip", "pw-url", "tok-query", "pw-play")
OPTION = {
    "codec": "pcm",
    "asr": {"provider": "nosuch", "appId": "1250000000", "secretId": "AKIDsecretid", "secretKey": "sk-asr-key"},
    "tts": {"secretKey": "sk-tts-key", "extra": {"access_token": "tok-extra"}},
    "sip": {"username": "alice", "password": "pw-sip"},
    "mediaPass": {"url": "ws://bob:pw-url@127.0.0.1:9/ws?token=tok-query", "inputSampleRate": 8000,
                  "outputSampleRate": 8000},
}


async def test_listings_logs_and_dumps_hold_no_credentials(tmp_path):
    gw = GatewayProcess(tmp_path, log_level="debug", max_calls=4)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{gw.url}/call?id=secretive&ping=0") as ws:
                await ws.send_json({"command": "invite", "option": OPTION})
                await ws.send_json({"command": "play", "url": "http://u:pw-play@127.0.0.1:9/a.wav"})
                # A malformed command holding a secret is dumped too.
                await ws.send_str('{"command": "invite", "option": {"sip": {"password": "pw-sip"')
                seen: list[dict] = []

                async def until_errors() -> None:
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            seen.append(json.loads(msg.data))
                            if sum(e["event"] == "error" and e["sender"] in ("play", "command") for e in seen) >= 2:
                                return

                await asyncio.wait_for(until_errors(), 10)
                for path in ("/call/lists", "/list"):
                    async with http.get(gw.url + path) as resp:
                        listing = await resp.text()
                    assert "secretive" in listing and "1250000000" in listing and "alice" in listing
                    assert "[redacted]" in listing
                    assert not [s for s in SECRETS if s in listing], listing
                await ws.send_json({"command": "hangup"})
                async for _msg in ws:
                    pass
    finally:
        assert gw.stop() == 0
    dump = (tmp_path / "dumps" / "secretive.events.jsonl").read_text()
    lines = [json.loads(line) for line in dump.splitlines()]
    assert lines[0]["type"] == "command" and json.loads(lines[0]["content"])["option"]["codec"] == "pcm"
    assert [json.loads(line["content"])["event"] for line in lines if line["type"] == "event"][-1] == "hangup"
    assert not [s for s in SECRETS if s in dump], dump
    log = gw.log_path.read_text()
    assert "call started" in log and "secretive" in log      # session ids are not credentials
    assert not [s for s in SECRETS if s in log], [line for line in log.splitlines() if any(s in line for s in SECRETS)]
