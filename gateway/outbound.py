"""The per-connection outbound queue: bounded, conflating by topic, throttled, slow-client aware.

Pure logic with an injected clock: the fan-out pushes, the connection's writer takes what is
ready, sends it, and sleeps until ``next_deadline()`` or the next push. Nothing here blocks,
so one slow client never delays the fan-out or the other clients.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from hub.throttle import Throttle

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

_PRUNE_EVERY_S = 5.0


def _first(entry: tuple[int, object, object]) -> int:
    return entry[0]


@dataclass(frozen=True, slots=True)
class OutboundLimits:
    """Bounds of one connection's queue (counts of frames; docs/protocol-notes.md).

    ``high_water``: from this many pending frames on, a new update replaces the pending update
    of its topic instead of queueing behind it, and the slow-consumer clock runs.
    ``max_pending``: the hard cap on pending frames; past it the queue overflows.
    ``max_control``: the cap on pending control frames (acks, errors, snapshots, ...), which
    are never conflated or dropped: past it the queue overflows.
    ``slow_after_s``: a connection under pressure (queue at or over ``high_water``, or its
    transport blocked) for this long is a slow consumer.
    An overflowed or slow connection is closed by the caller with 1013 ``slow consumer``.
    """

    high_water: int = 2048
    max_pending: int = 8192
    max_control: int = 4096
    slow_after_s: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.high_water <= self.max_pending:
            raise ValueError("need 1 <= high_water <= max_pending")
        if self.max_control < 1:
            raise ValueError("max_control must be >= 1")
        if not self.slow_after_s > 0:
            raise ValueError("slow_after_s must be > 0")


DEFAULT_OUTBOUND_LIMITS = OutboundLimits()


class Ready(NamedTuple, Generic[T]):
    """One frame to send now.

    ``cursor_from`` is None, or (for an update sent after a newer one, which conflation and
    throttling cause) the newest update already sent: send ``item`` with that one's cursor,
    so the cursors a client sees never go back.
    """

    item: T
    cursor_from: T | None = None


class _Slot(Generic[K, T]):
    __slots__ = ("topic", "item", "order")

    def __init__(self, topic: K | None, item: T, order: int) -> None:
        self.topic = topic  # None for a control frame
        self.item = item
        self.order = order  # push order of the update the slot now holds


class OutboundQueue(Generic[K, T]):
    """One connection's pending frames, in order: control frames and updates keyed by topic.

    Updates: ``push_update(topic, item, throttle_s)``. With a throttle, at most one update per
    topic leaves per window, the newest of the window, at the latest at the window's end
    (``hub.throttle.Throttle``). Without one, every update is queued; from ``high_water`` on,
    a new update replaces its topic's pending one (the client sees a seq jump, as the protocol
    says for a client that reads too slowly). Control frames are never replaced or dropped.

    Pushes return False once the queue has overflowed; from then on it accepts nothing and
    the caller must close the connection with 1013.
    """

    def __init__(
        self,
        limits: OutboundLimits = DEFAULT_OUTBOUND_LIMITS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._fifo: deque[_Slot[K, T]] = deque()
        self._latest: dict[K, _Slot[K, T]] = {}  # the newest pending slot of each topic
        self._control = 0
        # One Throttle per distinct window length (a connection uses one or two), so that no
        # per-topic setting outlives the topic's windows; made on first use.
        self._throttles: dict[float, Throttle[K, tuple[int, T]]] = {}
        self._held_topics: dict[K, float] = {}  # topic -> the window length it is held in
        self._orders = itertools.count()
        self._sent_order = -1
        self._sent_item: T | None = None
        self._pressure_since: float | None = None
        self._blocked_since: float | None = None
        self._next_prune = 0.0
        self.overflowed = False
        self.conflated = 0  # updates replaced by a newer one before being sent
        self.sent = 0

    # -- pushing ----------------------------------------------------------------------------
    def push_control(self, item: T) -> bool:
        """Queue a control frame (ack, error, snapshot, reset, history, pong, alert)."""
        if self.overflowed:
            return False
        if self._control >= self.limits.max_control or len(self._fifo) >= self.limits.max_pending:
            self.overflowed = True
            return False
        self._fifo.append(_Slot(None, item, -1))
        self._control += 1
        self._note_length()
        return True

    def push_update(self, topic: K, item: T, throttle_s: float = 0.0) -> bool:
        """Queue the newest update of ``topic`` under a throttle of ``throttle_s`` (0: none).

        Push updates in the order their cursors grow (the reader's order, a replay first).
        """
        if self.overflowed:
            return False
        order = next(self._orders)
        held_in = self._held_topics.get(topic)
        if held_in is not None and held_in != throttle_s:
            # The topic's window length changed (or it became unthrottled): what is held is
            # older than this update, so it goes.
            self._throttles[held_in].discard(topic)
            del self._held_topics[topic]
            self.conflated += 1
        if throttle_s <= 0:
            return self._enqueue(topic, item, order, throttled=False)
        throttle = self._throttles.get(throttle_s)
        if throttle is None:
            throttle = self._throttles[throttle_s] = Throttle(throttle_s, clock=self._clock)
        if topic in self._held_topics:
            self.conflated += 1
        if not throttle.offer(topic, (order, item)).emit:
            self._held_topics[topic] = throttle_s
            return True
        self._held_topics.pop(topic, None)
        return self._enqueue(topic, item, order, throttled=True)

    def _enqueue(self, topic: K, item: T, order: int, *, throttled: bool) -> bool:
        pending = self._latest.get(topic)
        if pending is not None and (throttled or len(self._fifo) >= self.limits.high_water):
            pending.item = item
            pending.order = order
            self.conflated += 1
            return True
        if len(self._fifo) >= self.limits.max_pending:
            self.overflowed = True
            return False
        slot = _Slot(topic, item, order)
        self._fifo.append(slot)
        self._latest[topic] = slot
        self._note_length()
        return True

    # -- taking -----------------------------------------------------------------------------
    def take(self, max_items: int | None = None) -> list[Ready[T]]:
        """The frames to send now, in order (at most ``max_items``); throttled ones when due."""
        now = self._clock()
        if self._throttles:
            due: list[tuple[int, K, T]] = []
            for throttle in self._throttles.values():
                due.extend((order, topic, item) for topic, (order, item) in throttle.pop_due(now))
            due.sort(key=_first)  # in push order, so the cursors they carry grow
            for order, topic, item in due:
                self._held_topics.pop(topic, None)
                if not self._enqueue(topic, item, order, throttled=True):
                    break
            if now >= self._next_prune:
                self._next_prune = now + _PRUNE_EVERY_S
                for throttle in self._throttles.values():
                    throttle.prune(now)
        fifo = self._fifo
        count = len(fifo) if max_items is None else min(max_items, len(fifo))
        out: list[Ready[T]] = []
        for _ in range(count):
            slot = fifo.popleft()
            key = slot.topic
            if key is None:
                self._control -= 1
                out.append(Ready(slot.item))
                continue
            if self._latest.get(key) is slot:
                del self._latest[key]
            if slot.order > self._sent_order:
                self._sent_order = slot.order
                self._sent_item = slot.item
                out.append(Ready(slot.item))
            else:
                out.append(Ready(slot.item, self._sent_item))
        self.sent += len(out)
        if len(fifo) < self.limits.high_water:
            self._pressure_since = None
        return out

    def next_deadline(self) -> float | None:
        """When to call ``take()``/``is_slow()`` next without a push: a held update falls due,
        or the slow-consumer limit is reached. None when nothing is pending on the clock."""
        deadlines = []
        for throttle in self._throttles.values():
            due = throttle.next_due()
            if due is not None:
                deadlines.append(due)
        for since in (self._pressure_since, self._blocked_since):
            if since is not None:
                deadlines.append(since + self.limits.slow_after_s)
        return min(deadlines, default=None)

    # -- slow consumers ---------------------------------------------------------------------
    def note_transport(self, blocked: bool) -> None:
        """Tell the queue whether the transport is over its high-water mark (a send waits)."""
        if not blocked:
            self._blocked_since = None
        elif self._blocked_since is None:
            self._blocked_since = self._clock()

    def is_slow(self) -> bool:
        """Whether the caller must close with 1013: overflowed, or under pressure too long."""
        if self.overflowed:
            return True
        limit = self.limits.slow_after_s
        now = self._clock()
        return any(
            since is not None and now - since >= limit
            for since in (self._pressure_since, self._blocked_since)
        )

    def _note_length(self) -> None:
        if self._pressure_since is None and len(self._fifo) >= self.limits.high_water:
            self._pressure_since = self._clock()

    # -- unsubscribe, teardown, introspection -----------------------------------------------
    def drop_topic(self, topic: K) -> int:
        """Forget the pending and held updates of ``topic`` (it is no longer subscribed)."""
        dropped = 0
        if self._held_topics.pop(topic, None) is not None:
            dropped += 1
        for throttle in self._throttles.values():
            throttle.discard(topic)
        if self._latest.pop(topic, None) is not None:
            kept = deque(slot for slot in self._fifo if slot.topic != topic)
            dropped += len(self._fifo) - len(kept)
            self._fifo = kept
        if len(self._fifo) < self.limits.high_water:
            self._pressure_since = None
        return dropped

    def held_topics(self) -> list[K]:
        """The topics with an update held by their throttle window."""
        return list(self._held_topics)

    def pending_topics(self) -> list[K]:
        """The topics with an update pending or held (what ``drop_topic`` can drop)."""
        return [*self._latest, *(t for t in self._held_topics if t not in self._latest)]

    def clear(self) -> None:
        """Drop everything (on disconnect)."""
        self._fifo.clear()
        self._latest.clear()
        self._control = 0
        self._throttles.clear()
        self._held_topics.clear()
        self._pressure_since = self._blocked_since = None

    def __len__(self) -> int:
        """Frames ready to send (held updates not counted)."""
        return len(self._fifo)

    @property
    def held(self) -> int:
        """Updates held by throttle windows."""
        return len(self._held_topics)

    @property
    def control_pending(self) -> int:
        return self._control
