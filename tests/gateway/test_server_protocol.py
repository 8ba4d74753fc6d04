"""The gateway server speaks PROTOCOL.md: real redis-server, in-process gateway, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.gateway.gateway_client import (
    Client,
    TestPublisher,
    assert_contiguous,
    inprocess_gateway,
    seqs_by_topic,
    wait_until,
    ws_url,
)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis_server


async def test_welcome_subscribe_snapshot_then_updates(redis_server: RedisServer) -> None:
    """A client gets welcome, the ack, a snapshot of each cached topic, then every update."""
    pub = TestPublisher(redis_server.url)
    async with inprocess_gateway(redis_server.url) as gw:
        await pub.publish("web-1")
        await pub.publish("web-2")
        await pub.publish("db-1")
        await wait_until(lambda: gw.fanout.cache.fresh_count() == 3, what="cache")
        async with Client.open(ws_url(gw.port)) as client:
            welcome = await client.next()
            assert welcome["type"] == "welcome"
            assert welcome["protocol"] == 1
            assert welcome["gateway"] == "gw-test"
            assert abs(welcome["server_time"] - time.time()) < 5
            assert welcome["heartbeat_s"] == 20
            rid = await client.request("subscribe", topics=["web-*/system"])
            ack = await client.next()
            assert ack == {"type": "ack", "id": rid, "topics": ["web-*/system"], "throttle_ms": 0}
            snapshots = [await client.next(), await client.next()]
            assert {(m["type"], m["node"], m["seq"]) for m in snapshots} == {
                ("snapshot", "web-1", 1), ("snapshot", "web-2", 1)}
            assert set(snapshots[0]) == {"type", "node", "kind", "ts", "seq", "epoch", "values"}
            for _ in range(3):
                await pub.publish("web-1")
                await pub.publish("db-1")
            updates = await client.updates_until(lambda got: len(got) == 3)
            assert [(m["node"], m["seq"]) for m in updates] == [("web-1", 2), ("web-1", 3),
                                                                 ("web-1", 4)]
            assert all(isinstance(m["cursor"], str) and m["epoch"] == 7 for m in updates)
            assert updates[0]["values"] == {"v": 2.0}
    await pub.aclose()


async def test_msgpack_subprotocol_carries_the_same_messages(redis_server: RedisServer) -> None:
    """mh.v1.msgpack: binary frames holding the same maps as the JSON ones."""
    pub = TestPublisher(redis_server.url)
    async with inprocess_gateway(redis_server.url) as gw:
        async with connect(ws_url(gw.port), subprotocols=["mh.v1.msgpack"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "mh.v1.msgpack"
            welcome = await ws.recv()
            assert isinstance(welcome, bytes)
            assert msgpack.unpackb(welcome)["type"] == "welcome"
            await ws.send(msgpack.packb({"op": "subscribe", "id": 5, "topics": ["*"]}))
            assert msgpack.unpackb(await ws.recv()) == {
                "type": "ack", "id": 5, "topics": ["*"], "throttle_ms": 0}
            sample = await pub.publish("n1", values={"load": 1.5})
            frame = await asyncio.wait_for(ws.recv(), 5)
            update = msgpack.unpackb(frame)
            assert update["type"] == "update"
            assert update["values"] == {"load": 1.5}
            assert update["seq"] == sample.seq
    await pub.aclose()


async def test_subprotocol_negotiation(redis_server: RedisServer) -> None:
    """No subprotocol means JSON; the first one we speak wins; only others: no header."""
    async with inprocess_gateway(redis_server.url) as gw:
        async with connect(ws_url(gw.port)) as ws:
            assert ws.subprotocol is None
            assert json.loads(await ws.recv())["type"] == "welcome"
        offered = ["x.other", "mh.v1.json", "mh.v1.msgpack"]
        async with connect(ws_url(gw.port), subprotocols=offered) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol == "mh.v1.json"
        async with connect(ws_url(gw.port), subprotocols=["x.other"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol is None


async def test_unsubscribe_stops_updates_before_its_ack(redis_server: RedisServer) -> None:
    """After the unsubscribe ack, no update of the dropped topics arrives."""
    pub = TestPublisher(redis_server.url)
    async with inprocess_gateway(redis_server.url) as gw, Client.open(ws_url(gw.port)) as client:
        await client.expect("welcome")
        await client.answer(await client.request("subscribe", topics=["a/system", "b/system"],
                                                 snapshot=False))
        await pub.publish("a")
        await pub.publish("b")
        await client.updates_until(lambda got: len(got) == 2)
        rid = await client.request("unsubscribe", topics=["a/system", "never/held"])
        assert await client.answer(rid) == {"type": "ack", "id": rid,
                                            "topics": ["a/system", "never/held"]}
        for _ in range(3):
            await pub.publish("a")
            await pub.publish("b")
        updates = await client.updates_until(lambda got: len(got) == 3)
        assert {m["node"] for m in updates} == {"b"}
        assert len(gw.fanout.index) == 1
    await pub.aclose()


async def test_overlapping_patterns_deliver_each_sample_once(redis_server: RedisServer) -> None:
    """Two patterns matching one topic give one update per sample (no duplicate seq)."""
    pub = TestPublisher(redis_server.url)
    async with inprocess_gateway(redis_server.url) as gw, Client.open(ws_url(gw.port)) as client:
        await client.expect("welcome")
        await client.answer(await client.request("subscribe", topics=["*", "n/*", "n/system"]))
        for _ in range(5):
            await pub.publish("n")
        updates = await client.updates_until(lambda got: len(got) == 5)
        assert_contiguous(seqs_by_topic(updates)["n/system"])
        rid = await client.request("ping")
        assert (await client.answer(rid))["type"] == "pong"
        assert not client.inbox
    await pub.aclose()


async def test_history_ping_and_auth(redis_server: RedisServer) -> None:
    """history returns ascending points capped by max_points; ping gets pong; auth is acked."""
    pub = TestPublisher(redis_server.url)
    since = time.time() - 1
    for _ in range(20):
        await pub.publish("h1")
    async with inprocess_gateway(redis_server.url) as gw, \
            Client.open(ws_url(gw.port, "?token=secret")) as client:
        await client.expect("welcome")
        rid = await client.request("history", topic="h1/system", since=since)
        answer = await client.answer(rid)
        assert answer["type"] == "history"
        assert (answer["node"], answer["kind"]) == ("h1", "system")
        points = answer["points"]
        assert [p[1]["v"] for p in points] == [float(i) for i in range(1, 21)]
        assert [p[0] for p in points] == sorted(p[0] for p in points)
        rid = await client.request("history", topic="h1/system", since=since, max_points=5)
        thinned = (await client.answer(rid))["points"]
        assert len(thinned) == 5
        assert thinned[0][1]["v"] == 1.0
        assert thinned[-1][1]["v"] == 20.0
        rid = await client.request("history", topic="h1/*", since=since)
        assert (await client.answer(rid))["code"] == "invalid_topic"
        rid = await client.request("ping")
        pong = await client.answer(rid)
        assert pong["type"] == "pong"
        assert abs(pong["server_time"] - time.time()) < 5
        rid = await client.request("auth", token="t0ken")
        assert await client.answer(rid) == {"type": "ack", "id": rid}
        session = next(iter(gw.sessions.values()))
        assert session.token_source == "auth"
    await pub.aclose()


MALFORMED: list[tuple[str | bytes, str]] = [
    ("not json at all", "bad_request"),
    ("[1, 2, 3]", "bad_request"),
    ('"just a string"', "bad_request"),
    ("{}", "unknown_op"),
    ('{"op": 42}', "unknown_op"),
    ('{"op": "explode", "id": 1}', "unknown_op"),
    ('{"op": "ping", "id": [1]}', "bad_request"),
    ('{"op": "ping", "id": 9007199254740993}', "bad_request"),
    ('{"op": "subscribe", "id": 1}', "bad_request"),
    ('{"op": "subscribe", "id": 1, "topics": []}', "bad_request"),
    ('{"op": "subscribe", "id": 1, "topics": "*"}', "bad_request"),
    ('{"op": "subscribe", "id": 1, "topics": ["no-slash"]}', "invalid_topic"),
    ('{"op": "subscribe", "id": 1, "topics": ["a/B"]}', "invalid_topic"),
    ('{"op": "subscribe", "id": 1, "topics": ["a*b/x"]}', "invalid_topic"),
    ('{"op": "subscribe", "id": 1, "topics": [7]}', "invalid_topic"),
    ('{"op": "subscribe", "id": 1, "topics": ["*"], "throttle_ms": -1}', "bad_request"),
    ('{"op": "subscribe", "id": 1, "topics": ["*"], "throttle_ms": "fast"}', "bad_request"),
    ('{"op": "subscribe", "id": 1, "topics": ["*"], "snapshot": "yes"}', "bad_request"),
    ('{"op": "subscribe", "id": 1, "topics": ["*"], "resume": 12}', "bad_request"),
    ('{"op": "unsubscribe", "id": 1}', "bad_request"),
    ('{"op": "history", "id": 1, "topic": "a/b"}', "bad_request"),
    ('{"op": "history", "id": 1, "topic": "a/b", "since": -5}', "bad_request"),
    ('{"op": "history", "id": 1, "topic": "a/b", "since": 10, "until": 5}', "bad_request"),
    ('{"op": "history", "id": 1, "topic": "a/b", "since": 1, "max_points": 0}', "bad_request"),
    ('{"op": "history", "id": 1, "since": 1}', "invalid_topic"),
    ('{"op": "auth", "id": 1}', "bad_request"),
    ('{"op": "auth", "id": 1, "token": ""}', "bad_request"),
    ('{"op": "ping", "id": 1, "x": NaN}', "bad_request"),
    (b"\xff\xfe binary garbage", "bad_request"),
]


async def test_every_malformed_frame_gets_an_error_and_the_connection_lives(
    redis_server: RedisServer,
) -> None:
    """Each kind of bad frame is answered with its error code; the connection stays usable."""
    async with inprocess_gateway(redis_server.url, rate=1000.0, rate_burst=1000) as gw, \
            Client.open(ws_url(gw.port)) as client:
        await client.expect("welcome")
        for frame, code in MALFORMED:
            await client.ws.send(frame)
            error = await client.next()
            assert error["type"] == "error", frame
            assert error["code"] == code, (frame, error)
            assert isinstance(error["message"], str)
            assert set(error) == {"type", "id", "code", "message"}
        rid = await client.request("ping")
        assert (await client.answer(rid))["type"] == "pong"
        assert gw.stats.errors["bad_request"] >= 10
    async with inprocess_gateway(redis_server.url) as gw:
        async with connect(ws_url(gw.port), subprotocols=["mh.v1.msgpack"]) as ws:  # type: ignore[list-item]
            await ws.recv()
            for frame in ['{"op": "ping"}', b"\xc1", msgpack.packb([1, 2])]:
                await ws.send(frame)
                assert msgpack.unpackb(await ws.recv())["code"] == "bad_request"
            await ws.send(msgpack.packb({"op": "ping", "id": "abc"}))
            assert msgpack.unpackb(await ws.recv())["type"] == "pong"


async def test_error_echoes_the_request_id(redis_server: RedisServer) -> None:
    """An error answering a readable request carries its id."""
    async with inprocess_gateway(redis_server.url) as gw, Client.open(ws_url(gw.port)) as client:
        await client.expect("welcome")
        await client.send({"op": "subscribe", "id": "req-7", "topics": ["bad topic"]})
        error = await client.next()
        assert (error["id"], error["code"]) == ("req-7", "invalid_topic")


async def test_max_connections_closes_with_1013(redis_server: RedisServer) -> None:
    """One connection over --max-connections is closed with 1013."""
    async with inprocess_gateway(redis_server.url, max_connections=2) as gw:
        async with Client.open(ws_url(gw.port)) as c1, Client.open(ws_url(gw.port)) as c2:
            await c1.expect("welcome")
            await c2.expect("welcome")
            async with Client.open(ws_url(gw.port)) as c3:
                assert await c3.close_code() == 1013
                assert c3.ws.protocol.close_rcvd is not None
                assert c3.ws.protocol.close_rcvd.reason == "gateway over capacity"
            assert gw.stats.capacity_rejects == 1
        await wait_until(lambda: len(gw.connections) == 0, what="connections released")
        async with Client.open(ws_url(gw.port)) as c4:
            assert (await c4.next())["type"] == "welcome"


async def test_too_many_subscriptions(redis_server: RedisServer) -> None:
    """Past --max-subscriptions a subscribe gets too_many_subscriptions and changes nothing."""
    async with inprocess_gateway(redis_server.url, max_subscriptions=3) as gw, \
            Client.open(ws_url(gw.port)) as client:
        await client.expect("welcome")
        rid = await client.request("subscribe", topics=["a/x", "b/x"])
        assert (await client.answer(rid))["type"] == "ack"
        rid = await client.request("subscribe", topics=["c/x", "d/x"])
        error = await client.answer(rid)
        assert error["code"] == "too_many_subscriptions"
        rid = await client.request("subscribe", topics=["a/x", "c/x"])  # a/x is held: 3 in all
        assert (await client.answer(rid))["type"] == "ack"
        rid = await client.request("subscribe", topics=["1/x", "2/x", "3/x", "4/x"])
        assert (await client.answer(rid))["code"] == "too_many_subscriptions"
        assert len(gw.fanout.index) == 3


async def test_frame_too_large_closes_with_1009(redis_server: RedisServer) -> None:
    """A frame over --max-frame-bytes closes the connection with 1009."""
    async with inprocess_gateway(redis_server.url, max_frame_bytes=2048) as gw:
        async with Client.open(ws_url(gw.port)) as client:
            await client.expect("welcome")
            await client.send({"op": "ping", "id": 1, "pad": "x" * 1500})
            assert (await client.next())["type"] == "pong"
            await client.send({"op": "ping", "id": 2, "pad": "x" * 5000})
            assert await client.close_code() == 1009
        await wait_until(lambda: len(gw.connections) == 0, what="connection released")


async def test_rate_limit_errors_then_closes_with_4008(redis_server: RedisServer) -> None:
    """Over the request rate: rate_limited errors, then close 4008 when it goes on."""
    async with inprocess_gateway(redis_server.url, rate=2.0, rate_burst=5,
                                 rate_violations=3) as gw:
        async with Client.open(ws_url(gw.port)) as client:
            await client.expect("welcome")
            for i in range(12):
                await client.send({"op": "ping", "id": i})
            answers = []
            with contextlib.suppress(ConnectionClosed):  # the close ends the loop
                while True:
                    answers.append(await client.next())
            kinds = [(m["type"], m.get("code")) for m in answers]
            assert kinds[:5] == [("pong", None)] * 5
            assert ("error", "rate_limited") in kinds
            assert client.ws.protocol.close_rcvd is not None
            assert client.ws.protocol.close_rcvd.code == 4008
        assert gw.stats.policy_closes == 1
        assert gw.stats.rate_limited >= 3


async def test_throttled_subscription_sends_newest_once_per_window(
    redis_server: RedisServer,
) -> None:
    """throttle_ms: about one update per window, each the newest, the last one not held back."""
    pub = TestPublisher(redis_server.url)
    async with inprocess_gateway(redis_server.url) as gw, Client.open(ws_url(gw.port)) as client:
        await client.expect("welcome")
        rid = await client.request("subscribe", topics=["t/system"], throttle_ms=300,
                                   snapshot=False)
        assert (await client.answer(rid))["throttle_ms"] == 300
        began = time.monotonic()
        while time.monotonic() - began < 1.5:
            await pub.publish("t")
            await asyncio.sleep(0.03)
        last = pub.seqs[("t", "system")]
        received: list[tuple[float, int]] = []

        def done(got: list[dict[str, object]]) -> bool:
            received[:] = [(time.monotonic(), int(m["seq"])) for m in got]  # type: ignore[call-overload]
            return bool(got) and got[-1]["seq"] == last

        await client.updates_until(done, timeout=2.0)
        seqs = [seq for _, seq in received]
        assert 4 <= len(seqs) <= 8, seqs
        assert seqs == sorted(seqs)
        assert all(b - a >= 3 for a, b in zip(seqs[1:], seqs[2:], strict=False)), seqs
        assert gw.stats.messages_in >= last
    await pub.aclose()


async def test_batches_carry_several_updates(redis_server: RedisServer) -> None:
    """Entries read together reach a client as one batch frame, in order."""
    pub = TestPublisher(redis_server.url)
    async with inprocess_gateway(redis_server.url) as gw, Client.open(ws_url(gw.port)) as client:
        await client.expect("welcome")
        await client.answer(await client.request("subscribe", topics=["*"]))
        samples = [pub.build("b", values={"i": i}) for i in range(30)]
        await pub.publisher.publish_batch(samples)
        updates = await client.updates_until(lambda got: len(got) == 30)
        assert [m["values"]["i"] for m in updates] == list(range(30))
        assert client.batches >= 1
    await pub.aclose()



async def test_unsubscribe_drops_an_update_held_by_the_throttle(redis_server: RedisServer) -> None:
    """An update held in a throttle window is dropped by unsubscribe: it never arrives."""
    pub = TestPublisher(redis_server.url)
    async with inprocess_gateway(redis_server.url) as gw, Client.open(ws_url(gw.port)) as client:
        await client.expect("welcome")
        await client.answer(await client.request("subscribe", topics=["t/system"],
                                                 throttle_ms=400, snapshot=False))
        await pub.publish("t")
        assert (await client.expect("update"))["seq"] == 1
        await pub.publish("t")
        await pub.publish("t")
        await wait_until(lambda: gw.stats.messages_in >= 3, what="the reader")
        session = next(iter(gw.sessions.values()))
        assert session.queue.held == 1
        rid = await client.request("unsubscribe", topics=["t/system"])
        await client.answer(rid)
        # Absence is the point: wait past the end of the window the update was held in.
        await asyncio.sleep(0.5)
        rid = await client.request("ping")
        assert (await client.next())["id"] == rid
        assert session.queue.held == 0
    await pub.aclose()
