"""The collector's clock: ticks on a monotonic, drift-free schedule, with first-tick jitter.

``Schedule`` is pure (it is given the time and returns deadlines); ``ticks`` drives it with
a clock and a sleep function, both replaceable so tests run on a fake clock.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable


class Schedule:
    """Deadlines ``origin + k * interval`` for k = 0, 1, 2...: errors never accumulate.

    ``origin`` is the start time plus ``delay`` plus a random offset in [0, ``jitter``), so
    a fleet of collectors started together spreads its writes. A tick that overruns the next
    deadlines skips them (counted in ``skipped``) instead of firing a burst to catch up.
    """

    def __init__(
        self,
        interval: float,
        *,
        start: float,
        delay: float = 0.0,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if not interval > 0 or not math.isfinite(interval):
            raise ValueError(f"interval must be a finite number > 0, got {interval!r}")
        if delay < 0 or jitter < 0:
            raise ValueError("delay and jitter must be >= 0")
        offset = (rng or random).uniform(0.0, jitter) if jitter > 0 else 0.0
        self.interval = interval
        self.origin = start + delay + offset
        self.skipped = 0
        self._index = 0

    @property
    def due(self) -> float:
        """The deadline of the current tick."""
        return self.origin + self._index * self.interval

    def advance(self, now: float) -> float:
        """Move past the current tick (run at ``now``) and return the next deadline.

        Deadlines already in the past are skipped: the next deadline is never before ``now``
        minus nothing, so an overrun costs ticks, never a burst of them.
        """
        self._index += 1
        due = self.due
        if due < now:
            missed = math.floor((now - due) / self.interval)
            if self.origin + (self._index + missed) * self.interval < now:
                missed += 1
            self._index += missed
            self.skipped += missed
        return self.due


async def ticks(
    schedule: Schedule,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> AsyncIterator[float]:
    """Yield each deadline of ``schedule`` once it is reached. Cancelling is safe.

    The consumer runs its work between two yields; the time it takes delays nothing but
    the ticks it overruns.
    """
    due = schedule.due
    while True:
        delay = due - clock()
        if delay > 0:
            await sleep(delay)
        yield due
        due = schedule.advance(clock())
