"""The cache readers: latest samples by topic and the topics in the node indexes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hub.errors import BackendUnavailable, ValidationError
from hub.keys import KeyLayout
from hub.latest import latest, list_topics
from hub.publisher import Publisher
from hub.redis_url import connect
from hub.sample import Sample
from tests.redis_server import RedisServer, free_port

LAYOUT = KeyLayout()


def sample(node: str, kind: str = "system", seq: int = 0) -> Sample:
    return Sample.build(node, kind, {"cpu_percent": float(seq)}, seq=seq, epoch=1,
                        ts=time.time())


@pytest.fixture
async def real_redis(redis_server: RedisServer) -> AsyncIterator[Any]:
    client = connect(redis_server.url)
    yield client
    await client.aclose()


async def test_latest_returns_newest_in_asked_order(fake_redis: Any) -> None:
    """latest() gives each topic's newest sample, in the order asked, skipping unknown ones."""
    publisher = Publisher(fake_redis)
    await publisher.publish_batch([sample(f"n{i}", seq=s) for s in range(3) for i in range(10)])
    await publisher.publish(sample("n3", "app", seq=9))
    got = await latest(fake_redis, LAYOUT, ["n5/system", "n3/app", "ghost/system", "n1/system"])
    assert [(s.topic, s.seq) for s in got] == [("n5/system", 2), ("n3/app", 9), ("n1/system", 2)]
    assert await latest(fake_redis, LAYOUT, []) == []


async def test_latest_skips_malformed_and_mismatched(
        fake_redis: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Garbage, or a sample of another topic under a latest key, is logged and left out."""
    publisher = Publisher(fake_redis)
    await publisher.publish_batch([sample("a"), sample("b")])
    await fake_redis.set(LAYOUT.latest_key("garbage", "system"), b"\xc1 not msgpack")
    await fake_redis.set(LAYOUT.latest_key("liar", "system"),
                         await fake_redis.get(LAYOUT.latest_key("a", "system")))
    got = await latest(fake_redis, LAYOUT, ["a/system", "garbage/system", "liar/system",
                                            "b/system"])
    assert [s.topic for s in got] == ["a/system", "b/system"]
    assert LAYOUT.latest_key("garbage", "system") in caplog.text
    assert LAYOUT.latest_key("liar", "system") in caplog.text


async def test_latest_validates_topics(fake_redis: Any) -> None:
    """A topic that is not node/kind is a ValidationError."""
    with pytest.raises(ValidationError):
        await latest(fake_redis, LAYOUT, ["web-1/*"])


async def test_expired_topics_drop_out(real_redis: Any) -> None:
    """A topic whose latest key's TTL ran out is no longer returned."""
    await Publisher(real_redis, latest_ttl_s=0.2).publish(sample("short"))
    await Publisher(real_redis).publish(sample("long"))
    assert len(await latest(real_redis, LAYOUT, ["short/system", "long/system"])) == 2
    deadline = time.monotonic() + 5
    while await real_redis.exists(LAYOUT.latest_key("short", "system")):
        assert time.monotonic() < deadline, "the key did not expire"
        await asyncio.sleep(0.05)
    got = await latest(real_redis, LAYOUT, ["short/system", "long/system"])
    assert [s.topic for s in got] == ["long/system"]


async def test_list_topics_across_shards(fake_redis: Any) -> None:
    """list_topics returns every topic of every shard, sorted and unique."""
    publisher = Publisher(fake_redis)
    await publisher.publish_batch([sample(f"n{i}", kind) for i in range(30)
                                   for kind in ("system", "app")])
    await publisher.publish(sample("n0"))
    expected = sorted(f"n{i}/{kind}" for i in range(30) for kind in ("system", "app"))
    assert await list_topics(fake_redis, LAYOUT) == expected


async def test_list_topics_max_age(fake_redis: Any) -> None:
    """With max_age_s, topics last seen longer ago are left out."""
    await Publisher(fake_redis).publish(sample("fresh"))
    stale_key = LAYOUT.topics_key(LAYOUT.shard_for("stale"))
    await fake_redis.zadd(stale_key, {"stale/system": time.time() - 600})
    assert await list_topics(fake_redis, LAYOUT) == ["fresh/system", "stale/system"]
    assert await list_topics(fake_redis, LAYOUT, max_age_s=60) == ["fresh/system"]


async def test_reads_need_no_write_permission(own_redis_server: RedisServer) -> None:
    """latest() and list_topics() work for an ACL user that may only read the hub's keys."""
    client = connect(own_redis_server.url)
    await Publisher(client).publish(sample("web-1"))
    await client.aclose()
    own_redis_server.cli("ACL", "SETUSER", "gw", "on", ">gw-pass", "~mh:*", "-@all", "+@read",
                         "+ping", "+time", "+xread")
    reader = connect(f"redis://gw:gw-pass@127.0.0.1:{own_redis_server.port}/0")
    try:
        assert [s.topic for s in await latest(reader, LAYOUT, ["web-1/system"])] == [
            "web-1/system"]
        assert await list_topics(reader, LAYOUT, max_age_s=60) == ["web-1/system"]
    finally:
        await reader.aclose()


async def test_backend_errors_are_translated() -> None:
    """A closed port gives BackendUnavailable from both readers."""
    client = connect(f"redis://:pw-xyz@127.0.0.1:{free_port()}/0", retries=0)
    try:
        with pytest.raises(BackendUnavailable):
            await latest(client, LAYOUT, ["a/system"])
        with pytest.raises(BackendUnavailable) as info:
            await list_topics(client, LAYOUT)
        assert "pw-xyz" not in str(info.value)
    finally:
        await client.aclose()
