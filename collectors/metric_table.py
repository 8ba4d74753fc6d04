"""The one table of every metric the collector itself names: kind, name, type, unit, meaning.

docs/metrics.md shows this table; a test parses the doc and checks both are in step, and
another checks that the sources emit no name missing here. Metrics named by users (custom
sources, StatsD, scraped targets) are not in it: docs/metrics.md gives their naming rules.
Run ``python -m collectors.metric_table`` to print the Markdown table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class MetricType(enum.StrEnum):
    GAUGE = "gauge"  # a value at a time
    COUNTER = "counter"  # monotonic since some start (``_total``); a drop is a reset
    RATE = "rate"  # a counter's increase per second over the last interval


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One metric: ``name`` is the base name; ``instance`` says what the ``.suffix`` names."""

    kind: str
    name: str
    type: MetricType
    unit: str
    instance: str | None
    description: str


G, C, R = MetricType.GAUGE, MetricType.COUNTER, MetricType.RATE
SYS = "system"
COL = "collector"
PROC = "processes"
NIC = "interface"
DEV = "device"
MNT = "mount"
SRC = "source"

METRICS: tuple[MetricDef, ...] = (
    # -- system, every interval ---------------------------------------------------------
    MetricDef(SYS, "cpu_utilization_ratio", G, "ratio", None,
              "share of all CPU time not idle nor waiting for I/O over the last interval"),
    MetricDef(SYS, "cpu_utilization_ratio", G, "ratio", "cpu",
              "the same, per logical CPU (instance `cpu0`, `cpu1`, ...)"),
    MetricDef(SYS, "cpu_user_ratio", G, "ratio", None,
              "share of CPU time in user mode (with nice)"),
    MetricDef(SYS, "cpu_system_ratio", G, "ratio", None,
              "share of CPU time in the kernel (with irq and softirq)"),
    MetricDef(SYS, "cpu_iowait_ratio", G, "ratio", None,
              "share of CPU time idle while waiting for I/O (Linux)"),
    MetricDef(SYS, "cpu_steal_ratio", G, "ratio", None,
              "share of CPU time taken by the hypervisor for other guests (Linux)"),
    MetricDef(SYS, "load1", G, "1", None, "load average over 1 minute"),
    MetricDef(SYS, "load5", G, "1", None, "load average over 5 minutes"),
    MetricDef(SYS, "load15", G, "1", None, "load average over 15 minutes"),
    MetricDef(SYS, "memory_total_bytes", G, "bytes", None, "physical memory"),
    MetricDef(SYS, "memory_available_bytes", G, "bytes", None,
              "memory available to new processes without swapping"),
    MetricDef(SYS, "memory_used_bytes", G, "bytes", None, "memory in use (total minus available)"),
    MetricDef(SYS, "memory_cached_bytes", G, "bytes", None, "page cache (Linux, BSD)"),
    MetricDef(SYS, "memory_buffers_bytes", G, "bytes", None, "kernel buffers (Linux, BSD)"),
    MetricDef(SYS, "memory_used_ratio", G, "ratio", None, "memory used over memory total"),
    MetricDef(SYS, "swap_total_bytes", G, "bytes", None, "swap space"),
    MetricDef(SYS, "swap_used_bytes", G, "bytes", None, "swap space in use"),
    MetricDef(SYS, "swap_used_ratio", G, "ratio", None, "swap used over swap total (0 if none)"),
    MetricDef(SYS, "swap_in_bytes_total", C, "bytes", None, "bytes swapped in from disk"),
    MetricDef(SYS, "swap_out_bytes_total", C, "bytes", None, "bytes swapped out to disk"),
    MetricDef(SYS, "swap_in_bytes_per_second", R, "bytes/s", None, "swap-in rate"),
    MetricDef(SYS, "swap_out_bytes_per_second", R, "bytes/s", None, "swap-out rate"),
    MetricDef(SYS, "disk_read_bytes_total", C, "bytes", DEV, "bytes read from the device"),
    MetricDef(SYS, "disk_written_bytes_total", C, "bytes", DEV, "bytes written to the device"),
    MetricDef(SYS, "disk_reads_total", C, "1", DEV, "read operations completed"),
    MetricDef(SYS, "disk_writes_total", C, "1", DEV, "write operations completed"),
    MetricDef(SYS, "disk_io_time_seconds_total", C, "seconds", DEV,
              "time the device had I/O in flight (Linux, FreeBSD)"),
    MetricDef(SYS, "disk_read_bytes_per_second", R, "bytes/s", DEV, "read throughput"),
    MetricDef(SYS, "disk_written_bytes_per_second", R, "bytes/s", DEV, "write throughput"),
    MetricDef(SYS, "disk_reads_per_second", R, "1/s", DEV, "read operations per second"),
    MetricDef(SYS, "disk_writes_per_second", R, "1/s", DEV, "write operations per second"),
    MetricDef(SYS, "disk_busy_ratio", G, "ratio", DEV,
              "share of the interval the device was busy (Linux, FreeBSD)"),
    MetricDef(SYS, "net_rx_bytes_total", C, "bytes", NIC, "bytes received"),
    MetricDef(SYS, "net_tx_bytes_total", C, "bytes", NIC, "bytes sent"),
    MetricDef(SYS, "net_rx_packets_total", C, "1", NIC, "packets received"),
    MetricDef(SYS, "net_tx_packets_total", C, "1", NIC, "packets sent"),
    MetricDef(SYS, "net_rx_errors_total", C, "1", NIC, "receive errors"),
    MetricDef(SYS, "net_tx_errors_total", C, "1", NIC, "transmit errors"),
    MetricDef(SYS, "net_rx_drops_total", C, "1", NIC, "incoming packets dropped"),
    MetricDef(SYS, "net_tx_drops_total", C, "1", NIC, "outgoing packets dropped"),
    MetricDef(SYS, "net_rx_bytes_per_second", R, "bytes/s", NIC, "receive throughput"),
    MetricDef(SYS, "net_tx_bytes_per_second", R, "bytes/s", NIC, "transmit throughput"),
    MetricDef(SYS, "net_rx_packets_per_second", R, "1/s", NIC, "packets received per second"),
    MetricDef(SYS, "net_tx_packets_per_second", R, "1/s", NIC, "packets sent per second"),
    MetricDef(SYS, "context_switches_total", C, "1", None, "context switches since boot"),
    MetricDef(SYS, "context_switches_per_second", R, "1/s", None, "context switch rate"),
    MetricDef(SYS, "interrupts_total", C, "1", None, "interrupts since boot"),
    MetricDef(SYS, "interrupts_per_second", R, "1/s", None, "interrupt rate"),
    MetricDef(SYS, "soft_interrupts_total", C, "1", None, "software interrupts since boot"),
    MetricDef(SYS, "soft_interrupts_per_second", R, "1/s", None, "software interrupt rate"),
    # -- system, refreshed every slow interval (repeated in between) ------------------
    MetricDef(SYS, "fs_size_bytes", G, "bytes", MNT, "size of the filesystem"),
    MetricDef(SYS, "fs_used_bytes", G, "bytes", MNT, "space in use"),
    MetricDef(SYS, "fs_available_bytes", G, "bytes", MNT, "space available to unprivileged users"),
    MetricDef(SYS, "fs_used_ratio", G, "ratio", MNT,
              "used over (used + available), as `df` shows it"),
    MetricDef(SYS, "fs_inodes_used_ratio", G, "ratio", MNT,
              "inodes in use over inodes total (absent where the fs has no inode limit)"),
    MetricDef(SYS, "temperature_celsius", G, "celsius", "sensor",
              "hardware temperature (Linux, FreeBSD); instance `<chip>_<label>`"),
    MetricDef(SYS, "process_count", G, "1", None, "processes on the host"),
    MetricDef(SYS, "boot_time_seconds", G, "seconds", None, "boot time, Unix epoch seconds"),
    MetricDef(SYS, "cpu_count", G, "1", None, "logical CPUs"),
    # -- processes (opt-in: --top-processes N) ------------------------------------------
    MetricDef(PROC, "proc_cpu_ratio", G, "ratio", "process",
              "CPU used by one of the top processes over the last scan, in cores "
              "(1.0 = one full core); instance `<name>-<pid>`"),
    MetricDef(PROC, "proc_rss_bytes", G, "bytes", "process",
              "resident memory of one of the top processes; instance `<name>-<pid>`"),
    # -- collector: the collector's own health, every interval -------------------------
    MetricDef(COL, "collector_cycle_seconds", G, "seconds", None,
              "time the last system collection took (wall clock)"),
    MetricDef(COL, "collector_cpu_seconds_total", C, "seconds", None,
              "CPU time used by the collector process (user + system)"),
    MetricDef(COL, "collector_cpu_ratio", G, "ratio", None,
              "CPU used by the collector over the last interval, in cores"),
    MetricDef(COL, "collector_rss_bytes", G, "bytes", None, "resident memory of the collector"),
    MetricDef(COL, "collector_buffered_samples", G, "1", None,
              "samples waiting to be published (more than a few means Redis is away)"),
    MetricDef(COL, "collector_buffer_capacity_samples", G, "1", None,
              "samples the outage buffer holds before it drops the oldest"),
    MetricDef(COL, "collector_dropped_samples_total", C, "1", None,
              "samples dropped because the outage buffer was full"),
    MetricDef(COL, "collector_published_samples_total", C, "1", None, "samples written to Redis"),
    MetricDef(COL, "collector_publish_errors_total", C, "1", None,
              "publish attempts that failed (Redis unavailable or too slow)"),
    MetricDef(COL, "collector_rejected_samples_total", C, "1", None,
              "samples dropped because the codec refused them (too large)"),
    MetricDef(COL, "collector_last_publish_timestamp_seconds", G, "seconds", None,
              "Unix time of the last successful publish (0: none yet)"),
    MetricDef(COL, "collector_redis_up", G, "1", None, "1 while the last publish succeeded"),
    MetricDef(COL, "collector_spilled_samples", G, "1", None,
              "samples in the spill file (0 without --spill-file)"),
    MetricDef(COL, "collector_spill_errors_total", C, "1", None, "failed writes to the spill file"),
    MetricDef(COL, "collector_start_time_seconds", G, "seconds", None,
              "Unix time the collector started"),
    MetricDef(COL, "collector_skipped_ticks_total", C, "1", None,
              "system ticks skipped because a collection overran its interval"),
    MetricDef(COL, "collector_fs_timeouts_total", C, "1", None,
              "filesystem checks (statvfs) that did not answer within --fs-timeout"),
    MetricDef(COL, "collector_tasks_failed_total", C, "1", None,
              "collector tasks that ended with an error (each is logged)"),
    MetricDef(COL, "collector_source_up", G, "1", SRC,
              "1 if the source's last call returned values, else 0"),
    MetricDef(COL, "collector_source_duration_seconds", G, "seconds", SRC,
              "time the source's last call took"),
    MetricDef(COL, "collector_source_errors_total", C, "1", SRC, "calls that raised an error"),
    MetricDef(COL, "collector_source_timeouts_total", C, "1", SRC,
              "calls that did not return within the source's timeout"),
    MetricDef(COL, "collector_source_skipped_total", C, "1", SRC,
              "ticks skipped because the previous call had not returned yet"),
    MetricDef(COL, "collector_source_dropped_values_total", C, "1", SRC,
              "values dropped: invalid name, not a finite number, or over the field limit"),
    MetricDef(COL, "collector_statsd_packets_total", C, "1", None,
              "StatsD datagrams received"),
    MetricDef(COL, "collector_statsd_lines_total", C, "1", None, "StatsD lines parsed"),
    MetricDef(COL, "collector_statsd_malformed_total", C, "1", None,
              "StatsD lines skipped because they could not be parsed"),
    MetricDef(COL, "collector_statsd_dropped_total", C, "1", None,
              "StatsD lines dropped because --statsd-max-series was reached"),
    MetricDef(COL, "collector_statsd_series", G, "1", None, "StatsD series held in memory"),
)

BY_KIND_AND_NAME: dict[tuple[str, str], MetricDef] = {}
for _metric in METRICS:
    BY_KIND_AND_NAME.setdefault((_metric.kind, _metric.name), _metric)
del _metric


def documented(kind: str, metric: str) -> bool:
    """Whether ``metric`` (with or without ``.instance``) of ``kind`` is in the table."""
    base, dot, _ = metric.partition(".")
    for item in METRICS:
        if item.kind == kind and item.name == base and (item.instance is not None) == bool(dot):
            return True
    return False


def markdown_table() -> str:
    """The table as docs/metrics.md shows it."""
    lines = ["| kind | name | instance | type | unit | description |",
             "| --- | --- | --- | --- | --- | --- |"]
    for m in METRICS:
        instance = m.instance or ""
        lines.append(f"| {m.kind} | `{m.name}` | {instance} | {m.type.value} | {m.unit} | "
                     f"{m.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
