"""Small actors and helpers shared by the actor tests."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

from actors import Actor, ActorRef, ChildExited, ChildSpec, Supervisor, SystemMessage
from tests.support.poll import until


@dataclass(frozen=True, slots=True)
class Sys(SystemMessage):
    n: int


@dataclass(frozen=True, slots=True)
class Block:
    """Make the receiving actor wait on ``gate`` before it goes on."""

    gate: asyncio.Event


# Actors answer within milliseconds: poll often.
eventually = functools.partial(until, interval=0.002)


class Recorder(Actor):
    """Records every message it handles; "get" answers the record, Block waits on a gate."""

    def __init__(self, seen: list[object] | None = None) -> None:
        self.seen: list[object] = [] if seen is None else seen

    async def on_receive(self, message: object) -> object:
        if isinstance(message, Block):
            self.seen.append("blocked")
            await message.gate.wait()
            return None
        if message == "get":
            return list(self.seen)
        self.seen.append(message)
        return message


class Parent(Actor):
    """Collects the ChildExited messages sent to it."""

    def __init__(self, exits: list[ChildExited]) -> None:
        self.exits = exits

    async def on_receive(self, message: object) -> object:
        if isinstance(message, ChildExited):
            self.exits.append(message)
            return None
        return await super().on_receive(message)


class Worker(Actor):
    """A supervised child that logs its lifecycle into a shared list.

    "crash" raises, "exit" stops it normally, "ping" answers its name. ``hang_on_stop`` makes its
    on_stop wait that many seconds (its finally is logged, to see a cancellation run it).
    """

    def __init__(self, name: str, log: list[str], hang_on_stop: float = 0.0) -> None:
        self.name = name
        self.log = log
        self.hang_on_stop = hang_on_stop

    async def on_start(self) -> None:
        self.log.append(f"start:{self.name}")

    async def on_stop(self) -> None:
        self.log.append(f"stop:{self.name}")
        try:
            if self.hang_on_stop:
                await asyncio.sleep(self.hang_on_stop)
        finally:
            self.log.append(f"stopped:{self.name}")

    async def on_failure(self, error: BaseException) -> None:
        self.log.append(f"failed:{self.name}")

    async def on_receive(self, message: object) -> object:
        if message == "crash":
            raise RuntimeError(f"{self.name} crashed")
        if message == "exit":
            self.stop()
            return None
        if message == "ping":
            return self.name
        return await super().on_receive(message)


def worker_spec(name: str, log: list[str], hang_on_stop: float = 0.0, **options: object) -> ChildSpec:
    def start(parent: ActorRef) -> ActorRef:
        return Worker.start(name, log, hang_on_stop, parent=parent, name=name)

    return ChildSpec(id=name, start=start, **options)  # type: ignore[arg-type]


class RecordingSupervisor(Supervisor):
    """A supervisor that logs its hooks (and the loop time of each restart)."""

    def __init__(self, children: list[ChildSpec], events: list[tuple], **options: object) -> None:
        super().__init__(children, **options)  # type: ignore[arg-type]
        self.events = events

    async def on_child_restarted(self, spec: ChildSpec, ref: ActorRef) -> None:
        self.events.append(("restarted", spec.id, asyncio.get_running_loop().time()))

    async def on_child_gave_up(self, spec: ChildSpec, error: BaseException | None) -> None:
        self.events.append(("gave_up", spec.id, error))
