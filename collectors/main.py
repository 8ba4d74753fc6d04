"""The collector's entry point: ``metrics-hub collector`` and ``python -m collectors``.

Exit codes: 0 after SIGTERM/SIGINT (the buffer flushed as far as the shutdown timeout
allowed), 2 for a setting that cannot work (one line on stderr says what to fix), 1 for an
unexpected failure. SIGHUP reloads the configuration; a bad new one is logged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from collectors.daemon import Collector
from collectors.settings import SPEC, CollectorSettings
from hub.config import Loaded
from hub.errors import ConfigError
from hub.process import configure_logging, run_main

log = logging.getLogger("collectors")
PROG = "metrics-hub collector"


class _Signals:
    """What the signal handlers asked for; one event wakes the main coroutine."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.stop = False
        self.reload = False

    def request_stop(self) -> None:
        self.stop = True
        self.wake.set()

    def request_reload(self) -> None:
        self.reload = True
        self.wake.set()


async def serve(loaded: Loaded[CollectorSettings]) -> int:
    """Run the collector until SIGTERM or SIGINT; reload on SIGHUP. Returns the exit code."""
    loop = asyncio.get_running_loop()
    signals = _Signals()
    handled = []
    for signum, handler in ((signal.SIGTERM, signals.request_stop),
                            (signal.SIGINT, signals.request_stop),
                            (getattr(signal, "SIGHUP", None), signals.request_reload)):
        if signum is None:
            continue
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(signum, handler)
            handled.append(signum)
    collector = Collector(loaded.settings)
    try:
        await collector.start()
    except BaseException:
        await collector.stop()
        raise
    try:
        while not signals.stop:
            await signals.wake.wait()
            signals.wake.clear()
            if signals.reload and not signals.stop:
                signals.reload = False
                await _reload(collector, loaded)
    finally:
        log.info("stopping: flushing up to %gs", collector.settings.shutdown_timeout)
        flushed = await collector.stop()
        log.info("stopped%s", "" if flushed else " (some samples were not published)")
        for signum in handled:
            loop.remove_signal_handler(signum)
    return 0


async def _reload(collector: Collector, loaded: Loaded[CollectorSettings]) -> None:
    log.info("SIGHUP: reloading the configuration")
    try:
        fresh = SPEC.load(loaded.argv)
        configure_logging(fresh.settings.log_level)
        await collector.reload(fresh.settings)
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration: %s", exc)


def main(argv: list[str] | None = None) -> int:
    """Parse the configuration, run the collector, return the process exit code."""
    loaded = SPEC.load_or_exit_code(argv)
    if isinstance(loaded, int):
        return loaded
    configure_logging(loaded.settings.log_level)
    return run_main(serve(loaded), PROG)
