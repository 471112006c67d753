"""Waiting for what a test expects to happen: poll the observable state until it holds, with a
deadline, rather than sleep for a time that is too long on a quiet machine and too short on a busy one."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


async def until(predicate: Callable[[], T | Awaitable[T]], timeout: float = 5.0, what: str = "condition",
                interval: float = 0.02) -> T:
    """Call `predicate` (plain or async) until it returns something true, and return that; fail the
    test when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value: Any = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(interval)


def file_closed(path: Path) -> bool:
    """`path` exists and no descriptor of this process has it open: a writer in this process (a
    gateway started in the test's own process) is done with it."""
    if not path.exists():
        return False
    target = str(path.resolve())
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if os.readlink(fd) == target:
                return False
        except OSError:
            continue        # closed while we looked
    return True
