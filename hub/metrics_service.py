"""MetricsService: collects metrics per type, caches them with a TTL, and fans them out to
subscriber queues, throttled per type and never held up by a slow subscriber.

A subscriber queue receives ``{"type": "<MetricsType value>", "data": <value>, "ts": <epoch s>}``
messages (see ``MetricsMessage``); docs/components.md has the full reference.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self, TypedDict

from hub.errors import ConfigError, LifecycleError, ValidationError
from hub.tasks import ManagedTask, ManagerState, TaskManager, run_periodically
from hub.throttle import Throttle

log = logging.getLogger(__name__)

DEFAULT_TTL = 5.0
DEFAULT_INTERVAL = 1.0
DEFAULT_THROTTLE = 0.1

Collector = Callable[[], Any]
"""A sync callable returning a value, or one returning an awaitable of it (an async def)."""


class MetricsType(enum.StrEnum):
    """The kinds of metrics the service keeps apart (each has its own cache entry and limits)."""

    SYSTEM = "system"  # host metrics: CPU, memory, disks, network
    GATEWAY = "gateway"  # a gateway's own metrics
    TASKS = "tasks"  # TaskManager.metrics()
    CONNECTIONS = "connections"  # ConnectionManager.metrics()
    CACHE = "cache"  # MetricsService.metrics()
    ALERT = "alert"  # alert state changes
    CUSTOM = "custom"  # user-defined collectors


class MetricsMessage(TypedDict):
    """What a subscriber queue receives; one dict is shared by all subscribers: do not mutate."""

    type: str
    data: Any
    ts: float


_MISSING: Final[Any] = object()


@dataclass(eq=False)
class _TypeState:
    mtype: MetricsType
    ttl: float
    throttle: float
    interval: float
    collector: Collector | None = None
    blocking: bool = False
    timeout: float | None = None
    task: ManagedTask | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    message: MetricsMessage | None = None  # the cached value, as it was distributed
    stored_at: float = 0.0  # service clock
    collections: int = 0
    errors: int = 0
    failing: int = 0  # consecutive failures: only the first of a burst is logged


@dataclass(eq=False)
class _Subscriber:
    queue: asyncio.Queue[Any]
    types: frozenset[MetricsType] | None  # None: every type
    delivered: int = 0
    dropped: int = 0


class MetricsService:
    """Collect, cache, throttle and distribute metrics.

    Collectors run one periodic task per type in a TaskManager (the given one, or one the
    service owns and closes in ``stop()``). Values also come in through ``publish()``. Each
    type has a cache TTL, a collection interval and a distribution throttle: at most one
    message per type per throttle interval reaches subscribers, the newest of a window always
    does, by the window's end. Delivery is ``put_nowait``: when a subscriber's queue is full its
    oldest waiting message is dropped (and counted) to make room, so neither the service nor
    the other subscribers ever wait for it.

    Lifecycle: unopened, then ``start()`` (or ``async with``), then ``stop()``; a stopped
    service refuses to start again. All methods must be called from the event loop's thread.
    """

    _groups = itertools.count(1)

    def __init__(
        self,
        *,
        task_manager: TaskManager | None = None,
        default_ttl: float = DEFAULT_TTL,
        default_interval: float = DEFAULT_INTERVAL,
        default_throttle: float = DEFAULT_THROTTLE,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        _check_seconds("default_ttl", default_ttl)
        _check_seconds("default_interval", default_interval, positive=True)
        _check_seconds("default_throttle", default_throttle)
        self._owns_task_manager = task_manager is None
        self._task_manager = (
            TaskManager(name="metrics-service") if task_manager is None else task_manager
        )
        self._group = f"metrics-service#{next(self._groups)}"
        self.default_ttl = default_ttl
        self.default_interval = default_interval
        self.default_throttle = default_throttle
        self._clock = clock
        self._wall_clock = wall_clock
        self._state = ManagerState.UNOPENED
        self._types: dict[MetricsType, _TypeState] = {}
        self._subscribers: dict[asyncio.Queue[Any], _Subscriber] = {}
        self._throttle: Throttle[MetricsType, MetricsMessage] = Throttle(
            default_throttle, clock=clock
        )
        self._wakeup = asyncio.Event()  # a value was newly held: the flusher recomputes its wait
        self._hits = 0
        self._misses = 0
        self._published = 0
        self._conflated = 0
        self._delivered = 0
        self._dropped = 0

    # -- configuration --------------------------------------------------------------------
    def register_collector(
        self,
        mtype: MetricsType | str,
        collector: Collector,
        *,
        interval: float | None = None,
        ttl: float | None = None,
        throttle: float | None = None,
        blocking: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Collect ``mtype`` with ``collector`` every ``interval`` seconds once started.

        A sync collector runs inline on the event loop, so it must be quick (psutil's
        non-blocking calls are); pass ``blocking=True`` to run it in a worker thread instead.
        An async collector is awaited. ``timeout`` bounds one call (a timeout counts as a
        collector error). Registering on a running service starts collecting at once.
        One collector per type: a second one raises ConfigError.
        """
        if self._state is ManagerState.CLOSED:
            raise LifecycleError("metrics service is stopped")
        if not callable(collector):
            raise ConfigError(f"collector for {mtype!r} is not callable: {collector!r}")
        if timeout is not None:
            _check_seconds("timeout", timeout, positive=True)
        existing = self._types.get(_as_type(mtype))
        if existing is not None and existing.collector is not None:
            raise ConfigError(f"metrics type {existing.mtype.value!r} already has a collector")
        state = self._configure(mtype, ttl=ttl, throttle=throttle, interval=interval)
        state.collector = collector
        state.blocking = blocking
        state.timeout = timeout
        if self._state is ManagerState.OPEN:
            self._start_collecting(state)

    async def unregister_collector(self, mtype: MetricsType | str) -> bool:
        """Stop collecting ``mtype`` (its cached value stays until it expires).

        Returns False if it had no collector. Cancelling the caller is safe.
        """
        state = self._types.get(_as_type(mtype))
        if state is None or state.collector is None:
            return False
        state.collector = None
        task, state.task = state.task, None
        if task is not None:
            await self._task_manager.cancel_task(task)
        return True

    def configure(
        self,
        mtype: MetricsType | str,
        *,
        ttl: float | None = None,
        throttle: float | None = None,
        interval: float | None = None,
    ) -> None:
        """Set a type's cache TTL, throttle and collection interval (None keeps the current one).

        Types nobody configured use the service defaults. A new interval applies from the
        next start of the type's collector; a new throttle from the type's next window.
        """
        self._configure(mtype, ttl=ttl, throttle=throttle, interval=interval)

    def _configure(
        self,
        mtype: MetricsType | str,
        *,
        ttl: float | None = None,
        throttle: float | None = None,
        interval: float | None = None,
    ) -> _TypeState:
        key = _as_type(mtype)
        state = self._types.get(key)
        if state is None:
            state = _TypeState(key, self.default_ttl, self.default_throttle, self.default_interval)
            self._types[key] = state
        if ttl is not None:
            _check_seconds("ttl", ttl)
            state.ttl = ttl
        if throttle is not None:
            _check_seconds("throttle", throttle)
            state.throttle = throttle
            self._throttle.set_interval(key, throttle)
        if interval is not None:
            _check_seconds("interval", interval, positive=True)
            state.interval = interval
        return state

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def state(self) -> ManagerState:
        return self._state

    async def start(self) -> None:
        """Start the flush task and one collection task per registered collector.

        Calling it again while running does nothing; after ``stop()`` it raises LifecycleError.
        """
        if self._state is ManagerState.CLOSED:
            raise LifecycleError("metrics service is stopped and cannot restart")
        if self._state is ManagerState.OPEN:
            return
        self._state = ManagerState.OPEN
        self._task_manager.create_task(
            self._flush_loop(), name="metrics:flush", group=self._group
        )
        for state in self._types.values():
            if state.collector is not None:
                self._start_collecting(state)

    async def stop(self) -> None:
        """Cancel the service's tasks (and close its own TaskManager); held values are dropped.

        Subscribers stay registered (unregistering them stays valid) but receive nothing more.
        Safe to call more than once; cancelling the caller leaves the tasks cancelled anyway.
        """
        if self._state is ManagerState.CLOSED:
            return
        self._state = ManagerState.CLOSED
        self._throttle.clear()
        for state in self._types.values():
            state.task = None
        if self._owns_task_manager:
            await self._task_manager.aclose()
        else:
            await self._task_manager.cancel_group(self._group)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _require_open(self) -> None:
        if self._state is ManagerState.UNOPENED:
            raise LifecycleError("metrics service not started: call start() first")
        if self._state is ManagerState.CLOSED:
            raise LifecycleError("metrics service is stopped")

    def _start_collecting(self, state: _TypeState) -> None:
        state.task = self._task_manager.create_task(
            self._collect_loop(state), name=f"metrics:collect:{state.mtype.value}",
            group=self._group,
        )

    # -- subscribers ----------------------------------------------------------------------
    async def register_subscriber(
        self,
        queue: asyncio.Queue[Any],
        types: Iterable[MetricsType | str] | MetricsType | str | None = None,
        *,
        snapshot: bool = True,
    ) -> None:
        """Deliver messages of ``types`` (None: all types) to ``queue``.

        The queue must be bounded (maxsize > 0): a full one loses its oldest message, never
        blocks the service. With ``snapshot`` the fresh cached value of each type is put in
        at once, so a new subscriber does not wait for the next collection. Registering a
        queue again replaces its types and keeps its counters.
        """
        if self._state is ManagerState.CLOSED:
            raise LifecycleError("metrics service is stopped")
        if queue.maxsize <= 0:
            raise ConfigError("subscriber queues must be bounded (asyncio.Queue(maxsize=N), N > 0)")
        if types is None:
            wanted = None
        elif isinstance(types, str):  # one type; a str would otherwise iterate by character
            wanted = frozenset({_as_type(types)})
        else:
            wanted = frozenset(_as_type(t) for t in types)
        subscriber = self._subscribers.get(queue)
        if subscriber is None:
            subscriber = self._subscribers[queue] = _Subscriber(queue, wanted)
        else:
            subscriber.types = wanted
        if snapshot:
            for state in self._types.values():
                if wanted is not None and state.mtype not in wanted:
                    continue
                if state.message is not None and self._is_fresh(state):
                    self._put(subscriber, state.message)

    async def unregister_subscriber(self, queue: asyncio.Queue[Any]) -> bool:
        """Stop delivering to ``queue``; False if it was not registered. Idempotent."""
        return self._subscribers.pop(queue, None) is not None

    def subscriber_stats(self, queue: asyncio.Queue[Any]) -> dict[str, int] | None:
        """Messages delivered to and dropped from one subscriber queue; None if unknown."""
        subscriber = self._subscribers.get(queue)
        if subscriber is None:
            return None
        return {"delivered": subscriber.delivered, "dropped": subscriber.dropped}

    def __len__(self) -> int:
        """The number of subscribers."""
        return len(self._subscribers)

    # -- values ---------------------------------------------------------------------------
    def publish(self, mtype: MetricsType | str, value: Any, *, ts: float | None = None) -> int:
        """Cache ``value`` as the newest of ``mtype`` and distribute it (throttled).

        ``ts`` is when it was measured (epoch seconds; default now). Returns how many
        subscribers received it now; 0 when it is held for the end of the throttle window
        (or nobody subscribes). Never blocks. Raises LifecycleError unless started.
        """
        self._require_open()
        state = self._configure(mtype)
        return self._store_and_offer(state, value, ts)

    def get(self, mtype: MetricsType | str) -> Any | None:
        """The cached value of ``mtype`` if younger than its TTL, else None (a miss).

        Counts a cache hit or miss. An expired value is dropped.
        """
        state = self._types.get(_as_type(mtype))
        if state is not None and state.message is not None:
            if self._is_fresh(state):
                self._hits += 1
                return state.message["data"]
            state.message = None
        self._misses += 1
        return None

    async def collect(self, mtype: MetricsType | str) -> Any:
        """The cached value if fresh, else a new one from the type's collector.

        A new value is cached and distributed like a periodic one. Concurrent callers share
        one collection. Collector errors propagate (and are counted); a type without a
        collector raises ConfigError. Cancelling the caller is safe.
        """
        self._require_open()
        key = _as_type(mtype)
        cached = self.get(key)
        if cached is not None:
            return cached
        state = self._types.get(key)
        if state is None or state.collector is None:
            raise ConfigError(f"metrics type {key.value!r} has no collector")
        async with state.lock:
            # Another caller (or the periodic task) may have collected while we waited.
            if state.message is not None and self._is_fresh(state):
                return state.message["data"]
            return await self._collect_once(state)

    def flush_due(self) -> int:
        """Deliver the held messages whose throttle window has ended; returns how many.

        The service's flush task calls this on time; tests with a fake clock call it directly.
        """
        flushed = 0
        for mtype, message in self._throttle.pop_due():
            self._deliver(mtype, message)
            flushed += 1
        return flushed

    # -- internals ------------------------------------------------------------------------
    def _is_fresh(self, state: _TypeState) -> bool:
        return self._clock() - state.stored_at < state.ttl

    def _store_and_offer(self, state: _TypeState, value: Any, ts: float | None) -> int:
        message: MetricsMessage = {
            "type": state.mtype.value,
            "data": value,
            "ts": self._wall_clock() if ts is None else ts,
        }
        state.message = message
        state.stored_at = self._clock()
        self._published += 1
        if not self._subscribers:
            return 0  # nobody to throttle for; the cache has it for the next subscriber
        was_held = state.mtype in self._throttle
        offer = self._throttle.offer(state.mtype, message)
        if offer.emit:
            return self._deliver(state.mtype, message)
        if was_held:
            self._conflated += 1
        else:
            self._wakeup.set()  # a new due time: the flusher must look again
        return 0

    def _deliver(self, mtype: MetricsType, message: MetricsMessage) -> int:
        delivered = 0
        for subscriber in self._subscribers.values():
            if subscriber.types is None or mtype in subscriber.types:
                self._put(subscriber, message)
                delivered += 1
        return delivered

    def _put(self, subscriber: _Subscriber, message: MetricsMessage) -> None:
        queue = subscriber.queue
        try:
            queue.put_nowait(message)
        except asyncio.QueueFull:
            # Newest wins: make room by dropping the oldest waiting message.
            try:
                queue.get_nowait()
                queue.task_done()  # the dropped message will never be processed: keep join() true
            except (asyncio.QueueEmpty, ValueError):
                pass
            subscriber.dropped += 1
            self._dropped += 1
            queue.put_nowait(message)
        subscriber.delivered += 1
        self._delivered += 1

    async def _call_collector(self, state: _TypeState) -> Any:
        collector = state.collector
        if collector is None:
            raise ConfigError(f"metrics type {state.mtype.value!r} has no collector")
        async with asyncio.timeout(state.timeout):
            if state.blocking:
                result = await asyncio.to_thread(collector)
            else:
                result = collector()
            if inspect.isawaitable(result):
                result = await result
        return result

    async def _collect_once(self, state: _TypeState) -> Any:
        """Run the collector once; cache and distribute its value. Errors are counted, raised."""
        try:
            value = await self._call_collector(state)
        except Exception as exc:
            state.errors += 1
            state.failing += 1
            if state.failing == 1:
                log.error(
                    "collector for %s failed: %r (repeats are counted, not logged, until it "
                    "recovers)", state.mtype.value, exc, exc_info=exc,
                )
            raise
        if state.failing:
            log.info(
                "collector for %s recovered after %d failures", state.mtype.value, state.failing
            )
            state.failing = 0
        state.collections += 1
        if self._state is ManagerState.OPEN:  # a stop() during the call drops the value
            self._store_and_offer(state, value, None)
        return value

    async def _collect_loop(self, state: _TypeState) -> None:
        async def tick() -> None:
            async with state.lock:
                try:
                    await self._collect_once(state)
                except Exception:  # counted and logged in _collect_once; the loop goes on
                    pass

        await run_periodically(tick, state.interval)

    async def _flush_loop(self) -> None:
        while True:
            self.flush_due()
            due = self._throttle.next_due()
            # No await between the flush and clear(): a value held after this sets it again.
            self._wakeup.clear()
            if due is None:
                await self._wakeup.wait()
                continue
            delay = due - self._clock()
            if delay <= 0:
                continue
            try:
                async with asyncio.timeout(delay):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    # -- metrics --------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        """Cache hit rate, age and size; distribution and collector counters."""
        now = self._clock()
        ages = {
            s.mtype.value: now - s.stored_at for s in self._types.values() if s.message is not None
        }
        fresh = sum(
            1 for s in self._types.values() if s.message is not None and now - s.stored_at < s.ttl
        )
        lookups = self._hits + self._misses
        return {
            "cache_hits_total": self._hits,
            "cache_misses_total": self._misses,
            "cache_hit_rate": self._hits / lookups if lookups else 0.0,
            "cache_size": fresh,
            "cache_entries": len(ages),
            "cache_age_seconds": ages,
            "cache_age_max_seconds": max(ages.values(), default=0.0),
            "subscribers": len(self._subscribers),
            "published_total": self._published,
            "conflated_total": self._conflated,
            "held": len(self._throttle),
            "delivered_total": self._delivered,
            "dropped_total": self._dropped,
            "collections_total": sum(s.collections for s in self._types.values()),
            "collector_errors_total": sum(s.errors for s in self._types.values()),
            "collector_errors": {s.mtype.value: s.errors for s in self._types.values()},
        }


def _as_type(mtype: MetricsType | str) -> MetricsType:
    try:
        return MetricsType(mtype)
    except ValueError:
        known = ", ".join(t.value for t in MetricsType)
        raise ValidationError(f"unknown metrics type {mtype!r} (known: {known})") from None


def _check_seconds(what: str, value: float, *, positive: bool = False) -> None:
    ok = value > 0 if positive else value >= 0
    if not ok:  # also rejects NaN
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"{what} must be {bound} seconds, got {value!r}")
