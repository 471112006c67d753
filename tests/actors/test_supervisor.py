"""Supervision: restart types, strategies, intensity, escalation, backoff and shutdown."""

from __future__ import annotations

import asyncio
import time

import pytest

from actors import (
    ActorRef,
    Backoff,
    ChildExited,
    ChildSpec,
    ChildStartFailed,
    DuplicateChild,
    GetChild,
    GetRestartCounts,
    Restart,
    RestartLimitExceeded,
    StartChild,
    Strategy,
    Supervisor,
    TerminateChild,
)
from tests.actors.support import Parent, RecordingSupervisor, Worker, eventually, worker_spec


async def child_of(sup: ActorRef, id: str) -> ActorRef | None:
    return await sup.ask(GetChild(id))  # type: ignore[return-value]


async def end_child(child: ActorRef, how: str) -> None:
    """End a child and wait until it is gone; its ChildExited is then already queued at the parent."""
    if how == "shutdown":
        await child.stop()
    else:
        child.tell("crash" if how == "failure" else "exit")
        await child.wait_stopped()


async def restarted(sup: ActorRef, id: str, old: ActorRef, timeout: float = 2.0) -> ActorRef:
    """Wait until the supervisor shows a new, live ref for ``id``."""
    deadline = time.monotonic() + timeout
    while True:
        ref = await child_of(sup, id)
        if ref is not None and ref is not old:
            return ref
        if time.monotonic() > deadline:
            raise AssertionError(f"{id} not restarted within {timeout} s")
        await asyncio.sleep(0.002)


async def test_children_start_in_order_and_stop_in_reverse_order() -> None:
    log: list[str] = []
    sup = Supervisor.start([worker_spec(n, log) for n in "abc"])
    assert await (await child_of(sup, "c")).ask("ping") == "c"  # type: ignore[union-attr]
    assert log == ["start:a", "start:b", "start:c"]
    assert await sup.stop()
    assert log[3:] == ["stop:c", "stopped:c", "stop:b", "stopped:b", "stop:a", "stopped:a"]


@pytest.mark.parametrize(
    ("restart", "how", "restarts", "listed"),
    [
        (Restart.PERMANENT, "normal", 1, True),
        (Restart.PERMANENT, "failure", 1, True),
        (Restart.PERMANENT, "shutdown", 1, True),
        (Restart.TRANSIENT, "normal", 0, True),
        (Restart.TRANSIENT, "failure", 1, True),
        (Restart.TRANSIENT, "shutdown", 0, True),
        (Restart.TEMPORARY, "normal", None, False),
        (Restart.TEMPORARY, "failure", None, False),
        (Restart.TEMPORARY, "shutdown", None, False),
    ],
)
async def test_restart_type_decides_on_each_exit_reason(
    restart: Restart, how: str, restarts: int | None, listed: bool
) -> None:
    log: list[str] = []
    sup = Supervisor.start([worker_spec("w", log, restart=restart), worker_spec("other", log)])
    child = await child_of(sup, "w")
    assert child is not None
    await end_child(child, how)
    if restarts:
        new = await restarted(sup, "w", child)
        assert await new.ask("ping") == "w"
    counts = await sup.ask(GetRestartCounts())
    assert counts.get("w") == restarts  # type: ignore[union-attr]
    assert ("w" in counts) is listed  # type: ignore[operator]
    assert counts["other"] == 0  # type: ignore[index]
    if not restarts:
        assert await child_of(sup, "w") is None
    assert log.count("start:w") == 1 + (restarts or 0)
    await sup.stop()


async def test_one_for_one_restarts_only_the_child_that_ended() -> None:
    log: list[str] = []
    sup = Supervisor.start([worker_spec(n, log) for n in "abc"])
    before = {n: await child_of(sup, n) for n in "abc"}
    log.clear()
    await end_child(before["b"], "failure")  # type: ignore[arg-type]
    await restarted(sup, "b", before["b"])  # type: ignore[arg-type]
    assert log == ["failed:b", "start:b"]
    assert await child_of(sup, "a") is before["a"] and await child_of(sup, "c") is before["c"]
    assert await sup.ask(GetRestartCounts()) == {"a": 0, "b": 1, "c": 0}
    await sup.stop()


async def test_rest_for_one_restarts_the_child_and_those_started_after_it_in_order() -> None:
    log: list[str] = []
    specs = [worker_spec(n, log) for n in "abcd"]
    sup = Supervisor.start(specs, strategy=Strategy.REST_FOR_ONE)
    before = {n: await child_of(sup, n) for n in "abcd"}
    log.clear()
    await end_child(before["b"], "failure")  # type: ignore[arg-type]
    await restarted(sup, "d", before["d"])  # type: ignore[arg-type]
    assert log == [
        "failed:b",
        "stop:d", "stopped:d", "stop:c", "stopped:c",  # later siblings, in reverse order
        "start:b", "start:c", "start:d",  # then all of them again, in start order
    ]  # fmt: skip
    assert await child_of(sup, "a") is before["a"]
    assert await sup.ask(GetRestartCounts()) == {"a": 0, "b": 1, "c": 1, "d": 1}
    await sup.stop()


async def test_rest_for_one_drops_a_temporary_sibling_instead_of_restarting_it() -> None:
    log: list[str] = []
    specs = [worker_spec("a", log), worker_spec("t", log, restart=Restart.TEMPORARY), worker_spec("c", log)]
    sup = Supervisor.start(specs, strategy=Strategy.REST_FOR_ONE)
    a = await child_of(sup, "a")
    c = await child_of(sup, "c")
    await end_child(a, "failure")  # type: ignore[arg-type]
    await restarted(sup, "c", c)  # type: ignore[arg-type]
    assert await sup.ask(GetRestartCounts()) == {"a": 1, "c": 1}
    assert log.count("start:t") == 1
    await sup.stop()


async def test_past_intensity_the_supervisor_stops_children_in_reverse_and_fails() -> None:
    log: list[str] = []
    exits: list[ChildExited] = []
    parent = Parent.start(exits)
    sup = Supervisor.start([worker_spec(n, log) for n in "abc"], intensity=2, period=5.0, parent=parent)
    for _ in range(2):
        c = await child_of(sup, "c")
        await end_child(c, "failure")  # type: ignore[arg-type]
        await restarted(sup, "c", c)  # type: ignore[arg-type]
    log.clear()
    await end_child(await child_of(sup, "c"), "failure")  # type: ignore[arg-type]
    await sup.wait_stopped()
    assert log == ["failed:c", "stop:b", "stopped:b", "stop:a", "stopped:a"]
    assert sup.exit is not None and sup.exit.reason == "failure"
    assert isinstance(sup.exit.error, RestartLimitExceeded)
    assert "'c' went past 2 restarts in 5.0 s" in str(sup.exit.error)
    await eventually(lambda: len(exits) == 1)
    assert exits[0].ref is sup and exits[0].reason == "failure"
    await parent.stop()


async def test_escalate_false_gives_the_child_up_and_the_supervisor_goes_on() -> None:
    log: list[str] = []
    events: list[tuple] = []
    specs = [worker_spec("a", log), worker_spec("asr", log, escalate=False)]
    sup = RecordingSupervisor.start(specs, events, intensity=1, period=5.0)
    asr = await child_of(sup, "asr")
    await end_child(asr, "failure")  # type: ignore[arg-type]
    asr = await restarted(sup, "asr", asr)  # type: ignore[arg-type]
    await end_child(asr, "failure")
    await eventually(lambda: any(e[0] == "gave_up" for e in events))
    kind, id, error = events[-1]
    assert (kind, id) == ("gave_up", "asr") and isinstance(error, RuntimeError)
    assert sup.is_alive()
    assert await child_of(sup, "asr") is None
    assert await (await child_of(sup, "a")).ask("ping") == "a"  # type: ignore[union-attr]
    assert await sup.ask(GetRestartCounts()) == {"a": 0, "asr": 1}
    await sup.stop()


async def test_a_child_with_its_own_limit_does_not_use_up_the_supervisors_budget() -> None:
    log: list[str] = []
    specs = [worker_spec("flappy", log, intensity=5, period=5.0), worker_spec("b", log)]
    sup = Supervisor.start(specs, intensity=1, period=5.0)
    for _ in range(4):
        child = await child_of(sup, "flappy")
        await end_child(child, "failure")  # type: ignore[arg-type]
        await restarted(sup, "flappy", child)  # type: ignore[arg-type]
    b = await child_of(sup, "b")
    await end_child(b, "failure")  # type: ignore[arg-type]
    await restarted(sup, "b", b)  # type: ignore[arg-type]
    assert sup.is_alive()
    assert await sup.ask(GetRestartCounts()) == {"flappy": 4, "b": 1}
    await sup.stop()


async def test_restart_window_slides() -> None:
    log: list[str] = []
    sup = Supervisor.start([worker_spec("w", log)], intensity=1, period=0.06)
    for _ in range(3):
        child = await child_of(sup, "w")
        await end_child(child, "failure")  # type: ignore[arg-type]
        await restarted(sup, "w", child)  # type: ignore[arg-type]
        await asyncio.sleep(0.08)  # older restarts leave the window
    assert sup.is_alive()
    await sup.stop()


async def test_a_start_that_keeps_raising_on_restart_escalates() -> None:
    starts: list[int] = []

    def start(parent: ActorRef) -> ActorRef:
        starts.append(1)
        if len(starts) > 1:
            raise ConnectionRefusedError("provider down")
        return Worker.start("w", [], parent=parent)

    sup = Supervisor.start([ChildSpec("w", start)], intensity=2, period=5.0)
    await end_child(await child_of(sup, "w"), "failure")  # type: ignore[arg-type]
    await sup.wait_stopped()
    assert len(starts) == 3  # the first start and the two restarts allowed; a third is refused
    assert sup.exit is not None and isinstance(sup.exit.error, RestartLimitExceeded)
    assert isinstance(sup.exit.error.__cause__, ConnectionRefusedError)


async def test_a_failing_initial_start_stops_the_children_already_started_and_fails() -> None:
    log: list[str] = []

    def broken(parent: ActorRef) -> ActorRef:
        raise ValueError("bad config")

    sup = Supervisor.start([worker_spec("a", log), worker_spec("b", log), ChildSpec("c", broken)])
    await sup.wait_stopped()
    assert sup.exit is not None and isinstance(sup.exit.error, ValueError)
    assert log == ["start:a", "start:b", "stop:b", "stopped:b", "stop:a", "stopped:a"]


async def test_backoff_delays_grow_and_the_supervisor_answers_during_them() -> None:
    log: list[str] = []
    events: list[tuple] = []
    backoff = Backoff(initial=0.05, factor=2.0, maximum=0.25)
    spec = worker_spec("asr", log, backoff=backoff, intensity=10, period=10.0)
    sup = RecordingSupervisor.start([spec], events)
    loop = asyncio.get_running_loop()
    expected = [0.05, 0.1, 0.2, 0.25]
    measured = []
    for n, delay in enumerate(expected):
        child = await child_of(sup, "asr")
        await end_child(child, "failure")  # type: ignore[arg-type]
        died = loop.time()
        if n == 2:
            # Mid-backoff: the child is down, yet the supervisor answers at once.
            asked = loop.time()
            assert await sup.ask(GetRestartCounts(), timeout=0.1) == {"asr": 2}
            assert await child_of(sup, "asr") is None
            assert loop.time() - asked < 0.05
        await restarted(sup, "asr", child)  # type: ignore[arg-type]
        measured.append(events[-1][2] - died)
    print("backoff delays measured:", [round(m, 3) for m in measured])
    for got, want in zip(measured, expected, strict=True):
        assert want * 0.9 <= got < want + 0.15
    await sup.stop()


async def test_stopping_the_supervisor_during_a_backoff_cancels_the_restart() -> None:
    log: list[str] = []
    sup = Supervisor.start([worker_spec("w", log, backoff=Backoff(initial=0.1))])
    child = await child_of(sup, "w")
    await end_child(child, "failure")  # type: ignore[arg-type]
    await sup.stop()
    await asyncio.sleep(0.15)  # past the backoff: nothing is restarted after the stop
    assert log.count("start:w") == 1


async def test_per_child_shutdown_timeout_is_honoured_in_reverse_order() -> None:
    log: list[str] = []
    specs = [
        worker_spec("a", log),
        worker_spec("slow", log, hang_on_stop=30.0, shutdown=0.1),
        worker_spec("c", log, hang_on_stop=30.0, shutdown=0.2),
    ]
    sup = Supervisor.start(specs)
    await child_of(sup, "c")
    started = time.monotonic()
    assert await sup.stop(timeout=5.0)
    elapsed = time.monotonic() - started
    print(f"shutdown with timeouts 0.2 + 0.1 s took {elapsed:.3f} s")
    assert 0.28 <= elapsed < 1.0
    assert log[3:] == [
        "stop:c", "stopped:c", "stop:slow", "stopped:slow", "stop:a", "stopped:a"
    ]  # fmt: skip


async def test_start_child_and_terminate_child() -> None:
    log: list[str] = []
    sup = Supervisor.start([worker_spec("a", log)])
    b = await sup.ask(StartChild(worker_spec("b", log)))
    assert await b.ask("ping") == "b"  # type: ignore[attr-defined]
    with pytest.raises(DuplicateChild):
        await sup.ask(StartChild(worker_spec("b", log)))
    await sup.ask(TerminateChild("b"))
    assert not b.is_alive()  # type: ignore[attr-defined]
    await sup.ask(TerminateChild("nobody"))
    assert await child_of(sup, "b") is None
    assert await sup.ask(GetRestartCounts()) == {"a": 0}
    await sup.stop()
    assert log == ["start:a", "start:b", "stop:b", "stopped:b", "stop:a", "stopped:a"]


async def test_terminating_a_child_in_backoff_cancels_its_restart() -> None:
    log: list[str] = []
    sup = Supervisor.start([worker_spec("w", log, backoff=Backoff(initial=0.1))])
    child = await child_of(sup, "w")
    await end_child(child, "failure")  # type: ignore[arg-type]
    await sup.ask(TerminateChild("w"))
    await asyncio.sleep(0.2)  # past the backoff: no restart comes
    assert log.count("start:w") == 1 and await child_of(sup, "w") is None
    assert sup.is_alive()
    await sup.stop()


async def test_a_child_down_for_good_can_be_started_again() -> None:
    log: list[str] = []
    sup = Supervisor.start([worker_spec("w", log, restart=Restart.TRANSIENT)])
    await end_child(await child_of(sup, "w"), "normal")  # type: ignore[arg-type]
    assert await child_of(sup, "w") is None
    again = await sup.ask(StartChild(worker_spec("w", log)))
    assert await again.ask("ping") == "w"  # type: ignore[attr-defined]
    await sup.stop()


async def test_a_failing_dynamic_start_is_answered_and_the_supervisor_goes_on() -> None:
    def broken(parent: ActorRef) -> ActorRef:
        raise OSError("no such device")

    sup = Supervisor.start()
    with pytest.raises(ChildStartFailed, match="no such device") as failed:
        await sup.ask(StartChild(ChildSpec("x", broken)))
    assert isinstance(failed.value.__cause__, OSError)
    assert sup.is_alive() and await sup.ask(GetRestartCounts()) == {}
    await sup.stop()


async def test_a_child_started_without_the_parent_link_is_refused_and_stopped() -> None:
    orphans: list[ActorRef] = []

    def forgetful(parent: ActorRef) -> ActorRef:
        orphans.append(Worker.start("orphan", []))
        return orphans[-1]

    sup = Supervisor.start()
    with pytest.raises(ChildStartFailed, match="must be started with parent="):
        await sup.ask(StartChild(ChildSpec("orphan", forgetful)))
    await asyncio.wait_for(orphans[0].wait_stopped(), 1.0)  # not left running unsupervised
    assert sup.is_alive()
    await sup.stop()


def test_backoff_formula() -> None:
    backoff = Backoff(initial=0.1, factor=2.0, maximum=0.5)
    assert [backoff.delay(n) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    with pytest.raises(ValueError):
        Backoff(factor=0.5)


def test_duplicate_ids_in_the_initial_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate child ids"):
        Supervisor([worker_spec("a", []), worker_spec("a", [])])



async def test_on_restart_is_told_the_id_of_every_child_started_again() -> None:
    log: list[str] = []
    told: list[str] = []
    sup = Supervisor.start([worker_spec(n, log) for n in "ab"], on_restart=told.append)
    for _ in range(2):
        old = await child_of(sup, "b")
        await end_child(old, "failure")
        await restarted(sup, "b", old)
    assert told == ["b", "b"]
    assert await sup.stop()
