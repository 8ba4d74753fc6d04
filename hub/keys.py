"""Every Redis key name metrics-hub uses, built by one class under a configurable prefix.

A node always maps to the same shard (crc32 of its name), and every key a node writes carries
its shard's hash tag ``{s<k>}``, so one publish touches one Redis Cluster slot. The layout is
described key by key in docs/redis-layout.md; ``check_layout`` guards against two processes
sharing a prefix with different shard counts.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hub.errors import ConfigError, LayoutMismatch, ValidationError
from hub.names import split_topic

if TYPE_CHECKING:
    from hub.redis_url import RedisClient

PREFIX_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_SHARDS = 1024
# Version of the layout itself (key names and types), recorded in the meta hash; the sample
# format has its own version inside every payload (hub/codec.py).
LAYOUT_VERSION = 1


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """The key names of one hub: ``prefix`` separates hubs sharing a Redis, ``shards`` is fixed.

    Changing ``shards`` moves nodes to other streams, so every process of a hub must use the
    same value; ``check_layout`` enforces it through the meta hash.
    """

    prefix: str = "mh"
    shards: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str) or PREFIX_RE.fullmatch(self.prefix) is None:
            raise ConfigError(
                f"invalid key prefix {self.prefix!r}: use 1-64 of [A-Za-z0-9_.:-]"
            )
        if type(self.shards) is not int or not 1 <= self.shards <= MAX_SHARDS:
            raise ConfigError(
                f"invalid shard count {self.shards!r}: an integer from 1 to {MAX_SHARDS}"
            )

    # -- sharding -------------------------------------------------------------------------
    def shard_for(self, node: str) -> int:
        """The shard of ``node``: crc32 of its UTF-8 name modulo the shard count.

        crc32, not ``hash()``: it must agree across processes, hosts and Python versions.
        """
        return zlib.crc32(node.encode()) % self.shards

    def _tag(self, shard: int) -> str:
        if type(shard) is not int or not 0 <= shard < self.shards:
            raise ValidationError(f"shard {shard!r} out of range 0..{self.shards - 1}")
        return f"{self.prefix}:{{s{shard}}}"

    # -- keys -----------------------------------------------------------------------------
    def stream_key(self, shard: int) -> str:
        """The stream holding the samples of every node of ``shard``."""
        return f"{self._tag(shard)}:stream"

    def stream_keys(self) -> list[str]:
        """Every shard's stream key, index = shard number."""
        return [self.stream_key(shard) for shard in range(self.shards)]

    def latest_key(self, node: str, kind: str) -> str:
        """The string key caching the newest encoded sample of ``node/kind`` (with a TTL)."""
        return f"{self._tag(self.shard_for(node))}:latest:{node}/{kind}"

    def latest_key_for(self, topic: str) -> str:
        """``latest_key`` of a concrete topic ``node/kind`` (validated)."""
        node, kind = split_topic(topic)
        return self.latest_key(node, kind)

    def topics_key(self, shard: int) -> str:
        """The node index of ``shard``: a ZSET of ``node/kind`` scored by last-seen epoch s."""
        return f"{self._tag(shard)}:topics"

    def topics_keys(self) -> list[str]:
        """Every shard's node index key, index = shard number."""
        return [self.topics_key(shard) for shard in range(self.shards)]

    def meta_key(self) -> str:
        """The hash recording this hub's shard count and layout version."""
        return f"{self.prefix}:meta"

    def control_channel(self) -> str:
        """The pub/sub channel of the control plane (reloads, drain notices)."""
        return f"{self.prefix}:control"

    # -- the meta hash (pure parts; check_layout does the I/O) ---------------------------
    def meta_fields(self) -> dict[str, str]:
        """What this layout records in the meta hash."""
        return {"shards": str(self.shards), "layout_version": str(LAYOUT_VERSION)}

    def check_meta(self, stored: Mapping[bytes, bytes] | Mapping[str, str]) -> None:
        """Raise LayoutMismatch unless the stored meta hash agrees with this layout."""
        found = {
            (k.decode() if isinstance(k, bytes) else k): (
                v.decode(errors="replace") if isinstance(v, bytes) else v
            )
            for k, v in stored.items()
        }
        for field, expected in self.meta_fields().items():
            actual = found.get(field)
            if actual is not None and actual != expected:
                raise LayoutMismatch(
                    f"Redis key {self.meta_key()!r} says {field}={actual}, this process is "
                    f"configured with {field}={expected}: every process sharing the prefix "
                    f"{self.prefix!r} must use the same value (or use another prefix)"
                )


DEFAULT_LAYOUT = KeyLayout()


async def check_layout(redis: RedisClient, layout: KeyLayout, *, record: bool = True) -> None:
    """Record ``layout`` in the meta hash if it is new there, else check that it agrees.

    One round trip (HSETNX per field, then HGETALL); whichever process writes first wins and
    every later one with another shard count gets LayoutMismatch. With ``record=False`` it
    only reads (for readers whose ACL user may not write). Redis errors are raised as
    redis-py raises them, for the caller to translate with its own context. Cancelling is safe.
    """
    key = layout.meta_key()
    pipe = redis.pipeline(transaction=False)
    if record:
        for field, value in layout.meta_fields().items():
            pipe.hsetnx(key, field, value)
    pipe.hgetall(key)
    replies = await pipe.execute()
    layout.check_meta(replies[-1])
