"""The keyed throttle/conflation window, driven by a fake clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.throttle import Offer, Throttle


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_first_value_emits_immediately() -> None:
    """A key with no recent emission emits at once, and says when its next window opens."""
    clock = FakeClock()
    throttle: Throttle[str, int] = Throttle(1.0, clock=clock)
    assert throttle.offer("a", 1) == Offer(True, 101.0)
    assert len(throttle) == 0
    assert throttle.next_due() is None


def test_values_within_window_conflate_to_newest() -> None:
    """Values offered inside the window are held, each replacing the one before."""
    clock = FakeClock()
    throttle: Throttle[str, int] = Throttle(1.0, clock=clock)
    throttle.offer("a", 1)
    clock.advance(0.2)
    assert throttle.offer("a", 2) == Offer(False, 101.0)
    clock.advance(0.3)
    assert throttle.offer("a", 3) == Offer(False, 101.0)
    assert throttle.held("a") == 3
    assert len(throttle) == 1
    assert "a" in throttle


def test_newest_is_emitted_at_window_end() -> None:
    """pop_due returns nothing before the window ends and the newest value when it does."""
    clock = FakeClock()
    throttle: Throttle[str, int] = Throttle(1.0, clock=clock)
    throttle.offer("a", 1)
    clock.advance(0.5)
    throttle.offer("a", 2)
    throttle.offer("a", 3)
    assert throttle.next_due() == 101.0
    clock.advance(0.49)
    assert throttle.pop_due() == []
    clock.advance(0.01)
    assert throttle.pop_due() == [("a", 3)]
    assert throttle.pop_due() == []
    assert throttle.next_due() is None


def test_emission_at_window_end_starts_a_new_window() -> None:
    """After a flushed value, the next offer within one interval is held again."""
    clock = FakeClock()
    throttle: Throttle[str, int] = Throttle(1.0, clock=clock)
    throttle.offer("a", 1)
    clock.advance(0.5)
    throttle.offer("a", 2)
    clock.advance(0.5)
    assert throttle.pop_due() == [("a", 2)]
    clock.advance(0.1)
    assert throttle.offer("a", 3) == Offer(False, 102.0)


def test_late_flush_counts_from_real_emission() -> None:
    """A timer that fires late starts the next window at the real emission time."""
    clock = FakeClock()
    throttle: Throttle[str, int] = Throttle(1.0, clock=clock)
    throttle.offer("a", 1)
    clock.advance(0.5)
    throttle.offer("a", 2)
    clock.advance(0.8)  # 0.3 s late
    assert throttle.pop_due() == [("a", 2)]
    clock.advance(0.9)
    assert throttle.offer("a", 3).emit is False
    clock.advance(0.1)
    assert throttle.offer("a", 4).emit is True


def test_offer_after_due_emits_newest_and_drops_held() -> None:
    """An offer after a held value's due time (timer not run yet) emits the newer value now."""
    clock = FakeClock()
    throttle: Throttle[str, int] = Throttle(1.0, clock=clock)
    throttle.offer("a", 1)
    clock.advance(0.5)
    throttle.offer("a", 2)
    clock.advance(0.6)
    assert throttle.offer("a", 3).emit is True
    assert throttle.pop_due() == []
    assert throttle.next_due() is None
    assert len(throttle) == 0


def test_keys_are_independent() -> None:
    """Each key has its own window; pop_due returns due keys earliest first."""
    clock = FakeClock()
    throttle: Throttle[str, int] = Throttle(1.0, clock=clock)
    throttle.offer("a", 1)
    clock.advance(0.3)
    throttle.offer("b", 1)
    assert throttle.offer("b", 2).due_at == pytest.approx(101.3)
    assert throttle.offer("a", 2).due_at == 101.0
    clock.advance(1.0)
    assert throttle.pop_due() == [("a", 2), ("b", 2)]


def test_per_key_interval() -> None:
    """A key with its own interval uses it; None returns it to the default."""
    clock = FakeClock()
    throttle: Throttle[str, int] = Throttle(1.0, clock=clock)
    throttle.set_interval("fast", 0.1)
    assert throttle.interval_for("fast") == 0.1
    throttle.offer("fast", 1)
    clock.advance(0.1)
    assert throttle.offer("fast", 2).emit is True
    throttle.set_interval("fast", None)
    assert throttle.interval_for("fast") == 1.0


def test_zero_interval_never_holds() -> None:
    """An interval of 0 emits every value."""
    throttle: Throttle[str, int] = Throttle(0.0, clock=FakeClock())
    assert all(throttle.offer("a", i).emit for i in range(5))


@pytest.mark.parametrize("bad", [-1.0, math.nan])
def test_invalid_interval_rejected(bad: float) -> None:
    """A negative or NaN interval is refused, for the default and per key."""
    with pytest.raises(ValueError, match="interval"):
        Throttle(bad)
    throttle: Throttle[str, int] = Throttle(1.0)
    with pytest.raises(ValueError, match="interval"):
        throttle.set_interval("a", bad)


def test_discard_and_clear() -> None:
    """discard drops a key's held value and window; clear drops everything."""
    clock = FakeClock()
    throttle: Throttle[str, int] = Throttle(1.0, clock=clock)
    throttle.offer("a", 1)
    throttle.offer("a", 2)
    assert throttle.discard("a") == 2
    assert throttle.next_due() is None
    assert throttle.offer("a", 3).emit is True  # window forgotten
    throttle.offer("a", 4)
    throttle.offer("b", 1)
    throttle.offer("b", 2)
    throttle.clear()
    assert len(throttle) == 0
    clock.advance(5)
    assert throttle.pop_due() == []
    assert throttle.offer("a", 5).emit is True


def test_prune_forgets_ended_windows_only() -> None:
    """prune drops windows that ended with nothing held, and keeps live ones."""
    clock = FakeClock()
    throttle: Throttle[str, int] = Throttle(1.0, clock=clock)
    throttle.offer("old", 1)
    clock.advance(0.5)
    throttle.offer("held", 1)
    throttle.offer("held", 2)
    clock.advance(0.6)
    assert throttle.prune() == 1  # "old"; "held" still has a value waiting
    assert throttle.held("held") == 2


@settings(max_examples=200, deadline=None)
@given(
    interval=st.sampled_from([0.05, 0.5, 1.0, 3.0]),
    steps=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0.0, 2.0)), max_size=60
    ),
)
def test_invariants_under_random_offers(
    interval: float, steps: list[tuple[str, float]]
) -> None:
    """For any offers, emissions per key are >= one interval apart, the newest value always
    gets out, and no held value waits longer than one window."""
    clock = FakeClock(0.0)
    throttle: Throttle[str, int] = Throttle(interval, clock=clock)
    emitted: dict[str, list[tuple[float, int]]] = {}
    offered_at: dict[tuple[str, int], float] = {}
    last_value: dict[str, int] = {}

    def emit(key: str, value: int) -> None:
        emitted.setdefault(key, []).append((clock.now, value))
        # held no longer than one window (the flush is driven exactly at next_due)
        assert clock.now - offered_at[(key, value)] <= interval + 1e-9

    def run_timer_until(t: float) -> None:
        while (due := throttle.next_due()) is not None and due <= t:
            clock.now = due
            for key, value in throttle.pop_due():
                emit(key, value)
        clock.now = t

    for i, (key, gap) in enumerate(steps):
        run_timer_until(clock.now + gap)
        offered_at[(key, i)] = clock.now
        last_value[key] = i
        if throttle.offer(key, i).emit:
            emit(key, i)
    run_timer_until(clock.now + interval + 1)

    for key, values in emitted.items():
        times = [t for t, _ in values]
        assert all(b - a >= interval - 1e-9 for a, b in zip(times, times[1:], strict=False))
        assert values[-1][1] == last_value[key]
    assert set(emitted) == set(last_value)
    assert len(throttle) == 0
