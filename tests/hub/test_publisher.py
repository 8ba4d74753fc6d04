"""The Publisher: what it writes, in how many round trips, how it trims, and how it fails."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest
from redis.asyncio.connection import AbstractConnection

from hub.codec import SampleCodec
from hub.errors import BackendUnavailable, CodecError, ConfigError, LayoutMismatch
from hub.keys import KeyLayout
from hub.publisher import Publisher
from hub.redis_url import connect
from hub.sample import Sample
from tests.redis_server import RedisServer, free_port

codec = SampleCodec()


def sample(node: str = "web-1", kind: str = "system", seq: int = 0, **values: float) -> Sample:
    return Sample.build(node, kind, values or {"cpu_percent": 1.5, "load1": 0.25}, seq=seq,
                        epoch=7, ts=time.time())


def bad_sample(node: str = "web-1") -> Sample:
    """A sample that skipped validation: a NaN cannot be encoded."""
    return Sample(node, "system", time.time(), 0, 7, {"cpu_percent": math.nan})


@pytest.fixture
async def real_redis(redis_server: RedisServer) -> AsyncIterator[Any]:
    client = connect(redis_server.url)
    yield client
    await client.aclose()


async def stream_samples(client: Any, layout: KeyLayout, shard: int) -> list[Sample]:
    """What a raw XRANGE of a shard stream holds, decoded."""
    return [codec.decode(fields[b"d"]) for _, fields in
            await client.xrange(layout.stream_key(shard))]


@pytest.mark.parametrize("mode", ["script", "commands"])
async def test_publish_writes_stream_latest_and_index(real_redis: Any,
                                                      mode: str) -> None:
    """One publish leaves the sample in its shard stream, its latest key and the node index."""
    layout = KeyLayout()
    publisher = Publisher(real_redis, layout, write_mode=mode)  # type: ignore[arg-type]
    one = sample()
    before = time.time()
    entry_id = await publisher.publish(one)
    shard = layout.shard_for("web-1")
    assert publisher.uses_script is (mode == "script")
    assert await stream_samples(real_redis, layout, shard) == [one]
    (first_id, _), = await real_redis.xrange(layout.stream_key(shard))
    assert first_id.decode() == entry_id
    assert codec.decode(await real_redis.get(layout.latest_key("web-1", "system"))) == one
    assert 0 < await real_redis.pttl(layout.latest_key("web-1", "system")) <= 5000
    score = await real_redis.zscore(layout.topics_key(shard), "web-1/system")
    assert score is not None
    assert before - 1 < score < time.time() + 1
    assert publisher.published_total == 1
    assert publisher.bytes_total == len(codec.encode(one))


@pytest.mark.parametrize("mode", ["script", "commands"])
async def test_batch_round_trips_through_raw_xrange(real_redis: Any,
                                                    mode: str) -> None:
    """A batch over many nodes and kinds reads back, per shard and in order, as published."""
    layout = KeyLayout()
    publisher = Publisher(real_redis, layout, write_mode=mode)  # type: ignore[arg-type]
    batch = [sample(f"n{i % 40}", ("system", "app")[i % 2], seq=i, v=float(i))
             for i in range(300)]
    ids = await publisher.publish_batch(batch)
    assert len(ids) == 300
    assert all(ids)
    for shard in range(layout.shards):
        expected = [s for s in batch if layout.shard_for(s.node) == shard]
        assert await stream_samples(real_redis, layout, shard) == expected
    topics = set()
    for shard in range(layout.shards):
        topics |= {m.decode() for m in await real_redis.zrange(layout.topics_key(shard), 0, -1)}
    assert topics == {s.topic for s in batch}
    newest = {s.topic: s for s in batch}
    for topic, last in newest.items():
        assert codec.decode(await real_redis.get(layout.latest_key_for(topic))) == last


@pytest.mark.parametrize("mode", ["script", "commands"])
async def test_batch_is_one_round_trip(real_redis: Any, mode: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first publish, a 200-sample batch over all shards is one write to the socket."""
    publisher = Publisher(real_redis, write_mode=mode)  # type: ignore[arg-type]
    await publisher.publish(sample())  # connects and prepares
    sends = 0
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        nonlocal sends
        sends += 1
        await original(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    batch = [sample(f"node-{i}", seq=1) for i in range(200)]
    ids = await publisher.publish_batch(batch)
    assert sends == 1
    # meta, 16 streams, 16 node indexes, 201 latest keys
    assert all(ids)
    assert await real_redis.dbsize() == 1 + 16 + 16 + 201


def test_latest_ttl_defaults() -> None:
    """The latest TTL is three intervals, at least 5 s, unless set."""
    client = fakeredis.FakeAsyncRedis()
    assert Publisher(client).latest_ttl_s == 5.0
    assert Publisher(client, interval_s=10).latest_ttl_s == 30.0
    assert Publisher(client, interval_s=10, latest_ttl_s=2.5).latest_ttl_s == 2.5


@pytest.mark.parametrize("kwargs", [
    {"retention_s": 0}, {"interval_s": -1}, {"latest_ttl_s": 0}, {"retention_s": math.inf},
    {"write_mode": "fast"},
])
def test_bad_settings_are_config_errors(kwargs: dict[str, Any]) -> None:
    """Settings that cannot work are refused at construction."""
    with pytest.raises(ConfigError):
        Publisher(fakeredis.FakeAsyncRedis(), **kwargs)


async def test_latest_ttl_in_milliseconds(real_redis: Any) -> None:
    """A fractional TTL is kept to the millisecond (PX)."""
    publisher = Publisher(real_redis, latest_ttl_s=2.5)
    await publisher.publish(sample())
    assert 2000 < await real_redis.pttl(KeyLayout().latest_key("web-1", "system")) <= 2500


async def test_minid_trims_entries_older_than_retention(
        fake_redis: Any) -> None:
    """Entries older than the retention are trimmed on publish; newer ones stay."""
    # One entry per stream node, so approximate trimming can drop exactly the expired ones.
    await fake_redis.config_set("stream-node-max-entries", 1)
    layout = KeyLayout()
    key = layout.stream_key(layout.shard_for("web-1"))
    now_ms = int(time.time() * 1000)
    await fake_redis.xadd(key, {"d": b"old"}, id=f"{now_ms - 120_000}-0")
    await fake_redis.xadd(key, {"d": b"recent"}, id=f"{now_ms - 30_000}-0")
    publisher = Publisher(fake_redis, layout, retention_s=60)
    await publisher.publish(sample())
    payloads = [fields[b"d"] for _, fields in await fake_redis.xrange(key)]
    assert payloads[0] == b"recent"
    assert len(payloads) == 2


@pytest.mark.parametrize("mode", ["script", "commands"])
async def test_minid_trimming_on_a_real_server(real_redis: Any, mode: str) -> None:
    """On redis-server, approximate MINID trimming drops whole nodes of expired entries."""
    layout = KeyLayout()
    key = layout.stream_key(layout.shard_for("web-1"))
    pipe = real_redis.pipeline(transaction=False)
    for i in range(1000):  # ten stream nodes of 100 entries, all long expired
        pipe.xadd(key, {"d": b"old"}, id=f"{1_000_000 + i}-0")
    await pipe.execute()
    publisher = Publisher(real_redis, layout, retention_s=60,
                          write_mode=mode)  # type: ignore[arg-type]
    await publisher.publish(sample())
    assert await real_redis.xlen(key) <= 101
    newest = await real_redis.xrevrange(key, count=1)
    assert codec.decode(newest[0][1][b"d"]).node == "web-1"


async def test_trim_follows_server_clock_not_local(fake_redis: Any) -> None:
    """A local clock a day ahead does not make the publisher trim its own fresh entries."""
    publisher = Publisher(fake_redis, retention_s=3600, clock=lambda: time.time() + 86400)
    await publisher.publish_batch([sample(seq=i) for i in range(3)])
    await publisher.publish_batch([sample(seq=i) for i in range(3, 6)])
    key = KeyLayout().stream_key(KeyLayout().shard_for("web-1"))
    assert await fake_redis.xlen(key) == 6


async def test_index_is_pruned_of_topics_older_than_retention(
        fake_redis: Any) -> None:
    """The publisher removes node-index members last seen before the retention."""
    layout = KeyLayout()
    key = layout.topics_key(layout.shard_for("web-1"))
    await fake_redis.zadd(key, {"gone/system": time.time() - 7200,
                                "alive/system": time.time() - 60})
    await Publisher(fake_redis, layout, retention_s=3600).publish(sample())
    members = {m.decode() for m in await fake_redis.zrange(key, 0, -1)}
    assert members == {"alive/system", "web-1/system"}


async def test_auto_mode_falls_back_without_scripting(
        fake_redis: Any) -> None:
    """On a server without scripting (fakeredis), auto mode writes plain commands."""
    publisher = Publisher(fake_redis)
    assert await publisher.publish(sample())
    assert not publisher.uses_script


async def test_script_mode_without_scripting_is_a_config_error(
        fake_redis: Any) -> None:
    """Asking for script mode where scripts are refused says how to fix it."""
    with pytest.raises(ConfigError, match="write_mode"):
        await Publisher(fake_redis, write_mode="script").publish(sample())


async def test_lost_script_is_sent_again_without_duplicates(real_redis: Any) -> None:
    """After SCRIPT FLUSH (as after a restart), the next batch is written exactly once."""
    layout = KeyLayout()
    publisher = Publisher(real_redis, layout, write_mode="script")
    await publisher.publish(sample(seq=0))
    await real_redis.script_flush()
    ids = await publisher.publish_batch([sample(seq=i) for i in range(1, 4)])
    assert all(ids)
    shard = layout.shard_for("web-1")
    assert [s.seq for s in await stream_samples(real_redis, layout, shard)] == [0, 1, 2, 3]


async def test_bad_sample_in_batch_does_not_cost_the_others(
        fake_redis: Any, caplog: pytest.LogCaptureFixture) -> None:
    """An unencodable sample is skipped, counted and logged; the rest are published."""
    layout = KeyLayout()
    publisher = Publisher(fake_redis, layout)
    ids = await publisher.publish_batch([sample(seq=1), bad_sample(), sample(seq=2)])
    assert ids[0]
    assert ids[2]
    assert ids[1] == ""
    assert publisher.encode_errors_total == 1
    assert publisher.errors == 1
    assert publisher.published_total == 2
    assert "web-1/system" in caplog.text
    shard = layout.shard_for("web-1")
    assert [s.seq for s in await stream_samples(fake_redis, layout, shard)] == [1, 2]


async def test_single_bad_sample_raises_codec_error(
        fake_redis: Any) -> None:
    """publish() of one unencodable sample raises CodecError and sends nothing."""
    publisher = Publisher(fake_redis)
    with pytest.raises(CodecError):
        await publisher.publish(bad_sample())
    assert await fake_redis.dbsize() == 0
    assert await publisher.publish_batch([bad_sample()]) == [""]
    assert await publisher.publish_batch([]) == []


async def test_backend_unavailable_is_redacted_with_cause() -> None:
    """A closed port gives BackendUnavailable whose message hides the password."""
    client = connect(f"redis://hub:T0p-Secret@127.0.0.1:{free_port()}/0", retries=0)
    publisher = Publisher(client)
    try:
        with pytest.raises(BackendUnavailable) as info:
            await publisher.publish_batch([sample()])
    finally:
        await client.aclose()
    assert "T0p-Secret" not in str(info.value)
    assert info.value.__cause__ is not None
    assert publisher.backend_errors_total == 1


async def test_layout_mismatch_stops_the_publisher(fake_redis: Any) -> None:
    """A publisher configured with another shard count than the hub's is refused."""
    await Publisher(fake_redis, KeyLayout(shards=16)).publish(sample())
    with pytest.raises(LayoutMismatch):
        await Publisher(fake_redis, KeyLayout(shards=8)).publish(sample())


async def test_wrongtype_is_a_layout_mismatch(real_redis: Any) -> None:
    """A foreign key of another type in the way gives LayoutMismatch, not a crash."""
    layout = KeyLayout()
    await real_redis.set(layout.stream_key(layout.shard_for("web-1")), b"not a stream")
    with pytest.raises(LayoutMismatch):
        await Publisher(real_redis, layout).publish(sample())
