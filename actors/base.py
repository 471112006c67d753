"""asyncio-native actors with pykka's shape: one task per actor, one message at a time, no locks.

An actor's state is touched only by its own task, so it needs no locks; everything else reaches it
through its ``ActorRef``. The lifecycle, in order:

1. ``on_start`` (messages sent meanwhile are queued, not lost);
2. messages, system lane first, until a ``Stop`` (reason "shutdown"), a call to ``Actor.stop()``
   (reason "normal") or an exception (reason "failure");
3. the mailbox closes: queued asks fail with ``ActorDeadError``, queued tells are dropped (counted);
4. ``on_stop`` after a stop, or ``on_failure(error)`` after a failure (never both);
5. the parent is told ``ChildExited``, watchers are called, ``stop()``/``wait_stopped()`` return.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.mailbox import ActorDeadError, Envelope, SystemMessage
from actors.ref import ActorRef, ChildExited, ExitReason, ReplyError, Stop

__all__ = ["Actor", "UnhandledMessage"]

log = logging.getLogger(__name__)


class UnhandledMessage(ReplyError):
    """The actor has no handler for this message (an answer to the asker, not a failure)."""


@dataclass(frozen=True, slots=True)
class _Callback(SystemMessage):
    """Code from outside the actor's task, run inside it (see ``Actor.outside``)."""

    fn: Callable[..., object]
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class _TimerFired:
    """An ``Actor.arm`` timer expired; delivered only if it is still the armed one for its key."""

    key: str
    token: int
    message: object


_tokens = itertools.count(1)


class Actor:
    """Subclass it, override the ``on_*`` hooks, and create instances with ``start()`` only.

    Subclasses define ``__init__`` freely (calling ``super().__init__()`` is not required);
    ``actor_ref`` is set before ``on_start``.
    """

    actor_ref: ActorRef
    _actor_stop_requested: bool = False

    async def on_start(self) -> None:
        """Runs first. Raising here is a failure: the actor dies and its parent is told so."""

    async def on_stop(self) -> None:
        """Runs after a stop (requested from outside or by ``stop()``); not after a failure."""

    async def on_failure(self, error: BaseException) -> None:
        """Runs after ``on_start`` or ``on_receive`` raised ``error``; the actor is then dead."""

    async def on_receive(self, message: object) -> object:
        """Handle one message; the return value answers an ask."""
        raise UnhandledMessage(f"{type(self).__name__} does not handle {type(message).__name__}")

    def stop(self) -> None:
        """Request this actor's own stop: it ends after the current message, with reason "normal"."""
        self._actor_stop_requested = True
        self.actor_ref._mailbox.wake()

    # --- bringing the outside in -------------------------------------------------------------

    def outside(self, fn: Callable[..., object]) -> Callable[..., None]:
        """A callable for code that runs outside this actor's task (a media-clock tick, a timer, a
        task's done-callback): calling it with ``args`` runs ``fn(*args)`` inside the actor's task,
        in turn, on the system lane (awaited if it returns an awaitable). Whatever ``fn`` raises is
        the actor's failure, exactly as if ``on_receive`` had raised it. Once the actor has ended,
        calls are dropped."""
        ref = self.actor_ref

        def post(*args: Any) -> None:
            if ref.is_alive():
                try:
                    ref.tell(_Callback(fn, args))
                except ActorDeadError:
                    pass  # ended between the check and the tell

        return post

    def arm(self, key: str, delay: float, message: object) -> None:
        """Deliver ``message`` to ``on_receive`` after ``delay`` seconds, replacing any timer of the
        same key. A timer replaced or disarmed after it expired but before its message was handled
        is not delivered: each carries a token, and only the armed token counts."""
        self.disarm(key)
        timers = self._actor_timers()
        token = next(_tokens)
        ref = self.actor_ref

        def fire() -> None:
            if ref.is_alive():
                try:
                    ref.tell(_TimerFired(key, token, message))
                except ActorDeadError:
                    pass

        timers[key] = (token, asyncio.get_running_loop().call_later(delay, fire))

    def disarm(self, key: str) -> None:
        entry = self._actor_timers().pop(key, None)
        if entry is not None:
            entry[1].cancel()

    def armed(self, key: str) -> bool:
        return key in self._actor_timers()

    def _actor_timers(self) -> dict[str, tuple[int, asyncio.TimerHandle]]:
        # Created on first use: subclasses need not call super().__init__().
        try:
            return self.__dict__["_actor_timer_table"]
        except KeyError:
            table: dict[str, tuple[int, asyncio.TimerHandle]] = {}
            self.__dict__["_actor_timer_table"] = table
            return table

    def _cancel_actor_timers(self) -> None:
        if "_actor_timer_table" in self.__dict__:
            for _token, handle in self._actor_timer_table.values():
                handle.cancel()
            self._actor_timer_table.clear()

    @classmethod
    def start(
        cls, *args: Any, parent: ActorRef | None = None, name: str | None = None, **kwargs: Any
    ) -> ActorRef:
        """Construct the actor and start its task on the running loop; returns its ref at once."""
        loop = asyncio.get_running_loop()
        actor = cls(*args, **kwargs)
        ref = ActorRef(cls, name, parent)
        actor.actor_ref = ref
        task = loop.create_task(_run(actor, ref), name=f"actor {cls.__name__} {name or ''}")
        task.add_done_callback(ref._task_done)
        ref._task = task
        return ref


def _cancel_requested() -> bool:
    # A CancelledError raised without Task.cancel() (an awaited future that was cancelled) is a
    # bug in the handler, not a request to stop: count it as a failure.
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _stray(cancelled: asyncio.CancelledError) -> RuntimeError:
    # Handed to an asker as is, a CancelledError would look like the asker's own cancellation.
    error = RuntimeError("CancelledError raised without the actor being cancelled")
    error.__cause__ = cancelled
    return error


def _answer_error(envelope: Envelope, error: BaseException) -> None:
    if envelope.reply is not None and not envelope.reply.done():
        envelope.reply.set_exception(error)


async def _run(actor: Actor, ref: ActorRef) -> None:
    mailbox = ref._mailbox
    reason: ExitReason = "shutdown"
    error: BaseException | None = None
    current: Envelope | None = None
    try:
        try:
            await actor.on_start()
        except Exception as exc:
            error = exc
        except asyncio.CancelledError as exc:
            if _cancel_requested():
                raise
            error = _stray(exc)
        if error is None and actor._actor_stop_requested:
            reason = "normal"
        elif error is None:
            while True:
                envelope = mailbox.get_nowait()
                if envelope is None:
                    await mailbox.wait()
                    if actor._actor_stop_requested:
                        reason = "normal"
                        break
                    continue
                message = envelope.message
                if isinstance(message, Stop):
                    reason = "shutdown"
                    break
                current = envelope
                try:
                    if isinstance(message, _TimerFired):
                        armed = actor._actor_timers().get(message.key)
                        if armed is None or armed[0] != message.token:
                            current = None
                            continue  # replaced or disarmed after it expired
                        del actor._actor_timers()[message.key]
                        message = message.message
                    if isinstance(message, _Callback):
                        result = message.fn(*message.args)
                        if inspect.isawaitable(result):
                            result = await result
                    else:
                        result = await actor.on_receive(message)
                except ReplyError as exc:
                    if envelope.reply is None:
                        log.warning("%r: %r raised on a tell: %s", ref, type(message).__name__, exc)
                    else:
                        _answer_error(envelope, exc)
                except Exception as exc:
                    _answer_error(envelope, exc)
                    error = exc
                    break
                except asyncio.CancelledError as exc:
                    if _cancel_requested():
                        raise
                    error = _stray(exc)
                    _answer_error(envelope, error)
                    break
                else:
                    if envelope.reply is not None and not envelope.reply.done():
                        envelope.reply.set_result(result)
                current = None
                if actor._actor_stop_requested:
                    reason = "normal"
                    break
        mailbox.close()
        if error is None:
            try:
                await actor.on_stop()
            except Exception as exc:
                log.exception("%r: on_stop raised", ref)
                reason, error = "failure", exc
        else:
            reason = "failure"
            log.error("%r failed", ref, exc_info=error)
            try:
                await actor.on_failure(error)
            except Exception:
                log.exception("%r: on_failure raised", ref)
    except asyncio.CancelledError:
        if reason != "failure":
            reason = "shutdown"
        raise
    except BaseException as exc:
        reason, error = "failure", exc
        raise
    finally:
        actor._cancel_actor_timers()
        if current is not None:
            _answer_error(current, ActorDeadError(f"{ref!r} ended before answering"))
        ref._ended(ChildExited(ref, reason, error))
