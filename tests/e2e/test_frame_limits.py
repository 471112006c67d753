"""Frames the gateway will not read as commands: over `text_frame_bytes` (an `error`, the call goes
on), over `frame_close_bytes` (an `error` naming the limit, then close 1009), and text that is not
UTF-8 (a malformed command like any other)."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.conftest import connect
from transports.config import ConfigError, parse_config
from transports.gateway import start_gateway

MiB = 1 << 20


async def answered(http, gw, sid: str):
    client = await connect(http, gw, id=sid)
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    return client


async def still_goes_on(client) -> None:
    """A valid command still works and the call hangs up normally."""
    await client.send({"command": "tts", "text": "still here", "playId": "after"})
    await client.wait_event("trackEnd", timeout=10)
    await client.send({"command": "hangup"})
    await client.wait_closed()
    assert client.events[-1]["event"] == "hangup" and client.events[-1]["reason"] != "client_disconnected"


async def test_a_command_over_text_frame_bytes_is_an_error_and_the_call_goes_on(gateway_config, http):
    gw = await start_gateway(gateway_config())   # the defaults: 4 MiB a command, 8 MiB a frame
    try:
        client = await answered(http, gw, "big-text")
        starts = len(client.of("trackStart"))
        huge = json.dumps({"command": "tts", "text": "a" * (5 * MiB)})
        await client.send(huge)
        err, = await client.wait_event("error", timeout=10)
        assert err["sender"] == "command" and err["code"] == 413
        assert f"{len(huge)} bytes" in err["error"] and f"{4 * MiB}-byte limit (text_frame_bytes)" in err["error"]
        assert len(client.of("trackStart")) == starts     # nothing of it was acted upon
        await still_goes_on(client)
    finally:
        await gw.stop()


@pytest.mark.parametrize("kind", ["text", "binary"])
async def test_a_frame_over_frame_close_bytes_gets_an_error_naming_the_limit_before_close_1009(
        gateway_config, http, kind):
    gw = await start_gateway(gateway_config(text_frame_bytes=64 * 1024, frame_close_bytes=MiB))
    try:
        client = await answered(http, gw, f"too-big-{kind}")
        if kind == "text":
            await client.send(json.dumps({"command": "tts", "text": "b" * (2 * MiB)}))
        else:
            await client.ws.send_bytes(bytes(2 * MiB))
        await client.wait_closed(timeout=10)
        err = client.of("error")[-1]
        assert err["sender"] == "server" and err["code"] == 413
        assert f"{MiB}-byte limit (frame_close_bytes)" in err["error"]
        assert client.ws.close_code == 1009
        # The error is the last thing before the close: the call ended because its client went.
        assert client.events[-1] is err
    finally:
        await gw.stop()


async def test_text_that_is_not_utf8_is_a_malformed_command_and_the_call_goes_on(gateway_config, http):
    gw = await start_gateway(gateway_config())
    try:
        client = await answered(http, gw, "not-utf8")
        await client.ws.send_frame(b'{"command": "tts", "text": "\xff\xfe"}', aiohttp.WSMsgType.TEXT)
        err, = await client.wait_event("error")
        assert err["sender"] == "command" and err["code"] == 400 and "not UTF-8" in err["error"]
        await still_goes_on(client)
    finally:
        await gw.stop()


def test_frame_limits_are_checked_at_start_up():
    with pytest.raises(ConfigError, match="frame_close_bytes at least text_frame_bytes"):
        parse_config({"text_frame_bytes": 2 * MiB, "frame_close_bytes": MiB})
    with pytest.raises(ConfigError, match="text_frame_bytes must be at least 1024"):
        parse_config({"text_frame_bytes": 10})
