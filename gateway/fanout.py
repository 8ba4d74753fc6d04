"""The fan-out: one reader per process turns stream entries into updates for every subscriber.

Each entry is decoded once (by the StreamReader), gets its cursor from the PositionTracker,
enters the ReplayWindow (for resumes) and the latest-sample cache (for snapshots), and is
offered to the connections the SubscriptionIndex names. Connections collect what they were
offered and write it when the whole batch has been offered (``Subscriber.flush``), so frames
are encoded once per (message, encoding), identical batches once per batch, and no task is
woken per message per connection. docs/gateway.md describes the design.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from gateway.cursor import (
    ZERO_ID,
    EntryId,
    Positions,
    PositionTracker,
    format_entry_id,
    parse_entry_id,
)
from gateway.protocol import Encoding, SnapshotMessage, UpdateMessage
from gateway.replay import Fetched, ReplayWindow, continuity_proven
from gateway.selfmetrics import GatewayStats, SelfMetrics
from gateway.topics import PatternSet, SubscriptionIndex
from hub.codec import SampleCodec
from hub.errors import BackendUnavailable, CodecError, ConfigError, HubError
from hub.keys import KeyLayout, check_layout
from hub.latest import latest, list_topics
from hub.reader import StreamEntry, StreamReader
from hub.redis_url import REDIS_ERRORS, RedisClient, describe, translate_error
from hub.sample import Sample
from hub.tasks import TaskManager

log = logging.getLogger(__name__)

TopicKey = tuple[str, str]
BatchCache = dict[tuple[Encoding, tuple[UpdateMessage, ...]], list[bytes]]
"""Batch frames already built during one dispatch, by encoding and messages (see flush)."""


class Subscriber(Protocol):
    """What the fan-out needs of a connection (``gateway.session.Session``)."""

    def __hash__(self) -> int: ...

    def deliver(self, key: TopicKey, message: UpdateMessage, throttle_ms: int) -> None:
        """Take ``message`` and write it at once if possible (a dispatch of one entry)."""
        ...

    def offer(self, key: TopicKey, message: UpdateMessage, throttle_ms: int) -> bool:
        """Take ``message``; True the first time in a dispatch (the caller flushes it later)."""
        ...

    def flush(self, batches: BatchCache | None = None) -> None:
        """Write (or queue) what was offered; never blocks."""
        ...


class _Cached:
    __slots__ = ("sample", "seen_at", "expires_at", "snapshot")

    def __init__(self, sample: Sample, seen_at: float, expires_at: float) -> None:
        self.sample = sample
        self.seen_at = seen_at
        self.expires_at = expires_at
        self.snapshot: SnapshotMessage | None = None


class LatestCache:
    """The newest sample of every live topic, in memory: the source of ``snapshot`` messages.

    Fed by the reader (every entry) and, for topics it has not seen since it started, by the
    latest keys in Redis. A topic expires ``max(min_ttl, 3 intervals)`` after its last
    sample, as the latest keys do, so a dead node drops out. Snapshot frames are built once
    per sample and encoding and shared.
    """

    def __init__(self, min_ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_ttl = min_ttl
        self._clock = clock
        self._entries: dict[TopicKey, _Cached] = {}

    def put(self, node: str, kind: str, sample: Sample, now: float) -> None:
        """Record the newest sample of ``node/kind`` (the reader's order is the topic's)."""
        entry = self._entries.get((node, kind))
        if entry is None:
            self._entries[(node, kind)] = _Cached(sample, now, now + 3 * self.min_ttl)
            return
        gap = now - entry.seen_at
        entry.sample = sample
        entry.seen_at = now
        entry.expires_at = now + max(self.min_ttl, 3 * gap)
        entry.snapshot = None

    def put_if_absent(self, sample: Sample, now: float) -> None:
        """Add a sample read from a latest key, unless the reader already gave a newer one."""
        key = (sample.node, sample.kind)
        entry = self._entries.get(key)
        if entry is None or entry.expires_at <= now:
            self._entries[key] = _Cached(sample, now, now + 3 * self.min_ttl)

    def has(self, node: str, kind: str, now: float | None = None) -> bool:
        entry = self._entries.get((node, kind))
        now = self._clock() if now is None else now
        return entry is not None and entry.expires_at > now

    def snapshots(self, patterns: PatternSet, now: float | None = None) -> list[SnapshotMessage]:
        """The snapshot of every fresh topic ``patterns`` match."""
        now = self._clock() if now is None else now
        out: list[SnapshotMessage] = []
        matches = patterns.matches
        for (node, kind), entry in self._entries.items():
            if entry.expires_at > now and matches(node, kind):
                snapshot = entry.snapshot
                if snapshot is None:
                    snapshot = entry.snapshot = SnapshotMessage(entry.sample)
                out.append(snapshot)
        return out

    def prune(self, now: float | None = None) -> int:
        """Forget expired topics; returns how many."""
        now = self._clock() if now is None else now
        gone = [key for key, entry in self._entries.items() if entry.expires_at <= now]
        for key in gone:
            del self._entries[key]
        return len(gone)

    def fresh_count(self, now: float | None = None) -> int:
        now = self._clock() if now is None else now
        return sum(1 for entry in self._entries.values() if entry.expires_at > now)

    def __len__(self) -> int:
        return len(self._entries)


class Fanout:
    """The process's single stream reader and everything it feeds (window, cache, clients).

    ``run()`` is its long-lived task: it resolves the start positions (retrying while Redis is
    away), then reads for ever; a Redis outage only pauses it, and it resumes from its last
    positions, so subscribers get every entry written meanwhile. ``window`` is None until
    the start positions are known.
    """

    def __init__(
        self,
        redis: RedisClient,
        layout: KeyLayout,
        *,
        stats: GatewayStats,
        metrics: SelfMetrics,
        task_manager: TaskManager,
        replay_window: int = 2048,
        replay_window_s: float = 60.0,
        snapshot_ttl: float = 5.0,
        read_count: int = 1000,
        block_ms: int = 1000,
        codec: SampleCodec | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.layout = layout
        self.stats = stats
        self.metrics = metrics
        self.task_manager = task_manager
        self.codec = codec or SampleCodec()
        self.replay_window_size = replay_window
        self.replay_window_s = replay_window_s
        self.read_count = read_count
        self.block_ms = block_ms
        self._clock = clock
        self.index: SubscriptionIndex[Subscriber] = SubscriptionIndex()
        self.cache = LatestCache(snapshot_ttl, clock=clock)
        self.window: ReplayWindow | None = None
        self.tracker: PositionTracker | None = None
        self.reader: StreamReader | None = None
        self.started = asyncio.Event()
        self.lag_s: dict[int, float] = {}
        self._dirty: list[Subscriber] = []
        self._progress = asyncio.Event()
        self._progress_waiters = 0
        self._rng = random.Random()

    # -- state ------------------------------------------------------------------------------
    @property
    def redis_up(self) -> bool:
        """Whether Redis answers: the reader's last read succeeded (or, before its first
        read has returned, the start positions were just read)."""
        reader = self.reader
        if reader is None:
            return False
        return reader.connected or (reader.rounds_total == 0 and reader.errors_total == 0)

    # -- the reader's task ------------------------------------------------------------------
    async def run(self) -> None:
        """Read the shard streams for ever (the process's reader task). Cancelling is safe.

        Raises ConfigError or LayoutMismatch when Redis shows the configuration cannot work
        (an ACL refusal, another shard count under the prefix): the process must stop.
        """
        start = await self._resolve_start()
        self.window = ReplayWindow(start, max_entries_per_shard=self.replay_window_size,
                                   max_age_s=self.replay_window_s, clock=self._clock)
        self.tracker = PositionTracker(start)
        self.reader = StreamReader(
            self.redis, self.layout, task_manager=self.task_manager, codec=self.codec,
            count=self.read_count, block_ms=self.block_ms, check_layout=False,
            start={shard: format_entry_id(pos) for shard, pos in enumerate(start)},
            name="gateway-reader")
        self.started.set()
        self._wake_waiters()
        await self._prime_cache()
        try:
            async for batch in self.reader:
                self.dispatch(batch)
        finally:
            await self.reader.aclose()

    async def _resolve_start(self) -> Positions:
        """The newest id of every shard stream now (0-0 for an empty one), retried while
        Redis is away: the window's floor must be concrete ids that cursors compare with."""
        keys = self.layout.stream_keys()
        failures = 0
        while True:
            try:
                await check_layout(self.redis, self.layout, record=False)
                pipe = self.redis.pipeline(transaction=False)
                for key in keys:
                    pipe.xrevrange(key, count=1)
                replies = await pipe.execute()
            except REDIS_ERRORS as exc:
                error = translate_error(exc, f"reading the stream heads from "
                                             f"{describe(self.redis)}", self.redis)
                if not isinstance(error, BackendUnavailable):
                    raise error from exc
                failures += 1
                delay = min(5.0, 0.1 * 2 ** min(failures, 6)) * (0.5 + self._rng.random() / 2)
                if failures == 1:
                    log.warning("%s; retrying (the gateway serves clients meanwhile)", error)
                await asyncio.sleep(delay)
                continue
            start = []
            for reply in replies:
                start.append(parse_entry_id(reply[0][0]) if reply else (0, 0))
            if failures:
                log.info("Redis at %s answers again", describe(self.redis))
            return tuple(start)

    async def _prime_cache(self) -> None:
        """Fill the cache from the latest keys, so the first subscribers get snapshots of
        topics published before this gateway started. Best effort."""
        try:
            topics = await list_topics(self.redis, self.layout)
            samples = await latest(self.redis, self.layout, topics, codec=self.codec)
        except (BackendUnavailable, ConfigError) as exc:
            log.warning("cannot prime the snapshot cache: %s", exc)
            return
        now = self._clock()
        for sample in samples:
            self.cache.put_if_absent(sample, now)
        log.info("snapshot cache primed with %d topics", len(samples))

    def dispatch(self, batch: Sequence[StreamEntry]) -> None:
        """Hand one batch of entries to every subscriber, then flush each touched one once.

        Synchronous: nothing else runs between an entry entering the window and its offer to
        the subscribers, which is what makes resume plans atomic.
        """
        began = time.perf_counter()
        tracker, window = self.tracker, self.window
        assert tracker is not None
        assert window is not None
        now = self._clock()
        match = self.index.match
        put = self.cache.put
        dirty = self._dirty
        handed = 0
        newest: dict[int, int] = {}
        # One entry (the usual case at low rates): write it to each subscriber at once;
        # several: collect per subscriber and write each one's share once, batched.
        single = len(batch) == 1
        for shard, raw_id, sample in batch:
            try:
                entry_id = parse_entry_id(raw_id)
            except ValueError:  # pragma: no cover - Redis ids always parse
                self.stats.skipped_entries += 1
                continue
            positions = tracker.advance(shard, entry_id)
            if positions is None:
                self.stats.skipped_entries += 1
                continue
            message = UpdateMessage(shard, entry_id, sample, positions)
            window.append(message)
            node, kind = sample.node, sample.kind
            put(node, kind, sample, now)
            subscribers = match(node, kind)
            if subscribers:
                key = (node, kind)
                if single:
                    for subscriber, throttle_ms in subscribers.items():
                        try:
                            subscriber.deliver(key, message, throttle_ms)
                        except Exception:  # one broken connection must not stop the others
                            log.exception("delivering to %r failed", subscriber)
                else:
                    for subscriber, throttle_ms in subscribers.items():
                        if subscriber.offer(key, message, throttle_ms):
                            dirty.append(subscriber)
            newest[shard] = entry_id[0]
            handed += 1
        if dirty:
            batches: BatchCache = {}
            for subscriber in dirty:
                try:
                    subscriber.flush(batches)
                except Exception:  # one broken connection must not stop the others
                    log.exception("flushing %r failed", subscriber)
            dirty.clear()
        self.stats.messages_in += handed
        wall_ms = time.time() * 1000
        for shard, ms in newest.items():
            self.lag_s[shard] = max(0.0, (wall_ms - ms) / 1000)
        if handed:
            self.metrics.observe_fanout(time.perf_counter() - began, handed)
        if self._progress_waiters:
            self._wake_waiters()

    # -- resumes ----------------------------------------------------------------------------
    def _wake_waiters(self) -> None:
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    async def wait_caught_up(self, positions: Positions, deadline: float) -> bool:
        """Wait until the reader has reached ``positions`` (a WAIT plan), at most until
        ``deadline`` (this fan-out's clock). Cancelling is safe."""
        self._progress_waiters += 1
        try:
            while True:
                window = self.window
                if window is not None and window.caught_up(positions):
                    return True
                if not await self._wait_event(self._progress, deadline):
                    return False
        finally:
            self._progress_waiters -= 1

    async def wait_started(self, deadline: float) -> bool:
        """Wait until the window exists, at most until ``deadline``. Cancelling is safe."""
        return self.started.is_set() or await self._wait_event(self.started, deadline)

    async def _wait_event(self, event: asyncio.Event, deadline: float) -> bool:
        """Wait for ``event`` until ``deadline`` (this fan-out's clock); False past it."""
        remaining = deadline - self._clock()
        if remaining <= 0:
            return False
        try:
            async with asyncio.timeout(remaining):
                await event.wait()
        except TimeoutError:
            return False
        return True

    async def fetch(
        self, ranges: Mapping[int, tuple[EntryId, EntryId]], cap: int
    ) -> dict[int, Fetched] | str:
        """Read ``(after, upto]`` of each shard from Redis for a FETCH plan, in one round trip.

        Each range is read inclusively from ``after`` so that its first entry proves nothing
        was trimmed after the cursor (``continuity_proven``). A cursor at 0-0 on a shard (its
        gateway had seen nothing there) has no entry to find: continuity is proven instead
        when the stream never lost an entry (XINFO STREAM: ``entries-added`` equals
        ``length``; Redis 7 or later). Returns the entries, or the reset reason:
        ``cursor_expired`` when continuity is not proven, ``replay_limit`` when a shard holds
        more than ``cap`` entries in its range. Raises BackendUnavailable. Cancelling is safe.
        """
        shards = list(ranges)
        from_zero = [shard for shard in shards if ranges[shard][0] == ZERO_ID]
        try:
            pipe = self.redis.pipeline(transaction=False)
            for shard in shards:
                after, upto = ranges[shard]
                pipe.xrange(self.layout.stream_key(shard), min=format_entry_id(after),
                            max=format_entry_id(upto), count=cap + 1)
            for shard in from_zero:
                pipe.xinfo_stream(self.layout.stream_key(shard))
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        except REDIS_ERRORS as exc:
            raise translate_error(exc, "reading a resume's range", self.redis) from exc
        finally:
            self.stats.resume_redis_commands += len(shards) + len(from_zero)
        ranges_read = replies[:len(shards)]
        for reply in ranges_read:
            if isinstance(reply, Exception):
                raise translate_error(reply, "reading a resume's range", self.redis)
        intact = {shard: _never_trimmed(info)
                  for shard, info in zip(from_zero, replies[len(shards):], strict=True)}
        out: dict[int, Fetched] = {}
        for shard, raw in zip(shards, ranges_read, strict=True):
            after, upto = ranges[shard]
            if after == ZERO_ID:
                if not intact[shard]:
                    return "cursor_expired"
                entries = raw
            else:
                first = parse_entry_id(raw[0][0]) if raw else None
                if not continuity_proven(after, first):
                    return "cursor_expired"
                entries = raw[1:]
            if len(entries) >= cap + (after == ZERO_ID):
                return "replay_limit"
            out[shard] = Fetched(upto, list(self._decode_range(shard, entries)))
        return out

    def _decode_range(self, shard: int, raw: Iterable[Any]) -> Iterable[tuple[EntryId, Sample]]:
        seen: dict[TopicKey, tuple[int, int]] = {}
        decode = self.codec.decode
        for raw_id, fields in raw:
            payload = fields.get(b"d") if isinstance(fields, dict) else None
            if payload is None:
                continue
            try:
                sample = decode(payload)
            except CodecError:
                continue
            key = (sample.node, sample.kind)
            previous = seen.get(key)
            # A publisher's retried write can store a sample twice; replay it once, as the
            # live reader does.
            if previous is not None and previous[0] == sample.epoch and sample.seq <= previous[1]:
                continue
            seen[key] = (sample.epoch, sample.seq)
            yield parse_entry_id(raw_id), sample

    async def fill_cache(self, topics: Sequence[TopicKey]) -> None:
        """Look the topics the cache lacks up in Redis (snapshots of exact subscriptions).

        Best effort: a Redis error leaves them out. Cancelling is safe.
        """
        now = self._clock()
        missing = [f"{node}/{kind}" for node, kind in topics if not self.cache.has(node, kind, now)]
        if not missing:
            return
        self.stats.cache_misses += len(missing)
        if not self.redis_up:
            return  # do not hold the request for Redis's timeouts: no snapshot then
        self.stats.snapshot_redis_commands += 1
        try:
            samples = await latest(self.redis, self.layout, missing, codec=self.codec)
        except HubError as exc:
            log.debug("snapshot lookup failed: %s", exc)
            return
        now = self._clock()
        for sample in samples:
            self.cache.put_if_absent(sample, now)


def _never_trimmed(info: object) -> bool:
    """Whether an XINFO STREAM reply shows a stream that never lost an entry."""
    if not isinstance(info, dict):
        return False  # an error (no such stream: nothing to prove) or an unknown shape
    fields = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in info.items()}
    added, length = fields.get("entries-added"), fields.get("length")
    return isinstance(added, int) and isinstance(length, int) and added == length
