"""The opt-in ``processes`` kind: the top processes by CPU and by memory, at a slow cadence.

A full process scan costs tens of milliseconds on a busy host, which is why it is never part
of the 1 s system loop: it runs every ``--top-interval`` seconds on its own thread.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

import psutil

from collectors.runner import instance_name

_ATTRS = ["pid", "name", "cpu_times", "memory_info", "create_time"]


class TopProcesses:
    """``collect`` returns proc_cpu_ratio and proc_rss_bytes for the top ``count`` processes
    by CPU and the top ``count`` by resident memory (blocking; runs on a thread)."""

    def __init__(self, count: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.count = count
        self._clock = clock
        self._last: dict[tuple[int, float], float] = {}  # (pid, create_time) -> cpu seconds
        self._last_at: float | None = None

    def collect(self) -> dict[str, float | int]:
        now = self._clock()
        elapsed = now - self._last_at if self._last_at is not None else 0.0
        seen: dict[tuple[int, float], float] = {}
        rows: list[tuple[float | None, int, str]] = []  # (cpu ratio, rss, instance)
        for proc in psutil.process_iter(_ATTRS):
            info = proc.info
            times, memory = info.get("cpu_times"), info.get("memory_info")
            if times is None or memory is None:
                continue  # gone, or not ours to read
            key = (info["pid"], info.get("create_time") or 0.0)
            cpu = times.user + times.system
            seen[key] = cpu
            before = self._last.get(key)
            ratio = (max(0.0, cpu - before) / elapsed
                     if before is not None and elapsed > 0 else None)
            name = instance_name(f"{info.get('name') or 'proc'}-{info['pid']}")
            rows.append((ratio, memory.rss, name))
        self._last = seen
        self._last_at = now
        top_cpu = heapq.nlargest(self.count, (r for r in rows if r[0] is not None),
                                 key=lambda r: r[0] or 0.0)
        top_rss = heapq.nlargest(self.count, rows, key=lambda r: r[1])
        values: dict[str, float | int] = {}
        for ratio, rss, name in (*top_cpu, *top_rss):
            if ratio is not None:
                values[f"proc_cpu_ratio.{name}"] = ratio
            values[f"proc_rss_bytes.{name}"] = rss
        return values
