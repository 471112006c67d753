"""Waiting for a bridge between two calls to be made or undone: no event marks either, so the
test listens for it, as a caller would."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from tests.support.audio import frames, rms, tone

WINDOW = 10     # frames (200 ms): longer than a gap in a bridge that is up


def loud_frames(client: Any, since: int = 0) -> list[np.ndarray]:
    """The frames `client` received after its `since`-th that carry sound."""
    return [f for f in (np.frombuffer(x, dtype="<i2") for x in client.audio[since:]) if rms(f) > 1000]


async def until_heard(speaker: Any, listener: Any, hears: bool = True, hz: float = 700.0,
                      timeout: float = 3.0) -> None:
    """`speaker` sends a tone in real time until `listener`'s last frames have it (with `hears`
    False: until they have none of it); fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, frame in enumerate(frames(tone(hz, timeout, 16000), 320)):
        await speaker.ws.send_bytes(frame.tobytes())
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
        if i >= WINDOW and bool(loud_frames(listener, len(listener.audio) - WINDOW)) == hears:
            return
    raise AssertionError(f"the listener {'never heard' if hears else 'still hears'} the speaker within {timeout} s")
