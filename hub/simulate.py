"""Simulated nodes for the demo: ``sim-*`` hosts with plausible, varied load, published as
``system`` samples under the real collector's metric names, all from one process.

Each node has a role (web, db, cache, batch, worker) that shapes its load: a slow daily-like
wave, mean-reverting noise, batch bursts, a slow memory leak that a "restart" clears. The
model (``SimulatedNode.step``) is pure and takes the time, so tests drive it with any clock;
``Simulator`` publishes every node's sample of a tick in one Publisher batch.
Run it alone with ``python -m hub.simulate --redis-url URL --nodes 6``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import signal
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hub.config import ConfigSpec, in_range, setting, valid_key_prefix, valid_redis_url
from hub.errors import BackendUnavailable, ConfigError
from hub.keys import MAX_SHARDS, KeyLayout
from hub.process import configure_logging, run_main
from hub.publisher import Publisher
from hub.redis_url import connect, redact
from hub.sample import Sample
from hub.tasks import TaskManager, run_periodically

log = logging.getLogger(__name__)

GiB = 1024**3
ROLES = ("web", "db", "cache", "batch", "worker")
# Period of the slow load wave: minutes rather than a day, so the demo's charts move.
WAVE_PERIOD_S = 600.0


@dataclass(frozen=True, slots=True)
class Role:
    """What shapes a role's load: CPU level and swing, I/O per unit of CPU, memory use."""

    cpu_base: float
    cpu_swing: float
    net_bytes_per_cpu: float      # bytes/s received at 100% CPU (sent: ``net_tx_ratio`` of it)
    net_tx_ratio: float
    disk_read_per_cpu: float      # bytes/s at 100% CPU
    disk_write_per_cpu: float
    iowait: float
    memory_ratio: float
    bursty: bool = False
    leaky: bool = False


ROLE_SHAPES: dict[str, Role] = {
    "web": Role(0.30, 0.20, 40e6, 3.0, 0.5e6, 2e6, 0.01, 0.45),
    "db": Role(0.35, 0.10, 15e6, 1.5, 60e6, 25e6, 0.08, 0.80),
    "cache": Role(0.12, 0.06, 80e6, 1.0, 0.1e6, 0.2e6, 0.0, 0.88),
    "batch": Role(0.05, 0.03, 5e6, 0.3, 30e6, 50e6, 0.04, 0.35, bursty=True),
    "worker": Role(0.45, 0.15, 8e6, 0.8, 2e6, 5e6, 0.02, 0.55, leaky=True),
}


class _Wander:
    """Mean-reverting noise (Ornstein-Uhlenbeck): smooth, never drifts far, never sticks."""

    def __init__(self, rng: random.Random, scale: float, half_life_s: float) -> None:
        self.rng = rng
        self.scale = scale
        self.half_life_s = half_life_s
        self.value = 0.0

    def step(self, dt: float) -> float:
        keep = 0.5 ** (dt / self.half_life_s)
        self.value = self.value * keep + self.rng.gauss(0.0, self.scale * math.sqrt(1 - keep**2))
        return self.value


def _clamp(value: float, low: float = 0.0, high: float = 1.0) -> float:
    return min(high, max(low, value))


class SimulatedNode:
    """One simulated host: ``step(now)`` advances its state and returns its system values."""

    def __init__(self, name: str, role: str, *, seed: int = 0,
                 started: float | None = None) -> None:
        if role not in ROLE_SHAPES:
            raise ConfigError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        self.name = name
        self.role = role
        self.shape = ROLE_SHAPES[role]
        rng = self.rng = random.Random(zlib.crc32(name.encode()) ^ seed)
        self.cpus = rng.choice((2, 4, 8, 16))
        self.memory_total = rng.choice((4, 8, 16, 32, 64)) * GiB
        self.swap_total = 0 if role in ("db", "cache") else 2 * GiB
        self.fs_size = rng.choice((50, 100, 200, 500)) * GiB
        self.fs_used = self.fs_size * rng.uniform(0.2, 0.7)
        self.phase = rng.uniform(0, 2 * math.pi)
        self.boot_time = float(int((started or time.time()) - rng.uniform(3600, 40 * 86400)))
        self.cpu_noise = _Wander(rng, 0.06, 8.0)
        self.core_noise = [_Wander(rng, 0.08, 3.0) for _ in range(self.cpus)]
        self.net_noise = _Wander(rng, 0.15, 5.0)
        self.mem_noise = _Wander(rng, 0.01, 30.0)
        self.loads = [0.0, 0.0, 0.0]
        self.leak = 0.0
        self.burst_until = 0.0
        self.next_burst = 0.0
        self.processes = rng.randint(120, 400)
        self.counters: dict[str, float] = {}
        self.last: float | None = None

    def _counter(self, name: str, rate: float, dt: float, values: dict[str, float | int],
                 rate_name: str | None) -> None:
        total = self.counters.get(name)
        if total is None:  # counters since boot: start from a plausible uptime's worth
            total = rate * self.rng.uniform(5e4, 5e5)
        total += rate * dt
        self.counters[name] = total
        values[name] = int(total)
        if rate_name is not None:
            values[rate_name] = round(rate, 1)

    def _cpu(self, now: float, dt: float) -> float:
        shape = self.shape
        wave = math.sin(2 * math.pi * now / WAVE_PERIOD_S + self.phase)
        cpu = shape.cpu_base + shape.cpu_swing * wave + self.cpu_noise.step(dt)
        if shape.bursty:
            if now >= self.next_burst and now >= self.burst_until:
                # A job: 30-90 s of near-full CPU, then 1-4 minutes of idle.
                self.burst_until = now + self.rng.uniform(30, 90)
                self.next_burst = self.burst_until + self.rng.uniform(60, 240)
            if now < self.burst_until:
                cpu = 0.85 + self.cpu_noise.value
        return _clamp(cpu, 0.01, 0.99)

    def step(self, now: float) -> dict[str, float | int]:
        """The ``system`` values at ``now`` (epoch seconds), advancing the model from the last
        call; names and units are the real collector's (collectors/metric_table.py)."""
        dt = 1.0 if self.last is None else max(1e-3, now - self.last)
        self.last = now
        shape = self.shape
        cpu = self._cpu(now, dt)
        values: dict[str, float | int] = {"cpu_utilization_ratio": round(cpu, 4)}
        for index, noise in enumerate(self.core_noise):
            values[f"cpu_utilization_ratio.cpu{index}"] = round(_clamp(cpu + noise.step(dt)), 4)
        iowait = _clamp(shape.iowait * (0.5 + cpu) * self.rng.uniform(0.7, 1.3))
        values["cpu_user_ratio"] = round(cpu * 0.72, 4)
        values["cpu_system_ratio"] = round(cpu * 0.26, 4)
        values["cpu_iowait_ratio"] = round(iowait, 4)
        values["cpu_steal_ratio"] = round(cpu * 0.02 * self.rng.random(), 4)
        runnable = cpu * self.cpus * self.rng.uniform(0.9, 1.2) + iowait * self.cpus
        for index, window in enumerate((60.0, 300.0, 900.0)):
            alpha = 1 - math.exp(-dt / window)
            self.loads[index] += alpha * (runnable - self.loads[index])
            values[f"load{(1, 5, 15)[index]}"] = round(self.loads[index], 2)

        if shape.leaky:
            # A slow leak, and a "restart" of the leaking service when memory runs short.
            self.leak += dt * 0.0004
            if shape.memory_ratio + self.leak > 0.93:
                self.leak = 0.0
        used_ratio = _clamp(shape.memory_ratio + self.leak + self.mem_noise.step(dt), 0.05, 0.97)
        used = int(self.memory_total * used_ratio)
        cached = int((self.memory_total - used) * 0.6)
        values.update({
            "memory_total_bytes": self.memory_total,
            "memory_used_bytes": used,
            "memory_available_bytes": self.memory_total - used,
            "memory_cached_bytes": cached,
            "memory_buffers_bytes": int(cached * 0.08),
            "memory_used_ratio": round(used_ratio, 4),
        })
        swap_used = int(self.swap_total * _clamp((used_ratio - 0.8) * 2)) if self.swap_total else 0
        swap_rate = 4096.0 * 50 if swap_used else 0.0
        values["swap_total_bytes"] = self.swap_total
        values["swap_used_bytes"] = swap_used
        values["swap_used_ratio"] = round(swap_used / self.swap_total, 4) if self.swap_total else 0
        self._counter("swap_in_bytes_total", swap_rate * 0.3, dt, values,
                      "swap_in_bytes_per_second")
        self._counter("swap_out_bytes_total", swap_rate, dt, values, "swap_out_bytes_per_second")

        disk = "nvme0n1" if self.role in ("db", "cache") else "sda"
        read_rate = shape.disk_read_per_cpu * cpu * _clamp(1 + self.net_noise.value, 0.2, 3)
        write_rate = shape.disk_write_per_cpu * cpu
        busy = _clamp((read_rate + write_rate) / 400e6 + iowait)
        self._counter(f"disk_read_bytes_total.{disk}", read_rate, dt, values,
                      f"disk_read_bytes_per_second.{disk}")
        self._counter(f"disk_written_bytes_total.{disk}", write_rate, dt, values,
                      f"disk_written_bytes_per_second.{disk}")
        self._counter(f"disk_reads_total.{disk}", read_rate / 16384, dt, values,
                      f"disk_reads_per_second.{disk}")
        self._counter(f"disk_writes_total.{disk}", write_rate / 32768, dt, values,
                      f"disk_writes_per_second.{disk}")
        self._counter(f"disk_io_time_seconds_total.{disk}", busy, dt, values, None)
        values[f"disk_busy_ratio.{disk}"] = round(busy, 4)

        rx = shape.net_bytes_per_cpu * cpu * _clamp(1 + self.net_noise.step(dt), 0.1, 3)
        tx = rx * shape.net_tx_ratio
        self._counter("net_rx_bytes_total.eth0", rx, dt, values, "net_rx_bytes_per_second.eth0")
        self._counter("net_tx_bytes_total.eth0", tx, dt, values, "net_tx_bytes_per_second.eth0")
        self._counter("net_rx_packets_total.eth0", rx / 900, dt, values,
                      "net_rx_packets_per_second.eth0")
        self._counter("net_tx_packets_total.eth0", tx / 1100, dt, values,
                      "net_tx_packets_per_second.eth0")
        for name in ("net_rx_errors_total", "net_tx_errors_total", "net_rx_drops_total",
                     "net_tx_drops_total"):
            self._counter(f"{name}.eth0", 0.02 if "drops" in name else 0.0, dt, values, None)

        activity = cpu * self.cpus
        self._counter("context_switches_total", 2000 + 9000 * activity, dt, values,
                      "context_switches_per_second")
        self._counter("interrupts_total", 1000 + 4000 * activity, dt, values,
                      "interrupts_per_second")
        self._counter("soft_interrupts_total", 500 + rx / 3000, dt, values,
                      "soft_interrupts_per_second")

        self.fs_used = min(self.fs_size * 0.98, self.fs_used + write_rate * dt * 0.02)
        available = self.fs_size - self.fs_used
        values.update({
            "fs_size_bytes./": int(self.fs_size),
            "fs_used_bytes./": int(self.fs_used),
            "fs_available_bytes./": int(available),
            "fs_used_ratio./": round(self.fs_used / self.fs_size, 4),
            "fs_inodes_used_ratio./": round(0.3 * self.fs_used / self.fs_size, 4),
            "temperature_celsius.coretemp_Package_id_0": round(38 + 45 * cpu, 1),
            "process_count": self.processes + int(40 * cpu),
            "boot_time_seconds": self.boot_time,
            "cpu_count": self.cpus,
        })
        return values


def node_names(count: int, prefix: str = "sim-") -> list[tuple[str, str]]:
    """``count`` (name, role) pairs, cycling through the roles: sim-web-1, sim-db-1, ..."""
    seen: dict[str, int] = {}
    result = []
    for index in range(count):
        role = ROLES[index % len(ROLES)]
        seen[role] = seen.get(role, 0) + 1
        result.append((f"{prefix}{role}-{seen[role]}", role))
    return result


class Simulator:
    """Publishes one ``system`` sample per simulated node per tick, in one batch."""

    def __init__(self, publisher: Publisher, nodes: Sequence[SimulatedNode], *,
                 clock: Callable[[], float] = time.time, epoch: int | None = None) -> None:
        self.publisher = publisher
        self.nodes = list(nodes)
        self.clock = clock
        self.epoch = epoch if epoch is not None else int(clock() * 1000)
        self.seq = 0
        self.ticks_failed = 0
        self._failing = False

    def samples(self, now: float) -> list[Sample]:
        """Every node's sample at ``now``; seq counts ticks, shared by all nodes."""
        self.seq += 1
        return [Sample.build(node.name, "system", node.step(now), seq=self.seq,
                             epoch=self.epoch, ts=now) for node in self.nodes]

    async def tick(self) -> None:
        """Build and publish one tick. A Redis outage is logged once and skipped (a lost
        tick shows as a seq gap, as it would for a real node). Cancelling is safe."""
        batch = self.samples(self.clock())
        try:
            await self.publisher.publish_batch(batch)
        except BackendUnavailable as exc:
            self.ticks_failed += 1
            if not self._failing:
                log.warning("simulated nodes: cannot publish (%s); retrying every tick", exc)
            self._failing = True
            return
        if self._failing:
            log.info("simulated nodes: publishing again")
            self._failing = False


# -- the command ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SimulateSettings:
    """Settings of ``python -m hub.simulate``."""

    redis_url: str = setting("redis://127.0.0.1:6379/0", help="Redis to publish to",
                             validator=valid_redis_url, redact=redact, metavar="URL")
    nodes: int = setting(6, help="number of simulated nodes", validator=in_range(1, 10_000),
                         metavar="N")
    node_prefix: str = setting("sim-", help="start of every simulated node's name",
                               metavar="PREFIX")
    interval: float = setting(1.0, help="seconds between two samples of each node",
                              validator=in_range(0.05, 3600), metavar="SECONDS")
    key_prefix: str = setting("mh", help="prefix of every Redis key", validator=valid_key_prefix,
                              metavar="PREFIX")
    shards: int = setting(16, help="number of shard streams", validator=in_range(1, MAX_SHARDS),
                          metavar="N")
    retention: float = setting(3600.0, help="seconds of history the shard streams keep",
                               validator=in_range(1, 365 * 86400), metavar="SECONDS")
    seed: int = setting(0, help="random seed (the same seed gives the same nodes)", metavar="N")
    log_level: str = setting("info", help="log level",
                             choices=("debug", "info", "warning", "error"), metavar="LEVEL")


SPEC: ConfigSpec[SimulateSettings] = ConfigSpec(
    SimulateSettings, prog="python -m hub.simulate", section="simulate",
    description="Publish simulated sim-* nodes with plausible load to the hub's Redis.")


async def serve(settings: SimulateSettings) -> int:
    """Publish until SIGINT or SIGTERM; returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    started = time.time()
    nodes = [SimulatedNode(name, role, seed=settings.seed, started=started)
             for name, role in node_names(settings.nodes, settings.node_prefix)]
    redis = connect(settings.redis_url, client_name="metrics-hub-simulate")
    publisher = Publisher(redis, KeyLayout(settings.key_prefix, settings.shards),
                          retention_s=settings.retention, interval_s=settings.interval)
    simulator = Simulator(publisher, nodes)
    log.info("publishing %d simulated nodes (%s) every %gs to %s", len(nodes),
             ", ".join(n.name for n in nodes), settings.interval, redact(settings.redis_url))
    try:
        async with TaskManager(name="simulate") as tasks:
            runner = tasks.create_task(run_periodically(simulator.tick, settings.interval),
                                       name="simulate:tick")
            stopped = tasks.create_task(stop.wait(), name="simulate:stop")
            await asyncio.wait([runner.task, stopped.task], return_when=asyncio.FIRST_COMPLETED)
            if runner.task.done() and not runner.task.cancelled():
                runner.task.result()  # re-raise what ended it (a bug, or a config error)
    finally:
        await redis.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the settings, publish until stopped, return the exit code."""
    loaded = SPEC.load_or_exit_code(argv)
    if isinstance(loaded, int):
        return loaded
    configure_logging(loaded.settings.log_level)
    return run_main(serve(loaded.settings), SPEC.prog)


if __name__ == "__main__":
    sys.exit(main())
