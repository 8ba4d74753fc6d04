"""The suite's own redis-server fixture works and is not the shared instance."""

from __future__ import annotations

import redis.asyncio as aioredis

from tests.redis_server import RedisServer


async def test_private_redis_server_answers(redis_server: RedisServer) -> None:
    """The fixture starts a redis-server on a free port other than 6379 that answers PING."""
    assert redis_server.port != 6379
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()
