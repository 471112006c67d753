"""Handles to running actors, and the messages and errors the runtime itself exchanges."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from actors.mailbox import ActorDeadError, Envelope, Mailbox, MailboxStats, SystemMessage

if TYPE_CHECKING:
    from actors.base import Actor

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
        "actor_urn",
        "name",
        "parent",
        "_mailbox",
        "_task",
        "_exit",
        "_watchers",
        "_stopped",
    )

    def __init__(self, actor_class: type[Actor], name: str | None, parent: ActorRef | None) -> None:
        self.actor_class = actor_class
        self.actor_urn = uuid.uuid4().urn
        self.name = name
        self.parent = parent
        self._mailbox = Mailbox()
        self._task: asyncio.Task[None] | None = None
        self._exit: ChildExited | None = None
        self._watchers: list[Callable[[ChildExited], None]] = []
        self._stopped: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<ActorRef {self.actor_class.__name__} {self.name or self.actor_urn}>"

    def is_alive(self) -> bool:
        """False from the moment the actor stops taking messages (its ``on_stop`` may still be running)."""
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

    async def ask(self, message: object, *, timeout: float | None = 5.0) -> object:
        """Send a message and wait for what ``on_receive`` returns.

        Raises what ``on_receive`` raised (a non-``ReplyError`` exception has also killed the
        actor), ``ActorDeadError`` if the actor is dead or ends before answering, and
        ``TimeoutError`` after ``timeout`` seconds. A timed-out message stays queued and may still
        be handled later: its answer is then discarded, its effects are not undone.
        """
        if self._task is not None and asyncio.current_task() is self._task:
            raise RuntimeError(f"{self!r} cannot ask itself: it would wait for its own reply")
        reply: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._mailbox.put(Envelope(message, reply))
        if timeout is None:
            return await reply
        try:
            return await asyncio.wait_for(reply, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"ask {type(message).__name__} to {self!r} timed out after {timeout} s"
            ) from None

    async def stop(self, *, timeout: float | None = 5.0) -> bool:
        """Stop the actor through its system lane and wait until it has ended.

        Returns True if it ended within ``timeout``. Otherwise its task is cancelled: whatever it was
        awaiting (a message, ``on_stop``) gets ``CancelledError`` so its ``finally`` blocks run, the
        actor ends with reason "shutdown", and False is returned. After the cancel, waits up to
        ``timeout`` more for those ``finally`` blocks. Stopping a dead actor returns True.
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
        stopped = self._stopped_future()
        try:
            await asyncio.wait_for(asyncio.shield(stopped), timeout)
            return True
        except TimeoutError:
            pass
        log.warning("%r did not stop within %s s; cancelling it", self, timeout)
        if task is not None:
            task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(stopped), timeout)
        except TimeoutError:
            log.error("%r still running %s s after being cancelled", self, timeout)
        return False

    async def wait_stopped(self) -> None:
        """Return once the actor has ended, for whatever reason."""
        if self._exit is not None:
            return
        await asyncio.shield(self._stopped_future())

    def add_watcher(self, callback: Callable[[ChildExited], None]) -> None:
        """Call ``callback`` once when the actor ends (at once if it already has)."""
        if self._exit is not None:
            _call_watcher(callback, self._exit)
        else:
            self._watchers.append(callback)

    def _stopped_future(self) -> asyncio.Future[None]:
        if self._stopped is None:
            self._stopped = asyncio.get_running_loop().create_future()
        return self._stopped

    def _ended(self, exit: ChildExited) -> None:
        """Called by the runtime exactly once, after on_stop/on_failure: announce the end."""
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
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)


def _call_watcher(callback: Callable[[ChildExited], None], exit: ChildExited) -> None:
    try:
        callback(exit)
    except Exception:
        log.exception("watcher %r of %r raised", callback, exit.ref)
