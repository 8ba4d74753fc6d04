"""MetricsService: collectors, TTL cache, per-type throttle, backpressure and lifecycle."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from hub.errors import ConfigError, LifecycleError, ValidationError
from hub.metrics_service import MetricsService, MetricsType
from hub.tasks import ManagerState, TaskManager, TaskState
from tests.waiting import eventually


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def service_state(service: MetricsService) -> ManagerState:
    """The state now (a function call, so mypy does not keep an earlier narrowing)."""
    return service.state


def drain(queue: asyncio.Queue[Any]) -> list[Any]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


async def test_sync_collector_runs_at_start_and_delivers_documented_message() -> None:
    """A sync collector runs as soon as the service starts; subscribers get
    {"type", "data", "ts"} with ts from the wall clock."""
    service = MetricsService(wall_clock=lambda: 1234.5)
    service.register_collector(MetricsType.SYSTEM, lambda: {"cpu": 1.0}, interval=60)
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=10)
    await service.register_subscriber(queue)
    async with service:
        message = await asyncio.wait_for(queue.get(), 5)
    assert message == {"type": "system", "data": {"cpu": 1.0}, "ts": 1234.5}
    assert service.metrics()["collections_total"] == 1


async def test_async_and_blocking_collectors() -> None:
    """An async collector is awaited; a blocking one runs in a worker thread."""
    threads: list[int] = []

    async def async_collector() -> int:
        await asyncio.sleep(0)
        return 1

    def blocking_collector() -> int:
        threads.append(threading.get_ident())
        return 2

    async with MetricsService(default_throttle=0) as service:
        service.register_collector(MetricsType.GATEWAY, async_collector, interval=60)
        service.register_collector(
            MetricsType.CUSTOM, blocking_collector, interval=60, blocking=True
        )
        assert await service.collect(MetricsType.GATEWAY) == 1
        assert await service.collect("custom") == 2
    assert threads
    assert threads[0] != threading.get_ident()


async def test_collector_errors_counted_logged_once_per_burst(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Failing collections are counted, only the first of a burst is logged, the loop goes on,
    and recovery is logged."""
    calls = 0

    def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise OSError(f"sensor down {calls}")
        return calls

    service = MetricsService(default_throttle=0)
    service.register_collector(MetricsType.SYSTEM, flaky, interval=0.01)
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=10)
    with caplog.at_level(logging.INFO, logger="hub.metrics_service"):
        async with service:
            await service.register_subscriber(queue)
            message = await asyncio.wait_for(queue.get(), 5)
    assert message["data"] == 4
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "sensor down 1" in errors[0].getMessage()
    assert "recovered after 3 failures" in caplog.text
    metrics = service.metrics()
    assert metrics["collector_errors_total"] == 3
    assert metrics["collector_errors"]["system"] == 3


async def test_collector_timeout_counts_as_error() -> None:
    """A collector slower than its timeout fails the collection with TimeoutError, counted."""
    async def slow() -> int:
        await asyncio.sleep(10)
        return 1

    async with MetricsService() as service:
        service.register_collector(MetricsType.CUSTOM, slow, interval=60, timeout=0.01)
        await eventually(lambda: service.metrics()["collector_errors_total"] >= 1)
        with pytest.raises(TimeoutError):
            await service.collect(MetricsType.CUSTOM)
        assert service.metrics()["collector_errors_total"] >= 2


async def test_ttl_expiry_and_hit_miss_counting() -> None:
    """get() hits while the value is younger than its TTL and misses after; the metrics show
    hit rate, size and age."""
    clock = FakeClock()
    async with MetricsService(clock=clock, default_ttl=5.0) as service:
        service.configure(MetricsType.GATEWAY, ttl=2.0)
        assert service.get(MetricsType.SYSTEM) is None  # miss: nothing yet
        service.publish(MetricsType.SYSTEM, {"v": 1})
        service.publish(MetricsType.GATEWAY, {"g": 1})
        clock.now += 1.5
        assert service.get(MetricsType.SYSTEM) == {"v": 1}
        assert service.get(MetricsType.GATEWAY) == {"g": 1}
        metrics = service.metrics()
        assert metrics["cache_size"] == 2
        assert metrics["cache_age_seconds"] == {"system": 1.5, "gateway": 1.5}
        clock.now += 0.5  # gateway is now exactly 2.0 s old: expired
        assert service.get(MetricsType.GATEWAY) is None
        assert service.metrics()["cache_size"] == 1
        clock.now += 3.0
        assert service.get("system") is None
        metrics = service.metrics()
        assert metrics["cache_hits_total"] == 2
        assert metrics["cache_misses_total"] == 3
        assert metrics["cache_hit_rate"] == pytest.approx(0.4)
        assert metrics["cache_size"] == 0
        assert metrics["cache_entries"] == 0


async def test_collect_uses_cache_then_collector_and_shares_calls() -> None:
    """collect() returns a fresh cached value without calling the collector, calls it once the
    value expired, and concurrent callers share one call."""
    clock = FakeClock()
    calls = 0
    gate = asyncio.Event()

    async def collector() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return calls

    tm = TaskManager()
    async with MetricsService(task_manager=tm, clock=clock, default_ttl=10) as service:
        service.register_collector(MetricsType.CUSTOM, collector, interval=3600)
        await eventually(lambda: calls == 1)  # the periodic task's first run is waiting
        waiters = [tm.create_task(service.collect(MetricsType.CUSTOM)) for _ in range(3)]
        # Running means blocked on the type's lock: the first step runs up to it.
        await eventually(lambda: all(w.state is TaskState.RUNNING for w in waiters))
        gate.set()
        for waiter in waiters:
            assert await tm.wait(waiter, timeout=5)
            assert waiter.task.result() == 1
        assert calls == 1
        assert await service.collect(MetricsType.CUSTOM) == 1
        clock.now += 10
        assert await service.collect(MetricsType.CUSTOM) == 2
        assert calls == 2
        with pytest.raises(ConfigError, match="no collector"):
            await service.collect(MetricsType.ALERT)
    await tm.aclose()


async def test_throttle_conflates_and_flushes_newest_at_window_end() -> None:
    """With a fake clock: the first value goes at once, values within the window conflate,
    and the newest is delivered when the window ends."""
    clock = FakeClock()
    async with MetricsService(clock=clock, default_throttle=1.0) as service:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=10)
        await service.register_subscriber(queue)
        assert service.publish(MetricsType.SYSTEM, 1) == 1
        clock.now += 0.3
        assert service.publish(MetricsType.SYSTEM, 2) == 0
        clock.now += 0.3
        assert service.publish(MetricsType.SYSTEM, 3) == 0
        assert service.publish(MetricsType.GATEWAY, "g") == 1  # another type, own window
        assert [m["data"] for m in drain(queue)] == [1, "g"]
        assert service.get(MetricsType.SYSTEM) == 3  # the cache always has the newest
        clock.now = 1000.99
        assert service.flush_due() == 0
        clock.now = 1001.0  # exactly one window after the first value
        assert service.flush_due() == 1
        assert [m["data"] for m in drain(queue)] == [3]
        metrics = service.metrics()
        assert metrics["conflated_total"] == 1
        assert metrics["held"] == 0


async def test_flush_task_delivers_held_value_without_another_publish() -> None:
    """A held value is delivered by the service's own timer at the window's end, with no
    further publish."""
    async with MetricsService(default_throttle=0.05) as service:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=10)
        await service.register_subscriber(queue)
        loop = asyncio.get_running_loop()
        service.publish(MetricsType.SYSTEM, 1)
        held_at = loop.time()
        service.publish(MetricsType.SYSTEM, 2)
        assert (await asyncio.wait_for(queue.get(), 5))["data"] == 1
        message = await asyncio.wait_for(queue.get(), 5)
        waited = loop.time() - held_at
        assert message["data"] == 2
        assert 0.04 <= waited < 2.0  # not before the window ends; not long after (slow CI)


async def test_full_queue_never_blocks_newest_replaces_oldest() -> None:
    """A full subscriber queue loses its oldest message for the newest, drops are counted,
    and another subscriber gets everything."""
    async with MetricsService(default_throttle=0) as service:
        slow: asyncio.Queue[Any] = asyncio.Queue(maxsize=2)
        fast: asyncio.Queue[Any] = asyncio.Queue(maxsize=100)
        await service.register_subscriber(slow)
        await service.register_subscriber(fast)
        for i in range(5):
            assert service.publish(MetricsType.SYSTEM, i) == 2
        assert [m["data"] for m in drain(slow)] == [3, 4]
        assert [m["data"] for m in drain(fast)] == [0, 1, 2, 3, 4]
        assert service.subscriber_stats(slow) == {"delivered": 5, "dropped": 3}
        assert service.subscriber_stats(fast) == {"delivered": 5, "dropped": 0}
        assert service.metrics()["dropped_total"] == 3


async def test_dropped_messages_keep_queue_join_consistent() -> None:
    """Dropped messages are marked done, so join() on a consumed queue still returns."""
    async with MetricsService(default_throttle=0) as service:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        await service.register_subscriber(queue)
        for i in range(3):
            service.publish(MetricsType.SYSTEM, i)
        queue.get_nowait()
        queue.task_done()
        await asyncio.wait_for(queue.join(), 1)


async def test_subscriber_type_filter() -> None:
    """A subscriber receives only the types it asked for; a single type may be a string."""
    async with MetricsService(default_throttle=0) as service:
        alerts: asyncio.Queue[Any] = asyncio.Queue(maxsize=10)
        system: asyncio.Queue[Any] = asyncio.Queue(maxsize=10)
        await service.register_subscriber(alerts, "alert")
        await service.register_subscriber(system, [MetricsType.SYSTEM, "gateway"])
        service.publish(MetricsType.ALERT, "a")
        service.publish(MetricsType.SYSTEM, "s")
        service.publish(MetricsType.GATEWAY, "g")
        assert [m["data"] for m in drain(alerts)] == ["a"]
        assert [m["data"] for m in drain(system)] == ["s", "g"]
        with pytest.raises(ValidationError, match="unknown metrics type"):
            await service.register_subscriber(alerts, "nope")
        with pytest.raises(ValidationError):
            service.publish("nope", 1)


async def test_snapshot_on_subscribe() -> None:
    """A new subscriber gets the fresh cached values at once; stale ones and snapshot=False
    give nothing."""
    clock = FakeClock()
    async with MetricsService(clock=clock, default_ttl=5, default_throttle=0) as service:
        service.configure(MetricsType.GATEWAY, ttl=1)
        service.publish(MetricsType.SYSTEM, "s")
        service.publish(MetricsType.GATEWAY, "g")
        clock.now += 2
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=10)
        await service.register_subscriber(queue)
        assert [m["data"] for m in drain(queue)] == ["s"]
        other: asyncio.Queue[Any] = asyncio.Queue(maxsize=10)
        await service.register_subscriber(other, snapshot=False)
        assert other.empty()


async def test_unregister_subscriber_stops_delivery() -> None:
    """An unregistered queue receives nothing more; unregistering twice is harmless."""
    async with MetricsService(default_throttle=0) as service:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=10)
        await service.register_subscriber(queue)
        assert len(service) == 1
        assert await service.unregister_subscriber(queue) is True
        assert await service.unregister_subscriber(queue) is False
        assert service.publish(MetricsType.SYSTEM, 1) == 0
        assert queue.empty()
        assert len(service) == 0
        assert service.subscriber_stats(queue) is None


async def test_unbounded_queue_refused() -> None:
    """A subscriber queue without maxsize is refused: it could grow without bound."""
    async with MetricsService() as service:
        with pytest.raises(ConfigError, match="bounded"):
            await service.register_subscriber(asyncio.Queue())


async def test_lifecycle() -> None:
    """publish needs start(); start twice is fine; a stopped service refuses to restart or
    take subscribers, and its own TaskManager is closed."""
    service = MetricsService()
    with pytest.raises(LifecycleError):
        service.publish(MetricsType.SYSTEM, 1)
    await service.start()
    await service.start()
    assert service.state is ManagerState.OPEN
    await service.stop()
    await service.stop()
    assert service_state(service) is ManagerState.CLOSED
    with pytest.raises(LifecycleError):
        await service.start()
    with pytest.raises(LifecycleError):
        await service.register_subscriber(asyncio.Queue(1))
    with pytest.raises(LifecycleError):
        service.register_collector(MetricsType.SYSTEM, lambda: 1)
    with pytest.raises(LifecycleError):
        service.publish(MetricsType.SYSTEM, 1)


async def test_shared_task_manager_keeps_other_tasks() -> None:
    """With a shared TaskManager, stop() cancels only the service's tasks."""
    async with TaskManager() as tm:
        other = tm.create_task(asyncio.Event().wait(), name="other")
        service = MetricsService(task_manager=tm)
        service.register_collector(MetricsType.SYSTEM, lambda: 1, interval=60)
        await service.start()
        assert len(tm) == 3  # other, flush, one collector
        await service.stop()
        assert tm.tasks() == [other]
        assert tm.state is ManagerState.OPEN


async def test_register_and_unregister_collector_while_running() -> None:
    """A collector registered on a running service starts at once; unregistering stops it."""
    tm = TaskManager()
    async with MetricsService(task_manager=tm, default_throttle=0) as service:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=10)
        await service.register_subscriber(queue)
        service.register_collector(MetricsType.CUSTOM, lambda: "c", interval=60)
        assert (await asyncio.wait_for(queue.get(), 5))["data"] == "c"
        assert await service.unregister_collector(MetricsType.CUSTOM) is True
        assert await service.unregister_collector(MetricsType.CUSTOM) is False
        assert [r.name for r in tm.tasks()] == ["metrics:flush"]
    await tm.aclose()


def test_bad_configuration_refused() -> None:
    """Duplicate collectors, non-callables and bad durations raise ConfigError."""
    service = MetricsService()
    service.register_collector(MetricsType.SYSTEM, lambda: 1)
    with pytest.raises(ConfigError, match="already has a collector"):
        service.register_collector(MetricsType.SYSTEM, lambda: 2, ttl=99)
    assert service.metrics()["cache_size"] == 0
    with pytest.raises(ConfigError, match="not callable"):
        service.register_collector(MetricsType.GATEWAY, 42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="interval"):
        service.register_collector(MetricsType.GATEWAY, lambda: 1, interval=0)
    with pytest.raises(ConfigError, match="ttl"):
        service.configure(MetricsType.GATEWAY, ttl=-1)
    with pytest.raises(ConfigError, match="throttle"):
        service.configure(MetricsType.GATEWAY, throttle=float("nan"))
    with pytest.raises(ConfigError, match="default_interval"):
        MetricsService(default_interval=0)
