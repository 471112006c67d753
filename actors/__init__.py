"""asyncio actors, supervision and the media plane's bounded pipes.

Every piece of call state lives in an actor: one task, one message at a time, no locks. Control
messages travel through mailboxes (system lane first); audio travels through ``AudioPipe`` rings.
"""

from actors.base import Actor, UnhandledMessage
from actors.call_supervisor import (
    AdmissionRefused,
    CallStartFailed,
    CallSupervisor,
    DuplicateSession,
    GetCall,
    ListCalls,
    StartCall,
)
from actors.mailbox import MailboxStats
from actors.pipes import AudioPipe, PipeClosed, PipeStats
from actors.ref import ActorDeadError, ActorRef, ChildExited, ReplyError, Stop, SystemMessage
from actors.supervisor import (
    Backoff,
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

__all__ = [
    "ActorDeadError",
    "ActorRef",
    "Actor",
    "AdmissionRefused",
    "AudioPipe",
    "Backoff",
    "CallStartFailed",
    "CallSupervisor",
    "ChildExited",
    "ChildSpec",
    "ChildStartFailed",
    "DuplicateChild",
    "DuplicateSession",
    "GetCall",
    "GetChild",
    "GetRestartCounts",
    "ListCalls",
    "MailboxStats",
    "PipeClosed",
    "PipeStats",
    "ReplyError",
    "Restart",
    "RestartLimitExceeded",
    "StartCall",
    "StartChild",
    "Stop",
    "Strategy",
    "Supervisor",
    "SystemMessage",
    "TerminateChild",
    "UnhandledMessage",
]
