"""TaskManager: task states, cancellation with a timeout, failures, lifecycle and metrics."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import warnings
from collections.abc import Awaitable, Callable

import pytest

from hub.errors import LifecycleError
from hub.tasks import ManagedTask, ManagerState, TaskManager, TaskState, run_periodically
from tests.waiting import eventually


def state_of(record: ManagedTask) -> TaskState:
    """The state now (a function call, so mypy does not keep an earlier narrowing)."""
    return record.state


def manager_state(tm: TaskManager) -> ManagerState:
    """The manager's state now (see state_of)."""
    return tm.state


async def test_pending_running_completed() -> None:
    """A task is pending until its first step, running during it, completed after."""
    async with TaskManager() as tm:
        started = asyncio.Event()
        release = asyncio.Event()

        async def work() -> int:
            started.set()
            await release.wait()
            return 7

        record = tm.create_task(work(), name="work")
        assert record.state is TaskState.PENDING
        assert record.duration is None
        await started.wait()
        assert state_of(record) is TaskState.RUNNING
        assert tm.metrics()["tasks_by_state"]["running"] == 1
        release.set()
        assert await tm.wait(record, timeout=5)
        assert state_of(record) is TaskState.COMPLETED
        assert record.task.result() == 7
        assert record.duration is not None
        assert record.duration >= 0
        assert len(tm) == 0
        assert tm.metrics()["tasks_by_state"]["completed"] == 1


async def test_cancel_running_task() -> None:
    """cancel_task cancels a running task and reports it finished and cancelled."""
    async with TaskManager() as tm:
        started = asyncio.Event()

        async def forever() -> None:
            started.set()
            await asyncio.Event().wait()

        record = tm.create_task(forever(), name="forever")
        await started.wait()
        assert await tm.cancel_task("forever", timeout=5) is True
        assert record.state is TaskState.CANCELLED
        assert tm.metrics()["tasks_by_state"]["cancelled"] == 1
        assert await tm.cancel_task("forever") is True  # gone: nothing to do


async def test_task_ignoring_cancellation_is_reported_not_waited_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A task that swallows cancellation stays 'cancelling', is counted stuck and logged, and
    cancel_task returns after the timeout."""
    async with TaskManager() as tm:
        started = asyncio.Event()
        release = asyncio.Event()

        async def stubborn() -> str:
            started.set()
            while True:
                try:
                    await release.wait()
                    return "finally done"
                except asyncio.CancelledError:
                    continue  # deliberately ignores the cancel (what this test is about)

        record = tm.create_task(stubborn(), name="stubborn")
        await started.wait()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with caplog.at_level(logging.WARNING, logger="hub.tasks"):
            finished = await tm.cancel_task(record, timeout=0.05)
        assert finished is False
        assert loop.time() - t0 < 2.0
        assert record.state is TaskState.CANCELLING
        assert tm.metrics()["tasks_stuck_total"] == 1
        assert tm.metrics()["tasks_by_state"]["cancelling"] == 1
        assert "ignored cancellation" in caplog.text
        # Let it finish so nothing leaks.
        release.set()
        assert await tm.wait(record, timeout=5)
        assert state_of(record) is TaskState.COMPLETED
        assert len(tm) == 0


async def test_cancel_before_first_step_leaves_no_unawaited_coroutine() -> None:
    """A task cancelled before it ever ran is 'cancelled' and its coroutine is closed, so no
    'was never awaited' warning appears."""
    ran = False

    async def never_runs() -> None:
        nonlocal ran
        ran = True

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tm = TaskManager()
        record = tm.create_task(never_runs(), name="early")
        assert await tm.cancel_task(record, timeout=5) is True
        assert record.state is TaskState.CANCELLED
        assert record.started_at is None
        del record
        gc.collect()
    assert not ran
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert tm.metrics()["task_exec_seconds_avg"] == 0.0  # it never ran: no time to average
    await tm.aclose()


async def test_failure_recorded_with_traceback_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failing task ends 'failed' with its exception and traceback kept, logged, counted,
    and passed to on_failure."""
    seen: list[ManagedTask] = []

    async def explode() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    async with TaskManager(on_failure=seen.append) as tm:
        with caplog.at_level(logging.ERROR, logger="hub.tasks"):
            record = tm.create_task(explode(), name="explode", group="g")
            assert await tm.wait(record, timeout=5)
        ok = tm.create_task(asyncio.sleep(0), name="ok")
        assert await tm.wait(ok, timeout=5)

    assert record.state is TaskState.FAILED
    assert isinstance(record.error, RuntimeError)
    assert record.traceback is not None
    assert "in explode" in record.traceback
    assert "RuntimeError: boom" in record.traceback
    assert seen == [record]
    failure = tm.failures[-1]
    assert (failure.name, failure.group) == ("explode", "g")
    assert "boom" in failure.error
    assert "in explode" in failure.traceback
    assert "task explode failed" in caplog.text
    metrics = tm.metrics()
    assert metrics["tasks_by_state"]["failed"] == 1
    assert metrics["task_error_rate"] == 0.5


async def test_on_failure_callback_error_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An on_failure callback that raises is logged; the failure is still recorded."""
    def bad_callback(_: ManagedTask) -> None:
        raise ValueError("callback broke")

    async def explode() -> None:
        raise RuntimeError("boom")

    async with TaskManager(on_failure=bad_callback) as tm:
        with caplog.at_level(logging.ERROR, logger="hub.tasks"):
            record = tm.create_task(explode())
            assert await tm.wait(record, timeout=5)
    assert record.state is TaskState.FAILED
    assert "on_failure callback" in caplog.text


async def test_unique_names_even_against_suffixed_names() -> None:
    """Duplicate names get a suffix that never collides with a live task's name."""
    async with TaskManager() as tm:
        stop = asyncio.Event()
        a = tm.create_task(stop.wait(), name="x")
        b = tm.create_task(stop.wait(), name="x#1")
        c = tm.create_task(stop.wait(), name="x")
        d = tm.create_task(stop.wait())
        names = {a.name, b.name, c.name}
        assert len(names) == 3
        assert "x" in names
        assert "x#1" in names
        assert len(tm) == 4
        assert tm.get(c.name) is c
        assert d.name == "Event.wait"
        stop.set()


async def test_groups_and_cancel_group() -> None:
    """cancel_group cancels exactly the tasks of that group."""
    async with TaskManager() as tm:
        stop = asyncio.Event()
        g1 = [tm.create_task(stop.wait(), group="g1") for _ in range(3)]
        g2 = tm.create_task(stop.wait(), group="g2")
        assert set(tm.tasks(group="g1")) == set(g1)
        assert await tm.cancel_group("g1", timeout=5) == []
        assert all(r.state is TaskState.CANCELLED for r in g1)
        assert not g2.done()
        assert tm.tasks() == [g2]
        stop.set()
        assert await tm.wait(g2, timeout=5)


async def test_aclose_cancels_everything_and_refuses_reuse() -> None:
    """aclose cancels all tasks; afterwards create_task and async with raise LifecycleError,
    and the refused coroutine is closed (no 'never awaited' warning)."""
    tm = TaskManager()
    assert tm.state is ManagerState.UNOPENED
    records = [tm.create_task(asyncio.Event().wait()) for _ in range(5)]
    assert manager_state(tm) is ManagerState.OPEN
    assert await tm.aclose(timeout=5) == []
    assert manager_state(tm) is ManagerState.CLOSED
    assert all(r.state is TaskState.CANCELLED for r in records)
    assert len(tm) == 0

    async def refused() -> None:
        raise AssertionError("must never run")

    coro = refused()
    with pytest.raises(LifecycleError):
        tm.create_task(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    with pytest.raises(LifecycleError):
        async with tm:
            pass
    assert await tm.aclose() == []  # idempotent


def test_create_task_without_loop_closes_coroutine() -> None:
    """Without a running loop create_task raises and closes the coroutine it was given."""
    tm = TaskManager()

    async def work() -> None:
        raise AssertionError("must never run")

    coro = work()
    with pytest.raises(RuntimeError):
        tm.create_task(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    assert len(tm) == 0
    assert tm.state is ManagerState.UNOPENED


async def test_metrics_execution_time_and_counts() -> None:
    """metrics() reports counts by state, live tasks and execution time of tasks that ran."""
    async with TaskManager() as tm:
        async def short() -> None:
            await asyncio.sleep(0.02)

        records = [tm.create_task(short()) for _ in range(3)]
        for record in records:
            assert await tm.wait(record, timeout=5)
        metrics = tm.metrics()
        assert metrics["tasks_created_total"] == 3
        assert metrics["tasks_finished_total"] == 3
        assert metrics["tasks_live"] == 0
        assert metrics["task_exec_seconds_max"] >= 0.02
        assert metrics["task_exec_seconds_avg"] >= 0.02
        assert metrics["task_exec_seconds_total"] >= 0.06
        assert metrics["task_error_rate"] == 0.0


async def test_wait_timeout() -> None:
    """wait() returns False when the task is still running at the timeout, without cancelling."""
    async with TaskManager() as tm:
        record = tm.create_task(asyncio.Event().wait())
        assert await tm.wait(record, timeout=0.01) is False
        assert not record.done()


async def test_run_periodically_is_drift_free_and_skips_missed_ticks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Calls land on the interval grid; an overrun skips the ticks it missed."""
    now = 0.0
    calls: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:
        nonlocal now
        now += seconds
        await real_sleep(0)

    async def func() -> None:
        nonlocal now
        calls.append(now)
        now += 0.25 if len(calls) != 2 else 2.5  # the second call overruns 2.5 intervals
        if len(calls) == 5:
            raise asyncio.CancelledError

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)  # the one run_periodically uses
    with pytest.raises(asyncio.CancelledError):
        await run_periodically(func, 1.0, clock=lambda: now)
    assert calls == [0.0, 1.0, 4.0, 5.0, 6.0]


async def test_run_periodically_propagates_errors() -> None:
    """An error in func ends the loop with that error (the TaskManager records it)."""
    async def func() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await run_periodically(func, 0.01)


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan")])
async def test_run_periodically_rejects_bad_interval(interval: float) -> None:
    """A non-positive or NaN interval is refused instead of spinning."""
    func: Callable[[], Awaitable[None]] = asyncio.sleep  # type: ignore[assignment]
    with pytest.raises(ValueError, match="interval"):
        await run_periodically(func, interval)


async def test_cancel_is_repeated_for_a_task_that_swallowed_the_first() -> None:
    """A task that swallows one cancel (as 3.11's wait_for can) is cancelled again and ends."""
    swallowed = asyncio.Event()

    async def swallow_once() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()
        await asyncio.sleep(3600)  # runs on as if the cancel had never come

    async with TaskManager() as manager:
        record = manager.create_task(swallow_once(), name="swallower")
        await asyncio.sleep(0)
        assert await manager.cancel_task(record, timeout=1.0)
        assert swallowed.is_set()
        assert record.state is TaskState.CANCELLED


async def test_group_index_follows_tasks_and_empties() -> None:
    """tasks(group=) lists exactly a group's live tasks, and the index empties as they end."""
    async with TaskManager() as manager:
        for group in ("a", "b"):
            for _ in range(3):
                manager.create_task(asyncio.sleep(3600), name=f"sleep-{group}", group=group)
        assert len(manager.tasks(group="a")) == 3
        assert {r.group for r in manager.tasks(group="b")} == {"b"}
        assert not await manager.cancel_group("a")
        await eventually(lambda: not manager.tasks(group="a"))
        assert len(manager.tasks(group="b")) == 3
        await manager.aclose()
        await eventually(lambda: len(manager) == 0)
        assert manager._by_group == {}
