"""Tests of the custom source API and the runner that calls sources (sources.py, runner.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from collectors import sources as sources_module
from collectors.runner import BurstLog, SourceRunner, clean_values, instance_name
from collectors.sources import (
    ENTRY_POINT_GROUP,
    Source,
    adapt,
    kind_from_name,
    load_flag_sources,
    load_plugin_sources,
    parse_target,
)
from hub.errors import ConfigError
from hub.tasks import TaskManager
from tests.collectors import sample_sources
from tests.collectors.fakes import wait_for

Emitted = list[tuple[str, Mapping[str, Any], Mapping[str, str] | None, float]]


def _runner(source: Source, tasks: TaskManager) -> tuple[SourceRunner, Emitted]:
    emitted: Emitted = []
    runner = SourceRunner(source, lambda *args: emitted.append(args), tasks, start=0.0)
    return runner, emitted


def _load(target: str, **kwargs: Any) -> Source:
    (loaded,) = load_flag_sources((target,), interval=kwargs.pop("interval", 1.0),
                                  timeout=kwargs.pop("timeout", None))
    return loaded


# -- the API --------------------------------------------------------------------------------
def test_functions_classes_and_marks_adapt() -> None:
    """Sync/async functions, classes and @source marks become Sources with the right traits."""
    good = _load("tests.collectors.sample_sources:good")
    assert (good.kind, good.interval, good.timeout, good.blocking) == ("good", 1.0, 1.0, True)
    async_source = _load("tests.collectors.sample_sources:good_async", timeout=0.2)
    assert async_source.blocking is False
    assert async_source.timeout == 0.2
    marked = _load("tests.collectors.sample_sources:marked")
    assert (marked.kind, marked.interval, marked.timeout) == ("marked", 2.5, 0.5)
    counter = _load("tests.collectors.sample_sources:Counter")
    assert (counter.kind, counter.interval) == ("counter_class", 3.0)
    assert counter.open is not None
    assert counter.close is not None
    renamed = _load("other=tests.collectors.sample_sources:marked")
    assert renamed.kind == "other"


@pytest.mark.parametrize(("target", "message"), [
    ("nocolon", "expected \\[kind=\\]package.module:function"),
    ("BAD KIND=x:y", "expected"),
    ("tests.collectors.nothere:f", "cannot import 'tests.collectors.nothere'"),
    ("tests.collectors.sample_sources:nope", "has no attribute 'nope'"),
    ("tests.collectors.sample_sources:Broken", "cannot create Broken\\(\\)"),
    ("tests.collectors.sample_sources:NOT_CALLABLE", "neither callable"),
])
def test_bad_targets_are_config_errors(target: str, message: str) -> None:
    """Every way a --source can be wrong is a one-line ConfigError naming the flag."""
    with pytest.raises(ConfigError, match=message) as info:
        _load(target)
    assert "\n" not in str(info.value)


def test_kind_from_name_and_instance_names_are_valid() -> None:
    """Any name becomes a valid kind and a valid instance suffix."""
    assert kind_from_name("My Plugin!") == "my_plugin"
    assert kind_from_name("***") == "custom"
    assert instance_name("eth0 (vlan 5)") == "eth0__vlan_5_"
    assert parse_target(" k=a.b:c ") == ("k", "a.b", "c")


def test_plugins_load_from_entry_points_and_broken_ones_are_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Installed plugins load by entry point (name = kind); a broken one is logged, skipped."""
    points = [
        EntryPoint("zeta", "tests.collectors.sample_sources:good", ENTRY_POINT_GROUP),
        EntryPoint("broken", "tests.collectors.sample_sources:Broken", ENTRY_POINT_GROUP),
        EntryPoint("gone", "tests.collectors.absent:f", ENTRY_POINT_GROUP),
        EntryPoint("alpha", "tests.collectors.sample_sources:marked", ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(sources_module, "entry_points",
                        lambda group: [p for p in points if p.group == group])
    with caplog.at_level(logging.ERROR):
        loaded = load_plugin_sources(interval=5.0, timeout=None)
    assert [(s.name, s.kind, s.interval) for s in loaded] == [
        ("alpha", "marked", 2.5), ("zeta", "zeta", 5.0)]
    assert sum("skipping plugin" in r.message for r in caplog.records) == 2


def test_the_example_plugin_loads_through_its_entry_point() -> None:
    """examples/mh_example_plugin's declared entry point loads and collects values."""
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "mh-example-plugin"
    pyproject = (example / "pyproject.toml").read_text()
    assert '[project.entry-points."metrics_hub.sources"]' in pyproject
    sys.path.insert(0, str(example / "src"))
    try:
        point = EntryPoint("uptime", "mh_example_plugin:UptimeSource", ENTRY_POINT_GROUP)
        loaded = adapt(point.load(), name="uptime", interval=1.0, timeout=None, origin="x")
        assert loaded.kind == "uptime"
        values = loaded.collect()
        assert values["uptime_seconds"] > 0
    finally:
        sys.path.remove(str(example / "src"))


# -- the runner -----------------------------------------------------------------------------
async def test_a_sync_source_runs_on_its_thread_and_emits() -> None:
    """A sync source's values are emitted with the kind and the tick's wall time."""
    async with TaskManager() as tasks:
        runner, emitted = _runner(_load("tests.collectors.sample_sources:good"), tasks)
        await runner.tick()
        await runner.tick()
        await runner.aclose()
    assert [e[0] for e in emitted] == ["good", "good"]
    assert emitted[0][1]["answer"] == 42.0
    assert runner.stats.up
    assert runner.stats.calls_total == 2


async def test_async_sources_and_labels() -> None:
    """An async source returning a Reading emits its labels."""
    async with TaskManager() as tasks:
        runner, emitted = _runner(_load("tests.collectors.sample_sources:good_async"), tasks)
        await runner.tick()
    assert emitted[0][1] == {"queue_depth": 3}
    assert emitted[0][2] == {"region": "eu"}


async def test_class_sources_are_opened_and_closed() -> None:
    """A class source is opened before its first call and closed by aclose()."""
    source = _load("tests.collectors.sample_sources:Counter")
    instance = source.collect.__self__  # type: ignore[attr-defined]
    async with TaskManager() as tasks:
        runner, emitted = _runner(source, tasks)
        await runner.tick()
        await runner.tick()
        await runner.aclose()
    assert instance.opened
    assert instance.closed
    assert [e[1]["n_total"] for e in emitted] == [1, 2]


async def test_failures_are_counted_and_logged_once_per_burst(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A source failing every tick is logged once, counted each time, then its recovery."""
    source = _load("tests.collectors.sample_sources:failing")
    async with TaskManager() as tasks:
        runner, emitted = _runner(source, tasks)
        with caplog.at_level(logging.INFO, logger="collectors.runner"):
            for _ in range(5):
                await runner.tick()
            source.collect = sample_sources.good
            await runner.tick()
        await runner.aclose()
    assert runner.stats.errors_total == 5
    messages = [r.getMessage() for r in caplog.records]
    assert sum("the database is down" in m for m in messages) == 1
    assert any("recovered after 5 failures" in m for m in messages)
    assert len(emitted) == 1


async def test_a_hanging_async_source_times_out_and_skips_while_hung() -> None:
    """A hung async call times out, later ticks are skipped (counted) instead of stacking."""
    source = _load("tests.collectors.sample_sources:hanging", timeout=0.05)
    async with TaskManager() as tasks:
        runner, _ = _runner(source, tasks)
        await runner.tick()
        assert runner.stats.timeouts_total == 1
        await wait_for(lambda: not tasks.tasks(group="source-calls"), what="call cancelled")
        await runner.tick()  # the cancelled call is done: a new call, a new timeout
        assert runner.stats.timeouts_total == 2
        await runner.aclose()


async def test_a_hanging_sync_source_never_stacks_threads() -> None:
    """A sync call stuck in its thread makes later ticks skip until it returns."""
    sample_sources.RELEASE.clear()
    source = _load("tests.collectors.sample_sources:hanging_sync", timeout=0.05)
    async with TaskManager() as tasks:
        runner, emitted = _runner(source, tasks)
        await runner.tick()
        await runner.tick()
        await runner.tick()
        assert runner.stats.timeouts_total == 1
        assert runner.stats.skipped_total == 2
        sample_sources.RELEASE.set()
        await wait_for(lambda: runner._inflight is not None and runner._inflight.done())
        await runner.tick()
        assert emitted
        assert emitted[-1][1] == {"late": 1.0}
        await runner.aclose()


async def test_invalid_values_are_dropped_and_counted() -> None:
    """Bad names and non-numbers are dropped (counted); the valid values still go out."""
    async with TaskManager() as tasks:
        runner, emitted = _runner(_load("tests.collectors.sample_sources:bad_values"), tasks)
        await runner.tick()
        runner.source.collect = sample_sources.not_a_mapping
        await runner.tick()
        await runner.aclose()
    assert emitted[0][1] == {"ok": 1, "flag": 1}
    assert runner.stats.dropped_values_total == 3
    assert runner.stats.errors_total == 1


async def test_runners_run_on_their_own_schedules() -> None:
    """run() ticks the source on its interval until cancelled."""
    async with TaskManager() as tasks:
        runner, emitted = _runner(_load("tests.collectors.sample_sources:good",
                                        interval=0.02), tasks)
        record = tasks.create_task(runner.run(), name="runner")
        await wait_for(lambda: len(emitted) >= 3, what="3 ticks")
        await tasks.cancel_task(record)
        await runner.aclose()


def test_clean_values_caps_fields() -> None:
    """Past the field limit values are dropped and the reason given."""
    clean, dropped, problem = clean_values({f"m{i}": i for i in range(10)}, max_fields=4)
    assert len(clean) == 4
    assert dropped == 6
    assert problem == "more than 4 values"


def test_burst_log_reminds_while_a_burst_lasts(caplog: pytest.LogCaptureFixture) -> None:
    """A long burst is logged at its start and then every remind_s, not every failure."""
    now = [0.0]
    burst = BurstLog("source x", remind_s=60.0, clock=lambda: now[0])
    logged = []
    for second in range(0, 200, 1):
        now[0] = float(second)
        logged.append(burst.failure("boom"))
    assert sum(logged) == 4  # t=0, 60, 120, 180
    assert burst.success()
    assert not burst.success()


async def test_an_open_failure_is_retried_on_the_next_tick() -> None:
    """A source whose open() fails is not called; the next tick tries open() again."""
    calls = {"open": 0}

    def flaky_open() -> None:
        calls["open"] += 1
        if calls["open"] == 1:
            raise OSError("not yet")

    source = Source(name="f", kind="f", interval=1.0, timeout=1.0,
                    collect=lambda: {"v": 1}, open=flaky_open, blocking=True)
    async with TaskManager() as tasks:
        runner, emitted = _runner(source, tasks)
        await runner.tick()
        assert not emitted
        assert runner.stats.errors_total == 1
        await runner.tick()
        assert emitted
        await runner.aclose()
    await asyncio.sleep(0)
