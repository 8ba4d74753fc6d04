"""ConnectionManager: the state machine and owned resources (queues, tasks) of each client.

Whatever ends a connection (``disconnect()``, a crashed handler, a task that fails, the client
vanishing), its tasks are cancelled, its queues drained and its entry removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import inspect
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Self

from hub.errors import (
    CapacityError,
    ConfigError,
    InvalidTransition,
    LifecycleError,
    ValidationError,
)
from hub.tasks import DEFAULT_CANCEL_TIMEOUT, ManagedTask, ManagerState, TaskManager, TaskState

log = logging.getLogger(__name__)


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTING = "disconnecting"
    DISCONNECTED = "disconnected"
    ERROR = "error"


_S = ConnectionState
TRANSITIONS: Mapping[ConnectionState, frozenset[ConnectionState]] = MappingProxyType({
    _S.CONNECTING: frozenset({_S.CONNECTED, _S.ERROR, _S.DISCONNECTING}),
    _S.CONNECTED: frozenset({_S.ERROR, _S.DISCONNECTING}),
    _S.ERROR: frozenset({_S.DISCONNECTING}),
    _S.DISCONNECTING: frozenset({_S.DISCONNECTED}),
    _S.DISCONNECTED: frozenset(),
})
"""Every allowed state change; anything else raises InvalidTransition."""

# A connection in these states accepts new queues and tasks.
ACTIVE_STATES = frozenset({_S.CONNECTING, _S.CONNECTED})


@dataclass(eq=False)
class ConnectionInfo:
    """One connection: its state, timings, errors and the resources it owns.

    After the disconnect completes, ``queues`` and ``tasks`` are empty and ``ws`` is None:
    the record keeps no reference to anything the connection used.
    """

    conn_id: str
    ws: Any = field(repr=False)
    group: str = ""  # the TaskManager group of its tasks
    meta: dict[str, Any] = field(default_factory=dict)
    state: ConnectionState = ConnectionState.CONNECTING
    created_at: float = field(default_factory=time.monotonic)
    connected_at: float | None = None
    closed_at: float | None = None
    errors: int = 0
    last_error: str | None = None  # a repr, not the exception: its traceback would pin frames
    reason: str | None = None  # why it was disconnected
    stuck_tasks: list[str] = field(default_factory=list)  # ignored cancellation at disconnect
    queues: dict[str, asyncio.Queue[Any]] = field(default_factory=dict, repr=False)
    tasks: dict[str, ManagedTask] = field(default_factory=dict, repr=False)
    _closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _cleanup_scheduled: bool = field(default=False, repr=False)
    _clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def transition(self, to: ConnectionState) -> None:
        """Move to ``to``, or raise InvalidTransition if TRANSITIONS does not allow it."""
        if to not in TRANSITIONS[self.state]:
            raise InvalidTransition(
                f"connection {self.conn_id}: {self.state.value} -> {to.value} is not allowed"
            )
        self.state = to

    @property
    def duration(self) -> float:
        """Seconds from connect to disconnect (or to now while it lasts)."""
        start = self.connected_at if self.connected_at is not None else self.created_at
        end = self.closed_at if self.closed_at is not None else self._clock()
        return end - start


class ConnectionManager:
    """Tracks connections (keyed by the identity of their ``ws`` object) and owns their resources.

    Per connection: named queues and named tasks. Tasks run in the TaskManager in the
    connection's group (``info.group``, unique per manager and connection). A task that fails
    puts the connection in ERROR and schedules its disconnect; so does one registered with
    ``disconnect_on_exit=True`` when it ends (a reader task ending is how a vanished client
    shows up). A disconnect the manager starts on its own also calls ``ws.close()`` when
    ``ws`` has one, so the handler's receive loop ends.

    Lifecycle: usable at once; ``aclose()`` (or leaving ``async with``) disconnects everything
    and refuses new connections. A TaskManager created here is closed with it; one passed in
    is left open. All methods must be called from the event loop's thread.
    """

    _groups = itertools.count(1)

    def __init__(
        self,
        task_manager: TaskManager | None = None,
        *,
        max_connections: int | None = None,
        cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_connections is not None and max_connections < 1:
            raise ConfigError(f"max_connections must be >= 1 or None, got {max_connections!r}")
        if not cancel_timeout >= 0:
            raise ConfigError(f"cancel_timeout must be >= 0 seconds, got {cancel_timeout!r}")
        self._owns_task_manager = task_manager is None
        self._task_manager = (
            TaskManager(name="connections") if task_manager is None else task_manager
        )
        self.max_connections = max_connections
        self.cancel_timeout = cancel_timeout
        self._clock = clock
        self._state = ManagerState.OPEN
        # Prefix of its connections' task groups (and the group of its cleanup tasks), unique
        # per manager so that managers sharing a TaskManager never cancel each other's tasks.
        self._group = f"connections#{next(self._groups)}"
        self._ids = itertools.count(1)
        self._by_ws: dict[int, ConnectionInfo] = {}  # id(ws): the info holds ws, so ids stay unique
        self._by_conn_id: dict[str, ConnectionInfo] = {}
        self._entered = {state: 0 for state in ConnectionState}
        self._rejected = 0
        self._errors = 0
        self._drained = 0
        self._stuck = 0
        self._duration_count = 0
        self._duration_sum = 0.0
        self._duration_max = 0.0

    @property
    def task_manager(self) -> TaskManager:
        return self._task_manager

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._state is ManagerState.CLOSED:
            raise LifecycleError("connection manager is closed and cannot reopen")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Disconnect every connection (their tasks cancelled together) and refuse new ones.

        Safe to call more than once. Cancelling the caller still releases every connection.
        """
        self._state = ManagerState.CLOSED
        infos = list(self._by_ws.values())
        mine = [info for info in infos if info.state is not ConnectionState.DISCONNECTING]
        for info in mine:
            self._set_state(info, ConnectionState.DISCONNECTING)
            info.reason = info.reason or "connection manager closed"
        try:
            records = [r for info in mine for r in self._task_manager.tasks(group=info.group)]
            stuck = await self._task_manager.cancel_many(records, timeout=self.cancel_timeout)
            self._note_stuck(stuck)
        finally:
            for info in mine:
                self._release(info)
        for info in infos:  # the ones another caller was already disconnecting
            await info._closed.wait()
        if self._owns_task_manager:
            await self._task_manager.aclose()
        else:
            # Cleanup tasks still closing sockets: best effort, the server closes them anyway.
            self._note_stuck(
                await self._task_manager.cancel_group(self._group, timeout=self.cancel_timeout)
            )

    # -- connecting -----------------------------------------------------------------------
    async def connect(self, ws: Any, *, conn_id: str | None = None, **meta: Any) -> ConnectionInfo:
        """Register ``ws`` as a connection: CONNECTING, then CONNECTED.

        Raises CapacityError at the cap (nothing is registered), InvalidTransition if ``ws``
        is already connected, ValidationError if ``conn_id`` is in use, LifecycleError after
        ``aclose()``. ``meta`` is kept on the ConnectionInfo.
        """
        if self._state is ManagerState.CLOSED:
            raise LifecycleError("connection manager is closed")
        existing = self._by_ws.get(id(ws))
        if existing is not None:
            raise InvalidTransition(
                f"connection {existing.conn_id} is {existing.state.value}: cannot connect again"
            )
        if self.max_connections is not None and len(self._by_ws) >= self.max_connections:
            self._rejected += 1
            raise CapacityError(f"connection limit reached ({self.max_connections})")
        if conn_id is None:
            conn_id = f"conn-{next(self._ids)}"
            while conn_id in self._by_conn_id:
                conn_id = f"conn-{next(self._ids)}"
        elif conn_id in self._by_conn_id:
            raise ValidationError(f"connection id {conn_id!r} is already in use")
        info = ConnectionInfo(
            conn_id, ws, f"{self._group}/{conn_id}", dict(meta),
            created_at=self._clock(), _clock=self._clock,
        )
        self._by_ws[id(ws)] = info
        self._by_conn_id[conn_id] = info
        self._entered[ConnectionState.CONNECTING] += 1
        self._set_state(info, ConnectionState.CONNECTED)
        info.connected_at = self._clock()
        return info

    async def disconnect(self, ws: Any, *, reason: str | None = None) -> ConnectionInfo | None:
        """Disconnect ``ws``: cancel its tasks (waiting at most ``cancel_timeout``), drain its
        queues, and remove it. Returns its final record, or None if it was not connected.

        Idempotent; a second caller during a disconnect waits for it to finish. Never raises
        for a vanished client (it does no I/O on ``ws``). Cancelling the caller is safe: the
        connection is still released, its tasks still cancelled.
        """
        info = self._by_ws.get(id(ws))
        if info is None:
            return None
        await self._disconnect(info, reason)
        return info

    @contextlib.asynccontextmanager
    async def connection(
        self, ws: Any, *, conn_id: str | None = None, **meta: Any
    ) -> AsyncIterator[ConnectionInfo]:
        """``async with manager.connection(ws) as info:`` connects, and always disconnects.

        An exception in the body marks the connection ERROR first, then propagates.
        """
        info = await self.connect(ws, conn_id=conn_id, **meta)
        try:
            yield info
        except Exception as exc:
            self.mark_error(ws, exc)
            raise
        finally:
            await self.disconnect(ws, reason=None)

    def mark_error(self, ws: Any, exc: BaseException | str) -> bool:
        """Record an error on ``ws``; a connecting or connected one moves to ERROR.

        An error during a disconnect is only counted. Returns False if ``ws`` is unknown.
        The caller still decides when to disconnect.
        """
        info = self._by_ws.get(id(ws))
        if info is None:
            return False
        self._record_error(info, exc)
        return True

    # -- resources ------------------------------------------------------------------------
    async def register_queue(self, ws: Any, queue: asyncio.Queue[Any], name: str) -> None:
        """Give ``queue`` to the connection: it is drained and dropped at disconnect.

        Raises LifecycleError if the connection is unknown or not active, ValidationError if
        another queue has that name.
        """
        info = self._active(ws, f"register queue {name!r}")
        current = info.queues.get(name)
        if current is not None and current is not queue:
            raise ValidationError(f"connection {info.conn_id} already has a queue {name!r}")
        info.queues[name] = queue

    async def unregister_queue(self, ws: Any, name: str) -> asyncio.Queue[Any] | None:
        """Take a queue back from the connection, undrained; None if there is none."""
        info = self._by_ws.get(id(ws))
        if info is None:
            return None
        return info.queues.pop(name, None)

    async def register_task(
        self,
        ws: Any,
        name: str,
        coro: Coroutine[Any, Any, Any],
        *,
        disconnect_on_exit: bool = False,
    ) -> ManagedTask:
        """Run ``coro`` as a task of the connection, cancelled at disconnect.

        If it fails, the connection moves to ERROR and is disconnected. With
        ``disconnect_on_exit`` it is disconnected also when the task ends normally (use it
        for the task that reads from the client). On an unknown or inactive connection, or a
        name already running, ``coro`` is closed and LifecycleError / ValidationError raised.
        """
        try:
            info = self._active(ws, f"register task {name!r}")
            running = info.tasks.get(name)
            if running is not None and not running.done():
                raise ValidationError(f"connection {info.conn_id} already runs a task {name!r}")
        except BaseException:
            coro.close()  # never started: close it so it does not warn "never awaited"
            raise
        record = self._task_manager.create_task(
            coro, name=f"{info.conn_id}/{name}", group=info.group
        )
        info.tasks[name] = record
        # Runs after the TaskManager's own callback, so record.state is final by then.
        record.task.add_done_callback(
            functools.partial(self._on_task_done, info, name, record, disconnect_on_exit)
        )
        return record

    async def cancel_task(self, ws: Any, name: str, *, timeout: float | None = None) -> bool:
        """Cancel one task of the connection (its end does not disconnect it).

        Returns True if it is finished (or was not there), False if it ignored cancellation
        for ``timeout`` (default ``cancel_timeout``). Cancelling the caller is safe.
        """
        info = self._by_ws.get(id(ws))
        record = info.tasks.pop(name, None) if info is not None else None
        if record is None:
            return True
        limit = self.cancel_timeout if timeout is None else timeout
        return await self._task_manager.cancel_task(record, timeout=limit)

    # -- looking ----------------------------------------------------------------------------
    def get(self, ws: Any) -> ConnectionInfo | None:
        return self._by_ws.get(id(ws))

    def state(self, ws: Any) -> ConnectionState | None:
        """The connection's state; None once it is removed (or was never connected)."""
        info = self._by_ws.get(id(ws))
        return info.state if info is not None else None

    def connections(self) -> list[ConnectionInfo]:
        return list(self._by_ws.values())

    def __len__(self) -> int:
        return len(self._by_ws)

    def metrics(self) -> dict[str, Any]:
        """Connections by state (now and entered ever), durations, errors, rejections."""
        by_state = {state.value: 0 for state in ConnectionState}
        for info in self._by_ws.values():
            by_state[info.state.value] += 1
        count = self._duration_count
        return {
            "connections_by_state": by_state,
            "connections_live": len(self._by_ws),
            "connections_entered_total": {s.value: n for s, n in self._entered.items()},
            "connections_opened_total": self._entered[ConnectionState.CONNECTED],
            "connections_closed_total": self._entered[ConnectionState.DISCONNECTED],
            "connections_rejected_total": self._rejected,
            "connection_errors_total": self._errors,
            "connection_tasks_stuck_total": self._stuck,
            "queue_items_drained_total": self._drained,
            "connection_duration_seconds": {
                "count": count,
                "sum": self._duration_sum,
                "avg": self._duration_sum / count if count else 0.0,
                "max": self._duration_max,
            },
            "max_connections": self.max_connections,
        }

    # -- internals ------------------------------------------------------------------------
    def _active(self, ws: Any, what: str) -> ConnectionInfo:
        info = self._by_ws.get(id(ws))
        if info is None:
            raise LifecycleError(f"cannot {what}: not a connected client")
        if info.state not in ACTIVE_STATES:
            raise LifecycleError(f"cannot {what}: connection {info.conn_id} is {info.state.value}")
        return info

    def _set_state(self, info: ConnectionInfo, to: ConnectionState) -> None:
        info.transition(to)
        self._entered[to] += 1

    def _record_error(self, info: ConnectionInfo, exc: BaseException | str) -> None:
        info.errors += 1
        info.last_error = exc if isinstance(exc, str) else repr(exc)
        self._errors += 1
        if info.state in ACTIVE_STATES:
            self._set_state(info, ConnectionState.ERROR)

    def _note_stuck(self, stuck: list[ManagedTask]) -> None:
        self._stuck += len(stuck)

    async def _disconnect(self, info: ConnectionInfo, reason: str | None) -> None:
        if info.state is ConnectionState.DISCONNECTED:
            return
        if info.state is ConnectionState.DISCONNECTING:
            await info._closed.wait()  # another caller is releasing it
            return
        self._set_state(info, ConnectionState.DISCONNECTING)
        info.reason = reason or info.reason or "disconnect"
        try:
            stuck = await self._task_manager.cancel_group(info.group, timeout=self.cancel_timeout)
            info.stuck_tasks = [record.name for record in stuck]
            self._note_stuck(stuck)
        finally:
            self._release(info)

    def _release(self, info: ConnectionInfo) -> None:
        """Drain and drop the queues, forget the tasks, remove the entry: never raises."""
        for queue in info.queues.values():
            self._drained += _drain(queue)
        info.queues.clear()
        info.tasks.clear()
        self._by_ws.pop(id(info.ws), None)
        self._by_conn_id.pop(info.conn_id, None)
        info.closed_at = self._clock()
        duration = info.closed_at - (
            info.connected_at if info.connected_at is not None else info.created_at
        )
        self._duration_count += 1
        self._duration_sum += duration
        self._duration_max = max(self._duration_max, duration)
        self._set_state(info, ConnectionState.DISCONNECTED)
        info.ws = None
        info._closed.set()

    def _on_task_done(
        self,
        info: ConnectionInfo,
        name: str,
        record: ManagedTask,
        disconnect_on_exit: bool,
        _task: asyncio.Task[Any],
    ) -> None:
        # Still registered means nobody ended it on purpose (cancel_task or disconnect).
        unexpected = info.tasks.get(name) is record
        if unexpected:
            del info.tasks[name]
        if record.state is TaskState.FAILED:
            # During a disconnect this only counts; on a live connection it means ERROR.
            error = record.error if record.error is not None else "task failed"
            self._record_error(info, error)
        elif not (unexpected and disconnect_on_exit):
            return  # its end means nothing for the connection
        if info.state in (ConnectionState.ERROR, *ACTIVE_STATES):
            self._schedule_disconnect(info, f"task {name} {record.state.value}")

    def _schedule_disconnect(self, info: ConnectionInfo, reason: str) -> None:
        if info._cleanup_scheduled:
            return
        info._cleanup_scheduled = True
        try:
            self._task_manager.create_task(
                self._disconnect_and_close(info, reason),
                name=f"{info.conn_id}/disconnect", group=self._group,
            )
        except LifecycleError:
            # The TaskManager is closing: it is cancelling the connection's tasks itself.
            log.warning("cannot schedule disconnect of %s: task manager closed", info.conn_id)

    async def _disconnect_and_close(self, info: ConnectionInfo, reason: str) -> None:
        ws = info.ws
        await self._disconnect(info, reason)
        if ws is not None:
            await self._close_ws(info.conn_id, ws)

    async def _close_ws(self, conn_id: str, ws: Any) -> None:
        close = getattr(ws, "close", None)
        if not callable(close):
            return
        try:
            async with asyncio.timeout(self.cancel_timeout):
                result = close()
                if inspect.isawaitable(result):
                    await result
        except Exception as exc:  # a vanished client cannot be closed politely; that is fine
            log.debug("closing %s after its disconnect failed: %r", conn_id, exc)


def _drain(queue: asyncio.Queue[Any]) -> int:
    """Empty ``queue`` without waiting; returns how many items it dropped."""
    dropped = 0
    while True:
        try:
            queue.get_nowait()
        except asyncio.QueueEmpty:
            return dropped
        dropped += 1
        with contextlib.suppress(ValueError):  # a consumer already marked it done
            queue.task_done()
