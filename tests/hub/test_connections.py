"""ConnectionManager: the state machine, owned queues and tasks, cleanup on every path, metrics."""

from __future__ import annotations

import asyncio
import inspect
import itertools

import pytest

from hub.connections import TRANSITIONS, ConnectionInfo, ConnectionManager, ConnectionState
from hub.errors import (
    CapacityError,
    ConfigError,
    InvalidTransition,
    LifecycleError,
    ValidationError,
)
from hub.tasks import ManagerState, TaskManager, TaskState
from tests.waiting import eventually

S = ConnectionState
VALID = {
    (S.CONNECTING, S.CONNECTED), (S.CONNECTING, S.ERROR), (S.CONNECTING, S.DISCONNECTING),
    (S.CONNECTED, S.ERROR), (S.CONNECTED, S.DISCONNECTING),
    (S.ERROR, S.DISCONNECTING),
    (S.DISCONNECTING, S.DISCONNECTED),
}


class FakeWs:
    """Stands in for a websocket: records whether close() was called."""

    def __init__(self) -> None:
        self.closed = 0

    async def close(self) -> None:
        self.closed += 1


def state_of(info: ConnectionInfo) -> ConnectionState:
    """The state now (a function call, so mypy does not keep an earlier narrowing)."""
    return info.state


async def idle() -> None:
    await asyncio.Event().wait()


def test_transition_table_is_exactly_the_documented_one() -> None:
    """TRANSITIONS allows exactly the documented state changes and covers every state."""
    assert set(TRANSITIONS) == set(ConnectionState)
    allowed = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert allowed == VALID


@pytest.mark.parametrize(
    ("start", "to"), list(itertools.product(ConnectionState, ConnectionState))
)
def test_every_transition(start: ConnectionState, to: ConnectionState) -> None:
    """Each valid transition moves the state; each invalid one raises and changes nothing."""
    info = ConnectionInfo("c", object(), state=start)
    if (start, to) in VALID:
        info.transition(to)
        assert info.state is to
    else:
        with pytest.raises(InvalidTransition, match=f"{start.value} -> {to.value}"):
            info.transition(to)
        assert info.state is start


async def test_connect_and_disconnect_walk_the_states() -> None:
    """connect enters connecting then connected; disconnect enters disconnecting then
    disconnected, and removes the entry."""
    async with ConnectionManager() as cm:
        ws = object()
        info = await cm.connect(ws, conn_id="c1", user="ann")
        assert info.state is S.CONNECTED
        assert cm.state(ws) is S.CONNECTED
        assert cm.get(ws) is info
        assert cm.connections() == [info]
        assert len(cm) == 1
        assert info.meta == {"user": "ann"}
        final = await cm.disconnect(ws, reason="bye")
        assert final is info
        assert state_of(info) is S.DISCONNECTED
        assert info.reason == "bye"
        assert info.ws is None
        assert info.closed_at is not None
        assert cm.state(ws) is None
        assert cm.get(ws) is None
        assert len(cm) == 0
        entered = cm.metrics()["connections_entered_total"]
        assert entered == {
            "connecting": 1, "connected": 1, "disconnecting": 1, "disconnected": 1, "error": 0,
        }
        assert await cm.disconnect(ws) is None  # idempotent


async def test_connect_twice_is_an_invalid_transition() -> None:
    """Connecting a ws that is already connected raises InvalidTransition."""
    async with ConnectionManager() as cm:
        ws = object()
        await cm.connect(ws)
        with pytest.raises(InvalidTransition):
            await cm.connect(ws)
        assert len(cm) == 1


async def test_conn_id_must_be_unique_among_live_connections() -> None:
    """A conn_id in use is refused; generated ids skip taken ones."""
    async with ConnectionManager() as cm:
        await cm.connect(object(), conn_id="conn-1")
        with pytest.raises(ValidationError):
            await cm.connect(object(), conn_id="conn-1")
        generated = await cm.connect(object())
        assert generated.conn_id != "conn-1"


async def test_cap_refuses_and_registers_nothing() -> None:
    """Over max_connections connect raises CapacityError, registers nothing, counts it, and a
    freed slot can be used again."""
    async with ConnectionManager(max_connections=2) as cm:
        a, b, c = object(), object(), object()
        await cm.connect(a)
        await cm.connect(b)
        with pytest.raises(CapacityError):
            await cm.connect(c)
        assert cm.get(c) is None
        assert len(cm) == 2
        assert cm.metrics()["connections_rejected_total"] == 1
        await cm.disconnect(a)
        await cm.connect(c)
        assert len(cm) == 2


def test_bad_settings_rejected() -> None:
    """A cap below 1 or a negative cancel timeout is refused."""
    with pytest.raises(ConfigError, match="max_connections"):
        ConnectionManager(max_connections=0)
    with pytest.raises(ConfigError, match="cancel_timeout"):
        ConnectionManager(cancel_timeout=-1)


async def test_disconnect_cancels_tasks_and_drains_queues() -> None:
    """disconnect cancels every registered task and empties every registered queue."""
    async with TaskManager() as tm, ConnectionManager(tm) as cm:
        ws = object()
        await cm.connect(ws)
        q1: asyncio.Queue[int] = asyncio.Queue(maxsize=10)
        q2: asyncio.Queue[int] = asyncio.Queue()
        for i in range(5):
            q1.put_nowait(i)
            q2.put_nowait(i)
        await cm.register_queue(ws, q1, "q1")
        await cm.register_queue(ws, q2, "q2")
        t1 = await cm.register_task(ws, "t1", idle())
        t2 = await cm.register_task(ws, "t2", idle())
        info = cm.get(ws)
        assert info is not None
        assert set(info.tasks) == {"t1", "t2"}
        assert t1.group == info.group
        assert t1.name.endswith("/t1")
        await cm.disconnect(ws)
        assert t1.state is TaskState.CANCELLED
        assert t2.state is TaskState.CANCELLED
        assert q1.empty()
        assert q2.empty()
        await asyncio.wait_for(q2.join(), 1)  # drained items are marked done
        assert info.queues == {}
        assert info.tasks == {}
        assert len(tm) == 0
        assert cm.metrics()["queue_items_drained_total"] == 10


async def test_register_on_unknown_or_inactive_connection_closes_coroutine() -> None:
    """register_task on an unknown, errored or disconnected connection raises and closes the
    coroutine; register_queue raises too."""
    async with ConnectionManager() as cm:
        ws = object()
        coro = idle()
        with pytest.raises(LifecycleError):
            await cm.register_task(ws, "t", coro)
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
        with pytest.raises(LifecycleError):
            await cm.register_queue(ws, asyncio.Queue(1), "q")

        await cm.connect(ws)
        cm.mark_error(ws, RuntimeError("x"))
        coro = idle()
        with pytest.raises(LifecycleError, match="error"):
            await cm.register_task(ws, "t", coro)
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
        await cm.disconnect(ws)
        assert len(cm.task_manager) == 0


async def test_duplicate_names_refused() -> None:
    """A live task name or another queue under a used name is refused; the same queue again
    is fine, and a finished task's name can be reused."""
    async with ConnectionManager() as cm:
        ws = object()
        await cm.connect(ws)
        await cm.register_task(ws, "t", idle())
        coro = idle()
        with pytest.raises(ValidationError):
            await cm.register_task(ws, "t", coro)
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
        q: asyncio.Queue[int] = asyncio.Queue(1)
        await cm.register_queue(ws, q, "q")
        await cm.register_queue(ws, q, "q")
        with pytest.raises(ValidationError):
            await cm.register_queue(ws, asyncio.Queue(1), "q")
        done = await cm.register_task(ws, "quick", asyncio.sleep(0))
        await cm.task_manager.wait(done, timeout=5)
        await cm.register_task(ws, "quick", idle())
        await cm.disconnect(ws)


async def test_unregister_queue_returns_it_undrained() -> None:
    """unregister_queue hands the queue back with its items; disconnect no longer touches it."""
    async with ConnectionManager() as cm:
        ws = object()
        await cm.connect(ws)
        q: asyncio.Queue[int] = asyncio.Queue()
        q.put_nowait(1)
        await cm.register_queue(ws, q, "q")
        assert await cm.unregister_queue(ws, "q") is q
        assert await cm.unregister_queue(ws, "q") is None
        await cm.disconnect(ws)
        assert q.qsize() == 1
        assert await cm.unregister_queue(ws, "q") is None


async def test_failing_task_errors_and_disconnects_the_connection() -> None:
    """A registered task that raises puts the connection in ERROR, counts the error, and the
    manager disconnects it (closing the ws) with its other tasks cancelled."""
    async with ConnectionManager() as cm:
        ws = FakeWs()
        info = await cm.connect(ws)
        other = await cm.register_task(ws, "other", idle())
        q: asyncio.Queue[int] = asyncio.Queue()
        q.put_nowait(1)
        await cm.register_queue(ws, q, "q")
        fail = asyncio.Event()

        async def crashes() -> None:
            await fail.wait()
            raise RuntimeError("handler bug")

        await cm.register_task(ws, "crashes", crashes())
        fail.set()
        await eventually(lambda: cm.get(ws) is None and ws.closed == 1)
        assert info.state is S.DISCONNECTED
        assert info.errors == 1
        assert "handler bug" in (info.last_error or "")
        assert info.reason == "task crashes failed"
        assert other.state is TaskState.CANCELLED
        assert q.empty()
        metrics = cm.metrics()
        assert metrics["connection_errors_total"] == 1
        assert metrics["connections_entered_total"]["error"] == 1
        await eventually(lambda: len(cm.task_manager) == 0)


async def test_reader_ending_disconnects_vanished_client() -> None:
    """A task registered with disconnect_on_exit that returns (the client went away) leads to
    a disconnect; a task without the flag may end without consequence."""
    async with ConnectionManager() as cm:
        ws = FakeWs()
        info = await cm.connect(ws)
        plain = await cm.register_task(ws, "plain", asyncio.sleep(0))
        # wait() returns after the manager's done callback (registered earlier) has run
        await cm.task_manager.wait(plain, timeout=5)
        assert cm.state(ws) is S.CONNECTED
        assert "plain" not in info.tasks  # finished tasks are forgotten

        gone = asyncio.Event()

        async def reader() -> None:
            await gone.wait()  # stands for "async for message in ws" ending

        await cm.register_task(ws, "reader", reader(), disconnect_on_exit=True)
        gone.set()
        await eventually(lambda: cm.get(ws) is None)
        assert info.errors == 0
        assert info.reason == "task reader completed"
        await eventually(lambda: len(cm.task_manager) == 0)


async def test_cancel_task_does_not_disconnect() -> None:
    """cancel_task stops one task, even a disconnect_on_exit one, and the connection stays."""
    async with ConnectionManager() as cm:
        ws = object()
        await cm.connect(ws)
        record = await cm.register_task(ws, "reader", idle(), disconnect_on_exit=True)
        assert await cm.cancel_task(ws, "reader", timeout=5) is True
        assert record.state is TaskState.CANCELLED  # and the done callbacks have run
        assert cm.state(ws) is S.CONNECTED
        assert await cm.cancel_task(ws, "reader") is True  # already gone
        await cm.disconnect(ws)


async def test_stuck_task_is_reported_and_connection_still_removed() -> None:
    """A task that ignores cancellation delays disconnect by cancel_timeout only; it is
    reported, the entry is still removed, and it is let finish afterwards."""
    async with ConnectionManager(cancel_timeout=0.05) as cm:
        ws = object()
        info = await cm.connect(ws)
        release = asyncio.Event()
        started = asyncio.Event()

        async def stubborn() -> None:
            started.set()
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    continue  # deliberately ignores the cancel

        record = await cm.register_task(ws, "stubborn", stubborn())
        await started.wait()
        await asyncio.wait_for(cm.disconnect(ws), 2)
        assert cm.get(ws) is None
        assert info.state is S.DISCONNECTED
        assert info.stuck_tasks == [record.name]
        assert cm.metrics()["connection_tasks_stuck_total"] == 1
        assert record.state is TaskState.CANCELLING
        release.set()
        assert await cm.task_manager.wait(record, timeout=5)
        assert len(cm.task_manager) == 0


async def test_cancelled_disconnect_still_releases() -> None:
    """Cancelling the caller of disconnect still removes the entry and drains the queues;
    a concurrent disconnect waits for the first one."""
    async with ConnectionManager(cancel_timeout=5) as cm:
        ws = object()
        await cm.connect(ws)
        release = asyncio.Event()
        started = asyncio.Event()

        async def slow_to_stop() -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            finally:
                await release.wait()  # cleanup that takes a while

        q: asyncio.Queue[int] = asyncio.Queue()
        q.put_nowait(1)
        await cm.register_queue(ws, q, "q")
        record = await cm.register_task(ws, "slow", slow_to_stop())
        await started.wait()
        first = cm.task_manager.create_task(cm.disconnect(ws), name="first")
        await eventually(lambda: cm.state(ws) is S.DISCONNECTING)
        second = cm.task_manager.create_task(cm.disconnect(ws), name="second")
        await eventually(lambda: second.state is TaskState.RUNNING)
        assert not second.done()  # waits for the first
        await cm.task_manager.cancel_task(first, timeout=5)
        assert cm.get(ws) is None
        assert q.empty()
        assert await cm.task_manager.wait(second, timeout=5)
        release.set()
        assert await cm.task_manager.wait(record, timeout=5)
        assert record.state is TaskState.CANCELLED


async def test_connection_context_manager() -> None:
    """connection() disconnects on exit; an exception in the body marks ERROR first and
    propagates."""
    async with ConnectionManager() as cm:
        ws = object()
        async with cm.connection(ws, conn_id="ctx") as info:
            assert cm.state(ws) is S.CONNECTED
            await cm.register_task(ws, "t", idle())
        assert cm.get(ws) is None
        assert info.state is S.DISCONNECTED
        assert info.errors == 0

        with pytest.raises(KeyError):
            async with cm.connection(ws) as info:
                raise KeyError("body failed")
        assert cm.get(ws) is None
        assert info.errors == 1
        assert cm.metrics()["connections_entered_total"]["error"] == 1
        assert len(cm.task_manager) == 0


async def test_mark_error() -> None:
    """mark_error moves a connected client to ERROR, counts repeats without a transition,
    and returns False for an unknown one."""
    async with ConnectionManager() as cm:
        ws = object()
        assert cm.mark_error(ws, "x") is False
        info = await cm.connect(ws)
        assert cm.mark_error(ws, ValueError("bad frame")) is True
        assert info.state is S.ERROR
        assert info.last_error == "ValueError('bad frame')"
        assert cm.mark_error(ws, "again") is True
        assert info.state is S.ERROR
        assert info.errors == 2
        await cm.disconnect(ws)
        assert cm.metrics()["connection_errors_total"] == 2


async def test_aclose_disconnects_all_and_refuses_new() -> None:
    """aclose disconnects every connection, closes an owned TaskManager, leaves a shared one
    open, and refuses new connections and reuse."""
    shared = TaskManager()
    owned_cm = ConnectionManager()
    shared_cm = ConnectionManager(shared)
    wss = [object() for _ in range(4)]
    for cm in (owned_cm, shared_cm):
        for ws in wss:
            await cm.connect(ws)
            await cm.register_task(ws, "t", idle())
        await cm.aclose()
        assert len(cm) == 0
        with pytest.raises(LifecycleError):
            await cm.connect(object())
        with pytest.raises(LifecycleError):
            async with cm:
                pass
        await cm.aclose()  # idempotent
    assert owned_cm.task_manager.state is ManagerState.CLOSED
    assert shared.state is ManagerState.OPEN
    assert len(shared) == 0
    await shared.aclose()


async def test_managers_sharing_a_task_manager_keep_their_tasks_apart() -> None:
    """Two managers on one TaskManager, both with a 'conn-1', never cancel each other's tasks."""
    async with TaskManager() as tm:
        cm1, cm2 = ConnectionManager(tm), ConnectionManager(tm)
        ws1, ws2 = object(), object()
        assert (await cm1.connect(ws1)).conn_id == (await cm2.connect(ws2)).conn_id
        await cm1.register_task(ws1, "t", idle())
        other = await cm2.register_task(ws2, "t", idle())
        await cm1.disconnect(ws1)
        assert not other.done()
        await cm2.aclose()
        await cm1.aclose()


async def test_duration_metrics_with_fake_clock() -> None:
    """Connection durations are measured from connect to disconnect on the given clock."""
    now = 10.0
    async with ConnectionManager(clock=lambda: now) as cm:
        a, b = object(), object()
        await cm.connect(a)
        info_b = await cm.connect(b)
        now = 12.0
        assert info_b.duration == 2.0  # live, on the manager's clock
        await cm.disconnect(a)
        now = 16.0
        await cm.disconnect(b)
        duration = cm.metrics()["connection_duration_seconds"]
        assert duration == {"count": 2, "sum": 8.0, "avg": 4.0, "max": 6.0}
        metrics = cm.metrics()
        assert metrics["connections_opened_total"] == 2
        assert metrics["connections_closed_total"] == 2
        assert metrics["connections_live"] == 0
        assert metrics["connections_by_state"] == {s.value: 0 for s in ConnectionState}
