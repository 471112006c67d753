"""`play` and `mediaPass` as a way into the gateway's network, tried through the real server.

Internal addresses are refused by default (and the internal server never sees a request); the
operator's allow-list lets the legitimate local server through; redirects are checked per hop;
credentials in URLs are never sent; unreachable and closed ports read the same.
"""

from __future__ import annotations

import asyncio
import io
import socket
import wave
from collections import Counter

import pytest
from aiohttp import WSMsgType, web

from tests.conftest import connect
from tests.support.audio import tone
from transports.gateway import start_gateway


def wav_body() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(tone(440, 0.3, 16000).tobytes())
    return buf.getvalue()


class Internal:
    """A server standing for something inside the network: it counts every request it gets."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.auth: list[str] = []
        self.port = 0
        self.redirect_to = ""

    async def audio(self, request: web.Request) -> web.StreamResponse:
        self.hits["audio"] += 1
        if "Authorization" in request.headers:
            self.auth.append(request.headers["Authorization"])
        return web.Response(body=wav_body(), content_type="audio/wav")

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        self.hits["redirect"] += 1
        raise web.HTTPFound(self.redirect_to)

    async def media(self, request: web.Request) -> web.StreamResponse:
        self.hits["media"] += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws


@pytest.fixture
async def internal():
    servers = []

    async def start(host: str = "127.0.0.1") -> Internal:
        srv = Internal()
        app = web.Application()
        app.router.add_get("/a.wav", srv.audio)
        app.router.add_get("/go", srv.redirect)
        app.router.add_get("/media", srv.media)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, host, 0)
        await site.start()
        srv.port = runner.addresses[0][1]
        servers.append(runner)
        return srv

    yield start
    for runner in servers:
        await runner.cleanup()


async def gateway_with(gateway_config, **fetch):
    return await start_gateway(gateway_config(fetch=fetch) if fetch else gateway_config())


async def play_result(http, gw, sid: str, url: str) -> dict:
    client = await connect(http, gw, id=sid)
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    await client.send({"command": "play", "url": url})
    ends = await client.wait_event("trackEnd", timeout=10)
    played = next(e for e in ends if e.get("playId") == url)
    errors = [e for e in client.of("error") if e["sender"] == "play"]
    starts = [e for e in client.of("trackStart") if e.get("playId") == url]
    await client.ws.close()
    return {"duration": played["duration"], "error": errors[0] if errors else None, "started": bool(starts)}


async def test_play_of_an_internal_url_is_refused_unless_allow_listed(gateway_config, http, internal):
    srv = await internal()
    gw = await gateway_with(gateway_config)
    try:
        for i, url in enumerate((f"http://127.0.0.1:{srv.port}/a.wav", f"http://localhost:{srv.port}/a.wav",
                                 f"http://[::ffff:127.0.0.1]:{srv.port}/a.wav")):
            result = await play_result(http, gw, f"in{i}", url)
            assert result["error"]["code"] == 403 and "fetch policy" in result["error"]["error"], result
            assert result["duration"] == 0
        assert srv.hits["audio"] == 0
    finally:
        await gw.stop()
    gw = await gateway_with(gateway_config, allow_hosts=[f"127.0.0.1:{srv.port}"])
    try:
        result = await play_result(http, gw, "allowed", f"http://127.0.0.1:{srv.port}/a.wav")
        assert result["error"] is None and abs(result["duration"] - 300) <= 20
        assert srv.hits["audio"] == 1
    finally:
        await gw.stop()


async def test_a_redirect_to_another_internal_port_is_refused_at_that_hop(gateway_config, http, internal):
    front, inside = await internal(), await internal()
    gw = await gateway_with(gateway_config, allow_hosts=[f"127.0.0.1:{front.port}"])
    try:
        for target in (f"http://127.0.0.1:{inside.port}/a.wav", f"http://[::1]:{inside.port}/a.wav",
                       f"http://u:pw@127.0.0.1:{front.port}/a.wav"):
            front.redirect_to = target
            result = await play_result(http, gw, f"r{front.hits['redirect']}", f"http://127.0.0.1:{front.port}/go")
            assert result["error"]["code"] == 403, result
        assert front.hits["redirect"] == 3 and inside.hits["audio"] == 0 and front.hits["audio"] == 0
        # A redirect that stays within what is allowed is followed.
        front.redirect_to = "/a.wav"
        result = await play_result(http, gw, "same", f"http://127.0.0.1:{front.port}/go")
        assert result["error"] is None and front.hits["audio"] == 1
    finally:
        await gw.stop()


async def test_credentials_in_a_play_url_are_never_sent(gateway_config, http, internal):
    srv = await internal()
    gw = await gateway_with(gateway_config, allow_hosts=["127.0.0.1"])
    try:
        result = await play_result(http, gw, "creds", f"http://user:pw@127.0.0.1:{srv.port}/a.wav")
        assert result["error"]["code"] == 403 and "credentials" in result["error"]["error"]
        assert srv.hits["audio"] == 0 and srv.auth == []
    finally:
        await gw.stop()


async def test_closed_and_silent_ports_give_the_same_error_text(gateway_config, http):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)                      # accepts at the kernel, never answers
    gw = await gateway_with(gateway_config, allow_hosts=["127.0.0.1"], connect_timeout=0.3, timeout=0.6)
    try:
        texts = []
        for port in (closed, silent.getsockname()[1]):
            result = await play_result(http, gw, f"p{port}", f"http://127.0.0.1:{port}/x.wav")
            texts.append(result["error"]["error"].replace(str(port), "PORT"))
        # Refused (closed) and no answer (open, silent) read the same.
        assert texts[0] == texts[1] and "could not be reached" in texts[0], texts
        assert "Connection refused" not in " ".join(texts) and "Errno" not in " ".join(texts)
    finally:
        silent.close()
        await gw.stop()
    # Without an allow-list neither port is even tried: one refusal text for both.
    gw = await gateway_with(gateway_config)
    try:
        texts = set()
        for port in (closed, 9):
            result = await play_result(http, gw, f"q{port}", f"http://127.0.0.1:{port}/x.wav")
            texts.add(result["error"]["error"].replace(str(port), "PORT"))
        assert len(texts) == 1
    finally:
        await gw.stop()


async def test_media_pass_to_an_internal_peer_is_refused_unless_allow_listed(gateway_config, http, internal):
    srv = await internal()
    for allow, sid in (([], "mp-refused"), ([f"127.0.0.1:{srv.port}"], "mp-allowed")):
        gw = await gateway_with(gateway_config, allow_hosts=allow) if allow else await gateway_with(gateway_config)
        try:
            client = await connect(http, gw, id=sid)
            await client.send({"command": "invite", "option": {"codec": "pcm", "mediaPass": {
                "url": f"ws://127.0.0.1:{srv.port}/media", "inputSampleRate": 16000, "outputSampleRate": 16000}}})
            await client.wait_event("answer")
            if not allow:
                err, = await client.wait_event("error", timeout=5)
                assert err["sender"] == "mediaPass" and err["code"] == 502 and "fetch policy" in err["error"]
                await asyncio.sleep(0.5)                # refused for good: no retries, no more errors
                assert len(client.of("error")) == 1 and srv.hits["media"] == 0
            else:
                for _ in range(100):
                    if srv.hits["media"]:
                        break
                    await asyncio.sleep(0.02)
                assert srv.hits["media"] == 1 and client.of("error") == []
            await client.ws.close()
        finally:
            await gw.stop()


async def test_a_failed_play_sends_no_track_start_and_file_localhost_plays(gateway_config, http, tmp_path):
    gw = await gateway_with(gateway_config, allow_hosts=["127.0.0.1"])
    (tmp_path / "media").mkdir(exist_ok=True)
    (tmp_path / "media" / "x.wav").write_bytes(wav_body())
    try:
        for url, ok in (("http://127.0.0.1:9/missing.wav", False), ("nothing-here.wav", False),
                        ("file://localhost/x.wav", True), ("file:///x.wav", True)):
            result = await play_result(http, gw, f"t{abs(hash(url))}", url)
            if ok:
                assert result["error"] is None and result["started"] and abs(result["duration"] - 300) <= 20
            else:
                # trackStart means audio: a play that never had any ends with trackEnd alone.
                assert result["error"] is not None and not result["started"] and result["duration"] == 0
    finally:
        await gw.stop()
