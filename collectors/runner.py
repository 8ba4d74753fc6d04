"""Runs one source on its own schedule, each call under a timeout, errors logged once per burst.

Every source has its own runner task (owned by the collector's TaskManager), so a slow,
hanging or failing source delays nobody but itself: a call still running at the next tick
makes the runner skip that tick (counted) rather than stack calls up.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from collectors.schedule import Schedule, ticks
from collectors.sources import Reading, Source, maybe_await
from collectors.threads import DaemonWorker
from hub.errors import ValidationError
from hub.names import validate_label, validate_metric_name
from hub.sample import Number, check_value
from hub.tasks import ManagedTask, TaskManager

log = logging.getLogger(__name__)

# The codec refuses samples of more than 1024 values; leave room and drop the excess.
MAX_FIELDS = 1000
REMIND_EVERY_S = 300.0
_INSTANCE_BAD = re.compile(r"[^A-Za-z0-9_:./@+=-]")

Emit = Callable[[str, Mapping[str, Number], Mapping[str, str] | None, float], None]


def instance_name(text: str) -> str:
    """``text`` made valid as a metric's ``.instance`` suffix (other characters become _)."""
    return _INSTANCE_BAD.sub("_", text)[:127] or "_"


class BurstLog:
    """Logs the first failure of a burst, a reminder every ``remind_s`` while it lasts, and
    the recovery; never once per tick forever."""

    def __init__(
        self,
        what: str,
        logger: logging.Logger = log,
        *,
        remind_s: float = REMIND_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.logger = logger
        self.remind_s = remind_s
        self.failures = 0  # in the current burst
        self._clock = clock
        self._logged_at: float | None = None

    def failure(self, message: str, exc: BaseException | None = None) -> bool:
        """Count a failure; returns True if it was logged."""
        self.failures += 1
        now = self._clock()
        if self._logged_at is None:
            self._logged_at = now
            self.logger.warning("%s: %s", self.what, message, exc_info=exc)
            return True
        if now - self._logged_at >= self.remind_s:
            self._logged_at = now
            self.logger.warning("%s: still failing (%d failures in this burst); last: %s",
                                self.what, self.failures, message)
            return True
        return False

    def success(self) -> bool:
        """End the burst, if any; returns True if the recovery was logged."""
        if self._logged_at is None:
            return False
        self.logger.info("%s: recovered after %d failures", self.what, self.failures)
        self.failures = 0
        self._logged_at = None
        return True


@dataclass
class SourceStats:
    """One source's health, published in the ``collector`` kind."""

    up: bool = False
    calls_total: int = 0
    errors_total: int = 0
    timeouts_total: int = 0
    skipped_total: int = 0
    dropped_values_total: int = 0
    last_duration: float = 0.0


def clean_values(
    values: Mapping[Any, Any], max_fields: int = MAX_FIELDS
) -> tuple[dict[str, Number], int, str | None]:
    """Keep the valid (name, value) pairs: returns them, how many were dropped, and why the
    first one was (for the log)."""
    clean: dict[str, Number] = {}
    dropped = 0
    problem: str | None = None
    for name, value in values.items():
        if len(clean) >= max_fields:
            dropped += 1
            problem = problem or f"more than {max_fields} values"
            continue
        try:
            validate_metric_name(name)
            clean[name] = check_value(name, value)
        except ValidationError as exc:
            dropped += 1
            problem = problem or str(exc)
    return clean, dropped, problem


def clean_labels(labels: Mapping[Any, Any]) -> tuple[dict[str, str], int]:
    clean: dict[str, str] = {}
    dropped = 0
    for key, value in labels.items():
        try:
            validate_label(key, value)
        except ValidationError:
            dropped += 1
            continue
        clean[key] = value
    return clean, dropped


class SourceRunner:
    """Calls one source every tick and hands its values to ``emit`` (which makes a sample)."""

    def __init__(
        self,
        source: Source,
        emit: Emit,
        tasks: TaskManager,
        *,
        start: float,
        jitter: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.source = source
        self.instance = instance_name(source.name)
        self.emit = emit
        self.tasks = tasks
        self.stats = SourceStats()
        self.schedule = Schedule(source.interval, start=start, delay=source.delay,
                                 jitter=jitter, rng=rng)
        self.burst = BurstLog(f"source {source.name}")
        self._clock = clock
        self._sleep = sleep
        self._worker = DaemonWorker(f"mh-source-{source.name}") if source.blocking else None
        self._inflight: asyncio.Future[Any] | None = None
        self._opened = source.open is None

    async def run(self) -> None:
        """Tick forever; cancelling is safe (a call in flight is left to finish or time out).

        The source is opened first, so a baseline taken in ``open`` is one delay old at the
        first tick; an open that fails is tried again at each tick.
        """
        if not self._opened:
            await self._open()
        async for _ in ticks(self.schedule, clock=self._clock, sleep=self._sleep):
            try:
                await self.tick()
            except Exception as exc:  # a bug here must cost one tick, not the source
                self.stats.errors_total += 1
                self.burst.failure(f"internal error: {exc!r}", exc)

    async def tick(self) -> None:
        """One call of the source: under its timeout, skipped while the last one still runs."""
        source = self.source
        stats = self.stats
        if self._inflight is not None and not self._inflight.done():
            stats.skipped_total += 1
            self.burst.failure(f"previous call still running after {source.timeout:g}s; "
                               "skipping this tick")
            return
        if not self._opened and not await self._open():
            return
        ts = time.time()
        started = self._clock()
        stats.calls_total += 1
        try:
            result = await self._call()
        except TimeoutError:
            stats.timeouts_total += 1
            stats.up = False
            self.burst.failure(f"no answer within {source.timeout:g}s")
            return
        except Exception as exc:
            stats.errors_total += 1
            stats.up = False
            self.burst.failure(f"failed: {exc!r}", exc)
            return
        finally:
            stats.last_duration = self._clock() - started
        stats.up = True
        self.burst.success()
        if result is None:
            return
        self._emit(result, ts)

    async def _call(self) -> Any:
        source = self.source
        if source.inline:
            return await maybe_await(source.collect())
        if self._worker is not None:
            future: asyncio.Future[Any] = self._worker.submit(source.collect)
        else:
            record: ManagedTask = self.tasks.create_task(
                _capture(source.collect), name=f"source {source.name} call",
                group="source-calls",
            )
            future = record.task
        done, _ = await asyncio.wait({future}, timeout=source.timeout)
        if not done:
            self._inflight = future
            future.add_done_callback(_consume)
            if self._worker is None:
                future.cancel()
            raise TimeoutError
        self._inflight = None
        result = future.result()
        if isinstance(result, _Failure):
            raise result.error
        return result

    def _emit(self, result: Any, ts: float) -> None:
        stats = self.stats
        labels: Mapping[str, str] | None = None
        if isinstance(result, Reading):
            values, raw_labels = result.values, result.labels
            if raw_labels:
                labels, bad = clean_labels(raw_labels)
                stats.dropped_values_total += bad
        elif isinstance(result, Mapping):
            values = result
        else:
            stats.errors_total += 1
            self.burst.failure(f"returned {type(result).__name__}; expected a mapping of "
                               "metric name to number, a Reading, or None")
            return
        if self.source.inline:
            clean: Mapping[str, Number] = values  # built-ins produce valid values
        else:
            clean, dropped, problem = clean_values(values)
            if dropped:
                stats.dropped_values_total += dropped
                self.burst.failure(f"dropped {dropped} values: {problem}")
        if clean:
            self.emit(self.source.kind, clean, labels, ts)

    async def _open(self) -> bool:
        try:
            async with asyncio.timeout(self.source.timeout):
                await maybe_await(self.source.open() if self.source.open else None)
        except Exception as exc:
            self.stats.errors_total += 1
            self.burst.failure(f"open() failed: {exc!r}", exc)
            return False
        self._opened = True
        return True

    async def aclose(self, timeout: float = 2.0) -> None:
        """Run the source's close hook (under ``timeout``) and let its thread go."""
        if self.source.close is not None and self._opened:
            try:
                async with asyncio.timeout(timeout):
                    await maybe_await(self.source.close())
            except Exception as exc:
                log.warning("source %s: close() failed: %r", self.source.name, exc)
        if self._worker is not None:
            self._worker.stop()


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


async def _capture(collect: Callable[[], Any]) -> Any:
    """Call an async source; its error comes back as a value so the TaskManager does not log
    every failure (the runner logs them once per burst)."""
    try:
        return await collect()
    except Exception as exc:
        return _Failure(exc)


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a call nobody waits for any more (no 'never retrieved')."""
    if not future.cancelled():
        future.exception()
