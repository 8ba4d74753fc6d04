"""The gateway's own metrics: counters the hot path bumps, exposed on ``/metrics`` (Prometheus
text through prometheus_client) and published every interval as samples of kind ``gateway``.

The hot path only adds to plain integer attributes of ``GatewayStats``; everything else
(connections, tasks, queues, reader lag) is read from its owner when a scrape or a publish
asks, so watching the gateway costs nothing per delivered message.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from hub.errors import HubError
from hub.publisher import Publisher
from hub.sample import MAX_EPOCH, Sample

log = logging.getLogger(__name__)

PREFIX: Final = "metricshub_gateway"
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4
KIND: Final = "gateway"
# Fan-out latency: from the reader getting a batch to its frames being written (or queued).
FANOUT_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                         0.1, 0.25, 0.5, 1.0, 2.5)


class GatewayStats:
    """Counters of one gateway process; the hot path does ``stats.x += n`` and nothing more."""

    __slots__ = (
        "messages_in", "messages_out", "frames_out", "bytes_out", "skipped_entries",
        "slow_consumer_closes", "capacity_rejects", "rate_limited", "policy_closes",
        "frame_too_large_closes", "conflated_closed", "cache_hits", "cache_misses",
        "resumes", "resets", "resume_redis_commands", "requests", "errors",
        "history_redis_commands", "snapshot_redis_commands", "fanout_count",
        "fanout_seconds_sum", "fanout_seconds_max", "write_errors", "drain_closes",
    )

    def __init__(self) -> None:
        self.messages_in = 0  # stream entries handed to the fan-out
        self.messages_out = 0  # update/snapshot/control messages delivered to clients
        self.frames_out = 0  # WebSocket frames written (a batch is one frame)
        self.bytes_out = 0
        self.skipped_entries = 0  # entries dropped as duplicates or out of order
        self.slow_consumer_closes = 0
        self.capacity_rejects = 0
        self.rate_limited = 0
        self.policy_closes = 0  # 4008
        self.frame_too_large_closes = 0  # 1009
        self.conflated_closed = 0  # conflations of connections already gone
        self.cache_hits = 0  # snapshots served from memory
        self.cache_misses = 0  # exact topics looked up in Redis for a snapshot
        self.resumes: dict[str, int] = {"memory": 0, "redis": 0}
        self.resets: dict[str, int] = {}
        self.resume_redis_commands = 0  # XRANGE commands issued to serve resumes
        self.history_redis_commands = 0
        self.snapshot_redis_commands = 0
        self.requests: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.fanout_count = 0  # batches since the last publish (for the sample's average)
        self.fanout_seconds_sum = 0.0
        self.fanout_seconds_max = 0.0
        self.write_errors = 0
        self.drain_closes = 0

    def count_reset(self, reason: str) -> None:
        self.resets[reason] = self.resets.get(reason, 0) + 1

    def count_request(self, op: str) -> None:
        self.requests[op] = self.requests.get(op, 0) + 1

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


@dataclass
class Readings:
    """What the gateway reports about its parts at one moment (see ``Gateway.readings``)."""

    connections_by_state: Mapping[str, int]
    connections_opened: int
    connections_closed: int
    tasks_by_state: Mapping[str, int]
    subscriptions: int
    pending_frames: int
    conflated_total: int
    redis_up: bool
    draining: bool
    reader_lag_s: Mapping[int, float]
    reader_errors: int
    reader_reconnects: int
    replay_window_entries: int
    cached_topics: int
    extra: Mapping[str, float] = field(default_factory=dict)


class SelfMetrics:
    """The private Prometheus registry of one gateway and the kind-``gateway`` sample values."""

    def __init__(self, stats: GatewayStats, read: Callable[[], Readings]) -> None:
        self.stats = stats
        self._read = read
        self.registry = CollectorRegistry(auto_describe=False)
        self.fanout_latency = Histogram(
            f"{PREFIX}_fanout_latency_seconds",
            "Time from the reader receiving a batch of stream entries to their frames being "
            "written to (or queued for) every subscribed connection",
            buckets=FANOUT_BUCKETS, registry=self.registry)
        self.registry.register(_Collector(stats, read))
        ProcessCollector(namespace=PREFIX, registry=self.registry)

    def observe_fanout(self, seconds: float, entries: int) -> None:
        """Record one batch's fan-out time (once per entry in the histogram)."""
        stats = self.stats
        stats.fanout_count += 1
        stats.fanout_seconds_sum += seconds
        if seconds > stats.fanout_seconds_max:
            stats.fanout_seconds_max = seconds
        observe = self.fanout_latency.observe
        for _ in range(min(entries, 64)):  # a huge batch would cost more than it tells
            observe(seconds)

    def exposition(self) -> bytes:
        """The Prometheus text of every metric."""
        return generate_latest(self.registry)

    def sample_values(self) -> dict[str, float]:
        """The values of one kind-``gateway`` sample (names follow docs/gateway.md)."""
        stats = self.stats
        readings = self._read()
        values: dict[str, float] = {}
        for state, count in readings.connections_by_state.items():
            values[f"connections.{state}"] = count
        values["connections_opened_total"] = readings.connections_opened
        values["connections_closed_total"] = readings.connections_closed
        values["connections_rejected_total"] = stats.capacity_rejects
        for state, count in readings.tasks_by_state.items():
            values[f"tasks.{state}"] = count
        values["subscriptions"] = readings.subscriptions
        values["pending_frames"] = readings.pending_frames
        values["messages_in_total"] = stats.messages_in
        values["messages_out_total"] = stats.messages_out
        values["frames_out_total"] = stats.frames_out
        values["bytes_out_total"] = stats.bytes_out
        values["conflated_total"] = readings.conflated_total
        values["slow_consumer_closes_total"] = stats.slow_consumer_closes
        values["cache_hits_total"] = stats.cache_hits
        values["cache_misses_total"] = stats.cache_misses
        values["resumes_total.memory"] = stats.resumes.get("memory", 0)
        values["resumes_total.redis"] = stats.resumes.get("redis", 0)
        values["resets_total"] = sum(stats.resets.values())
        values["resume_redis_commands_total"] = stats.resume_redis_commands
        values["redis_up"] = int(readings.redis_up)
        values["draining"] = int(readings.draining)
        for shard, lag in readings.reader_lag_s.items():
            values[f"reader_lag_seconds.s{shard}"] = round(lag, 6)
        if stats.fanout_count:
            values["fanout_latency_seconds_avg"] = stats.fanout_seconds_sum / stats.fanout_count
            values["fanout_latency_seconds_max"] = stats.fanout_seconds_max
        stats.fanout_count = 0
        stats.fanout_seconds_sum = stats.fanout_seconds_max = 0.0
        values.update(readings.extra)
        return values


class _Collector(Collector):
    """Builds the metric families from the counters and the current readings at scrape time."""

    def __init__(self, stats: GatewayStats, read: Callable[[], Readings]) -> None:
        self._stats = stats
        self._read = read

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        r = self._read()

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)

        def labelled(
            family: CounterMetricFamily | GaugeMetricFamily, items: Mapping[str, float]
        ) -> CounterMetricFamily | GaugeMetricFamily:
            for label, value in sorted(items.items()):
                family.add_metric([label], value)
            return family

        yield labelled(GaugeMetricFamily(f"{PREFIX}_connections", "WebSocket connections by "
                                         "state", labels=["state"]), r.connections_by_state)
        yield counter("connections_opened_total", "Connections accepted", r.connections_opened)
        yield counter("connections_closed_total", "Connections released", r.connections_closed)
        yield counter("connections_rejected_total", "Connections closed with 1013 because the "
                      "process was at --max-connections", s.capacity_rejects)
        yield labelled(GaugeMetricFamily(f"{PREFIX}_tasks", "Tasks of the TaskManager by "
                                         "state", labels=["state"]), r.tasks_by_state)
        yield gauge("subscriptions", "Subscriptions (connection, pattern) held", r.subscriptions)
        yield gauge("pending_frames", "Frames queued for clients, all connections",
                    r.pending_frames)
        yield counter("messages_in_total", "Stream entries handed to the fan-out", s.messages_in)
        yield counter("messages_out_total", "Messages delivered to clients (a batch counts its "
                      "items)", s.messages_out)
        yield counter("frames_out_total", "WebSocket frames written", s.frames_out)
        yield counter("bytes_out_total", "Payload bytes of the frames written", s.bytes_out)
        yield counter("entries_skipped_total", "Stream entries skipped as duplicates",
                      s.skipped_entries)
        yield counter("frames_conflated_total", "Updates replaced by a newer one of their topic "
                      "before being sent (throttle or slow client)", r.conflated_total)
        yield counter("slow_consumer_closes_total", "Connections closed with 1013 'slow "
                      "consumer'", s.slow_consumer_closes)
        yield counter("rate_limited_total", "Requests answered with rate_limited",
                      s.rate_limited)
        yield counter("policy_closes_total", "Connections closed with 4008", s.policy_closes)
        yield counter("frame_too_large_closes_total", "Connections closed with 1009",
                      s.frame_too_large_closes)
        yield counter("write_errors_total", "Writes to a client's socket that failed",
                      s.write_errors)
        yield counter("drain_closes_total", "Connections closed with 1001 by a drain",
                      s.drain_closes)
        yield counter("cache_hits_total", "Snapshots served from the gateway's memory",
                      s.cache_hits)
        yield counter("cache_misses_total", "Topics looked up in Redis for a snapshot",
                      s.cache_misses)
        yield gauge("cached_topics", "Topics with a fresh sample in memory", r.cached_topics)
        yield labelled(CounterMetricFamily(f"{PREFIX}_resumes", "Resumes served, by where the "
                                           "replay came from", labels=["source"]), s.resumes)
        yield labelled(CounterMetricFamily(f"{PREFIX}_resets", "reset messages sent, by reason",
                                           labels=["reason"]), s.resets)
        yield counter("resume_redis_commands_total", "Redis commands (XRANGE) issued to serve "
                      "resumes", s.resume_redis_commands)
        yield counter("snapshot_redis_commands_total", "Redis commands issued to look up "
                      "snapshots", s.snapshot_redis_commands)
        yield counter("history_redis_commands_total", "history requests served from Redis",
                      s.history_redis_commands)
        yield labelled(CounterMetricFamily(f"{PREFIX}_requests", "Client requests, by op",
                                           labels=["op"]), s.requests)
        yield labelled(CounterMetricFamily(f"{PREFIX}_errors", "error messages sent, by code",
                                           labels=["code"]), s.errors)
        yield gauge("redis_up", "1 while the stream reader reaches Redis", int(r.redis_up))
        yield gauge("draining", "1 once the gateway drains (SIGTERM)", int(r.draining))
        lag = GaugeMetricFamily(f"{PREFIX}_reader_lag_seconds", "Age of the newest entry the "
                                "reader handed to the fan-out when it arrived (Redis clock vs "
                                "this host's), per shard", labels=["shard"])
        for shard, seconds in sorted(r.reader_lag_s.items()):
            lag.add_metric([str(shard)], seconds)
        yield lag
        yield counter("reader_errors_total", "Failed reads of the shard streams",
                      r.reader_errors)
        yield counter("reader_reconnects_total", "Times the reader got Redis back",
                      r.reader_reconnects)
        yield gauge("replay_window_entries", "Stream entries held for resumes",
                    r.replay_window_entries)
        for name, value in sorted(r.extra.items()):
            yield gauge(name.replace(".", "_"), name, value)


class SamplePublisher:
    """Publishes the gateway's values as samples of kind ``gateway``, node = gateway id.

    ``seq`` counts published samples of this run (``epoch``: the start time in ms), so the
    dashboard sees a gap only where a sample was actually lost.
    """

    def __init__(self, publisher: Publisher, node: str, metrics: SelfMetrics,
                 *, wall_clock: Callable[[], float] = time.time) -> None:
        self.publisher = publisher
        self.node = node
        self.metrics = metrics
        self._clock = wall_clock
        self.epoch = min(int(wall_clock() * 1000) ^ (os.getpid() & 0xFFFF), MAX_EPOCH)
        self.seq = 0
        self.failures = 0

    async def publish_once(self) -> bool:
        """Publish one sample now; False (logged once per outage) if Redis refused it.

        Cancelling is safe.
        """
        values = self.metrics.sample_values()
        sample = Sample.build(self.node, KIND, values, seq=self.seq + 1, epoch=self.epoch,
                              ts=self._clock())
        try:
            await self.publisher.publish(sample)
        except HubError as exc:
            if not self.failures:
                log.warning("cannot publish this gateway's metrics: %s", exc)
            self.failures += 1
            return False
        if self.failures:
            log.info("publishing this gateway's metrics again")
        self.failures = 0
        self.seq += 1
        return True
