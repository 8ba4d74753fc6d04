"""Shared fixtures: fakeredis for unit tests, a private redis-server for integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import fakeredis
import pytest
import redis.asyncio as aioredis

from tests.redis_server import RedisServer, require_redis_server


@pytest.fixture
async def fake_redis() -> AsyncIterator[aioredis.Redis]:
    """An asyncio fakeredis client with a fresh, private server."""
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def redis_server_session() -> Iterator[RedisServer]:
    """One redis-server for the whole session (tests flush it through ``redis_server``)."""
    require_redis_server()
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_server(redis_server_session: RedisServer) -> RedisServer:
    """A private redis-server, empty at the start of the test."""
    if redis_server_session.proc is None or not redis_server_session.ping():
        redis_server_session.stop()
        redis_server_session.start()
    redis_server_session.cli("FLUSHALL")
    return redis_server_session


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test alone, for tests that stop, kill or restart it."""
    require_redis_server()
    with RedisServer() as server:
        yield server
