"""The collector: builds the sources from the settings, runs each as its own task, turns their
values into samples (node, kind, seq, epoch) and hands them to the shipper through the buffer.

Lifecycle: ``start`` (spill file restored, Redis client made, sources opened and started),
``reload`` (SIGHUP: new sources and settings, same epoch, seqs, buffer and shipper), ``stop``
(sources stopped, buffer flushed within the shutdown timeout, the rest spilled).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import psutil

from collectors.buffer import SampleBuffer, SpillFile
from collectors.processes import TopProcesses
from collectors.runner import SourceRunner, clean_values
from collectors.scrape import scrape_sources
from collectors.settings import SPEC, CollectorSettings, buffer_capacity
from collectors.shipper import Backoff, BatchPublisher, Shipper
from collectors.sources import Source, load_flag_sources, load_plugin_sources
from collectors.statsd import StatsdAggregator
from collectors.statsd_server import StatsdListener
from collectors.system import SystemOptions, SystemSource
from hub.codec import SampleCodec
from hub.errors import ConfigError, ValidationError
from hub.keys import KeyLayout
from hub.publisher import Publisher
from hub.redis_url import RedisClient, connect, redact
from hub.sample import MAX_EPOCH, Number, Sample
from hub.tasks import TaskManager, TaskState

log = logging.getLogger(__name__)

HEALTH_KIND = "collector"
RESERVED_KINDS = frozenset({"system", HEALTH_KIND, "gateway", "alert"})
PublisherFactory = Callable[[CollectorSettings, float], tuple[BatchPublisher, Any]]


def redis_publisher(
    settings: CollectorSettings, longest_interval: float
) -> tuple[BatchPublisher, RedisClient]:
    """The Publisher (and its client) for ``settings``; the shipper does the retrying."""
    client = connect(settings.redis_url, retries=0, socket_timeout=settings.publish_timeout,
                     socket_connect_timeout=min(settings.publish_timeout, 5.0))
    publisher = Publisher(
        client, KeyLayout(settings.key_prefix, settings.shards),
        retention_s=settings.retention, interval_s=longest_interval,
        latest_ttl_s=settings.latest_ttl,
    )
    return publisher, client


@dataclass
class _Built:
    """What ``_build_sources`` makes: the sources, plus the two the collector reads from."""

    all: list[Source] = field(default_factory=list)
    system: SystemSource | None = None
    statsd: StatsdListener | None = None


class Collector:
    """One collector process's moving parts; see the module docstring for the lifecycle."""

    def __init__(
        self,
        settings: CollectorSettings,
        *,
        publisher_factory: PublisherFactory = redis_publisher,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.epoch = min(int(time.time() * 1000), MAX_EPOCH)
        self.started_at = time.time()
        self.tasks = TaskManager(name="collector")
        self.codec = SampleCodec()
        self.buffer = SampleBuffer(16)
        self.spill = SpillFile(settings.spill_file) if settings.spill_file else None
        self.shipper: Shipper | None = None
        self.runners: list[SourceRunner] = []
        self.system: SystemSource | None = None
        self.statsd: StatsdListener | None = None
        self.rejected_total = 0  # samples Sample.build refused even after cleaning
        self._publisher_factory = publisher_factory
        self._client: Any = None
        self._clock = clock
        self._seqs: dict[tuple[str, str], int] = {}
        self._process = psutil.Process()
        self._cpu_last: tuple[float, float] | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Build everything and start the tasks; ConfigError if a setting cannot work."""
        settings = self.settings
        if self.spill is not None:
            try:
                self.spill.check_writable()
            except OSError as exc:
                raise ConfigError(f"--spill-file {self.spill.path}: cannot write "
                                  f"({exc.strerror or exc})") from None
        sources = self._build_sources(settings)
        publisher, self._client = self._publisher_factory(settings, _longest(sources.all))
        self.buffer.resize(buffer_capacity(settings, _rate(sources.all)))
        self.shipper = Shipper(
            self.buffer, publisher, publish_timeout=settings.publish_timeout,
            backoff=Backoff(settings.reconnect_min_delay, settings.reconnect_max_delay),
            spill=self.spill, codec=self.codec,
        )
        if self.spill is not None:
            restored, bad = self.spill.read(self.codec)
            if restored or bad:
                log.info("restored %d unpublished samples from %s (%d unreadable)",
                         len(restored), self.spill.path, bad)
            self.shipper.restore(restored)
        self.tasks.create_task(self.shipper.run(), name="shipper", group="core")
        await self._open_statsd(sources.statsd)
        self.system = sources.system
        self._start_sources(sources.all)
        log.info("collector started: node %s, epoch %d, sources %s; publishing to %s",
                 settings.node, self.epoch, ", ".join(s.kind for s in sources.all),
                 redact(settings.redis_url))

    async def stop(self) -> bool:
        """Stop sampling, flush within the shutdown timeout, spill the rest; True if flushed.

        Cancelling is not safe midway (call it once, at exit).
        """
        await self._stop_sources()
        if self.statsd is not None:
            self.statsd.close()
            self.statsd = None
        flushed = True
        shipper = self.shipper
        if shipper is not None:
            await self.tasks.cancel_task("shipper")
            flushed = await shipper.flush(self.settings.shutdown_timeout)
            left = len(self.buffer)
            saved = await shipper.save_unpublished()
            if left and saved:
                log.warning("Redis took too long; %d samples kept in %s for the next start",
                            saved, self.spill.path if self.spill else "")
            elif left:
                log.warning("Redis took too long; %d unpublished samples are lost "
                            "(set --spill-file to keep them)", left)
        await self.tasks.aclose()
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception as exc:  # a dead connection may fail to close; exiting anyway
                log.debug("closing the Redis client: %r", exc)
        return flushed

    async def reload(self, settings: CollectorSettings) -> None:
        """Apply new settings (SIGHUP). Raises ConfigError, leaving the old ones running,
        if the new sources cannot be built; the buffer, epoch and seqs carry over."""
        old = self.settings
        for option in SPEC.options:
            if not option.meta.reloadable and getattr(old, option.name) != getattr(
                    settings, option.name):
                log.warning("%s changes need a restart; keeping %s", option.flag,
                            option.show(getattr(old, option.name)))
                settings = replace(settings, **{option.name: getattr(old, option.name)})
        sources = self._build_sources(settings)
        await self._stop_sources()
        self.settings = settings
        shipper = self.shipper
        assert shipper is not None
        redis_keys = ("redis_url", "key_prefix", "shards", "retention", "latest_ttl",
                      "publish_timeout")
        if any(getattr(old, k) != getattr(settings, k) for k in redis_keys):
            old_client = self._client
            shipper.publisher, self._client = self._publisher_factory(settings,
                                                                      _longest(sources.all))
            if old_client is not None:
                try:
                    await old_client.aclose()
                except Exception as exc:
                    log.debug("closing the old Redis client: %r", exc)
        shipper.publish_timeout = settings.publish_timeout
        shipper.backoff = Backoff(settings.reconnect_min_delay, settings.reconnect_max_delay)
        dropped = self.buffer.resize(buffer_capacity(settings, _rate(sources.all)))
        if dropped:
            log.warning("the smaller buffer dropped %d samples", dropped)
        started = sources.all
        try:
            await self._open_statsd(sources.statsd)
        except ConfigError as exc:
            log.error("%s; StatsD is off until the next reload", exc)
            started = [s for s in started if s.name != "statsd"]
        self.system = sources.system
        self._start_sources(started)
        log.info("configuration reloaded: sources %s", ", ".join(s.kind for s in started))

    # -- sources ----------------------------------------------------------------------------
    def _build_sources(self, settings: CollectorSettings) -> _Built:
        """Every source the settings ask for (not started); ConfigError if one cannot be."""
        interval = settings.interval
        built = _Built()
        sources = built.all
        if settings.system:
            system = SystemSource(SystemOptions(
                interval=interval, slow_interval=settings.slow_interval,
                net_exclude=settings.net_exclude, disk_exclude=settings.disk_exclude,
                fs_exclude_types=settings.fs_exclude_types,
                fs_exclude_mounts=settings.fs_exclude_mounts, fs_timeout=settings.fs_timeout,
                host_root=settings.host_root,
                temperatures=settings.temperatures, per_cpu=settings.per_cpu,
            ), self.tasks, clock=self._clock)
            built.system = system
            # inline: a few /proc reads; delay: rates and CPU need a first reading
            sources.append(Source(name="system", kind="system", interval=interval,
                                  timeout=interval, collect=system.collect, inline=True,
                                  delay=interval, open=system.open, origin="built-in"))
        sources.append(Source(name=HEALTH_KIND, kind=HEALTH_KIND, interval=interval,
                              timeout=interval, collect=self.health_values, inline=True,
                              delay=interval if settings.system else 0.0, origin="built-in"))
        if settings.top_processes:
            top = TopProcesses(settings.top_processes, clock=self._clock)
            sources.append(Source(name="processes", kind="processes",
                                  interval=settings.top_interval,
                                  timeout=settings.top_interval, collect=top.collect,
                                  blocking=True, origin="--top-processes"))
        if settings.statsd:
            listener = self.statsd
            if listener is None or listener.address != settings.statsd_address:
                listener = StatsdListener(StatsdAggregator(
                    percentiles=settings.statsd_percentiles,
                    max_series=settings.statsd_max_series, expire_s=settings.statsd_expire,
                ), settings.statsd_address)
            built.statsd = listener
            sources.append(Source(name="statsd", kind=settings.statsd_kind, interval=interval,
                                  timeout=interval, collect=listener.collect, inline=True,
                                  origin="--statsd"))
        sources += scrape_sources(
            settings.scrape, interval=settings.scrape_interval or interval,
            timeout=settings.scrape_timeout, max_bytes=settings.scrape_max_bytes)
        custom_interval = settings.source_interval or interval
        sources += load_flag_sources(settings.source, interval=custom_interval,
                                     timeout=settings.source_timeout)
        if settings.plugins:
            sources += load_plugin_sources(interval=custom_interval,
                                           timeout=settings.source_timeout)
        seen: dict[str, str] = {}
        for item in sources:
            if item.origin != "built-in" and item.kind in RESERVED_KINDS:
                raise ConfigError(f"{item.origin}: kind {item.kind!r} is reserved; choose "
                                  "another (e.g. --source mykind=module:function)")
            if item.kind in seen:
                raise ConfigError(f"{item.origin}: kind {item.kind!r} is already published by "
                                  f"{seen[item.kind]}; give one of them another kind")
            seen[item.kind] = item.origin or item.name
        if built.statsd is not None and built.statsd is self.statsd:
            # the same socket carries over a reload: keep its series, apply the new limits
            built.statsd.aggregator.max_series = settings.statsd_max_series
            built.statsd.aggregator.expire_s = settings.statsd_expire
        return built

    async def _open_statsd(self, listener: StatsdListener | None) -> None:
        if self.statsd is not None and self.statsd is not listener:
            self.statsd.close()
            self.statsd = None
        if listener is not None:
            await listener.open()
            self.statsd = listener

    def _start_sources(self, sources: list[Source]) -> None:
        # One jitter offset for all sources: their ticks stay together, so one round trip
        # carries every kind due at the same time.
        jitter = self.settings.start_jitter
        start = self._clock() + (random.uniform(0.0, jitter) if jitter > 0 else 0.0)
        self.runners = []
        for item in sources:
            runner = SourceRunner(item, self.emit, self.tasks, start=start, clock=self._clock)
            self.runners.append(runner)
            self.tasks.create_task(runner.run(), name=f"source {item.name}", group="sources")

    async def _stop_sources(self) -> None:
        stuck = await self.tasks.cancel_group("sources", timeout=2.0)
        stuck += await self.tasks.cancel_group("source-calls", timeout=0.5)
        for record in stuck:
            log.warning("task %s did not stop; leaving it", record.name)
        for runner in self.runners:
            await runner.aclose()
        self.runners = []

    # -- samples ---------------------------------------------------------------------------
    def emit(self, kind: str, values: Mapping[str, Number], labels: Mapping[str, str] | None,
             ts: float) -> None:
        """Make the next sample of ``kind`` and queue it for publishing (never blocks)."""
        node = self.settings.node
        key = (node, kind)
        seq = self._seqs.get(key, 0) + 1
        try:
            sample = Sample.build(node, kind, values, seq=seq, epoch=self.epoch, ts=ts,
                                  labels=labels)
        except ValidationError:
            clean, dropped, problem = clean_values(values)
            log.warning("kind %s: dropped %d invalid values (%s)", kind, dropped, problem)
            try:
                sample = Sample.build(node, kind, clean, seq=seq, epoch=self.epoch, ts=ts)
            except ValidationError as exc:
                self.rejected_total += 1
                log.error("kind %s: sample dropped: %s", kind, exc)
                return
        self._seqs[key] = seq
        self.buffer.append(sample)
        if self.shipper is not None:
            self.shipper.notify()

    def health_values(self) -> dict[str, Number]:
        """The ``collector`` kind: this process's own health (names in metric_table.py)."""
        now = self._clock()
        times = self._process.cpu_times()
        cpu = times.user + times.system
        values: dict[str, Number] = {
            "collector_cpu_seconds_total": cpu,
            "collector_rss_bytes": self._process.memory_info().rss,
            "collector_buffered_samples": len(self.buffer),
            "collector_buffer_capacity_samples": self.buffer.capacity,
            "collector_dropped_samples_total": self.buffer.dropped_total,
            "collector_start_time_seconds": self.started_at,
        }
        if self._cpu_last is not None and now > self._cpu_last[1]:
            values["collector_cpu_ratio"] = max(0.0, cpu - self._cpu_last[0]) / (
                now - self._cpu_last[1])
        self._cpu_last = (cpu, now)
        shipper = self.shipper
        if shipper is not None:
            stats = shipper.stats
            values["collector_published_samples_total"] = stats.published_total
            values["collector_publish_errors_total"] = stats.publish_errors_total
            values["collector_rejected_samples_total"] = stats.rejected_total + \
                self.rejected_total
            values["collector_last_publish_timestamp_seconds"] = stats.last_publish_ts
            values["collector_redis_up"] = int(stats.redis_up)
            values["collector_spill_errors_total"] = stats.spill_errors_total
        values["collector_spilled_samples"] = self.spill.records if self.spill else 0
        values["collector_tasks_failed_total"] = self.tasks.metrics()["tasks_by_state"][
            TaskState.FAILED.value]
        for runner in self.runners:
            stats_ = runner.stats
            name = runner.instance
            if runner.source.name == "system":
                values["collector_cycle_seconds"] = stats_.last_duration
                values["collector_skipped_ticks_total"] = runner.schedule.skipped
            if runner.source.name == HEALTH_KIND:
                continue
            values[f"collector_source_up.{name}"] = int(stats_.up)
            values[f"collector_source_duration_seconds.{name}"] = stats_.last_duration
            values[f"collector_source_errors_total.{name}"] = stats_.errors_total
            values[f"collector_source_timeouts_total.{name}"] = stats_.timeouts_total
            values[f"collector_source_skipped_total.{name}"] = stats_.skipped_total
            values[f"collector_source_dropped_values_total.{name}"] = \
                stats_.dropped_values_total
        if self.system is not None:
            values["collector_fs_timeouts_total"] = self.system.fs_timeouts_total
        if self.statsd is not None:
            agg = self.statsd.aggregator
            values["collector_statsd_packets_total"] = agg.stats.packets
            values["collector_statsd_lines_total"] = agg.stats.lines
            values["collector_statsd_malformed_total"] = agg.stats.malformed
            values["collector_statsd_dropped_total"] = agg.stats.dropped
            values["collector_statsd_series"] = len(agg)
        return values


def _longest(sources: list[Source]) -> float:
    return max((s.interval for s in sources), default=1.0)


def _rate(sources: list[Source]) -> float:
    """Samples per second the sources produce at most."""
    return sum(1.0 / s.interval for s in sources)


