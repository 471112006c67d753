"""A crashed TTS provider restarts without dropping the call: a Call actor driven through in-memory
pipes, with the real espeak-ng engine behind a wrapper that fails on demand (fault injection)."""

from __future__ import annotations

import pytest

from actors import AudioPipe, CallSupervisor, GetChild, StartCall
from actors.call import Call, CallSettings
from actors.clock import MediaClock
from actors.engines import EngineHost
from actors.messages import ClientCommand
from actors.services import CallServices, ProviderError
from actors.supervisor import Backoff, GetRestartCounts
from actors.messages import AppConnection
from transports.ws_leg import WebSocketLeg
from protocol import api
from transports.providers.espeak import make_espeak_factory
from tests.support.poll import until


class Failing:
    """Wraps a real provider; the first `failures` syntheses fail part-way, as a dropped
    provider connection would."""

    name = "flaky"

    def __init__(self, inner, state: dict) -> None:
        self.inner, self.state = inner, state

    async def synthesize(self, request):
        chunks = 0
        async for chunk in self.inner.synthesize(request):
            yield chunk
            chunks += 1
            if chunks == 2 and self.state["failures"] > 0:
                self.state["failures"] -= 1
                raise ProviderError("connection reset by provider")

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
async def engines():
    host = EngineHost()
    yield host
    await host.stop()


async def start_call(engines, failures: int, restarts: int = 3):
    events: list = []
    state = {"failures": failures}
    espeak = make_espeak_factory(engines)
    services = CallServices(tts={"flaky": lambda option: Failing(espeak(option), state)}, default_tts="flaky")
    clock = MediaClock()
    sent: list[bytes] = []
    inbound = AudioPipe(50)
    settings = CallSettings(backoff=Backoff(initial=0.05, factor=2.0, maximum=0.2), provider_restarts=restarts)
    sup = CallSupervisor.start(10)
    call = await sup.ask(StartCall("c1", lambda parent: Call.start(
        "c1", leg=lambda context: WebSocketLeg(context, inbound, sent.append), clock=clock,
        settings=settings, services=services, app=AppConnection(events.append, lambda code=1000: None),
        parent=parent)), timeout=2)
    call.tell(ClientCommand(api.Invite(option=api.CallOption(codec="pcm"))))
    return sup, call, events, clock


def of(events, cls):
    return [e for e in events if isinstance(e, cls)]


async def tts_restarts(call) -> int:
    return (await call.ask(GetRestartCounts(), timeout=2)).get("tts", 0)


async def test_a_synthesis_cut_half_way_is_resumed_and_the_call_goes_on(engines):
    sup, call, events, clock = await start_call(engines, failures=1)
    try:
        call.tell(ClientCommand(api.Tts(text="this sentence fails half way", play_id="one")))
        await until(lambda: of(events, api.ErrorEvent), timeout=10)
        err, = of(events, api.ErrorEvent)
        assert err.sender == "tts" and "connection reset" in err.error and "resuming" in err.error
        await until(lambda: any(e.play_id == "one" for e in of(events, api.TrackEndEvent)), timeout=10)
        one = [e for e in of(events, api.TrackEndEvent) if e.play_id == "one"][0]
        reconnect, = [m for m in of(events, api.MetricsEvent) if m.key == "reconnect.tts.flaky"]
        assert reconnect.data["attempt"] == 1 and reconnect.data["playId"] == "one"
        # The whole sentence was heard: as long as the same sentence spoken without a cut.
        call.tell(ClientCommand(api.Tts(text="this sentence fails half way", play_id="two")))
        await until(lambda: any(e.play_id == "two" for e in of(events, api.TrackEndEvent)), timeout=10)
        two = [e for e in of(events, api.TrackEndEvent) if e.play_id == "two"][0]
        assert abs(one.duration - two.duration) <= 40, (one.duration, two.duration)
        counts = await call.ask(GetRestartCounts(), timeout=2)
        assert counts.get("tts", 0) == 0            # resumed inside the Tts actor, not restarted
        assert call.is_alive() and not of(events, api.HangupEvent)
    finally:
        await sup.stop()
        await clock.stop()


async def test_a_provider_failing_past_its_resume_budget_restarts_the_tts_child(engines):
    sup, call, events, clock = await start_call(engines, failures=4)     # 1 try + 3 resumptions
    try:
        call.tell(ClientCommand(api.Tts(text="this sentence fails half way", play_id="one")))
        await until(lambda: any(e.play_id == "one" for e in of(events, api.TrackEndEvent)), timeout=10)
        await until(lambda: len(of(events, api.ErrorEvent)) == 4)
        assert "resuming" not in of(events, api.ErrorEvent)[-1].error
        assert await until(lambda: tts_restarts(call), timeout=5, what="the tts child restarted") == 1
        call.tell(ClientCommand(api.Tts(text="and this one is spoken in full", play_id="two")))
        await until(lambda: any(e.play_id == "two" for e in of(events, api.TrackEndEvent)), timeout=10)
        two = [e for e in of(events, api.TrackEndEvent) if e.play_id == "two"][0]
        assert two.duration > 1000
        assert call.is_alive() and not of(events, api.HangupEvent)
    finally:
        await sup.stop()
        await clock.stop()


async def test_past_its_restart_limit_tts_gives_up_and_the_call_goes_on(engines):
    sup, call, events, clock = await start_call(engines, failures=100, restarts=1)
    try:
        for i in range(2):
            # Each synthesis fails past its resumptions (about 1.4 s of backoff) and fails the child.
            call.tell(ClientCommand(api.Tts(text="this sentence fails half way", play_id=f"p{i}")))
            await until(lambda: any(e.play_id == f"p{i}" for e in of(events, api.TrackEndEvent)), timeout=10)
            if i == 0:      # the second sentence goes to the restarted child
                await until(lambda: tts_restarts(call), timeout=5, what="the tts child restarted")
        await until(lambda: any("gave up" in e.error for e in of(events, api.ErrorEvent)), timeout=10)
        assert await call.ask(GetChild("tts"), timeout=2) is None
        call.tell(ClientCommand(api.Tts(text="hello", play_id="late")))
        await until(lambda: any("unavailable" in e.error for e in of(events, api.ErrorEvent)), timeout=10)
        assert call.is_alive() and not of(events, api.HangupEvent)
    finally:
        await sup.stop()
        await clock.stop()
