"""The publishing side of the collector: drains the outage buffer to Redis, in order, in batches.

It runs as its own task, fed by the buffer, so the sampling tasks never wait on Redis. While
Redis is away it retries with exponential backoff and jitter, and (when configured) keeps the
unpublished samples in the spill file; once Redis is back it publishes them oldest first with
their original timestamps and seqs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from collectors.buffer import SampleBuffer, SpillFile, encode_records
from collectors.threads import DaemonWorker
from hub.codec import SampleCodec
from hub.errors import BackendUnavailable, HubError
from hub.sample import Sample

log = logging.getLogger(__name__)


class BatchPublisher(Protocol):
    """What the shipper needs of hub.publisher.Publisher."""

    async def publish_batch(self, samples: Sequence[Sample]) -> list[str]: ...


class Backoff:
    """Exponential backoff with jitter: delays grow from ``base`` to ``cap``, each randomised
    to between half and all of its nominal value so a fleet does not reconnect in lockstep."""

    def __init__(
        self, base: float = 0.2, cap: float = 30.0, *, rng: random.Random | None = None
    ) -> None:
        if not 0 < base <= cap:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        nominal = min(self.cap, self.base * 2.0 ** min(self.attempts, 60))
        self.attempts += 1
        return nominal / 2 + self._rng.uniform(0.0, nominal / 2)

    def reset(self) -> None:
        self.attempts = 0


@dataclass
class ShipperStats:
    """The shipper's health, read by the collector's own metrics."""

    published_total: int = 0
    batches_total: int = 0
    publish_errors_total: int = 0
    rejected_total: int = 0
    spill_errors_total: int = 0
    last_publish_ts: float = 0.0  # wall time of the last successful round trip
    redis_up: bool = False
    outage_since: float | None = None  # monotonic


class Shipper:
    """Publishes what the buffer holds; ``run`` is its task, ``flush`` its last effort."""

    def __init__(
        self,
        buffer: SampleBuffer,
        publisher: BatchPublisher,
        *,
        batch_max: int = 256,
        publish_timeout: float = 5.0,
        backoff: Backoff | None = None,
        spill: SpillFile | None = None,
        codec: SampleCodec | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.buffer = buffer
        self.publisher = publisher
        self.batch_max = batch_max
        self.publish_timeout = publish_timeout
        self.backoff = backoff or Backoff()
        self.spill = spill
        self.stats = ShipperStats()
        self._codec = codec or SampleCodec()
        self._clock = clock
        self._wake = asyncio.Event()
        self._spill_worker = DaemonWorker("mh-spill") if spill is not None else None
        self._spilled_through = -1  # buffer index of the newest sample in the spill file
        self._spill_failed = False

    # -- feeding ----------------------------------------------------------------------------
    def notify(self) -> None:
        """New samples are in the buffer (called by the sampling tasks; never blocks)."""
        self._wake.set()

    def restore(self, samples: Sequence[Sample]) -> None:
        """Queue samples read from the spill file at start; they are in it already."""
        self.buffer.extend(samples)
        self._spilled_through = self.buffer.last_index
        if self.spill is not None:
            self.spill.records = len(samples)
        self._wake.set()

    # -- the task ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Publish forever; cancelling is safe (unpublished samples stay in the buffer)."""
        while True:
            if not self.buffer:
                await self._wake.wait()
                self._wake.clear()
                # Let the other tasks of this tick add their samples: one round trip for all.
                await asyncio.sleep(0)
                continue
            try:
                if await self.publish_once():
                    continue
            except Exception:  # not Redis's fault: a bug must not end publishing for good
                self.stats.publish_errors_total += 1
                log.exception("unexpected error while publishing; retrying")
            await self._wait_backoff(self.backoff.next_delay())

    async def publish_once(self, timeout: float | None = None) -> bool:
        """Publish one batch of the oldest samples; False if it could not be written.

        Any HubError counts as "not now": Redis unreachable, but also an ACL refusal or a
        layout mismatch, which an operator fixes (then SIGHUP) without losing the buffer.
        """
        batch = self.buffer.peek(self.batch_max)
        if not batch:
            return True
        try:
            async with asyncio.timeout(timeout or self.publish_timeout):
                ids = await self.publisher.publish_batch([sample for _, sample in batch])
        except (HubError, TimeoutError) as exc:
            await self._on_outage(exc)
            return False
        rejected = ids.count("")  # samples the codec refused (logged by the publisher)
        self.stats.rejected_total += rejected
        self._on_success(batch[-1][0], len(batch) - rejected)
        return True

    def _on_success(self, through: int, count: int) -> None:
        self.buffer.commit(through)
        stats = self.stats
        stats.published_total += count
        stats.batches_total += 1
        stats.last_publish_ts = time.time()
        if not stats.redis_up:
            if stats.outage_since is not None:
                log.info("Redis is back after %.1fs; publishing %d buffered samples",
                         self._clock() - stats.outage_since, len(self.buffer) + count)
            stats.redis_up = True
            stats.outage_since = None
        self.backoff.reset()
        if self.spill is not None and not self.buffer and self._spilled_through >= 0:
            self._spilled_through = -1
            self._spill_call(self.spill.clear)

    async def _on_outage(self, exc: BaseException) -> None:
        stats = self.stats
        stats.publish_errors_total += 1
        if stats.redis_up or stats.outage_since is None:
            what = (f"publishing took over {self.publish_timeout:g}s"
                    if isinstance(exc, TimeoutError) else str(exc))
            level = logging.WARNING if isinstance(exc, BackendUnavailable | TimeoutError) \
                else logging.ERROR
            log.log(level, "%s; buffering samples (up to %d) and retrying", what,
                    self.buffer.capacity)
            stats.outage_since = self._clock()
        stats.redis_up = False
        self._spill_new()

    async def _wait_backoff(self, delay: float) -> None:
        """Sleep ``delay`` seconds, spilling samples that arrive meanwhile."""
        deadline = self._clock() + delay
        while (left := deadline - self._clock()) > 0:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._wake.wait()
            self._spill_new()

    # -- spilling ------------------------------------------------------------------------
    def _spill_new(self) -> None:
        """Write the samples not yet in the spill file (outage only)."""
        spill = self.spill
        if spill is None or self._spill_failed:
            return
        if self._spilled_through < 0 or spill.records > 2 * self.buffer.capacity:
            # The file starts (or is compacted to) exactly what the buffer holds.
            items = self.buffer.samples()
            self._spilled_through = self.buffer.last_index
            self._spill_call(spill.rewrite, encode_records(self._codec, items), len(items))
            return
        new = self.buffer.since(self._spilled_through)
        if new:
            self._spilled_through = new[-1][0]
            records = encode_records(self._codec, (sample for _, sample in new))
            self._spill_call(spill.append, records, len(new))

    def _spill_call(self, func: Callable[..., None], *args: object) -> None:
        assert self._spill_worker is not None
        future = self._spill_worker.submit(func, *args)
        future.add_done_callback(self._spill_done)

    def _spill_done(self, future: asyncio.Future[None]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self.stats.spill_errors_total += 1
            if not self._spill_failed:
                log.error("cannot write the spill file %s (%s); buffering in memory only",
                          self.spill.path if self.spill else "?", exc)
            self._spill_failed = True

    # -- shutdown ------------------------------------------------------------------------
    async def flush(self, timeout: float) -> bool:
        """Publish what is buffered within ``timeout`` seconds; True if all of it went out.

        Call after ``run`` is cancelled. Cancelling is safe.
        """
        deadline = self._clock() + timeout
        while self.buffer:
            left = deadline - self._clock()
            if left <= 0:
                return False
            if not await self.publish_once(min(self.publish_timeout, max(left, 0.05))):
                # Redis is away: one short retry at most, then give the rest to the spill file.
                pause = min(0.2, deadline - self._clock())
                if pause <= 0:
                    return False
                await asyncio.sleep(pause)
        return True

    async def save_unpublished(self, timeout: float = 2.0) -> int:
        """At exit: write what is still buffered to the spill file; returns how many.

        Waits (at most ``timeout``) for spill writes in flight, then rewrites the file on the
        loop thread: the process is stopping, nothing else runs.
        """
        if self.spill is None:
            return 0
        worker = self._spill_worker
        if worker is not None:
            await worker.wait_idle(timeout)
            worker.stop()
        items = self.buffer.samples()
        try:
            if items:
                self.spill.rewrite(encode_records(self._codec, items), len(items))
            else:
                self.spill.clear()
        except OSError as exc:
            log.error("cannot write the spill file %s: %s; %d samples are lost",
                      self.spill.path, exc, len(items))
            return 0
        finally:
            self.spill.close()
        return len(items)
