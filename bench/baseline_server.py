"""The gateway benchmark's baseline: a bare ``websockets`` server that XREADs the shard streams and
broadcasts one JSON update frame per entry to every subscribed connection, nothing else.

    python -m bench.baseline_server --port 8090 --redis-url redis://127.0.0.1:6390/0

It is the ceiling of Python on the machine (issue 4): no subscriptions, topics, throttles,
queues or backpressure. To compare like for like it decodes each entry with the hub's codec and
sends the gateway's own update frame (same fields, a resume cursor, orjson, bytes sent as a text
frame); it greets with ``welcome`` and acks ``subscribe`` so the load generator treats it as a
gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.typing import Subprotocol

from gateway.cursor import encode_cursor, parse_entry_id
from gateway.protocol import update_message
from hub.codec import SampleCodec
from hub.errors import CodecError
from hub.keys import KeyLayout
from hub.redis_url import RedisClient, connect
from hub.tasks import TaskManager

BENCHMARK = False  # a tool of the gateway benchmark, not a benchmark of its own

SUBPROTOCOL = "mh.v1.json"


class Baseline:
    """The connections and the one reader loop of the baseline server."""

    def __init__(self, redis: RedisClient, layout: KeyLayout, server_id: str,
                 heartbeat_s: float = 20.0) -> None:
        self.redis = redis
        self.heartbeat_s = heartbeat_s
        self.layout = layout
        self.server_id = server_id
        self.codec = SampleCodec()
        # Connections that sent a subscribe (whatever it asked): idle ones get nothing.
        self.connections: set[ServerConnection] = set()
        self.keys = layout.stream_keys()
        self.shard_of = {key.encode(): shard for shard, key in enumerate(self.keys)}
        self.entries_total = 0

    async def handler(self, connection: ServerConnection) -> None:
        """Greet, answer subscribes with an ack (ignoring what they ask), and wait for the end."""
        try:
            await connection.send(orjson.dumps({
                "type": "welcome", "protocol": 1, "gateway": self.server_id,
                "server_time": time.time(), "heartbeat_s": self.heartbeat_s}), text=True)
            async for message in connection:
                try:
                    request = orjson.loads(message)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(request, dict) and request.get("op") == "subscribe":
                    self.connections.add(connection)
                    await connection.send(orjson.dumps({
                        "type": "ack", "id": request.get("id"),
                        "topics": request.get("topics"), "throttle_ms": 0}), text=True)
        finally:
            self.connections.discard(connection)

    async def start_positions(self) -> list[str]:
        """The newest id of each stream now (``$`` resolved once, so no entry is skipped)."""
        pipe = self.redis.pipeline(transaction=False)
        for key in self.keys:
            pipe.xrevrange(key, count=1)
        newest = await pipe.execute()
        return [entries[0][0].decode() if entries else "0-0" for entries in newest]

    async def read_forever(self) -> None:
        """XREAD every shard, decode, encode one frame per entry, broadcast it to everyone."""
        positions = await self.start_positions()
        vector: list[tuple[int, int]] = [parse_entry_id(p) for p in positions]
        decode = self.codec.decode
        while True:
            reply: Any = await self.redis.xread(dict(zip(self.keys, positions, strict=True)),
                                           count=1000, block=1000)
            for key, entries in (reply.items() if isinstance(reply, dict) else reply or ()):
                shard = self.shard_of[key]
                for entry_id, fields in entries:
                    positions[shard] = entry_id.decode()
                    vector[shard] = parse_entry_id(entry_id)
                    self.entries_total += 1
                    try:
                        sample = decode(fields[b"d"])
                    except (CodecError, KeyError):
                        continue
                    cursor = encode_cursor(tuple(vector))
                    broadcast(self.connections, orjson.dumps(update_message(sample, cursor)),
                              text=True)


async def serve_baseline(port: int, redis_url: str, layout: KeyLayout, server_id: str,
                         ping_interval: float = 20.0) -> None:
    """Serve until SIGTERM or SIGINT."""
    redis = connect(redis_url)
    baseline = Baseline(redis, layout, server_id, ping_interval)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        # compression=None: the load generator never offers it; this only says so.
        async with (serve(baseline.handler, "127.0.0.1", port,
                          subprotocols=[Subprotocol(SUBPROTOCOL)], compression=None,
                          ping_interval=ping_interval, backlog=1024),
                    TaskManager(name="baseline") as tasks):
            reader = tasks.create_task(baseline.read_forever(), name="reader")
            stopper = tasks.create_task(stop.wait(), name="stop")
            await asyncio.wait([reader.task, stopper.task], return_when=asyncio.FIRST_COMPLETED)
            if reader.task.done():
                reader.task.result()  # a reader failure is this process's failure
    finally:
        await redis.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_server",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", default="mh")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--id", default="baseline")
    parser.add_argument("--ping-interval", type=float, default=20.0,
                        help="seconds between WebSocket pings (websockets' default)")
    args = parser.parse_args(argv)
    asyncio.run(serve_baseline(args.port, args.redis_url,
                               KeyLayout(prefix=args.prefix, shards=args.shards), args.id,
                               args.ping_interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
