"""The publisher benchmark: samples/s the Publisher writes into Redis and the StreamReader reads
back, against a raw redis-py pipeline doing only XADD of the same payloads, in the same run.

The headline figure, ``cost_ratio``, is the Publisher's cost per sample (encode, XADD with
trimming, latest key, node index) over a raw XADD's (pre-encoded payload, no trimming, no
cache, no index); the goal is at most 2x. Cases run in interleaved rounds on a flushed
database and each figure is the median over rounds. ``*_server_cpu_us`` is redis-server's own
CPU per sample, which is what limits a hub's total rate (docs/redis-layout.md); on a shared
server it includes everyone's load.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.codec import typical_system_sample
from hub.codec import SampleCodec
from hub.keys import KeyLayout
from hub.publisher import Publisher, WriteMode
from hub.reader import StreamReader
from hub.redis_url import RedisClient, connect
from hub.sample import Sample

GOAL_RATIO = 2.0
PREFIX = "mh-bench"  # the benchmark writes and deletes only keys under this prefix
NODES = 200
BATCH = 100


def make_samples(count: int) -> list[Sample]:
    """``count`` 40-field system samples spread round-robin over NODES nodes."""
    base = typical_system_sample()
    now = time.time()
    return [base._replace(node=f"node-{i % NODES:03d}", seq=i // NODES, ts=now + i / 1e6)
            for i in range(count)]


async def server_cpu_s(client: RedisClient) -> float:
    info: dict[str, Any] = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def clear(client: RedisClient, layout: KeyLayout) -> None:
    """Delete the benchmark's keys (its own prefix: nothing else in the database)."""
    batch: list[Any] = []
    async for key in client.scan_iter(match=f"{layout.prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.unlink(*batch)
            batch.clear()
    if batch:
        await client.unlink(*batch)


async def timed(client: RedisClient, layout: KeyLayout,
                run: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """Wall seconds and redis-server CPU seconds of ``run``, starting with no bench keys."""
    await clear(client, layout)
    cpu = await server_cpu_s(client)
    started = time.perf_counter()
    await run()
    elapsed = time.perf_counter() - started
    return elapsed, await server_cpu_s(client) - cpu


async def measure(client: RedisClient, count: int, rounds: int) -> dict[str, float]:
    layout = KeyLayout(prefix=PREFIX)
    samples = make_samples(count)
    codec = SampleCodec()
    payloads = [codec.encode(s) for s in samples]
    keys = [layout.stream_key(layout.shard_for(s.node)) for s in samples]
    started = time.perf_counter()
    for s in samples:
        codec.encode(s)
    encode_s = time.perf_counter() - started

    async def raw_xadd() -> None:
        for start in range(0, count, BATCH):
            pipe = client.pipeline(transaction=False)
            for index in range(start, min(start + BATCH, count)):
                pipe.xadd(keys[index], {"d": payloads[index]})
            await pipe.execute()

    def publish(mode: WriteMode) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            publisher = Publisher(client, layout, write_mode=mode)
            for start in range(0, count, BATCH):
                await publisher.publish_batch(samples[start:start + BATCH])
        return run

    read_times: list[float] = []

    async def publish_then_read() -> None:
        await publish("script")()
        reader = StreamReader(client, layout, start="0", count=1000, block_ms=100)
        started = time.perf_counter()
        got = 0
        while got < count:
            got += len(await reader.read())
        read_times.append(time.perf_counter() - started)
        await reader.aclose()

    cases: dict[str, Callable[[], Awaitable[None]]] = {
        "raw": raw_xadd, "script": publish_then_read, "commands": publish("commands"),
    }
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            elapsed, used = await timed(client, layout, run)
            if name == "script":
                elapsed -= read_times[-1]  # the read-back is timed on its own
            wall[name].append(elapsed)
            cpu[name].append(used)
    await clear(client, layout)

    def per_sample_us(values: list[float]) -> float:
        return statistics.median(values) / count * 1e6

    raw_us, script_us, commands_us = (per_sample_us(wall[n]) for n in cases)
    return {
        "raw_xadd_per_s": 1e6 / raw_us,
        "publisher_per_s": 1e6 / script_us,
        "publisher_commands_per_s": 1e6 / commands_us,
        "reader_per_s": count / statistics.median(read_times),
        "raw_xadd_us": raw_us,
        "publisher_us": script_us,
        "publisher_commands_us": commands_us,
        "encode_us": encode_s / count * 1e6,
        "raw_xadd_server_cpu_us": per_sample_us(cpu["raw"]),
        "publisher_server_cpu_us": per_sample_us(cpu["script"]),
        "publisher_commands_server_cpu_us": per_sample_us(cpu["commands"]),
        "cost_ratio": script_us / raw_us,
        "commands_cost_ratio": commands_us / raw_us,
        "goal_ratio": GOAL_RATIO,
    }


def report(figures: dict[str, float], count: int) -> None:
    print(f"{count} samples of 40 fields over {NODES} nodes, batches of {BATCH}")
    print(f"  raw XADD pipeline        {figures['raw_xadd_per_s']:>10,.0f} samples/s "
          f"({figures['raw_xadd_us']:.1f} µs; redis-server "
          f"{figures['raw_xadd_server_cpu_us']:.1f} µs)")
    print(f"  Publisher (script)       {figures['publisher_per_s']:>10,.0f} samples/s "
          f"({figures['publisher_us']:.1f} µs incl. {figures['encode_us']:.1f} µs encode; "
          f"redis-server {figures['publisher_server_cpu_us']:.1f} µs)")
    print(f"  Publisher (commands)     {figures['publisher_commands_per_s']:>10,.0f} samples/s "
          f"({figures['publisher_commands_us']:.1f} µs; redis-server "
          f"{figures['publisher_commands_server_cpu_us']:.1f} µs)")
    print(f"  StreamReader read-back   {figures['reader_per_s']:>10,.0f} samples/s")
    met = figures["cost_ratio"] <= GOAL_RATIO
    print(f"Publisher / raw XADD per-sample cost: {figures['cost_ratio']:.2f}x "
          f"(goal <= {GOAL_RATIO:g}x): {'met' if met else 'NOT met'}; commands mode "
          f"{figures['commands_cost_ratio']:.2f}x")


def main(redis_url: str | None = None, quick: bool = False) -> dict[str, float]:
    """Run against ``redis_url`` (keys under PREFIX only) or a private redis-server."""
    count, rounds = (5_000, 1) if quick else (20_000, 3)

    async def run(url: str) -> dict[str, float]:
        client = connect(url)
        try:
            return await measure(client, count, rounds)
        finally:
            await client.aclose()

    if redis_url is not None:
        figures = asyncio.run(run(redis_url))
    else:
        from tests.redis_server import RedisServer  # the suite's helper; only needed here

        with RedisServer() as server:
            figures = asyncio.run(run(server.url))
    report(figures, count)
    return figures


if __name__ == "__main__":
    main()
