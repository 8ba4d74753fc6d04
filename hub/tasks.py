"""TaskManager: the owner of every long-lived asyncio task in a metrics-hub process.

Each task gets a name, a tracked state (pending, running, cancelling, cancelled, completed,
failed), its error with traceback when it fails, and a place in the manager's metrics.
Cancellation waits at most a timeout; a task that ignores it is reported, never waited on
forever. The manager has an explicit lifecycle: open (on first use or ``async with``), then
closed by ``aclose()``, which cancels everything it owns; a closed manager refuses new tasks.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from hub.errors import LifecycleError

log = logging.getLogger(__name__)

DEFAULT_CANCEL_TIMEOUT = 5.0
_RECANCEL_AT = (0.2, 0.5, 1.0)  # fractions of the cancel timeout (see cancel_many)


class TaskState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset({TaskState.CANCELLED, TaskState.COMPLETED, TaskState.FAILED})


class ManagerState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(eq=False)
class ManagedTask:
    """One task the manager owns: its asyncio task, state and timings."""

    name: str
    group: str | None
    task: asyncio.Task[Any]
    created_at: float
    state: TaskState = TaskState.PENDING
    started_at: float | None = None
    finished_at: float | None = None
    error: BaseException | None = None
    traceback: str | None = None
    _coro: Coroutine[Any, Any, Any] | None = field(default=None, repr=False)

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish (or to now while it runs); None if it never started."""
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return end - self.started_at

    def done(self) -> bool:
        return self.task.done()


@dataclass(frozen=True)
class FailureRecord:
    """A failed task, kept (a bounded number of them) for inspection and metrics."""

    name: str
    group: str | None
    error: str
    traceback: str
    at: float


class TaskManager:
    """Creates, names, tracks and cancels asyncio tasks; every task has this owner."""

    def __init__(
        self,
        *,
        name: str = "tasks",
        cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
        keep_failures: int = 100,
        on_failure: Callable[[ManagedTask], None] | None = None,
    ) -> None:
        self.name = name
        self.cancel_timeout = cancel_timeout
        self.on_failure = on_failure
        self._state = ManagerState.UNOPENED
        self._tasks: dict[str, ManagedTask] = {}
        self._by_task: dict[asyncio.Task[Any], ManagedTask] = {}
        # group -> its live tasks by name: a connection's disconnect looks up its own tasks
        # without scanning every task of the process (10,000 connections drain in O(n)).
        self._by_group: dict[str, dict[str, ManagedTask]] = {}
        self._ids = itertools.count(1)
        self._counts = {state: 0 for state in _FINISHED}
        self._created_total = 0
        self._stuck_total = 0
        self._exec_count = 0  # finished tasks that ran at least one step
        self._exec_seconds_total = 0.0
        self._exec_seconds_max = 0.0
        self.failures: deque[FailureRecord] = deque(maxlen=keep_failures)

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def state(self) -> ManagerState:
        return self._state

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _open(self) -> None:
        if self._state is ManagerState.CLOSED:
            raise LifecycleError(f"task manager {self.name!r} is closed and cannot reopen")
        self._state = ManagerState.OPEN

    async def aclose(self, timeout: float | None = None) -> list[ManagedTask]:
        """Cancel every task this manager owns and refuse new ones.

        Returns the tasks that did not finish within the timeout (they are logged).
        Safe to call more than once.
        """
        self._state = ManagerState.CLOSED
        return await self.cancel_many(list(self._tasks.values()), timeout=timeout)

    # -- creating -------------------------------------------------------------------------
    def create_task(
        self,
        coro: Coroutine[Any, Any, Any],
        *,
        name: str | None = None,
        group: str | None = None,
    ) -> ManagedTask:
        """Start ``coro`` as a task this manager owns and return its record.

        Names are unique among live tasks: a duplicate gets a numeric suffix. Must be
        called with a running event loop.
        """
        if self._state is ManagerState.CLOSED:
            coro.close()
            raise LifecycleError(f"task manager {self.name!r} is closed")
        base: str = name or getattr(coro, "__qualname__", None) or "task"
        task_name = base
        while task_name in self._tasks:  # a caller may itself have used a "name#n" name
            task_name = f"{base}#{next(self._ids)}"
        runner = self._run(coro)
        try:
            task = asyncio.get_running_loop().create_task(runner, name=task_name)
        except BaseException:
            # No loop (or a closed one): close both coroutines so neither warns "never awaited".
            runner.close()
            coro.close()
            raise
        self._state = ManagerState.OPEN
        record = ManagedTask(task_name, group, task, time.monotonic(), _coro=coro)
        self._tasks[task_name] = record
        self._by_task[task] = record
        if group is not None:
            self._by_group.setdefault(group, {})[task_name] = record
        self._created_total += 1
        task.add_done_callback(self._on_done)
        return record

    async def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        task = asyncio.current_task()
        record = self._by_task.get(task) if task is not None else None
        if record is None:  # the record is registered before the first step runs
            return await coro
        record.state = TaskState.RUNNING
        record.started_at = time.monotonic()
        record._coro = None
        return await coro

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        record = self._by_task.pop(task, None)
        if record is None:
            return
        if record.group is not None:
            members = self._by_group.get(record.group)
            if members is not None:
                members.pop(record.name, None)
                if not members:
                    del self._by_group[record.group]
        self._tasks.pop(record.name, None)
        if record._coro is not None:  # cancelled before its first step: never awaited
            record._coro.close()
            record._coro = None
        record.finished_at = time.monotonic()
        if record.started_at is not None:
            elapsed = record.finished_at - record.started_at
            self._exec_count += 1
            self._exec_seconds_total += elapsed
            self._exec_seconds_max = max(self._exec_seconds_max, elapsed)
        if task.cancelled():
            record.state = TaskState.CANCELLED
        elif (error := task.exception()) is not None:
            record.state = TaskState.FAILED
            record.error = error
            record.traceback = "".join(
                traceback.format_exception(type(error), error, error.__traceback__)
            )
            self.failures.append(FailureRecord(
                record.name, record.group, repr(error), record.traceback, time.time(),
            ))
            log.error("task %s failed: %r\n%s", record.name, error, record.traceback)
            if self.on_failure is not None:
                try:
                    self.on_failure(record)
                except Exception:
                    log.exception("on_failure callback for task %s failed", record.name)
        else:
            record.state = TaskState.COMPLETED
        self._counts[record.state] += 1

    # -- cancelling -----------------------------------------------------------------------
    async def cancel_task(
        self, task: ManagedTask | str, *, timeout: float | None = None
    ) -> bool:
        """Cancel one task and wait for it at most ``timeout`` seconds.

        Returns True if it has finished. A task that ignores cancellation stays in state
        cancelling, is logged and counted as stuck, and False is returned. Cancelling the
        caller of this coroutine is safe: the task it was cancelling keeps its cancel request.
        """
        record = self._tasks.get(task) if isinstance(task, str) else task
        if record is None:
            return True
        return not await self.cancel_many([record], timeout=timeout)

    async def cancel_group(self, group: str, *, timeout: float | None = None) -> list[ManagedTask]:
        """Cancel every task of ``group``; returns the ones that did not finish in time."""
        return await self.cancel_many(self.tasks(group=group), timeout=timeout)

    async def cancel_many(
        self, records: Iterable[ManagedTask], *, timeout: float | None = None
    ) -> list[ManagedTask]:
        """Cancel the given tasks together; returns those still running after ``timeout``."""
        current = asyncio.current_task()
        pending = [r for r in records if not r.task.done() and r.task is not current]
        if not pending:
            return []
        for record in pending:
            record.state = TaskState.CANCELLING
            record.task.cancel()
        limit = self.cancel_timeout if timeout is None else timeout
        # On Python 3.11, asyncio.wait_for (used inside redis-py's socket writes) can swallow a
        # cancel that lands as the inner call completes; the task then runs on. So the cancel is
        # repeated at 20% and 50% of the timeout for tasks still running. A task that is still
        # busy with cleanup after 20% of the timeout has that cleanup interrupted: cleanup must
        # be short (STYLE.md: cleanup runs under a timeout).
        waiting = {r.task for r in pending}
        waited = 0.0
        for fraction in _RECANCEL_AT:
            step = limit * fraction - waited
            _, still = await asyncio.wait(waiting, timeout=step)
            waited += step
            if not still or fraction == 1.0:
                break
            for task in still:
                task.cancel()
            waiting = set(still)
        stuck = [r for r in pending if not r.task.done()]
        for record in stuck:
            self._stuck_total += 1
            log.warning("task %s ignored cancellation for %.1fs; leaving it", record.name, limit)
        return stuck

    # -- looking ----------------------------------------------------------------------------
    def get(self, name: str) -> ManagedTask | None:
        return self._tasks.get(name)

    def tasks(self, *, group: str | None = None) -> list[ManagedTask]:
        """Live (not yet finished) tasks, optionally of one group."""
        if group is None:
            return list(self._tasks.values())
        return list(self._by_group.get(group, {}).values())

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self, task: ManagedTask | str, timeout: float | None = None) -> bool:
        """Wait for a task to finish (without cancelling it); True if it did."""
        record = self._tasks.get(task) if isinstance(task, str) else task
        if record is None:
            return True
        done, _ = await asyncio.wait([record.task], timeout=timeout)
        return bool(done)

    def metrics(self) -> dict[str, Any]:
        """Counts by state, execution time and error rate of everything this manager ran."""
        live = {TaskState.PENDING: 0, TaskState.RUNNING: 0, TaskState.CANCELLING: 0}
        for record in self._tasks.values():
            if record.state in live:
                live[record.state] += 1
        finished = sum(self._counts.values())
        by_state = {s.value: n for s, n in {**live, **self._counts}.items()}
        return {
            "tasks_by_state": by_state,
            "tasks_live": len(self._tasks),
            "tasks_created_total": self._created_total,
            "tasks_finished_total": finished,
            "tasks_stuck_total": self._stuck_total,
            "task_exec_seconds_total": self._exec_seconds_total,
            "task_exec_seconds_max": self._exec_seconds_max,
            # Averaged over tasks that ran: one cancelled before its first step has no time.
            "task_exec_seconds_avg": (
                self._exec_seconds_total / self._exec_count if self._exec_count else 0.0
            ),
            "task_error_rate": self._counts[TaskState.FAILED] / finished if finished else 0.0,
        }


async def run_periodically(
    func: Callable[[], Awaitable[None]], interval: float,
    *, clock: Callable[[], float] = time.monotonic,
) -> None:
    """Call ``func`` every ``interval`` seconds on a drift-free schedule, forever.

    A call that overruns skips the ticks it missed rather than bunching them up. Errors
    propagate (the owning TaskManager records them). Cancelling is safe.
    """
    if not interval > 0:  # 0 would spin the loop (and divide by zero below); NaN never sleeps
        raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
    next_at = clock()
    while True:
        await func()
        next_at += interval
        now = clock()
        if next_at <= now:
            next_at = now + interval - ((now - next_at) % interval)
        await asyncio.sleep(next_at - now)
