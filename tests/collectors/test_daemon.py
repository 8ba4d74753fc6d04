"""The collector in process, against a real redis-server: samples, sources, reload, StatsD."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from collectors.daemon import Collector
from collectors.metric_table import documented
from collectors.settings import SPEC, CollectorSettings
from hub.errors import ConfigError
from tests.collectors.fakes import wait_for
from tests.collectors.redis_read import read_samples, seqs
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis_server


def _settings(server: RedisServer, *flags: str) -> CollectorSettings:
    return SPEC.load(["--redis-url", server.url, "--interval", "0.2", "--no-plugins",
                      "--node", "test-node", *flags], environ={}).settings


@pytest.fixture
async def running() -> AsyncIterator[list[Collector]]:
    """Collectors a test starts; stopped at the end whatever happens."""
    started: list[Collector] = []
    yield started
    for collector in started:
        await collector.stop()


async def _start(running: list[Collector], settings: CollectorSettings) -> Collector:
    collector = Collector(settings)
    running.append(collector)
    await collector.start()
    return collector


def _count(server: RedisServer, kind: str) -> int:
    return len(read_samples(server.url, kind=kind))


async def test_system_and_health_samples_arrive_in_order(
    redis_server: RedisServer, running: list[Collector]
) -> None:
    """System and collector samples reach Redis with seq 1, 2, 3... and one epoch."""
    collector = await _start(running, _settings(redis_server))
    await wait_for(lambda: _count(redis_server, "system") >= 4, what="4 system samples")
    await collector.stop()
    system = read_samples(redis_server.url, kind="system")
    health = read_samples(redis_server.url, kind="collector")
    assert seqs(system) == list(range(1, len(system) + 1))
    assert {s.epoch for s in system + health} == {collector.epoch}
    assert all(s.node == "test-node" for s in system)
    assert "cpu_utilization_ratio" in system[0].values  # the first sample already has CPU
    for sample in health:
        for name in sample.values:
            assert documented("collector", name), name
    last = health[-1].values
    assert last["collector_redis_up"] == 1
    assert last["collector_rss_bytes"] > 0
    assert last["collector_published_samples_total"] > 0


async def test_failing_and_hanging_sources_never_delay_system_samples(
    redis_server: RedisServer, running: list[Collector]
) -> None:
    """With a failing, a hanging async and a hanging sync source (1 s timeouts), system
    samples keep their 0.2 s cadence and the bad sources' errors and timeouts are counted."""
    from tests.collectors import sample_sources

    sample_sources.RELEASE.clear()
    settings = _settings(
        redis_server, "--source", "tests.collectors.sample_sources:failing",
        "--source", "tests.collectors.sample_sources:hanging",
        "--source", "tests.collectors.sample_sources:hanging_sync",
        "--source", "tests.collectors.sample_sources:good", "--source-timeout", "1.0")
    collector = await _start(running, settings)
    try:
        await wait_for(lambda: _count(redis_server, "system") >= 15, timeout=15,
                       what="15 system samples")
    finally:
        sample_sources.RELEASE.set()
    await collector.stop()
    system = read_samples(redis_server.url, kind="system")
    gaps = sorted(b.ts - a.ts for a, b in zip(system, system[1:], strict=False))
    # Waiting on a hung source would cost a whole 1 s timeout; a busy test machine, less.
    assert gaps[-1] < 0.6, gaps
    assert gaps[len(gaps) // 2] == pytest.approx(0.2, abs=0.05), gaps
    assert seqs(system) == list(range(1, len(system) + 1))
    assert _count(redis_server, "good") >= 5
    health = read_samples(redis_server.url, kind="collector")[-1].values
    assert health["collector_source_errors_total.failing"] >= 5
    assert health["collector_source_timeouts_total.hanging"] >= 1
    assert health["collector_source_timeouts_total.hanging_sync"] == 1
    assert health["collector_source_skipped_total.hanging_sync"] >= 2
    assert health["collector_source_up.good"] == 1


async def test_reload_adds_sources_and_keeps_epoch_and_seq(
    redis_server: RedisServer, running: list[Collector]
) -> None:
    """A reload starts new sources; system seqs go on from where they were, same epoch."""
    collector = await _start(running, _settings(redis_server))
    await wait_for(lambda: _count(redis_server, "system") >= 2)
    await collector.reload(_settings(redis_server, "--source",
                                     "tests.collectors.sample_sources:good"))
    await wait_for(lambda: _count(redis_server, "good") >= 2, what="the new source")
    count = _count(redis_server, "system")
    await wait_for(lambda: _count(redis_server, "system") >= count + 2)
    await collector.stop()
    system = read_samples(redis_server.url, kind="system")
    assert seqs(system) == list(range(1, len(system) + 1))
    assert {s.epoch for s in system} == {collector.epoch}


async def test_a_bad_reload_keeps_the_running_sources(
    redis_server: RedisServer, running: list[Collector]
) -> None:
    """A reload whose sources cannot load raises ConfigError; the old sources keep running."""
    collector = await _start(running, _settings(
        redis_server, "--source", "tests.collectors.sample_sources:good"))
    with pytest.raises(ConfigError, match="cannot import"):
        await collector.reload(_settings(redis_server, "--source", "nowhere.at_all:f"))
    count = _count(redis_server, "good")
    await wait_for(lambda: _count(redis_server, "good") >= count + 2, what="old source")


async def test_conflicting_or_reserved_kinds_stop_the_start(
    redis_server: RedisServer, running: list[Collector]
) -> None:
    """Two sources of one kind, or a custom source claiming 'system', is a ConfigError."""
    for flags in (("--source", "a=tests.collectors.sample_sources:good",
                   "--source", "a=tests.collectors.sample_sources:marked"),
                  ("--source", "system=tests.collectors.sample_sources:good")):
        collector = Collector(_settings(redis_server, *flags))
        with pytest.raises(ConfigError, match="kind"):
            await collector.start()
        await collector.stop()


async def test_statsd_metrics_are_published_as_their_own_kind(
    redis_server: RedisServer, running: list[Collector]
) -> None:
    """Lines sent to the StatsD port come out, aggregated, in the statsd kind."""
    collector = await _start(running, _settings(
        redis_server, "--statsd", "--statsd-address", "127.0.0.1:0", "--no-system"))
    assert collector.statsd is not None
    assert collector.statsd.bound is not None
    address = collector.statsd.bound
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(10):
            sock.sendto(b"app.hits:1|c|#env:test\napp.latency:20|ms\nbad line", address)

    def hits() -> float:
        samples = read_samples(redis_server.url, kind="statsd")
        return max((s.values.get("app_hits_total.env=test", 0) for s in samples), default=0)

    await wait_for(lambda: hits() == 10, what="10 hits")
    await wait_for(lambda: any(
        s.values.get("collector_statsd_malformed_total") == 10
        for s in read_samples(redis_server.url, kind="collector")), what="malformed count")


async def test_top_processes_is_opt_in_and_names_processes(
    redis_server: RedisServer, running: list[Collector]
) -> None:
    """--top-processes publishes a processes kind with per-process memory and CPU."""
    await _start(running, _settings(redis_server, "--top-processes", "3",
                                    "--top-interval", "1", "--no-system"))
    await wait_for(lambda: _count(redis_server, "processes") >= 2, timeout=10)
    last = read_samples(redis_server.url, kind="processes")[-1]
    assert any(name.startswith("proc_rss_bytes.") for name in last.values)
    assert any(name.startswith("proc_cpu_ratio.") for name in last.values)
    for name in last.values:
        assert documented("processes", name)
    await asyncio.sleep(0)


async def test_a_reload_keeps_settings_that_need_a_restart(
    redis_server: RedisServer, running: list[Collector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reload that changes --spill-file keeps the running one and says a restart is needed."""
    collector = await _start(running, _settings(redis_server))
    await collector.reload(_settings(redis_server, "--spill-file", "/tmp/other-spill.bin",
                                     "--interval", "0.3"))
    assert collector.settings.spill_file is None
    assert collector.settings.interval == 0.3
    assert any("--spill-file changes need a restart" in r.getMessage() for r in caplog.records)
