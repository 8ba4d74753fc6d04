"""The fake gateway's simulated fleet: node shapes and samples as functions of (node, time).

Nothing is stored: a sample of any node at any time can be computed again, identical, so
history, snapshots and resume replays cost no memory, and a restarted fake gateway goes on
exactly where the old one stopped. Names and units are docs/metrics.md's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BUILTIN_KINDS = ("system", "app")  # kinds the fleet simulates, in cursor order
EPOCH = 1  # one collector run per node for the fake's whole life: seq never restarts


def noise(seed: int, tick: int) -> float:
    """A reproducible value in [-1, 1) for (seed, tick): an integer hash, no global RNG."""
    x = (seed * 0x9E3779B1 + tick * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    x ^= x >> 12
    x = (x * 0x297A2D39) & 0xFFFFFFFF
    x ^= x >> 15
    return x / 2**31 - 1.0


def wave(t: float, period: float, phase: float) -> float:
    return math.sin(2 * math.pi * t / period + phase)


def wave_integral(t: float, period: float, phase: float) -> float:
    """The integral of wave from 0 to t (so counters and their rates agree)."""
    w = 2 * math.pi / period
    return (math.cos(phase) - math.cos(w * t + phase)) / w


_ROLES = ("web", "api", "db", "cache", "worker", "queue")
GIB = 1024**3


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One simulated node: its shape (cores, memory, devices) and behaviour."""

    index: int
    name: str
    cores: int
    mem_total: int
    nics: tuple[str, ...]
    disks: tuple[str, ...]
    mounts: tuple[tuple[str, int], ...]  # (mount point, size in bytes)
    phase_ms: int
    cpu_base: float
    mem_base: float
    fs_base: float
    net_base: float
    has_app: bool

    def seed(self, what: int) -> int:
        return self.index * 7919 + what * 104729


def make_fleet(count: int) -> list[NodeSpec]:
    """``count`` nodes named like a small company's servers (web-01, db-02, worker-017...)."""
    specs: list[NodeSpec] = []
    per_role: dict[str, int] = {}
    for i in range(count):
        role = _ROLES[i % len(_ROLES)] if i < 24 else ("worker" if i % 3 else "web")
        per_role[role] = per_role.get(role, 0) + 1
        width = 3 if count > 60 else 2
        name = f"{role}-{per_role[role]:0{width}d}"
        cores = (2, 4, 8, 16, 4, 8)[i % 6] if role != "db" else 32
        mem = (4, 8, 16, 32, 8, 16)[i % 6] * GIB if role != "db" else 128 * GIB
        mounts: tuple[tuple[str, int], ...] = (("/", 50 * GIB), ("/var", 200 * GIB))
        if role in ("db", "queue"):
            mounts += (("/data", 2000 * GIB),)
        disks = ("nvme0n1",) if role != "db" else ("nvme0n1", "nvme1n1")
        nics = ("eth0",) if role not in ("web", "api") else ("eth0", "eth1")
        # A few nodes are in trouble, so the overview has something to sort to the top.
        cpu_base = 0.12 + 0.35 * (noise(i, 1) + 1) / 2
        if i % 37 == 5:
            cpu_base = 0.93
        elif i % 23 == 7:
            cpu_base = 0.78
        mem_base = 0.35 + 0.3 * (noise(i, 2) + 1) / 2
        if i % 29 == 11:
            mem_base = 0.89
        fs_base = 0.3 + 0.4 * (noise(i, 3) + 1) / 2
        if i % 31 == 13:
            fs_base = 0.91
        specs.append(NodeSpec(
            index=i, name=name, cores=cores, mem_total=mem, nics=nics, disks=disks,
            mounts=mounts, phase_ms=int((noise(i, 4) + 1) / 2 * 1000) % 1000,
            cpu_base=cpu_base, mem_base=mem_base, fs_base=fs_base,
            net_base=2e5 + 4e6 * (noise(i, 5) + 1) / 2, has_app=role in ("web", "api"),
        ))
    return specs


def system_values(spec: NodeSpec, ts: float, boot: float) -> dict[str, float]:
    """A system sample of ``spec`` at ``ts``, with docs/metrics.md's names and units."""
    tick = int(ts)
    n = spec.seed
    cpu = spec.cpu_base + 0.12 * wave(ts, 180, spec.index) + 0.05 * noise(n(10), tick)
    cpu = min(0.999, max(0.01, cpu))
    v: dict[str, float] = {"cpu_utilization_ratio": cpu}
    for c in range(spec.cores):
        v[f"cpu_utilization_ratio.cpu{c}"] = min(
            1.0, max(0.0, cpu + 0.18 * noise(n(100 + c), tick) + 0.1 * wave(ts, 40 + c, c)))
    iowait = 0.02 + 0.015 * (noise(n(11), tick) + 1)
    v.update({
        "cpu_user_ratio": cpu * 0.68,
        "cpu_system_ratio": cpu * 0.24,
        "cpu_iowait_ratio": iowait,
        "cpu_steal_ratio": 0.002 + 0.002 * (noise(n(12), tick) + 1),
        "load1": round(cpu * spec.cores * (1 + 0.1 * noise(n(13), tick)), 2),
        "load5": round(cpu * spec.cores * (1 + 0.04 * wave(ts, 300, 1)), 2),
        "load15": round(cpu * spec.cores * 0.97, 2),
        "cpu_count": spec.cores,
    })
    mem_ratio = min(0.99, spec.mem_base + 0.03 * wave(ts, 600, spec.index))
    total = spec.mem_total
    used = int(total * mem_ratio)
    cached = int((total - used) * 0.6)
    v.update({
        "memory_total_bytes": total,
        "memory_used_bytes": used,
        "memory_available_bytes": total - used,
        "memory_cached_bytes": cached,
        "memory_buffers_bytes": int(total * 0.01),
        "memory_used_ratio": used / total,
        "swap_total_bytes": 2 * GIB,
        "swap_used_bytes": int(2 * GIB * 0.02),
        "swap_used_ratio": 0.02,
    })
    elapsed = ts - boot
    for d, disk in enumerate(spec.disks):
        base_r, base_w = 3e6 * (d + 1), 5e6 * (d + 1)
        r = base_r * (1 + 0.8 * wave(ts, 90, d))
        w = base_w * (1 + 0.6 * wave(ts, 120, d + 1))
        v[f"disk_read_bytes_per_second.{disk}"] = r * (1 + 0.2 * noise(n(20 + d), tick))
        v[f"disk_written_bytes_per_second.{disk}"] = w * (1 + 0.2 * noise(n(30 + d), tick))
        v[f"disk_reads_per_second.{disk}"] = r / 16384
        v[f"disk_writes_per_second.{disk}"] = w / 32768
        v[f"disk_busy_ratio.{disk}"] = min(1.0, 0.05 + (r + w) / 2e8)
        v[f"disk_read_bytes_total.{disk}"] = int(
            base_r * elapsed + base_r * 0.8 * wave_integral(elapsed, 90, d))
        v[f"disk_written_bytes_total.{disk}"] = int(
            base_w * elapsed + base_w * 0.6 * wave_integral(elapsed, 120, d + 1))
    for k, nic in enumerate(spec.nics):
        base = spec.net_base / (k + 1)
        rx = base * (1 + 0.7 * wave(ts, 150, k))
        tx = base * 0.6 * (1 + 0.5 * wave(ts, 210, k + 2))
        v[f"net_rx_bytes_per_second.{nic}"] = rx * (1 + 0.15 * noise(n(40 + k), tick))
        v[f"net_tx_bytes_per_second.{nic}"] = tx * (1 + 0.15 * noise(n(50 + k), tick))
        v[f"net_rx_packets_per_second.{nic}"] = rx / 900
        v[f"net_tx_packets_per_second.{nic}"] = tx / 700
        v[f"net_rx_bytes_total.{nic}"] = int(base * elapsed + base * 0.7 * wave_integral(
            elapsed, 150, k))
        v[f"net_tx_bytes_total.{nic}"] = int(base * 0.6 * elapsed + base * 0.3 * wave_integral(
            elapsed, 210, k + 2))
    for m, (mount, size) in enumerate(spec.mounts):
        ratio = min(0.97, spec.fs_base + 0.05 * m + 0.002 * wave(ts, 900, m))
        used_b = int(size * ratio)
        v[f"fs_size_bytes.{mount}"] = size
        v[f"fs_used_bytes.{mount}"] = used_b
        v[f"fs_available_bytes.{mount}"] = size - used_b
        v[f"fs_used_ratio.{mount}"] = ratio
        v[f"fs_inodes_used_ratio.{mount}"] = ratio * 0.3
    v.update({
        "context_switches_per_second": 4000 * spec.cores * (0.5 + cpu),
        "interrupts_per_second": 1500 * spec.cores * (0.5 + cpu),
        "soft_interrupts_per_second": 900 * spec.cores * (0.5 + cpu),
        "process_count": 180 + spec.index % 90,
        "boot_time_seconds": boot,
        "temperature_celsius.coretemp_package_id_0": round(38 + 40 * cpu, 1),
    })
    return v


def app_values(spec: NodeSpec, ts: float, boot: float) -> dict[str, float]:
    """A custom kind ``app`` (what a web service might push): requests, latency, pool."""
    tick = int(ts)
    rps = 120 + 80 * wave(ts, 240, spec.index) + 10 * noise(spec.seed(60), tick)
    elapsed = ts - boot
    return {
        "http_requests_total": int(120 * elapsed + 80 * wave_integral(elapsed, 240, spec.index)),
        "http_errors_total": int(0.4 * elapsed),
        "http_request_duration_seconds_p50": 0.012 + 0.004 * wave(ts, 300, 1),
        "http_request_duration_seconds_p99": 0.085 + 0.03 * wave(ts, 300, 2),
        "http_requests_in_flight": max(0.0, round(rps * 0.02)),
        "db_pool_used_ratio": 0.3 + 0.2 * (noise(spec.seed(61), tick // 5) + 1) / 2,
        "cache_hit_ratio": 0.93 + 0.03 * wave(ts, 500, 3),
        "queue_depth": max(0, int(20 + 15 * wave(ts, 130, 4))),
    }


@dataclass(order=True, frozen=True, slots=True)
class Entry:
    """One sample in the fake's total order: by due time, then node, then kind."""

    due_ms: int
    node: int
    kind: int

    @property
    def cursor(self) -> str:
        return f"f1-{self.due_ms}-{self.node}-{self.kind}"


class Fleet:
    """The simulated nodes and the schedule of their samples (``interval_s`` apart each)."""

    def __init__(self, count: int, interval_s: float = 1.0, *, boot: float | None = None) -> None:
        self.specs = make_fleet(count)
        self.by_name = {s.name: s for s in self.specs}
        self.interval_ms = int(interval_s * 1000)
        self.boot = time.time() - 86400 * 3 if boot is None else boot
        self.stopped: dict[str, int] = {}  # node -> epoch ms after which it sends nothing

    def kinds_of(self, spec: NodeSpec) -> tuple[int, ...]:
        return (0, 1) if spec.has_app else (0,)

    def entries(self, lo_ms: int, hi_ms: int, wanted: Callable[[str, str], bool]) -> list[Entry]:
        """Samples due in (lo_ms, hi_ms] whose topic ``wanted`` accepts, in order."""
        out: list[Entry] = []
        step = self.interval_ms
        for spec in self.specs:
            kinds = [k for k in self.kinds_of(spec) if wanted(spec.name, BUILTIN_KINDS[k])]
            if not kinds:
                continue
            stop = self.stopped.get(spec.name)
            end = hi_ms if stop is None else min(hi_ms, stop)
            first = (lo_ms - spec.phase_ms) // step + 1
            due = first * step + spec.phase_ms
            while due <= end:
                out.extend(Entry(due, spec.index, k) for k in kinds)
                due += step
        out.sort()
        return out

    def latest_due(self, spec: NodeSpec, at_ms: int) -> int:
        return (at_ms - spec.phase_ms) // self.interval_ms * self.interval_ms + spec.phase_ms

    def values(self, entry: Entry) -> dict[str, float]:
        spec = self.specs[entry.node]
        ts = entry.due_ms / 1000
        if entry.kind == 0:
            return system_values(spec, ts, self.boot)
        return app_values(spec, ts, self.boot)

    def message(self, entry: Entry, kind: str = "update") -> dict[str, Any]:
        spec = self.specs[entry.node]
        msg: dict[str, Any] = {
            "type": kind, "node": spec.name, "kind": BUILTIN_KINDS[entry.kind],
            "ts": entry.due_ms / 1000, "seq": entry.due_ms // self.interval_ms, "epoch": EPOCH,
        }
        if kind == "update":
            msg["cursor"] = entry.cursor
        msg["values"] = self.values(entry)
        return msg
