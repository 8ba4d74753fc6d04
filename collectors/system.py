"""The ``system`` kind: host metrics from psutil, fast ones every interval, slow ones less often.

Fast (each tick, on the event loop: a handful of /proc reads, well under a millisecond): CPU,
load, memory, swap, disk and network I/O, context switches and interrupts. Slow (every
``slow_interval``, in the background so a tick never waits): filesystem usage, temperatures,
process count, boot time; their last values ride along in every sample. Counters are sent as
``_total`` and as per-second rates; the first sample comes one interval after the baseline,
so it never shows a meaningless 0% CPU. Names are in collectors/metric_table.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from collectors.filesystems import (
    DEFAULT_EXCLUDED_MOUNTS,
    DEFAULT_EXCLUDED_TYPES,
    FilesystemProbe,
    list_mounts,
)
from collectors.rates import MIN_WINDOW_S, RateTracker
from collectors.runner import instance_name
from collectors.threads import call_in_thread
from hub.tasks import TaskManager

log = logging.getLogger(__name__)

DEFAULT_NET_EXCLUDE = r"^(lo|veth.*|ifb\d+)$"
DEFAULT_DISK_EXCLUDE = r"^(loop|ram|zram|fd|sr)\d+$"
_SYS_BLOCK = "/sys/block"

Values = dict[str, float | int]

# psutil net_io_counters fields -> our base names
_NET_COUNTERS: tuple[tuple[str, str, str | None], ...] = (
    ("bytes_recv", "net_rx_bytes_total", "net_rx_bytes_per_second"),
    ("bytes_sent", "net_tx_bytes_total", "net_tx_bytes_per_second"),
    ("packets_recv", "net_rx_packets_total", "net_rx_packets_per_second"),
    ("packets_sent", "net_tx_packets_total", "net_tx_packets_per_second"),
    ("errin", "net_rx_errors_total", None),
    ("errout", "net_tx_errors_total", None),
    ("dropin", "net_rx_drops_total", None),
    ("dropout", "net_tx_drops_total", None),
)
_DISK_COUNTERS = (
    ("read_bytes", "disk_read_bytes_total", "disk_read_bytes_per_second"),
    ("write_bytes", "disk_written_bytes_total", "disk_written_bytes_per_second"),
    ("read_count", "disk_reads_total", "disk_reads_per_second"),
    ("write_count", "disk_writes_total", "disk_writes_per_second"),
)
_CPU_STATS = (
    ("ctx_switches", "context_switches_total", "context_switches_per_second"),
    ("interrupts", "interrupts_total", "interrupts_per_second"),
    ("soft_interrupts", "soft_interrupts_total", "soft_interrupts_per_second"),
)


@dataclass(frozen=True)
class SystemOptions:
    """What the system source reads and leaves out (from the collector's settings)."""

    interval: float = 1.0
    slow_interval: float = 10.0
    net_exclude: str = DEFAULT_NET_EXCLUDE
    disk_exclude: str = DEFAULT_DISK_EXCLUDE
    fs_exclude_types: tuple[str, ...] = DEFAULT_EXCLUDED_TYPES
    fs_exclude_mounts: str = DEFAULT_EXCLUDED_MOUNTS
    fs_timeout: float = 2.0
    host_root: Path | None = None  # the node's / inside a container; None: we are the node
    temperatures: bool = True
    per_cpu: bool = True


def _cpu_busy_and_total(times: Any) -> tuple[float, float, dict[str, float]]:
    """(busy, total, parts) seconds of one cpu_times entry; guest time is already in user."""
    total = sum(times)
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    parts = {
        "cpu_user_ratio": times.user + getattr(times, "nice", 0.0),
        "cpu_system_ratio": times.system + getattr(times, "irq", 0.0)
        + getattr(times, "softirq", 0.0),
    }
    if hasattr(times, "iowait"):
        parts["cpu_iowait_ratio"] = times.iowait
    if hasattr(times, "steal"):
        parts["cpu_steal_ratio"] = times.steal
    return total - idle, total, parts


def _ratio(part: float, whole: float) -> float:
    return min(1.0, max(0.0, part / whole))


class SystemSource:
    """The built-in ``system`` source; ``collect`` never blocks nor awaits."""

    name = "system"
    kind = "system"

    def __init__(
        self,
        options: SystemOptions,
        tasks: TaskManager,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.tasks = tasks
        self._clock = clock
        self._rates = RateTracker()
        self._net_exclude = re.compile(options.net_exclude)
        self._disk_exclude = re.compile(options.disk_exclude)
        self._fs_exclude_mounts = re.compile(options.fs_exclude_mounts)
        self._fs = FilesystemProbe(options.fs_timeout)
        self._cpu_last: list[tuple[float, float, dict[str, float]]] | None = None
        self._cpu_at = -math.inf
        self._whole_disks: frozenset[str] | None = None
        self._slow: Values = {}
        self._slow_due = 0.0
        self._slow_running = False
        self._instances: dict[str, str] = {}  # device/interface name -> instance suffix

    @property
    def fs_timeouts_total(self) -> int:
        return self._fs.timeouts_total

    # -- lifecycle ----------------------------------------------------------------------
    def open(self) -> None:
        """Take the baseline readings (rates and CPU need two) and start the slow refresh."""
        self._whole_disks = self._read_whole_disks()
        self.collect()
        self._slow_due = self._clock()
        self._maybe_refresh_slow()

    def collect(self) -> Values:
        """One sample's values: the fast readings plus the latest slow ones."""
        now = self._clock()
        values: Values = {}
        self._cpu(values, now)
        self._load_memory(values)
        self._counters(values, now)
        self._rates.sweep()
        self._maybe_refresh_slow()
        values.update(self._slow)
        return values

    # -- fast parts ---------------------------------------------------------------------
    def _cpu(self, values: Values, now: float) -> None:
        if now - self._cpu_at < MIN_WINDOW_S:
            return  # too soon after the last reading: keep it as the base, report nothing
        per_cpu = psutil.cpu_times(percpu=True)
        current = [_cpu_busy_and_total(t) for t in per_cpu]
        last = self._cpu_last
        self._cpu_last = current
        self._cpu_at = now
        if last is None or len(last) != len(current):  # first reading, or CPUs hot-plugged
            return
        busy_all = total_all = 0.0
        parts_all: dict[str, float] = {}
        for index, ((busy, total, parts), (busy0, total0, parts0)) in enumerate(
            zip(current, last, strict=True)
        ):
            d_total = total - total0
            if d_total <= 0:
                continue
            d_busy = busy - busy0
            busy_all += d_busy
            total_all += d_total
            for name, seconds in parts.items():
                parts_all[name] = parts_all.get(name, 0.0) + seconds - parts0.get(name, seconds)
            if self.options.per_cpu:
                values[f"cpu_utilization_ratio.cpu{index}"] = _ratio(d_busy, d_total)
        if total_all > 0:
            values["cpu_utilization_ratio"] = _ratio(busy_all, total_all)
            for name, seconds in parts_all.items():
                values[name] = _ratio(seconds, total_all)

    def _load_memory(self, values: Values) -> None:
        load1, load5, load15 = psutil.getloadavg()
        values["load1"] = load1
        values["load5"] = load5
        values["load15"] = load15
        memory = psutil.virtual_memory()
        used = memory.total - memory.available
        values["memory_total_bytes"] = memory.total
        values["memory_available_bytes"] = memory.available
        values["memory_used_bytes"] = used
        if hasattr(memory, "cached"):
            values["memory_cached_bytes"] = memory.cached
        if hasattr(memory, "buffers"):
            values["memory_buffers_bytes"] = memory.buffers
        if memory.total > 0:
            values["memory_used_ratio"] = used / memory.total

    def _counters(self, values: Values, now: float) -> None:
        rate = self._rates.rate
        swap = psutil.swap_memory()
        values["swap_total_bytes"] = swap.total
        values["swap_used_bytes"] = swap.used
        values["swap_used_ratio"] = swap.used / swap.total if swap.total > 0 else 0.0
        for field_name, total_name, rate_name in (
            ("sin", "swap_in_bytes_total", "swap_in_bytes_per_second"),
            ("sout", "swap_out_bytes_total", "swap_out_bytes_per_second"),
        ):
            counter = getattr(swap, field_name)
            values[total_name] = counter
            per_second = rate(total_name, counter, now)
            if per_second is not None:
                values[rate_name] = per_second

        stats = psutil.cpu_stats()
        for field_name, total_name, rate_name in _CPU_STATS:
            counter = getattr(stats, field_name)
            values[total_name] = counter
            per_second = rate(total_name, counter, now)
            if per_second is not None:
                values[rate_name] = per_second

        disks = psutil.disk_io_counters(perdisk=True) or {}
        whole = self._whole_disks
        for device, io in disks.items():
            if self._disk_exclude.search(device) or (whole is not None and device not in whole):
                continue
            suffix = self._instance(device)
            for field_name, total_name, rate_name in _DISK_COUNTERS:
                counter = getattr(io, field_name)
                key = f"{total_name}.{suffix}"
                values[key] = counter
                per_second = rate(key, counter, now)
                if per_second is not None:
                    values[f"{rate_name}.{suffix}"] = per_second
            busy_ms = getattr(io, "busy_time", None)
            if busy_ms is not None:
                key = f"disk_io_time_seconds_total.{suffix}"
                values[key] = busy_ms / 1000.0
                per_second = rate(key, busy_ms / 1000.0, now)
                if per_second is not None:
                    values[f"disk_busy_ratio.{suffix}"] = min(1.0, per_second)

        nics = psutil.net_io_counters(pernic=True) or {}
        for nic, io in nics.items():
            if self._net_exclude.search(nic):
                continue
            suffix = self._instance(nic)
            for field_name, total_name, nic_rate in _NET_COUNTERS:
                counter = getattr(io, field_name)
                key = f"{total_name}.{suffix}"
                values[key] = counter
                if nic_rate is not None:
                    per_second = rate(key, counter, now)
                    if per_second is not None:
                        values[f"{nic_rate}.{suffix}"] = per_second

    def _instance(self, name: str) -> str:
        suffix = self._instances.get(name)
        if suffix is None:
            if len(self._instances) > 4096:  # interfaces come and go (containers)
                self._instances.clear()
            suffix = self._instances[name] = instance_name(name)
        return suffix

    @staticmethod
    def _read_whole_disks() -> frozenset[str] | None:
        """Whole disks (not partitions) on Linux, from /sys/block; None elsewhere."""
        try:
            return frozenset(os.listdir(_SYS_BLOCK))
        except OSError:
            return None

    # -- slow parts ------------------------------------------------------------------------
    def _maybe_refresh_slow(self) -> None:
        if self._slow_running or self._clock() < self._slow_due:
            return
        self._slow_running = True
        self._slow_due = self._clock() + self.options.slow_interval
        self.tasks.create_task(self._refresh_slow(), name="system slow refresh", group="system")

    async def _refresh_slow(self) -> None:
        """Read the slow metrics off the loop; never raises (a failure keeps the old values)."""
        try:
            listing = call_in_thread(self._slow_sync, name="mh-system-slow")
            try:
                async with asyncio.timeout(self.options.fs_timeout):
                    mounts, slow = await listing
            except TimeoutError:
                listing.add_done_callback(lambda f: f.cancelled() or f.exception())
                log.warning("reading mounts and sensors took over %gs; keeping old values",
                            self.options.fs_timeout)
                return
            usage = await self._fs.usage(mounts)
            for mountpoint, fs_values in usage.items():
                suffix = instance_name(mountpoint)
                for name, value in fs_values.items():
                    slow[f"{name}.{suffix}"] = value
            self._slow = slow
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the slow system metrics failed; keeping the old values")
        finally:
            self._slow_running = False

    def _slow_sync(self) -> tuple[list[Any], Values]:
        options = self.options
        self._whole_disks = self._read_whole_disks()
        mounts = list_mounts(options.fs_exclude_types, self._fs_exclude_mounts,
                             host_root=str(options.host_root or ""))
        slow: Values = {
            "process_count": len(psutil.pids()),
            "boot_time_seconds": psutil.boot_time(),
            "cpu_count": psutil.cpu_count() or 0,
        }
        if options.temperatures and hasattr(psutil, "sensors_temperatures"):
            try:
                sensors = psutil.sensors_temperatures()
            except (OSError, RuntimeError):
                sensors = {}
            for chip, entries in sensors.items():
                for index, entry in enumerate(entries):
                    label = entry.label or str(index)
                    current = entry.current
                    if isinstance(current, int | float) and math.isfinite(current):
                        name = instance_name(f"{chip}_{label}")
                        slow[f"temperature_celsius.{name}"] = float(current)
        return mounts, slow
