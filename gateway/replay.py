"""The recent window of every shard, kept in memory to serve resumes without asking Redis.

The reader appends each entry it hands to the fan-out; a resume asks ``plan()`` for the
updates after its cursor. When the cursor is inside the window the answer comes from memory,
so a storm of thousands of resumes costs Redis nothing; when it is older, the plan names the
ranges to read from Redis first, and the caller asks again with what it read.
"""

from __future__ import annotations

import bisect
import enum
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from types import MappingProxyType
from typing import NamedTuple

from gateway.cursor import ZERO_ID, EntryId, Positions, dominates, join
from gateway.protocol import UpdateMessage
from hub.sample import Sample

DEFAULT_MAX_ENTRIES_PER_SHARD = 2048
DEFAULT_MAX_AGE_S = 60.0
DEFAULT_REPLAY_LIMIT = 2000
_EXPIRE_EVERY_S = 1.0

Matcher = Callable[[str, str], bool]
"""Whether a resuming client wants the topic ``node/kind`` (``PatternSet.matches``)."""


class ReplayStatus(enum.Enum):
    """What a plan asks the caller to do."""

    READY = "ready"  # send ``items`` in order, then go live
    FETCH = "fetch"  # read ``fetch`` from Redis, then call plan() again with it
    WAIT = "wait"  # the cursor is ahead of this gateway's reader: wait for it, then plan again
    TOO_MANY = "too_many"  # more than the replay limit: send reset and snapshots


_EMPTY: Mapping[int, EntryId] = MappingProxyType({})
_EMPTY_RANGES: Mapping[int, tuple[EntryId, EntryId]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """The answer to a resume.

    READY: ``items`` are the updates to send, in order; an item is either the shared message
    (its frames are cached and sent to everyone) or, while this gateway's vector is behind
    the client's on some shard, a copy whose cursor joins both vectors (so a client that
    drops again mid-replay resumes without duplicates).
    FETCH: ``fetch`` maps shard -> (after, upto): every entry with ``after < id <= upto``.
    WAIT: ``wait_for`` maps shard -> the id the reader must reach before the plan is possible.
    TOO_MANY: ``count`` is how many matching updates were found before giving up.
    """

    status: ReplayStatus
    items: tuple[UpdateMessage, ...] = ()
    fetch: Mapping[int, tuple[EntryId, EntryId]] = field(default_factory=lambda: _EMPTY_RANGES)
    wait_for: Mapping[int, EntryId] = field(default_factory=lambda: _EMPTY)
    count: int = 0


class Fetched(NamedTuple):
    """What the caller read from Redis for one shard after a FETCH plan.

    ``entries`` are every decodable entry with ``after < id <= upto``, in id order, where
    ``after`` is the plan's (the entries a client is missing); undecodable ones are left out.
    """

    upto: EntryId
    entries: Sequence[tuple[EntryId, Sample]]


class _Entry(NamedTuple):
    entry_id: EntryId
    ordinal: int
    appended_at: float
    message: UpdateMessage


_by_id = itemgetter(0)
_by_ordinal = itemgetter(1)


class ReplayWindow:
    """A bounded ring per shard (by count and by age) of the messages the reader handed out.

    ``floor(shard)``: every entry of the shard after it is in memory (at start, the reader's
    start position; later, the last entry evicted). ``head``: the newest entry appended per
    shard (the reader's vector). Entries are appended in the reader's processing order, and
    replayed in that order, so a topic's updates keep their order.
    """

    def __init__(
        self,
        start: Sequence[EntryId],
        *,
        max_entries_per_shard: int = DEFAULT_MAX_ENTRIES_PER_SHARD,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries_per_shard < 1 or not max_age_s > 0:
            raise ValueError("max_entries_per_shard must be >= 1 and max_age_s > 0")
        self.max_entries_per_shard = max_entries_per_shard
        self.max_age_s = max_age_s
        self._clock = clock
        self._ordinals = itertools.count()
        self._rings: list[deque[_Entry]] = []
        self._floor: list[EntryId] = []
        self._head: list[EntryId] = []
        self._next_expire = 0.0
        self.evicted = 0
        self.reset(start)

    # -- the reader's side ------------------------------------------------------------------
    def reset(self, start: Sequence[EntryId]) -> None:
        """Forget everything: the reader (re)starts at ``start`` (one id per shard)."""
        if not start:
            raise ValueError("a window needs at least one shard")
        self._rings = [deque() for _ in start]
        self._floor = list(start)
        self._head = list(start)

    def append(self, message: UpdateMessage) -> None:
        """Add the message the reader just handed to the fan-out (ids increase per shard)."""
        shard = message.shard
        if message.entry_id <= self._head[shard]:
            raise ValueError(
                f"entry {message.entry_id} of shard {shard} is not after the window's head "
                f"{self._head[shard]}: the reader must drop duplicates (PositionTracker)"
            )
        now = self._clock()
        ring = self._rings[shard]
        ring.append(_Entry(message.entry_id, next(self._ordinals), now, message))
        self._head[shard] = message.entry_id
        if len(ring) > self.max_entries_per_shard:
            self._evict(shard)
        if now >= self._next_expire:
            self.expire(now)

    def expire(self, now: float | None = None) -> int:
        """Drop the entries older than ``max_age_s`` (appended before now - max_age_s)."""
        now = self._clock() if now is None else now
        self._next_expire = now + _EXPIRE_EVERY_S
        oldest = now - self.max_age_s
        dropped = 0
        for shard, ring in enumerate(self._rings):
            while ring and ring[0].appended_at < oldest:
                self._evict(shard)
                dropped += 1
        return dropped

    def _evict(self, shard: int) -> None:
        self._floor[shard] = self._rings[shard].popleft().entry_id
        self.evicted += 1

    # -- queries ----------------------------------------------------------------------------
    @property
    def shards(self) -> int:
        return len(self._rings)

    @property
    def head(self) -> Positions:
        """The newest id appended per shard (the start position where nothing was)."""
        return tuple(self._head)

    def floor(self, shard: int) -> EntryId:
        """Every entry of ``shard`` after this id is in the window."""
        return self._floor[shard]

    def caught_up(self, positions: Positions) -> bool:
        """Whether the reader has reached ``positions`` on every shard (ends a WAIT)."""
        return dominates(tuple(self._head), positions)

    def __len__(self) -> int:
        return sum(len(ring) for ring in self._rings)

    # -- resumes ----------------------------------------------------------------------------
    def plan(
        self,
        positions: Positions,
        matches: Matcher,
        *,
        limit: int = DEFAULT_REPLAY_LIMIT,
        fetched: Mapping[int, Fetched] | None = None,
    ) -> ReplayPlan:
        """What a client resuming at ``positions`` must be sent, for the topics ``matches`` takes.

        Call it again with ``fetched`` after a FETCH plan; the window may have moved on
        meanwhile, in which case the answer is FETCH again (with the full range: replace what
        was fetched). ``limit`` caps the matching updates (TOO_MANY beyond it).
        Raises ValueError when ``positions`` has another shard count (decode cursors with
        ``shards=window.shards``).
        """
        if len(positions) != len(self._rings):
            raise ValueError(f"{len(positions)} positions for {len(self._rings)} shards")
        head = self._head
        ahead = {k: p for k, p in enumerate(positions) if p > head[k]}
        if ahead:
            return ReplayPlan(ReplayStatus.WAIT, wait_for=MappingProxyType(ahead))
        fetched = fetched or {}
        starts = list(positions)  # per shard, the window serves the entries after this id
        need: dict[int, tuple[EntryId, EntryId]] = {}
        for shard, after in enumerate(positions):
            floor = self._floor[shard]
            if after >= floor:
                continue
            got = fetched.get(shard)
            if got is None or got.upto < floor:
                need[shard] = (after, floor)
            else:
                # What Redis gave past our head would come again live: stop at the head.
                starts[shard] = min(got.upto, head[shard])
        if need:
            return ReplayPlan(ReplayStatus.FETCH, fetch=MappingProxyType(need))

        items: list[UpdateMessage] = []
        count = 0
        current = list(positions)
        # 1. From Redis, older than the window: merged by id (then shard) across shards.
        older = sorted(
            (entry_id, shard, sample)
            for shard, got in fetched.items()
            if positions[shard] < self._floor[shard]
            for entry_id, sample in got.entries
            if positions[shard] < entry_id <= starts[shard]
        )
        for entry_id, shard, sample in older:
            current[shard] = entry_id
            if matches(sample.node, sample.kind):
                count += 1
                if count > limit:
                    return ReplayPlan(ReplayStatus.TOO_MANY, count=count)
                items.append(UpdateMessage(shard, entry_id, sample, tuple(current)))
        # 2. From memory, in the reader's order.
        client = tuple(current)
        suffixes = []
        for shard, ring in enumerate(self._rings):
            if ring and ring[-1].entry_id > starts[shard]:
                index = bisect.bisect_right(ring, starts[shard], key=_by_id)
                suffixes.append(itertools.islice(ring, index, None))
        shared = False
        for entry in heapq.merge(*suffixes, key=_by_ordinal):
            message = entry.message
            sample = message.sample
            if not matches(sample.node, sample.kind):
                continue
            count += 1
            if count > limit:
                return ReplayPlan(ReplayStatus.TOO_MANY, count=count)
            # Vectors grow with the reader's order: once one covers the client's, all do.
            if shared or dominates(message.positions, client):
                shared = True
                items.append(message)
            else:
                items.append(message.with_positions(join(client, message.positions)))
        return ReplayPlan(ReplayStatus.READY, items=tuple(items), count=count)


def continuity_proven(after: EntryId, first_id: EntryId | None) -> bool:
    """Whether a Redis read proves nothing after ``after`` was trimmed from its stream.

    ``first_id`` is the first id an inclusive ``XRANGE key <after> <upto>`` returned. Streams
    are trimmed from the oldest end only, so if the cursor's own entry is still there, so is
    everything after it. Otherwise (or for 0-0, which is no entry) entries after the cursor
    may be gone: the cursor is older than the retention and the client gets ``reset``.
    """
    return after != ZERO_ID and first_id == after
