"""The StreamReader and the range/history queries: order, resume, malformed entries, groups."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import fakeredis
import pytest
from redis.asyncio.cluster import RedisCluster

from hub.codec import SampleCodec
from hub.errors import (
    BackendUnavailable,
    ConfigError,
    LayoutMismatch,
    LifecycleError,
    ValidationError,
)
from hub.keys import KeyLayout
from hub.latest import latest, list_topics
from hub.publisher import Publisher
from hub.reader import StreamEntry, StreamReader, history, read_range, topic_prefix
from hub.redis_url import connect
from hub.sample import Sample
from hub.tasks import TaskManager
from tests.redis_cluster import LocalCluster, redis_cluster_fixture
from tests.redis_server import RedisServer, free_port, require_redis_server

LAYOUT = KeyLayout()


def sample(node: str = "web-1", seq: int = 0, kind: str = "system",
           epoch: int = 7) -> Sample:
    return Sample.build(node, kind, {"cpu_percent": float(seq), "load1": 0.5}, seq=seq,
                        epoch=epoch, ts=time.time())


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def real_redis(redis_server: RedisServer) -> AsyncIterator[Any]:
    client = connect(redis_server.url)
    yield client
    await client.aclose()


def seqs(entries: list[StreamEntry]) -> list[int]:
    return [entry.sample.seq for entry in entries]


async def test_reads_everything_from_the_beginning(fake_redis: Any) -> None:
    """start="0" yields every published sample once, with its shard and stream id."""
    publisher = Publisher(fake_redis)
    batch = [sample(f"n{i % 20}", seq=i) for i in range(100)]
    ids = await publisher.publish_batch(batch)
    reader = StreamReader(fake_redis, start="0", block_ms=10)
    entries = await reader.read()
    assert sorted(seqs(entries)) == list(range(100))
    by_seq = {entry.sample.seq: entry for entry in entries}
    for index, one in enumerate(batch):
        entry = by_seq[one.seq]
        assert entry.sample == one
        assert entry.entry_id == ids[index]
        assert entry.shard == LAYOUT.shard_for(one.node)
    assert await reader.read() == []
    positions = reader.positions
    for shard in range(LAYOUT.shards):
        shard_ids = [e.entry_id for e in entries if e.shard == shard]
        assert positions[shard] == (shard_ids[-1] if shard_ids else "0-0")
    await reader.aclose()


async def test_dollar_means_only_new_entries(fake_redis: Any) -> None:
    """start="$" skips what was there at the first read and delivers what comes after."""
    publisher = Publisher(fake_redis)
    await publisher.publish(sample(seq=1))
    reader = StreamReader(fake_redis, block_ms=10)
    assert await reader.read() == []
    assert "$" not in reader.positions.values()
    await publisher.publish(sample(seq=2))
    assert seqs(await reader.read()) == [2]
    await reader.aclose()


async def test_count_limits_entries_per_shard(fake_redis: Any) -> None:
    """count bounds each round per shard; the next rounds continue where it stopped."""
    await Publisher(fake_redis).publish_batch([sample(seq=i) for i in range(25)])
    reader = StreamReader(fake_redis, start="0", count=10, block_ms=10)
    assert seqs(await reader.read()) == list(range(10))
    assert seqs(await reader.read()) == list(range(10, 20))
    assert seqs(await reader.read()) == list(range(20, 25))
    await reader.aclose()


async def test_one_xread_covers_all_16_shards(real_redis: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """On a single server one round is ONE XREAD naming all 16 shard streams."""
    nodes: dict[int, str] = {}
    for i in range(1000):
        nodes.setdefault(LAYOUT.shard_for(f"node-{i}"), f"node-{i}")
    assert len(nodes) == 16
    await Publisher(real_redis).publish_batch([sample(node, seq=1) for node in nodes.values()])
    calls: list[dict[Any, Any]] = []
    original = real_redis.xread

    async def counting(streams: dict[Any, Any], **kwargs: Any) -> Any:
        calls.append(dict(streams))
        return await original(streams, **kwargs)

    monkeypatch.setattr(real_redis, "xread", counting)
    reader = StreamReader(real_redis, start="0", block_ms=50)
    entries = await reader.read()
    assert len(calls) == 1
    assert sorted(calls[0]) == sorted(LAYOUT.stream_keys())
    assert {entry.shard for entry in entries} == set(range(16))
    await reader.aclose()


async def test_malformed_entries_are_counted_and_skipped(
        real_redis: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Garbage bytes and a missing field are skipped and logged by id; good ones around pass."""
    publisher = Publisher(real_redis)
    key = LAYOUT.stream_key(LAYOUT.shard_for("web-1"))
    await publisher.publish(sample(seq=1))
    garbage_id = (await real_redis.xadd(key, {"d": b"\xc1\xff garbage"})).decode()
    missing_id = (await real_redis.xadd(key, {"other": b"x"})).decode()
    await publisher.publish(sample(seq=2))
    reader = StreamReader(real_redis, start="0", block_ms=10)
    with caplog.at_level(logging.WARNING, logger="hub.reader"):
        entries = await reader.read()
    assert seqs(entries) == [1, 2]
    assert reader.malformed_total == 2
    assert garbage_id in caplog.text
    assert missing_id in caplog.text
    assert key in caplog.text
    assert reader.positions[LAYOUT.shard_for("web-1")] == entries[-1].entry_id
    await reader.aclose()


async def test_duplicate_seq_from_a_replayed_batch_is_dropped(
        fake_redis: Any) -> None:
    """A sample written twice (a publisher's retried pipeline) is delivered once."""
    publisher = Publisher(fake_redis)
    batch = [sample(seq=i) for i in range(3)]
    await publisher.publish_batch(batch)
    await publisher.publish_batch(batch)  # the replay
    await publisher.publish(sample(seq=3))
    await publisher.publish(sample(seq=0, epoch=8))  # a restarted collector starts again
    reader = StreamReader(fake_redis, start="0", block_ms=10)
    entries = await reader.read()
    assert [(e.sample.epoch, e.sample.seq) for e in entries] == [
        (7, 0), (7, 1), (7, 2), (7, 3), (8, 0)]
    assert reader.duplicates_total == 3
    await reader.aclose()


@pytest.mark.parametrize("per_slot", [False, True])
async def test_setting_positions_rewinds(real_redis: Any, per_slot: bool) -> None:
    """Setting positions to an older id makes the next round deliver from there again."""
    await Publisher(real_redis).publish_batch([sample(seq=i) for i in range(5)])
    reader = StreamReader(real_redis, start="0", block_ms=200, per_slot=per_slot)
    entries = await reader.read()
    shard = LAYOUT.shard_for("web-1")
    reader.positions = {shard: entries[1].entry_id}
    assert seqs(await reader.read()) == [2, 3, 4]
    with pytest.raises(ValidationError):
        reader.positions = {shard: "yesterday"}
    with pytest.raises(ValidationError):
        reader.positions = {99: "0-0"}
    await reader.aclose()


async def test_start_mapping_and_validation(fake_redis: Any) -> None:
    """A start mapping sets some shards; others start at "$"; bad settings are refused."""
    reader = StreamReader(fake_redis, start={3: "0", 4: "1700000000000-5"})
    assert reader.positions[3] == "0-0"
    assert reader.positions[4] == "1700000000000-5"
    assert reader.positions[5] == "$"
    with pytest.raises(ConfigError):
        StreamReader(fake_redis, count=0)
    with pytest.raises(ConfigError, match="socket_timeout"):
        StreamReader(connect("redis://127.0.0.1:1/0?socket_timeout=1"), block_ms=1000)
    await reader.aclose()


async def test_resume_after_restart_has_no_gap_and_no_duplicate() -> None:
    """Across a redis-server stop/start, the reader delivers every seq exactly once.

    The server keeps its data (AOF), so the old entries are still there after the restart:
    only the reader's positions keep them from being delivered twice (duplicate dropping is
    off to prove it). Samples the collector could not publish while Redis was down are
    published once it is back.
    """
    require_redis_server()
    with RedisServer(None, "--appendonly", "yes", "--appendfsync", "always") as server:
        client = connect(server.url, retries=0)
        publisher = Publisher(client)
        reader = StreamReader(client, block_ms=200, backoff_initial_s=0.05,
                              backoff_max_s=0.2, drop_duplicates=False)
        received: list[int] = []

        async def consume() -> None:
            async for batch in reader:
                received.extend(seqs(batch))

        async def have(n: int) -> bool:
            return len(received) >= n

        async with TaskManager(name="test") as tasks:
            await reader.read()  # resolve "$" before publishing
            tasks.create_task(consume(), name="consume")
            await publisher.publish_batch([sample(seq=i) for i in range(5)])
            await wait_for(lambda: have(5))
            server.stop()
            pending = [sample(seq=i) for i in range(5, 10)]
            with pytest.raises(BackendUnavailable):
                await publisher.publish_batch(pending)

            async def reader_noticed() -> bool:
                return not reader.connected

            await wait_for(reader_noticed)
            server.start()
            await publisher.publish_batch(pending)
            await publisher.publish_batch([sample(seq=i) for i in range(10, 15)])
            await wait_for(lambda: have(15))
            await reader.aclose()
        assert received == list(range(15))
        assert reader.reconnects_total >= 1
        assert reader.errors_total >= 1
        await client.aclose()


async def test_reader_needs_no_write_permission(own_redis_server: RedisServer) -> None:
    """A reader works for an ACL user that may only read, and still checks the layout."""
    client = connect(own_redis_server.url)
    await Publisher(client).publish_batch([sample(seq=i) for i in range(3)])
    await client.aclose()
    own_redis_server.cli("ACL", "SETUSER", "gw", "on", ">gw-pass", "~mh:*", "-@all", "+@read",
                         "+ping")
    gateway = connect(f"redis://gw:gw-pass@127.0.0.1:{own_redis_server.port}/0")
    try:
        reader = StreamReader(gateway, start="0", block_ms=10)
        assert seqs(await reader.read()) == [0, 1, 2]
        await reader.aclose()
        with pytest.raises(LayoutMismatch):
            await StreamReader(gateway, KeyLayout(shards=8), block_ms=10).read()
    finally:
        await gateway.aclose()


async def test_read_failure_is_redacted_backend_unavailable() -> None:
    """Against a closed port, read() raises BackendUnavailable without the password."""
    client = connect(f"redis://hub:Sekr1t-pw@127.0.0.1:{free_port()}/0", retries=0)
    reader = StreamReader(client, block_ms=10)
    with pytest.raises(BackendUnavailable) as info:
        await reader.read()
    assert "Sekr1t-pw" not in str(info.value)
    assert not reader.connected
    assert reader.errors_total == 1
    await reader.aclose()
    await client.aclose()


def test_backoff_grows_is_capped_and_jittered() -> None:
    """The retry delay doubles per failure up to the cap, jittered within [d/2, d]."""
    reader = StreamReader(fakeredis.FakeAsyncRedis(), backoff_initial_s=0.1, backoff_max_s=1.0,
                          rng=random.Random(1))
    ceilings = []
    for failures in range(1, 8):
        reader._failures = failures
        ceiling = min(1.0, 0.1 * 2 ** (failures - 1))
        delays = [reader.next_backoff() for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
        ceilings.append(max(delays))
    assert ceilings[-1] <= 1.0 < ceilings[-1] * 2


async def test_closed_reader_refuses_and_ends_iteration(
        fake_redis: Any) -> None:
    """After aclose(), read() raises LifecycleError and iteration ends."""
    reader = StreamReader(fake_redis, block_ms=10)
    await reader.aclose()
    with pytest.raises(LifecycleError):
        await reader.read()
    assert [batch async for batch in reader] == []


# -- per-slot mode (what a Cluster uses), tried on a single server --------------------------
async def test_per_slot_mode_reads_all_groups_in_owned_tasks(real_redis: Any) -> None:
    """per_slot runs one XREAD task per slot under the TaskManager and merges their data."""
    async with TaskManager(name="readers") as tasks:
        reader = StreamReader(real_redis, task_manager=tasks, per_slot=True, start="0",
                              block_ms=2000)
        batch = [sample(f"node-{i}", seq=1) for i in range(200)]
        await Publisher(real_redis).publish_batch(batch)
        got: list[StreamEntry] = []

        async def have_all() -> bool:
            got.extend(await reader.read())
            return len(got) >= 200

        await wait_for(have_all)
        assert sorted(e.sample.node for e in got) == sorted(s.node for s in batch)
        assert len(tasks.tasks()) == 16
        await reader.aclose()
        assert tasks.tasks() == []


async def test_per_slot_reader_closes_promptly(real_redis: Any) -> None:
    """Closing a per-slot reader right after a round ends its tasks fast, none left stuck."""
    async with TaskManager(name="readers") as tasks:
        reader = StreamReader(real_redis, task_manager=tasks, per_slot=True, start="0",
                              block_ms=8000)
        await Publisher(real_redis).publish_batch([sample(f"node-{i}") for i in range(50)])
        assert await reader.read()
        started = time.monotonic()
        await reader.aclose()
        assert time.monotonic() - started < 2.0
        assert tasks.tasks() == []
        assert tasks.metrics()["tasks_stuck_total"] == 0


async def test_per_slot_round_returns_when_any_group_has_data(
        real_redis: Any) -> None:
    """A round returns as soon as one slot's XREAD has data, not after the others' block."""
    publisher = Publisher(real_redis)
    reader = StreamReader(real_redis, per_slot=True, block_ms=5000, start="0")
    started = time.monotonic()
    entries, _ = await asyncio.gather(reader.read(), publisher.publish(sample(seq=1)))
    assert time.monotonic() - started < 2.5
    assert seqs(entries) == [1]
    await reader.aclose()


async def test_per_slot_resume_after_restart() -> None:
    """In per-slot mode too, a restart loses and repeats nothing."""
    require_redis_server()
    with RedisServer(None, "--appendonly", "yes", "--appendfsync", "always") as server:
        client = connect(server.url, retries=0)
        publisher = Publisher(client)
        reader = StreamReader(client, per_slot=True, block_ms=200, backoff_initial_s=0.05,
                              backoff_max_s=0.2, drop_duplicates=False, start="0")
        received: list[int] = []

        async def consume() -> None:
            async for batch in reader:
                received.extend(seqs(batch))

        async def have(n: int) -> bool:
            return len(received) >= n

        async with TaskManager(name="test") as tasks:
            tasks.create_task(consume(), name="consume")
            await publisher.publish_batch([sample(seq=i) for i in range(5)])
            await wait_for(lambda: have(5))
            server.stop()

            async def reader_noticed() -> bool:
                return not reader.connected

            await wait_for(reader_noticed)
            server.start()
            await publisher.publish_batch([sample(seq=i) for i in range(5, 10)])
            await wait_for(lambda: have(10))
            await reader.aclose()
        assert received == list(range(10))
        await client.aclose()


# -- read_range and history -----------------------------------------------------------------
async def test_read_range_is_exclusive_of_start(fake_redis: Any) -> None:
    """read_range returns entries after start_id, up to end_id, at most count."""
    ids = await Publisher(fake_redis).publish_batch([sample(seq=i) for i in range(10)])
    shard = LAYOUT.shard_for("web-1")
    assert seqs(await read_range(fake_redis, LAYOUT, shard, "-")) == list(range(10))
    assert seqs(await read_range(fake_redis, LAYOUT, shard, "0")) == list(range(10))
    assert seqs(await read_range(fake_redis, LAYOUT, shard, ids[3])) == list(range(4, 10))
    assert seqs(await read_range(fake_redis, LAYOUT, shard, ids[3], ids[6])) == [4, 5, 6]
    assert seqs(await read_range(fake_redis, LAYOUT, shard, ids[3], count=2)) == [4, 5]
    with pytest.raises(ValidationError):
        await read_range(fake_redis, LAYOUT, shard, "bad")


async def test_read_range_pages_through_long_streams(real_redis: Any) -> None:
    """Without count, read_range fetches every entry, however many pages it takes."""
    publisher = Publisher(real_redis)
    for start in range(0, 4500, 500):
        await publisher.publish_batch([sample(seq=i) for i in range(start, start + 500)])
    shard = LAYOUT.shard_for("web-1")
    assert seqs(await read_range(real_redis, LAYOUT, shard, "-")) == list(range(4500))


async def test_history_filters_the_topic_and_time(fake_redis: Any) -> None:
    """history returns only its topic's samples within [since, until], oldest first."""
    layout = KeyLayout(shards=1)  # every node shares the one stream
    publisher = Publisher(fake_redis, layout)
    await publisher.publish_batch(
        [sample(node, seq=i, kind=kind) for i in range(20)
         for node in ("web-1", "web-2") for kind in ("system", "app")])
    since = time.time() - 60
    points = await history(fake_redis, layout, "web-1", "app", since, None, 100)
    assert [(p.node, p.kind) for p in points] == [("web-1", "app")] * 20
    assert [p.seq for p in points] == list(range(20))
    assert await history(fake_redis, layout, "web-1", "app", since, since + 1, 100) == []
    assert await history(fake_redis, layout, "web-9", "app", since, None, 100) == []


async def test_history_thins_evenly_keeping_first_and_newest(
        fake_redis: Any) -> None:
    """Over max_points, history keeps evenly spaced points including the first and newest."""
    publisher = Publisher(fake_redis)
    await publisher.publish_batch([sample(seq=i) for i in range(101)])
    points = await history(fake_redis, LAYOUT, "web-1", "system", 0, None, 11)
    assert [p.seq for p in points] == list(range(0, 101, 10))
    newest = await history(fake_redis, LAYOUT, "web-1", "system", 0, None, 1)
    assert [p.seq for p in newest] == [100]


async def test_history_validates_arguments(fake_redis: Any) -> None:
    """Bad node, times or max_points are ValidationErrors."""
    for args in (("bad node", "system", 0, None, 10), ("web-1", "system", -1, None, 10),
                 ("web-1", "system", 10, 5, 10), ("web-1", "system", 0, None, 0)):
        with pytest.raises(ValidationError):
            await history(fake_redis, LAYOUT, *args)


def test_topic_prefix_matches_the_codec() -> None:
    """The pre-filter prefix is what every encoding of the topic starts with, and no other's."""
    codec = SampleCodec()
    prefix = topic_prefix(codec, "web-1", "system")
    assert prefix is not None
    assert codec.encode(sample("web-1", seq=5)).startswith(prefix)
    assert not codec.encode(sample("web-10", seq=5)).startswith(prefix)
    assert not codec.encode(sample("web-1", seq=5, kind="systemd")).startswith(prefix)


# -- a real Redis Cluster ---------------------------------------------------------------------
@pytest.fixture
def redis_cluster() -> Iterator[LocalCluster]:
    """Three master nodes forming a Redis Cluster (no replicas)."""
    yield from redis_cluster_fixture()


async def test_cluster_publish_read_latest_and_topics(redis_cluster: LocalCluster) -> None:
    """On a 3-node Cluster: a batch publishes, the reader reads every shard (one XREAD per
    slot, in owned tasks), and latest/list_topics find every topic."""
    url = "redis+cluster://" + ",".join(
        f"127.0.0.1:{node.port}" for node in redis_cluster.nodes[:2])
    client = connect(url)
    assert isinstance(client, RedisCluster)
    try:
        publisher = Publisher(client)
        batch = [sample(f"node-{i}", seq=1) for i in range(100)]
        assert all(await publisher.publish_batch(batch))
        assert publisher.uses_script
        async with TaskManager(name="cluster") as tasks:
            reader = StreamReader(client, task_manager=tasks, start="0", block_ms=500)
            got: list[StreamEntry] = []

            async def have_all() -> bool:
                got.extend(await reader.read())
                return len(got) >= 100

            await wait_for(have_all)
            assert len(tasks.tasks()) == 16  # one per shard: each shard is its own slot
            assert sorted(e.sample.node for e in got) == sorted(s.node for s in batch)
            await publisher.publish(sample("node-7", seq=2))
            more: list[StreamEntry] = []

            async def have_more() -> bool:
                more.extend(await reader.read())
                return bool(more)

            await wait_for(have_more)
            assert [(e.sample.node, e.sample.seq) for e in more] == [("node-7", 2)]
            await reader.aclose()
        topics = [s.topic for s in batch]
        cached = await latest(client, LAYOUT, topics)
        assert [s.topic for s in cached] == topics
        assert await list_topics(client, LAYOUT, max_age_s=60) == sorted(topics)
        shard = LAYOUT.shard_for("node-7")
        assert seqs(await read_range(client, LAYOUT, shard, "-"))[-1] == 2
    finally:
        await client.aclose()
