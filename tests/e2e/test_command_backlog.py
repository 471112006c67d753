"""A client that sends commands faster than its call handles them fills its own TCP window, not the
call's mailbox: the connection stops reading past `command_queue` commands (or
`command_queue_bytes`) ahead of the call, and nothing is lost."""

from __future__ import annotations

import json

import pytest

from tests.conftest import connect
from tests.e2e.test_call_ws import call_ref
from transports.gateway import start_gateway


@pytest.mark.parametrize(("limits", "bound"), [({"command_queue": 16}, 16),
                                                ({"command_queue_bytes": 4096}, 4096 // 40 + 1)])
async def test_a_burst_of_commands_is_held_back_at_the_socket(gateway_config, http, limits, bound):
    gw = await start_gateway(gateway_config(**limits))
    try:
        client = await connect(http, gw, id="burst")
        await client.send({"command": "invite", "option": {"codec": "pcm"}})
        await client.wait_event("answer")
        # 500 commands at once, each a round trip to the call's track (40 or 42 bytes each).
        for i in range(500):
            await client.send(json.dumps({"command": "mute" if i % 2 else "unmute", "trackId": "burst"}))
        await client.send({"command": "custom", "data": "last"})
        await client.wait_event("custom", timeout=20)
        stats = (await call_ref(gw, "burst")).mailbox_stats()
        # Every command arrived (none refused, none lost) and never more than the bound waited.
        assert client.of("error") == []
        assert stats.received >= 501
        assert stats.normal_high_water <= bound + 1, stats
        await client.send({"command": "hangup"})
        await client.wait_closed()
        assert client.events[-1]["event"] == "hangup"
    finally:
        await gw.stop()
