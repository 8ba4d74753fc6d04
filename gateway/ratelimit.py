"""Per-connection request rate limiting: a token bucket, and the rule that ends abusive clients.

Every frame a client sends costs one token (malformed ones too, or a flood of garbage would
be free). A request without a token is answered with ``rate_limited``; a client that keeps
going past that is closed with 4008. Pure logic with an injected clock.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` saved up; starts full."""

    __slots__ = ("rate_per_s", "burst", "_tokens", "_updated", "_clock")

    def __init__(
        self, rate_per_s: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not rate_per_s > 0 or not burst >= 1:
            raise ValueError("a token bucket needs rate_per_s > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def try_take(self, tokens: float = 1.0) -> bool:
        """Take ``tokens`` if the bucket holds them; False (and nothing taken) otherwise."""
        now = self._clock()
        elapsed = now - self._updated
        self._updated = now
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate_per_s)
        if self._tokens >= tokens:
            self._tokens -= tokens
            return True
        return False

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        elapsed = max(0.0, self._clock() - self._updated)
        return min(self.burst, self._tokens + elapsed * self.rate_per_s)


class Verdict(enum.Enum):
    """What to do with a request."""

    ALLOW = "allow"
    REJECT = "reject"  # answer with error ``rate_limited``; the connection lives
    CLOSE = "close"  # close with 4008 (policy violation)


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Requests per second per connection, the burst allowed, and when rejections end it.

    A connection rejected more than ``max_violations`` times within ``violation_window_s``
    is closed with 4008.
    """

    rate_per_s: float = 20.0
    burst: int = 50
    max_violations: int = 20
    violation_window_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0 or self.burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        if self.max_violations < 0 or not self.violation_window_s > 0:
            raise ValueError("max_violations must be >= 0 and violation_window_s > 0")


DEFAULT_RATE_LIMITS = RateLimits()


class RequestLimiter:
    """One connection's request budget; call ``check()`` once per frame received."""

    __slots__ = ("limits", "_bucket", "_violations", "_clock", "_closed", "rejected")

    def __init__(
        self, limits: RateLimits = DEFAULT_RATE_LIMITS, *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._bucket = TokenBucket(limits.rate_per_s, limits.burst, clock=clock)
        self._violations: deque[float] | None = None  # made on the first rejection
        self._closed = False
        self.rejected = 0

    def check(self) -> Verdict:
        """The verdict on one more request; once CLOSE, always CLOSE."""
        if self._closed:
            return Verdict.CLOSE
        if self._bucket.try_take():
            return Verdict.ALLOW
        self.rejected += 1
        now = self._clock()
        window_start = now - self.limits.violation_window_s
        violations = self._violations
        if violations is None:
            violations = self._violations = deque()
        while violations and violations[0] <= window_start:
            violations.popleft()
        violations.append(now)
        if len(violations) > self.limits.max_violations:
            self._closed = True
            violations.clear()
            return Verdict.CLOSE
        return Verdict.REJECT
