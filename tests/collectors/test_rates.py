"""Tests of counter rates and resets (collectors/rates.py)."""

from __future__ import annotations

import pytest

from collectors.rates import RateTracker


def test_first_reading_has_no_rate_then_rates_follow() -> None:
    """The first reading gives None; the next gives increase per second."""
    rates = RateTracker()
    assert rates.rate("rx", 1000, 10.0) is None
    assert rates.rate("rx", 1500, 11.0) == pytest.approx(500.0)
    assert rates.rate("rx", 1500, 13.0) == pytest.approx(0.0)


def test_a_counter_that_goes_backwards_is_a_reset_never_negative() -> None:
    """A drop counts as a reset: the increase is the new value, the rate never negative."""
    rates = RateTracker()
    rates.rate("rx", 10_000, 0.0)
    rate = rates.rate("rx", 300, 2.0)
    assert rate == pytest.approx(150.0)
    assert rates.resets == 1
    assert rates.rate("rx", 500, 3.0) == pytest.approx(200.0)


def test_readings_too_close_together_keep_the_older_base() -> None:
    """Below the minimum window no rate is given and the base is kept for the next one."""
    rates = RateTracker(min_window_s=0.05)
    rates.rate("x", 0, 0.0)
    assert rates.rate("x", 1, 0.01) is None
    assert rates.rate("x", 10, 1.0) == pytest.approx(10.0)


def test_step_reports_increase_and_window() -> None:
    """step() gives the increase and the seconds it covers."""
    rates = RateTracker()
    assert rates.step("c", 5, 1.0) is None
    assert rates.step("c", 8, 1.5) == (3, 0.5)


def test_sweep_forgets_counters_that_disappeared() -> None:
    """A counter not read since the last sweep is forgotten (a removed interface)."""
    rates = RateTracker()
    rates.rate("a", 1, 0.0)
    rates.rate("b", 1, 0.0)
    assert rates.sweep() == 0
    rates.rate("a", 2, 1.0)
    assert rates.sweep() == 1
    assert len(rates) == 1
    assert rates.rate("b", 5, 2.0) is None  # b starts over
