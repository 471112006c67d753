"""WebRTC calls in worker processes (webrtc.workers = 2): aiortc peers on loopback reach the workers'
own ICE candidates, the application's WebSocket stays on the front, which relays it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from protocol.codecs import Resampler
from tests.conftest import base_url, connect
from tests.e2e.test_cli_sessions import gateway_process  # noqa: F401 - the fixture
from tests.e2e.test_call_webrtc import LOOPBACK, peers, recent_rms  # noqa: F401 - peers: the fixture
from tests.support.poll import until
from tests.support.audio import tone
from tests.support.slow_client import flood_until_cut, hangup_reasons

SENTENCE = Path(__file__).resolve().parents[1] / "fixtures" / "asr" / "sentence_a.wav"   # "please call me back tomorrow morning"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child that has exited but is not reaped yet is a zombie: gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@pytest.fixture
async def worker_gateway(gateway_config):
    from transports.gateway import start_gateway

    gateways = []
    pids: list[int] = []

    async def make(**overrides):
        webrtc = {**LOOPBACK, "workers": 2, **overrides.pop("webrtc", {})}
        gw = await start_gateway(gateway_config(webrtc=webrtc, **overrides))
        gateways.append(gw)
        return gw

    async def seen(gw) -> list[dict]:
        workers = await figures(gw)
        pids.extend(w["pid"] for w in workers if w["pid"] is not None)
        return workers

    make.seen = seen
    try:
        yield make
    finally:
        for gw in gateways:
            await gw.stop()
        # every worker process this test saw is gone with its gateway
        for pid in pids:
            assert not pid_alive(pid), f"worker pid {pid} outlived its gateway"


async def figures(gw, headers=None) -> list[dict]:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url(gw)}/health", headers=headers) as resp:
            return (await resp.json())["workers"]


async def place(http, gw, peer, session_id, **option):
    client = await connect(http, gw, path="/call/webrtc", id=session_id)
    await client.send({"command": "invite", "option": {"offer": await peer.offer(), **option}})
    answer, = await client.wait_event("answer", timeout=10)
    await peer.answer(answer["sdp"])
    await peer.wait_connected()
    return client


def speech_loop() -> np.ndarray:
    """What the speaking peer plays, looped, at 48 kHz: a spoken sentence between silences."""
    with wave.open(str(SENTENCE)) as w:
        speech = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    pcm = np.concatenate([np.zeros(8000, dtype=np.int16), speech, np.zeros(24000, dtype=np.int16)])
    return Resampler(16000, 48000).process(pcm)


async def test_calls_spread_over_the_workers_and_work_end_to_end(worker_gateway, http, peers):
    gw = await worker_gateway()
    speaker, listener, third = peers(freq=0), peers(freq=440), peers(freq=440)
    speaker.tone.loop = speech_loop()
    a = await place(http, gw, speaker, "wk-a", vad={"type": "silero"}, asr={"provider": "pocketsphinx"})
    b = await place(http, gw, listener, "wk-b")
    workers = await worker_gateway.seen(gw)
    # the least-loaded worker takes each call: one each
    assert [w["calls"] for w in workers] == [1, 1] and all(w["ready"] for w in workers)
    assert len({w["pid"] for w in workers} | {os.getpid()}) == 3

    # both calls are listed, in both forms, from the front
    async with http.get(f"{base_url(gw)}/call/lists") as resp:
        listed = {c["id"]: c for c in (await resp.json())["calls"]}
    assert set(listed) == {"wk-a", "wk-b"} and {c["call_type"] for c in listed.values()} == {"webrtc"}
    assert listed["wk-a"]["option"]["asr"]["provider"] == "pocketsphinx"
    async with http.get(f"{base_url(gw)}/list") as resp:
        assert {c["id"] for c in (await resp.json())["active_calls"]} == {"wk-a", "wk-b"}

    # a tts on the worker's call is heard by its peer
    await b.send({"command": "tts", "text": "Hello from a worker process, this is a test.", "playId": "t1"})
    await b.wait_event("trackStart", count=2)
    await until(lambda: recent_rms(listener) > 300, timeout=10, what="the peer hears the tts")
    await b.wait_event("trackEnd", count=1, timeout=15)

    # VAD and ASR events of the speaking peer arrive through the front
    await a.wait_event("speaking", timeout=15)
    final = await a.wait_event("asrFinal", timeout=30)
    assert "tomorrow" in " ".join(e["text"] for e in final).lower()

    # kill reaches the worker that owns the call
    async with http.post(f"{base_url(gw)}/call/kill/wk-b") as resp:
        assert await resp.json() is True
    await b.wait_closed()
    hangup, = b.of("hangup")
    assert (hangup["reason"], hangup["initiator"]) == ("killed", "system")
    await listener.wait_state("closed")
    async with http.post(f"{base_url(gw)}/call/kill/nobody") as resp:
        assert resp.status == 404

    # the peer hangs up: its worker ends the call, the client reads why
    await speaker.pc.close()
    await a.wait_closed(10)
    hangup, = a.of("hangup")
    assert (hangup["reason"], hangup["initiator"]) == ("peer_closed", "callee")

    # the client hangs up: the worker closes the peer connection
    c = await place(http, gw, third, "wk-c")
    await c.send({"command": "hangup"})
    await c.wait_closed()
    assert c.of("hangup")[0]["reason"] == "hangup_command"
    await third.wait_state("closed")

    async with http.get(f"{base_url(gw)}/call/lists") as resp:
        assert (await resp.json()) == {"calls": []}
    workers = await figures(gw)
    assert [w["calls"] for w in workers] == [0, 0]
    async with http.get(f"{base_url(gw)}/metrics") as resp:
        text = await resp.text()
    assert 'activecall_worker_up{worker="0"} 1.0' in text and 'activecall_worker_calls{worker="1"} 0.0' in text
    # the speaking peer's silero VAD ran in its worker, and the front shows it
    vad = {m.group(1): float(m.group(2)) for m in
           re.finditer(r'^activecall_worker_vad_windows_total\{worker="(\d)"\} (\S+)$', text, re.M)}
    assert sorted(vad) == ["0", "1"] and max(vad.values()) > 50 and min(vad.values()) == 0
    assert 'activecall_worker_vad_windows_dropped_total{worker="0"} 0.0' in text


async def test_a_worker_killed_mid_call_ends_its_calls_and_is_restarted(worker_gateway, http, peers):
    gw = await worker_gateway()
    phones = [peers(freq=440) for _ in range(3)]
    clients = [await place(http, gw, peer, f"wk-{i}") for i, peer in enumerate(phones[:2])]
    before = await worker_gateway.seen(gw)
    victim = before[0]
    os.kill(victim["pid"], signal.SIGKILL)
    # exactly the call on that worker ends, with an error and a hangup the client can read
    await asyncio.wait({asyncio.ensure_future(c.wait_closed(10)) for c in clients},
                                 return_when=asyncio.FIRST_COMPLETED)
    lost = [c for c in clients if c._reader.done()]
    assert len(lost) == 1
    error, = lost[0].of("error")
    assert error["code"] == 500 and f"pid {victim['pid']}" in error["error"]
    hangup, = lost[0].of("hangup")
    assert (hangup["reason"], hangup["initiator"]) == ("media_failure", "system")
    survivor = clients[1 - clients.index(lost[0])]
    assert survivor.of("hangup") == []

    # the pool starts the worker again
    async def restarted() -> list[dict]:
        while True:
            workers = await worker_gateway.seen(gw)
            if workers[0]["ready"] and workers[0]["pid"] != victim["pid"]:
                return workers
            await asyncio.sleep(0.05)

    after = await asyncio.wait_for(restarted(), 20)
    assert after[0]["restarts"] == 1 and after[1]["pid"] == before[1]["pid"]
    assert (after[0]["lost_calls"], after[1]["lost_calls"]) == (1, 0)
    async with http.get(f"{base_url(gw)}/metrics") as resp:
        text = await resp.text()
    assert 'activecall_worker_restarts_total{worker="0"} 1.0' in text
    assert 'activecall_worker_calls_lost_total{worker="0"} 1.0' in text
    assert not pid_alive(victim["pid"])
    # the next call goes to the restarted worker (it has the fewest calls) and works
    c = await place(http, gw, phones[2], "wk-again")
    assert [w["calls"] for w in await figures(gw)] == [1, 1]
    async with http.get(f"{base_url(gw)}/call/lists") as resp:
        assert {x["id"] for x in (await resp.json())["calls"]} == {"wk-again", f"wk-{clients.index(survivor)}"}
    await c.send({"command": "hangup"})
    await c.wait_closed()


async def test_one_recording_name_is_written_by_one_call_across_workers(worker_gateway, http, peers, tmp_path):
    gw = await worker_gateway()
    first, second = peers(freq=440), peers(freq=440)
    recorder = {"recorderFile": "shared-name.wav"}
    a = await place(http, gw, first, "rec-a", recorder=recorder)
    b = await place(http, gw, second, "rec-b", recorder=recorder)
    # the two calls run in two worker processes
    assert [w["calls"] for w in await figures(gw)] == [1, 1]
    error, = await b.wait_event("error", timeout=10)
    assert error["sender"] == "recorder" and error["code"] == 400 and "another call" in error["error"]
    assert a.of("error") == []
    await a.send({"command": "hangup"})
    await a.wait_closed()
    await b.send({"command": "hangup"})
    await b.wait_closed()
    recording = tmp_path / "recorders" / "shared-name.wav"
    with wave.open(str(recording)) as w:
        assert w.getnchannels() == 2 and w.getnframes() > 0
    # its name is free again once its call has ended, in whichever worker the next call runs
    c = await place(http, gw, peers(freq=440), "rec-c", recorder=recorder)
    await c.send({"command": "hangup"})
    await c.wait_closed()
    assert c.of("error") == []
    assert list((tmp_path / "recorders" / ".claims").iterdir()) == []


async def test_a_relayed_client_meets_the_same_frame_limits_as_in_process(worker_gateway, http, peers):
    import aiohttp
    import json

    KiB = 1024
    gw = await worker_gateway(text_frame_bytes=64 * KiB, frame_close_bytes=256 * KiB)
    client = await place(http, gw, peers(freq=440), "frames")
    # over text_frame_bytes: an error, and the call goes on
    big = json.dumps({"command": "tts", "text": "a" * (100 * KiB)})
    await client.send(big)
    err, = await client.wait_event("error", timeout=10)
    assert err["code"] == 413 and f"{len(big)} bytes" in err["error"] and "(text_frame_bytes)" in err["error"]
    # text that is not UTF-8 reaches the worker as it was sent: a malformed command
    await client.ws.send_frame(b'{"command": "tts", "text": "\xff\xfe"}', aiohttp.WSMsgType.TEXT)
    err = (await client.wait_event("error", count=2, timeout=10))[-1]
    assert err["code"] == 400 and "not UTF-8" in err["error"]
    await client.send({"command": "tts", "text": "still here", "playId": "after"})
    await client.wait_event("trackEnd", timeout=15)
    assert client.of("hangup") == []
    # over frame_close_bytes: the front names the limit, then closes 1009; the worker's call ends
    await client.send(json.dumps({"command": "tts", "text": "b" * (300 * KiB)}))
    await client.wait_closed(timeout=10)
    err = client.of("error")[-1]
    assert err["code"] == 413 and f"{256 * KiB}-byte limit (frame_close_bytes)" in err["error"]
    assert client.ws.close_code == 1009

    async def calls_ended() -> bool:
        return [w["calls"] for w in await figures(gw)] == [0, 0]

    await until(calls_ended, timeout=10, what="the worker's call ended")


TOKEN_A, TOKEN_B, ADMIN = "a" * 20, "b" * 20, "c" * 20


async def test_tokens_and_ids_reach_the_workers(worker_gateway, http):
    gw = await worker_gateway(api_tokens=[TOKEN_A, TOKEN_B], admin_tokens=[ADMIN])
    a = await connect(http, gw, path="/call/webrtc", id="owned-a", token=TOKEN_A)
    b = await connect(http, gw, path="/call/webrtc", id="owned-b", token=TOKEN_B)
    url = base_url(gw)

    async def listed(token: str) -> set[str]:
        async with http.get(f"{url}/call/lists", headers={"Authorization": f"Bearer {token}"}) as resp:
            return {c["id"] for c in (await resp.json())["calls"]}

    deadline = asyncio.get_running_loop().time() + 5
    while await listed(ADMIN) != {"owned-a", "owned-b"}:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    assert await listed(TOKEN_A) == {"owned-a"} and await listed(TOKEN_B) == {"owned-b"}
    # the session id is the front's: a second connection with it is refused there
    dup = await connect(http, gw, path="/call/webrtc", id="owned-a", token=TOKEN_A)
    await dup.wait_closed()
    assert dup.of("error")[0]["code"] == 409
    # another token's call cannot be killed; its own can
    async with http.post(f"{url}/call/kill/owned-a", headers={"Authorization": f"Bearer {TOKEN_B}"}) as resp:
        assert resp.status == 403
    async with http.post(f"{url}/call/kill/owned-a", headers={"Authorization": f"Bearer {TOKEN_A}"}) as resp:
        assert await resp.json() is True
    await a.wait_closed()
    assert a.of("hangup")[0]["reason"] == "killed"
    await b.ws.close()
    await b.wait_closed()
    deadline = asyncio.get_running_loop().time() + 5
    while await listed(ADMIN):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    # a worker's socket is in a directory only this user can enter
    from actors import GetChild
    from transports.worker_pool import GetWorkers

    pool = await gw.ref.ask(GetChild("workers"), timeout=2)
    worker = (await pool.ask(GetWorkers(), timeout=2))[0]
    assert os.stat(os.path.dirname(worker["path"])).st_mode & 0o077 == 0


async def process_workers(http, url: str) -> list[dict]:
    async with http.get(f"{url}/health") as resp:
        return (await resp.json())["workers"]


async def wait_gone(pids: list[int], timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while any(pid_alive(pid) for pid in pids):
        assert asyncio.get_running_loop().time() < deadline, f"still running: {[p for p in pids if pid_alive(p)]}"
        await asyncio.sleep(0.05)


async def test_sigterm_drains_the_workers_calls_and_leaves_no_process(gateway_process, http, peers):
    gw = gateway_process(webrtc={**LOOPBACK, "workers": 2})
    phones = [peers(freq=440) for _ in range(2)]
    sockets = []
    for i, peer in enumerate(phones):
        client = await connect_url(http, f"{gw.url}/call/webrtc?id=drain-{i}")
        await client.send({"command": "invite", "option": {"offer": await peer.offer()}})
        answer, = await client.wait_event("answer", timeout=10)
        await peer.answer(answer["sdp"])
        await peer.wait_connected()
        sockets.append(client)
    pids = [w["pid"] for w in await process_workers(http, gw.url)]
    assert len(set(pids)) == 2 and all(pid_alive(p) for p in pids)
    gw.proc.send_signal(signal.SIGTERM)
    for client in sockets:
        await client.wait_closed(10)
        hangup, = client.of("hangup")
        assert (hangup["reason"], hangup["initiator"]) == ("shutdown", "system")
    assert await asyncio.to_thread(gw.proc.wait, 15) == 0
    await wait_gone(pids, 5)


async def test_workers_end_when_their_front_is_killed(gateway_process, http):
    gw = gateway_process(webrtc={**LOOPBACK, "workers": 2})
    pids = [w["pid"] for w in await process_workers(http, gw.url)]
    runtime = {os.path.dirname(worker_socket(pid)) for pid in pids}
    assert len(runtime) == 1 and os.path.isdir(runtime.copy().pop())
    gw.proc.kill()
    await asyncio.to_thread(gw.proc.wait, 5)
    # each worker sees its stdin (a pipe from the front) close and drains by itself, and the
    # front's runtime directory (the sockets, the workers' config) goes with the last of them
    await wait_gone(pids, 15)
    assert not os.path.exists(runtime.pop())


def worker_socket(pid: int) -> str:
    """The socket a worker process was started on (its --worker argument)."""
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        args = fh.read().decode().split("\0")
    return args[args.index("--worker") + 1]


async def connect_url(http, url: str):
    from tests.conftest import CallClient

    client = CallClient(await http.ws_connect(url))
    client.start()
    return client


async def test_a_relayed_client_that_never_reads_is_cut_as_in_process(worker_gateway, tmp_path):
    """The front's Outbox bounds what waits for the client: past event_queue_bytes the client is
    closed with the same reason, and the call on the worker hangs up client_too_slow."""
    import aiohttp

    gw = await worker_gateway(event_queue_bytes=2 << 20)
    url = base_url(gw)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{url}/call/webrtc?id=slow", max_msg_size=0)
        close_code, close_reason, last = await flood_until_cut(http, url, ws)
        assert close_code in (1008, 1006), close_code
        # the reason comes with the CLOSE message (a send of ours that met the closing socket
        # leaves only the code)
        if close_code == 1008 and last.type == aiohttp.WSMsgType.CLOSE:
            assert "client too slow" in close_reason, (last, ws.close_code, ws.exception())
    # the worker wrote the call's dump: its hangup says why
    dump = tmp_path / "dumps" / "slow.events.jsonl"
    await until(lambda: dump.exists() and '"hangup' in dump.read_text(), timeout=5, what="a hangup in the dump")
    reasons = hangup_reasons(dump)
    assert reasons and reasons[-1] == "client_too_slow"


async def test_past_its_restart_limit_the_pool_is_restarted_by_the_gateway(worker_gateway, http):
    from actors import GetChild, GetRestartCounts

    gw = await worker_gateway(webrtc={"worker_restarts": 0})
    pool = await gw.ref.ask(GetChild("workers"), timeout=2)
    before = await worker_gateway.seen(gw)
    os.kill(before[1]["pid"], signal.SIGKILL)

    async def replaced() -> list[dict]:
        while True:
            now = await gw.ref.ask(GetChild("workers"), timeout=2)
            if now is not None and now is not pool:
                workers = await worker_gateway.seen(gw)
                if all(w["ready"] for w in workers):
                    return workers
            await asyncio.sleep(0.05)

    after = await asyncio.wait_for(replaced(), 20)
    # a new pool with new workers: the one that stayed up was stopped with its pool, not orphaned
    assert {w["pid"] for w in after}.isdisjoint(w["pid"] for w in before)
    assert (await gw.ref.ask(GetRestartCounts(), timeout=2))["workers"] == 1
    assert not any(pid_alive(w["pid"]) for w in before)
    client = await connect(http, gw, path="/call/webrtc", id="after-restart")
    # The connection is open before the front has placed it on a worker: poll the listing.
    deadline = time.monotonic() + 10
    while True:
        async with http.get(f"{base_url(gw)}/call/lists") as resp:
            listed = [c["id"] for c in (await resp.json())["calls"]]
        if listed or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert listed == ["after-restart"]
    await client.ws.close()
