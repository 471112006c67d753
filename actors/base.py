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
import logging
from typing import Any

from actors.mailbox import ActorDeadError, Envelope
from actors.ref import ActorRef, ChildExited, ExitReason, ReplyError, Stop

__all__ = ["Actor", "UnhandledMessage"]

log = logging.getLogger(__name__)


class UnhandledMessage(ReplyError):
    """The actor has no handler for this message (an answer to the asker, not a failure)."""


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
        if current is not None:
            _answer_error(current, ActorDeadError(f"{ref!r} ended before answering"))
        ref._ended(ChildExited(ref, reason, error))
