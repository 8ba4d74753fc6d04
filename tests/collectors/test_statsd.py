"""Tests of the StatsD parser, aggregator and UDP listener (collectors/statsd*.py)."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from collectors.statsd import (
    RESERVOIR_SIZE,
    MalformedLine,
    StatsdAggregator,
    StatsdType,
    metric_base,
    parse_line,
    percentile,
    tag_instance,
)
from collectors.statsd_server import StatsdListener, parse_address
from hub.names import METRIC_RE
from tests.collectors.fakes import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _aggregator(**kwargs: object) -> tuple[StatsdAggregator, Clock]:
    clock = Clock()
    agg = StatsdAggregator(clock=clock, rng=random.Random(0), **kwargs)  # type: ignore[arg-type]
    return agg, clock


# -- parser ---------------------------------------------------------------------------------
def test_parse_each_type_with_rate_tags_and_extensions() -> None:
    """Every StatsD type parses, with sample rate, DogStatsD tags and ignored extensions."""
    line = parse_line("api.hits:3|c|@0.5|#env:prod,region:eu|c:abc123|T1700000000")
    assert line is not None
    assert line.type is StatsdType.COUNTER
    assert line.values == (3.0,)
    assert line.rate == 0.5
    assert line.tags == (("env", "prod"), ("region", "eu"))
    assert parse_line("temp:-4.5|g") == parse_line("temp:-4.5|g")
    gauge = parse_line("temp:-4.5|g")
    assert gauge is not None
    assert gauge.relative
    assert gauge.values == (-4.5,)
    plain = parse_line("temp:4|g")
    assert plain is not None
    assert not plain.relative
    timer = parse_line("db.query:12:15:9|ms")
    assert timer is not None
    assert timer.values == (12.0, 15.0, 9.0)
    for text, kind in (("x:1|h", StatsdType.HISTOGRAM), ("x:1|d", StatsdType.DISTRIBUTION),
                       ("users:alice|s", StatsdType.SET)):
        parsed = parse_line(text)
        assert parsed is not None
        assert parsed.type is kind


def test_influx_style_tags_in_the_name_merge_with_dogstatsd_tags() -> None:
    """``name,k=v:1|c`` carries tags too (Telegraf), merged and sorted with ``|#`` ones."""
    line = parse_line("api.hits,region=eu,env=prod:1|c|#host:a")
    assert line is not None
    assert line.name == "api.hits"
    assert line.tags == (("env", "prod"), ("host", "a"), ("region", "eu"))
    with pytest.raises(MalformedLine):
        parse_line(",a=b:1|c")


def test_events_and_service_checks_are_skipped_not_malformed() -> None:
    """DogStatsD events and service checks parse to None."""
    assert parse_line("_e{5,4}:title|text") is None
    assert parse_line("_sc|my.check|0") is None


@pytest.mark.parametrize("line", [
    "nobar", "name|c", ":1|c", "x:|c", "x:1|zz", "x:abc|c", "x:1|c|@2", "x:1|c|@0",
    "x:1|c|@x", "x:nan|g", "x:inf|ms", "x:1:2|g", "x:1|c||#a",
])
def test_malformed_lines_raise(line: str) -> None:
    """Each malformed line raises MalformedLine."""
    with pytest.raises(MalformedLine):
        parse_line(line)


def test_names_and_tags_become_valid_metric_names() -> None:
    """StatsD names and tags map onto valid metric names with an instance suffix."""
    assert metric_base("api.req-count") == "api_req_count"
    assert metric_base("9lives") == "_9lives"
    assert tag_instance([("env", "prod"), ("route", "/a b"), ("canary", "")]) == \
        "env=prod+route=/a_b+canary"
    long = tag_instance([("k", "v" * 300)])
    assert len(long) <= 127
    assert METRIC_RE.fullmatch(f"x.{long}")


# -- aggregator -------------------------------------------------------------------------------
def test_counters_scale_by_sample_rate_and_accumulate() -> None:
    """Counters add up (scaled by 1/rate), give a per-second rate and a running total."""
    agg, clock = _aggregator()
    agg.ingest(b"hits:1|c\nhits:2|c|@0.5\nerrors_total:4|c")
    clock.now = 2.0
    values = agg.flush()
    assert values["hits_total"] == pytest.approx(5.0)
    assert values["hits_per_second"] == pytest.approx(2.5)
    assert values["errors_total"] == 4.0  # no double _total
    assert values["errors_per_second"] == 2.0
    clock.now = 4.0
    values = agg.flush()
    assert values["hits_total"] == pytest.approx(5.0)
    assert values["hits_per_second"] == 0.0


def test_gauges_set_adjust_and_persist() -> None:
    """A gauge is set, moved by +n/-n, and reported until it expires."""
    agg, clock = _aggregator(expire_s=10.0)
    agg.ingest(b"q:10|g\nq:+5|g\nq:-3|g")
    clock.now = 1.0
    assert agg.flush()["q"] == 12.0
    clock.now = 5.0
    assert agg.flush()["q"] == 12.0
    clock.now = 20.0
    assert "q" not in agg.flush()
    assert len(agg) == 0


def test_timers_give_count_min_max_mean_and_percentiles_in_seconds() -> None:
    """Timer values (ms) become seconds with count, sum, min, max, mean and percentiles."""
    agg, clock = _aggregator(percentiles=(50, 99, 99.9))
    agg.ingest(b"db.query:" + b":".join(str(v).encode() for v in range(1, 101)) + b"|ms")
    agg.ingest(b"db.query:1000|ms|@0.5")
    clock.now = 1.0
    values = agg.flush()
    assert values["db_query_seconds_count"] == pytest.approx(102.0)
    assert values["db_query_seconds_min"] == pytest.approx(0.001)
    assert values["db_query_seconds_max"] == pytest.approx(1.0)
    assert values["db_query_seconds_sum"] == pytest.approx((5050 + 2000) / 1000)
    assert values["db_query_seconds_mean"] == pytest.approx(7.05 / 102)
    assert values["db_query_seconds_p50"] == pytest.approx(0.051)
    assert "db_query_seconds_p99_9" in values
    assert all(METRIC_RE.fullmatch(name) for name in values)
    clock.now = 2.0
    assert not any(name.startswith("db_query") for name in agg.flush())  # per interval


def test_histograms_keep_units_and_tags_make_series() -> None:
    """h/d values keep their unit; each tag set is its own series."""
    agg, clock = _aggregator(percentiles=(50,))
    agg.ingest(b"size:10|h|#route:/a\nsize:30|d|#route:/a\nsize:5|h|#route:/b")
    clock.now = 1.0
    values = agg.flush()
    assert values["size_mean.route=/a"] == pytest.approx(20.0)
    assert values["size_count.route=/b"] == 1.0


def test_sets_count_distinct_members_per_interval() -> None:
    """A set reports how many distinct members it saw in the interval."""
    agg, clock = _aggregator()
    agg.ingest(b"users:alice|s\nusers:bob|s\nusers:alice|s")
    clock.now = 1.0
    assert agg.flush()["users_unique"] == 2
    agg.ingest(b"users:carol|s")
    clock.now = 2.0
    assert agg.flush()["users_unique"] == 1


def test_malformed_lines_are_counted_and_skipped() -> None:
    """Bad lines are counted; good lines in the same packet still count."""
    agg, clock = _aggregator()
    agg.ingest(b"good:1|c\nbad\n\nworse:x|c\n_e{1,1}:a|b")
    assert (agg.stats.packets, agg.stats.lines, agg.stats.malformed) == (1, 4, 2)
    clock.now = 1.0
    assert agg.flush()["good_total"] == 1.0


def test_a_flood_of_series_is_capped_and_memory_bounded() -> None:
    """Past max_series, new series are dropped and counted; a timer keeps a fixed sample."""
    agg, clock = _aggregator(max_series=10)
    for i in range(1000):
        agg.ingest(f"m{i}:1|c".encode())
    assert len(agg) == 10
    assert agg.stats.dropped == 990
    for _ in range(20):
        agg.ingest(b"m0:1|c")  # existing series still count
    agg2, clock2 = _aggregator()
    for chunk in range(50):
        agg2.ingest(("lat:" + ":".join(str(chunk * 100 + i) for i in range(100)) + "|h")
                    .encode())
    series = next(iter(agg2._series.values()))
    assert series.summary is not None
    assert len(series.summary.reservoir) == RESERVOIR_SIZE
    clock2.now = 1.0
    values = agg2.flush()
    assert values["lat_count"] == 5000
    assert values["lat_max"] == 4999
    assert 1500 < values["lat_p50"] < 3500  # a uniform sample of 0..4999


def test_a_flush_never_exceeds_the_field_limit() -> None:
    """More values than the per-sample limit are cut and counted as dropped."""
    agg, clock = _aggregator(max_fields=50)
    for i in range(40):
        agg.ingest(f"c{i}:1|c".encode())  # 2 values each
    clock.now = 1.0
    values = agg.flush()
    assert len(values) == 50
    assert agg.stats.dropped == 30


def test_percentile_interpolates() -> None:
    """Percentiles interpolate linearly between ranks."""
    assert percentile([1.0], 50) == 1.0
    assert percentile([0.0, 10.0], 50) == 5.0
    assert percentile([0.0, 10.0, 20.0], 100) == 20.0


# -- listener ----------------------------------------------------------------------------------
def test_addresses_parse() -> None:
    """host:port, [v6]:port and :port parse; anything else is a ValueError."""
    assert parse_address("127.0.0.1:8125") == ("127.0.0.1", 8125)
    assert parse_address("[::1]:9125") == ("::1", 9125)
    assert parse_address(":8125") == ("0.0.0.0", 8125)
    for bad in ("8125", "h:99999", "[::1]8125", "h:x", "h:-1"):
        with pytest.raises(ValueError, match=r"port|host|IPv6"):
            parse_address(bad)


async def test_udp_listener_aggregates_datagrams() -> None:
    """Datagrams sent to the listener show up in its next collect()."""
    listener = StatsdListener(StatsdAggregator(), "127.0.0.1:0")
    await listener.open()
    try:
        assert listener.bound is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(5):
                sock.sendto(b"reqs:1|c\nbroken", listener.bound)
        await wait_for(lambda: listener.aggregator.stats.packets == 5, what="5 packets")
        await asyncio.sleep(0.01)
        values = listener.collect()
        assert values["reqs_total"] == 5
        assert listener.aggregator.stats.malformed == 5
    finally:
        listener.close()


async def test_listener_reports_a_busy_port_as_a_config_error() -> None:
    """Binding a port already in use raises a one-line ConfigError."""
    from hub.errors import ConfigError

    first = StatsdListener(StatsdAggregator(), "127.0.0.1:0")
    await first.open()
    try:
        assert first.bound is not None
        second = StatsdListener(StatsdAggregator(), f"127.0.0.1:{first.bound[1]}")
        with pytest.raises(ConfigError, match="cannot listen"):
            await second.open()
    finally:
        first.close()
