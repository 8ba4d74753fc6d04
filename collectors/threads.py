"""Blocking calls run off the event loop on daemon threads, with results as asyncio futures.

Daemon threads, not a ThreadPoolExecutor: a call that never returns (statvfs of a dead NFS
mount, a custom source stuck on a socket) must neither exhaust a shared pool nor keep the
process from exiting on SIGTERM, and an executor's threads are joined at interpreter exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")

_STOP = object()


def _deliver(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled by a caller that stopped waiting (a timeout)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _post(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    error: BaseException | None,
) -> None:
    # The loop may be closed by the time a stuck call returns; nobody waits any more then.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_deliver, future, result, error)


def call_in_thread(func: Callable[..., R], *args: Any, name: str = "mh-call") -> asyncio.Future[R]:
    """Run ``func(*args)`` on a new daemon thread; the future gets its result or error.

    Cancelling the future stops nobody waiting on the thread; the thread ends when ``func``
    returns. For calls made rarely (every 10 s or so); see ``DaemonWorker`` otherwise.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[R] = loop.create_future()

    def run() -> None:
        try:
            result = func(*args)
        except BaseException as exc:  # delivered to the awaiting coroutine
            _post(loop, future, None, exc)
        else:
            _post(loop, future, result, None)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class DaemonWorker:
    """One daemon thread that runs submitted calls in order (FIFO), started on first use.

    ``busy`` tells whether a call is still queued or running, so a caller can skip a tick
    rather than queue behind a call that hangs.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending = 0  # submitted and not yet finished; touched only on the loop thread
        self._idle = asyncio.Event()

    @property
    def busy(self) -> bool:
        return self._pending > 0

    def submit(self, func: Callable[..., R], *args: Any) -> asyncio.Future[R]:
        """Queue ``func(*args)``; the returned future completes when it has run."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        self._pending += 1
        self._queue.put((loop, future, func, args))
        return future

    def _finished(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until every submitted call has finished; False if ``timeout`` passed first."""
        if self._pending == 0:
            return True
        self._idle.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            loop, future, func, args = item
            try:
                result = func(*args)
            except BaseException as exc:
                _post(loop, future, None, exc)
            else:
                _post(loop, future, result, None)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._finished)

    def stop(self) -> None:
        """Let the thread end after the calls already queued (it is a daemon either way)."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread = None
