"""Reading the cache side of the layout: the newest sample of each topic (latest keys, which
expire on their own when a node stops) and the topics each shard's node index knows.

Both are read-only, so a gateway can run with an ACL user that may not write; pruning the
node index is the Publisher's job (it knows the retention).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import redis.exceptions as rexc
from redis.asyncio.cluster import RedisCluster

from hub.codec import SampleCodec
from hub.errors import CodecError
from hub.keys import KeyLayout
from hub.names import split_topic
from hub.redis_url import REDIS_ERRORS, RedisClient, translate_error
from hub.sample import Sample

log = logging.getLogger(__name__)

_default_codec = SampleCodec()


async def latest(
    redis: RedisClient,
    layout: KeyLayout,
    topics: Iterable[str],
    *,
    codec: SampleCodec | None = None,
) -> list[Sample]:
    """The cached newest sample of each topic (``node/kind``), in the order asked.

    Topics without a live cache entry (expired, never published) are left out, and so are
    malformed entries (logged). One MGET on a single server; one per shard on a Cluster, sent
    together. Raises ValidationError for a topic that is not ``node/kind``, BackendUnavailable
    if Redis fails. Cancelling is safe.
    """
    pairs = [split_topic(topic) for topic in topics]
    if not pairs:
        return []
    keys = [layout.latest_key(node, kind) for node, kind in pairs]
    try:
        values: list[Any]
        if isinstance(redis, RedisCluster):
            # One MGET per slot (a shard's keys share one), pipelined, answers in order.
            values = await redis.mget_nonatomic(keys)
        else:
            values = await redis.mget(keys)
    except REDIS_ERRORS as exc:
        raise translate_error(exc, f"reading {len(keys)} latest keys", redis) from exc
    decode = (codec or _default_codec).decode
    samples: list[Sample] = []
    for (node, kind), key, payload in zip(pairs, keys, values, strict=True):
        if payload is None:
            continue
        try:
            sample = decode(payload)
        except CodecError as exc:
            log.warning("skipping malformed latest key %s: %s", key, exc)
            continue
        if sample.node != node or sample.kind != kind:
            log.warning("skipping latest key %s: it holds a sample of %s", key, sample.topic)
            continue
        samples.append(sample)
    return samples


async def list_topics(
    redis: RedisClient,
    layout: KeyLayout,
    *,
    max_age_s: float | None = None,
) -> list[str]:
    """Every topic in the node indexes, sorted; with ``max_age_s``, only those published
    within that many seconds (measured on the Redis server's clock).

    Without ``max_age_s`` the answer includes topics up to the stream retention old (the
    Publisher prunes older ones). Raises BackendUnavailable if Redis fails.
    """
    keys = layout.topics_keys()
    try:
        lower: str = "-inf"
        if max_age_s is not None:
            lower = f"{await _server_time(redis) - max_age_s:.3f}"
        pipe = redis.pipeline(transaction=False)
        for key in keys:
            pipe.zrangebyscore(key, lower, "+inf")
        replies = await pipe.execute()
    except REDIS_ERRORS as exc:
        raise translate_error(exc, "listing topics", redis) from exc
    topics: set[str] = set()
    for members in replies:
        for member in members:
            topics.add(member.decode() if isinstance(member, bytes) else str(member))
    return sorted(topics)


async def _server_time(redis: RedisClient) -> float:
    """Redis's clock in epoch seconds (the node index scores follow it), or the local one
    when the server does not answer TIME (some proxies)."""
    try:
        seconds, micros = await redis.time()
    except rexc.ResponseError as exc:
        if "unknown command" not in str(exc).lower():
            raise
        return time.time()
    return float(seconds) + micros / 1e6
