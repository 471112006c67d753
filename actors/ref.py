"""Handles to running actors, and the messages and errors the runtime itself exchanges."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from actors.mailbox import ActorDeadError, Envelope, Mailbox, MailboxStats, SystemMessage

__all__ = [
    "ActorDeadError",
    "ActorRef",
    "ChildExited",
    "ExitReason",
    "ReplyError",
    "Stop",
    "SystemMessage",
]

log = logging.getLogger(__name__)

ExitReason = Literal["normal", "failure", "shutdown"]


class ReplyError(Exception):
    """An answer in the form of an exception: raised by ``on_receive``, it goes to the asker only.

    Any other exception escaping ``on_receive`` is the actor's failure (it dies). A ``ReplyError``
    raised while handling a tell has nobody to go to and is logged.
    """


@dataclass(frozen=True, slots=True)
class Stop(SystemMessage):
    """Ask the actor to stop once the system messages queued before this one are handled."""


@dataclass(frozen=True, slots=True)
class ChildExited(SystemMessage):
    """Told to an actor's parent (and given to its watchers) when the actor has ended.

    ``reason`` is "normal" when the actor stopped itself, "shutdown" when it was stopped from
    outside (``ActorRef.stop`` or a ``Stop`` message, including a cancelled task), and "failure"
    when ``on_start``/``on_receive`` (or ``on_stop``) raised; ``error`` is then the exception.
    """

    ref: ActorRef
    reason: ExitReason
    error: BaseException | None = None


STOP = Stop()


class ActorRef:
    """The only way to reach an actor: tell, ask, stop, watch.

    Safe to share; valid after the actor died (then tell/ask raise ``ActorDeadError``). A ref never
    comes back to life: a restarted actor has a new ref.
    """

    __slots__ = (
        "actor_class",
        "_urn",
        "name",
        "parent",
        "_mailbox",
        "_task",
        "_exit",
        "_watchers",
        "_stop_waiters",
    )

    def __init__(self, actor_class: type, name: str | None, parent: ActorRef | None) -> None:
        self.actor_class = actor_class
        self._urn: str | None = None
        self.name = name
        self.parent = parent
        self._mailbox = Mailbox()
        self._task: asyncio.Task[None] | None = None
        self._exit: ChildExited | None = None
        self._watchers: list[Callable[[ChildExited], None]] = []
        self._stop_waiters: list[asyncio.Future[bool]] | None = None

    def __repr__(self) -> str:
        return f"<ActorRef {self.actor_class.__name__} {self.name or self.actor_urn}>"

    @property
    def actor_urn(self) -> str:
        """A uuid4 URN, drawn on first use: most refs never need one, and drawing costs a syscall."""
        if self._urn is None:
            self._urn = uuid.uuid4().urn
        return self._urn

    def is_alive(self) -> bool:
        """False from the moment the actor stops taking messages (``on_stop`` may still be running)."""
        return not self._mailbox.closed

    @property
    def exit(self) -> ChildExited | None:
        """How the actor ended, once it has."""
        return self._exit

    def mailbox_stats(self) -> MailboxStats:
        return self._mailbox.stats()

    def tell(self, message: object) -> None:
        """Queue a message and return at once. Raises ``ActorDeadError`` if the actor is dead."""
        self._mailbox.put(Envelope(message))

    def tell_quietly(self, message: object) -> None:
        """``tell`` for a child's reports to its parent: a parent that is ending (its mailbox
        closed while its children still run) has nobody left to serve them, so they are dropped."""
        try:
            self._mailbox.put(Envelope(message))
        except ActorDeadError:
            pass

    async def ask(self, message: object, *, timeout: float | None = 5.0) -> object:
        """Send a message and wait for what ``on_receive`` returns.

        Raises what ``on_receive`` raised (a non-``ReplyError`` exception has also killed the
        actor), ``ActorDeadError`` if the actor is dead or ends before answering, and
        ``TimeoutError`` after ``timeout`` seconds. A timed-out message stays queued and may still
        be handled later: its answer is then discarded, its effects are not undone.
        """
        task = self._task
        if task is not None and asyncio.current_task() is task:
            raise RuntimeError(f"{self!r} cannot ask itself: it would wait for its own reply")
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[object] = loop.create_future()
        self._mailbox.put(Envelope(message, reply))
        if timeout is None:
            return await reply
        # One timer on the reply itself: cheaper than wait_for, which adds a future and callbacks.
        timer = loop.call_later(timeout, _expire_ask, reply, self, message, timeout)
        try:
            return await reply
        finally:
            timer.cancel()

    async def stop(self, *, timeout: float | None = 5.0) -> bool:
        """Stop the actor through its system lane and wait until it has ended.

        Returns True if it ended within ``timeout``. Otherwise its task is cancelled: whatever it was
        awaiting (a message, ``on_stop``) gets ``CancelledError`` so its ``finally`` blocks run
        (``on_stop`` is not started if it had not been), the actor ends with reason "shutdown", and
        False is returned. After the cancel, waits up to ``timeout`` more for those ``finally``
        blocks. Stopping a dead actor returns True.
        """
        task = self._task
        if task is not None and asyncio.current_task() is task:
            raise RuntimeError(f"{self!r} cannot await its own stop: call Actor.stop() instead")
        if self._exit is not None:
            return True
        try:
            self._mailbox.put(Envelope(STOP))
        except ActorDeadError:
            pass  # already ending: just wait for it
        if await self._wait_end(timeout):
            return True
        log.warning("%r did not stop within %s s; cancelling it", self, timeout)
        if task is not None:
            task.cancel()
        if not await self._wait_end(timeout):
            log.error("%r still running %s s after being cancelled", self, timeout)
        return False

    async def wait_stopped(self) -> None:
        """Return once the actor has ended, for whatever reason."""
        await self._wait_end(None)

    def add_watcher(self, callback: Callable[[ChildExited], None]) -> None:
        """Call ``callback`` once when the actor ends (at once if it already has)."""
        if self._exit is not None:
            _call_watcher(callback, self._exit)
        else:
            self._watchers.append(callback)

    async def _wait_end(self, timeout: float | None) -> bool:
        """True once the actor has ended; False if ``timeout`` passed first."""
        if self._exit is not None:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        if self._stop_waiters is None:
            self._stop_waiters = []
        self._stop_waiters.append(waiter)
        timer = None if timeout is None else loop.call_later(timeout, _expire_wait, waiter)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if self._exit is None and self._stop_waiters is not None:
                self._stop_waiters.remove(waiter)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never runs its body (so none of its finally
        # blocks): the end must still be announced.
        if self._exit is None:
            self._ended(ChildExited(self, "shutdown"))

    def _ended(self, exit: ChildExited) -> None:
        """Called once, after on_stop/on_failure: close the mailbox and announce the end."""
        if self._exit is not None:
            return
        self._mailbox.close()
        self._exit = exit
        if self.parent is not None:
            try:
                self.parent.tell(exit)
            except ActorDeadError:
                pass  # the parent went first; nobody left to tell
        watchers, self._watchers = self._watchers, []
        for callback in watchers:
            _call_watcher(callback, exit)
        waiters, self._stop_waiters = self._stop_waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(True)


def _expire_ask(
    reply: asyncio.Future[object], ref: ActorRef, message: object, timeout: float
) -> None:
    if not reply.done():
        reply.set_exception(
            TimeoutError(f"ask {type(message).__name__} to {ref!r} timed out after {timeout} s")
        )


def _expire_wait(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def _call_watcher(callback: Callable[[ChildExited], None], exit: ChildExited) -> None:
    try:
        callback(exit)
    except Exception:
        log.exception("watcher %r of %r raised", callback, exit.ref)
