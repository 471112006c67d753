"""Files a client makes the gateway write (event dumps, recordings), attacked through the server."""

from __future__ import annotations

import asyncio
import json
import os

from tests.conftest import connect
from transports.gateway import start_gateway


async def wait_for(predicate, what: str, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_symlink_planted_at_the_dump_path_is_not_followed(gateway, http, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    (tmp_path / "dumps").mkdir()
    (tmp_path / "dumps" / "evil.events.jsonl").symlink_to(outside)
    client = await connect(http, gateway, id="evil")
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    await client.send({"command": "hangup"})
    await client.wait_closed()
    await client.wait_event("hangup")
    # A dump of another session is written, so the writer has passed the planted link by now.
    other = await connect(http, gateway, id="honest")
    await other.send({"command": "hangup"})
    await other.wait_closed()
    honest = tmp_path / "dumps" / "honest.events.jsonl"
    await wait_for(lambda: honest.exists() and "hangup" in honest.read_text(), "the honest dump")
    assert outside.read_text() == "precious\n"
    assert os.path.islink(tmp_path / "dumps" / "evil.events.jsonl")


async def test_a_dump_stops_at_its_budget_with_a_last_line(gateway_config, http, tmp_path):
    gw = await start_gateway(gateway_config(dump={"max_bytes": 300_000}))
    try:
        client = await connect(http, gw, id="flood")
        frame = "{" + '"\\u0001' * 15_000           # malformed frames that grow when escaped
        for _ in range(5):
            await client.send(frame)
        errors = await client.wait_event("error", count=5, timeout=10)
        assert all(e["code"] == 400 for e in errors)   # the call answers every bad command
        await client.send({"command": "invite", "option": {"codec": "pcm"}})
        await client.wait_event("answer")               # and goes on
        await client.send({"command": "hangup"})
        await client.wait_closed()
    finally:
        await gw.stop()                                   # the writer has written all it queued
    path = tmp_path / "dumps" / "flood.events.jsonl"
    data = path.read_bytes()
    lines = [json.loads(line) for line in data.decode().splitlines()]
    last = lines[-1]
    assert last["type"] == "dump" and "budget of 300000 bytes" in last["content"]
    assert len(data) <= 300_000 + 300
    assert lines[0]["type"] == "command"


async def talk(client, freq: float, seconds: float) -> None:
    from tests.support.audio import frames, tone

    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, frame in enumerate(frames(tone(freq, seconds, 16000), 320)):
        await client.ws.send_bytes(frame.tobytes())
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))


async def test_a_second_call_cannot_record_into_a_live_recording(gateway, http, tmp_path):
    import wave

    import numpy as np

    from tests.support.audio import dominant_frequency

    recorder = {"recorderFile": "shared.wav", "samplerate": 16000}
    first = await connect(http, gateway, id="first")
    await first.send({"command": "invite", "option": {"codec": "pcm", "recorder": recorder}})
    await first.wait_event("answer")
    second = await connect(http, gateway, id="second")
    await second.send({"command": "invite", "option": {"codec": "pcm", "recorder": recorder}})
    err, = await second.wait_event("error")
    assert err["sender"] == "recorder" and err["code"] == 400
    assert "being recorded by another call" in err["error"]
    # Segment names of the live recording are the same recording.
    third = await connect(http, gateway, id="third")
    await third.send({"command": "invite", "option": {"codec": "pcm", "recorder": {"recorderFile": "shared.part1"}}})
    err, = await third.wait_event("error")
    assert "being recorded by another call" in err["error"]
    await third.ws.close()
    assert second.of("answer")                                   # the call itself goes on, unrecorded
    await asyncio.gather(talk(first, 700, 1.0), talk(second, 1200, 1.0))
    await first.send({"command": "hangup"})
    await second.send({"command": "hangup"})
    await first.wait_closed()
    await second.wait_closed()
    with wave.open(str(tmp_path / "recorders" / "shared.wav")) as w:
        left = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)[:, 0]
    voiced = np.flatnonzero(np.abs(left) > 2000)
    onset, end = int(voiced[0]), int(voiced[-1])
    assert 0.9 * 16000 < end - onset < 1.1 * 16000                # one second of one caller, not two
    assert abs(dominant_frequency(left[onset:end], 16000) - 700) < 10
    # Once the first call has ended, the name is free again.
    again = await connect(http, gateway, id="again")
    await again.send({"command": "invite", "option": {"codec": "pcm", "recorder": recorder}})
    await again.wait_event("answer")
    await asyncio.sleep(0.3)    # a window in which the recorder's refusal would show
    assert again.of("error") == []
    await again.ws.close()


async def test_unusable_recorder_paths_are_refused_at_once(gateway, http, tmp_path):
    root = tmp_path / "recorders"
    (root / "adir.wav").mkdir(parents=True)
    (root / "afile").write_text("x")
    for i, (name, why) in enumerate((("adir.wav", "names a directory"), ("a" * 300, "longer than 255 bytes"),
                                     ("afile/x.wav", "is not a directory"))):
        client = await connect(http, gateway, id=f"bad{i}")
        started = asyncio.get_running_loop().time()
        await client.send({"command": "invite", "option": {"codec": "pcm", "recorder": {"recorderFile": name}}})
        err, = await client.wait_event("error", timeout=2)
        # Refused up front with 400, not after the recorder's restart budget.
        assert asyncio.get_running_loop().time() - started < 1.0
        assert err["sender"] == "recorder" and err["code"] == 400 and why in err["error"], err
        await asyncio.sleep(0.3)    # a window in which a retry's second error would show
        assert len(client.of("error")) == 1 and client.of("answer")
        await client.ws.close()
