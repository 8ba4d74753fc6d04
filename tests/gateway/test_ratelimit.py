"""Token bucket and per-connection request limiter, driven by a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ratelimit import RateLimits, RequestLimiter, TokenBucket, Verdict


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 50.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_refills_at_the_rate() -> None:
    """A full bucket gives ``burst`` tokens at once, then ``rate`` per second, capped at burst."""
    clock = FakeClock()
    bucket = TokenBucket(2.0, 3, clock=clock)
    assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5
    assert bucket.try_take()
    assert not bucket.try_take()
    clock.now += 100
    assert bucket.tokens == 3
    assert bucket.try_take(3)
    assert not bucket.try_take(0.5)


def test_bucket_settings_are_validated() -> None:
    """A bucket needs a positive rate and room for one token."""
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(0, 1)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(1, 0.5)


def test_a_clock_going_back_does_not_mint_tokens() -> None:
    """A clock that steps back adds nothing (and takes nothing away)."""
    clock = FakeClock()
    bucket = TokenBucket(1.0, 1, clock=clock)
    assert bucket.try_take()
    clock.now -= 10
    assert not bucket.try_take()
    assert bucket.tokens == 0


def test_limiter_rejects_over_the_rate_then_closes_on_repeats() -> None:
    """Over the budget: REJECT (error rate_limited); past max_violations in the window: CLOSE."""
    clock = FakeClock()
    limiter = RequestLimiter(RateLimits(rate_per_s=1, burst=2, max_violations=3,
                                        violation_window_s=10), clock=clock)
    assert [limiter.check() for _ in range(2)] == [Verdict.ALLOW] * 2
    assert [limiter.check() for _ in range(3)] == [Verdict.REJECT] * 3
    assert limiter.check() is Verdict.CLOSE
    clock.now += 100
    assert limiter.check() is Verdict.CLOSE  # closing is final
    assert limiter.rejected == 4


def test_violations_outside_the_window_are_forgiven() -> None:
    """Rejections spread wider than violation_window_s never add up to a close."""
    clock = FakeClock()
    limiter = RequestLimiter(RateLimits(rate_per_s=1e-6, burst=1, max_violations=2,
                                        violation_window_s=5), clock=clock)
    assert limiter.check() is Verdict.ALLOW
    for _ in range(20):
        assert limiter.check() is Verdict.REJECT
        clock.now += 3  # at most two rejections inside any 5 s window
    assert limiter.check() is Verdict.REJECT  # the previous one is 3 s old: two in the window
    assert limiter.check() is Verdict.CLOSE  # three inside 5 s


def test_rate_limits_are_validated() -> None:
    """Inconsistent limits are refused."""
    for bad in ({"rate_per_s": 0}, {"burst": 0}, {"max_violations": -1},
                {"violation_window_s": 0}):
        with pytest.raises(ValueError, match="must"):
            RateLimits(**bad)


@settings(max_examples=200, deadline=None)
@given(gaps=st.lists(st.floats(0.0, 2.0), max_size=200), rate=st.floats(0.5, 20.0),
       burst=st.integers(1, 20))
def test_bucket_never_allows_more_than_rate_times_time_plus_burst(
    gaps: list[float], rate: float, burst: int
) -> None:
    """Over any run, allowed requests <= burst + rate * elapsed."""
    clock = FakeClock(0.0)
    bucket = TokenBucket(rate, burst, clock=clock)
    allowed = 0
    for gap in gaps:
        clock.now += gap
        allowed += bucket.try_take()
        assert allowed <= burst + rate * clock.now + 1e-9
