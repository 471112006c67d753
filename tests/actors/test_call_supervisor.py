"""CallSupervisor: admission limit, session ids, temporary calls and a concurrent drain."""

from __future__ import annotations

import time

import pytest

from actors import (
    ActorRef,
    AdmissionRefused,
    CallStartFailed,
    CallSupervisor,
    DuplicateSession,
    GetCall,
    ListCalls,
    ReplyError,
    StartCall,
)
from tests.actors.support import Worker


def call(session_id: str, log: list[str], hang_on_stop: float = 0.0, shutdown: float = 5.0) -> StartCall:
    def start(parent: ActorRef) -> ActorRef:
        return Worker.start(session_id, log, hang_on_stop, parent=parent, name=session_id)

    return StartCall(session_id, start, shutdown=shutdown)


async def test_admission_limit_refuses_then_a_freed_slot_admits() -> None:
    log: list[str] = []
    sup = CallSupervisor.start(2)
    s1 = await sup.ask(call("s1", log))
    await sup.ask(call("s2", log))
    with pytest.raises(AdmissionRefused, match=r"max_calls \(2\) reached") as refused:
        await sup.ask(call("s3", log))
    assert isinstance(refused.value, ReplyError) and sup.is_alive()
    assert await sup.ask(ListCalls()) == ["s1", "s2"]
    s1.tell("exit")  # type: ignore[attr-defined]  # the call hangs up
    await s1.wait_stopped()  # type: ignore[attr-defined]
    s3 = await sup.ask(call("s3", log))
    assert await s3.ask("ping") == "s3"  # type: ignore[attr-defined]
    assert await sup.ask(ListCalls()) == ["s2", "s3"]
    assert await sup.ask(GetCall("s3")) is s3
    assert await sup.ask(GetCall("s1")) is None
    await sup.stop()


async def test_a_duplicate_session_id_is_refused() -> None:
    log: list[str] = []
    sup = CallSupervisor.start(10)
    first = await sup.ask(call("dup", log))
    with pytest.raises(DuplicateSession, match="'dup' already exists"):
        await sup.ask(call("dup", log))
    assert await sup.ask(GetCall("dup")) is first
    assert log == ["start:dup"]
    await sup.stop()


async def test_a_crashed_call_is_removed_and_not_restarted() -> None:
    log: list[str] = []
    sup = CallSupervisor.start(10)
    crashing = await sup.ask(call("c1", log))
    await sup.ask(call("c2", log))
    crashing.tell("crash")  # type: ignore[attr-defined]
    await crashing.wait_stopped()  # type: ignore[attr-defined]
    assert await sup.ask(ListCalls()) == ["c2"]
    assert await sup.ask(GetCall("c1")) is None
    assert log.count("start:c1") == 1
    assert sup.is_alive()
    await sup.stop()


async def test_a_start_function_that_raises_does_not_take_a_slot_or_the_supervisor() -> None:
    def broken(parent: ActorRef) -> ActorRef:
        raise OSError("no ports left")

    sup = CallSupervisor.start(1)
    with pytest.raises(CallStartFailed, match="no ports left") as failed:
        await sup.ask(StartCall("x", broken))
    assert isinstance(failed.value.__cause__, OSError)
    assert await sup.ask(ListCalls()) == []
    assert await sup.ask(call("y", [])) is not None
    await sup.stop()


async def test_drain_stops_calls_concurrently_each_within_its_timeout() -> None:
    log: list[str] = []
    sup = CallSupervisor.start(200)
    for n in range(100):
        await sup.ask(call(f"slow{n}", log, hang_on_stop=0.2))
    for n in range(100):
        await sup.ask(call(f"stuck{n}", log, hang_on_stop=60.0, shutdown=0.3))
    started = time.monotonic()
    assert await sup.stop(timeout=5.0)
    elapsed = time.monotonic() - started
    print(f"drain of 200 calls (100 x 0.2 s on_stop, 100 stuck with 0.3 s timeout): {elapsed:.3f} s")
    assert 0.3 <= elapsed < 1.5  # one after another it would be 100 x 0.2 + 100 x 0.3 = 50 s
    assert log.count("stopped:slow0") == 1
    assert sum(entry.startswith("stopped:") for entry in log) == 200  # every finally ran


def test_max_calls_cannot_be_negative() -> None:
    with pytest.raises(ValueError):
        CallSupervisor(-1)


async def test_owners_listing_claims_and_the_exit_hook() -> None:
    from dataclasses import replace

    from actors.call_supervisor import GetAdmissions, NotYourCall
    from actors.messages import Owner

    log: list[str] = []
    ended: list[str] = []
    alice, bob, admin = Owner("a"), Owner("b"), Owner("root", admin=True)
    sup = CallSupervisor.start(3, ended.append)
    a1 = await sup.ask(replace(call("a1", log), owner=alice))
    await sup.ask(replace(call("b1", log), owner=bob))
    incoming = await sup.ask(call("in", log))            # made by the gateway: nobody's yet
    assert await sup.ask(ListCalls(alice)) == ["a1"]
    assert await sup.ask(ListCalls(admin)) == ["a1", "b1", "in"]
    with pytest.raises(NotYourCall):
        await sup.ask(GetCall("a1", owner=bob))
    with pytest.raises(NotYourCall):
        await sup.ask(GetCall("a1", for_call="b1"))       # bridge from bob's call
    assert await sup.ask(GetCall("a1", owner=admin)) is a1
    with pytest.raises(NotYourCall):
        await sup.ask(GetCall("in", owner=bob))            # not claimed: only attaching claims it
    assert await sup.ask(GetCall("in", owner=bob, claim=True)) is incoming
    with pytest.raises(NotYourCall):
        await sup.ask(GetCall("in", owner=alice, claim=True))
    assert await sup.ask(ListCalls(bob)) == ["b1", "in"]
    with pytest.raises(AdmissionRefused):
        await sup.ask(call("x", log))
    assert (await sup.ask(GetAdmissions()))["refused"] == 1
    a1.tell("exit")  # type: ignore[attr-defined]
    await a1.wait_stopped()  # type: ignore[attr-defined]
    assert await sup.ask(ListCalls(alice)) == [] and ended == ["a1"]
    await sup.stop()
    assert sorted(ended) == ["a1", "b1", "in"]
