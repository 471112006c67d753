"""Engines for the local provider servers: pocketsphinx to hear, espeak-ng to speak."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from actors.engines import EngineHost

from .support import Hearing, Speaking


@pytest.fixture
async def server_engines() -> AsyncIterator[EngineHost]:
    host = EngineHost()
    try:
        yield host
    finally:
        await host.stop()


@pytest.fixture
def hearing(server_engines: EngineHost) -> Hearing:
    return Hearing(server_engines)


@pytest.fixture
def speaking(server_engines: EngineHost) -> Speaking:
    return Speaking(server_engines)
