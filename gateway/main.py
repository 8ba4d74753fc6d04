"""The gateway's entry point: ``metrics-hub gateway`` and ``python -m gateway``.

Exit codes: 0 after SIGTERM/SIGINT (drained within ``--drain-timeout``), 2 for a setting that
cannot work (one line on stderr says what to fix: a bad option, a port in use, an ACL that
refuses the gateway's commands, another shard count under the prefix), 1 for an unexpected
failure. With ``--workers N`` the process supervises N workers sharing the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from types import FrameType
from typing import Any

from gateway.config import SPEC, GatewaySettings
from gateway.server import Gateway
from hub.errors import ConfigError, LayoutMismatch
from hub.process import configure_logging as hub_configure_logging
from hub.process import run_main

log = logging.getLogger("gateway")
PROG = "metrics-hub gateway"
_FD_LIMIT_CAP = 1 << 20
_RESPAWN_DELAY_S = 1.0
_SUPERVISOR_TICK_S = 0.1


def configure_logging(level: str) -> None:
    hub_configure_logging(level)
    # websockets logs every failed handshake (port scanners, clients that vanish); only
    # warnings are worth a line unless debugging.
    if level != "debug":
        logging.getLogger("gateway.ws").setLevel(logging.WARNING)


def raise_fd_limit() -> int:
    """Raise the soft limit of open files to the hard one: each client is one descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _FD_LIMIT_CAP if hard == resource.RLIM_INFINITY else min(hard, _FD_LIMIT_CAP)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft


async def run(settings: GatewaySettings) -> int:
    """Serve until SIGTERM/SIGINT, then drain; returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
            handled.append(signum)
    gateway = Gateway(settings)
    deadline: float | None = None
    try:
        try:
            await gateway.start()
        except OSError as exc:
            detail = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError(f"cannot listen on {settings.host}:{settings.port}: "
                              f"{detail}") from exc
        waiter = asyncio.ensure_future(stop.wait())
        either: set[asyncio.Future[Any]] = {waiter, gateway.fatal}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
        if gateway.fatal.done():
            error = gateway.fatal.result()
            print(f"{PROG}: {error}", file=sys.stderr)
            return 2 if isinstance(error, ConfigError | LayoutMismatch) else 1
        deadline = loop.time() + settings.drain_timeout
        log.info("stopping: draining for at most %.1fs", settings.drain_timeout)
        # Keep a share of the budget for closing what the drain left.
        reserve = min(2.0, settings.drain_timeout * 0.2)
        try:
            async with asyncio.timeout_at(deadline - reserve):
                await gateway.drain()
        except TimeoutError:
            log.warning("drain timed out with %d connections left", len(gateway.connections))
        return 0
    finally:
        remaining = 2.0 if deadline is None else max(0.2, deadline - loop.time() - 0.2)
        await gateway.aclose(timeout=remaining * 0.5)
        for signum in handled:
            loop.remove_signal_handler(signum)
        log.info("stopped")


def supervise(settings: GatewaySettings, argv: list[str]) -> int:
    """Run ``settings.workers`` gateway processes on one port (SO_REUSEPORT) and forward
    SIGTERM/SIGINT to them; a worker that dies is started again after a second."""
    base_id = settings.node_id
    stopping = False

    def spawn(index: int) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "gateway", *argv, "--workers", "1", "--reuse-port",
                "--gateway-id", f"{base_id}-w{index}"]
        return subprocess.Popen(args)

    workers = [spawn(i) for i in range(settings.workers)]
    log.info("supervising %d workers on port %d", len(workers), settings.port)

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.send_signal(signal.SIGTERM)

    previous = {signum: signal.signal(signum, forward)
                for signum in (signal.SIGTERM, signal.SIGINT)}
    respawn_at: dict[int, float] = {}
    try:
        while True:
            if stopping:
                break
            for index, worker in enumerate(workers):
                code = worker.poll()
                if code is None or stopping:
                    continue
                due = respawn_at.setdefault(index, time.monotonic() + _RESPAWN_DELAY_S)
                if time.monotonic() >= due:
                    log.warning("worker %d exited with %d; starting it again", index, code)
                    del respawn_at[index]
                    workers[index] = spawn(index)
            time.sleep(_SUPERVISOR_TICK_S)
        limit = time.monotonic() + settings.drain_timeout + 5.0
        codes = []
        for worker in workers:
            try:
                codes.append(worker.wait(timeout=max(0.1, limit - time.monotonic())))
            except subprocess.TimeoutExpired:
                worker.kill()
                codes.append(worker.wait())
        return 0 if all(code == 0 for code in codes) else 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    """Parse the configuration, run the gateway (or its workers), return the exit code."""
    loaded = SPEC.load_or_exit_code(argv)
    if isinstance(loaded, int):
        return loaded
    settings = loaded.settings
    configure_logging(settings.log_level)
    raise_fd_limit()
    # Each connection allocates a few dozen objects; with the default threshold (700) a
    # reconnect storm of 5,000 clients set off 8 full collections of ~150 ms each, a quarter
    # of the gateway's CPU, finding nothing to free. 10,000 measured 1,100 -> 1,800
    # resumes/s and p99 4.3 -> 2.6 s (docs/gateway.md). Process-wide, so set here only.
    gc.set_threshold(10_000, 10, 10)
    if settings.workers > 1:
        return supervise(settings, list(loaded.argv))
    return run_main(run(settings), PROG)
