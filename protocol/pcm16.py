"""Whole 16-bit samples out of a byte stream whose messages may split a sample."""

from __future__ import annotations

import numpy as np

__all__ = ["Pcm16Assembler"]


class Pcm16Assembler:
    """Little-endian 16-bit PCM from messages of any length. Providers and mediaPass peers send
    audio in messages cut without regard to sample boundaries; the odd byte waits for the next
    message instead of shifting every later sample by one byte."""

    __slots__ = ("_carry",)

    def __init__(self) -> None:
        self._carry = b""

    def push(self, data: bytes) -> np.ndarray:
        """The whole samples `data` completes (possibly none); a read-only view when it can be."""
        if self._carry:
            data = self._carry + data
        whole = len(data) & ~1
        self._carry = data[whole:]
        return np.frombuffer(data, dtype="<i2", count=whole // 2)

    @property
    def pending(self) -> int:
        """Bytes held back for the next message (0 or 1)."""
        return len(self._carry)
