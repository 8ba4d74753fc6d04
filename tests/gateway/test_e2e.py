"""End to end: two collectors and two gateways as separate processes on a private Redis, with
real WebSocket clients: snapshots and updates from both nodes, throttling, resume across
gateways (after a clean disconnect and after kill -9), and a Redis restart under a client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from websockets.exceptions import ConnectionClosed

from tests.gateway.gateway_client import (
    Client,
    CollectorProcess,
    GatewayProcess,
    Message,
    assert_contiguous,
    http_get,
    seqs_by_topic,
    wait_until,
)
from tests.redis_server import RedisServer, require_redis_server

pytestmark = pytest.mark.redis_server

NODES = ("n1", "n2")
TOPICS = ("n1/system", "n2/system")


class Hub:
    """Redis, two collectors and gateway B, shared by the tests of this module."""

    def __init__(self) -> None:
        require_redis_server()
        self.redis = RedisServer()
        self.redis.start()
        self.collectors = [CollectorProcess(self.redis.url, node) for node in NODES]
        self.gateway_b = GatewayProcess(self.redis.url, gateway_id="gw-b")

    def close(self) -> None:
        for process in (*self.collectors, self.gateway_b):
            process.kill()
        self.redis.stop()

    @contextlib.asynccontextmanager
    async def gateway_a(self) -> AsyncIterator[GatewayProcess]:
        gateway = GatewayProcess(self.redis.url, gateway_id="gw-a")
        try:
            await gateway.wait_ready()
            yield gateway
        finally:
            gateway.kill()


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    hub = Hub()
    try:
        yield hub
    finally:
        hub.close()


@pytest.fixture
async def live_hub(hub: Hub) -> Hub:
    """The hub with gateway B ready and samples of both nodes flowing through it."""
    for collector in hub.collectors:
        assert collector.proc.poll() is None, collector.stderr()
    await hub.gateway_b.wait_ready()
    async with Client.open(hub.gateway_b.url) as client:
        await client.expect("welcome")
        await client.answer(await client.request("subscribe", topics=list(TOPICS),
                                                 snapshot=False))
        await client.updates_until(
            lambda got: {f"{m['node']}/{m['kind']}" for m in got} == set(TOPICS), timeout=20)
    return hub


async def read_updates(client: Client, count: int, timeout: float = 10.0) -> list[Message]:
    return await client.updates_until(lambda got: len(got) >= count, timeout=timeout)


def assert_no_gap(messages: list[Message]) -> None:
    """Per topic, seqs go up by one (one collector run each: one epoch)."""
    by_topic = seqs_by_topic(messages)
    assert set(by_topic) == set(TOPICS), by_topic.keys()
    for topic, seqs in by_topic.items():
        assert_contiguous(seqs, topic)
    assert len({m["epoch"] for m in messages if m["node"] == "n1"}) == 1


async def resume_until_caught_up(url: str, cursor: str, newer_than: dict[str, int],
                                 extra: int = 3) -> list[Message]:
    """Resume on ``url``; collect until every topic is ``extra`` samples past ``newer_than``."""
    async with Client.open(url) as client:
        await client.expect("welcome")
        rid = await client.request("subscribe", topics=list(TOPICS), resume=cursor)
        assert (await client.answer(rid))["type"] == "ack"

        def caught_up(got: list[Message]) -> bool:
            seqs = seqs_by_topic(m for m in got if m["type"] == "update")
            return all(seqs.get(t, [0])[-1] >= newer_than[t] + extra for t in TOPICS)

        got = await client.updates_until(caught_up, timeout=20,
                                         types=("update", "reset", "snapshot"))
    assert all(m["type"] == "update" for m in got), [m for m in got if m["type"] != "update"]
    return got


async def wait_for_samples(url: str, past: dict[str, int], extra: int) -> None:
    """Wait (watching through another client) until each node published ``extra`` samples
    past ``past``: what a disconnected client then misses."""
    async with Client.open(url) as watcher:
        await watcher.expect("welcome")
        await watcher.answer(await watcher.request("subscribe", topics=list(TOPICS),
                                                   snapshot=False))
        await watcher.updates_until(lambda got: all(
            seqs_by_topic(got).get(t, [0])[-1] >= past[t] + extra for t in TOPICS))


def newest(messages: list[Message]) -> dict[str, int]:
    return {topic: seqs[-1] for topic, seqs in seqs_by_topic(messages).items()}


async def test_client_on_a_gets_snapshots_and_updates_from_both_nodes(live_hub: Hub) -> None:
    """A client of gateway A gets a snapshot of each node, then live updates of both."""
    async with live_hub.gateway_a() as gateway_a, Client.open(gateway_a.url) as client:
        welcome = await client.next()
        assert (welcome["type"], welcome["gateway"]) == ("welcome", "gw-a")
        rid = await client.request("subscribe", topics=["*/system"])
        assert (await client.next())["id"] == rid
        snapshots = [await client.next(), await client.next()]
        assert {(m["type"], m["node"]) for m in snapshots} == {("snapshot", "n1"),
                                                                ("snapshot", "n2")}
        updates = await client.updates_until(
            lambda got: all(sum(m["node"] == n for m in got) >= 3 for n in NODES))
        assert {m["node"] for m in updates} == set(NODES)
        by_topic = seqs_by_topic(updates)
        for topic, seqs in by_topic.items():
            assert_contiguous(seqs, topic)
        first_n1 = next(m for m in updates if m["node"] == "n1")
        snap_n1 = next(m for m in snapshots if m["node"] == "n1")
        assert first_n1["seq"] > snap_n1["seq"]
        assert 0 <= first_n1["values"]["cpu_utilization_ratio"] <= 1


async def test_throttled_subscription_gets_the_newest_once_per_window(live_hub: Hub) -> None:
    """throttle_ms=1000 on 5 samples/s: about one update a second, each the newest."""
    async with Client.open(live_hub.gateway_b.url) as throttled, \
            Client.open(live_hub.gateway_b.url) as full:
        for client in (throttled, full):
            await client.expect("welcome")
        await full.answer(await full.request("subscribe", topics=["n1/system"], snapshot=False))
        await throttled.answer(await throttled.request(
            "subscribe", topics=["n1/system"], throttle_ms=1000, snapshot=False))
        latest_full = 0

        async def follow_full() -> None:
            nonlocal latest_full
            while True:
                latest_full = (await full.expect("update", timeout=5))["seq"]

        follower = asyncio.ensure_future(follow_full())
        try:
            began = time.monotonic()
            arrivals: list[tuple[float, int, int]] = []
            while time.monotonic() - began < 3.6:
                message = await throttled.expect("update", timeout=3)
                arrivals.append((time.monotonic(), message["seq"], latest_full))
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
    assert 3 <= len(arrivals) <= 5, arrivals
    gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert all(gap >= 0.85 for gap in gaps), gaps
    steps = [b[1] - a[1] for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert all(3 <= step <= 8 for step in steps), steps
    # Each throttled update is (about) the newest the unthrottled client had seen.
    assert all(seq >= seen - 1 for _, seq, seen in arrivals[1:]), arrivals


async def test_disconnect_from_a_and_resume_on_b_without_gap(live_hub: Hub) -> None:
    """Updates from A, a clean disconnect, a resume on B with the cursor: no gap, no dup."""
    async with live_hub.gateway_a() as gateway_a:
        async with Client.open(gateway_a.url) as client:
            await client.expect("welcome")
            await client.answer(await client.request("subscribe", topics=list(TOPICS),
                                                     snapshot=False))
            before = await read_updates(client, 8)
        await wait_for_samples(live_hub.gateway_b.url, newest(before), 3)
        after = await resume_until_caught_up(live_hub.gateway_b.url, before[-1]["cursor"],
                                             newest(before))
    assert_no_gap(before + after)


async def test_kill_9_of_gateway_a_then_resume_on_b_without_gap(live_hub: Hub) -> None:
    """A client of A loses its gateway to kill -9 mid-stream; resuming on B loses nothing."""
    async with live_hub.gateway_a() as gateway_a, Client.open(gateway_a.url) as client:
        await client.expect("welcome")
        await client.answer(await client.request("subscribe", topics=list(TOPICS),
                                                 snapshot=False))
        before = await read_updates(client, 6)
        gateway_a.kill()
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while True:  # whatever A had written before dying still counts
                message = await client.next(timeout=5)
                if message["type"] == "update":
                    before.append(message)
    after = await resume_until_caught_up(live_hub.gateway_b.url, before[-1]["cursor"],
                                         newest(before))
    assert_no_gap(before + after)


async def test_redis_restart_under_a_connected_client_loses_nothing(live_hub: Hub) -> None:
    """Redis stops and comes back: B says 503 meanwhile, its client stays connected and then
    gets every sample the collectors buffered, with no gap."""
    gateway_b = live_hub.gateway_b
    async with Client.open(gateway_b.url) as client:
        await client.expect("welcome")
        await client.answer(await client.request("subscribe", topics=list(TOPICS),
                                                 snapshot=False))
        before = await read_updates(client, 6)
        live_hub.redis.stop()

        async def readyz(code: int) -> bool:
            return (await asyncio.to_thread(http_get, gateway_b.port, "/readyz"))[0] == code

        await wait_until(lambda: readyz(503), what="B's /readyz 503")
        outage = newest(before)
        # The outage itself is under test: half a second of samples the collectors must
        # buffer and the gateway must deliver once Redis is back.
        await asyncio.sleep(0.5)
        live_hub.redis.start()
        await wait_until(lambda: readyz(200), timeout=15, what="B's /readyz 200")

        def caught_up(got: list[Message]) -> bool:
            seqs = seqs_by_topic(got)
            return all(seqs.get(t, [0])[-1] >= outage[t] + 6 for t in TOPICS)

        after = await client.updates_until(caught_up, timeout=25)
    assert_no_gap(before + after)
