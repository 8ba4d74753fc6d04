"""The Publisher: writes samples to Redis, each batch in one pipelined round trip.

Per sample it appends the encoded sample to its node's shard stream (trimmed by time with
``MINID ~``), refreshes the topic's latest key (``SET .. PX``) and the shard's node index
(``ZADD``). By default a short Lua script does a batch's writes in one command (one per
shard on a Cluster), which costs the client less than a bare XADD per sample; servers
without scripting get the same writes as plain commands (docs/redis-layout.md has the
measurements and the trade-off).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import redis.exceptions as rexc
from redis.asyncio.cluster import RedisCluster

from hub.codec import SampleCodec
from hub.errors import CodecError, ConfigError
from hub.keys import DEFAULT_LAYOUT, KeyLayout, check_layout
from hub.redis_url import (
    REDIS_ERRORS,
    RedisClient,
    describe,
    honour_lost_cancel,
    translate_error,
)
from hub.sample import Sample

log = logging.getLogger(__name__)

WriteMode = Literal["auto", "script", "commands"]

# One call writes n samples to one or more shards (all in one slot on a Cluster).
# KEYS: the n latest keys, then per shard group g: stream, node index.
# ARGV: n, ttl_ms, score, minid, then per sample: group g, topic, payload.
# Only a group's first XADD trims: trimming is by time and the rest of the call is newer.
PUBLISH_SCRIPT = """\
local call = redis.call
local n = tonumber(ARGV[1])
local ttl, score, minid = ARGV[2], ARGV[3], ARGV[4]
local ids, trimmed, zargs = {}, {}, {}
for i = 1, n do
  local a = 2 + 3 * i
  local g = tonumber(ARGV[a])
  local payload = ARGV[a + 2]
  local stream = KEYS[n + 2 * g - 1]
  if trimmed[g] then
    ids[i] = call('XADD', stream, '*', 'd', payload)
  else
    trimmed[g] = true
    ids[i] = call('XADD', stream, 'MINID', '~', minid, '*', 'd', payload)
  end
  call('SET', KEYS[i], payload, 'PX', ttl)
  local z = zargs[g]
  if z == nil then
    z = {}
    zargs[g] = z
  end
  z[#z + 1] = score
  z[#z + 1] = ARGV[a + 1]
end
for g, z in pairs(zargs) do
  call('ZADD', KEYS[n + 2 * g], unpack(z))
end
return ids
"""
PUBLISH_SCRIPT_SHA = hashlib.sha1(PUBLISH_SCRIPT.encode()).hexdigest()
# Samples per script call: bounds how long one call holds the server and the Lua stack
# (ZADD gets 2 arguments per sample through unpack()).
MAX_SCRIPT_SAMPLES = 256
_TOPIC_CACHE_CAP = 100_000


def _describe(sample: object) -> str:
    node, kind = getattr(sample, "node", "?"), getattr(sample, "kind", "?")
    return f"{node}/{kind}"


def _score(now_ms: float) -> str:
    """The node-index score for a publish at ``now_ms``: whole epoch seconds.

    Whole, because Redis 7.0 keeps a small sorted set's scores as strings and formats a
    changing non-integer score 5x slower in ZADD; a second is precise enough for last-seen.
    """
    return str(int(now_ms // 1000))


def _is_unsupported(exc: BaseException) -> bool:
    """True for a server that has no scripting, or an ACL that forbids it."""
    if isinstance(exc, rexc.NoPermissionError):
        return True
    return isinstance(exc, rexc.ResponseError) and "unknown command" in str(exc).lower()


class Publisher:
    """Writes samples (stream entry, latest key, node index) for one process; reuse it.

    ``retention_s`` bounds the streams by time; ``latest_ttl_s`` (default: three intervals,
    at least 5 s) is how long a topic stays in the cache after its last sample.
    ``write_mode``: ``"script"`` (one Lua call per batch, per shard on a Cluster),
    ``"commands"`` (XADD/SET/ZADD), or ``"auto"``: script where the server allows it.
    """

    def __init__(
        self,
        redis: RedisClient,
        layout: KeyLayout = DEFAULT_LAYOUT,
        *,
        codec: SampleCodec | None = None,
        retention_s: float = 3600.0,
        interval_s: float = 1.0,
        latest_ttl_s: float | None = None,
        write_mode: WriteMode = "auto",
        check_layout: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not retention_s > 0 or not math.isfinite(retention_s):
            raise ConfigError(f"retention_s={retention_s!r}: a positive number of seconds")
        if not interval_s > 0 or not math.isfinite(interval_s):
            raise ConfigError(f"interval_s={interval_s!r}: a positive number of seconds")
        ttl = max(5.0, 3.0 * interval_s) if latest_ttl_s is None else latest_ttl_s
        if not ttl > 0 or not math.isfinite(ttl):
            raise ConfigError(f"latest_ttl_s={latest_ttl_s!r}: a positive number of seconds")
        if write_mode not in ("auto", "script", "commands"):
            raise ConfigError(f"write_mode={write_mode!r}: use auto, script or commands")
        self.redis = redis
        self.layout = layout
        self.codec = codec or SampleCodec()
        self.retention_s = float(retention_s)
        self.latest_ttl_s = float(ttl)
        self.write_mode = write_mode
        self._retention_ms = int(retention_s * 1000)
        self._ttl_ms = str(max(1, math.ceil(ttl * 1000)))
        self._clock = clock
        self._check_layout = check_layout
        self._prepared = False
        self._use_script = write_mode != "commands"
        self._stream_keys = layout.stream_keys()
        self._topics_keys = layout.topics_keys()
        # (node, kind) -> (shard, latest key, topic): built once per topic, not per sample
        self._topic_cache: dict[tuple[str, str], tuple[int, str, str]] = {}
        # Server clock minus local clock in ms, learnt from the stream ids XADD returns, so
        # MINID and index scores follow the server even when this host's clock is off.
        self._offset_ms: dict[int, float] = {}
        self._last_offset_ms = 0.0
        # The node index is pruned of topics older than the retention now and then.
        self._prune_every_s = min(60.0, self.retention_s / 4)
        self._pruned_at: dict[int, float] = {}
        self.published_total = 0
        self.bytes_total = 0
        self.batches_total = 0
        self.encode_errors_total = 0
        self.backend_errors_total = 0

    # -- counters -------------------------------------------------------------------------
    @property
    def errors(self) -> int:
        """Samples that could not be encoded plus batches Redis did not take."""
        return self.encode_errors_total + self.backend_errors_total

    @property
    def uses_script(self) -> bool:
        """Whether batches go through the Lua script (known after the first publish)."""
        return self._use_script

    def metrics(self) -> dict[str, int]:
        return {
            "publisher_samples_total": self.published_total,
            "publisher_bytes_total": self.bytes_total,
            "publisher_batches_total": self.batches_total,
            "publisher_encode_errors_total": self.encode_errors_total,
            "publisher_backend_errors_total": self.backend_errors_total,
        }

    # -- publishing -----------------------------------------------------------------------
    async def publish(self, sample: Sample) -> str:
        """Publish one sample and return its stream id.

        Raises CodecError if it cannot be encoded (nothing is sent), BackendUnavailable if
        Redis cannot take it. Cancelling is safe but may leave the sample written or not.
        """
        try:
            payload = self.codec.encode(sample)
        except CodecError:
            self.encode_errors_total += 1
            raise
        ids = await self._send([sample], [payload])
        return ids[0]

    async def publish_batch(self, samples: Sequence[Sample]) -> list[str]:
        """Publish ``samples`` in one round trip; returns their stream ids, in order.

        A sample that cannot be encoded is skipped (counted, logged) and gets ``""`` in the
        result, so one bad sample never costs the others. Raises BackendUnavailable if Redis
        cannot take the batch; some shards' samples may have been written by then (a retry
        can duplicate them; readers drop duplicates by epoch and seq). Cancelling is safe in
        the same sense.
        """
        good: list[Sample] = []
        payloads: list[bytes] = []
        positions: list[int] = []
        encode = self.codec.encode
        for position, sample in enumerate(samples):
            try:
                payloads.append(encode(sample))
            except CodecError as exc:
                self.encode_errors_total += 1
                log.warning("publisher: skipping a sample of %s: %s", _describe(sample), exc)
                continue
            good.append(sample)
            positions.append(position)
        result = [""] * len(samples)
        if not good:
            return result
        for position, entry_id in zip(positions, await self._send(good, payloads), strict=True):
            result[position] = entry_id
        return result

    # -- internals ------------------------------------------------------------------------
    async def _prepare(self) -> None:
        """Once per publisher: check the key layout, learn the server's clock (a local clock
        far ahead would otherwise trim the first batch away) and whether scripting works."""
        try:
            if self._check_layout:
                await check_layout(self.redis, self.layout)
            before = self._clock()
            seconds, micros = await self.redis.time()
            local_ms = (before + self._clock()) * 500.0
            self._last_offset_ms = float(seconds) * 1000.0 + micros / 1000.0 - local_ms
            if self._use_script:
                try:
                    await self.redis.script_load(PUBLISH_SCRIPT)
                except REDIS_ERRORS as exc:
                    if not _is_unsupported(exc):
                        raise
                    if self.write_mode == "script":
                        raise ConfigError(
                            f"write_mode=script but Redis refuses scripts ({exc}); allow "
                            "EVAL/EVALSHA/SCRIPT for the hub's user or use write_mode=auto"
                        ) from None
                    log.info("publisher: Redis refuses scripts (%s); writing plain commands",
                             exc)
                    self._use_script = False
        except REDIS_ERRORS as exc:
            self.backend_errors_total += 1
            raise translate_error(exc, f"publisher cannot prepare on {describe(self.redis)}",
                                  self.redis) from exc
        self._prepared = True

    def _topic_info(self, node: str, kind: str) -> tuple[int, str, str]:
        info = self._topic_cache.get((node, kind))
        if info is None:
            if len(self._topic_cache) >= _TOPIC_CACHE_CAP:
                self._topic_cache.clear()
            shard = self.layout.shard_for(node)
            info = (shard, self.layout.latest_key(node, kind), f"{node}/{kind}")
            self._topic_cache[(node, kind)] = info
        return info

    def _group(self, samples: Sequence[Sample]) -> dict[int, list[int]]:
        """Sample indices by shard, in publish order."""
        groups: dict[int, list[int]] = {}
        cache = self._topic_cache
        for index, sample in enumerate(samples):
            info = cache.get((sample.node, sample.kind)) or self._topic_info(
                sample.node, sample.kind)
            group = groups.get(info[0])
            if group is None:
                groups[info[0]] = [index]
            else:
                group.append(index)
        return groups

    async def _send(self, samples: Sequence[Sample], payloads: Sequence[bytes]) -> list[str]:
        if not self._prepared:
            await self._prepare()
        groups = self._group(samples)
        local_ms = self._clock() * 1000.0
        pipe = self.redis.pipeline(transaction=False)
        # For each command: the sample indices whose ids its reply holds (None: no ids).
        plan: list[list[int] | None] = []
        script_calls: list[tuple[int, list[Any]]] = []  # (plan index, EVALSHA args)
        if self._use_script:
            for chunk in self._script_chunks(samples, groups):
                args = self._script_args(chunk, samples, payloads, local_ms)
                script_calls.append((len(plan), args))
                pipe.execute_command("EVALSHA", PUBLISH_SCRIPT_SHA, *args)
                plan.append(chunk)
        else:
            for shard, indices in groups.items():
                now_ms = local_ms + self._offset_ms.get(shard, self._last_offset_ms)
                self._queue_commands(pipe, plan, shard, indices, samples, payloads,
                                     self._minid(now_ms), _score(now_ms))
        for shard in groups:
            now_s = (local_ms + self._offset_ms.get(shard, self._last_offset_ms)) / 1000.0
            if now_s - self._pruned_at.get(shard, 0.0) >= self._prune_every_s:
                self._pruned_at[shard] = now_s
                cutoff = f"({int(now_s - self.retention_s)}"
                pipe.zremrangebyscore(self._topics_keys[shard], "-inf", cutoff)
                plan.append(None)
        try:
            replies = await pipe.execute(raise_on_error=False)
            if script_calls:
                await self._reload_script(replies, script_calls)
            honour_lost_cancel()
        except REDIS_ERRORS as exc:
            self.backend_errors_total += 1
            raise translate_error(
                exc, f"cannot publish {len(samples)} samples to {describe(self.redis)}",
                self.redis) from exc
        ids = [""] * len(samples)
        failure: BaseException | None = None
        received_ms = self._clock() * 1000.0
        for reply, owners in zip(replies, plan, strict=True):
            if isinstance(reply, BaseException):
                failure = failure or reply
                continue
            if owners is None:
                continue
            entry_ids = reply if isinstance(reply, list) else [reply]
            for index, entry_id in zip(owners, entry_ids, strict=True):
                ids[index] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        for shard, members in groups.items():
            self._learn_offset(shard, ids[members[-1]], (local_ms + received_ms) / 2)
        written = [i for i, entry_id in enumerate(ids) if entry_id]
        self.published_total += len(written)
        self.bytes_total += sum(len(payloads[i]) for i in written)
        self.batches_total += 1
        if failure is not None:
            self.backend_errors_total += 1
            raise translate_error(
                failure, f"Redis refused part of a batch ({len(written)} of {len(samples)} "
                f"samples written)", self.redis) from failure
        return ids

    def _minid(self, now_ms: float) -> str:
        return str(max(0, int(now_ms) - self._retention_ms))

    def _script_chunks(self, samples: Sequence[Sample],
                       groups: dict[int, list[int]]) -> list[list[int]]:
        """Sample indices per script call: the whole batch on one server (in publish order),
        each shard apart on a Cluster (a script's keys must share a slot); at most
        MAX_SCRIPT_SAMPLES per call either way."""
        if isinstance(self.redis, RedisCluster):
            runs = list(groups.values())
        else:
            runs = [list(range(len(samples)))]
        return [run[start:start + MAX_SCRIPT_SAMPLES]
                for run in runs for start in range(0, len(run), MAX_SCRIPT_SAMPLES)]

    def _script_args(self, chunk: list[int], samples: Sequence[Sample],
                     payloads: Sequence[bytes], local_ms: float) -> list[Any]:
        cache = self._topic_cache
        latest_keys: list[Any] = []
        group_keys: list[Any] = []
        group_of: dict[int, int] = {}
        per_sample: list[Any] = []
        for index in chunk:
            sample = samples[index]
            shard, latest_key, topic = cache.get((sample.node, sample.kind)) or \
                self._topic_info(sample.node, sample.kind)
            group = group_of.get(shard)
            if group is None:
                group = group_of[shard] = len(group_of) + 1
                group_keys += (self._stream_keys[shard], self._topics_keys[shard])
            latest_keys.append(latest_key)
            per_sample += (group, topic, payloads[index])
        # One server clock for the call: on a Cluster a call is one shard, on one server
        # every shard has the same clock.
        first_shard = next(iter(group_of))
        now_ms = local_ms + self._offset_ms.get(first_shard, self._last_offset_ms)
        return [len(latest_keys) + len(group_keys), *latest_keys, *group_keys, len(chunk),
                self._ttl_ms, _score(now_ms), self._minid(now_ms), *per_sample]

    def _queue_commands(self, pipe: Any, plan: list[list[int] | None], shard: int,
                        indices: list[int], samples: Sequence[Sample],
                        payloads: Sequence[bytes], minid: str, score: str) -> None:
        stream = self._stream_keys[shard]
        latest: dict[str, int] = {}  # topic -> index of its newest sample in this batch
        for position, index in enumerate(indices):
            if position == 0:
                pipe.execute_command("XADD", stream, "MINID", "~", minid, "*", "d",
                                     payloads[index])
            else:
                pipe.execute_command("XADD", stream, "*", "d", payloads[index])
            plan.append([index])
            sample = samples[index]
            latest[self._topic_info(sample.node, sample.kind)[2]] = index
        members: list[Any] = []
        for topic, index in latest.items():
            sample = samples[index]
            pipe.execute_command("SET", self._topic_info(sample.node, sample.kind)[1],
                                 payloads[index], "PX", self._ttl_ms)
            plan.append(None)
            members += (score, topic)
        pipe.execute_command("ZADD", self._topics_keys[shard], *members)
        plan.append(None)

    async def _reload_script(self, replies: list[Any],
                             script_calls: list[tuple[int, list[Any]]]) -> None:
        """Re-run, with EVAL (which caches the script again), calls that met NOSCRIPT.

        NOSCRIPT means the call did nothing (a restarted or failed-over server), so running
        it again writes each sample once.
        """
        missing = [(slot, args) for slot, args in script_calls
                   if isinstance(replies[slot], rexc.NoScriptError)]
        if not missing:
            return
        log.info("publisher: Redis lost the publish script; sending it again")
        pipe = self.redis.pipeline(transaction=False)
        for _, args in missing:
            pipe.execute_command("EVAL", PUBLISH_SCRIPT, *args)
        for (slot, _), reply in zip(missing, await pipe.execute(raise_on_error=False),
                                    strict=True):
            replies[slot] = reply

    def _learn_offset(self, shard: int, entry_id: str, local_ms: float) -> None:
        if not entry_id:
            return
        try:
            server_ms = int(entry_id.partition("-")[0])
        except ValueError:
            return
        self._last_offset_ms = self._offset_ms[shard] = server_ms - local_ms

