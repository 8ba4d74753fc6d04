"""The hub on a real 3-master Redis Cluster through redis+cluster://: collectors and two
gateways as processes; delivery end to end, shard streams on every master, and a client that
moves from one gateway to the other resumes without a gap or a duplicate."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from hub.keys import KeyLayout
from hub.latest import latest
from hub.redis_url import connect
from hub.status import gather
from tests.live import (
    HubProcess,
    WsClient,
    collector,
    eventually,
    gateway,
    ready,
    simulator,
    wait_until,
)
from tests.redis_cluster import LocalCluster, redis_cluster_fixture
from tests.redis_server import free_port

LAYOUT = KeyLayout()
SIM_NODES = 24  # sim-web-1 .. : enough to put entries in every one of the 16 shards


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Three masters, no replicas, slots split by redis-cli --cluster create."""
    yield from redis_cluster_fixture(3)


@pytest.fixture(scope="module")
def hub_on_cluster(cluster: LocalCluster) -> Iterator[tuple[LocalCluster, list[int]]]:
    """Two collectors, the simulator and two gateways, all on the cluster URL (shared by the
    module's tests: starting them is most of the time)."""
    url = cluster.url
    ports = [free_port(), free_port()]
    processes: list[HubProcess] = []
    try:
        processes += [collector(url, "node-a"), collector(url, "node-b"),
                      simulator(url, "--nodes", str(SIM_NODES), "--interval", "0.2")]
        processes += [gateway(url, port, "--metrics-interval", "1") for port in ports]
        for port, proc in zip(ports, processes[-2:], strict=True):
            def up(port: int = port, proc: HubProcess = proc) -> bool:
                return ready(port) or not proc.alive()

            wait_until(up, 60, f"gateway on {port} to be ready")
            assert proc.alive(), proc.log()
        yield cluster, ports
        for proc in processes:
            assert proc.alive(), f"{proc.name} died:\n{proc.log()}"
    finally:
        for proc in processes:
            proc.close()


def test_shard_streams_spread_over_the_masters(
        hub_on_cluster: tuple[LocalCluster, list[int]]) -> None:
    """Every master holds shard streams with entries, each stream on the master of its slot,
    and together they hold all 16."""
    cluster, _ = hub_on_cluster
    owners = {shard: cluster.node_for_key(LAYOUT.stream_key(shard)).port
              for shard in range(LAYOUT.shards)}
    assert len(set(owners.values())) == 3

    def filled() -> bool:
        return all(int(node.cli("XLEN", key).strip() or 0) > 0
                   for shard, key in enumerate(LAYOUT.stream_keys())
                   for node in cluster.nodes if node.port == owners[shard])

    wait_until(filled, 30, "entries in all 16 shard streams")
    for node in cluster.nodes:
        mine = [key for shard, key in enumerate(LAYOUT.stream_keys())
                if owners[shard] == node.port]
        assert len(mine) >= 4, "the default slot split gives each master 4-6 shards"
        assert node.cli("DBSIZE").strip() != "0"
        for key in mine:
            assert int(node.cli("XLEN", key).strip()) > 0


def seqs_by_topic(messages: list[dict[str, Any]]) -> dict[str, list[tuple[int, int]]]:
    """(epoch, seq) of every update, per topic, in arrival order."""
    out: dict[str, list[tuple[int, int]]] = {}
    for m in messages:
        if m.get("type") == "update":
            out.setdefault(f"{m['node']}/{m['kind']}", []).append((m["epoch"], m["seq"]))
    return out


async def delivery_and_resume(ports: list[int], url: str) -> None:
    first, second = ports
    watched = ["node-a/system", "node-b/system", "sim-web-1/system", "sim-db-2/system"]
    async with WsClient(first) as ws:
        await ws.receive()  # welcome
        await ws.send("subscribe", topics=watched, snapshot=False)

        def enough_before(_: dict[str, Any]) -> bool:
            seen = seqs_by_topic(ws.messages)
            return all(len(seen.get(topic, [])) >= 3 for topic in watched)

        await ws.until(enough_before, 30, "3 updates of every watched topic on gateway 1")
        before = seqs_by_topic(ws.messages)
        cursor = [m for m in ws.messages if m.get("type") == "update"][-1]["cursor"]
    # While the client is away every topic moves on by a few samples, which the other
    # gateway must replay from the cursor before going live.
    redis = connect(url)
    try:
        async def moved_on() -> bool:
            now = {s.topic: s.seq for s in await latest(redis, LAYOUT, watched)}
            return all(now.get(t, 0) >= before[t][-1][1] + 3 for t in watched)

        await eventually(moved_on, 20, "every watched topic to publish 3 more samples")
    finally:
        await redis.aclose()
    async with WsClient(second) as ws2:
        await ws2.receive()
        await ws2.send("subscribe", topics=watched, snapshot=False, resume=cursor)

        def enough_after(_: dict[str, Any]) -> bool:
            seen = seqs_by_topic(ws2.messages)
            return all(len(seen.get(topic, [])) >= 5 for topic in watched)

        await ws2.until(enough_after, 30, "5 updates of every watched topic on gateway 2")
        assert not [m for m in ws2.messages if m.get("type") in ("reset", "error")], \
            ws2.messages[:5]
        after = seqs_by_topic(ws2.messages)
    for topic in watched:
        joined = before[topic] + after[topic]
        epochs = {epoch for epoch, _ in joined}
        assert len(epochs) == 1, f"{topic}: one collector run"
        numbers = [seq for _, seq in joined]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), \
            f"{topic}: gap or duplicate across gateways: {numbers}"
        assert len(after[topic]) >= 5
    # And status reads the cluster: every node, both gateways with their samples.
    redis = connect(url)
    try:
        async def both_gateways() -> bool:
            status = await gather(redis, LAYOUT, rate_window_s=0)
            return {g.gateway for g in status.gateways} >= {f"gw-{p}" for p in ports}

        deadline = asyncio.get_running_loop().time() + 20
        while not await both_gateways():
            assert asyncio.get_running_loop().time() < deadline, "gateway samples in status"
            await asyncio.sleep(0.2)
        status = await gather(redis, LAYOUT, rate_window_s=0)
        assert {"node-a", "node-b", "sim-web-1"} <= {n.node for n in status.nodes}
        assert sum(s.length for s in status.streams) > 0
        assert status.server == {"mode": "cluster"}
    finally:
        await redis.aclose()


def test_delivery_and_resume_across_gateways(
        hub_on_cluster: tuple[LocalCluster, list[int]]) -> None:
    """Updates of collectors and simulated nodes reach a client of gateway 1; reconnecting to
    gateway 2 with the last cursor continues every topic's seq with no gap, no duplicate;
    status reads the cluster (nodes, both gateways' own samples)."""
    cluster, ports = hub_on_cluster
    asyncio.run(delivery_and_resume(ports, cluster.url))
