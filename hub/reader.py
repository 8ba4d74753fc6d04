"""Reading the shard streams: a resumable StreamReader for live samples, plus range and
history queries for replay and charts.

Every entry is decoded once; a malformed one is counted, logged with its stream and id, and
skipped. Positions advance only when ``read()`` returns, so a reader that loses its
connection resumes where its caller left off, with no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Self

import msgpack
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from hub.codec import FORMAT_VERSION, SampleCodec
from hub.errors import BackendUnavailable, CodecError, ConfigError, LifecycleError, ValidationError
from hub.keys import DEFAULT_LAYOUT, KeyLayout, check_layout
from hub.names import validate_kind, validate_node
from hub.redis_url import (
    REDIS_ERRORS,
    RedisClient,
    describe,
    honour_lost_cancel,
    translate_error,
)
from hub.sample import Sample
from hub.tasks import TaskManager

log = logging.getLogger(__name__)

ID_RE = re.compile(r"\d{1,20}(?:-\d{1,20})?")
_SEEN_CAP = 200_000       # topics remembered for duplicate detection
_RANGE_PAGE = 2000        # entries per XRANGE call when paging


class StreamEntry(NamedTuple):
    """One decoded stream entry: the shard it came from, its stream id, its sample."""

    shard: int
    entry_id: str
    sample: Sample


def _check_id(value: object, what: str, *, allow_dollar: bool) -> str:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str) and (ID_RE.fullmatch(value) or (allow_dollar and value == "$")):
        return value
    raise ValidationError(f"invalid {what} {value!r}: a stream id like 1700000000000-0"
                          + (" or $" if allow_dollar else ""))


def _stream_items(reply: Any) -> Iterable[tuple[Any, Any]]:
    """(key, entries) pairs of an XREAD reply, in RESP2 (list) or RESP3 (map) shape."""
    if not reply:
        return ()
    if isinstance(reply, dict):
        return reply.items()
    return ((item[0], item[1]) for item in reply)


def _socket_timeout(redis: object) -> float | None:
    holder = getattr(redis, "nodes_manager", None) or getattr(redis, "connection_pool", None)
    kwargs = getattr(holder, "connection_kwargs", None)
    if isinstance(kwargs, Mapping):
        value = kwargs.get("socket_timeout")
        if isinstance(value, int | float):
            return float(value)
    return None


class _Decoder:
    """Turns raw stream entries into StreamEntry values, counting what it skips."""

    def __init__(self, codec: SampleCodec, drop_duplicates: bool) -> None:
        self.codec = codec
        self.drop_duplicates = drop_duplicates
        self.malformed_total = 0
        self.duplicates_total = 0
        # (node, kind) -> (epoch, seq) of the last sample delivered: a publisher's retried
        # pipeline can write a sample twice, and a client must never see a seq twice.
        self.seen: dict[tuple[str, str], tuple[int, int]] = {}

    def entries(self, shard: int, stream: str, raw: Iterable[Any],
                out: list[StreamEntry]) -> str | None:
        """Decode ``raw`` (XREAD/XRANGE entries) into ``out``; returns the last id seen."""
        decode = self.codec.decode
        seen = self.seen
        last_id: str | None = None
        for entry_id, fields in raw:
            last_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            payload = fields.get(b"d") if isinstance(fields, dict) else None
            if payload is None:
                self.malformed(stream, last_id, "no 'd' field")
                continue
            try:
                sample = decode(payload)
            except CodecError as exc:
                self.malformed(stream, last_id, str(exc))
                continue
            if self.drop_duplicates:
                topic = (sample.node, sample.kind)
                previous = seen.get(topic)
                if (previous is not None and previous[0] == sample.epoch
                        and sample.seq <= previous[1]):
                    self.duplicates_total += 1
                    log.debug("dropping duplicate %s seq %d at %s %s", sample.topic,
                              sample.seq, stream, last_id)
                    continue
                if previous is None and len(seen) >= _SEEN_CAP:
                    seen.clear()
                seen[topic] = (sample.epoch, sample.seq)
            out.append(StreamEntry(shard, last_id, sample))
        return last_id

    def malformed(self, stream: str, entry_id: str, why: str) -> None:
        self.malformed_total += 1
        log.warning("skipping malformed entry %s in %s: %s", entry_id, stream, why)


class StreamReader:
    """Reads every shard stream of a layout, in rounds, and resumes after connection loss.

    On a single server a round is ONE ``XREAD BLOCK`` covering all shards. On a Cluster
    (or with ``per_slot=True``) it is one XREAD per hash slot, each in a task the
    TaskManager owns, and a round returns as soon as any of them has data. ``positions``
    holds the last id delivered per shard; setting it (e.g. from a client's cursor) makes the
    next round start there.
    """

    def __init__(
        self,
        redis: RedisClient,
        layout: KeyLayout = DEFAULT_LAYOUT,
        *,
        task_manager: TaskManager | None = None,
        codec: SampleCodec | None = None,
        count: int = 1000,
        block_ms: int = 1000,
        start: str | Mapping[int, str] = "$",
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        drop_duplicates: bool = True,
        check_layout: bool = True,
        per_slot: bool | None = None,
        name: str = "stream-reader",
        rng: random.Random | None = None,
    ) -> None:
        if type(count) is not int or count < 1:
            raise ConfigError(f"count={count!r}: a positive number of entries per shard")
        if type(block_ms) is not int or block_ms < 1:
            raise ConfigError(f"block_ms={block_ms!r}: a positive number of milliseconds")
        timeout = _socket_timeout(redis)
        if timeout is not None and block_ms / 1000 >= timeout:
            raise ConfigError(f"block_ms={block_ms} must be shorter than the client's "
                              f"socket_timeout ({timeout:g} s), or XREAD times out")
        if not 0 < backoff_initial_s <= backoff_max_s or not math.isfinite(backoff_max_s):
            raise ConfigError("backoff: need 0 < backoff_initial_s <= backoff_max_s")
        self.redis = redis
        self.layout = layout
        self.count = count
        self.block_ms = block_ms
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.name = name
        self._rng = rng or random.Random()
        self._decoder = _Decoder(codec or SampleCodec(), drop_duplicates)
        self._keys = layout.stream_keys()
        self._shard_of = {key.encode(): shard for shard, key in enumerate(self._keys)}
        self._positions: dict[int, str] = {shard: "$" for shard in range(layout.shards)}
        self._apply_positions(start if isinstance(start, Mapping)
                              else dict.fromkeys(range(layout.shards), start))
        self._check_layout = check_layout
        self._layout_checked = False
        self._connected = False
        self._failures = 0
        self._closed = False
        self._own_tasks = task_manager is None
        self._tasks = task_manager if task_manager is not None else TaskManager(name=name)
        self._task_group = f"{name}:{id(self):x}"
        self._groups = self._slot_groups(isinstance(redis, RedisCluster)
                                         if per_slot is None else per_slot)
        self._queue: asyncio.Queue[tuple[int, Any] | BaseException] | None = None
        self._restart_groups = False
        self.reconnects_total = 0
        self.errors_total = 0
        self.entries_total = 0
        self.rounds_total = 0

    # -- state ----------------------------------------------------------------------------
    @property
    def positions(self) -> dict[int, str]:
        """The last id delivered per shard (``$`` until resolved); a copy."""
        return dict(self._positions)

    @positions.setter
    def positions(self, value: Mapping[int, str]) -> None:
        """Start the next round after these ids; shards not given keep their position."""
        self._apply_positions(value)
        self._decoder.seen.clear()  # older entries are wanted again, not duplicates
        # Group tasks hold cursors of their own: the next round replaces them.
        self._restart_groups = self._queue is not None

    def _apply_positions(self, value: Mapping[int, str]) -> None:
        checked: dict[int, str] = {}
        for shard, entry_id in value.items():
            if type(shard) is not int or not 0 <= shard < self.layout.shards:
                raise ValidationError(f"shard {shard!r} out of range 0..{self.layout.shards - 1}")
            checked[shard] = _check_id(entry_id, f"position of shard {shard}",
                                       allow_dollar=True)
            if checked[shard] == "0":
                checked[shard] = "0-0"
        self._positions.update(checked)

    @property
    def connected(self) -> bool:
        """True while the last command to Redis succeeded (for readiness checks)."""
        return self._connected

    @property
    def malformed_total(self) -> int:
        return self._decoder.malformed_total

    @property
    def duplicates_total(self) -> int:
        return self._decoder.duplicates_total

    def metrics(self) -> dict[str, int]:
        return {
            "reader_entries_total": self.entries_total,
            "reader_malformed_total": self.malformed_total,
            "reader_duplicates_total": self.duplicates_total,
            "reader_errors_total": self.errors_total,
            "reader_reconnects_total": self.reconnects_total,
            "reader_connected": int(self._connected),
        }

    def _slot_groups(self, per_slot: bool) -> list[list[int]]:
        """Shards that one XREAD covers together: all of them, or (on a Cluster, where a
        command must stay in one hash slot) those of each slot."""
        if not per_slot:
            return [list(range(self.layout.shards))]
        by_slot: dict[int, list[int]] = {}
        for shard, key in enumerate(self._keys):
            by_slot.setdefault(key_slot(key.encode()), []).append(shard)
        return list(by_slot.values())

    # -- reading --------------------------------------------------------------------------
    async def read(self) -> list[StreamEntry]:
        """One round: the entries after ``positions`` (at most ``count`` per shard), waiting
        up to ``block_ms`` for some; ``[]`` if none came.

        Raises BackendUnavailable on a connection-level error (positions are unchanged, so
        the next call resumes). Cancelling is safe: positions move only when this returns.
        """
        if self._closed:
            raise LifecycleError(f"stream reader {self.name!r} is closed")
        out: list[StreamEntry] = []
        if self._restart_groups:
            self._restart_groups = False
            await self._stop_groups()
        try:
            await self._prepare()
            if len(self._groups) == 1:
                reply = await self.redis.xread(
                    {self._keys[s]: self._positions[s] for s in self._groups[0]},
                    count=self.count, block=self.block_ms)
                honour_lost_cancel()
                self._decode_reply(reply, out)
            else:
                await self._read_groups(out)
        except REDIS_ERRORS as exc:
            self._failed()
            raise translate_error(exc, f"{self.name}: reading streams from "
                                       f"{describe(self.redis)}", self.redis) from exc
        if not self._connected:
            if self._failures:
                self.reconnects_total += 1
                log.info("%s: reading again from %s", self.name, describe(self.redis))
            self._connected = True
        self._failures = 0
        self.rounds_total += 1
        self.entries_total += len(out)
        return out

    def _failed(self) -> None:
        self._connected = False
        self._failures += 1
        self.errors_total += 1

    async def _prepare(self) -> None:
        if self._check_layout and not self._layout_checked:
            await check_layout(self.redis, self.layout, record=False)  # read-only users too
            self._layout_checked = True
        dollars = [shard for shard, entry_id in self._positions.items() if entry_id == "$"]
        if not dollars:
            return
        # "$" becomes the id of each stream's newest entry now, so a reconnect later cannot
        # skip what arrives in between (XREAD's own "$" would mean "after the reconnect").
        pipe = self.redis.pipeline(transaction=False)
        for shard in dollars:
            pipe.xrevrange(self._keys[shard], count=1)
        for shard, newest in zip(dollars, await pipe.execute(), strict=True):
            entry_id = newest[0][0] if newest else b"0-0"
            self._positions[shard] = entry_id.decode() if isinstance(entry_id, bytes) \
                else str(entry_id)

    def _decode_reply(self, reply: Any, out: list[StreamEntry]) -> None:
        for key, raw in _stream_items(reply):
            shard = self._shard_of[key if isinstance(key, bytes) else str(key).encode()]
            last_id = self._decoder.entries(shard, self._keys[shard], raw, out)
            if last_id is not None:
                self._positions[shard] = last_id

    # -- Cluster: one XREAD per slot group, each in its own task --------------------------
    async def _read_groups(self, out: list[StreamEntry]) -> None:
        queue = self._queue
        if queue is None:
            queue = self._queue = asyncio.Queue(maxsize=len(self._groups))
            for index, shards in enumerate(self._groups):
                self._tasks.create_task(
                    self._group_loop(queue, shards), name=f"{self.name}:group{index}",
                    group=self._task_group)
        try:
            async with asyncio.timeout(self.block_ms / 1000):
                items = [await queue.get()]
        except TimeoutError:
            return
        while not queue.empty():
            items.append(queue.get_nowait())
        error = next((item for item in items if isinstance(item, BaseException)), None)
        if error is not None:
            # Undelivered replies are dropped with their tasks: positions have not moved
            # past them, so the next round reads them again.
            await self._stop_groups()
            raise error
        for item in items:
            if not isinstance(item, BaseException):
                self._decode_reply(item[1], out)

    async def _group_loop(self, queue: asyncio.Queue[tuple[int, Any] | BaseException],
                          shards: list[int]) -> None:
        """XREAD one slot group forever, handing replies to ``read()`` through ``queue``."""
        cursors: dict[Any, Any] = {self._keys[s]: self._positions[s] for s in shards}
        while True:
            try:
                reply = await self.redis.xread(cursors, count=self.count, block=self.block_ms)
            except REDIS_ERRORS as exc:
                await queue.put(exc)
                return
            honour_lost_cancel()
            items = list(_stream_items(reply))
            if not items:
                continue
            for key, raw in items:
                if raw:
                    name = key.decode() if isinstance(key, bytes) else str(key)
                    last = raw[-1][0]
                    cursors[name] = last.decode() if isinstance(last, bytes) else str(last)
            await queue.put((shards[0], items))

    async def _stop_groups(self) -> None:
        self._queue = None
        records = self._tasks.tasks(group=self._task_group)
        if not records:
            return
        # Python 3.11 can lose a cancel that lands while redis-py writes a command (see
        # honour_lost_cancel); such a task then waits in its XREAD, where a second cancel
        # ends it as the first would have. A task still running after a short grace gets
        # that second cancel from cancel_group, which waits at most until its XREAD returns.
        for record in records:
            record.task.cancel()
        await asyncio.wait([record.task for record in records], timeout=0.1)
        await self._tasks.cancel_group(
            self._task_group, timeout=max(self._tasks.cancel_timeout, self.block_ms / 1000 + 1))

    # -- iteration and closing ------------------------------------------------------------
    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> list[StreamEntry]:
        """The next non-empty batch; on connection errors, back off and retry for ever.

        Ends (StopAsyncIteration) once the reader is closed. Cancelling is safe.
        """
        while not self._closed:
            try:
                batch = await self.read()
            except BackendUnavailable as exc:
                delay = self.next_backoff()
                log.warning("%s: %s; retrying in %.2fs", self.name, exc, delay)
                await asyncio.sleep(delay)
                continue
            except LifecycleError:
                break
            if batch:
                return batch
        raise StopAsyncIteration

    def next_backoff(self) -> float:
        """Seconds to wait after the current run of failures: exponential, capped, jittered."""
        ceiling = min(self.backoff_max_s,
                      self.backoff_initial_s * 2.0 ** min(max(self._failures - 1, 0), 30))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    async def aclose(self) -> None:
        """Stop reading: cancel the group tasks (and the own TaskManager). Idempotent.

        The Redis client is the caller's and stays open.
        """
        self._closed = True
        await self._stop_groups()
        if self._own_tasks:
            await self._tasks.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# -- one-shot queries -----------------------------------------------------------------------
_default_codec = SampleCodec()


async def read_range(
    redis: RedisClient,
    layout: KeyLayout,
    shard: int,
    start_id: str,
    end_id: str = "+",
    count: int | None = None,
    *,
    codec: SampleCodec | None = None,
) -> list[StreamEntry]:
    """The entries of one shard after ``start_id`` (exclusive; ``-`` or ``0`` for the
    oldest) up to ``end_id`` (inclusive), at most ``count`` (None: all, fetched in pages).

    For resuming from a cursor older than a live reader's position. Malformed entries are
    logged and skipped; duplicates are not dropped. Raises BackendUnavailable.
    """
    key = layout.stream_key(shard)
    if start_id not in ("-", "0"):
        start_id = _check_id(start_id, "start id", allow_dollar=False)
    if end_id != "+":
        end_id = _check_id(end_id, "end id", allow_dollar=False)
    if count is not None and count < 1:
        raise ValidationError(f"count={count!r}: a positive number, or None for all")
    decoder = _Decoder(codec or _default_codec, drop_duplicates=False)
    out: list[StreamEntry] = []
    lower = "-" if start_id in ("-", "0") else f"({start_id}"
    try:
        while count is None or len(out) < count:
            page = _RANGE_PAGE if count is None else min(_RANGE_PAGE, count - len(out))
            raw = await redis.xrange(key, min=lower, max=end_id, count=page)
            if not raw:
                break
            last = decoder.entries(shard, key, raw, out)
            if len(raw) < page or last is None:
                break
            lower = f"({last}"
    except REDIS_ERRORS as exc:
        raise translate_error(exc, f"reading {key}", redis) from exc
    return out[:count] if count is not None else out


def topic_prefix(codec: SampleCodec, node: str, kind: str) -> bytes | None:
    """The bytes every encoded sample of ``node/kind`` starts with, or None if unknown.

    Lets ``history`` skip other topics' entries without decoding them. The prefix is
    checked against a real encoding, so a codec with another layout just gets None.
    """
    try:
        probe = codec.encode(Sample(node, kind, 0.0, 0, 0, {}))
    except CodecError:
        return None
    # Format 1 is a 9-item array (fixarray header 0x99) opening with version, node, kind.
    prefix: bytes = (b"\x99" + msgpack.packb(FORMAT_VERSION) + msgpack.packb(node)
                     + msgpack.packb(kind))
    return prefix if probe.startswith(prefix) else None


def _evenly_spaced(total: int, wanted: int) -> list[int]:
    """``wanted`` indices out of ``range(total)``, evenly spread, first and last included."""
    if total <= wanted:
        return list(range(total))
    if wanted == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (wanted - 1)) for i in range(wanted)})


async def history(
    redis: RedisClient,
    layout: KeyLayout,
    node: str,
    kind: str,
    since: float,
    until: float | None,
    max_points: int,
    *,
    codec: SampleCodec | None = None,
) -> list[Sample]:
    """The samples of ``node/kind`` that reached Redis between ``since`` and ``until``
    (epoch seconds, inclusive; None: now), oldest first, at most ``max_points``.

    Over ``max_points``, the points kept are evenly spaced over the range, first and newest
    included, so a chart keeps its shape. Time is the stream id (arrival at Redis), which
    trails ``ts`` by the publish delay. It scans the node's shard stream (every node of the
    shard), so its cost grows with the range asked; see docs/redis-layout.md.
    Raises ValidationError for bad arguments, BackendUnavailable if Redis fails.
    """
    validate_node(node)
    validate_kind(kind)
    if not isinstance(since, int | float) or not math.isfinite(since) or since < 0:
        raise ValidationError(f"invalid since {since!r}: epoch seconds")
    if until is not None and (not isinstance(until, int | float) or not math.isfinite(until)
                              or until < since):
        raise ValidationError(f"invalid until {until!r}: epoch seconds, not before since")
    if type(max_points) is not int or max_points < 1:
        raise ValidationError(f"invalid max_points {max_points!r}: a positive integer")
    codec = codec or _default_codec
    shard = layout.shard_for(node)
    key = layout.stream_key(shard)
    prefix = topic_prefix(codec, node, kind)
    lower = str(int(since * 1000))
    upper = "+" if until is None else str(int(until * 1000))
    matches: list[tuple[str, bytes]] = []
    try:
        while True:
            raw: Any = await redis.xrange(key, min=lower, max=upper, count=_RANGE_PAGE)
            for entry_id, fields in raw:
                payload = fields.get(b"d") if isinstance(fields, dict) else None
                if payload is not None and (prefix is None or payload.startswith(prefix)):
                    matches.append((entry_id, payload))
            if len(raw) < _RANGE_PAGE:
                break
            last = raw[-1][0]
            lower = "(" + (last.decode() if isinstance(last, bytes) else str(last))
    except REDIS_ERRORS as exc:
        raise translate_error(exc, f"reading history of {node}/{kind}", redis) from exc
    decoder = _Decoder(codec, drop_duplicates=True)
    entries: list[StreamEntry] = []
    # With the prefix filter, thin first and decode only the points kept; without it (a
    # codec of another layout) every entry is decoded to learn its topic.
    if prefix is None or len(matches) <= max_points:
        decoder.entries(shard, key, ((i, {b"d": p}) for i, p in matches), entries)
        samples = [e.sample for e in entries if e.sample.node == node and e.sample.kind == kind]
        return [samples[i] for i in _evenly_spaced(len(samples), max_points)]
    chosen = [matches[i] for i in _evenly_spaced(len(matches), max_points)]
    decoder.entries(shard, key, ((i, {b"d": p}) for i, p in chosen), entries)
    return [e.sample for e in entries if e.sample.node == node and e.sample.kind == kind]
