"""Access control through the real server: API tokens, admin tokens, Origins, call ownership.

Each test first makes the attack (no token, a wrong token, another tenant's token) and sees it
refused, then makes the same request with the right token and sees it served.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tests.conftest import CallClient, base_url
from tests.support.audio import dominant_frequency, frames, rms, tone
from tests.support.bridging import loud_frames, until_heard
from tests.support.poll import until
from transports.auth import exposure_warning
from transports.config import ConfigError, parse_config
from transports.gateway import start_gateway

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
WS_HEADERS = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def secured(gateway_config):
    gw = await start_gateway(gateway_config(api_tokens=[ALICE, BOB], admin_tokens=[ADMIN],
                                            allowed_origins=["https://app.example"]))
    try:
        yield gw
    finally:
        await gw.stop()


async def open_call(http: aiohttp.ClientSession, gw, sid: str, token: str | None = None, *,
                    via_query: bool = False, headers: dict[str, str] | None = None) -> CallClient:
    url = f"{base_url(gw)}/call?id={sid}&dump=false&ping=0"
    hdrs = dict(headers or {})
    if token is not None and via_query:
        url += f"&token={token}"
    elif token is not None:
        hdrs.update(bearer(token))
    client = CallClient(await http.ws_connect(url, headers=hdrs))
    client.start()
    return client


async def answered(http, gw, sid: str, token: str) -> CallClient:
    client = await open_call(http, gw, sid, token)
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    return client


async def test_every_route_needs_a_token_and_says_how_to_send_one(secured, http):
    url = base_url(secured)
    for method, path in (("GET", "/call/lists"), ("POST", "/call/kill/x"), ("GET", "/list"),
                         ("GET", "/kill/x"), ("GET", "/iceservers"), ("GET", "/metrics")):
        for headers in ({}, bearer("not-a-token-0123456789"), {"Authorization": "Basic YTpi"}):
            async with http.request(method, url + path, headers=headers) as resp:
                assert resp.status == 401, (path, headers)
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                body = await resp.json()
                assert "token" in body["error"], body
        # The same request with a valid token is served (a kill of an unknown id is a 404).
        async with http.request(method, url + path, headers=bearer(ADMIN)) as resp:
            assert resp.status in (200, 404), (path, resp.status)
    # The API WebSocket is refused before the upgrade: no call is started.
    for path in ("/call", "/call/sip", "/call/webrtc"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(f"{url}{path}?id=intruder")
        assert info.value.status == 401
        async with http.get(f"{url}{path}?id=intruder", headers=WS_HEADERS) as resp:
            assert resp.status == 401 and "Authorization: Bearer" in (await resp.json())["error"]
    async with http.get(f"{url}/health") as resp:    # liveness probes stay open
        assert resp.status == 200 and (await resp.json())["calls"] == 0
    # Header and query forms both admit a call.
    for i, via_query in enumerate((False, True)):
        client = await open_call(http, secured, f"ok{i}", ALICE, via_query=via_query)
        await client.send({"command": "invite", "option": {"codec": "pcm"}})
        await client.wait_event("answer")
        await client.ws.close()


async def test_listing_and_kill_see_only_the_tokens_own_calls(secured, http):
    url = base_url(secured)
    a = await answered(http, secured, "alice-call", ALICE)
    b = await answered(http, secured, "bob-call", BOB)

    async def listed(token: str) -> tuple[set[str], set[str]]:
        async with http.get(f"{url}/call/lists", headers=bearer(token)) as resp:
            new = {c["id"] for c in (await resp.json())["calls"]}
        async with http.get(f"{url}/list", headers=bearer(token)) as resp:
            old = {c["id"] for c in (await resp.json())["active_calls"]}
        return new, old

    assert await listed(BOB) == ({"bob-call"}, {"bob-call"})
    assert await listed(ALICE) == ({"alice-call"}, {"alice-call"})
    assert await listed(ADMIN) == ({"alice-call", "bob-call"},) * 2

    # Bob kills Alice's call: refused, both forms; her call goes on.
    async with http.post(f"{url}/call/kill/alice-call", headers=bearer(BOB)) as resp:
        assert resp.status == 403 and "another API token" in (await resp.json())["error"]
    async with http.get(f"{url}/kill/alice-call", headers=bearer(BOB)) as resp:
        assert resp.status == 403 and (await resp.json())["status"] == "forbidden"
    await asyncio.sleep(0.2)    # a window in which a kill that went through would show
    assert a.of("hangup") == [] and not a.ws.closed
    # Alice may end her own call; the admin may end anyone's.
    async with http.post(f"{url}/call/kill/alice-call", headers=bearer(ALICE)) as resp:
        assert resp.status == 200 and await resp.json() is True
    hangup, = await a.wait_event("hangup")
    assert hangup["reason"] == "killed"
    async with http.get(f"{url}/kill/bob-call?token={ADMIN}") as resp:
        assert (await resp.json()) == {"status": "killed", "id": "bob-call"}
    await b.wait_event("hangup")


async def test_bridge_to_another_tokens_call_is_refused_and_hears_nothing(secured, http):
    victim = await answered(http, secured, "victim", ALICE)
    spy = await answered(http, secured, "spy", BOB)
    friend = await answered(http, secured, "friend", ALICE)
    await spy.send({"command": "bridge", "targetSessionId": "victim"})
    err, = await spy.wait_event("error")
    assert err["sender"] == "bridge" and err["code"] == 403 and "victim" in err["error"]
    # The same-token call bridges, so the victim's audio does flow to a bridge when allowed.
    await friend.send({"command": "bridge", "targetSessionId": "victim"})
    await until_heard(victim, friend)
    spy_mark, friend_mark = len(spy.audio), len(friend.audio)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, frame in enumerate(frames(tone(700, 1.0, 16000), 320)):
        await victim.ws.send_bytes(frame.tobytes())
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
    await until(lambda: len(loud_frames(friend, friend_mark)) >= 40, timeout=2, what="the friend hears the tone")
    heard_by_spy = np.concatenate([np.frombuffer(f, dtype="<i2") for f in spy.audio[spy_mark:]])
    assert len(heard_by_spy) > 16000 * 0.8 and rms(heard_by_spy) == 0
    loud = loud_frames(friend, friend_mark)
    assert abs(dominant_frequency(np.concatenate(loud), 16000) - 700) < 10
    # An admin's call may bridge to any call.
    admin = await answered(http, secured, "supervisor", ADMIN)
    await admin.send({"command": "bridge", "targetSessionId": "spy"})
    await until_heard(spy, admin)
    assert admin.of("error") == []
    for client in (victim, spy, friend, admin):
        await client.ws.close()


async def test_origins_other_than_the_allowed_are_refused(secured, http):
    url = base_url(secured)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(f"{url}/call?id=x&token={ALICE}", headers={"Origin": "https://evil.example"})
    assert info.value.status == 403
    async with http.get(f"{url}/call/lists", headers={"Origin": "https://evil.example", **bearer(ALICE)}) as resp:
        assert resp.status == 403 and "evil.example" in (await resp.json())["error"]
    client = await open_call(http, secured, "browser", ALICE, via_query=True,
                             headers={"Origin": "https://app.example"})
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    await client.ws.close()


async def test_without_tokens_the_gateway_stays_open(gateway, http):
    client = await open_call(http, gateway, "open")
    async with http.get(f"{base_url(gateway)}/call/lists") as resp:
        assert [c["id"] for c in (await resp.json())["calls"]] == ["open"]
    async with http.post(f"{base_url(gateway)}/call/kill/open") as resp:
        assert await resp.json() is True
    await client.wait_closed()


def test_token_config_is_checked():
    with pytest.raises(ConfigError, match="at least 16"):
        parse_config({"api_tokens": ["short"]})
    with pytest.raises(ConfigError, match="twice"):
        parse_config({"api_tokens": [ALICE], "admin_tokens": [ALICE]})
    with pytest.raises(ConfigError, match="allowed_origins"):
        parse_config({"allowed_origins": ["https://app.example/"]})


def test_exposure_warning_only_without_tokens_beyond_loopback():
    assert exposure_warning(parse_config({"http_addr": "0.0.0.0:8080"})) is not None
    assert exposure_warning(parse_config({"http_addr": "[::]:8080"})) is not None
    assert exposure_warning(parse_config({"http_addr": "10.1.2.3:8080"})) is not None
    assert exposure_warning(parse_config({"http_addr": "127.0.0.1:8080"})) is None
    assert exposure_warning(parse_config({"http_addr": "[::1]:8080"})) is None
    assert exposure_warning(parse_config({"http_addr": "0.0.0.0:8080", "api_tokens": [ALICE]})) is None


def test_the_cli_warns_loudly_when_open_beyond_loopback(tmp_path):
    # In a private network namespace 0.0.0.0 reaches nothing but that namespace's loopback.
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare -rn is not permitted here")
    exe = Path(sys.executable).parent / "active-call"
    log_path = tmp_path / "gateway.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["unshare", "-rn", str(exe), "--http", "0.0.0.0:0", "--sip", "127.0.0.1:0"],
                                cwd=tmp_path, stderr=log, env={**os.environ, "NO_COLOR": "1"})
    try:
        deadline = time.monotonic() + 20
        while "gateway ready" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        text = log_path.read_text()
        assert "NO ACCESS CONTROL" in text and "api_tokens" in text
        assert "warning" in text.lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_another_tokens_call_cannot_be_joined_by_its_id(secured, http):
    owner = await answered(http, secured, "joinable", ALICE)
    intruder = await open_call(http, secured, "joinable", BOB)
    await intruder.wait_closed()
    err, = intruder.of("error")
    assert err["code"] == 403 and "another API token" in err["error"]
    assert intruder.ws.close_code == 1008
    await asyncio.sleep(0.2)    # a window in which a hangup of the owner's call would show
    assert owner.of("hangup") == [] and not owner.ws.closed
    await owner.ws.close()


async def test_the_demo_page_is_public_and_its_calls_carry_the_token(secured, http):
    url = base_url(secured)
    # the page and its files hold no call data: a browser fetches them without credentials
    for path in ("/", "/static/app.js", "/static/style.css"):
        async with http.get(url + path) as resp:
            assert resp.status == 200, path
    async with http.get(url + "/static/app.js") as resp:
        script = await resp.text()
    assert 'get("token")' in script and "withToken(\"iceservers\")" in script
    # what the page does with them is not: /iceservers and /call/webrtc need the token it passes on
    async with http.get(url + "/iceservers") as resp:
        assert resp.status == 401
    async with http.get(url + f"/iceservers?token={ALICE}") as resp:
        assert resp.status == 200
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url + "/call/webrtc?id=page")
    assert refused.value.status == 401
    ws = await http.ws_connect(url + f"/call/webrtc?id=page&token={ALICE}")
    await ws.close()
