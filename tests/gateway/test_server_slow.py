"""A client that reads nothing: the gateway's memory for it stays bounded, it is closed with
1013 'slow consumer', and a fast client on the same gateway keeps receiving on time."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from websockets.asyncio.client import connect

from tests.gateway.gateway_client import (
    Client,
    TestPublisher,
    assert_contiguous,
    inprocess_gateway,
    wait_until,
    ws_url,
)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis_server

WRITE_LIMIT = 16 * 1024
MAX_PENDING = 256
BATCH_BYTES = 64 * 1024


def small_socket(port: int) -> socket.socket:
    """A connected client socket with a tiny receive buffer, so the server's fills fast."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_slow_client_is_bounded_and_closed_while_a_fast_one_keeps_up(
    redis_server: RedisServer,
) -> None:
    """The slow client's queue and socket buffer stay bounded; it gets 1013; the fast one
    receives every update with low latency throughout."""
    pub = TestPublisher(redis_server.url)
    values = {f"metric_{i}": float(i) for i in range(400)}  # ~10 KB per update frame
    async with inprocess_gateway(
        redis_server.url, slow_consumer_seconds=1.0, outbound_high_water=64,
        outbound_max_pending=MAX_PENDING, write_limit=WRITE_LIMIT,
        max_batch_bytes=BATCH_BYTES,
    ) as gw:
        slow_sock = small_socket(gw.port)
        async with connect(ws_url(gw.port), sock=slow_sock, max_size=None, max_queue=1) as slow, \
                Client.open(ws_url(gw.port)) as fast:
            await fast.expect("welcome")
            await fast.answer(await fast.request("subscribe", topics=["*"], snapshot=False))
            await slow.send('{"op":"subscribe","id":1,"topics":["*"],"snapshot":false}')
            await wait_until(lambda: len(gw.fanout.index) == 2, what="both subscriptions")
            slow_session = next(s for s in gw.sessions.values()
                                if s.ws.remote_address[1] == slow_sock.getsockname()[1])
            server_sock = slow_session.ws.transport.get_extra_info("socket")
            server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

            latencies: list[float] = []
            received: list[int] = []
            peak_queue = peak_buffer = 0

            async def read_fast() -> None:
                while True:
                    message = await fast.next(timeout=10)
                    if message["type"] == "update":
                        latencies.append(time.time() - message["ts"])
                        received.append(message["seq"])

            reader = asyncio.ensure_future(read_fast())
            try:
                deadline = time.monotonic() + 20
                while gw.stats.slow_consumer_closes == 0:
                    assert time.monotonic() < deadline, "the slow client was never closed"
                    await pub.publish("big", values=values)
                    if not slow_session.released:
                        peak_queue = max(peak_queue, slow_session.pending_frames)
                        peak_buffer = max(peak_buffer,
                                          slow_session.ws.transport.get_write_buffer_size())
                    await asyncio.sleep(0.005)
                last = pub.seqs[("big", "system")]
                await wait_until(lambda: bool(received) and received[-1] == last,
                                 what="the fast client to get the last update")
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            assert slow_session.conflated > 0 or slow_session.released
            assert peak_queue <= MAX_PENDING
            # The socket buffer overshoots its mark by at most one chunk of frames.
            assert peak_buffer <= WRITE_LIMIT + 64 * 12 * 1024, peak_buffer
            assert_contiguous(received, "fast client")
            assert received[0] == 1
            assert max(latencies) < 1.0, max(latencies)
            # The slow client finally reads: what was buffered, then the close frame.
            code = None
            try:
                while True:
                    await asyncio.wait_for(slow.recv(), 10)
            except Exception:  # noqa: BLE001 - ConnectionClosed carries the code
                rcvd = slow.protocol.close_rcvd
                code = rcvd.code if rcvd is not None else None
                reason = rcvd.reason if rcvd is not None else None
            assert (code, reason) == (1013, "slow consumer")
        await wait_until(lambda: len(gw.connections) == 0, what="both connections released")
        assert gw.stats.slow_consumer_closes == 1
    await pub.aclose()
