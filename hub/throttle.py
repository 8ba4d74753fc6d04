"""A keyed throttle with conflation: at most one emission per key per interval, newest wins.

Pure logic with an injected clock (no tasks, no sleeps): the caller offers values, sends the
ones the throttle says to emit now, and calls ``pop_due()`` from its own timer at
``next_due()`` to send what was held. A held value is due when its key's window ends, so no
value waits longer than one window.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Hashable
from typing import Generic, NamedTuple, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Offer(NamedTuple):
    """The throttle's answer to ``offer()``.

    ``emit`` True: send the value now; ``due_at`` is when this key's next window opens.
    ``emit`` False: the value is held (replacing any older held value of the key) and will be
    returned by ``pop_due()`` at ``due_at``.
    """

    emit: bool
    due_at: float


class Throttle(Generic[K, V]):
    """Per-key rate limit with conflation (the newest value of a window is always emitted).

    Rules, per key: the first value emits immediately; a value offered less than ``interval``
    after the last emission is held, replacing any value already held; the held value becomes
    due when the window ends (last emission + interval) and ``pop_due()`` returns it then.
    An interval of 0 emits everything. Intervals can be set per key.
    """

    def __init__(
        self, interval_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        _check_interval(interval_s)
        self.interval_s = interval_s
        self._clock = clock
        self._intervals: dict[K, float] = {}
        self._last_emit: dict[K, float] = {}
        self._held: dict[K, tuple[float, V]] = {}
        # (due_at, tiebreak, key); an entry is stale once its key is no longer held at that due
        self._heap: list[tuple[float, int, K]] = []
        self._tiebreak = itertools.count()

    def interval_for(self, key: K) -> float:
        return self._intervals.get(key, self.interval_s)

    def set_interval(self, key: K, interval_s: float | None) -> None:
        """Give ``key`` its own interval (None returns it to the default).

        Applies from the key's next window; a value already held keeps its due time.
        """
        if interval_s is None:
            self._intervals.pop(key, None)
            return
        _check_interval(interval_s)
        self._intervals[key] = interval_s

    def offer(self, key: K, value: V) -> Offer:
        """Offer the newest value of ``key``; the answer says whether to send it now."""
        now = self._clock()
        interval = self.interval_for(key)
        last = self._last_emit.get(key)
        # Compare against the due time itself (not now - last) so that "due at T" and
        # "emits at T" agree exactly in floating point.
        if last is None or now >= last + interval:
            # The window is over: the newest value goes now, and anything held is older.
            self._held.pop(key, None)
            self._last_emit[key] = now
            return Offer(True, now + interval)
        held = self._held.get(key)
        due = held[0] if held is not None else last + interval
        if held is None:
            heapq.heappush(self._heap, (due, next(self._tiebreak), key))
        self._held[key] = (due, value)
        return Offer(False, due)

    def next_due(self) -> float | None:
        """When the earliest held value is due (clock time), or None if nothing is held."""
        heap = self._heap
        while heap:
            due, _, key = heap[0]
            held = self._held.get(key)
            if held is not None and held[0] == due:
                return due
            heapq.heappop(heap)  # stale: emitted early by offer() or discarded
        return None

    def pop_due(self, now: float | None = None) -> list[tuple[K, V]]:
        """Remove and return the held values that are due, earliest first; they count as emitted."""
        now = self._clock() if now is None else now
        out: list[tuple[K, V]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, key = heapq.heappop(heap)
            held = self._held.get(key)
            if held is None or held[0] != due:
                continue
            del self._held[key]
            # The next window starts at the real emission, so spacing never drops below interval.
            self._last_emit[key] = now
            out.append((key, held[1]))
        return out

    def held(self, key: K) -> V | None:
        """The value held for ``key``, if any (it stays held)."""
        entry = self._held.get(key)
        return entry[1] if entry is not None else None

    def discard(self, key: K) -> V | None:
        """Drop what is held for ``key`` and forget its window; returns the dropped value."""
        self._last_emit.pop(key, None)
        self._intervals.pop(key, None)
        entry = self._held.pop(key, None)
        return entry[1] if entry is not None else None

    def prune(self, now: float | None = None) -> int:
        """Forget the windows that have ended with nothing held (bounds memory for many keys)."""
        now = self._clock() if now is None else now
        ended = [
            key for key, last in self._last_emit.items()
            if key not in self._held and now >= last + self.interval_for(key)
        ]
        for key in ended:
            del self._last_emit[key]
        return len(ended)

    def clear(self) -> None:
        """Drop everything held and every window."""
        self._last_emit.clear()
        self._held.clear()
        self._heap.clear()

    def __len__(self) -> int:
        """How many values are held."""
        return len(self._held)

    def __contains__(self, key: object) -> bool:
        return key in self._held


def _check_interval(interval_s: float) -> None:
    if not interval_s >= 0:  # also rejects NaN
        raise ValueError(f"throttle interval must be >= 0 seconds, got {interval_s!r}")
