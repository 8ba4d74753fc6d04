"""Waiting on conditions with deadlines: the one way tests here wait (never a sleep that hopes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(cond: Callable[[], bool], timeout: float = 5.0,
                     interval: float = 0.001) -> None:
    """Wait until ``cond()`` holds, failing after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(interval)
