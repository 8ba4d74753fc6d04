"""10,000 connections opened and dropped every way a client can go (closing politely, dying
mid-subscribe, killing the TCP socket mid-handshake) leave nothing behind in the gateway."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time

import pytest

from tests.gateway.gateway_client import Client, inprocess_gateway, wait_until, ws_url
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis_server

TOTAL = 10_000
CONCURRENCY = 200


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame (RFC 6455), as a browser would send it."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    else:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return header + mask + masked


def handshake(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def kill(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with a TCP reset (SO_LINGER 0), as a crashed client does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def raw_client(port: int, way: int) -> None:
    """One raw connection that ends abruptly at a point chosen by ``way``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = handshake(port)
        if way == 0:  # half a handshake, then killed
            writer.write(request[: len(request) // 2])
            await writer.drain()
            return
        writer.write(request)
        await writer.drain()
        if way == 1:  # killed before the server could answer
            return
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        if way == 2:  # killed right after the handshake
            return
        subscribe = {"op": "subscribe", "id": 1, "topics": ["*", "n/*"], "throttle_ms": 100}
        writer.write(client_frame(json.dumps(subscribe).encode()))
        await writer.drain()
        if way == 3:  # killed mid-subscribe
            return
        await reader.readexactly(2)  # some of the welcome, then killed
    finally:
        kill(writer)


async def polite_client(port: int) -> None:
    """A websockets client that subscribes, waits for the ack and closes normally."""
    async with Client.open(ws_url(port)) as client:
        await client.expect("welcome")
        await client.answer(await client.request("subscribe", topics=["*"]))


async def test_ten_thousand_connections_leave_nothing_behind(redis_server: RedisServer) -> None:
    """After 10,000 connections ended in every way: no task, queue, subscription, session or
    connection entry is left, and the gateway still serves."""
    async with inprocess_gateway(redis_server.url) as gw:
        baseline_tasks = len(asyncio.all_tasks())
        gateway_tasks = {record.name for record in gw.tasks.tasks()}
        began = time.monotonic()
        semaphore = asyncio.Semaphore(CONCURRENCY)
        failures: list[BaseException] = []

        async def one(index: int) -> None:
            async with semaphore:
                try:
                    if index % 10 == 0:
                        await polite_client(gw.port)
                    else:
                        await raw_client(gw.port, index % 5)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    failures.append(exc)

        await asyncio.gather(*(one(i) for i in range(TOTAL)))
        # A few raw clients may see their own abort first; the gateway must not care.
        assert len(failures) < TOTAL // 100, failures[:3]

        def released() -> bool:
            return (len(gw.connections) == 0 and not gw.sessions
                    and not gw._server.all_connections  # type: ignore[union-attr]
                    and not gw._server.handler_tasks)  # type: ignore[union-attr]

        await wait_until(released, timeout=30, what="every connection to be released")
        await wait_until(lambda: {r.name for r in gw.tasks.tasks()} == gateway_tasks,
                         timeout=10, what="only the gateway's own tasks to remain")
        assert all(size == 0 for size in gw.fanout.index.sizes().values()), \
            gw.fanout.index.sizes()
        metrics = gw.connections.metrics()
        assert metrics["connections_opened_total"] == metrics["connections_closed_total"]
        assert metrics["connections_opened_total"] >= TOTAL * 0.6
        assert metrics["connection_tasks_stuck_total"] == 0
        assert gw.tasks.metrics()["tasks_by_state"]["failed"] == 0
        await wait_until(lambda: len(asyncio.all_tasks()) <= baseline_tasks, timeout=10,
                         what="asyncio tasks back to the baseline")
        async with Client.open(ws_url(gw.port)) as client:
            assert (await client.next())["type"] == "welcome"
        assert time.monotonic() - began < 90
