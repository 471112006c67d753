"""The one error type of the pure protocol layer.

Every parser and state machine under ``protocol/`` raises ``ProtocolError`` (or a subclass) for
bad input, never another exception, so a transport can answer with ``status`` and carry on.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Bad input. ``status`` is the hint a transport answers with (SIP/HTTP-style: 400, 413, 505...)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status})"
