"""The in-memory replay window: plans from memory, from Redis, waits, limits, and no gap or dup."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cursor import ZERO_ID, EntryId, Positions, PositionTracker, dominates, zero_positions
from gateway.outbound import DEFAULT_OUTBOUND_LIMITS
from gateway.protocol import UpdateMessage
from gateway.replay import (
    DEFAULT_REPLAY_LIMIT,
    Fetched,
    ReplayPlan,
    ReplayStatus,
    ReplayWindow,
    continuity_proven,
)
from gateway.topics import PatternSet, parse_pattern
from hub.sample import Sample


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sample(node: str, seq: int, kind: str = "system") -> Sample:
    return Sample(node, kind, float(seq), seq, 1, {"x": seq})


class Gateway:
    """A reader's view: a tracker and a window fed entry by entry, as the server will do it."""

    def __init__(self, start: Sequence[EntryId], clock: FakeClock | None = None, *,
                 max_entries_per_shard: int = 2048, max_age_s: float = 60.0) -> None:
        self.tracker = PositionTracker(start)
        self.window = ReplayWindow(start, clock=clock or FakeClock(), max_age_s=max_age_s,
                                   max_entries_per_shard=max_entries_per_shard)
        self.sent: list[UpdateMessage] = []

    def read(self, shard: int, entry_id: EntryId, item: Sample) -> UpdateMessage | None:
        positions = self.tracker.advance(shard, entry_id)
        if positions is None:
            return None
        message = UpdateMessage(shard, entry_id, item, positions)
        self.window.append(message)
        self.sent.append(message)
        return message


def everything(node: str, kind: str) -> bool:
    return True


def ids(plan: ReplayPlan) -> list[tuple[int, EntryId]]:
    return [(m.shard, m.entry_id) for m in plan.items]


# -- from memory -------------------------------------------------------------------------------
def test_a_cursor_inside_the_window_is_served_from_memory_in_reader_order() -> None:
    """Entries after the cursor that match come back in the order the reader handed them out."""
    gw = Gateway(zero_positions(2))
    gw.read(0, (10, 0), sample("a", 1))
    cursor = gw.read(1, (11, 0), sample("b", 1))
    assert cursor is not None
    gw.read(1, (12, 0), sample("b", 2))
    gw.read(0, (13, 0), sample("a", 2))
    gw.read(0, (13, 1), sample("c", 1))
    plan = gw.window.plan(cursor.positions, PatternSet([parse_pattern("a/*"),
                                                        parse_pattern("b/*")]).matches)
    assert plan.status is ReplayStatus.READY
    assert ids(plan) == [(1, (12, 0)), (0, (13, 0))]
    assert plan.count == 2
    # The gateway's own vectors cover the cursor: the shared messages are reused as they are.
    assert all(item is gw.sent[i] for item, i in zip(plan.items, (2, 3), strict=True))


def test_a_cursor_at_the_head_replays_nothing() -> None:
    """A client that missed nothing gets an empty, ready plan."""
    gw = Gateway(zero_positions(2))
    last = gw.read(0, (10, 0), sample("a", 1))
    assert last is not None
    assert gw.window.plan(last.positions, everything) == ReplayPlan(ReplayStatus.READY)
    assert gw.window.plan(gw.window.head, everything).items == ()


def test_a_cursor_ahead_of_the_reader_waits_for_it() -> None:
    """A cursor from a gateway further along makes the plan WAIT until this reader catches up."""
    gw = Gateway(zero_positions(2))
    gw.read(0, (10, 0), sample("a", 1))
    cursor: Positions = ((10, 0), (20, 0))
    plan = gw.window.plan(cursor, everything)
    assert plan.status is ReplayStatus.WAIT
    assert dict(plan.wait_for) == {1: (20, 0)}
    assert not gw.window.caught_up(cursor)
    gw.read(1, (20, 0), sample("b", 1))
    gw.read(1, (21, 0), sample("b", 2))
    assert gw.window.caught_up(cursor)
    plan = gw.window.plan(cursor, everything)
    assert ids(plan) == [(1, (21, 0))]


def test_replay_limit_gives_too_many() -> None:
    """More matching updates than the limit is TOO_MANY (the caller sends reset instead)."""
    gw = Gateway(zero_positions(1))
    for n in range(1, 11):
        gw.read(0, (n, 0), sample("a" if n % 2 else "b", n))
    start = zero_positions(1)
    a_only = PatternSet([parse_pattern("a/*")]).matches
    assert gw.window.plan(start, a_only, limit=5).status is ReplayStatus.READY
    plan = gw.window.plan(start, a_only, limit=4)
    assert (plan.status, plan.count) == (ReplayStatus.TOO_MANY, 5)
    assert gw.window.plan(start, everything, limit=9).status is ReplayStatus.TOO_MANY


def test_a_full_replay_fits_below_the_conflation_mark() -> None:
    """The default replay limit fits in an empty outbound queue without any conflation."""
    assert DEFAULT_REPLAY_LIMIT < DEFAULT_OUTBOUND_LIMITS.high_water


def test_wrong_vector_length_is_a_value_error() -> None:
    """Plans need one position per shard of the window."""
    gw = Gateway(zero_positions(2))
    with pytest.raises(ValueError, match="shards"):
        gw.window.plan(zero_positions(3), everything)


def test_appending_out_of_order_is_refused() -> None:
    """The window refuses an entry not after its shard's head (duplicates are the reader's)."""
    gw = Gateway(zero_positions(1))
    gw.read(0, (5, 0), sample("a", 1))
    with pytest.raises(ValueError, match="not after"):
        gw.window.append(UpdateMessage(0, (5, 0), sample("a", 1), ((5, 0),)))


def test_bad_window_settings_are_refused() -> None:
    """A window needs a shard, room for an entry and a positive age."""
    with pytest.raises(ValueError, match="shard"):
        ReplayWindow(())
    with pytest.raises(ValueError, match="max_entries"):
        ReplayWindow(zero_positions(1), max_entries_per_shard=0)
    with pytest.raises(ValueError, match="max_age"):
        ReplayWindow(zero_positions(1), max_age_s=0)


# -- bounds ------------------------------------------------------------------------------------
def test_the_ring_is_bounded_by_count_and_the_floor_follows() -> None:
    """Past max_entries_per_shard the oldest entries go, and the floor is the last one gone."""
    gw = Gateway(zero_positions(2), max_entries_per_shard=3)
    for n in range(1, 7):
        gw.read(0, (n, 0), sample("a", n))
    gw.read(1, (1, 0), sample("b", 1))
    assert len(gw.window) == 4
    assert gw.window.floor(0) == (3, 0)
    assert gw.window.floor(1) == ZERO_ID
    assert gw.window.evicted == 3
    assert gw.window.head == ((6, 0), (1, 0))


def test_the_ring_is_bounded_by_age() -> None:
    """Entries older than max_age_s are dropped by expire() and on later appends."""
    clock = FakeClock()
    gw = Gateway(zero_positions(2), clock, max_age_s=10.0)
    gw.read(0, (1, 0), sample("a", 1))
    gw.read(1, (1, 0), sample("b", 1))
    clock.now += 5
    gw.read(0, (2, 0), sample("a", 2))
    clock.now += 6
    assert gw.window.expire() == 2
    assert (gw.window.floor(0), gw.window.floor(1)) == ((1, 0), (1, 0))
    clock.now += 20
    gw.read(1, (2, 0), sample("b", 2))  # an append past the expiry interval expires too
    assert gw.window.floor(0) == (2, 0)
    assert len(gw.window) == 1


def test_reset_forgets_everything() -> None:
    """reset() empties the rings and moves floor and head to the new start."""
    gw = Gateway(zero_positions(1))
    gw.read(0, (1, 0), sample("a", 1))
    gw.window.reset(((9, 0),))
    assert len(gw.window) == 0
    assert gw.window.head == ((9, 0),)
    assert gw.window.floor(0) == (9, 0)


# -- from Redis --------------------------------------------------------------------------------
def test_an_old_cursor_is_fetched_from_redis_then_served_from_memory() -> None:
    """Below the floor the plan asks for the missing range, then merges it before the window."""
    stream = {0: [((n, 0), sample("a", n)) for n in range(1, 9)],
              1: [((n, 5), sample("b", n)) for n in range(1, 9)]}
    gw = Gateway(zero_positions(2), max_entries_per_shard=2)
    for n in range(8):
        for shard in (0, 1):
            entry_id, item = stream[shard][n]
            gw.read(shard, entry_id, item)
    cursor: Positions = ((3, 0), (7, 5))
    plan = gw.window.plan(cursor, everything)
    assert plan.status is ReplayStatus.FETCH
    assert dict(plan.fetch) == {0: ((3, 0), (6, 0))}
    fetched = {0: Fetched((6, 0), [e for e in stream[0] if (3, 0) < e[0] <= (6, 0)])}
    plan = gw.window.plan(cursor, everything, fetched=fetched)
    assert plan.status is ReplayStatus.READY
    assert ids(plan) == [(0, (4, 0)), (0, (5, 0)), (0, (6, 0)), (0, (7, 0)), (0, (8, 0)),
                         (1, (8, 5))]
    # Fetched items carry the client's vector advanced entry by entry.
    assert [m.positions for m in plan.items[:3]] == [((4, 0), (7, 5)), ((5, 0), (7, 5)),
                                                    ((6, 0), (7, 5))]
    assert all(dominates(b.positions, a.positions)
               for a, b in zip(plan.items, plan.items[1:], strict=False))


def test_a_fetch_that_fell_behind_the_window_is_asked_again() -> None:
    """If the window moved past what was fetched, the plan asks for the full range again."""
    gw = Gateway(zero_positions(1), max_entries_per_shard=2)
    for n in range(1, 6):
        gw.read(0, (n, 0), sample("a", n))
    plan = gw.window.plan(((1, 0),), everything,
                          fetched={0: Fetched((2, 0), [((2, 0), sample("a", 2))])})
    assert plan.status is ReplayStatus.FETCH
    assert dict(plan.fetch) == {0: ((1, 0), (3, 0))}


def test_fetched_entries_past_the_head_are_left_to_the_live_stream() -> None:
    """What Redis returns beyond this reader's head is not replayed (it will arrive live)."""
    gw = Gateway(zero_positions(1), max_entries_per_shard=1)
    for n in range(1, 4):
        gw.read(0, (n, 0), sample("a", n))
    redis = [((n, 0), sample("a", n)) for n in range(2, 7)]
    plan = gw.window.plan(((1, 0),), everything, fetched={0: Fetched((6, 0), redis)})
    assert ids(plan) == [(0, (2, 0)), (0, (3, 0))]


def test_continuity_is_proven_only_by_the_cursors_own_entry() -> None:
    """A Redis range proves no trim after the cursor only if it starts with the cursor's entry."""
    assert continuity_proven((5, 0), (5, 0))
    assert not continuity_proven((5, 0), (6, 0))
    assert not continuity_proven((5, 0), None)
    assert not continuity_proven(ZERO_ID, ZERO_ID)


# -- the guarantee, end to end -----------------------------------------------------------------
def interleave(rng: random.Random, streams: dict[int, list[tuple[EntryId, Sample]]]
               ) -> list[tuple[int, EntryId, Sample]]:
    """A random reader order: shards interleaved, each shard in id order."""
    cursors = dict.fromkeys(streams, 0)
    out: list[tuple[int, EntryId, Sample]] = []
    while True:
        live = [s for s in streams if cursors[s] < len(streams[s])]
        if not live:
            return out
        shard = rng.choice(live)
        entry_id, item = streams[shard][cursors[shard]]
        cursors[shard] += 1
        out.append((shard, entry_id, item))


def resume(gateway: Gateway, order: list[tuple[int, EntryId, Sample]], done: int,
           streams: dict[int, list[tuple[EntryId, Sample]]], cursor: Positions,
           matches: PatternSet, to_the_end: bool) -> tuple[list[UpdateMessage], int]:
    """Drive a resume on ``gateway`` (which has read ``order[:done]``) as the server will."""
    fetched: dict[int, Fetched] = {}
    for _ in range(100):
        plan = gateway.window.plan(cursor, matches.matches, limit=10_000, fetched=fetched)
        if plan.status is ReplayStatus.READY:
            return list(plan.items), done
        if plan.status is ReplayStatus.WAIT:
            assert done < len(order), "waiting for entries that never come"
            gateway.read(*order[done])
            done += 1
        elif plan.status is ReplayStatus.FETCH:
            for shard, (after, upto) in plan.fetch.items():
                if to_the_end and streams[shard]:
                    upto = max(upto, streams[shard][-1][0])  # as XRANGE <after> + would
                # The server reads inclusively from `after` to prove continuity.
                rows = [e for e in streams[shard] if after <= e[0] <= upto]
                if after != ZERO_ID:
                    assert continuity_proven(after, rows[0][0] if rows else None)
                    rows = rows[1:]
                fetched[shard] = Fetched(upto, rows)
        else:  # pragma: no cover - the limit is out of reach here
            raise AssertionError(plan)
    raise AssertionError("no plan became ready")


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), shards=st.integers(1, 4), entries=st.integers(1, 60),
       window=st.integers(1, 8), data=st.data())
def test_resume_on_other_gateways_has_no_gap_and_no_duplicate(
    seed: int, shards: int, entries: int, window: int, data: st.DataObject
) -> None:
    """A client moving between gateways (even mid-replay) gets each matching entry exactly once,
    in order per shard, whatever the gateways' reader orders, start points and window sizes."""
    rng = random.Random(seed)
    streams: dict[int, list[tuple[EntryId, Sample]]] = {s: [] for s in range(shards)}
    nodes = ["a1", "a2", "b1", "c1"]
    clock_ms = 100
    for n in range(entries):
        node = rng.choice(nodes)
        shard = nodes.index(node) % shards
        clock_ms += rng.choice((0, 1, 5))
        last = streams[shard][-1][0] if streams[shard] else (0, 0)
        entry_id = (clock_ms, 0) if clock_ms > last[0] else (last[0], last[1] + 1)
        streams[shard].append((entry_id, sample(node, n)))
    matches = PatternSet([parse_pattern(data.draw(st.sampled_from(["a*/*", "*", "b1/system"])))])
    expected = {s: [e for e, item in streams[s] if matches.matches(item.node, item.kind)]
                for s in streams}

    # Gateway A from the start; the client takes updates until it drops.
    order_a = interleave(rng, streams)
    gw_a = Gateway(zero_positions(shards), max_entries_per_shard=window)
    received: list[UpdateMessage] = []
    drop_after = data.draw(st.integers(1, len(order_a)))
    for entry in order_a[:drop_after]:
        message = gw_a.read(*entry)
        if message is not None and matches.matches(message.sample.node, message.sample.kind):
            received.append(message)
    if not received:
        return
    cursor = received[-1].positions

    # Gateway B started at some point of its own order; the client resumes there, then may drop
    # again in the middle of the replay and resume on gateway C.
    for hop in (0, 1):
        order = interleave(rng, streams)
        started = data.draw(st.integers(0, len(order)))
        start = list(zero_positions(shards))
        for shard, entry_id, _ in order[:started]:
            start[shard] = entry_id
        gateway = Gateway(start, max_entries_per_shard=window)
        done = started + data.draw(st.integers(0, len(order) - started))
        for entry in order[started:done]:
            gateway.read(*entry)
        items, done = resume(gateway, order, done, streams, cursor, matches, rng.random() < 0.5)
        last_hop = hop == 1 or data.draw(st.booleans())
        cut = len(items) if last_hop else data.draw(st.integers(0, len(items)))
        received.extend(items[:cut])
        if not last_hop:
            cursor = received[-1].positions  # dropped again, mid-replay or right after it
            continue
        for entry in order[done:]:  # live to the end
            message = gateway.read(*entry)
            if message is not None and matches.matches(message.sample.node, message.sample.kind):
                received.append(message)
        break

    got = {s: [m.entry_id for m in received if m.shard == s] for s in streams}
    assert got == expected
