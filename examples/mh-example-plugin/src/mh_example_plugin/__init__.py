"""Example metrics-hub sources: a class with state and a plain function (see README.md)."""

from __future__ import annotations

import os
import time

try:  # the decorator is optional: a plugin can work without importing metrics-hub at all
    from collectors import source
except ImportError:  # pragma: no cover
    def source(**_: object):  # type: ignore[no-untyped-def]
        return lambda target: target


class UptimeSource:
    """Kind ``uptime``: how long this plugin has been loaded, and how often it was asked.

    A class is instantiated once; ``collect`` is called every interval (here every 5 s,
    overriding the collector's default) and may be sync or async. ``open``/``close`` are
    optional hooks, run when the collector starts and stops (or reloads).
    """

    interval = 5.0
    timeout = 1.0

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.calls = 0

    def collect(self) -> dict[str, float]:
        self.calls += 1
        return {
            "uptime_seconds": time.monotonic() - self.started + 1e-9,
            "collect_calls_total": self.calls,
        }


@source(interval=10.0, timeout=2.0)
def open_files() -> dict[str, int] | None:
    """Kind ``open_files``: file descriptors this process holds (Linux); None elsewhere.

    A sync function runs on its own thread, so blocking I/O is fine here; returning None
    skips this tick without an error.
    """
    try:
        return {"open_fds": len(os.listdir("/proc/self/fd"))}
    except OSError:
        return None
