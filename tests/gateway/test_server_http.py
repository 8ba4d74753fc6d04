"""The gateway's HTTP side on the WebSocket port: health, readiness, metrics, the dashboard's
static files (safely), and readiness through a Redis outage and a drain."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.gateway.gateway_client import (
    Client,
    TestPublisher,
    http_get,
    inprocess_gateway,
    wait_until,
    ws_url,
)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis_server


async def get(port: int, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(http_get, port, path, headers)


async def raw_status(port: int, request_line: str) -> int:
    """The status code answering a request line sent verbatim (no client-side cleanup)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{request_line}\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    await writer.wait_closed()
    return int(status.split()[1])


async def test_healthz_readyz_follow_redis(own_redis_server: RedisServer) -> None:
    """/healthz stays 200; /readyz is 503 while Redis is down and 200 once it is back; a
    client stays connected meanwhile and gets history_unavailable at once."""
    async with inprocess_gateway(own_redis_server.url) as gw, \
            Client.open(ws_url(gw.port)) as client:
        await client.expect("welcome")
        assert (await get(gw.port, "/healthz"))[0] == 200
        await wait_until(lambda: gw.fanout.redis_up, what="the reader to connect")
        status, headers, body = await get(gw.port, "/readyz")
        assert (status, body) == (200, b"ready\n")
        assert headers["Cache-Control"] == "no-store"
        own_redis_server.stop()

        async def status_is(path: str, code: int) -> bool:
            return (await get(gw.port, path))[0] == code

        await wait_until(lambda: status_is("/readyz", 503), what="/readyz 503")
        assert (await get(gw.port, "/readyz"))[2] == b"redis unreachable\n"
        assert (await get(gw.port, "/healthz"))[0] == 200
        rid = await client.request("history", topic="a/system", since=0)
        error = await client.answer(rid, timeout=1.0)
        assert error["code"] == "history_unavailable"
        rid = await client.request("ping")
        assert (await client.answer(rid))["type"] == "pong"
        own_redis_server.start()
        await wait_until(lambda: status_is("/readyz", 200), timeout=15, what="/readyz 200")


async def test_metrics_exposition(redis_server: RedisServer) -> None:
    """/metrics is Prometheus text with the gateway's metrics, the resume counter included."""
    pub = TestPublisher(redis_server.url)
    async with inprocess_gateway(redis_server.url) as gw, Client.open(ws_url(gw.port)) as client:
        await client.expect("welcome")
        await client.answer(await client.request("subscribe", topics=["*"]))
        await pub.publish("m1")
        await client.expect("update")
        status, headers, body = await get(gw.port, "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = body.decode()
        for line in (
            'metricshub_gateway_connections{state="connected"} 1.0',
            "metricshub_gateway_subscriptions 1.0",
            "metricshub_gateway_messages_in_total 1.0",
            "metricshub_gateway_messages_out_total",
            "metricshub_gateway_frames_conflated_total 0.0",
            "metricshub_gateway_slow_consumer_closes_total 0.0",
            "metricshub_gateway_cache_hits_total",
            "metricshub_gateway_cache_misses_total",
            "metricshub_gateway_resume_redis_commands_total 0.0",
            'metricshub_gateway_tasks{state="running"}',
            "metricshub_gateway_fanout_latency_seconds_bucket",
            'metricshub_gateway_reader_lag_seconds{shard="',
            "metricshub_gateway_redis_up 1.0",
            "metricshub_gateway_process_resident_memory_bytes",
        ):
            assert line in text, line
    await pub.aclose()


@pytest.fixture
def static_dir(tmp_path: Path) -> Path:
    root = tmp_path / "static"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>hub</title>")
    (root / "app.js").write_text("export const x = 1;\n")
    (root / "sub" / "style.css").write_text("body{}")
    (root / ".secret").write_text("hidden")
    (tmp_path / "outside.txt").write_text("outside")
    os.symlink(tmp_path / "outside.txt", root / "link.txt")
    return root


async def test_static_files_are_served_safely(redis_server: RedisServer, static_dir: Path) -> None:
    """Files under the static root only, with content types, ETag revalidation, no traversal."""
    async with inprocess_gateway(redis_server.url, static_dir=static_dir) as gw:
        status, headers, body = await get(gw.port, "/")
        assert (status, body) == (200, b"<!doctype html><title>hub</title>")
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert headers["Cache-Control"] == "no-cache"
        assert headers["X-Content-Type-Options"] == "nosniff"
        etag = headers["ETag"]
        status, headers, body = await get(gw.port, "/", **{"If-None-Match": etag})
        assert (status, body) == (304, b"")
        assert headers["ETag"] == etag
        status, headers, _ = await get(gw.port, "/app.js")
        assert (status, headers["Content-Type"]) == (200, "text/javascript; charset=utf-8")
        status, headers, _ = await get(gw.port, "/sub/style.css")
        assert (status, headers["Content-Type"]) == (200, "text/css; charset=utf-8")
        (static_dir / "app.js").write_text("export const x = 22;\n")
        assert (await get(gw.port, "/app.js"))[2] == b"export const x = 22;\n"
        for path in ("/nope.js", "/.secret", "/link.txt", "/sub", "/sub/"):
            assert (await get(gw.port, path))[0] == 404, path
        for line in ("GET /../outside.txt HTTP/1.1", "GET /%2e%2e/outside.txt HTTP/1.1",
                     "GET /sub/..%2f..%2foutside.txt HTTP/1.1", "GET /..\\outside.txt HTTP/1.1",
                     "GET //etc/passwd HTTP/1.1", "GET /%00 HTTP/1.1"):
            assert await raw_status(gw.port, line) == 404, line
        assert await raw_status(gw.port, "HEAD /app.js HTTP/1.1") == 200
        assert await raw_status(gw.port, "DELETE /app.js HTTP/1.1") == 405


async def test_the_bundled_dashboard_is_served(redis_server: RedisServer) -> None:
    """Without --static-dir the bundled gateway/static is served on /, under a strict CSP."""
    async with inprocess_gateway(redis_server.url) as gw:
        status, headers, body = await get(gw.port, "/")
        assert status == 200
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert b"<html" in body.lower() or b"<!doctype" in body.lower()
        policy = headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy
        assert "script-src 'self'" in policy


async def test_drain_turns_readiness_off_and_closes_clients_with_1001(
    redis_server: RedisServer,
) -> None:
    """While draining: /readyz 503, new WebSocket handshakes 503, clients closed with 1001."""
    async with inprocess_gateway(redis_server.url, drain_grace=1.0) as gw:
        async with Client.open(ws_url(gw.port)) as c1, Client.open(ws_url(gw.port)) as c2:
            await c1.expect("welcome")
            await c2.expect("welcome")
            drain = asyncio.ensure_future(gw.drain())
            try:
                assert (await get(gw.port, "/readyz"))[:3:2] == (503, b"draining\n")
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(ws_url(gw.port)):
                        pass
                assert refused.value.response.status_code == 503
                assert await c1.close_code() == 1001
                assert await c2.close_code() == 1001
                await asyncio.wait_for(drain, 5)
            finally:
                drain.cancel()
        assert gw.stats.drain_closes == 2
        assert len(gw.connections) == 0


async def test_gateway_publishes_its_metrics_as_kind_gateway(redis_server: RedisServer) -> None:
    """Every --metrics-interval the gateway publishes a `gateway` sample, node = its id."""
    async with inprocess_gateway(redis_server.url, metrics_interval=0.2,
                                 gateway_id="gw-self") as gw, \
            Client.open(ws_url(gw.port)) as client:
        await client.expect("welcome")
        await client.answer(await client.request("subscribe", topics=["gw-self/gateway"],
                                                 snapshot=False))
        updates = await client.updates_until(lambda got: len(got) >= 2)
        assert [m["seq"] for m in updates[:2]] == [updates[0]["seq"], updates[0]["seq"] + 1]
        values = updates[-1]["values"]
        assert values["connections.connected"] == 1
        assert values["subscriptions"] == 1
        assert values["redis_up"] == 1
        assert "resume_redis_commands_total" in values
        assert any(name.startswith("tasks.") for name in values)
