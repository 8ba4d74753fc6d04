"""The origin document's three components, end to end: its usage verbatim over a real
websockets server, their essentials, and a 10,000-cycle leak test."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
import weakref
from typing import Any

import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from hub import (
    CapacityError,
    ConnectionManager,
    ConnectionState,
    InvalidTransition,
    LifecycleError,
    ManagedTask,
    MetricsService,
    MetricsType,
    TaskManager,
    TaskState,
)
from tests.waiting import eventually


def state_of(record: ManagedTask) -> TaskState:
    """The state now (a function call, so mypy does not keep an earlier narrowing)."""
    return record.state


def system_metrics_collector() -> dict[str, float]:
    """The origin's collector: a few host metrics (non-blocking psutil calls)."""
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": psutil.virtual_memory().percent,
    }


async def message_consumer(ws: ServerConnection, metrics_queue: asyncio.Queue[Any]) -> None:
    """The origin's consumer: sends each queued metrics message to the client as JSON."""
    while True:
        message = await metrics_queue.get()
        await ws.send(json.dumps(message))
        metrics_queue.task_done()


async def test_origin_usage_verbatim_over_real_websockets() -> None:
    """The origin document's usage, unchanged but for the import line, serves metrics JSON to a
    real websockets client, and once the client leaves nothing is left behind."""
    baseline = asyncio.all_tasks()

    # ---- from the origin document, as written (import line: `from hub import ...` above) ----
    # Initialize components
    task_manager = TaskManager()
    connection_manager = ConnectionManager(task_manager)
    metrics_service = MetricsService()

    # Register metrics collectors
    metrics_service.register_collector(
        MetricsType.SYSTEM,
        system_metrics_collector
    )

    # Start metrics service
    await metrics_service.start()

    # Handle WebSocket connection
    async def handle_websocket(ws):  # type: ignore[no-untyped-def]
        # Register connection
        await connection_manager.connect(ws)

        # Create a queue for this connection
        metrics_queue = asyncio.Queue(maxsize=100)  # type: ignore[var-annotated]

        # Register queue with metrics service
        await metrics_service.register_subscriber(metrics_queue)

        # Register queue with connection manager
        await connection_manager.register_queue(ws, metrics_queue, "metrics_queue")

        # Start message consumer task
        await connection_manager.register_task(
            ws,
            "message_consumer",
            message_consumer(ws, metrics_queue)
        )

        # Handle disconnection
        try:
            # Handle messages...
            async for _message in ws:  # (the origin leaves this part to the reader)
                pass
        finally:
            await connection_manager.disconnect(ws)
            await metrics_service.unregister_subscriber(metrics_queue)
    # ---- end of the origin document's code ----

    async with serve(handle_websocket, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", proxy=None) as client:
            first = json.loads(await asyncio.wait_for(client.recv(), 5))
            second = json.loads(await asyncio.wait_for(client.recv(), 5))
            for message in (first, second):
                assert message["type"] == "system"
                assert set(message["data"]) == {"cpu_percent", "memory_percent"}
                assert abs(message["ts"] - time.time()) < 60
            assert second["ts"] > first["ts"]
            assert len(connection_manager) == 1
            assert len(metrics_service) == 1
            assert len(task_manager) == 1  # the consumer
        # The client is gone: its connection, tasks and subscription must be too.
        await eventually(
            lambda: len(connection_manager) == 0
            and len(metrics_service) == 0
            and len(task_manager) == 0
        )
        assert connection_manager.metrics()["connections_closed_total"] == 1

    await metrics_service.stop()
    await connection_manager.aclose()
    await task_manager.aclose()
    await eventually(lambda: asyncio.all_tasks() == baseline)


async def test_vanished_client_is_cleaned_up() -> None:
    """A client whose TCP connection is cut without a close frame leaves no connection, task
    or subscriber behind."""
    baseline = asyncio.all_tasks()
    async with TaskManager() as task_manager, MetricsService(
        task_manager=task_manager, default_throttle=0
    ) as metrics_service:
        connection_manager = ConnectionManager(task_manager)

        async def handler(ws: ServerConnection) -> None:
            metrics_queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=100)
            async with connection_manager.connection(ws):
                await metrics_service.register_subscriber(metrics_queue)
                try:
                    await connection_manager.register_queue(ws, metrics_queue, "metrics")
                    await connection_manager.register_task(
                        ws, "message_consumer", message_consumer(ws, metrics_queue)
                    )
                    async for _message in ws:
                        pass
                finally:
                    await metrics_service.unregister_subscriber(metrics_queue)

        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            client = await connect(f"ws://127.0.0.1:{port}", proxy=None)
            metrics_service.publish(MetricsType.GATEWAY, {"up": 1})
            assert json.loads(await asyncio.wait_for(client.recv(), 5))["data"] == {"up": 1}
            client.transport.abort()  # the client vanishes
            await eventually(
                lambda: len(connection_manager) == 0 and len(metrics_service) == 0
            )
            # only the metrics service's own flush task is left
            await eventually(lambda: [r.name for r in task_manager.tasks()] == ["metrics:flush"])
        await connection_manager.aclose()
    await eventually(lambda: asyncio.all_tasks() == baseline)


# -- essentials of each component ----------------------------------------------------------

async def test_task_manager_essentials() -> None:
    """TaskManager: states, cancellation with a timeout that reports a stuck task, failures
    with traceback, metrics, and a lifecycle that refuses reuse."""
    task_manager = TaskManager()
    release = asyncio.Event()
    started = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # deliberately ignores cancellation

    async def fails() -> None:
        raise ValueError("bad")

    stuck = task_manager.create_task(stubborn(), name="stubborn")
    failed = task_manager.create_task(fails(), name="fails")
    assert stuck.state is TaskState.PENDING
    await started.wait()
    assert state_of(stuck) is TaskState.RUNNING
    assert await task_manager.cancel_task(stuck, timeout=0.05) is False
    assert state_of(stuck) is TaskState.CANCELLING
    assert await task_manager.wait(failed, timeout=5)
    assert failed.state is TaskState.FAILED
    assert "ValueError: bad" in (failed.traceback or "")
    release.set()
    assert await task_manager.wait(stuck, timeout=5)
    metrics = task_manager.metrics()
    assert metrics["tasks_stuck_total"] == 1
    assert metrics["tasks_by_state"]["failed"] == 1
    assert metrics["task_error_rate"] == 0.5
    await task_manager.aclose()
    with pytest.raises(LifecycleError):
        task_manager.create_task(asyncio.sleep(0))


async def test_connection_manager_essentials() -> None:
    """ConnectionManager: the state machine, the cap, and a disconnect that cancels tasks and
    drains queues."""
    async with ConnectionManager(max_connections=1) as connection_manager:
        ws = object()
        info = await connection_manager.connect(ws)
        assert connection_manager.state(ws) is ConnectionState.CONNECTED
        with pytest.raises(CapacityError):
            await connection_manager.connect(object())
        with pytest.raises(InvalidTransition):
            info.transition(ConnectionState.CONNECTING)
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=5)
        queue.put_nowait(1)
        await connection_manager.register_queue(ws, queue, "q")
        task = await connection_manager.register_task(ws, "t", asyncio.Event().wait())
        await connection_manager.disconnect(ws)
        assert info.state is ConnectionState.DISCONNECTED
        assert task.state is TaskState.CANCELLED
        assert queue.empty()
        assert len(connection_manager) == 0


async def test_metrics_service_essentials() -> None:
    """MetricsService: TTL cache with hit/miss counts, per-type throttle with conflation, and
    backpressure that drops the oldest for the newest without blocking."""
    now = 0.0
    async with MetricsService(clock=lambda: now, default_ttl=2, default_throttle=1) as service:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        await service.register_subscriber(queue)
        assert service.publish(MetricsType.SYSTEM, 1) == 1
        assert service.publish(MetricsType.SYSTEM, 2) == 0  # held: same window
        assert service.publish(MetricsType.SYSTEM, 3) == 0  # conflated: replaces 2
        now = 1.0
        assert service.flush_due() == 1  # 3 replaces 1 in the full queue
        assert queue.get_nowait()["data"] == 3
        assert service.get(MetricsType.SYSTEM) == 3
        now = 3.5
        assert service.get(MetricsType.SYSTEM) is None
        metrics = service.metrics()
        assert metrics["cache_hit_rate"] == 0.5
        assert metrics["dropped_total"] == 1
        assert metrics["conflated_total"] == 1


# -- the leak test -------------------------------------------------------------------------

class FakeWs:
    """A stand-in websocket (identity only), weakly referenceable to prove it is released."""

    def __init__(self) -> None:
        self.sent = 0


class HandlerCrash(Exception):
    """A handler bug, on purpose."""


class ConsumerCrash(Exception):
    """A consumer-task bug, on purpose."""


CYCLES = 10_000
CONCURRENCY = 50


async def test_leak_10000_connect_register_disconnect_cycles() -> None:
    """10,000 connect/register/disconnect cycles, with queues, two tasks each, crashing
    handlers, crashing consumers and vanishing readers, leave no task, queue, connection,
    subscriber or websocket reference behind."""
    baseline = asyncio.all_tasks()
    task_manager = TaskManager(name="hub")
    server_tasks = TaskManager(name="server")  # owns the handlers, as a server would
    connection_manager = ConnectionManager(task_manager, cancel_timeout=1.0)
    metrics_service = MetricsService(task_manager=task_manager, default_throttle=0)
    await metrics_service.start()
    sample_refs: list[weakref.ref[FakeWs]] = []
    queues_seen: list[weakref.ref[asyncio.Queue[Any]]] = []

    async def consumer(ws: FakeWs, queue: asyncio.Queue[Any], crash: bool) -> None:
        while True:
            await queue.get()
            if crash:
                raise ConsumerCrash("consumer bug")
            ws.sent += 1

    async def reader(vanish: bool) -> None:
        if vanish:
            return  # the client went away: the read loop ends
        await asyncio.Event().wait()

    async def handler(i: int) -> None:
        ws = FakeWs()
        if i % 500 == 0:
            sample_refs.append(weakref.ref(ws))
        await connection_manager.connect(ws)
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=8)
        if i % 500 == 0:
            queues_seen.append(weakref.ref(queue))
        await metrics_service.register_subscriber(queue)
        try:
            await connection_manager.register_queue(ws, queue, "metrics_queue")
            await connection_manager.register_task(
                ws, "message_consumer", consumer(ws, queue, crash=i % 7 == 0)
            )
            await connection_manager.register_task(
                ws, "reader", reader(vanish=i % 13 == 0), disconnect_on_exit=True
            )
            if i % 5 == 0:
                metrics_service.publish(MetricsType.SYSTEM, {"i": i})
            await asyncio.sleep(0)
            if i % 11 == 0:
                raise HandlerCrash(f"handler {i}")
            await asyncio.sleep(0)
        finally:
            await connection_manager.disconnect(ws)
            await metrics_service.unregister_subscriber(queue)

    hub_log = logging.getLogger("hub")
    level = hub_log.level
    hub_log.setLevel(logging.CRITICAL)  # thousands of deliberate crashes would flood the log
    started = time.perf_counter()
    try:
        for first in range(0, CYCLES, CONCURRENCY):
            batch = [
                server_tasks.create_task(handler(i), name="handler")
                for i in range(first, first + CONCURRENCY)
            ]
            await asyncio.wait([record.task for record in batch])
            del batch
        await eventually(lambda: [r.name for r in task_manager.tasks()] == ["metrics:flush"])
    finally:
        hub_log.setLevel(level)
    elapsed = time.perf_counter() - started

    assert len(connection_manager) == 0
    assert len(metrics_service) == 0
    assert len(server_tasks) == 0
    cm_metrics = connection_manager.metrics()
    assert cm_metrics["connections_opened_total"] == CYCLES
    assert cm_metrics["connections_closed_total"] == CYCLES
    assert cm_metrics["connections_entered_total"]["error"] > 0  # consumer crashes were seen
    assert cm_metrics["connection_tasks_stuck_total"] == 0
    assert server_tasks.metrics()["tasks_by_state"]["failed"] > 0  # handler crashes too
    assert metrics_service.metrics()["delivered_total"] > 0

    await metrics_service.stop()
    await connection_manager.aclose()
    await task_manager.aclose()
    await server_tasks.aclose()
    assert len(task_manager) == 0
    await eventually(lambda: asyncio.all_tasks() == baseline)
    gc.collect()
    assert sample_refs
    assert all(ref() is None for ref in sample_refs)
    assert queues_seen
    assert all(ref() is None for ref in queues_seen)
    assert elapsed < 20, f"{CYCLES} cycles took {elapsed:.1f}s"
