"""Per-second rates of monotonic counters, with resets handled the way Prometheus does.

A counter that goes backwards was reset (a reboot of the device, a re-created interface): the
increase since the reset is its new value, so a rate is never negative. The first reading of
a counter has no rate. Pure: the caller passes the time.
"""

from __future__ import annotations

# Below this many seconds between two readings a rate is mostly noise (psutil's CPU times
# move in steps of 10 ms); no rate is reported rather than a wild one.
MIN_WINDOW_S = 0.05


class RateTracker:
    """Remembers the last reading of each counter and turns the next one into a rate."""

    def __init__(self, min_window_s: float = MIN_WINDOW_S) -> None:
        self.min_window_s = min_window_s
        self.resets = 0
        self._last: dict[str, tuple[float, float]] = {}
        self._seen: set[str] = set()

    def step(self, key: str, value: float, now: float) -> tuple[float, float] | None:
        """(increase, seconds) of ``key`` since its previous reading, or None.

        None on the first reading and when the readings are too close together; the
        reading is remembered either way (a too-close one keeps the older base).
        """
        self._seen.add(key)
        last = self._last.get(key)
        if last is None:
            self._last[key] = (value, now)
            return None
        last_value, last_at = last
        elapsed = now - last_at
        if elapsed < self.min_window_s:
            return None
        self._last[key] = (value, now)
        if value < last_value:
            self.resets += 1
            return value, elapsed
        return value - last_value, elapsed

    def rate(self, key: str, value: float, now: float) -> float | None:
        """The per-second rate of ``key`` since its previous reading, or None (see ``step``)."""
        found = self.step(key, value, now)
        return None if found is None else found[0] / found[1]

    def sweep(self) -> int:
        """Forget counters not read since the previous sweep (a removed disk, say).

        Returns how many were forgotten; call it once per collection round.
        """
        gone = self._last.keys() - self._seen
        for key in gone:
            del self._last[key]
        self._seen.clear()
        return len(gone)

    def __len__(self) -> int:
        return len(self._last)
