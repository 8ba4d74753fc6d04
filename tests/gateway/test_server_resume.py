"""Resume with a cursor: from the in-memory window, from Redis, on another gateway, and the
reset answers, against a real redis-server and in-process gateways."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from gateway.cursor import encode_cursor
from hub.keys import KeyLayout
from tests.gateway.gateway_client import (
    Client,
    Message,
    TestPublisher,
    assert_contiguous,
    inprocess_gateway,
    seqs_by_topic,
    wait_until,
    ws_url,
)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis_server


async def _subscribe_and_read(url: str, pub: TestPublisher, node: str, count: int,
                              topics: list[str] | None = None) -> list[Message]:
    """Subscribe, publish ``count`` samples of ``node``, return the updates received."""
    async with Client.open(url) as client:
        await client.expect("welcome")
        await client.answer(await client.request("subscribe", topics=topics or ["*/system"],
                                                 snapshot=False))
        for _ in range(count):
            await pub.publish(node)
        return await client.updates_until(
            lambda got: sum(m["node"] == node for m in got) >= count)


async def _resume(
    url: str, cursor: str, until_seq: int, node: str = "n1", topics: list[str] | None = None,
    **fields: object,
) -> tuple[Message, list[Message]]:
    """Resume with ``cursor``; the ack and every message up to ``node``'s ``until_seq``."""
    async with Client.open(url) as client:
        await client.expect("welcome")
        rid = await client.request("subscribe", topics=topics or ["*/system"], resume=cursor,
                                   **fields)
        ack = await client.answer(rid)
        got = await client.updates_until(
            lambda got: any(m.get("node") == node and m.get("seq") == until_seq for m in got),
            types=("update", "snapshot", "reset"))
        return ack, got


async def test_resume_from_memory_replays_the_gap_then_goes_live(
    redis_server: RedisServer,
) -> None:
    """A resume inside the window replays exactly what was missed, from memory, then live."""
    pub = TestPublisher(redis_server.url)
    async with inprocess_gateway(redis_server.url) as gw:
        first = await _subscribe_and_read(ws_url(gw.port), pub, "n1", 5)
        cursor = first[-1]["cursor"]
        for _ in range(5):
            await pub.publish("n1")
        await wait_until(lambda: gw.stats.messages_in >= 10, what="the reader")
        async with Client.open(ws_url(gw.port)) as client:
            await client.expect("welcome")
            rid = await client.request("subscribe", topics=["*/system"], resume=cursor)
            assert (await client.answer(rid))["type"] == "ack"
            replay = await client.updates_until(lambda got: len(got) == 5,
                                                types=("update", "snapshot", "reset"))
            assert all(m["type"] == "update" for m in replay)
            for _ in range(2):
                await pub.publish("n1")
            live = await client.updates_until(lambda got: len(got) == 2)
        seqs = [m["seq"] for m in first + replay + live]
        assert seqs == list(range(1, 13))
        assert gw.stats.resumes["memory"] == 1
        assert gw.stats.resume_redis_commands == 0
    await pub.aclose()


async def test_resume_older_than_the_window_reads_redis(redis_server: RedisServer) -> None:
    """A cursor older than the window is served from Redis: one XRANGE for one node's shard."""
    pub = TestPublisher(redis_server.url)
    async with inprocess_gateway(redis_server.url, replay_window=3, replay_limit=50) as gw:
        first = await _subscribe_and_read(ws_url(gw.port), pub, "n1", 3)
        for _ in range(12):
            await pub.publish("n1")
            await pub.publish("other")
        await wait_until(lambda: gw.stats.messages_in >= 27, what="the reader")
        ack, got = await _resume(ws_url(gw.port), first[-1]["cursor"], 15,
                                 topics=["n1/system"])
        assert ack["type"] == "ack"
        assert all(m["type"] == "update" and m["node"] == "n1" for m in got)
        assert_contiguous([m["seq"] for m in first + got], "n1")
        assert gw.stats.resumes["redis"] == 1
        assert gw.stats.resume_redis_commands == 1
        # A wildcard resume may need every shard; still one round trip of <= 16 commands.
        ack, got = await _resume(ws_url(gw.port), first[-1]["cursor"], 15)
        assert_contiguous(seqs_by_topic(first + got)["n1/system"], "n1 wildcard")
        assert 1 < gw.stats.resume_redis_commands <= 1 + 16
    await pub.aclose()


async def test_dropping_mid_replay_and_resuming_again_loses_nothing(
    redis_server: RedisServer,
) -> None:
    """A client that drops in the middle of a replay resumes from its last cursor, no gap."""
    pub = TestPublisher(redis_server.url)
    async with inprocess_gateway(redis_server.url) as gw:
        first = await _subscribe_and_read(ws_url(gw.port), pub, "n1", 2)
        for _ in range(20):
            await pub.publish("n1")
            await pub.publish("n2")
        await wait_until(lambda: gw.stats.messages_in >= 42, what="the reader")
        async with Client.open(ws_url(gw.port)) as client:
            await client.expect("welcome")
            await client.request("subscribe", topics=["*/system"], resume=first[-1]["cursor"])
            await client.expect("ack")
            partial = await client.updates_until(lambda got: len(got) == 13)
        _, rest = await _resume(ws_url(gw.port), partial[-1]["cursor"], 20, node="n2")
        seqs = seqs_by_topic(first + partial + rest)
        assert seqs["n1/system"] == list(range(1, 23))
        assert seqs["n2/system"] == list(range(1, 21))
    await pub.aclose()


async def test_resume_on_another_gateway(redis_server: RedisServer) -> None:
    """A cursor from gateway A resumes on gateway B with no gap and no duplicate."""
    pub = TestPublisher(redis_server.url)
    async with inprocess_gateway(redis_server.url, gateway_id="gw-a") as gw_a, \
            inprocess_gateway(redis_server.url, gateway_id="gw-b") as gw_b:
        first = await _subscribe_and_read(ws_url(gw_a.port), pub, "n1", 4)
        for _ in range(6):
            await pub.publish("n1")
        await wait_until(lambda: gw_b.stats.messages_in >= 10, what="gateway B's reader")
        _, got = await _resume(ws_url(gw_b.port), first[-1]["cursor"], 10)
        assert [m["seq"] for m in first + got] == list(range(1, 11))
    await pub.aclose()


async def test_invalid_cursor_gets_reset_and_snapshots(redis_server: RedisServer) -> None:
    """A garbled cursor: ack, reset cursor_invalid, then snapshots (even with snapshot false)."""
    pub = TestPublisher(redis_server.url)
    async with inprocess_gateway(redis_server.url) as gw:
        await pub.publish("n1")
        await wait_until(lambda: gw.fanout.cache.fresh_count() == 1, what="the cache")
        async with Client.open(ws_url(gw.port)) as client:
            await client.expect("welcome")
            rid = await client.request("subscribe", topics=["*/system"], resume="garbage!",
                                       snapshot=False)
            assert (await client.next())["id"] == rid
            assert await client.next() == {"type": "reset", "reason": "cursor_invalid"}
            snapshot = await client.next()
            assert (snapshot["type"], snapshot["node"], snapshot["seq"]) == ("snapshot", "n1", 1)
        assert gw.stats.resets == {"cursor_invalid": 1}
    await pub.aclose()


async def test_expired_cursor_gets_reset(redis_server: RedisServer) -> None:
    """A cursor whose entry was trimmed from the streams gets reset cursor_expired."""
    pub = TestPublisher(redis_server.url)
    async with inprocess_gateway(redis_server.url, replay_window=2) as gw:
        first = await _subscribe_and_read(ws_url(gw.port), pub, "n1", 2)
        for _ in range(6):
            await pub.publish("n1")
        await wait_until(lambda: gw.stats.messages_in >= 8, what="the reader")
        client = aioredis.Redis.from_url(redis_server.url)
        for key in KeyLayout().stream_keys():
            await client.xtrim(key, maxlen=1, approximate=False)
        await client.aclose()
        _, got = await _resume(ws_url(gw.port), first[0]["cursor"], 8)
        assert got[0] == {"type": "reset", "reason": "cursor_expired"}
        assert got[1]["type"] == "snapshot"
        assert gw.stats.resets == {"cursor_expired": 1}
    await pub.aclose()


async def test_cursor_ahead_of_every_stream_gets_reset_unknown(redis_server: RedisServer) -> None:
    """A cursor no stream here has reached (Redis was reset): wait, then reset cursor_unknown."""
    async with inprocess_gateway(redis_server.url, resume_wait=0.3) as gw, \
            Client.open(ws_url(gw.port)) as client:
        await client.expect("welcome")
        future = int(time.time() * 1000) + 10**7
        cursor = encode_cursor([(future, 0)] * 16)
        began = time.monotonic()
        await client.request("subscribe", topics=["*"], resume=cursor)
        await client.expect("ack")
        assert await client.next() == {"type": "reset", "reason": "cursor_unknown"}
        assert time.monotonic() - began >= 0.25
        wrong_shards = encode_cursor([(1, 0)] * 4)
        await client.request("subscribe", topics=["*"], resume=wrong_shards)
        await client.expect("ack")
        assert await client.next() == {"type": "reset", "reason": "cursor_invalid"}


async def test_replay_beyond_the_limit_gets_reset(redis_server: RedisServer) -> None:
    """More missed updates than --replay-limit: reset replay_limit and snapshots."""
    pub = TestPublisher(redis_server.url)
    async with inprocess_gateway(redis_server.url, replay_limit=5) as gw:
        first = await _subscribe_and_read(ws_url(gw.port), pub, "n1", 1)
        for _ in range(10):
            await pub.publish("n1")
        await wait_until(lambda: gw.stats.messages_in >= 11, what="the reader")
        _, got = await _resume(ws_url(gw.port), first[-1]["cursor"], 11)
        assert got[0] == {"type": "reset", "reason": "replay_limit"}
        assert (got[1]["type"], got[1]["seq"]) == ("snapshot", 11)
    await pub.aclose()


async def test_a_resume_storm_costs_redis_nothing(redis_server: RedisServer) -> None:
    """100 clients resuming at once inside the window: all served, no Redis command."""
    pub = TestPublisher(redis_server.url)
    async with inprocess_gateway(redis_server.url) as gw:
        first = await _subscribe_and_read(ws_url(gw.port), pub, "n1", 2)
        for _ in range(3):
            await pub.publish("n1")
        await wait_until(lambda: gw.stats.messages_in >= 5, what="the reader")

        async def one() -> list[int]:
            _, got = await _resume(ws_url(gw.port), first[-1]["cursor"], 5)
            return [m["seq"] for m in got]

        results = await asyncio.gather(*(one() for _ in range(100)))
        assert all(seqs == [3, 4, 5] for seqs in results)
        assert gw.stats.resumes["memory"] == 100
        assert gw.stats.resume_redis_commands == 0
    await pub.aclose()
