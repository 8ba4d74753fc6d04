"""The outbound queue: order, conflation, throttle windows, bounds, cursors and slow consumers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.outbound import OutboundLimits, OutboundQueue, Ready


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock, **limits: float) -> OutboundQueue[str, str]:
    return OutboundQueue(OutboundLimits(**limits), clock=clock)  # type: ignore[arg-type]


def items(ready: list[Ready[str]]) -> list[str]:
    return [r.item for r in ready]


def test_updates_and_control_frames_leave_in_push_order() -> None:
    """Below the high-water mark nothing is conflated and everything keeps its order."""
    q = make(FakeClock())
    q.push_control("ack")
    q.push_update("a", "a1")
    q.push_update("a", "a2")
    q.push_control("snap")
    q.push_update("b", "b1")
    assert len(q) == 5
    assert q.control_pending == 2
    assert q.take() == [Ready("ack"), Ready("a1"), Ready("a2"), Ready("snap"), Ready("b1")]
    assert len(q) == 0
    assert q.control_pending == 0
    assert q.conflated == 0
    assert q.sent == 5


def test_take_honours_max_items() -> None:
    """take(n) returns at most n frames and leaves the rest in order."""
    q = make(FakeClock())
    for n in range(5):
        q.push_update("a", f"a{n}")
    assert items(q.take(2)) == ["a0", "a1"]
    assert items(q.take()) == ["a2", "a3", "a4"]


def test_at_the_high_water_mark_updates_conflate_by_topic() -> None:
    """From high_water on, a topic's new update replaces its pending one; controls never do."""
    clock = FakeClock()
    q = make(clock, high_water=3, max_pending=10)
    q.push_update("a", "a1")
    q.push_update("b", "b1")
    q.push_update("a", "a2")  # third frame: the queue is now at the mark
    q.push_update("a", "a3")  # replaces a2 in place
    q.push_update("c", "c1")  # a topic with nothing pending still queues
    q.push_control("ack")
    q.push_control("ack2")
    assert q.conflated == 1
    assert items(q.take()) == ["a1", "b1", "a3", "c1", "ack", "ack2"]


def test_an_update_sent_after_a_newer_one_borrows_its_cursor() -> None:
    """When conflation reorders updates, the older one is sent with the newest cursor seen."""
    q = make(FakeClock(), high_water=2, max_pending=10)
    q.push_update("a", "a1")
    q.push_update("b", "b1")
    q.push_update("a", "a2")  # conflated into a1's place, ahead of b1
    q.push_update("b", "b2")  # conflated into b1's place
    q.push_update("a", "a3")  # a2's slot, which is first
    assert q.take() == [Ready("a3"), Ready("b2", "a3")]


def test_the_pressure_clock_makes_a_slow_consumer() -> None:
    """At or over high_water for slow_after_s is slow; draining below it resets the clock."""
    clock = FakeClock()
    q = make(clock, high_water=2, max_pending=10, slow_after_s=5.0)
    q.push_update("a", "a1")
    assert q.next_deadline() is None
    q.push_update("b", "b1")
    assert q.next_deadline() == 105.0
    clock.now += 4.9
    assert not q.is_slow()
    q.take(1)  # below the mark: the clock stops
    assert q.next_deadline() is None
    clock.now += 10
    assert not q.is_slow()
    q.push_update("c", "c1")
    clock.now += 5.0
    assert q.is_slow()


def test_a_blocked_transport_makes_a_slow_consumer() -> None:
    """A transport over its mark for slow_after_s is slow even with a short queue."""
    clock = FakeClock()
    q = make(clock, slow_after_s=3.0)
    q.note_transport(blocked=True)
    q.note_transport(blocked=True)  # the first report starts the clock, later ones do not
    assert q.next_deadline() == 103.0
    clock.now += 2.0
    q.note_transport(blocked=False)
    clock.now += 2.0
    assert not q.is_slow()
    q.note_transport(blocked=True)
    clock.now += 3.0
    assert q.is_slow()


def test_overflow_past_max_pending() -> None:
    """Past max_pending the push fails, the queue is slow, and it accepts nothing more."""
    q = make(FakeClock(), high_water=2, max_pending=3, max_control=3)
    assert q.push_update("a", "a1")
    assert q.push_update("b", "b1")
    assert q.push_update("c", "c1")
    assert q.push_update("a", "a2")  # conflates: no growth
    assert not q.push_update("d", "d1")
    assert q.overflowed
    assert q.is_slow()
    assert not q.push_control("ack")
    assert not q.push_update("a", "a3")
    assert len(q) == 3


def test_control_frames_are_bounded_too() -> None:
    """More pending control frames than max_control overflows the queue."""
    q = make(FakeClock(), max_control=2)
    assert q.push_control("1")
    assert q.push_control("2")
    assert not q.push_control("3")
    assert q.overflowed


def test_limits_are_validated() -> None:
    """Inconsistent limits are refused."""
    for bad in ({"high_water": 0}, {"high_water": 5, "max_pending": 4},
                {"max_control": 0}, {"slow_after_s": 0}):
        with pytest.raises(ValueError, match="need|must"):
            OutboundLimits(**bad)


# -- throttling ----------------------------------------------------------------------------
def test_throttled_topic_sends_first_then_newest_at_the_window_end() -> None:
    """One update per window: the first goes now, later ones conflate, the newest at its end."""
    clock = FakeClock()
    q = make(clock)
    q.push_update("a", "a1", 1.0)
    assert items(q.take()) == ["a1"]
    clock.now += 0.2
    q.push_update("a", "a2", 1.0)
    clock.now += 0.3
    q.push_update("a", "a3", 1.0)
    assert q.take() == []
    assert q.held == 1
    assert q.held_topics() == ["a"]
    assert q.next_deadline() == 101.0
    clock.now = 101.0
    assert items(q.take()) == ["a3"]
    assert q.conflated == 1
    assert q.held == 0
    clock.now += 0.5
    q.push_update("a", "a4", 1.0)  # within the new window that a3 opened
    assert q.take() == []
    clock.now = 102.0
    assert items(q.take()) == ["a4"]


def test_a_released_update_replaces_a_pending_one_of_its_topic() -> None:
    """A throttled topic never has two updates queued: the newer one takes the older's place."""
    clock = FakeClock()
    q = make(clock)
    q.push_update("a", "a1", 1.0)  # queued, not taken (the client is slow)
    clock.now += 1.0
    q.push_update("a", "a2", 1.0)  # a new window: emitted, replaces a1
    assert items(q.take()) == ["a2"]


def test_a_held_update_released_late_carries_the_newest_cursor() -> None:
    """A held update released after newer unthrottled ones is sent with the newest cursor."""
    clock = FakeClock()
    q = make(clock)
    q.push_update("a", "a1", 1.0)
    q.push_update("a", "a2", 1.0)  # held
    q.push_update("b", "b1")
    assert q.take() == [Ready("a1"), Ready("b1")]
    clock.now += 1.0
    assert q.take() == [Ready("a2", "b1")]


def test_a_topic_that_becomes_unthrottled_drops_its_held_update() -> None:
    """Switching a topic to no throttle discards the older held value (never sent after)."""
    q = make(FakeClock())
    q.push_update("a", "a1", 1.0)
    q.push_update("a", "a2", 1.0)
    q.push_update("a", "a3", 0.0)
    assert items(q.take()) == ["a1", "a3"]
    assert q.held == 0
    assert q.next_deadline() is None


def test_a_changed_window_length_drops_the_held_update_and_starts_afresh() -> None:
    """Re-subscribing with another throttle: the older held value goes, the new one is offered."""
    clock = FakeClock()
    q = make(clock)
    q.push_update("a", "a1", 1.0)
    assert items(q.take()) == ["a1"]
    q.push_update("a", "a2", 1.0)  # held in the 1 s window
    q.push_update("a", "a3", 0.5)  # a window of another length: first in it, so it goes now
    assert items(q.take()) == ["a3"]
    assert q.held == 0
    assert q.conflated == 1


def test_held_updates_of_several_window_lengths_leave_in_push_order() -> None:
    """Values released together from different windows go out in the order they were pushed."""
    clock = FakeClock()
    q = make(clock)
    q.push_update("a", "a1", 2.0)
    q.push_update("b", "b1", 1.0)
    q.take()
    clock.now += 0.5
    q.push_update("b", "b2", 1.0)
    q.push_update("a", "a2", 2.0)
    clock.now += 10  # both windows are over; the writer was late
    assert items(q.take()) == ["b2", "a2"]
    clock.now += 10  # a take past the prune interval forgets the ended windows
    assert q.take() == []
    q.push_update("a", "a3", 2.0)
    assert items(q.take()) == ["a3"]


def test_drop_topic_forgets_pending_and_held_updates() -> None:
    """After unsubscribe nothing of the topic leaves the queue; other frames stay."""
    q = make(FakeClock())
    q.push_update("a", "a1")
    q.push_control("ack")
    q.push_update("a", "a2")
    q.push_update("b", "b1", 1.0)
    q.push_update("b", "b2", 1.0)  # held
    assert q.drop_topic("a") == 2
    assert q.drop_topic("b") == 2
    assert q.drop_topic("zzz") == 0
    assert items(q.take()) == ["ack"]
    assert q.held == 0


def test_clear_empties_everything() -> None:
    """clear() (on disconnect) drops frames, held updates and clocks."""
    clock = FakeClock()
    q = make(clock, high_water=1)
    q.push_update("a", "a1", 1.0)
    q.push_update("a", "a2", 1.0)
    q.push_control("x")
    q.note_transport(blocked=True)
    q.clear()
    assert len(q) == 0
    assert q.held == 0
    assert q.control_pending == 0
    assert q.next_deadline() is None
    assert not q.is_slow()


EVENT = st.tuples(
    st.floats(0.0, 0.7),  # time before the event
    st.sampled_from(["a", "b", "c", "ctl"]),
    st.booleans(),  # the writer takes everything after the event (else the client lags)
)
THROTTLES = {"a": 0.5, "b": 1.0, "c": 0.0}


class Writer:
    """A connection's writer: takes from the queue and checks what a client would see."""

    def __init__(self, queue: OutboundQueue[str, tuple[str, int]], clock: FakeClock) -> None:
        self.queue = queue
        self.clock = clock
        self.control: list[int] = []
        self.cursor = -1
        self.sent_at: dict[str, list[tuple[float, int]]] = {}

    def drain(self) -> None:
        for ready in self.queue.take():
            topic, n = ready.item
            if topic == "ctl":
                self.control.append(n)
                continue
            cursor = ready.cursor_from[1] if ready.cursor_from is not None else n
            assert cursor >= n
            assert cursor >= self.cursor, "a cursor went back"
            self.cursor = cursor
            self.sent_at.setdefault(topic, []).append((self.clock.now, n))

    def run_timers(self, until: float) -> None:
        """Fire the writer's timer at every deadline up to ``until``, then move the clock."""
        deadline = self.queue.next_deadline()
        while deadline is not None and deadline <= until:
            self.clock.now = max(self.clock.now, deadline)
            self.drain()
            deadline = self.queue.next_deadline()
        self.clock.now = max(self.clock.now, until)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(EVENT, max_size=80), high_water=st.integers(1, 6),
       extra=st.integers(0, 6))
def test_queue_invariants(
    events: list[tuple[float, str, bool]], high_water: int, extra: int
) -> None:
    """Under any pushes and takes the bound holds, every control frame arrives in order,
    cursors never go back, and what is held is delivered at the end."""
    clock = FakeClock(0.0)
    limits = OutboundLimits(high_water=high_water, max_pending=high_water + extra + 3,
                            max_control=high_water + extra + 3, slow_after_s=1000.0)
    q: OutboundQueue[str, tuple[str, int]] = OutboundQueue(limits, clock=clock)
    writer = Writer(q, clock)
    pushed_control: list[int] = []
    for n, (delay, topic, take) in enumerate(events):
        writer.run_timers(clock.now + delay)
        if topic == "ctl":
            if q.push_control(("ctl", n)):
                pushed_control.append(n)
        else:
            q.push_update(topic, (topic, n), THROTTLES[topic])
        assert len(q) <= limits.max_pending
        if take:
            writer.drain()
    writer.drain()
    writer.run_timers(1e9)
    assert writer.control == pushed_control
    assert q.held == 0
    assert len(q) == 0


@settings(max_examples=300, deadline=None)
@given(events=st.lists(st.tuples(st.floats(0.0, 0.7), st.sampled_from("abc")), max_size=80))
def test_throttle_windows_for_a_prompt_client(events: list[tuple[float, str]]) -> None:
    """For a client that keeps up: a throttled topic leaves at most once per window, and each
    pushed value, or a newer one of its topic, leaves within one window of its push."""
    clock = FakeClock(0.0)
    q: OutboundQueue[str, tuple[str, int]] = OutboundQueue(clock=clock)
    writer = Writer(q, clock)
    pushes: list[tuple[str, float, int]] = []
    for n, (delay, topic) in enumerate(events):
        writer.run_timers(clock.now + delay)
        q.push_update(topic, (topic, n), THROTTLES[topic])
        pushes.append((topic, clock.now, n))
        writer.drain()
    writer.run_timers(1e9)
    for topic, window in THROTTLES.items():
        sent = writer.sent_at.get(topic, [])
        if window:
            assert all(b[0] - a[0] >= window - 1e-9 for a, b in zip(sent, sent[1:], strict=False))
        for pushed_topic, at, n in pushes:
            if pushed_topic == topic:
                assert any(m >= n and t <= at + window + 1e-9 for t, m in sent), (topic, at, sent)
