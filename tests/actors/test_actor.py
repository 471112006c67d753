"""The actor runtime: tell/ask, the two mailbox lanes, lifecycle hooks, death and stop."""

from __future__ import annotations

import asyncio
import time

import pytest

from actors import (
    Actor,
    ActorDeadError,
    ChildExited,
    ReplyError,
    Stop,
    UnhandledMessage,
)
from tests.actors.support import Block, Parent, Recorder, Sys, eventually


async def test_tell_then_ask_keeps_order_and_ask_returns_the_answer() -> None:
    ref = Recorder.start()
    for n in range(100):
        ref.tell(n)
    assert await ref.ask("x") == "x"
    assert await ref.ask("get") == [*range(100), "x"]
    assert await ref.stop()


async def test_ref_identity_fields() -> None:
    ref = Recorder.start(name="rec")
    other = Recorder.start()
    assert ref.actor_class is Recorder
    assert ref.name == "rec" and other.name is None
    assert ref.actor_urn.startswith("urn:uuid:") and ref.actor_urn != other.actor_urn
    assert ref.is_alive()
    await ref.stop()
    await other.stop()
    assert not ref.is_alive()


async def test_system_lane_is_served_before_queued_normal_messages() -> None:
    gate = asyncio.Event()
    ref = Recorder.start()
    ref.tell(Block(gate))
    await eventually(lambda: ref.mailbox_stats().normal_depth == 0)  # Block is being handled
    for n in range(5):
        ref.tell(f"n{n}")
    ref.tell(Sys(1))
    ref.tell(Sys(2))
    gate.set()
    assert await ref.ask("get") == ["blocked", Sys(1), Sys(2), "n0", "n1", "n2", "n3", "n4"]
    stats = ref.mailbox_stats()
    assert stats.normal_high_water >= 6 and stats.system_high_water == 2
    await ref.stop()


async def test_stop_is_handled_after_every_system_message_sent_before_it() -> None:
    gate = asyncio.Event()
    seen: list[object] = []

    class Tracking(Recorder):
        async def on_stop(self) -> None:
            self.seen.append("on_stop")

    ref = Tracking.start(seen)
    ref.tell(Block(gate))
    await eventually(lambda: seen == ["blocked"])
    for n in range(200):
        ref.tell(Sys(n))
    stopping = asyncio.create_task(ref.stop())
    await asyncio.sleep(0)
    gate.set()
    assert await stopping
    assert seen == ["blocked", *[Sys(n) for n in range(200)], "on_stop"]


async def test_pending_normal_messages_at_stop_fail_asks_and_count_dropped_tells() -> None:
    gate = asyncio.Event()
    ref = Recorder.start()
    ref.tell(Block(gate))
    await eventually(lambda: ref.mailbox_stats().normal_depth == 0)
    asks = [asyncio.create_task(ref.ask(n, timeout=2.0)) for n in range(3)]
    for n in range(4):
        ref.tell(n)
    ref.tell(Stop())
    await asyncio.sleep(0)
    gate.set()
    await ref.wait_stopped()
    for ask in asks:
        with pytest.raises(ActorDeadError):
            await ask
    stats = ref.mailbox_stats()
    assert (stats.dropped_tells, stats.failed_asks) == (4, 3)
    assert ref.exit == ChildExited(ref, "shutdown")


async def test_messages_sent_during_on_start_are_queued_not_lost() -> None:
    gate = asyncio.Event()

    class SlowStart(Recorder):
        async def on_start(self) -> None:
            await gate.wait()
            self.seen.append("started")

    ref = SlowStart.start()
    ref.tell("early")
    answer = asyncio.create_task(ref.ask("get"))
    await eventually(lambda: ref.mailbox_stats().normal_depth == 2)     # both wait behind on_start
    await asyncio.sleep(0.01)   # a window for an answer that on_start did not hold back
    assert not answer.done()
    gate.set()
    assert await answer == ["started", "early"]
    await ref.stop()


async def test_ask_timeout_raises_timeout_error_and_the_message_may_still_be_handled() -> None:
    gate = asyncio.Event()
    ref = Recorder.start()
    ref.tell(Block(gate))
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out after 0.05 s"):
        await ref.ask("late", timeout=0.05)
    assert time.monotonic() - started < 1.0
    gate.set()
    assert await ref.ask("get") == ["blocked", "late"]
    assert ref.is_alive()
    await ref.stop()


async def test_tell_and_ask_to_a_dead_actor_raise_actor_dead_error() -> None:
    ref = Recorder.start()
    await ref.stop()
    with pytest.raises(ActorDeadError):
        ref.tell("x")
    with pytest.raises(ActorDeadError):
        await ref.ask("x")
    assert await ref.stop()  # stopping a dead actor is harmless


async def test_asks_pending_when_the_actor_fails_get_actor_dead_error() -> None:
    gate = asyncio.Event()

    class FailsAfterGate(Actor):
        async def on_receive(self, message: object) -> object:
            await gate.wait()
            raise ValueError("boom")

    ref = FailsAfterGate.start()
    first = asyncio.create_task(ref.ask("first"))
    pending = [asyncio.create_task(ref.ask(n)) for n in range(3)]
    await eventually(lambda: ref.mailbox_stats().normal_depth == 3)     # the first is being handled
    gate.set()
    with pytest.raises(ValueError, match="boom"):
        await first
    for ask in pending:
        with pytest.raises(ActorDeadError):
            await ask
    assert ref.exit is not None and ref.exit.reason == "failure"


async def test_the_ask_being_handled_when_a_stop_times_out_gets_actor_dead_error() -> None:
    never = asyncio.Event()
    seen: list[object] = []
    ref = Recorder.start(seen)
    handling = asyncio.create_task(ref.ask(Block(never), timeout=5.0))
    await eventually(lambda: seen == ["blocked"])
    assert await ref.stop(timeout=0.05) is False
    with pytest.raises(ActorDeadError):
        await handling
    assert ref.exit == ChildExited(ref, "shutdown")


async def test_reply_error_goes_to_the_asker_and_the_actor_goes_on() -> None:
    class NotFound(ReplyError):
        pass

    class Lookup(Actor):
        async def on_receive(self, message: object) -> object:
            if message == "missing":
                raise NotFound("no such thing")
            return message

    ref = Lookup.start()
    with pytest.raises(NotFound, match="no such thing"):
        await ref.ask("missing")
    ref.tell("missing")  # on a tell it is only logged
    assert await ref.ask("there") == "there"
    assert ref.is_alive()
    await ref.stop()


async def test_unhandled_message_answers_the_asker_without_killing() -> None:
    ref = Actor.start()
    with pytest.raises(UnhandledMessage, match="Actor does not handle int"):
        await ref.ask(42)
    assert ref.is_alive()
    await ref.stop()


async def test_exception_in_on_receive_reaches_the_asker_and_kills_the_actor() -> None:
    exits: list[ChildExited] = []
    failures: list[BaseException] = []
    stops: list[str] = []

    class Fragile(Actor):
        async def on_receive(self, message: object) -> object:
            raise KeyError(message)

        async def on_failure(self, error: BaseException) -> None:
            failures.append(error)

        async def on_stop(self) -> None:
            stops.append("on_stop")

    parent = Parent.start(exits)
    ref = Fragile.start(parent=parent)
    with pytest.raises(KeyError):
        await ref.ask("k")
    await ref.wait_stopped()
    await eventually(lambda: len(exits) == 1)
    assert exits[0].ref is ref and exits[0].reason == "failure"
    assert isinstance(exits[0].error, KeyError)
    assert failures == [exits[0].error] and stops == []
    await parent.stop()


async def test_on_start_failure_kills_the_actor_and_tells_the_parent() -> None:
    exits: list[ChildExited] = []
    calls: list[str] = []

    class BadStart(Actor):
        async def on_start(self) -> None:
            raise OSError("cannot open device")

        async def on_failure(self, error: BaseException) -> None:
            calls.append(f"on_failure:{error}")

        async def on_stop(self) -> None:
            calls.append("on_stop")

    parent = Parent.start(exits)
    ref = BadStart.start(parent=parent)
    queued = asyncio.create_task(ref.ask("too early"))
    with pytest.raises(ActorDeadError):
        await queued
    await ref.wait_stopped()
    await eventually(lambda: len(exits) == 1)
    assert exits[0].reason == "failure" and isinstance(exits[0].error, OSError)
    assert calls == ["on_failure:cannot open device"]
    assert not ref.is_alive()
    await parent.stop()


async def test_on_stop_runs_on_stop_and_the_parent_hears_shutdown() -> None:
    exits: list[ChildExited] = []
    calls: list[str] = []

    class Clean(Actor):
        async def on_stop(self) -> None:
            calls.append("on_stop")

    parent = Parent.start(exits)
    ref = Clean.start(parent=parent)
    assert await ref.stop()
    assert calls == ["on_stop"]
    await eventually(lambda: len(exits) == 1)
    assert exits == [ChildExited(ref, "shutdown")]
    await parent.stop()


async def test_actor_stop_from_inside_ends_after_the_current_message_with_reason_normal() -> None:
    class Quits(Recorder):
        async def on_receive(self, message: object) -> object:
            if message == "quit":
                self.stop()
                return "bye"
            return await super().on_receive(message)

    seen: list[object] = []
    ref = Quits.start(seen)
    assert await ref.ask("quit") == "bye"
    with pytest.raises(ActorDeadError):
        await ref.ask("after")
    await ref.wait_stopped()
    assert ref.exit == ChildExited(ref, "normal")


async def test_actor_stop_called_while_idle_wakes_the_actor() -> None:
    class Timer(Actor):
        async def on_start(self) -> None:
            asyncio.get_running_loop().call_later(0.02, self.stop)

    ref = Timer.start()
    await asyncio.wait_for(ref.wait_stopped(), 1.0)
    assert ref.exit == ChildExited(ref, "normal")


async def test_stop_timeout_cancels_the_task_and_runs_finally_blocks() -> None:
    calls: list[str] = []

    class Stuck(Actor):
        async def on_stop(self) -> None:
            try:
                await asyncio.sleep(60)
            finally:
                calls.append("finally ran")

    ref = Stuck.start()
    started = time.monotonic()
    assert await ref.stop(timeout=0.1) is False
    elapsed = time.monotonic() - started
    assert 0.09 <= elapsed < 1.0
    assert calls == ["finally ran"]
    assert ref.exit == ChildExited(ref, "shutdown")


async def test_watchers_are_called_once_and_late_watchers_at_once() -> None:
    seen: list[ChildExited] = []
    ref = Recorder.start()
    ref.add_watcher(seen.append)
    ref.add_watcher(lambda exit: 1 / 0)  # a broken watcher does not stop the others
    ref.add_watcher(seen.append)
    await ref.stop()
    assert seen == [ChildExited(ref, "shutdown")] * 2
    ref.add_watcher(seen.append)
    assert len(seen) == 3


async def test_an_actor_cannot_ask_or_await_its_own_stop() -> None:
    class Selfish(Actor):
        async def on_receive(self, message: object) -> object:
            if message == "ask":
                return await self.actor_ref.ask("x")
            return await self.actor_ref.stop()

    ref = Selfish.start()
    with pytest.raises(RuntimeError, match="cannot ask itself"):
        await ref.ask("ask", timeout=1.0)
    ref2 = Selfish.start()
    with pytest.raises(RuntimeError, match="cannot await its own stop"):
        await ref2.ask("stop", timeout=1.0)


def test_start_requires_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        Recorder.start()


async def test_an_actor_cancelled_before_it_ever_ran_still_announces_its_end() -> None:
    exits: list[ChildExited] = []
    parent = Parent.start(exits)
    ref = Recorder.start(parent=parent)
    # Only the loop's teardown cancels a task this early; reach the task directly to do the same.
    ref._task.cancel()  # type: ignore[union-attr]
    await asyncio.wait_for(ref.wait_stopped(), 1.0)
    assert ref.exit == ChildExited(ref, "shutdown")
    await eventually(lambda: len(exits) == 1)
    await parent.stop()


async def test_stop_requested_in_on_start_ends_normally_after_on_start() -> None:
    calls: list[str] = []

    class OneShot(Actor):
        async def on_start(self) -> None:
            calls.append("on_start")
            self.stop()

        async def on_stop(self) -> None:
            calls.append("on_stop")

    ref = OneShot.start()
    await asyncio.wait_for(ref.wait_stopped(), 1.0)
    assert calls == ["on_start", "on_stop"]
    assert ref.exit == ChildExited(ref, "normal")


async def test_an_on_stop_that_raises_makes_the_exit_a_failure() -> None:
    class BadCleanup(Actor):
        async def on_stop(self) -> None:
            raise OSError("disk full")

    ref = BadCleanup.start()
    assert await ref.stop()
    assert ref.exit is not None and ref.exit.reason == "failure"
    assert isinstance(ref.exit.error, OSError)


async def test_a_stray_cancelled_error_in_on_receive_is_a_failure_not_a_stop() -> None:
    class Stray(Actor):
        async def on_receive(self, message: object) -> object:
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            return await future  # raises CancelledError without anyone cancelling this task

    ref = Stray.start()
    with pytest.raises(RuntimeError, match="without the actor being cancelled") as raised:
        await ref.ask("x")
    assert isinstance(raised.value.__cause__, asyncio.CancelledError)
    await ref.wait_stopped()
    assert ref.exit is not None and ref.exit.reason == "failure"
    assert ref.exit.error is raised.value


# --- timers with tokens, and callbacks from outside the actor's task ---------------------------

class Timed(Actor):
    """Arms and disarms timers on request; records the messages its timers deliver."""

    def __init__(self, seen: list) -> None:
        self.seen = seen

    async def on_receive(self, message: object) -> object:
        if isinstance(message, tuple) and message[0] == "arm":
            self.arm(message[1], message[2], message[3])
            return None
        if isinstance(message, tuple) and message[0] == "disarm":
            self.disarm(message[1])
            return None
        if isinstance(message, tuple) and message[0] == "block, then arm":
            await message[1].wait()
            self.arm(*message[2:])
            return None
        if message == "outside":
            return self.outside(self._from_outside)
        self.seen.append(message)
        return None

    def _from_outside(self, value: object) -> None:
        if value == "boom":
            raise RuntimeError("callback failed")
        self.seen.append(("outside", value))


async def test_a_timer_replaced_after_it_expired_is_not_delivered():
    seen: list = []
    ref = Timed.start(seen)
    gate = asyncio.Event()
    await ref.ask(("arm", "t", 0.01, "first"))
    # Busy while the first timer expires; then, in the same handler, the timer is replaced while
    # its expiry already waits in the mailbox.
    ref.tell(("block, then arm", gate, "t", 0.02, "second"))
    await eventually(lambda: (lambda st: st.system_depth + st.normal_depth)(ref.mailbox_stats()) == 1)
    gate.set()
    await eventually(lambda: seen)
    await asyncio.sleep(0.05)   # a window for the replaced "first" to be delivered after all
    assert seen == ["second"]
    await ref.ask(("arm", "u", 0.01, "third"))
    await ref.ask(("disarm", "u"))
    await asyncio.sleep(0.05)   # past the disarmed timer's 10 ms: it must not fire
    assert seen == ["second"]
    await ref.stop()


async def test_an_outside_callback_runs_in_the_actor_and_its_failure_is_the_actors():
    seen: list = []
    ref = Timed.start(seen)
    post = await ref.ask("outside")
    asyncio.get_running_loop().call_soon(post, 1)
    await eventually(lambda: seen == [("outside", 1)])
    post("boom")
    await ref.wait_stopped()
    assert ref.exit.reason == "failure" and str(ref.exit.error) == "callback failed"
    post(2)                                   # after the end: dropped, never raised
    assert seen == [("outside", 1)]
