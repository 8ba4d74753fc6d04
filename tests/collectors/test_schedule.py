"""Tests of the drift-free schedule (collectors/schedule.py), on a fake clock."""

from __future__ import annotations

import random

import pytest

from collectors.schedule import Schedule, ticks


class FakeClock:
    """A clock that only moves when told to; ``sleep`` moves it."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_deadlines_do_not_drift_with_work_time() -> None:
    """Deadlines stay on origin + k*interval however long each tick's work takes."""
    schedule = Schedule(0.5, start=10.0)
    now = 10.0
    deadlines = [schedule.due]
    for work in (0.01, 0.2, 0.49, 0.0, 0.3):
        now = deadlines[-1] + work
        deadlines.append(schedule.advance(now))
    assert deadlines == pytest.approx([10.0, 10.5, 11.0, 11.5, 12.0, 12.5])
    assert schedule.skipped == 0


def test_an_overrun_skips_missed_ticks_instead_of_bursting() -> None:
    """A tick that overruns 2.3 intervals skips the missed deadlines and counts them."""
    schedule = Schedule(1.0, start=0.0)
    assert schedule.advance(3.3) == pytest.approx(4.0)
    assert schedule.skipped == 3
    assert schedule.advance(4.1) == pytest.approx(5.0)


def test_an_exact_deadline_is_not_skipped() -> None:
    """Finishing exactly on the next deadline keeps that deadline."""
    schedule = Schedule(1.0, start=0.0)
    assert schedule.advance(1.0) == pytest.approx(1.0)
    assert schedule.skipped == 0


def test_delay_and_jitter_shift_only_the_origin() -> None:
    """The first tick waits delay plus a jitter below the bound; later ticks keep the step."""
    origins = set()
    for seed in range(20):
        schedule = Schedule(1.0, start=5.0, delay=1.0, jitter=0.5, rng=random.Random(seed))
        assert 6.0 <= schedule.due < 6.5
        origins.add(round(schedule.due, 6))
        first = schedule.due
        assert schedule.advance(first) == pytest.approx(first + 1.0)
    assert len(origins) > 10  # spread, not lockstep


def test_bad_intervals_are_refused() -> None:
    """A zero, negative or infinite interval raises ValueError."""
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="interval"):
            Schedule(bad, start=0.0)


async def test_ticks_sleep_until_each_deadline() -> None:
    """The async driver sleeps exactly up to each deadline on the fake clock."""
    clock = FakeClock(100.0)
    schedule = Schedule(0.2, start=100.0, delay=0.2)
    seen = []
    async for due in ticks(schedule, clock=clock, sleep=clock.sleep):
        seen.append(due)
        clock.now += 0.05  # work
        if len(seen) == 4:
            break
    assert seen == pytest.approx([100.2, 100.4, 100.6, 100.8])
    assert clock.sleeps == pytest.approx([0.2, 0.15, 0.15, 0.15])
