"""Pure parts of the fan-out and the self-metrics: the snapshot cache's expiry, the
continuity proof of 0-0 cursors, and the names of the gateway's own sample values."""

from __future__ import annotations

from gateway.fanout import LatestCache, _never_trimmed
from gateway.selfmetrics import GatewayStats, Readings, SelfMetrics
from gateway.topics import PatternSet, parse_pattern
from hub.names import validate_metric_name
from hub.sample import Sample


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sample(node: str, seq: int, kind: str = "system") -> Sample:
    return Sample.build(node, kind, {"v": seq}, seq=seq, epoch=1, ts=1.0)


def test_a_topic_expires_after_three_of_its_intervals_or_the_minimum() -> None:
    """The cache forgets a topic max(min_ttl, 3 observed intervals) after its last sample."""
    clock = FakeClock()
    cache = LatestCache(5.0, clock=clock)
    cache.put("fast", "system", sample("fast", 1), clock.now)
    cache.put("slow", "system", sample("slow", 1), clock.now)
    clock.now += 1.0
    cache.put("fast", "system", sample("fast", 2), clock.now)  # every 1 s: ttl 5 s (minimum)
    clock.now += 9.0
    cache.put("slow", "system", sample("slow", 2), clock.now)  # every 10 s: ttl 30 s
    assert cache.has("fast", "system") is False  # 9 s since its last sample
    assert cache.has("slow", "system") is True
    clock.now += 29.0
    assert cache.has("slow", "system") is True
    clock.now += 2.0
    assert cache.has("slow", "system") is False
    assert cache.prune() == 2
    assert len(cache) == 0


def test_snapshots_match_patterns_and_are_built_once_per_sample() -> None:
    """Snapshots of fresh matching topics; the same object until a newer sample comes."""
    clock = FakeClock()
    cache = LatestCache(5.0, clock=clock)
    for node in ("web-1", "web-2", "db-1"):
        cache.put(node, "system", sample(node, 1), clock.now)
    web = PatternSet([parse_pattern("web-*/system")])
    first = cache.snapshots(web)
    assert sorted(s.sample.node for s in first) == ["web-1", "web-2"]
    assert cache.snapshots(web)[0] is first[0]
    cache.put("web-1", "system", sample("web-1", 2), clock.now)
    again = {s.sample.node: s for s in cache.snapshots(web)}
    assert again["web-1"].sample.seq == 2
    assert again["web-2"] is next(s for s in first if s.sample.node == "web-2")


def test_a_latest_key_never_replaces_what_the_reader_gave() -> None:
    """put_if_absent (from Redis) keeps the reader's newer sample."""
    clock = FakeClock()
    cache = LatestCache(5.0, clock=clock)
    cache.put("n", "system", sample("n", 7), clock.now)
    cache.put_if_absent(sample("n", 3), clock.now)
    assert cache.snapshots(PatternSet([parse_pattern("*")]))[0].sample.seq == 7


def test_zero_cursor_continuity_needs_an_untrimmed_stream() -> None:
    """A 0-0 position is proven only by a stream that never lost an entry."""
    assert _never_trimmed({"length": 10, "entries-added": 10})
    assert _never_trimmed({b"length": 3, b"entries-added": 3})
    assert not _never_trimmed({"length": 9, "entries-added": 10})
    assert not _never_trimmed({"length": 9})  # Redis < 7: no proof
    assert not _never_trimmed(ValueError("no such key"))


def test_gateway_sample_values_are_valid_metric_names() -> None:
    """Every value of the kind-gateway sample has a valid metric name."""
    stats = GatewayStats()
    stats.resumes["memory"] = 3
    stats.fanout_count, stats.fanout_seconds_sum, stats.fanout_seconds_max = 2, 0.002, 0.0015

    def read() -> Readings:
        return Readings(
            connections_by_state={"connecting": 0, "connected": 2, "disconnecting": 0,
                                  "error": 0},
            connections_opened=5, connections_closed=3,
            tasks_by_state={"pending": 0, "running": 4, "cancelling": 0},
            subscriptions=2, pending_frames=0, conflated_total=1, redis_up=True,
            draining=False, reader_lag_s={0: 0.01, 15: 0.2}, reader_errors=0,
            reader_reconnects=0, replay_window_entries=9, cached_topics=4)

    metrics = SelfMetrics(stats, read)
    values = metrics.sample_values()
    for name in values:
        validate_metric_name(name)
    assert values["resumes_total.memory"] == 3
    assert values["reader_lag_seconds.s15"] == 0.2
    assert values["fanout_latency_seconds_avg"] == 0.001
    assert "fanout_latency_seconds_avg" not in metrics.sample_values()  # reset per interval
    text = metrics.exposition().decode()
    assert 'metricshub_gateway_reader_lag_seconds{shard="15"} 0.2' in text
    assert 'metricshub_gateway_resumes_total{source="memory"} 3.0' in text
